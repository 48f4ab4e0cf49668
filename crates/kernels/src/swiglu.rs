//! SwiGLU, `silu(gate) · up`, and its backward in one pass each. candle composes SiLU's backward
//! from about ten element-wise ops over the (R, I) MLP activations.
//!
//! With `σ = 1 / (1 + e^−g)`: `d/dgate = up · σ · (1 + g · (1 − σ))`, `d/dup = g · σ`.

use std::mem::MaybeUninit;

use crate::exp::exp;
use crate::VALUES_PER_TASK;
use rayon::prelude::*;

#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + exp(-g))
}

/// `silu(gate) · up`, element by element, as a new vector.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert!(gate.len() == up.len(), "SwiGLU operands differ in size");
    let fill = |i: usize, out: &mut [MaybeUninit<f32>]| {
        let at = i * VALUES_PER_TASK..i * VALUES_PER_TASK + out.len();
        swiglu_chunk(&gate[at.clone()], &up[at], out);
    };
    // SAFETY: `swiglu_chunk` writes each value of its chunk, as long as its inputs.
    unsafe { crate::written(gate.len(), VALUES_PER_TASK, fill) }
}

/// [`swiglu`] into `out`, on the calling thread.
pub(crate) fn swiglu_into(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "SwiGLU operands differ in size");
    swiglu_chunk(gate, up, out);
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn swiglu_chunk(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(g * sigmoid(g) * u);
    }
}

/// Gradients of [`swiglu`] with respect to `gate` and `up`, given the output's gradient.
pub fn swiglu_backward(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    let n = gate.len();
    assert!(
        up.len() == n && grad.len() == n && d_gate.len() == n && d_up.len() == n,
        "SwiGLU backward operands differ in size"
    );
    d_gate
        .par_chunks_mut(VALUES_PER_TASK)
        .zip(d_up.par_chunks_mut(VALUES_PER_TASK))
        .zip(gate.par_chunks(VALUES_PER_TASK).zip(up.par_chunks(VALUES_PER_TASK)).zip(grad.par_chunks(VALUES_PER_TASK)))
        .for_each(|((d_gate, d_up), ((gate, up), grad))| swiglu_backward_chunk(gate, up, grad, d_gate, d_up));
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn swiglu_backward_chunk(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    for (((dg, du), (&g, &u)), &o) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(gate.iter().zip(up)).zip(grad) {
        let s = sigmoid(g);
        *dg = o * u * s * (1.0 + g * (1.0 - s));
        *du = o * g * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward against float64, over saturated and central values; both gradients against central
    /// differences of a weighted sum of the outputs.
    #[test]
    fn forward_matches_f64_and_backward_matches_finite_differences() {
        let n = 41usize;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 20.0) * 0.45).collect(); // −9 … 9
        let up: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        let reference = |gate: &[f32], up: &[f32]| -> Vec<f64> {
            gate.iter().zip(up).map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64).collect()
        };
        let y = swiglu(&gate, &up);
        for (i, (a, e)) in y.iter().zip(reference(&gate, &up)).enumerate() {
            assert!((*a as f64 - e).abs() < 1e-5, "y[{i}]: {a} vs {e}");
        }
        let w: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        swiglu_backward(&gate, &up, &w, &mut dg, &mut du);
        let loss = |g: &[f32], u: &[f32]| -> f64 { reference(g, u).iter().zip(&w).map(|(a, b)| a * *b as f64).sum() };
        let h = 1e-3f32;
        for i in 0..n {
            for (which, analytic) in [(0, dg[i]), (1, du[i])] {
                let (mut up_g, mut down_g, mut up_u, mut down_u) = (gate.clone(), gate.clone(), up.clone(), up.clone());
                let step = if which == 0 {
                    up_g[i] += h;
                    down_g[i] -= h;
                    up_g[i] - down_g[i]
                } else {
                    up_u[i] += h;
                    down_u[i] -= h;
                    up_u[i] - down_u[i]
                };
                let numeric = (loss(&up_g, &up_u) - loss(&down_g, &down_u)) / step as f64;
                assert!(
                    (numeric - analytic as f64).abs() < 1e-3,
                    "input {which} [{i}]: numeric {numeric} vs {analytic}"
                );
            }
        }
    }
}
