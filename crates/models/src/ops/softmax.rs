//! The fused attention softmax behind [`super::masked_softmax`].

use super::{cpu_f32, operand};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// The fused [`super::masked_softmax`]: rows of `scores` are (batch, head, query), each with its mask row.
#[derive(Clone, Copy)]
pub(super) struct MaskedSoftmax {
    scale: f32,
    heads: usize,
    queries: usize,
    /// The mask has one (T, S) plane per batch row rather than one for all.
    per_batch_mask: bool,
}

impl MaskedSoftmax {
    pub(super) fn fits(scores: &Tensor, mask: &Tensor, scale: f64) -> Option<Self> {
        let (b, h, t, s) = scores.dims4().ok()?;
        let (mb, mh, mt, ms) = mask.dims4().ok()?;
        let shapes_fit = mh == 1 && mt == t && ms == s && (mb == b || mb == 1) && s > 0;
        (cpu_f32(&[scores, mask]) && shapes_fit).then_some(Self {
            scale: scale as f32,
            heads: h,
            queries: t,
            per_batch_mask: mb == b && b > 1,
        })
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = operand(s1, l1, "masked softmax", "scores")?; // (B, H, T, S)
        let mask = operand(s2, l2, "masked softmax", "mask")?; // (B or 1, 1, T, S)
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
pub(super) struct MaskedSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = operand(s1, l1, "masked softmax backward", "probabilities")?;
        let grad = operand(s2, l2, "masked softmax backward", "gradient")?;
        let s = *l1.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; p.len()];
        distill_kernels::softmax::masked_softmax_backward(p, grad, s, self.scale, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{causal_mask, masked_softmax, softmax_last_dim, MASKED};
    use candle_core::{DType, Device, Var};

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
