//! The fused RoPE behind [`super::rope_heads`].

use super::{cpu_f32, operands3};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use distill_kernels::rope::{self as kernel, RopeShape};

/// RoPE on a (B, T, N, D) projection, written out as (B, N, T, D).
#[derive(Clone, Copy)]
pub(super) struct Rope {
    shape: RopeShape,
}

impl Rope {
    pub(super) fn fits(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Self> {
        Self::for_heads(x.dims4().ok()?, cpu_f32(&[x]), cos, sin)
    }

    /// RoPE on heads of `(b, t, n, d)`, from tensors on the CPU in f32 (`cpu_f32`) and tables
    /// that fit them.
    pub(super) fn for_heads(
        (b, t, n, d): (usize, usize, usize, usize),
        cpu_f32_in: bool,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Option<Self> {
        let (cb, ct, half) = match *cos.dims() {
            [ct, half] => (1, ct, half),
            [cb, 1, ct, half] => (cb, ct, half),
            _ => return None,
        };
        let tables_fit = cos.dims() == sin.dims() && cos.is_contiguous() && sin.is_contiguous();
        let fits = cpu_f32_in && cpu_f32(&[cos, sin]) && tables_fit && (cb == b || cb == 1) && ct == t && half * 2 == d;
        let shape = RopeShape { batch: b, tokens: t, heads: n, head_dim: d, per_batch_angles: cb == b && b > 1 };
        fits.then_some(Self { shape })
    }

    pub(super) fn shape(&self) -> RopeShape {
        self.shape
    }

    pub(super) fn out_shape(&self) -> Shape {
        let RopeShape { batch, tokens, heads, head_dim, .. } = self.shape;
        Shape::from((batch, heads, tokens, head_dim))
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (x, cos, sin) = operands3("RoPE", ["input", "cos table", "sin table"], (s1, l1), (s2, l2), (s3, l3))?;
        let out = kernel::rope_to_heads(x, self.shape, cos, sin);
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &RopeGrad { forward: *self })?;
        Ok((Some(dx.reshape(x.shape())?), None, None)) // the tables are constants
    }
}

/// Backward of [`Rope`]: the output's gradient (B, N, T, D) → the input's (B, T, N, D).
struct RopeGrad {
    forward: Rope,
}

impl CustomOp3 for RopeGrad {
    fn name(&self) -> &'static str {
        "rope-grad"
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
        let (grad, cos, sin) =
            operands3("RoPE backward", ["gradient", "cos table", "sin table"], (s1, l1), (s2, l2), (s3, l3))?;
        let shape = self.forward.shape;
        let dx = kernel::rope_to_heads_backward(grad, shape, cos, sin);
        Ok((CpuStorage::F32(dx), Shape::from((shape.batch, shape.tokens, shape.heads, shape.head_dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_matches_composed, values};
    use super::*;
    use crate::ops::{rope_composed, rope_heads};
    use candle_core::Device;

    /// Against the composed RoPE on the transposed input: outputs and the input's gradient, with
    /// per-batch-row angle tables (packed rows, left padding) and with one table for all rows,
    /// 4-d or 2-d.
    #[test]
    fn fused_rope_matches_the_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, t, n, d) = (2usize, 4usize, 3usize, 8usize);
        let x = Tensor::from_vec(values(b * t * n * d, 0), (b, t, n, d), &dev).unwrap();
        for table_dims in [vec![b, 1, t, d / 2], vec![1, 1, t, d / 2], vec![t, d / 2]] {
            let angles: Vec<f32> = (0..table_dims.iter().product::<usize>()).map(|i| 0.37 * i as f32).collect();
            let table = |f: fn(f32) -> f32| {
                Tensor::from_vec(angles.iter().map(|a| f(*a)).collect::<Vec<f32>>(), table_dims.as_slice(), &dev)
                    .unwrap()
            };
            let (cos, sin) = (table(f32::cos), table(f32::sin));
            assert!(Rope::fits(&x, &cos, &sin).is_some(), "the fused path must be taken");
            let fused = |i: &[Tensor]| rope_heads(&i[0], &cos, &sin);
            let composed = |i: &[Tensor]| rope_composed(&i[0].transpose(1, 2)?, &cos, &sin);
            assert_matches_composed(std::slice::from_ref(&x), &fused, &composed, 1e-5);
        }
    }
}
