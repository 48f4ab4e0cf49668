//! Differentiable building blocks composed from candle-core primitives.
//!
//! candle-nn's `rms_norm`, `softmax_last_dim` and `rope` are fused kernels without a backward pass:
//! a model built on them trains silently wrong. Everything here is made of ops that candle's
//! autograd knows, so every parameter receives its gradient. The fused, faster versions with
//! hand-written backward belong to the kernels crate and must match these.

use candle_core::{DType, Result, Tensor, D};

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
