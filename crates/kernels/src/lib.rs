//! Fused CPU kernels for `distill`.
//!
//! Shape letters: `R` rows (positions or attention rows), `V` vocabulary, `K` kept entries per
//! row, `S` keys per attention row.

pub mod softmax;
pub mod topk;

pub use topk::{topk_logprobs, TopK};
