//! What pruning ranks layers, MLP channels and attention heads by, summed by
//! [`crate::Llama::probe_activations`]: how much each layer changes the hidden state, and the
//! activation energy of its channels and heads.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Activation energy of one layer, summed over the positions probed: per MLP channel (the SwiGLU
/// output) and per attention head (its output before `o_proj`, squared norm); and the layer's
/// `1 − cos(input, output)` of the residual stream, summed over the same positions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationProbe {
    pub mlp: Vec<f64>,
    pub heads: Vec<f64>,
    pub positions: usize,
    pub turn: f64,
}

impl ActivationProbe {
    pub(crate) fn add_mlp(&mut self, energy: &[f32], valid: &Tensor) -> Result<()> {
        add(&mut self.mlp, energy);
        self.positions += valid.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? as usize;
        Ok(())
    }

    pub(crate) fn add_heads(&mut self, energy: &[f32]) {
        add(&mut self.heads, energy);
    }

    /// How far the layer turns the hidden state: mean `1 − cos(input, output)` over the positions
    /// probed (ShortGPT's block influence). A layer that barely turns it is the cheapest to drop.
    pub fn influence(&self) -> f64 {
        self.turn / self.positions.max(1) as f64
    }

    /// Root-mean-square activation per MLP channel.
    pub fn mlp_scores(&self) -> Vec<f64> {
        self.mlp.iter().map(|e| (e / self.positions.max(1) as f64).sqrt()).collect()
    }

    /// Root-mean-square output norm per attention head.
    pub fn head_scores(&self) -> Vec<f64> {
        self.heads.iter().map(|e| (e / self.positions.max(1) as f64).sqrt()).collect()
    }
}

fn add(acc: &mut Vec<f64>, x: &[f32]) {
    if acc.is_empty() {
        acc.resize(x.len(), 0.0);
    }
    for (a, b) in acc.iter_mut().zip(x) {
        *a += *b as f64;
    }
}
