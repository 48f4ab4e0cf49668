//! Top-k log-probabilities with the remaining tail mass, in one pass over each row of logits.
//!
//! For a row of logits `z` (V) at temperature τ: `lse = log Σ exp(z/τ)`, the K largest entries
//! `(id, z_id/τ − lse)` in descending order, and `log(1 − Σ_topk p)` as the tail. Rows run in
//! parallel; nothing of size V is allocated. The selection is one scan against the running K-th
//! value (after the first few hundred entries almost nothing passes it). The tail is summed
//! directly over the entries below the K-th, in vectorised f32 blocks added up in f64, and the K
//! top terms in f64 — never as `1 − Σ top-K`, which loses a small tail to rounding.

use crate::{exp, reduce};
use rayon::prelude::*;

/// Top-K of many rows: `ids` and `logprobs` are (R, K) row-major, `tail_logprob` is (R).
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub k: usize,
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// `ln(1 − Σ_topk p)`; `-inf` when the top-K hold all the mass.
    pub tail_logprob: Vec<f32>,
}

impl TopK {
    pub fn rows(&self) -> usize {
        self.tail_logprob.len()
    }
}

/// Computes top-`k` log-probabilities of each row of `logits` (R, V) at `temperature`.
///
/// Panics if `logits.len()` is not a multiple of `vocab` or `k > vocab` (caller bugs, not data).
pub fn topk_logprobs(logits: &[f32], vocab: usize, k: usize, temperature: f32) -> TopK {
    assert!(
        vocab > 0 && logits.len().is_multiple_of(vocab),
        "logits length {} is not a multiple of vocab {vocab}",
        logits.len()
    );
    assert!(k <= vocab, "k {k} exceeds vocab {vocab}");
    let rows = logits.len() / vocab;
    let inv_t = 1.0 / temperature;
    let mut ids = vec![0u32; rows * k];
    let mut logprobs = vec![0f32; rows * k];
    let mut tail = vec![0f32; rows];
    ids.par_chunks_mut(k.max(1))
        .zip(logprobs.par_chunks_mut(k.max(1)))
        .zip(tail.par_iter_mut())
        .zip(logits.par_chunks(vocab))
        .for_each_init(
            || Vec::with_capacity(k + 1),
            |top, (((row_ids, row_lp), row_tail), row)| {
                if k == 0 {
                    return;
                }
                select_top(row, k, top);
                let shift = match top.first() {
                    Some(&(z, _)) if z.is_finite() => z,
                    _ => reduce::max(row),
                } * inv_t;
                let term = |z: f32| ((z * inv_t - shift) as f64).exp();
                let top_sum: f64 = top.iter().map(|&(z, _)| term(z)).sum();
                // The tail summed directly: the values below the K-th one, and those equal to it
                // that were not selected.
                let floor = top[k - 1].0;
                let (below, equal) = exp::sum_exp_below(row, inv_t, shift, floor);
                let selected_equal = top.iter().filter(|&&(z, _)| z == floor).count();
                let tail_sum = below + equal.saturating_sub(selected_equal) as f64 * term(floor);
                let ln_total = (top_sum + tail_sum).ln();
                let lse = shift as f64 + ln_total;
                for (j, &(z, id)) in top.iter().enumerate() {
                    row_ids[j] = id;
                    row_lp[j] = ((z * inv_t) as f64 - lse) as f32;
                }
                *row_tail = if tail_sum > 0.0 { (tail_sum.ln() - ln_total) as f32 } else { f32::NEG_INFINITY };
            },
        );
    if k == 0 {
        tail.iter_mut().for_each(|t| *t = 0.0);
    }
    TopK { k, ids, logprobs, tail_logprob: tail }
}

/// Entries [`select_top`] tests at once against the K-th value.
const SCAN: usize = 32;

/// The `k` largest entries of `row` as (value, id), largest first; equal values keep the lower id
/// first. NaN entries are never selected unless fewer than `k` others exist.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn select_top(row: &[f32], k: usize, top: &mut Vec<(f32, u32)>) {
    top.clear();
    if k == 0 {
        return;
    }
    let mut floor = f32::NEG_INFINITY; // the K-th value once K are held
    for (c, chunk) in row.chunks(SCAN).enumerate() {
        // Once K are held, a chunk with nothing above the K-th value (almost every chunk after
        // the first few hundred entries) is passed over by one branch-free, vectorised test.
        if top.len() == k && !chunk.iter().fold(false, |any, &z| any | (z > floor)) {
            continue;
        }
        for (j, &z) in chunk.iter().enumerate() {
            let full = top.len() == k;
            if z.is_nan() || (full && z <= floor) {
                continue;
            }
            // After every held value >= z: among equal values, the lower id (seen first) stays
            // ahead.
            let at = top.partition_point(|&(v, _)| v >= z);
            if full {
                top.pop();
            }
            top.insert(at, (z, (c * SCAN + j) as u32));
            if let Some(&(v, _)) = top.get(k - 1) {
                floor = v;
            }
        }
    }
    let mut next = 0u32;
    while top.len() < k {
        // Only NaNs are left: the lowest ids not yet held, in order.
        if !top.iter().any(|&(_, id)| id == next) {
            top.push((row[next as usize], next));
        }
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: full softmax in f64, full sort.
    fn reference(row: &[f32], k: usize, t: f32) -> (Vec<u32>, Vec<f64>, f64) {
        let scaled: Vec<f64> = row.iter().map(|&z| z as f64 / t as f64).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + scaled.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| scaled[b as usize].total_cmp(&scaled[a as usize]).then(a.cmp(&b)));
        let ids: Vec<u32> = order[..k].to_vec();
        let lps: Vec<f64> = ids.iter().map(|&i| scaled[i as usize] - lse).collect();
        let tail = (1.0 - lps.iter().map(|l| l.exp()).sum::<f64>()).ln();
        (ids, lps, tail)
    }

    fn pseudo_random_logits(rows: usize, vocab: usize) -> Vec<f32> {
        let mut state = 12345u64;
        (0..rows * vocab)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 20.0 - 10.0
            })
            .collect()
    }

    #[test]
    fn matches_a_full_sort_reference() {
        let (rows, vocab) = (7, 1000);
        let logits = pseudo_random_logits(rows, vocab);
        for (k, t) in [(1, 1.0), (32, 1.0), (32, 2.0), (100, 0.5)] {
            let got = topk_logprobs(&logits, vocab, k, t);
            for r in 0..rows {
                let (ids, lps, tail) = reference(&logits[r * vocab..(r + 1) * vocab], k, t);
                assert_eq!(&got.ids[r * k..(r + 1) * k], ids.as_slice(), "row {r} k {k}");
                for (a, b) in got.logprobs[r * k..(r + 1) * k].iter().zip(&lps) {
                    assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
                }
                assert!((got.tail_logprob[r] as f64 - tail).abs() < 1e-4, "tail {} vs {tail}", got.tail_logprob[r]);
            }
        }
    }

    /// A near-certain row: the tail (~1e-10) keeps its digits. `ln(1 − Σ top-K)` after a
    /// log-sum-exp summed in f32 blocks missed by 0.013 nats here, and by more for smaller tails.
    #[test]
    fn a_tiny_tail_keeps_its_digits() {
        let mut row: Vec<f32> = (0..5000).map(|i| ((i * 7919 % 1000) as f32) * 0.001).collect();
        row[123] = 32.0;
        let got = topk_logprobs(&row, row.len(), 4, 1.0);
        let lse = {
            let m = 32.0f64;
            m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln()
        };
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let tail: f64 = sorted[4..].iter().map(|&z| (z as f64 - lse).exp()).sum();
        assert!(tail < 1e-9, "the fixture's tail is tiny: {tail}");
        assert!((got.tail_logprob[0] as f64 - tail.ln()).abs() < 1e-4, "{} vs {}", got.tail_logprob[0], tail.ln());
    }

    #[test]
    fn ties_break_towards_the_lower_id_and_full_k_has_no_tail() {
        let logits = vec![1.0, 3.0, 3.0, 0.0];
        let got = topk_logprobs(&logits, 4, 2, 1.0);
        assert_eq!(got.ids, vec![1, 2]);
        let ids_of = |row: &[f32], k: usize| topk_logprobs(row, row.len(), k, 1.0).ids;
        assert_eq!(ids_of(&[2.0, f32::NAN, 2.0, f32::NEG_INFINITY, 5.0], 3), vec![4, 0, 2]);
        assert_eq!(ids_of(&[f32::NEG_INFINITY, f32::NAN, 0.0, f32::NEG_INFINITY], 3), vec![2, 0, 3]);
        assert_eq!(ids_of(&[f32::NAN, 1.0, f32::NAN], 3), vec![1, 0, 2]);
        let all = topk_logprobs(&logits, 4, 4, 1.0);
        assert!(all.tail_logprob[0] < -10.0 || all.tail_logprob[0] == f32::NEG_INFINITY);
    }
}
