//! The LM head and the distillation loss, fused and chunked so no (N, V) logits tensor outlives a
//! chunk of rows.
//!
//! Every loss in [`crate::loss`] reads the student's logits only through the K + 1 bucket
//! log-probabilities at temperature τ and the untempered log-probability of the sampled token
//! (see [`loss_from_buckets`]). So, per chunk of R positions:
//!
//! 1. z = h W^T (R, V), then per row: max, Σ exp((z − m)/τ), the K ids' terms, the tail as their
//!    difference (in f64), and the target's untempered log-probability — the (R, K+2) inputs.
//! 2. The loss of the chunk on those inputs, differentiated by autograd on the small tensors:
//!    G = ∂L/∂(bucket log-probs), (R, K+1), and g = ∂L/∂(target log-prob), (R).
//! 3. The hand-written backward of the head, with p = softmax(z/τ), q_b the student's bucket mass:
//!    ∂L/∂z_v = (1/τ)·(G_b(v)·[v ∈ ids ? 1 : p_v/q_tail] − p_v·Σ_b G_b) + g·(1[v = target] − p¹_v)
//!    where p¹ = softmax(z); then dh = dz W and dW += dz^T h. A uniform-tail reverse KL also
//!    reads X = Σ_{v∉ids} p_v ln p_v; with G_X = ∂L/∂X it adds
//!    (1/τ)·G_X·p_v·([v ∉ ids]·(ln p_v + 1) − X − q_tail).
//!
//! The three products run through `gemm` on the tensors' own memory: the logits chunk is written
//! into one buffer reused for every chunk, computed once and overwritten in place by its
//! gradient, and dW accumulates in place, so no (V, C) temporary is made per chunk. What comes
//! back is the loss value and an *objective* tensor, a scalar (the loss, on the CPU) whose
//! gradients with respect to h and W are dh and dW: backward on it trains the student, including
//! a head tied to the embeddings. The composed path ([`crate::loss::per_position_loss`]) is the
//! reference this is tested against.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::loss::{loss_from_buckets, LossConfig, PlainTargets, TailSelf, NEG_BIG};
use distill_kernels::exp::{exp, sum_exp};
use distill_kernels::matmul::{gemm_into, Operand, Threads};
use distill_kernels::reduce;
use distill_models::cpu::with_f32;

/// Upper bound on the floats of one logits chunk (rows × vocabulary): 64 MiB of f32.
pub(crate) const CHUNK_FLOATS: usize = 16 << 20;

/// Rows per chunk for a vocabulary of `v`.
fn chunk_rows(v: usize) -> usize {
    (CHUNK_FLOATS / v.max(1)).clamp(1, 1024)
}

/// Loss value and the objective to call `backward` on (same gradient as the loss).
pub struct HeadLoss {
    pub loss: f64,
    pub objective: Tensor,
}

/// Per-row statistics of one logits row.
#[derive(Debug, Clone, Copy)]
struct RowStats {
    max: f32,
    /// Σ exp((z − max)/τ), f64
    sum_tau: f64,
    /// Σ exp((z − max)/τ) over the non-top-K ids
    tail_sum: f64,
    /// Σ exp(z − max) (untempered)
    sum_one: f64,
    /// Σ_{v∉ids} p_v ln p_v at τ (only when asked for, else 0)
    tail_plogp: f64,
}

/// The statistics of one logits row. The tail is summed directly over the entries outside `ids`
/// (which are set to −∞ for that pass and then restored), not taken as Σ all − Σ ids: a student
/// whose top-K holds all but 1e-9 of its mass keeps its tail's digits.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn row_stats(z: &mut [f32], ids: &[u32], tau: f32, need_one: bool, need_plogp: bool) -> RowStats {
    let max = reduce::max(z);
    let inv = 1.0 / tau;
    // The ids' logits, in order; a repeated id reads −∞ the second time, so counts once.
    let mut saved = Vec::with_capacity(ids.len());
    for &i in ids {
        saved.push(std::mem::replace(&mut z[i as usize], f32::NEG_INFINITY));
    }
    let tail_sum = sum_exp(z, inv, max * inv);
    let ids_sum: f64 = saved.iter().map(|&x| exp((x - max) * inv) as f64).sum();
    let sum_tau = tail_sum + ids_sum;
    let tail_plogp = if need_plogp && tail_sum > 0.0 {
        // Σ_tail e·u with u = (z − max)/τ, then Σ_tail p ln p = Σ_tail e·u / S − q_tail ln S.
        let eu = |x: f32| {
            let u = ((x - max) * inv) as f64;
            if u == f64::NEG_INFINITY {
                0.0
            } else {
                u.exp() * u
            }
        };
        let tail_eu: f64 = z.iter().map(|&x| eu(x)).sum();
        tail_eu / sum_tau - (tail_sum / sum_tau) * sum_tau.ln()
    } else {
        0.0
    };
    for (&i, &x) in ids.iter().zip(&saved).rev() {
        z[i as usize] = x;
    }
    let sum_one = if !need_one {
        0.0
    } else if tau == 1.0 {
        sum_tau
    } else {
        sum_exp(z, 1.0, max)
    };
    RowStats { max, sum_tau, tail_sum, sum_one, tail_plogp }
}

/// Fills `buckets` (K + 1) with the student's bucket log-probabilities at τ; returns the target's
/// untempered log-probability.
fn row_buckets(z: &[f32], ids: &[u32], target: u32, tau: f32, s: &RowStats, buckets: &mut [f32]) -> f32 {
    let lse_tau = (s.max / tau) as f64 + s.sum_tau.ln();
    for (b, &i) in buckets.iter_mut().zip(ids) {
        *b = ((z[i as usize] / tau) as f64 - lse_tau) as f32;
    }
    buckets[ids.len()] = if s.tail_sum > 0.0 { (s.tail_sum / s.sum_tau).ln() as f32 } else { NEG_BIG as f32 };
    if s.sum_one > 0.0 {
        ((z[target as usize] - s.max) as f64 - s.sum_one.ln()) as f32
    } else {
        0.0
    }
}

/// Gradients of the loss with respect to one row's inputs.
struct RowGrads<'a> {
    /// ∂L/∂(bucket log-probabilities), K + 1
    buckets: &'a [f32],
    /// ∂L/∂(the target's untempered log-probability)
    ce: f32,
    /// ∂L/∂(Σ_{v∉ids} p ln p)
    plogp: f32,
}

/// Overwrites the logits row `z` with ∂L/∂z given the row's gradients.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn row_backward(z: &mut [f32], ids: &[u32], target: u32, tau: f32, s: &RowStats, grads: &RowGrads) {
    let (g, g_ce, g_x) = (grads.buckets, grads.ce, grads.plogp);
    let k = ids.len();
    let inv = 1.0 / tau;
    let g_tail = g[k];
    let g_sum: f32 = g.iter().sum();
    let p_scale = (1.0 / s.sum_tau) as f32;
    let tail_scale = if s.tail_sum > 0.0 { (g_tail as f64 / s.tail_sum) as f32 } else { 0.0 };
    let one_scale = if g_ce != 0.0 { (1.0 / s.sum_one) as f32 } else { 0.0 };
    let (max, tempered) = (s.max, tau != 1.0);
    let ln_sum = s.sum_tau.ln() as f32;
    let q_tail = (s.tail_sum / s.sum_tau) as f32;
    let plogp_all = -(s.tail_plogp as f32) - q_tail;
    // The plogp term of a tail token: G_X·p·(ln p + 1), applied to every id first and taken back
    // from the K ids below.
    let plogp_term = |x: f32, e: f32| g_x * e * p_scale * ((x - max) * inv - ln_sum + 1.0);
    // Each id's own term, computed exactly as in the sweep so the corrections below cancel it.
    let id_logits: Vec<f32> = ids.iter().map(|&i| z[i as usize]).collect();
    let id_terms: Vec<f32> = id_logits.iter().map(|&x| exp((x - max) * inv)).collect();
    if g_x == 0.0 && (g_ce == 0.0 || !tempered) {
        // The common case: every term is a multiple of e (e¹ = e untempered), one pass.
        let c = (tail_scale - p_scale * g_sum) * inv - g_ce * one_scale;
        z.iter_mut().for_each(|x| *x = exp((*x - max) * inv) * c);
    } else {
        for x in z.iter_mut() {
            let e = exp((*x - max) * inv);
            let mut d = (e * tail_scale - e * p_scale * g_sum) * inv;
            if g_ce != 0.0 {
                let e1 = if tempered { exp(*x - max) } else { e };
                d -= g_ce * e1 * one_scale;
            }
            if g_x != 0.0 {
                d += (plogp_term(*x, e) + g_x * e * p_scale * plogp_all) * inv;
            }
            *x = d;
        }
    }
    for (j, ((&i, &e), &gk)) in ids.iter().zip(&id_terms).zip(g).enumerate() {
        let mut d = (gk - e * tail_scale) * inv;
        if g_x != 0.0 {
            // z[i] now holds its gradient; the logit itself is needed for ln p.
            d -= plogp_term(id_logits[j], e) * inv;
        }
        z[i as usize] += d;
    }
    z[target as usize] += g_ce;
}

/// Rows [r0, r1) of the targets as tensors.
fn slice_targets(t: &PlainTargets, k: usize, r0: usize, r1: usize) -> PlainTargets {
    PlainTargets {
        topk_ids: t.topk_ids[r0 * k..r1 * k].to_vec(),
        topk_logprobs: t.topk_logprobs[r0 * k..r1 * k].to_vec(),
        tail_logprobs: t.tail_logprobs[r0..r1].to_vec(),
        target_ids: t.target_ids[r0..r1].to_vec(),
        mask: t.mask[r0..r1].to_vec(),
    }
}

/// Mean loss over the masked rows of `hidden` (N, C) under the head `head` (V, C), with its
/// gradient carried by the returned objective.
pub fn head_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &PlainTargets,
    k: usize,
    cfg: &LossConfig,
) -> Result<HeadLoss> {
    head_loss_in_chunks(hidden, head, targets, k, cfg, chunk_rows(head.dim(0)?))
}

/// [`head_loss`] with `rows` positions per chunk.
pub fn head_loss_in_chunks(
    hidden: &Tensor,
    head: &Tensor,
    targets: &PlainTargets,
    k: usize,
    cfg: &LossConfig,
    rows: usize,
) -> Result<HeadLoss> {
    let (n, c) = hidden.dims2()?;
    let v = head.dim(0)?;
    let device = hidden.device();
    if n == 0 {
        return Ok(HeadLoss { loss: 0.0, objective: Tensor::zeros((), hidden.dtype(), device)? });
    }
    let (loss, dh, dw) = with_f32(&hidden.detach(), |h| {
        with_f32(&head.detach(), |w| chunked_head_loss(h, w, (n, c, v), targets, k, cfg, rows.max(1)))?
    })??;
    let dh = Tensor::from_vec(dh, (n, c), device)?;
    let dw = Tensor::from_vec(dw, (v, c), device)?;
    let objective = if device.is_cpu() && hidden.dtype() == DType::F32 && head.dtype() == DType::F32 {
        hidden.apply_op2(head, Objective { loss: loss as f32, dh, dw })?
    } else {
        ((hidden * dh)?.sum_all()? + (head * dw)?.sum_all()?)?
    };
    Ok(HeadLoss { loss, objective })
}

/// The loss as a scalar whose gradients with respect to (h, W) are the dh and dW computed with
/// it, handed back as they are: nothing of size (V, C) is multiplied or summed on the way (the
/// composed objective Σ h ⊙ dh + Σ W ⊙ dW costs three passes over W per step).
struct Objective {
    loss: f32,
    dh: Tensor,
    dw: Tensor,
}

impl CustomOp2 for Objective {
    fn name(&self) -> &'static str {
        "fused-head-objective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let scaled = |t: &Tensor| if g == 1.0 { Ok(t.clone()) } else { t.affine(g as f64, 0.0) };
        Ok((Some(scaled(&self.dh)?), Some(scaled(&self.dw)?)))
    }
}

/// The loss and its gradients dh (N·C) and dW (V·C) from row-major `h` (N, C) and `w` (V, C).
fn chunked_head_loss(
    h: &[f32],
    w: &[f32],
    (n, c, v): (usize, usize, usize),
    targets: &PlainTargets,
    k: usize,
    cfg: &LossConfig,
    rows: usize,
) -> Result<(f64, Vec<f32>, Vec<f32>)> {
    let device = &candle_core::Device::Cpu;
    let count = targets.mask.iter().map(|&m| m as f64).sum::<f64>().max(1.0);
    let tau = cfg.temperature as f32;
    let need_one = cfg.kd_weight < 1.0;
    let need_plogp = cfg.uses_tail_self();
    let mut loss = 0f64;
    let mut z_buffer = vec![0f32; rows.min(n) * v];
    let mut dh = vec![0f32; n * c];
    let mut dw = vec![0f32; v * c];
    for r0 in (0..n).step_by(rows) {
        let r = rows.min(n - r0);
        let hc = &h[r0 * c..(r0 + r) * c];
        let z = &mut z_buffer[..r * v];
        // z = hc · Wᵀ: Wᵀ's element (i, j) is w[j·C + i].
        gemm_into(z, v, (r, v, c), Operand::rows(hc, c), Operand::transposed(w, c), false, Threads::Pool);
        let tc = slice_targets(targets, k, r0, r0 + r);
        let mut buckets = vec![0f32; r * (k + 1)];
        let mut target_lp = vec![0f32; r];
        let stats: Vec<RowStats> = z
            .par_chunks_mut(v)
            .zip(buckets.par_chunks_mut(k + 1))
            .zip(target_lp.par_iter_mut())
            .enumerate()
            .map(|(i, ((zr, br), tl))| {
                let ids = &tc.topk_ids[i * k..(i + 1) * k];
                let s = row_stats(zr, ids, tau, need_one, need_plogp);
                *tl = row_buckets(zr, ids, tc.target_ids[i], tau, &s, br);
                s
            })
            .collect();
        let student = Var::from_tensor(&Tensor::from_vec(buckets, (r, k + 1), device)?)?;
        let target = Var::from_tensor(&Tensor::from_vec(target_lp, r, device)?)?;
        // X = Σ_{v∉ids} p ln p per row, as a variable, when the loss reads it.
        let plogp = if need_plogp {
            let x: Vec<f32> = stats.iter().map(|s| s.tail_plogp as f32).collect();
            Some(Var::from_tensor(&Tensor::from_vec(x, r, device)?)?)
        } else {
            None
        };
        let tail_self =
            plogp.as_ref().map(|x| TailSelf { plogp: x.as_tensor().clone(), ln_others: ((v - k) as f64).ln() });
        let tt = tc.clone().to_tensors(r, k, device)?;
        let per = loss_from_buckets(student.as_tensor(), target.as_tensor(), tail_self.as_ref(), &tt, cfg)?;
        let chunk_loss = ((per * &tt.mask)?.sum_all()? / count)?;
        loss += chunk_loss.to_scalar::<f32>()? as f64;
        let grads = chunk_loss.backward()?;
        let g = match grads.get(student.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; r * (k + 1)],
        };
        let per_row = |t: Option<&Tensor>| match t.and_then(|t| grads.get(t)) {
            Some(g) => g.to_vec1::<f32>(),
            None => Ok(vec![0.0; r]),
        };
        let g_ce = per_row(Some(target.as_tensor()))?;
        let g_plogp = per_row(plogp.as_ref().map(Var::as_tensor))?;
        z.par_chunks_mut(v).enumerate().for_each(|(i, zr)| {
            let ids = &tc.topk_ids[i * k..(i + 1) * k];
            let row = RowGrads { buckets: &g[i * (k + 1)..(i + 1) * (k + 1)], ce: g_ce[i], plogp: g_plogp[i] };
            row_backward(zr, ids, tc.target_ids[i], tau, &stats[i], &row);
        });
        // z now holds dz: dh = dz · W, and dW += dzᵀ · hc (dzᵀ's element (i, j) is dz[j·V + i]).
        let z = &z_buffer[..r * v];
        let dh_chunk = &mut dh[r0 * c..(r0 + r) * c];
        gemm_into(dh_chunk, c, (r, c, v), Operand::rows(z, v), Operand::rows(w, c), false, Threads::Pool);
        gemm_into(&mut dw, c, (v, c, r), Operand::transposed(z, v), Operand::rows(hc, c), r0 > 0, Threads::Pool);
    }
    Ok((loss, dh, dw))
}

/// Forward-only figures per row: the student's bucket log-probabilities at τ = 1 (N, K+1) flat,
/// and its argmax token.
pub fn head_buckets(hidden: &Tensor, head: &Tensor, targets: &PlainTargets, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let n = hidden.dim(0)?;
    let v = head.dim(0)?;
    let wt = head.detach().t()?;
    let rows = chunk_rows(v);
    let mut buckets = vec![0f32; n * (k + 1)];
    let mut argmax = vec![0u32; n];
    for r0 in (0..n).step_by(rows) {
        let r = rows.min(n - r0);
        let mut z = hidden.detach().narrow(0, r0, r)?.matmul(&wt)?.flatten_all()?.to_vec1::<f32>()?;
        z.par_chunks_mut(v)
            .zip(buckets[r0 * (k + 1)..(r0 + r) * (k + 1)].par_chunks_mut(k + 1))
            .zip(argmax[r0..r0 + r].par_iter_mut())
            .enumerate()
            .for_each(|(i, ((zr, br), am))| {
                let row = r0 + i;
                let ids = &targets.topk_ids[row * k..(row + 1) * k];
                let s = row_stats(zr, ids, 1.0, false, false);
                row_buckets(zr, ids, targets.target_ids[row], 1.0, &s, br);
                *am =
                    zr.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &x)| if x > a.1 { (j, x) } else { a }).0
                        as u32;
            });
    }
    Ok((buckets, argmax))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loss::{distillation_loss, Divergence, TailModel};
    use candle_core::{Device, D};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Random hidden states, head, and a teacher signal taken from a random "teacher" softmax.
    pub(crate) fn case(n: usize, c: usize, v: usize, k: usize, seed: u64) -> (Var, Var, PlainTargets) {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal =
            |len: usize, scale: f32| -> Vec<f32> { (0..len).map(|_| rng.gen_range(-1.0..1.0f32) * scale).collect() };
        let hidden = Var::from_tensor(&Tensor::from_vec(normal(n * c, 1.0), (n, c), &dev).unwrap()).unwrap();
        let head = Var::from_tensor(&Tensor::from_vec(normal(v * c, 0.5), (v, c), &dev).unwrap()).unwrap();
        let teacher = Tensor::from_vec(normal(n * v, 3.0), (n, v), &dev).unwrap();
        let lp = candle_core::Tensor::log(
            &candle_core::Tensor::exp(&teacher)
                .unwrap()
                .broadcast_div(&candle_core::Tensor::exp(&teacher).unwrap().sum_keepdim(D::Minus1).unwrap())
                .unwrap(),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        let mut t = PlainTargets {
            topk_ids: vec![],
            topk_logprobs: vec![],
            tail_logprobs: vec![],
            target_ids: vec![],
            mask: vec![],
        };
        for (i, row) in lp.iter().enumerate() {
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
            let top = &order[..k];
            t.topk_ids.extend(top.iter().map(|&j| j as u32));
            t.topk_logprobs.extend(top.iter().map(|&j| row[j]));
            let mass: f64 = top.iter().map(|&j| (row[j] as f64).exp()).sum();
            t.tail_logprobs.push((1.0 - mass).max(1e-30).ln() as f32);
            t.target_ids.push(order[i % v] as u32);
            t.mask.push(if i % 5 == 3 { 0.0 } else { 1.0 });
        }
        (hidden, head, t)
    }

    pub(crate) fn config(divergence: Divergence, kd_weight: f64, temperature: f64, tail: TailModel) -> LossConfig {
        LossConfig { divergence, kd_weight, temperature, tail }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_matches_composed_in_value_and_gradient() {
        let (n, c, v, k) = (11, 8, 50, 6);
        let configs = [
            config(Divergence::ForwardKl, 1.0, 1.0, TailModel::Bucket),
            config(Divergence::ReverseKl, 1.0, 1.0, TailModel::Bucket),
            config(Divergence::Jsd { beta: 0.5 }, 0.7, 2.0, TailModel::Bucket),
            config(Divergence::SkewKl { alpha: 0.1 }, 1.0, 1.0, TailModel::Bucket),
            config(Divergence::TotalVariation, 0.5, 1.0, TailModel::Bucket),
            config(Divergence::ForwardKl, 0.0, 1.0, TailModel::Bucket),
            config(Divergence::ForwardKl, 0.5, 0.5, TailModel::Bucket),
            config(Divergence::ReverseKl, 1.0, 1.0, TailModel::Uniform),
            config(Divergence::Jsd { beta: 1.0 }, 0.6, 2.0, TailModel::Uniform),
        ];
        for (ci, cfg) in configs.iter().enumerate() {
            let (hidden, head, targets) = case(n, c, v, k, ci as u64);
            let logits = hidden.as_tensor().matmul(&head.as_tensor().t().unwrap()).unwrap();
            let reference =
                distillation_loss(&logits, &targets.clone().to_tensors(n, k, &Device::Cpu).unwrap(), cfg).unwrap();
            let ref_grads = reference.backward().unwrap();
            for rows in [3, 64] {
                let fused = head_loss_in_chunks(hidden.as_tensor(), head.as_tensor(), &targets, k, cfg, rows).unwrap();
                let expected = reference.to_scalar::<f32>().unwrap() as f64;
                assert!(
                    (fused.loss - expected).abs() < 1e-5 * expected.abs().max(1.0),
                    "{cfg:?}: {} vs {expected}",
                    fused.loss
                );
                let grads = fused.objective.backward().unwrap();
                for var in [&hidden, &head] {
                    let (a, b) = (grads.get(var.as_tensor()).unwrap(), ref_grads.get(var.as_tensor()).unwrap());
                    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
                    let d = max_diff(a, b);
                    assert!(d < 1e-4 * scale.max(1.0), "{cfg:?}, {rows} rows: gradient differs by {d} (scale {scale})");
                }
            }
        }
    }

    /// The objective's value is the loss, and a scaled objective scales both gradients (the
    /// op hands dh and dW back as they are only for a unit gradient).
    #[test]
    fn the_objective_is_the_loss_and_scales_its_gradients() {
        let (n, c, v, k) = (7, 8, 40, 4);
        let cfg = config(Divergence::ForwardKl, 1.0, 1.0, TailModel::Bucket);
        let (hidden, head, targets) = case(n, c, v, k, 9);
        let fused = head_loss(hidden.as_tensor(), head.as_tensor(), &targets, k, &cfg).unwrap();
        let value = fused.objective.to_scalar::<f32>().unwrap() as f64;
        assert!((value - fused.loss).abs() < 1e-6 * fused.loss.abs().max(1.0), "{value} vs {}", fused.loss);
        let whole = fused.objective.backward().unwrap();
        let scaled = (&fused.objective * -2.5).unwrap().backward().unwrap();
        for var in [&hidden, &head] {
            let want = (whole.get(var.as_tensor()).unwrap() * -2.5).unwrap();
            let d = max_diff(scaled.get(var.as_tensor()).unwrap(), &want);
            assert!(d < 1e-6, "scaled gradient differs by {d}");
        }
    }

    /// A student whose top-K holds all but ~1e-9 of its mass: the tail bucket against float64.
    /// (Formed as Σ all − Σ ids, the previous way, this tail was 0.08 nats off.)
    #[test]
    fn a_tiny_student_tail_keeps_its_digits() {
        let (v, k) = (4000usize, 5usize);
        let mut z: Vec<f32> = (0..v).map(|j| -25.0 - (j % 7) as f32 * 0.1).collect();
        let ids: Vec<u32> = vec![17, 3, 999, 2500, 3999];
        ids.iter().for_each(|&i| z[i as usize] = 0.0);
        for tau in [1.0f32, 2.0] {
            let before = z.clone();
            let stats = row_stats(&mut z, &ids, tau, true, true);
            assert_eq!(z, before, "the row is restored");
            let mut buckets = vec![0f32; k + 1];
            row_buckets(&z, &ids, ids[0], tau, &stats, &mut buckets);
            let terms: Vec<f64> = z.iter().map(|&x| (x as f64 / tau as f64).exp()).collect();
            let total: f64 = terms.iter().sum();
            let tail: f64 = (0..v).filter(|j| !ids.contains(&(*j as u32))).map(|j| terms[j]).sum();
            let want = (tail / total).ln();
            assert!((buckets[k] as f64 - want).abs() < 1e-4, "τ = {tau}: tail {} vs {want}", buckets[k]);
            let plogp: f64 =
                (0..v).filter(|j| !ids.contains(&(*j as u32))).map(|j| terms[j] / total).map(|p| p * p.ln()).sum();
            assert!(
                (stats.tail_plogp - plogp).abs() < 1e-4 * plogp.abs(),
                "τ = {tau}: {} vs {plogp}",
                stats.tail_plogp
            );
        }
    }

    #[test]
    fn forward_buckets_match_composed() {
        let (n, c, v, k) = (9, 8, 40, 5);
        let (hidden, head, targets) = case(n, c, v, k, 42);
        let (buckets, argmax) = head_buckets(hidden.as_tensor(), head.as_tensor(), &targets, k).unwrap();
        let logits = hidden.as_tensor().matmul(&head.as_tensor().t().unwrap()).unwrap();
        let lp = (&logits - logits.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap().broadcast_as((n, v)).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for i in 0..n {
            let ids = &targets.topk_ids[i * k..(i + 1) * k];
            let tail: f64 = (0..v).filter(|j| !ids.contains(&(*j as u32))).map(|j| (lp[i][j] as f64).exp()).sum();
            for (b, id) in ids.iter().enumerate() {
                assert!((buckets[i * (k + 1) + b] - lp[i][*id as usize]).abs() < 1e-5);
            }
            assert!((buckets[i * (k + 1) + k] as f64 - tail.ln()).abs() < 1e-5);
            let best = (0..v).max_by(|a, b| lp[i][*a].total_cmp(&lp[i][*b])).unwrap();
            assert_eq!(argmax[i] as usize, best);
        }
    }
}
