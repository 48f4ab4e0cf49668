//! Where a student starts: cut from the teacher (layers, then optionally width measured on the
//! run's data), a preset or config with fresh weights, or a pretrained model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use distill_models::{init, prune, ActivationProbe, Llama, LlamaConfig, LoadedModel};
use distill_store::Dataset;

use crate::config::{StudentConfig, TrainConfig};
use crate::error::{Error, Result};

/// A student before training: its config and weights, and the loaded model its tokenizer and chat
/// template come from (the teacher it was cut from, say).
pub struct InitialStudent {
    pub config: LlamaConfig,
    pub weights: HashMap<String, Tensor>,
    pub source: LoadedModel,
    /// The layers of `source` a pruned student keeps (`None` for any other student).
    pub kept_layers: Option<Vec<usize>>,
}

fn load(spec: &str) -> Result<LoadedModel> {
    distill_models::load(spec, &Device::Cpu).map_err(|e| Error::from(e).context(format!("loading `{spec}`")))
}

/// The student `cfg.student` describes. Choosing layers by influence (`num_layers`) and width
/// pruning measure on `calibration` (the run's dataset), each reporting `(batches done, batches)`
/// to `progress`.
pub fn build_student(
    cfg: &TrainConfig,
    calibration: Option<&Dataset>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<InitialStudent> {
    Ok(match &cfg.student {
        StudentConfig::Prune {
            from,
            keep_every,
            keep_layers,
            num_layers,
            intermediate_size,
            num_attention_heads,
            calibration_batches,
        } => {
            let source = load(from)?;
            let teacher_cfg = source.model.config().clone();
            let weights = source.model.named_parameters().into_iter().collect();
            let calibration = |what: &str| {
                let data = calibration
                    .ok_or_else(|| Error::Config(format!("{what} is measured on the run's dataset; give `dataset`")))?;
                let tok = &source.tokenizer;
                data.check_student(&tok.fingerprint(), tok.vocab_size(), teacher_cfg.vocab_size)?;
                Ok::<_, Error>(data)
            };
            let keep = match (keep_every, keep_layers, num_layers) {
                (Some(n), _, _) => prune::every_nth_layer(teacher_cfg.num_hidden_layers, *n),
                (_, Some(list), _) => list.clone(),
                (_, _, Some(n)) => {
                    let data = calibration("which layers to keep")?;
                    let probes = calibrate(&teacher_cfg, &weights, data, cfg, *calibration_batches, progress)?;
                    prune::most_influential_layers(&probes, *n)?
                }
                _ => return Err(Error::Config("student: give keep_every, keep_layers or num_layers".into())),
            };
            let (mut config, mut weights) = prune::prune_layers(&teacher_cfg, &weights, &keep)?;
            let kept_layers = Some(keep);
            let width =
                prune::Width { intermediate_size: *intermediate_size, num_attention_heads: *num_attention_heads };
            if width != prune::Width::default() {
                let data = calibration("width pruning's channel importance")?;
                let probes = calibrate(&config, &weights, data, cfg, *calibration_batches, progress)?;
                (config, weights) = prune::prune_width(&config, &weights, &probes, width)?;
            }
            InitialStudent { config, weights, source, kept_layers }
        }
        StudentConfig::Preset { name, tokenizer_from, init_seed } => {
            let config = LlamaConfig::preset(name)
                .ok_or_else(|| Error::Config(format!("unknown preset `{name}` (known: smollm2-135m, smollm2-360m)")))?;
            let source = load(tokenizer_from)?;
            let weights = init::random_weights(&config, *init_seed, &Device::Cpu)?;
            InitialStudent { config, weights, source, kept_layers: None }
        }
        StudentConfig::Config { config, tokenizer_from, init_seed } => {
            let config = distill_models::loader::config_file(Path::new(config))
                .map_err(|e| Error::from(e).context(format!("student config `{config}`")))?;
            let source = load(tokenizer_from)?;
            let weights = init::random_weights(&config, *init_seed, &Device::Cpu)?;
            InitialStudent { config, weights, source, kept_layers: None }
        }
        StudentConfig::Pretrained { from } => {
            let source = load(from)?;
            let weights = source.model.named_parameters().into_iter().collect();
            InitialStudent { config: source.model.config().clone(), weights, source, kept_layers: None }
        }
    })
}

/// Activation energy of the layer-pruned student on the first `batches` packed batches of the
/// dataset (seed 0), for width pruning.
fn calibrate(
    cfg: &LlamaConfig,
    weights: &HashMap<String, Tensor>,
    dataset: &Dataset,
    run: &TrainConfig,
    batches: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ActivationProbe>> {
    let model = Llama::from_weights(cfg.clone(), weights)?;
    let mut packer = crate::data::fixed_order(dataset, run.seq_len, run.batch_size);
    let mut probes = vec![ActivationProbe::default(); cfg.num_hidden_layers];
    for done in 0..batches.max(1) {
        let Some(batch) = packer.next_batch()? else { break };
        let ids = Tensor::from_vec(batch.input_ids.clone(), (batch.batch_size, batch.seq_len), &Device::Cpu)?; // (B, T)
        model.probe_activations(&ids, &batch.position_ids, &batch.segment_ids, &mut probes)?;
        progress(done + 1, batches);
    }
    Ok(probes)
}
