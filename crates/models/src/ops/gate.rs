//! The fused SwiGLU behind [`super::swiglu`].

use super::{cpu_f32, operand};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use distill_kernels::swiglu as kernel;

/// `silu(gate) · up` over two tensors of one shape.
#[derive(Clone, Copy)]
pub(super) struct Swiglu;

impl Swiglu {
    pub(super) fn fits(gate: &Tensor, up: &Tensor) -> Option<Self> {
        (cpu_f32(&[gate, up]) && gate.dims() == up.dims()).then_some(Self)
    }
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = operand(s1, l1, "SwiGLU", "gate")?;
        let up = operand(s2, l2, "SwiGLU", "up projection")?;
        let out = kernel::swiglu(gate, up);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass computes both gradients, stacked: (2, …).
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwigluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// Backward of [`Swiglu`] from its inputs and the output's gradient.
struct SwigluGrad;

impl CustomOp3 for SwigluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        let gate = operand(s1, l1, "SwiGLU backward", "gate")?;
        let up = operand(s2, l2, "SwiGLU backward", "up projection")?;
        let grad = operand(s3, l3, "SwiGLU backward", "gradient")?;
        let mut out = vec![0f32; 2 * gate.len()];
        let (d_gate, d_up) = out.split_at_mut(gate.len());
        kernel::swiglu_backward(gate, up, grad, d_gate, d_up);
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_matches_composed, values};
    use super::*;
    use crate::ops::{swiglu, swiglu_composed};
    use candle_core::Device;

    /// Against candle's SiLU times `up`: outputs and the gradients of both inputs.
    #[test]
    fn fused_swiglu_matches_the_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let shape = (2usize, 3usize, 7usize);
        let gate = (Tensor::from_vec(values(42, 0), shape, &dev).unwrap() * 4.0).unwrap(); // −6 … 6
        let up = Tensor::from_vec(values(42, 5), shape, &dev).unwrap();
        assert!(Swiglu::fits(&gate, &up).is_some(), "the fused path must be taken");
        let fused = |i: &[Tensor]| swiglu(&i[0], &i[1]);
        let composed = |i: &[Tensor]| swiglu_composed(&i[0], &i[1]);
        assert_matches_composed(&[gate, up], &fused, &composed, 1e-5);
    }
}
