//! Distillation losses over the teacher's top-K plus an explicit tail bucket.
//!
//! The teacher signal holds, per position, K token ids with log-probabilities and the log of the
//! remaining mass. Both distributions are compared on the same K + 1 buckets: the K tokens, and
//! "any other token" whose student probability is the student's mass outside the K ids. Every
//! divergence is therefore exact on that partition rather than a renormalised top-K guess.
//!
//! Definitions (p teacher, q student, over buckets; all in nats):
//! - forward KL: Σ p (ln p − ln q)
//! - reverse KL: Σ q (ln q − ln p)
//! - generalized JSD(β), as TRL's GKD: with m = β p + (1 − β) q,
//!   β·KL(p‖m) + (1 − β)·KL(q‖m); β = 0 is forward KL, β = 1 reverse KL (special-cased, as TRL)
//! - skew KL(α), as DistiLLM: KL(p ‖ α p + (1 − α) q)
//! - total variation: ½ Σ |p − q|
//! - cross-entropy on the sampled (teacher) tokens: −ln q(target), over the full vocabulary
//!
//! The loss is `α · divergence + (1 − α) · cross-entropy`, averaged over masked positions.
//!
//! Reverse KL on the buckets lets the student put its tail mass on any tokens, even a few the
//! teacher never ranked: on the student's own samples that is the mistake to correct. With
//! `tail = "uniform"` the teacher's tail mass is taken as spread evenly over the V − K other
//! tokens, which makes reverse KL a full-vocabulary KL under that assumption:
//! `KL_buckets + Σ_{v∉ids} q_v ln q_v − q_tail ln q_tail + q_tail ln(V − K)`, i.e. the bucket KL
//! plus `q_tail · KL(q's tail shape ‖ uniform)`.
//! At temperature τ ≠ 1 the student is softened as softmax(z/τ) and the teacher's buckets as
//! softmax(ln p / τ) over the K + 1 buckets (the tail treated as one token: the per-token tail is
//! not stored).
//!
//! This is the composed, autograd-differentiable reference; it holds (N, V) tensors. The fused,
//! vocabulary-chunked kernel must match it.

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Which divergence compares teacher and student.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    Jsd { beta: f64 },
    SkewKl { alpha: f64 },
    TotalVariation,
}

/// What the teacher is taken to put on each token outside its top-K, where the student's own
/// mass there is weighed (reverse KL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TailModel {
    /// The tail is one bucket: only the student's total mass outside the K ids counts.
    #[default]
    Bucket,
    /// The teacher's tail mass is spread evenly over the V − K other tokens, so student mass piled
    /// on a few tokens the teacher did not rank costs what it would in a full-vocabulary KL.
    Uniform,
}

impl TailModel {
    pub fn is_bucket(&self) -> bool {
        *self == TailModel::Bucket
    }
}

/// How the training loss is made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub divergence: Divergence,
    /// Weight of the divergence; `1 − kd_weight` goes to cross-entropy on the teacher's tokens.
    pub kd_weight: f64,
    pub temperature: f64,
    /// The teacher's tail: one bucket, or spread evenly (reverse KL only).
    #[serde(skip_serializing_if = "TailModel::is_bucket")]
    pub tail: TailModel,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { divergence: Divergence::ForwardKl, kd_weight: 1.0, temperature: 1.0, tail: TailModel::Bucket }
    }
}

impl LossConfig {
    /// Whether the loss needs the student's Σ_{v∉ids} q_v ln q_v ([`TailSelf`]).
    pub fn uses_tail_self(&self) -> bool {
        self.tail == TailModel::Uniform && self.kd_weight > 0.0 && is_reverse_kl(self.divergence)
    }

    /// Refuses a uniform tail with a divergence it is not defined for.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.tail == TailModel::Uniform && !is_reverse_kl(self.divergence) {
            return Err(format!(
                "tail = \"uniform\" is defined for reverse KL only (reverse_kl, or jsd with beta = 1), not {:?}",
                self.divergence
            ));
        }
        Ok(())
    }
}

fn is_reverse_kl(d: Divergence) -> bool {
    matches!(d, Divergence::ReverseKl) || matches!(d, Divergence::Jsd { beta } if beta >= 1.0)
}

/// The student's own tail term for [`TailModel::Uniform`].
pub struct TailSelf {
    /// (N) Σ_{v∉ids} q_v ln q_v at temperature τ.
    pub plogp: Tensor,
    /// ln(V − K).
    pub ln_others: f64,
}

/// Teacher signal for N positions.
pub struct TeacherTargets {
    /// (N, K) u32
    pub topk_ids: Tensor,
    /// (N, K) f32, at temperature 1
    pub topk_logprobs: Tensor,
    /// (N) f32, `ln(1 − Σ p)`; −∞ allowed
    pub tail_logprobs: Tensor,
    /// (N) u32, the token actually next (for cross-entropy)
    pub target_ids: Tensor,
    /// (N) f32, 1 where the position counts
    pub mask: Tensor,
}

/// Stand-in for −∞ that keeps `0 · x` at zero.
pub(crate) const NEG_BIG: f64 = -1e9;

/// Mean loss over masked positions. `student_logits`: (N, V).
pub fn distillation_loss(student_logits: &Tensor, targets: &TeacherTargets, cfg: &LossConfig) -> Result<Tensor> {
    let per_position = per_position_loss(student_logits, targets, cfg)?; // (N)
    let mask = targets.mask.to_dtype(per_position.dtype())?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    (per_position * &mask)?.sum_all()? / count
}

/// Loss of each position (N), before masking.
pub fn per_position_loss(student_logits: &Tensor, targets: &TeacherTargets, cfg: &LossConfig) -> Result<Tensor> {
    let (n, v) = student_logits.dims2()?;
    let tau = cfg.temperature;
    let student_lp = log_softmax(&(student_logits / tau)?)?; // (N, V)
    let k = targets.topk_ids.dim(1)?;
    // 0 on the ids outside the top-K, NEG_BIG on the K ids.
    let outside = Tensor::zeros((n, v), student_lp.dtype(), student_lp.device())?.scatter_add(
        &targets.topk_ids,
        &Tensor::full(NEG_BIG as f32, (n, k), student_lp.device())?,
        1,
    )?;
    let student_topk = student_lp.gather(&targets.topk_ids, 1)?; // (N, K)
    let student_tail = logsumexp(&(&student_lp + &outside)?)?.unsqueeze(1)?; // (N, 1)
    let student = Tensor::cat(&[student_topk, student_tail], 1)?; // (N, K+1)
    let tail_self = if cfg.uses_tail_self() {
        let plogp = ((&student_lp + &outside)?.exp()? * &student_lp)?.sum(D::Minus1)?;
        Some(TailSelf { plogp, ln_others: ((v - k) as f64).ln() })
    } else {
        None
    };
    // Cross-entropy uses the untempered student, as SFT would.
    let lp = if tau == 1.0 { student_lp.clone() } else { log_softmax(student_logits)? };
    let target_lp = lp.gather(&targets.target_ids.reshape((n, 1))?, 1)?.squeeze(1)?; // (N)
    loss_from_buckets(&student, &target_lp, tail_self.as_ref(), targets, cfg)
}

/// Loss of each position (N) from what the student puts on the buckets: `student` (N, K+1) holds
/// ln q over the teacher's K ids and the tail at temperature τ, `target_lp` (N) the untempered
/// ln q of the sampled token. Everything a loss needs from the (N, V) logits is in these two, which
/// is what lets the fused head ([`crate::fused`]) skip the full logits. `tail_self` is needed
/// when [`LossConfig::uses_tail_self`].
pub fn loss_from_buckets(
    student: &Tensor,
    target_lp: &Tensor,
    tail_self: Option<&TailSelf>,
    targets: &TeacherTargets,
    cfg: &LossConfig,
) -> Result<Tensor> {
    let kd = if cfg.kd_weight > 0.0 {
        let teacher = teacher_buckets(targets, cfg.temperature)?.to_dtype(student.dtype())?;
        let kd = divergence(student, &teacher, cfg.divergence)?;
        match (cfg.uses_tail_self(), tail_self) {
            (false, _) => Some(kd),
            (true, None) => candle_core::bail!("a uniform-tail reverse KL needs the student's tail term"),
            (true, Some(ts)) => {
                // + Σ_{v∉ids} q ln q − q_tail ln q_tail + q_tail ln(V − K)
                let k = student.dim(1)? - 1;
                let tail_lp = student.narrow(1, k, 1)?.squeeze(1)?;
                let q_tail = tail_lp.exp()?;
                let correction = ((&ts.plogp - (&q_tail * &tail_lp)?)? + (q_tail * ts.ln_others)?)?;
                Some((kd + correction)?)
            }
        }
    } else {
        None
    };
    let ce = if cfg.kd_weight < 1.0 { Some(target_lp.neg()?) } else { None };
    match (kd, ce) {
        (Some(kd), Some(ce)) => (kd * cfg.kd_weight)? + (ce * (1.0 - cfg.kd_weight))?,
        (Some(kd), None) => Ok(kd),
        (None, Some(ce)) => Ok(ce),
        (None, None) => unreachable!("kd_weight is either > 0 or < 1"),
    }
}

fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The teacher's log-probabilities over the K + 1 buckets (N, K+1), softened at `tau`; no gradient.
fn teacher_buckets(targets: &TeacherTargets, tau: f64) -> Result<Tensor> {
    let tail = targets.tail_logprobs.clamp(NEG_BIG, 0.0)?.unsqueeze(1)?;
    let mut teacher = Tensor::cat(&[targets.topk_logprobs.clone(), tail], 1)?;
    if tau != 1.0 {
        teacher = log_softmax(&(teacher / tau)?)?;
    }
    Ok(teacher.detach())
}

fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    (x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?.squeeze(D::Minus1)
}

/// Σ exp(a)(a − b) over the last dimension: KL(exp a ‖ exp b).
fn kl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a.exp()? * (a - b)?)?.sum(D::Minus1)
}

fn divergence(s: &Tensor, t: &Tensor, d: Divergence) -> Result<Tensor> {
    match d {
        Divergence::ForwardKl => kl(t, s),
        Divergence::ReverseKl => kl(s, t),
        Divergence::Jsd { beta } if beta <= 0.0 => kl(t, s),
        Divergence::Jsd { beta } if beta >= 1.0 => kl(s, t),
        Divergence::Jsd { beta } => {
            let m = log_mix(t, beta, s)?;
            (kl(t, &m)? * beta)? + (kl(s, &m)? * (1.0 - beta))?
        }
        Divergence::SkewKl { alpha } => kl(t, &log_mix(t, alpha, s)?),
        Divergence::TotalVariation => (t.exp()? - s.exp()?)?.abs()?.sum(D::Minus1)? * 0.5,
    }
}

/// ln(w·exp(a) + (1 − w)·exp(b)), stably.
fn log_mix(a: &Tensor, w: f64, b: &Tensor) -> Result<Tensor> {
    let a = (a + w.ln())?;
    let b = (b + (1.0 - w).ln())?;
    let max = a.maximum(&b)?.detach();
    ((a - &max)?.exp()? + (b - &max)?.exp()?)?.log()? + max
}

/// Teacher targets as plain row-major vectors (what the dataset packer produces).
#[derive(Debug, Clone, PartialEq)]
pub struct PlainTargets {
    /// (N, K)
    pub topk_ids: Vec<u32>,
    /// (N, K)
    pub topk_logprobs: Vec<f32>,
    /// (N)
    pub tail_logprobs: Vec<f32>,
    /// (N)
    pub target_ids: Vec<u32>,
    /// (N)
    pub mask: Vec<f32>,
}

impl PlainTargets {
    /// Positions `start .. start + n` of targets with `k` entries each.
    pub fn rows(&self, start: usize, n: usize, k: usize) -> PlainTargets {
        let (one, many) = (start..start + n, start * k..(start + n) * k);
        PlainTargets {
            topk_ids: self.topk_ids[many.clone()].to_vec(),
            topk_logprobs: self.topk_logprobs[many].to_vec(),
            tail_logprobs: self.tail_logprobs[one.clone()].to_vec(),
            target_ids: self.target_ids[one.clone()].to_vec(),
            mask: self.mask[one].to_vec(),
        }
    }

    /// Tensors for `n` positions of `k` entries each.
    pub fn to_tensors(self, n: usize, k: usize, device: &candle_core::Device) -> Result<TeacherTargets> {
        Ok(TeacherTargets {
            topk_ids: Tensor::from_vec(self.topk_ids, (n, k), device)?,
            topk_logprobs: Tensor::from_vec(self.topk_logprobs, (n, k), device)?,
            tail_logprobs: Tensor::from_vec(self.tail_logprobs, n, device)?,
            target_ids: Tensor::from_vec(self.target_ids, n, device)?,
            mask: Tensor::from_vec(self.mask, n, device)?.to_dtype(DType::F32)?,
        })
    }
}

/// Mean negative log-probability over every position and token of logits (1, T, V): a simple
/// differentiable loss for optimiser tests.
#[doc(hidden)]
pub fn ce_for_tests(logits: &Tensor) -> Result<Tensor> {
    let (_, t, v) = logits.dims3()?;
    let lp = log_softmax(&logits.reshape((t, v))?)?;
    lp.narrow(0, 0, t - 1)?.mean_all()?.neg()
}
