//! Fused CPU kernels for `distill`.
//!
//! Shape letters: `R` rows (positions or attention rows), `V` vocabulary, `K` kept entries per
//! row, `S` keys per attention row, `C` hidden size, `I` MLP width, `B` batch rows, `T`
//! positions, `N` heads, `D` head dimension.

pub mod attention;
pub mod exp;
pub mod matmul;
pub mod packed;
pub mod quant;
pub mod reduce;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;
pub mod tile;
pub mod topk;

use std::mem::MaybeUninit;

/// Runs `f` on one of rayon's worker threads (at once when already on one), so that the kernels'
/// parallel loops inside start there instead of waking the pool from outside and parking the
/// calling thread at every operation. A decoding step runs hundreds of small parallel operations:
/// called from a plain thread, SmolLM2 decoded at half the speed. Wrap a whole inference loop
/// (a command, a serving step) in it.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

use rayon::prelude::*;

pub use topk::{topk_logprobs, TopK};

/// Values handed to one rayon task by the element-wise kernels: enough work to amortise the
/// dispatch.
const VALUES_PER_TASK: usize = 16 * 1024;

/// A new vector of `len` values, filled in parallel chunks of `chunk` values by `fill` (given the
/// chunk's index and its memory) without being zeroed first: a kernel's output is overwritten
/// whole, and a serial memset of it would leave the other threads idle.
///
/// # Safety
/// `fill` must write every value of the chunk it is given.
unsafe fn written(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    // SAFETY: every chunk of the `len` values was written (the caller's promise).
    unsafe { out.set_len(len) };
    out
}
