//! Fused CPU kernels for `distill`.
//!
//! Shape letters: `R` rows (positions), `V` vocabulary, `K` kept entries per row.

pub mod topk;

pub use topk::{topk_logprobs, TopK};
