//! Everything another framework needs to train the same student on the same data, for
//! cross-checking (`distill train CONFIG --export-reference DIR`; `bench/reference/train_reference.py`
//! trains it in PyTorch).
//!
//! DIR/student/            the initial student, HF layout (config.json, model.safetensors, tokenizer)
//! DIR/config.toml         the resolved run config (defaults filled in)
//! DIR/train_batches.safetensors  the steps × grad_accum micro-batches the run trains on, in order
//! DIR/eval_batches.safetensors   the held-out batches its evaluation uses (when eval_dataset is set)
//!
//! Batch tensors are stacked along a leading S axis: input_ids, position_ids, segment_ids,
//! target_ids (S, B, L) u32; loss_mask, tail_logprobs (S, B, L) f32; topk_ids (S, B, L, K) u32,
//! topk_logprobs (S, B, L, K) f32. Fields mean what they mean in `distill_store::Batch`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use distill_models::{checkpoint, Llama};
use distill_store::{Batch, Dataset};

use crate::config::TrainConfig;
use crate::data::{self, BatchStream};
use crate::error::{Error, Result};
use crate::init::{build_student, InitialStudent};

/// What [`export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub train_batches: usize,
    /// Held-out batches (none without an `eval_dataset`).
    pub eval_batches: usize,
}

/// Writes the initial student, the resolved config and the exact batches the run `cfg` would
/// train and evaluate on into `dir`.
pub fn export(cfg: &TrainConfig, dir: &Path) -> Result<Exported> {
    let path = cfg
        .dataset
        .as_ref()
        .ok_or_else(|| Error::Config("the reference export replays the run's dataset; give `dataset`".into()))?;
    if cfg.cross_tokenizer.is_some() {
        return Err(Error::Config(
            "the reference export writes same-tokenizer batches; a [cross_tokenizer] run has none to export".into(),
        ));
    }
    let dataset = Dataset::open(path)?;
    let InitialStudent { config, weights, source, .. } = build_student(cfg, Some(&dataset), &mut |_, _| {})?;
    let tok = &source.tokenizer;
    dataset.check_student(&tok.fingerprint(), tok.vocab_size(), config.vocab_size)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let model = Llama::from_weights(config, &weights)?;
    let template = source.chat_template.as_ref().map(|t| t.source().to_string());
    checkpoint::save_hf_dir(&dir.join("student"), &model, tok, template.as_deref())?;
    let resolved = toml::to_string(cfg).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(dir.join("config.toml"), resolved).map_err(|e| Error::io(&dir.join("config.toml"), e))?;

    let mut stream = BatchStream::new(&dataset, cfg.seq_len, cfg.batch_size, cfg.seed, 0, 0)?;
    let train = (0..cfg.steps * cfg.grad_accum).map(|_| stream.next_batch()).collect::<Result<Vec<_>, _>>()?;
    save_batches(&dir.join("train_batches.safetensors"), &train)?;
    let mut exported = Exported { train_batches: train.len(), eval_batches: 0 };
    if let Some(path) = &cfg.eval_dataset {
        let eval = Dataset::open(path)?;
        let mut packer = data::fixed_order(&eval, cfg.seq_len, cfg.batch_size);
        let mut batches = Vec::new();
        while let Some(b) = packer.next_batch()? {
            if b.target_tokens() > 0 {
                batches.push(b);
            }
        }
        save_batches(&dir.join("eval_batches.safetensors"), &batches)?;
        exported.eval_batches = batches.len();
    }
    Ok(exported)
}

fn save_batches(path: &Path, batches: &[Batch]) -> Result<()> {
    let Some(first) = batches.first() else {
        return Err(Error::Config(format!("no batches to write to {}", path.display())));
    };
    let (s, b, l, k) = (batches.len(), first.batch_size, first.seq_len, first.k);
    let dev = Device::Cpu;
    let ints = |f: fn(&Batch) -> &Vec<u32>, shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(batches.iter().flat_map(|x| f(x).iter().copied()).collect::<Vec<_>>(), shape, &dev)?)
    };
    let floats = |f: fn(&Batch) -> &Vec<f32>, shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(batches.iter().flat_map(|x| f(x).iter().copied()).collect::<Vec<_>>(), shape, &dev)?)
    };
    let mut tensors = HashMap::new();
    tensors.insert("input_ids", ints(|x| &x.input_ids, &[s, b, l])?);
    tensors.insert("position_ids", ints(|x| &x.position_ids, &[s, b, l])?);
    tensors.insert("segment_ids", ints(|x| &x.segment_ids, &[s, b, l])?);
    tensors.insert("target_ids", ints(|x| &x.target_ids, &[s, b, l])?);
    tensors.insert("topk_ids", ints(|x| &x.topk_ids, &[s, b, l, k])?);
    tensors.insert("loss_mask", floats(|x| &x.loss_mask, &[s, b, l])?);
    tensors.insert("tail_logprobs", floats(|x| &x.tail_logprobs, &[s, b, l])?);
    tensors.insert("topk_logprobs", floats(|x| &x.topk_logprobs, &[s, b, l, k])?);
    distill_models::checkpoint::save_safetensors(&tensors, path)
        .map_err(|e| Error::from(e).context(format!("writing {}", path.display())))
}
