//! The fused RMSNorm behind [`super::rms_norm`].

use super::{cpu_f32, operand};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use distill_kernels::rms_norm as kernel;

/// RMSNorm of (…, C) rows with a (C) weight.
#[derive(Clone, Copy)]
pub(super) struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    pub(super) fn fits(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Self> {
        let c = weight.dims1().ok()?;
        let fits = cpu_f32(&[x, weight]) && c > 0 && x.dims().last() == Some(&c);
        fits.then_some(Self { eps: eps as f32 })
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = operand(s1, l1, "RMSNorm", "input")?;
        let w = operand(s2, l2, "RMSNorm", "weight")?;
        let out = kernel::rms_norm(x, w, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass computes both gradients: (R + 1, C), the input's rows and then the weight's.
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let rows = both.dim(0)? - 1;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(dx), Some(both.get(rows)?)))
    }
}

/// Backward of [`RmsNorm`] from its input, weight and the output's gradient.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = operand(s1, l1, "RMSNorm backward", "input")?;
        let w = operand(s2, l2, "RMSNorm backward", "weight")?;
        let grad = operand(s3, l3, "RMSNorm backward", "gradient")?;
        let (c, rows) = (w.len(), x.len() / w.len());
        let mut out = vec![0f32; x.len() + c];
        let (dx, dw) = out.split_at_mut(x.len());
        kernel::rms_norm_backward(x, w, grad, self.eps, dx, dw);
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_matches_composed, values};
    use super::*;
    use crate::ops::{rms_norm, rms_norm_composed};
    use candle_core::Device;

    /// Against the composed RMSNorm, outputs and the gradients of input and weight, for a 3-d
    /// input and for a narrowed (non-contiguous) one as the decoding step passes.
    #[test]
    fn fused_rms_norm_matches_the_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, t, c) = (2usize, 5usize, 12usize);
        let x = Tensor::from_vec(values(b * t * c, 0), (b, t, c), &dev).unwrap();
        let w = Tensor::from_vec(values(c, 3).iter().map(|v| v + 1.0).collect::<Vec<f32>>(), c, &dev).unwrap();
        assert!(RmsNorm::fits(&x, &w, 1e-5).is_some(), "the fused path must be taken");
        let fused = |i: &[Tensor]| rms_norm(&i[0], &i[1], 1e-5);
        let composed = |i: &[Tensor]| rms_norm_composed(&i[0], &i[1], 1e-5);
        assert_matches_composed(&[x.clone(), w.clone()], &fused, &composed, 1e-5);
        let fused_last = |i: &[Tensor]| rms_norm(&i[0].narrow(1, t - 1, 1)?, &i[1], 1e-5);
        let composed_last = |i: &[Tensor]| rms_norm_composed(&i[0].narrow(1, t - 1, 1)?, &i[1], 1e-5);
        assert_matches_composed(&[x, w], &fused_last, &composed_last, 1e-5);
    }
}
