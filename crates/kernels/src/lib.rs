//! Fused CPU kernels for `distill`.
//!
//! Shape letters: `R` rows (positions or attention rows), `V` vocabulary, `K` kept entries per
//! row, `S` keys per attention row, `C` hidden size, `I` MLP width, `B` batch rows, `T`
//! positions, `N` heads, `D` head dimension.

pub mod bf16;
pub mod exp;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod topk;

pub use topk::{topk_logprobs, TopK};
