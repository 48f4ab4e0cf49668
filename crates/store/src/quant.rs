//! Quantisation of top-K log-probabilities (scheme `delta-u8`, format version 1).
//!
//! Per completion position the K entries are in descending probability, so their log-probabilities
//! fall monotonically. Each is quantised to an integer code `c_j = round(−logprob_j / step)`
//! (non-decreasing in j), and the codes are stored as differences: `d_0 = c_0`,
//! `d_j = c_j − c_{j−1}`, each clamped to 0..=255 and kept as `u8` — small numbers that zstd
//! packs into a few bits. The tail mass `1 − Σ p_j` is stored as
//! `u16 t = round(−ln(tail) · tail_scale)`, 65535 meaning "no tail".
//!
//! Reconstruction: `lp_j = −step · Σ_{i≤j} d_i`, `tail = exp(−t / tail_scale)`, then the K
//! probabilities are rescaled so that they and the tail sum to one:
//! `lp_j += ln((1 − tail) / Σ exp(lp_i))`. Rescaling removes the quantisation's mean bias.

use serde::{Deserialize, Serialize};

/// Parameters of the `delta-u8` scheme, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub scheme: QuantScheme,
    /// Log-probability step in nats.
    pub step: f32,
    /// Codes per nat of `−ln(tail)`.
    pub tail_scale: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantScheme {
    DeltaU8,
}

/// The default: steps of 1/16 nat keep the reconstruction KL around 1e-4 nats.
impl Default for Quantization {
    fn default() -> Self {
        Self { scheme: QuantScheme::DeltaU8, step: 1.0 / 16.0, tail_scale: 256.0 }
    }
}

/// `u16` tail code meaning the top-K hold all the mass.
pub const NO_TAIL: u16 = u16::MAX;

impl Quantization {
    /// Codes for one position's K log-probabilities (descending) into `out`.
    pub fn encode_logprobs(&self, logprobs: &[f32], out: &mut Vec<u8>) {
        let mut previous = 0i64;
        for &lp in logprobs {
            let code =
                if lp.is_finite() { (-(lp as f64) / self.step as f64).round().max(0.0) as i64 } else { i64::MAX / 2 };
            let code = code.max(previous);
            let delta = (code - previous).min(255);
            previous += delta;
            out.push(delta as u8);
        }
    }

    pub fn encode_tail(&self, tail_logprob: f32) -> u16 {
        if !tail_logprob.is_finite() {
            return NO_TAIL;
        }
        ((-tail_logprob as f64) * self.tail_scale as f64).round().clamp(0.0, (NO_TAIL - 1) as f64) as u16
    }

    /// Reconstructs one position: writes K log-probabilities and returns the tail log-probability.
    pub fn decode_position(&self, deltas: &[u8], tail_code: u16, out: &mut [f32]) -> f32 {
        let mut code = 0u32;
        let mut kept = 0f64;
        for (d, o) in deltas.iter().zip(out.iter_mut()) {
            code += *d as u32;
            let lp = -(self.step as f64) * code as f64;
            *o = lp as f32;
            kept += lp.exp();
        }
        let (tail, tail_lp) = if tail_code == NO_TAIL {
            (0.0, f32::NEG_INFINITY)
        } else {
            let tail_lp = -(tail_code as f64) / self.tail_scale as f64;
            (tail_lp.exp(), tail_lp as f32)
        };
        if kept > 0.0 && tail < 1.0 {
            let shift = ((1.0 - tail) / kept).ln() as f32;
            out.iter_mut().for_each(|o| *o += shift);
        }
        tail_lp
    }
}

/// KL(p‖q) in nats between two (K + tail) distributions given as log-probabilities.
pub fn kl_with_tail(p: &[f32], p_tail: f32, q: &[f32], q_tail: f32) -> f64 {
    let term = |lp: f32, lq: f32| -> f64 {
        if lp == f32::NEG_INFINITY {
            0.0
        } else {
            (lp as f64).exp() * (lp as f64 - lq.max(-1e4) as f64)
        }
    };
    p.iter().zip(q).map(|(a, b)| term(*a, *b)).sum::<f64>() + term(p_tail, q_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_small_and_mass_sums_to_one() {
        let q = Quantization::default();
        // A peaked distribution with a long top-k tail and residual mass.
        let raw: Vec<f64> = (0..32).map(|j| -0.05 - 0.6 * j as f64 - 0.01 * (j * j) as f64).collect();
        let total: f64 = raw.iter().map(|l| l.exp()).sum::<f64>() / 0.97;
        let lps: Vec<f32> = raw.iter().map(|l| (l - total.ln()) as f32).collect();
        let tail = (0.03f64).ln() as f32;
        let mut codes = Vec::new();
        q.encode_logprobs(&lps, &mut codes);
        let mut out = vec![0f32; 32];
        let tail_back = q.decode_position(&codes, q.encode_tail(tail), &mut out);
        let mass: f64 = out.iter().map(|l| (*l as f64).exp()).sum::<f64>() + (tail_back as f64).exp();
        assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
        let kl = kl_with_tail(&lps, tail, &out, tail_back);
        assert!(kl < 1e-3, "kl {kl}");
    }

    #[test]
    fn no_tail_and_deep_entries_survive() {
        let q = Quantization::default();
        let lps = [-0.0001f32, -9.9, -40.0];
        let mut codes = Vec::new();
        q.encode_logprobs(&lps, &mut codes);
        assert_eq!(codes[2], 255, "the jump to -40 is clamped, not wrapped");
        let mut out = [0f32; 3];
        assert_eq!(q.decode_position(&codes, q.encode_tail(f32::NEG_INFINITY), &mut out), f32::NEG_INFINITY);
        assert!(out[0] <= 0.0 && out[1] < out[0] && out[2] < out[1]);
    }
}
