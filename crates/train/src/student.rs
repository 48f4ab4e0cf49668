//! A trainable student: one micro-batch's loss, held-out evaluation, and the optimiser step
//! with gradient accumulation, on packed teacher-signal batches.
//!
//! The head is applied only to positions that carry a teacher signal: hidden states (B, L, C) are
//! gathered to (N, C) first, so the (N, V) logits cover completion tokens, not padding or prompts.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use distill_models::{Llama, LlamaConfig};
use distill_store::{Batch, Dataset};

use crate::loss::{distillation_loss, loss_from_buckets, Divergence, LossConfig, PlainTargets};
use crate::optim::{clip_scale, grad_norm, AdamW, AdamWConfig, Schedule};
use crate::{chunked, fused};

/// A student whose parameters are trainable variables.
pub struct Student {
    /// The model on the variables themselves (f32 master weights under mixed precision).
    pub model: Llama,
    pub vars: Vec<(String, Var)>,
    /// The dtype of the forward and backward: the variables' own, or bf16 over f32 variables,
    /// where each step runs a model on casts of them and the gradients flow back through the casts.
    compute: DType,
    head: HeadPath,
}

/// How [`Student::batch_loss`] applies the head and loss. Decided once, in [`Student::with_compute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadPath {
    /// [`crate::fused`]: the CPU kernel, in f32.
    Fused,
    /// [`crate::chunked`]: candle's ops in chunks of rows, on any device and dtype.
    Chunked,
    /// (N, V) logits and the composed loss, for comparisons (`DISTILL_COMPOSED_HEAD=1`).
    Composed,
}

impl Student {
    /// Wraps `weights` (HF names) as variables and builds the model on them, computing in the
    /// weights' own dtype.
    pub fn new(cfg: LlamaConfig, weights: &HashMap<String, Tensor>) -> distill_models::Result<Self> {
        Self::with_compute(cfg, weights, None)
    }

    /// [`Self::new`], with the forward and backward in `compute` when given (bf16 over f32
    /// variables: mixed precision).
    pub fn with_compute(
        cfg: LlamaConfig,
        weights: &HashMap<String, Tensor>,
        compute: Option<DType>,
    ) -> distill_models::Result<Self> {
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
        let compute = compute.unwrap_or(model.dtype());
        let head = if std::env::var("DISTILL_COMPOSED_HEAD").is_ok_and(|v| v == "1") {
            HeadPath::Composed
        } else if model.device().is_cpu() && compute == DType::F32 && model.dtype() == DType::F32 {
            HeadPath::Fused
        } else {
            HeadPath::Chunked
        };
        Ok(Self { model, vars, compute, head })
    }

    /// The dtype of the forward and backward.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// The model a training step runs when it is not [`Self::model`]: one on casts of the
    /// variables to the compute dtype (differentiable: gradients reach the variables in their
    /// dtype). None when the compute dtype is the variables' own.
    fn cast_model(&self) -> Result<Option<Llama>> {
        if self.compute == self.model.dtype() {
            return Ok(None);
        }
        let cast: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().to_dtype(self.compute)?)))
            .collect::<Result<_>>()?;
        let model = Llama::from_weights(self.model.config().clone(), &cast)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(model))
    }

    /// Loss on the positions of `batch` that carry a teacher signal (None when there are none):
    /// through the fused head on the CPU in f32, the chunked one elsewhere, or (with the
    /// environment variable `DISTILL_COMPOSED_HEAD=1`, for comparisons) the composed reference.
    pub fn batch_loss(&self, batch: &Batch, loss: &LossConfig) -> Result<Option<StepLoss>> {
        match self.head {
            HeadPath::Fused => self.batch_loss_fused(batch, loss),
            HeadPath::Chunked => self.batch_loss_chunked(batch, loss),
            HeadPath::Composed => self.batch_loss_composed(batch, loss),
        }
    }

    /// [`Self::batch_loss`] through the fused, chunked CPU head and loss, in f32.
    pub fn batch_loss_fused(&self, batch: &Batch, loss: &LossConfig) -> Result<Option<StepLoss>> {
        let Some((hidden, targets, n)) = hidden_and_targets(&self.model, batch)? else {
            return Ok(None);
        };
        let out = fused::head_loss(&hidden, &self.model.lm_head_weight(), &targets, batch.k, loss)?;
        Ok(Some(StepLoss { loss: out.loss, objective: out.objective, tokens: n }))
    }

    /// [`Self::batch_loss`] through [`crate::chunked`], in the compute dtype.
    pub fn batch_loss_chunked(&self, batch: &Batch, loss: &LossConfig) -> Result<Option<StepLoss>> {
        let cast = self.cast_model()?;
        let model = cast.as_ref().unwrap_or(&self.model);
        let Some((hidden, targets, n)) = hidden_and_targets(model, batch)? else {
            return Ok(None);
        };
        let head = model.lm_head_weight();
        let rows = chunked::chunk_rows(head.dim(0)?);
        let out = chunked::head_loss(&hidden, &head, &targets, batch.k, loss, rows)?;
        Ok(Some(StepLoss { loss: out.loss, objective: out.objective, tokens: n }))
    }

    /// [`Self::batch_loss`] through (N, V) logits and the composed, autograd-differentiated loss.
    pub fn batch_loss_composed(&self, batch: &Batch, loss: &LossConfig) -> Result<Option<StepLoss>> {
        let cast = self.cast_model()?;
        let model = cast.as_ref().unwrap_or(&self.model);
        let Some((hidden, targets, n)) = hidden_and_targets(model, batch)? else {
            return Ok(None);
        };
        let logits = hidden.matmul(&model.lm_head_weight().t()?)?.to_dtype(DType::F32)?; // (N, V)
        let targets = targets.to_tensors(n, batch.k, model.device())?;
        let value = distillation_loss(&logits, &targets, loss)?;
        Ok(Some(StepLoss { loss: value.to_scalar::<f32>()? as f64, objective: value, tokens: n }))
    }

    /// Final hidden states (N, C) of `rows` at the flat positions `positions` (row · L + column),
    /// in the compute dtype.
    pub(crate) fn hidden_at(&self, rows: &PackedRows<'_>, positions: &[u32]) -> Result<Tensor> {
        let cast = self.cast_model()?;
        hidden_at(cast.as_ref().unwrap_or(&self.model), rows, positions)
    }

    /// Token-level KL(teacher‖student) (over top-K + tail) and top-1 agreement on a dataset.
    pub fn evaluate(&self, dataset: &Dataset, seq_len: usize, batch_size: usize) -> Result<Evaluation> {
        let mut packer = crate::data::fixed_order(dataset, seq_len, batch_size);
        let kl = LossConfig { divergence: Divergence::ForwardKl, ..LossConfig::default() };
        let (mut kl_sum, mut agree, mut count) = (0f64, 0usize, 0usize);
        while let Some(batch) = packer.next_batch().map_err(|e| candle_core::Error::Msg(e.to_string()))? {
            let Some((hidden, targets, n)) = hidden_and_targets(&self.model, &batch)? else { continue };
            let top1: Vec<u32> = targets.topk_ids.chunks(batch.k).map(|c| c[0]).collect();
            let (buckets, student_top1) =
                fused::head_buckets(&hidden, &self.model.lm_head_weight(), &targets, batch.k)?;
            let device = self.model.device();
            let student = Tensor::from_vec(buckets, (n, batch.k + 1), device)?;
            let t = targets.to_tensors(n, batch.k, device)?;
            let unused_ce = Tensor::zeros(n, DType::F32, device)?; // KL only: no cross-entropy term
            let per = loss_from_buckets(&student, &unused_ce, None, &t, &kl)?.to_vec1::<f32>()?;
            kl_sum += per.iter().map(|x| *x as f64).sum::<f64>();
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

/// `model`'s final hidden states (N, C) at the signal-carrying positions of `batch`, with their
/// targets.
fn hidden_and_targets(model: &Llama, batch: &Batch) -> Result<Option<(Tensor, PlainTargets, usize)>> {
    let positions: Vec<u32> =
        batch.loss_mask.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(i, _)| i as u32).collect();
    let n = positions.len();
    if n == 0 {
        return Ok(None);
    }
    let k = batch.k;
    let rows = PackedRows {
        batch_size: batch.batch_size,
        seq_len: batch.seq_len,
        input_ids: &batch.input_ids,
        position_ids: &batch.position_ids,
        segment_ids: &batch.segment_ids,
    };
    let selected = hidden_at(model, &rows, &positions)?; // (N, C)
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
    Ok(Some((selected, targets, n)))
}

/// `model`'s final hidden states (N, C) of `rows` at the flat positions `positions`.
fn hidden_at(model: &Llama, rows: &PackedRows<'_>, positions: &[u32]) -> Result<Tensor> {
    let (b, l) = (rows.batch_size, rows.seq_len);
    let device = model.device();
    let ids = Tensor::from_vec(rows.input_ids.to_vec(), (b, l), device)?;
    let hidden = model
        .forward_packed_hidden(&ids, rows.position_ids, rows.segment_ids)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?; // (B, L, C)
    let c = hidden.dim(2)?;
    let index = Tensor::from_vec(positions.to_vec(), positions.len(), device)?;
    hidden.reshape((b * l, c))?.index_select(&index, 0) // (N, C)
}

/// Packed rows (B, L) as the model reads them: token, position and segment ids, row-major.
pub(crate) struct PackedRows<'a> {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: &'a [u32],
    pub position_ids: &'a [u32],
    pub segment_ids: &'a [u32],
}

/// A micro-batch's loss: its value, the tensor to differentiate (the loss itself, or an objective
/// with the same gradient), and how many positions it covers.
pub struct StepLoss {
    pub loss: f64,
    pub objective: Tensor,
    pub tokens: usize,
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

/// Optimiser, schedule, clipping and gradient accumulation around a [`Student`].
pub struct Optimizer {
    pub adamw: AdamW,
    pub schedule: Schedule,
    pub clip: Option<f64>,
    params: Vec<(String, Var)>,
    pending: Option<candle_core::backprop::GradStore>,
}

impl Optimizer {
    pub fn new(student: &Student, config: AdamWConfig, schedule: Schedule, clip: Option<f64>) -> Result<Self> {
        Ok(Self {
            adamw: AdamW::new(student.vars.clone(), config)?,
            schedule,
            clip,
            params: student.vars.clone(),
            pending: None,
        })
    }

    /// Backward through `loss`, clip, update. Returns (learning rate, gradient norm before clipping).
    pub fn step(&mut self, loss: &Tensor) -> Result<(f64, f64)> {
        self.accumulate(loss, 1.0)?;
        self.apply()
    }

    /// Adds `weight ·` ∇`loss` to the pending gradients; the micro-batch's graph is freed here.
    pub fn accumulate(&mut self, loss: &Tensor, weight: f64) -> Result<()> {
        let grads = loss.backward()?;
        match &mut self.pending {
            None => {
                let mut scaled = grads;
                if weight != 1.0 {
                    for (_, var) in &self.params {
                        if let Some(g) = scaled.get(var.as_tensor()) {
                            let g = (g * weight)?;
                            scaled.insert(var.as_tensor(), g);
                        }
                    }
                }
                self.pending = Some(scaled);
            }
            Some(pending) => {
                for (_, var) in &self.params {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        let sum = match pending.get(var.as_tensor()) {
                            Some(p) => (p + (g * weight)?)?,
                            None => (g * weight)?,
                        };
                        pending.insert(var.as_tensor(), sum);
                    }
                }
            }
        }
        Ok(())
    }

    /// Clips and applies the accumulated gradients. Returns (learning rate, norm before clipping).
    pub fn apply(&mut self) -> Result<(f64, f64)> {
        let Some(grads) = self.pending.take() else {
            return Err(candle_core::Error::Msg("apply() without accumulated gradients".into()));
        };
        // Clipping is folded into the update as a scale on the gradients.
        let norm = grad_norm(&grads, &self.params)?;
        let lr = self.schedule.lr(self.adamw.steps_taken());
        self.adamw.step_scaled(&grads, lr, clip_scale(norm, self.clip.unwrap_or(f64::INFINITY)))?;
        Ok((lr, norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulated_micro_batches_equal_one_batch() {
        // Two identical students; one sees 0.5·(L1 + L2) at once, the other L1 and L2 accumulated.
        let cfg = distill_models::fixtures::tiny_config();
        let weights = distill_models::init::random_weights(&cfg, 5, &Device::Cpu).unwrap();
        let schedule = Schedule { peak: 0.01, warmup: 1, total: 10, min_ratio: 0.1 };
        let a = Student::new(cfg.clone(), &weights).unwrap();
        let b = Student::new(cfg, &weights).unwrap();
        let loss = |s: &Student, ids: &[u32]| -> Tensor {
            let ids = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
            let logits = s.model.forward(&ids).unwrap();
            crate::loss::ce_for_tests(&logits).unwrap()
        };
        let mut oa = Optimizer::new(&a, AdamWConfig::default(), schedule, Some(1.0)).unwrap();
        let mut ob = Optimizer::new(&b, AdamWConfig::default(), schedule, Some(1.0)).unwrap();
        let (x, y) = ([5u32, 9, 40, 7], [100u32, 3, 3, 8]);
        let together = ((loss(&a, &x) + loss(&a, &y)).unwrap() * 0.5).unwrap();
        oa.step(&together).unwrap();
        ob.accumulate(&loss(&b, &x), 0.5).unwrap();
        ob.accumulate(&loss(&b, &y), 0.5).unwrap();
        ob.apply().unwrap();
        for ((name, va), (_, vb)) in a.vars.iter().zip(&b.vars) {
            let d = (va.as_tensor() - vb.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "{name}: {d}");
        }
    }
}
