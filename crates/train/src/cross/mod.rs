//! Distillation between a teacher and a student that do not share a vocabulary.
//!
//! The teacher's completions are re-tokenised by the student ([`data`]), both tokenizations are
//! lined up by bytes into aligned groups ([`distill_models::retokenize`]), and the student is trained with a loss that
//! needs no shared ids ([`loss`]): GOLD (exact matches of tokens both vocabularies spell the same
//! way, plus ULD's sorted-probability distance for the rest), ULD alone, or sequence-level KD
//! (cross-entropy on the re-tokenised text). [`step`] runs one batch through the student.

pub mod align;
pub mod data;
pub mod loss;
pub mod step;

use serde::{Deserialize, Serialize};

pub use align::AlignReport;
pub use data::{convert, CrossBatch, CrossData, CrossSequence, CrossStream};
pub use distill_models::retokenize::{align_groups, byte_ends, retokenize, Group, Retokenized, VocabMap};
pub use loss::{loss_and_grad, GroupTerms, LossTerms, LossValue, LossWeights};

/// `[cross_tokenizer]`: train a student whose tokenizer is not the dataset's teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossConfig {
    /// `gold`, `uld` or `sequence` (see [`CrossMode`]).
    #[serde(default)]
    pub mode: CrossMode,
    /// Weight of the cross-entropy on the teacher's re-tokenised text.
    #[serde(default = "one")]
    pub ce_weight: f64,
    /// Weight of the logit term (GOLD or ULD); unused by `sequence`.
    #[serde(default = "one")]
    pub kd_weight: f64,
    /// Within the logit term: weight of the exact-match part (GOLD only)…
    #[serde(default = "one")]
    pub matched_weight: f64,
    /// …and of the sorted-probability part.
    #[serde(default = "one")]
    pub unmatched_weight: f64,
}

impl Default for CrossConfig {
    fn default() -> Self {
        Self { mode: CrossMode::default(), ce_weight: 1.0, kd_weight: 1.0, matched_weight: 1.0, unmatched_weight: 1.0 }
    }
}

impl CrossConfig {
    pub fn weights(&self) -> LossWeights {
        let kd = if self.mode == CrossMode::Sequence { 0.0 } else { self.kd_weight };
        LossWeights { ce: self.ce_weight, kd, matched: self.matched_weight, unmatched: self.unmatched_weight }
    }
}

/// Which cross-tokenizer loss trains the student.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossMode {
    /// Exact matches of shared tokens (generalized KL) plus ULD for the unmatched mass, on
    /// byte-aligned spans.
    #[default]
    Gold,
    /// Sorted-probability L1 on byte-aligned spans, no token matching.
    Uld,
    /// Cross-entropy on the teacher's text re-tokenised (sequence-level KD), the baseline.
    Sequence,
}

fn one() -> f64 {
    1.0
}
