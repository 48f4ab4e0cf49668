//! One optimisation step and held-out evaluation of a student on packed teacher-signal batches.
//!
//! The head is applied only to positions that carry a teacher signal: hidden states (B, L, C) are
//! gathered to (N, C) first, so the (N, V) logits cover completion tokens, not padding or prompts.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};
use distill_models::{Llama, LlamaConfig};
use distill_store::{Batch, Dataset, PackOptions, Packer};

use crate::loss::{distillation_loss, per_position_loss, Divergence, LossConfig, PlainTargets};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

/// A student whose parameters are trainable variables.
pub struct Student {
    pub model: Llama,
    pub vars: Vec<(String, Var)>,
}

impl Student {
    /// Wraps `weights` (HF names) as variables and builds the model on them.
    pub fn new(cfg: LlamaConfig, weights: &HashMap<String, Tensor>) -> distill_models::Result<Self> {
        let mut vars = Vec::new();
        let mut tensors = HashMap::new();
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        for name in names {
            // A copy: training must not write into the teacher's tensors.
            let var = Var::from_tensor(&weights[name].copy()?)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name.clone(), var));
        }
        let model = Llama::from_weights(cfg, &tensors)?;
        Ok(Self { model, vars })
    }

    /// Loss on the positions of `batch` that carry a teacher signal (None when there are none).
    pub fn batch_loss(&self, batch: &Batch, loss: &LossConfig) -> Result<Option<(Tensor, usize)>> {
        let Some((logits, targets, n)) = self.logits_and_targets(batch)? else {
            return Ok(None);
        };
        let targets = targets.to_tensors(n, batch.k, self.model.device())?;
        Ok(Some((distillation_loss(&logits, &targets, loss)?, n)))
    }

    /// Student logits (N, V) at the signal-carrying positions, with their targets.
    fn logits_and_targets(&self, batch: &Batch) -> Result<Option<(Tensor, PlainTargets, usize)>> {
        let positions: Vec<u32> =
            batch.loss_mask.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(i, _)| i as u32).collect();
        let n = positions.len();
        if n == 0 {
            return Ok(None);
        }
        let (b, l, k) = (batch.batch_size, batch.seq_len, batch.k);
        let device = self.model.device();
        let ids = Tensor::from_vec(batch.input_ids.clone(), (b, l), device)?;
        let hidden = self
            .model
            .forward_packed_hidden(&ids, &batch.position_ids, &batch.segment_ids)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?; // (B, L, C)
        let c = hidden.dim(2)?;
        let index = Tensor::from_vec(positions.clone(), n, device)?;
        let selected = hidden.reshape((b * l, c))?.index_select(&index, 0)?; // (N, C)
        let logits = selected.matmul(&self.model.lm_head_weight().t()?)?; // (N, V)
        let pick = |i: &u32| *i as usize;
        let targets = PlainTargets {
            topk_ids: positions.iter().flat_map(|i| batch.topk_ids[pick(i) * k..(pick(i) + 1) * k].to_vec()).collect(),
            topk_logprobs: positions
                .iter()
                .flat_map(|i| batch.topk_logprobs[pick(i) * k..(pick(i) + 1) * k].to_vec())
                .collect(),
            tail_logprobs: positions.iter().map(|i| batch.tail_logprobs[pick(i)]).collect(),
            target_ids: positions.iter().map(|i| batch.target_ids[pick(i)]).collect(),
            mask: vec![1.0; n],
        };
        Ok(Some((logits, targets, n)))
    }

    /// Token-level KL(teacher‖student) (over top-K + tail) and top-1 agreement on a dataset.
    pub fn evaluate(&self, dataset: &Dataset, seq_len: usize, batch_size: usize) -> Result<Evaluation> {
        let mut packer = Packer::new(dataset, PackOptions { seq_len, batch_size, seed: 0, pad_id: 0 });
        let kl = LossConfig { divergence: Divergence::ForwardKl, kd_weight: 1.0, temperature: 1.0 };
        let (mut kl_sum, mut agree, mut count) = (0f64, 0usize, 0usize);
        while let Some(batch) = packer.next_batch().map_err(|e| candle_core::Error::Msg(e.to_string()))? {
            let Some((logits, targets, n)) = self.logits_and_targets(&batch)? else { continue };
            let top1: Vec<u32> = targets.topk_ids.chunks(batch.k).map(|c| c[0]).collect();
            let t = targets.to_tensors(n, batch.k, self.model.device())?;
            let per = per_position_loss(&logits, &t, &kl)?.to_vec1::<f32>()?;
            kl_sum += per.iter().map(|x| *x as f64).sum::<f64>();
            let student_top1 = logits.argmax(1)?.to_vec1::<u32>()?;
            agree += student_top1.iter().zip(&top1).filter(|(a, b)| a == b).count();
            count += n;
        }
        Ok(Evaluation {
            kl: kl_sum / count.max(1) as f64,
            top1_agreement: agree as f64 / count.max(1) as f64,
            tokens: count,
        })
    }
}

/// Held-out figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Mean KL(teacher ‖ student) per token, nats.
    pub kl: f64,
    /// Share of positions where the student's argmax is the teacher's top-1.
    pub top1_agreement: f64,
    pub tokens: usize,
}

/// Optimiser, schedule and clipping around a [`Student`].
pub struct Optimizer {
    pub adamw: AdamW,
    pub schedule: Schedule,
    pub clip: Option<f64>,
    params: Vec<(String, Var)>,
}

impl Optimizer {
    pub fn new(student: &Student, config: AdamWConfig, schedule: Schedule, clip: Option<f64>) -> Result<Self> {
        Ok(Self { adamw: AdamW::new(student.vars.clone(), config)?, schedule, clip, params: student.vars.clone() })
    }

    /// Backward through `loss`, clip, update. Returns (learning rate, gradient norm before clipping).
    pub fn step(&mut self, loss: &Tensor) -> Result<(f64, f64)> {
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, &self.params, self.clip.unwrap_or(f64::INFINITY))?;
        let lr = self.schedule.lr(self.adamw.steps_taken());
        self.adamw.step(&grads, lr)?;
        Ok((lr, norm))
    }
}
