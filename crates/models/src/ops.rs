//! Differentiable building blocks composed from candle-core primitives.
//!
//! candle-nn's `rms_norm`, `softmax_last_dim` and `rope` are fused kernels without a backward pass:
//! a model built on them trains silently wrong. Everything here is made of ops that candle's
//! autograd knows, so every parameter receives its gradient — or, for [`masked_softmax`], is a
//! fused kernel from the kernels crate with a hand-written backward, tested against the
//! composed ops here.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?; // (…, 1)
    let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and detached:
/// softmax is invariant to the shift, so its gradient through the maximum is zero anyway.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// Attention weights `softmax(scores · scale + mask)` over the last dimension.
///
/// `scores`: (B, H, T, S); `mask`: additive, (B, 1, T, S) or (1, 1, T, S). On the CPU in f32 this
/// is one fused kernel with a hand-written backward (`distill_kernels::softmax`); elsewhere, or
/// for other mask shapes, the composed ops.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some(op) = MaskedSoftmax::fits(scores, mask, scale) {
        return scores.contiguous()?.apply_op2(&mask.contiguous()?, op);
    }
    softmax_last_dim(&(scores * scale)?.broadcast_add(mask)?)
}

/// The fused [`masked_softmax`]: rows of `scores` are (batch, head, query), each with its mask row.
#[derive(Clone, Copy)]
struct MaskedSoftmax {
    scale: f32,
    heads: usize,
    queries: usize,
    /// The mask has one (T, S) plane per batch row rather than one for all.
    per_batch_mask: bool,
}

impl MaskedSoftmax {
    fn fits(scores: &Tensor, mask: &Tensor, scale: f64) -> Option<Self> {
        let on_cpu_f32 = scores.device().is_cpu() && scores.dtype() == DType::F32 && mask.dtype() == DType::F32;
        let (b, h, t, s) = scores.dims4().ok()?;
        let (mb, mh, mt, ms) = mask.dims4().ok()?;
        let shapes_fit = mh == 1 && mt == t && ms == s && (mb == b || mb == 1) && s > 0;
        (on_cpu_f32 && shapes_fit).then_some(Self {
            scale: scale as f32,
            heads: h,
            queries: t,
            per_batch_mask: mb == b && b > 1,
        })
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match crate::cpu::f32_data(storage, layout) {
        Some(data) => Ok(data),
        None => candle_core::bail!("masked softmax: {what} must be contiguous f32"),
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s1, l1, "scores")?; // (B, H, T, S)
        let mask = contiguous_f32(s2, l2, "mask")?; // (B or 1, 1, T, S)
        let s = *l1.dims().last().unwrap_or(&1);
        let (h, t, per_batch) = (self.heads, self.queries, self.per_batch_mask);
        let mask_row = |r: usize| if per_batch { (r / (h * t)) * t + r % t } else { r % t };
        let mut out = vec![0f32; scores.len()];
        distill_kernels::softmax::masked_softmax(scores, s, self.scale, mask, mask_row, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &MaskedSoftmaxGrad { scale: self.scale })?;
        Ok((Some(dx), None)) // the mask is a constant
    }
}

/// Backward of [`MaskedSoftmax`] from its output and the output's gradient.
struct MaskedSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(s1, l1, "probabilities")?;
        let grad = contiguous_f32(s2, l2, "gradient")?;
        let s = *l1.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; p.len()];
        distill_kernels::softmax::masked_softmax_backward(p, grad, s, self.scale, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Log-softmax over the last dimension, stable and differentiable.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Rotary position embedding in the Hugging Face ("rotate half") layout.
///
/// `x`: (B, H, T, D); `cos`, `sin`: broadcastable to (B, 1, T, D/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?; // (B, H, T, D/2)
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated_1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let rotated_2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[rotated_1, rotated_2], D::Minus1) // (B, H, T, D)
}

/// SwiGLU feed-forward activation: `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `x @ wᵀ` for a (…, C_in) input and an (C_out, C_in) weight, as `nn.Linear` does.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let c_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / c_in.max(1);
    let y = x.reshape((rows, c_in))?.matmul(&weight.t()?)?; // (rows, C_out)
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = weight.dim(0)?;
    }
    y.reshape(out_dims)
}

/// Additive attention mask value for disallowed positions: finite, so a row with every key
/// masked (a padding query) still yields a valid distribution instead of NaN.
pub const MASKED: f32 = -1e9;

/// Builds a (1, 1, T, S) causal mask for `t` new queries after `past` cached keys.
pub fn causal_mask(t: usize, past: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let s = past + t;
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { MASKED })).collect();
    Tensor::from_vec(mask, (1, 1, t, s), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused kernel against the composed ops it replaces: outputs and the gradient of a
    /// weighted sum, for a shared causal mask and for per-row masks with a padding query.
    #[test]
    fn fused_masked_softmax_matches_the_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, h, t) = (2usize, 3usize, 5usize);
        let causal = causal_mask(t, 0, DType::F32, &dev).unwrap(); // (1, 1, T, T)
        let mut rows: Vec<f32> = causal.flatten_all().unwrap().to_vec1().unwrap();
        rows.extend((0..t * t).map(|i| if i / t == 1 || i % t > i / t { MASKED } else { 0.0 })); // row 1 fully masked
        let per_batch = Tensor::from_vec(rows, (b, 1, t, t), &dev).unwrap();
        let values: Vec<f32> = (0..b * h * t * t).map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.2).collect();
        let w =
            Tensor::from_vec(values.iter().rev().map(|v| v * 0.7).collect::<Vec<f32>>(), (b, h, t, t), &dev).unwrap();
        for mask in [&causal, &per_batch] {
            assert!(MaskedSoftmax::fits(&w, mask, 0.5).is_some(), "the fused path must be taken");
            let run = |fused: bool| {
                let x = Var::from_tensor(&Tensor::from_vec(values.clone(), (b, h, t, t), &dev).unwrap()).unwrap();
                let p = if fused {
                    masked_softmax(x.as_tensor(), mask, 0.5).unwrap()
                } else {
                    softmax_last_dim(&(x.as_tensor() * 0.5).unwrap().broadcast_add(mask).unwrap()).unwrap()
                };
                let grads = (&p * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (p.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
            };
            let ((p_fused, g_fused), (p_composed, g_composed)) = (run(true), run(false));
            for (i, (a, c)) in p_fused.iter().zip(&p_composed).enumerate() {
                assert!((a - c).abs() < 1e-6, "p[{i}]: {a} vs {c}");
            }
            for (i, (a, c)) in g_fused.iter().zip(&g_composed).enumerate() {
                assert!((a - c).abs() < 1e-5, "grad[{i}]: {a} vs {c}");
            }
        }
    }
}
