//! Differentiable building blocks.
//!
//! candle-nn's `rms_norm`, `softmax_last_dim` and `rope` are fused kernels without a backward pass:
//! a model built on them trains silently wrong. Each block here is either composed from ops that
//! candle's autograd knows, or — on the CPU in f32 — a fused kernel from the kernels crate wrapped
//! as a candle custom op with a hand-written backward. The choice is made per call: the composed
//! form is the fallback on other devices and dtypes, and the tests hold each fused op to it,
//! outputs and gradients.

mod attention;
mod gate;
mod norm;
mod packed;
mod rotary;

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, D};
use distill_kernels::packed::PackedWeight;
use rotary::Rope;

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(op) = norm::RmsNorm::fits(x, weight, eps) {
        return x.contiguous()?.apply_op2(&weight.contiguous()?, op);
    }
    rms_norm_composed(x, weight, eps)
}

/// Composed; a half-precision input is normalised and weighted in f32 and rounded back, so the
/// weight's gradient, a sum over every row, is summed in f32 too.
fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(wide(dtype))?;
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?; // (…, 1)
    let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(&weight.to_dtype(wide(dtype))?)?.to_dtype(dtype)
}

/// The dtype reductions of a `dtype` tensor run in: f32 for the half-precision types.
fn wide(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and detached:
/// softmax is invariant to the shift, so its gradient through the maximum is zero anyway.
/// A half-precision input is summed in f32, and the result rounded back.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(wide(dtype))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)?.to_dtype(dtype)
}

/// Attention weights `softmax(scores · scale + mask)` over the last dimension.
///
/// `scores`: (B, H, T, S); `mask`: additive, broadcastable to it. Composed: on the CPU in f32,
/// [`attention`] runs its fused kernel instead and never forms the scores.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(scores * scale)?.broadcast_add(mask)?)
}

/// Attention `softmax(q kᵀ · scale + mask) v`, heads side by side in the output.
///
/// `q`: (B, N, T, D); `k`, `v`: (B, G, S, D), G key/value heads each shared by N/G query heads;
/// `mask`: additive, (B, 1, T, S) or (1, 1, T, S). Returns (B, T, N·D), the output projection's
/// input. Fused on the CPU in f32 (`distill_kernels::attention`): tiles of queries multiply only
/// the keys their mask leaves open, and nothing of size (B, N, T, S) is kept for the backward.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some(op) = attention::Attention::fits(q, k, v, mask, scale) {
        return q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    let (b, n, t, d) = q.dims4()?;
    let group = n / k.dim(1)?;
    let probs = masked_softmax(&q.matmul(&repeat_kv(k, group)?.t()?)?, mask, scale)?; // (B, N, T, S)
    probs.matmul(&repeat_kv(v, group)?)?.transpose(1, 2)?.reshape((b, t, n * d))
}

/// Repeats each key/value head `n_rep` times for grouped-query attention: (B, G, S, D) →
/// (B, G·n_rep, S, D).
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, g, s, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, g, n_rep, s, d))?.reshape((b, g * n_rep, s, d))
}

/// Log-softmax over the last dimension, stable and differentiable.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Rotary position embedding in the Hugging Face ("rotate half") layout, applied to a
/// projection's heads and moved to attention's layout: `x` (B, T, N, D) → (B, N, T, D).
///
/// `cos`, `sin`: (B, 1, T, D/2), (1, 1, T, D/2) or (T, D/2). Fused with the move on the CPU in f32
/// (`distill_kernels::rope`).
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(op) = rotary::Rope::fits(x, cos, sin) {
        return x.contiguous()?.apply_op3(cos, sin, op);
    }
    rope_composed(&x.transpose(1, 2)?, cos, sin)
}

/// RoPE on (B, H, T, D) with `cos`, `sin` broadcastable to (B, 1, T, D/2).
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?; // (B, H, T, D/2)
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated_1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let rotated_2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[rotated_1, rotated_2], D::Minus1) // (B, H, T, D)
}

/// SwiGLU feed-forward activation: `silu(gate) * up`. Fused on the CPU in f32
/// (`distill_kernels::swiglu`).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some(op) = gate::Swiglu::fits(gate, up) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, op);
    }
    swiglu_composed(gate, up)
}

fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `x @ wᵀ` for a (…, C_in) input and an (C_out, C_in) weight, as `nn.Linear` does.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    on_rows(x, weight.dim(0)?, bias, |rows| rows.matmul(&weight.t()?))
}

/// [`linear`] against a weight packed for one of `distill_kernels::packed`'s kernels (f32, or
/// bf16 operands with f32 sums). Inference only — the op has no backward, so calling `backward`
/// through it is an error, not a silently missing gradient.
pub fn linear_packed(x: &Tensor, weight: &Arc<PackedWeight>, bias: Option<&Tensor>) -> Result<Tensor> {
    let c_in = weight.in_features();
    if x.dims().last() != Some(&c_in) || !cpu_f32(&[x]) {
        candle_core::bail!(
            "packed linear: input {:?} {:?} does not fit a weight of {c_in} inputs",
            x.dims(),
            x.dtype()
        );
    }
    on_rows(x, weight.out_features(), bias, |rows| rows.contiguous()?.apply_op1(packed::PackedLinear(weight.clone())))
}

/// `residual + x @ wᵀ` against a packed weight: the residual connection added inside the
/// matmul, as each block of the product is still in cache. `residual` has the output's shape
/// (…, C_out). The same values as [`linear_packed`] followed by the addition; inference only.
pub fn linear_packed_residual(x: &Tensor, weight: &Arc<PackedWeight>, residual: &Tensor) -> Result<Tensor> {
    let (c_in, c_out) = (weight.in_features(), weight.out_features());
    let rows = x.elem_count() / c_in.max(1);
    if x.dims().last() != Some(&c_in)
        || !cpu_f32(&[x, residual])
        || residual.dims().last() != Some(&c_out)
        || residual.elem_count() != rows * c_out
    {
        candle_core::bail!(
            "packed linear: input {:?} and residual {:?} do not fit a weight of {c_out}×{c_in}",
            x.dims(),
            residual.dims()
        );
    }
    let flat = |t: &Tensor, c: usize| t.reshape((rows, c))?.contiguous();
    let y = flat(x, c_in)?.apply_op2(&flat(residual, c_out)?, packed::PackedLinearResidual(weight.clone()))?;
    y.reshape(residual.shape())
}

/// `silu(x @ gateᵀ) * (x @ upᵀ)` against two packed weights of one shape, without storing
/// either product: the values of [`linear_packed`] twice and [`swiglu`]. Inference only.
pub fn swiglu_packed(x: &Tensor, gate: &Arc<PackedWeight>, up: &Arc<PackedWeight>) -> Result<Tensor> {
    let c_in = gate.in_features();
    let same = (gate.out_features(), c_in, gate.precision()) == (up.out_features(), up.in_features(), up.precision());
    if !same || x.dims().last() != Some(&c_in) || !cpu_f32(&[x]) {
        candle_core::bail!(
            "packed SwiGLU: input {:?} {:?} does not fit gate and up weights of {c_in} inputs",
            x.dims(),
            x.dtype()
        );
    }
    let op = packed::PackedSwiglu { gate: gate.clone(), up: up.clone() };
    on_rows(x, gate.out_features(), None, |rows| rows.contiguous()?.apply_op1(op))
}

/// [`rope_heads`] of `x @ wᵀ` split into heads of `head_dim`, against a packed weight: (B, T,
/// C_in) → (B, N, T, D). With enough rows the product is rotated and moved as it is computed,
/// never stored in (B, T, N, D); the same values either way. Inference only.
pub fn rope_heads_packed(
    x: &Tensor,
    weight: &Arc<PackedWeight>,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
) -> Result<Tensor> {
    let (b, t, c_in) = x.dims3()?;
    let n = weight.out_features() / head_dim.max(1);
    let rope = Rope::for_heads((b, t, n, head_dim), cpu_f32(&[x]), cos, sin);
    match rope {
        Some(rope) if c_in == weight.in_features() && n * head_dim == weight.out_features() => {
            x.contiguous()?.apply_op3(cos, sin, packed::PackedRope { weight: weight.clone(), rope })
        }
        _ => rope_heads(&linear_packed(x, weight, None)?.reshape((b, t, n, head_dim))?, cos, sin),
    }
}

/// `x @ wᵢᵀ (+ biasᵢ)` for several packed weights of the same input and precision, in one
/// parallel loop ([`distill_kernels::packed::products`]): each (…, C_outᵢ), the same values as
/// [`linear_packed`] of each. Inference only: the outputs carry no gradient.
pub fn linear_packed_many(x: &Tensor, weights: &[(&Arc<PackedWeight>, Option<&Tensor>)]) -> Result<Vec<Tensor>> {
    let c_in = x.dims().last().copied().unwrap_or(0);
    let alike = weights.windows(2).all(|w| w[0].0.precision() == w[1].0.precision());
    if !cpu_f32(&[x]) || !alike || weights.iter().any(|(w, _)| w.in_features() != c_in) {
        candle_core::bail!("packed products: input {:?} {:?} does not fit the weights", x.dims(), x.dtype());
    }
    let x = x.contiguous()?;
    let packs: Vec<&PackedWeight> = weights.iter().map(|(w, _)| w.as_ref()).collect();
    let ys = crate::cpu::with_f32(&x, |data| distill_kernels::packed::products(data, &packs))?;
    let rows = x.elem_count() / c_in.max(1);
    ys.into_iter()
        .zip(weights)
        .map(|(y, (w, bias))| {
            let y = Tensor::from_vec(y, (rows, w.out_features()), x.device())?;
            on_rows(&x, w.out_features(), *bias, |_| Ok(y))
        })
        .collect()
}

/// Applies `project` ((rows, C_in) → (rows, C_out)) to the rows of a (…, C_in) input, adds the
/// bias and restores the leading dimensions: (…, C_out).
fn on_rows(
    x: &Tensor,
    c_out: usize,
    bias: Option<&Tensor>,
    project: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let c_in = *dims.last().unwrap_or(&0);
    let y = project(&x.reshape((x.elem_count() / c_in.max(1), c_in))?)?; // (rows, C_out)
    let y = match bias {
        Some(b) => {
            // A half-precision bias is added in f32: its gradient, a sum over every row, is
            // summed there.
            let dtype = y.dtype();
            y.to_dtype(wide(dtype))?.broadcast_add(&b.to_dtype(wide(dtype))?)?.to_dtype(dtype)?
        }
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = c_out;
    }
    y.reshape(dims)
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

/// Whether every tensor lives on the CPU in f32: where the fused kernels run.
fn cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// A custom op's operand as a contiguous f32 slice, or an error naming the op and the operand.
fn operand<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str, what: &str) -> Result<&'a [f32]> {
    match crate::cpu::f32_data(storage, layout) {
        Some(data) => Ok(data),
        None => candle_core::bail!("{op}: {what} must be contiguous f32"),
    }
}

/// The three operands of a [`candle_core::CustomOp3`] as contiguous f32 slices, named for the
/// error message.
fn operands3<'a>(
    op: &str,
    names: [&str; 3],
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
    Ok((operand(s1, l1, op, names[0])?, operand(s2, l2, op, names[1])?, operand(s3, l3, op, names[2])?))
}

#[cfg(test)]
mod testing {
    use candle_core::{Result, Tensor, Var};

    /// Outputs and input gradients of `f` at `inputs`, the gradients of the loss `Σ out ⊙ w` for
    /// fixed, uneven weights `w`.
    fn run(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> (Vec<f32>, Vec<Vec<f32>>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors).unwrap();
        let n = out.elem_count();
        let w: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5 + 0.1).collect();
        let w = Tensor::from_vec(w, out.shape(), out.device()).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let input_grads = tensors.iter().map(|t| flat(grads.get(t).expect("every input gets a gradient"))).collect();
        (flat(&out), input_grads)
    }

    /// The fused op against the composed ops it replaces: same outputs and same gradients for
    /// every input, within `tol`.
    pub(super) fn assert_matches_composed(
        inputs: &[Tensor],
        fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        composed: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let ((out_f, grads_f), (out_c, grads_c)) = (run(inputs, fused), run(inputs, composed));
        assert_eq!(out_f.len(), out_c.len(), "output sizes differ");
        for (i, (a, c)) in out_f.iter().zip(&out_c).enumerate() {
            assert!((a - c).abs() <= tol * c.abs().max(1.0), "out[{i}]: fused {a} vs composed {c}");
        }
        for (k, (gf, gc)) in grads_f.iter().zip(&grads_c).enumerate() {
            assert_eq!(gf.len(), gc.len(), "input {k}: gradient sizes differ");
            for (i, (a, c)) in gf.iter().zip(gc).enumerate() {
                assert!((a - c).abs() <= tol * c.abs().max(1.0), "input {k} grad[{i}]: fused {a} vs composed {c}");
            }
        }
    }

    /// Deterministic, uneven test values.
    pub(super) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 37 % 29) as f32 - 14.0) * 0.11).collect()
    }
}
