//! Fused CPU kernels for `distill`.
//!
//! Shape letters: `R` rows (positions or attention rows), `V` vocabulary, `K` kept entries per
//! row, `S` keys per attention row, `C` hidden size, `I` MLP width, `B` batch rows, `T`
//! positions, `N` heads, `D` head dimension.

pub mod attention;
pub mod exp;
pub mod matmul;
pub mod packed;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod tile;
pub mod topk;

pub use topk::{topk_logprobs, TopK};

/// Values handed to one rayon task by the element-wise kernels: enough work to amortise the
/// dispatch.
const VALUES_PER_TASK: usize = 16 * 1024;
