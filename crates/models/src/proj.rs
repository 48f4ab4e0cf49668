//! A projection's weight (C_out, C_in): a plain tensor (trainable, any device), or packed for one
//! of `distill_kernels::packed`'s CPU kernels (inference only), a GGUF file's quantised blocks
//! among them.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use distill_kernels::packed::{PackedWeight, Precision};
use distill_kernels::quant::QuantMatrix;

use crate::error::Result;
use crate::ops;

pub(crate) enum Proj {
    Plain(Tensor),
    /// Packed. The plain tensor stays beside a lossy packing (bf16, f32 rounded to int8), for
    /// `tensor` to return; an f32 packing holds the same values, and a file's quantised blocks are
    /// the weights themselves, so there is no plain copy and `tensor` unpacks them.
    Packed {
        packed: Arc<PackedWeight>,
        plain: Option<Tensor>,
    },
}

/// A weight as a checkpoint holds it: a tensor, or (from a GGUF file, on a CPU that runs the
/// quantised kernel) its blocks.
#[derive(Clone)]
pub enum Weight {
    Plain(Tensor),
    Quant(Arc<QuantMatrix>),
}

impl Weight {
    /// Its dimensions, outermost first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Plain(t) => t.dims().to_vec(),
            Weight::Quant(m) => vec![m.rows(), m.cols()],
        }
    }

    /// As a tensor: quantised blocks as the f32 values the kernel multiplies.
    pub fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Weight::Plain(t) => Ok(t.clone()),
            Weight::Quant(m) => Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), device),
        }
    }
}

impl From<Weight> for Proj {
    fn from(w: Weight) -> Self {
        match w {
            Weight::Plain(t) => Proj::Plain(t),
            Weight::Quant(m) => Proj::Packed { packed: Arc::new(PackedWeight::quantized(m)), plain: None },
        }
    }
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
    /// A file's quantised blocks stay as they are; the plain copy of a lossy packing is kept.
    pub(crate) fn pack(&mut self, precision: Precision) -> Result<()> {
        if self.is_file_blocks() {
            return Ok(());
        }
        let plain = self.tensor(&Device::Cpu);
        let packed = pack_weight(&plain, precision)?;
        let plain = (packed.precision() != Precision::F32).then_some(plain);
        *self = Proj::Packed { packed, plain };
        Ok(())
    }

    /// Whether the weight is a GGUF file's quantised blocks (f32 weights rounded to Q8_0 keep
    /// their plain copy, and are not).
    pub(crate) fn is_file_blocks(&self) -> bool {
        matches!(self, Proj::Packed { packed, plain: None } if packed.precision() == Precision::Int8)
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

/// `x @ wᵢᵀ (+ biasᵢ)` for projections of one input, as one parallel loop when that helps: all
/// packed alike and few rows (a decoding step, where each product alone is short). None
/// otherwise, for the caller's usual path; the values are the same either way.
pub(crate) fn project_together(
    projections: &[(&Proj, Option<&Tensor>)],
    x: &Tensor,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    // Packed weights run on f32 CPU inputs; any other input takes the usual path and its error.
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        return Ok(None);
    }
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    let packed: Option<Vec<_>> = projections
        .iter()
        .map(|(w, bias)| match w {
            Proj::Packed { packed, .. } if packed.splits_columns(rows) => Some((packed, *bias)),
            _ => None,
        })
        .collect();
    match packed {
        Some(packed) if packed.windows(2).all(|w| w[0].0.precision() == w[1].0.precision()) => {
            ops::linear_packed_many(x, &packed).map(Some)
        }
        _ => Ok(None),
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
