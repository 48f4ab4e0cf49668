//! The packed-weight matmuls behind [`super::linear_packed`], [`super::linear_packed_residual`],
//! [`super::swiglu_packed`] and [`super::rope_heads_packed`]: forward only.

use std::sync::Arc;

use super::rotary::Rope;
use super::{operand, operands3};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};
use distill_kernels::packed::{self, PackedWeight};

/// `x · Wᵀ` for (R, K) rows against a packed (N, K) weight.
pub(super) struct PackedLinear(pub(super) Arc<PackedWeight>);

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = operand(s, l, "packed linear", "input")?;
        let (n, k) = (self.0.out_features(), self.0.in_features());
        if x.len() % k != 0 {
            candle_core::bail!("packed linear: input of {} values is not rows of {k}", x.len());
        }
        let y = packed::product(x, &self.0);
        Ok((CpuStorage::F32(y), Shape::from((x.len() / k, n))))
    }
    // No backward: candle reports "backward not supported" for this op, so a model that runs its
    // matmuls on packed weights cannot be trained by mistake.
}

/// `residual + x · Wᵀ` for (R, K) rows against a packed (N, K) weight and an (R, N) residual.
pub(super) struct PackedLinearResidual(pub(super) Arc<PackedWeight>);

impl CustomOp2 for PackedLinearResidual {
    fn name(&self) -> &'static str {
        "packed-linear-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = operand(s1, l1, "packed linear", "input")?;
        let residual = operand(s2, l2, "packed linear", "residual")?;
        let (n, k) = (self.0.out_features(), self.0.in_features());
        let rows = x.len() / k;
        if x.len() % k != 0 || residual.len() != rows * n {
            candle_core::bail!(
                "packed linear: input of {} values and residual of {} do not fit a weight of {n}×{k}",
                x.len(),
                residual.len()
            );
        }
        let y = packed::matmul_residual(x, &self.0, residual);
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }
    // No backward, as `PackedLinear`.
}

/// `silu(x · Gᵀ) ⊙ (x · Uᵀ)` for (R, K) rows against two packed (N, K) weights.
pub(super) struct PackedSwiglu {
    pub(super) gate: Arc<PackedWeight>,
    pub(super) up: Arc<PackedWeight>,
}

impl CustomOp1 for PackedSwiglu {
    fn name(&self) -> &'static str {
        "packed-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = operand(s, l, "packed SwiGLU", "input")?;
        let (n, k) = (self.gate.out_features(), self.gate.in_features());
        if x.len() % k != 0 {
            candle_core::bail!("packed SwiGLU: input of {} values is not rows of {k}", x.len());
        }
        let y = packed::matmul_swiglu(x, &self.gate, &self.up);
        Ok((CpuStorage::F32(y), Shape::from((x.len() / k, n))))
    }
    // No backward, as `PackedLinear`.
}

/// RoPE(x · Wᵀ) for (B·T, K) rows against a packed (N·D, K) weight, in attention's (B, N, T, D)
/// layout; the cos and sin tables are the op's other operands.
pub(super) struct PackedRope {
    pub(super) weight: Arc<PackedWeight>,
    pub(super) rope: Rope,
}

impl CustomOp3 for PackedRope {
    fn name(&self) -> &'static str {
        "packed-rope"
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
        let (x, cos, sin) =
            operands3("packed RoPE", ["input", "cos table", "sin table"], (s1, l1), (s2, l2), (s3, l3))?;
        let shape = self.rope.shape();
        if x.len() != shape.batch * shape.tokens * self.weight.in_features() {
            candle_core::bail!("packed RoPE: input of {} values does not fit {shape:?}", x.len());
        }
        let y = packed::matmul_rope(x, &self.weight, shape, cos, sin);
        Ok((CpuStorage::F32(y), self.rope.out_shape()))
    }
    // No backward, as `PackedLinear`.
}
