//! A projection's weight (C_out, C_in): a plain tensor (trainable, any device), or packed for one
//! of `distill_kernels::packed`'s CPU kernels (inference only).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use distill_kernels::packed::{PackedWeight, Precision};

use crate::error::Result;
use crate::ops;

pub(crate) enum Proj {
    Plain(Tensor),
    /// Packed. The plain tensor stays beside a lossy (bf16) packing, for `tensor` to return; an f32
    /// packing holds the same values, so the plain copy is dropped and `tensor` unpacks them.
    Packed {
        packed: Arc<PackedWeight>,
        plain: Option<Tensor>,
    },
}

impl Proj {
    /// The weight as a tensor, unpacked from an f32 packing when it has no plain copy.
    pub(crate) fn tensor(&self, device: &Device) -> Tensor {
        match self {
            Proj::Plain(t) | Proj::Packed { plain: Some(t), .. } => t.clone(),
            Proj::Packed { packed, plain: None } => {
                let (n, k) = (packed.out_features(), packed.in_features());
                let data = packed.unpack().expect("only an f32 packing drops the plain copy, and it unpacks");
                // Invariant: `unpack` returns the N × K values of the (N, K) weight.
                Tensor::from_vec(data, (n, k), device).expect("an N × K buffer makes an (N, K) tensor")
            }
        }
    }

    /// Packs the weight for `precision`'s kernel (repacking a packed one). The caller checked
    /// that the kernel runs here and the weight is an f32 CPU tensor.
    pub(crate) fn pack(&mut self, precision: Precision) -> Result<()> {
        let plain = self.tensor(&Device::Cpu);
        let packed = pack_weight(&plain, precision)?;
        let plain = (precision != Precision::F32).then_some(plain);
        *self = Proj::Packed { packed, plain };
        Ok(())
    }

    /// `x @ wᵀ (+ bias)`, through the packed kernel when packed.
    pub(crate) fn apply(&self, x: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        match self {
            Proj::Plain(w) => ops::linear(x, w, bias),
            Proj::Packed { packed, .. } => ops::linear_packed(x, packed, bias),
        }
    }

    /// `residual + x @ wᵀ`: a residual connection after a projection without bias. The packed
    /// kernel adds it as it writes the product; the values are the same either way.
    pub(crate) fn apply_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Proj::Plain(w) => residual + ops::linear(x, w, None)?,
            Proj::Packed { packed, .. } => ops::linear_packed_residual(x, packed, residual),
        }
    }
}

/// `silu(x @ gateᵀ) * (x @ upᵀ)`, the MLP's activation: one fused pass when both weights are
/// packed alike, the two projections and [`ops::swiglu`] otherwise. The same values either way.
pub(crate) fn swiglu(gate: &Proj, up: &Proj, x: &Tensor) -> candle_core::Result<Tensor> {
    match (gate, up) {
        (Proj::Packed { packed: g, .. }, Proj::Packed { packed: u, .. }) if g.precision() == u.precision() => {
            ops::swiglu_packed(x, g, u)
        }
        _ => ops::swiglu(&gate.apply(x, None)?, &up.apply(x, None)?),
    }
}

/// A projection of (B, T, C) split into heads of `head_dim` and rotated: (B, N, T, D), as
/// [`ops::rope_heads`] of the projection. A packed weight without bias takes the fused kernel.
pub(crate) fn rope_heads(
    w: &Proj,
    bias: Option<&Tensor>,
    x: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    head_dim: usize,
) -> candle_core::Result<Tensor> {
    match (w, bias) {
        (Proj::Packed { packed, .. }, None) => ops::rope_heads_packed(x, packed, cos, sin, head_dim),
        _ => {
            let (b, t, _) = x.dims3()?;
            let y = w.apply(x, bias)?;
            let n = y.dim(2)? / head_dim.max(1);
            ops::rope_heads(&y.reshape((b, t, n, head_dim))?, cos, sin)
        }
    }
}

/// A (C_out, C_in) f32 CPU tensor packed for `precision`'s kernel.
pub(crate) fn pack_weight(w: &Tensor, precision: Precision) -> Result<Arc<PackedWeight>> {
    let (n, k) = w.dims2()?;
    Ok(Arc::new(PackedWeight::pack(&w.flatten_all()?.to_vec1::<f32>()?, n, k, precision)))
}
