//! The bf16 matmul behind [`super::linear_bf16`]: forward only.

use std::sync::Arc;

use super::operand;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use distill_kernels::bf16::{self, PackedBf16};

/// `x · Wᵀ` for (R, K) rows against a packed (N, K) weight.
pub(super) struct Bf16Linear(pub(super) Arc<PackedBf16>);

impl CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = operand(s, l, "bf16 linear", "input")?;
        let (n, k) = (self.0.out_features(), self.0.in_features());
        if x.len() % k != 0 {
            candle_core::bail!("bf16 linear: input of {} values is not rows of {k}", x.len());
        }
        let mut y = vec![0f32; x.len() / k * n];
        bf16::matmul(x, &self.0, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((x.len() / k, n))))
    }
    // No backward: candle reports "backward not supported" for this op, so a model that runs its
    // matmuls in bf16 cannot be trained by mistake.
}
