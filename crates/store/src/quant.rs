//! Quantisation of top-K log-probabilities.
//!
//! Two schemes share the arithmetic below and differ in step and storage:
//! - `range-coded` (the default, format version 2): step 1/8 nat, the tail as its log-odds at
//!   16 codes per nat, stored entropy-coded together with the ids ([`crate::codec`]);
//! - `delta-u8` (format version 1, the `plain` layout): step 1/16 nat, tail codes at 256 per
//!   nat, stored as `u8`/`u16` lists that zstd packs.
//!
//! Per completion position the K entries are in descending probability, so their log-probabilities
//! fall monotonically. Each is quantised to an integer code `c_j = round(−logprob_j / step)`
//! (non-decreasing in j), and the codes are stored as differences: `d_0 = c_0`,
//! `d_j = c_j − c_{j−1}`, each clamped to 0..=255 and kept as `u8` — small numbers that zstd
//! packs into a few bits. The tail mass `1 − Σ p_j` is stored as
//! `u16 t = round(−ln(tail) · tail_scale)` (`delta-u8`) or
//! `t = round((16 − ln(tail / (1 − tail))) · tail_scale)` (`range-coded`), 65535 meaning "no
//! tail". The log-odds keep a large tail as precise as a small one: the KL of a tail error ε is
//! about ε² / (2·tail·(1 − tail)), which `−ln(tail)` steps leave large when the tail is near 1.
//!
//! Reconstruction: `lp_j = −step · Σ_{i≤j} d_i`, the tail from its code, then the K
//! probabilities are rescaled so that they and the tail sum to one:
//! `lp_j += ln((1 − tail) / Σ exp(lp_i))`. Rescaling removes the quantisation's mean bias.

use serde::{Deserialize, Serialize};

/// Parameters of the quantisation, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub scheme: QuantScheme,
    /// Log-probability step in nats.
    pub step: f32,
    /// Codes per nat of `−ln(tail)` (`delta-u8`) or of the tail's log-odds (`range-coded`).
    pub tail_scale: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantScheme {
    DeltaU8,
    RangeCoded,
}

/// The default: steps of 1/8 nat keep the reconstruction KL around 3e-4 nats (the error of a
/// code is weighted by its probability, so the likely entries, where steps are small against
/// the spread, carry it); the tail needs far less precision, as its error only rescales.
/// How shards store the teacher signal: the two quantisations a user picks between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Range-coded ids and log-probabilities (format version 2), read through distill.
    #[default]
    Coded,
    /// Lists of ids, log-probability codes and tail codes (format version 1), for any Parquet reader.
    Plain,
}

impl Layout {
    pub fn quantization(self) -> Quantization {
        match self {
            Layout::Coded => Quantization::default(),
            Layout::Plain => Quantization::plain(),
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coded" => Ok(Layout::Coded),
            "plain" => Ok(Layout::Plain),
            other => Err(format!("unknown layout `{other}` (known: coded, plain)")),
        }
    }
}

impl Default for Quantization {
    fn default() -> Self {
        Self { scheme: QuantScheme::RangeCoded, step: 1.0 / 8.0, tail_scale: 16.0 }
    }
}

/// Log-odds of the largest tail the `range-coded` scheme stores (code 0): 1 − 1.1e-7.
const TAIL_LOGIT_MAX: f64 = 16.0;

/// `u16` tail code meaning the top-K hold all the mass.
pub const NO_TAIL: u16 = u16::MAX;

impl Quantization {
    /// The `plain` layout's scheme: lists any Parquet reader understands, about twice the bytes.
    pub fn plain() -> Self {
        Self { scheme: QuantScheme::DeltaU8, step: 1.0 / 16.0, tail_scale: 256.0 }
    }

    /// The dataset format version that stores this scheme.
    pub fn format_version(&self) -> u32 {
        match self.scheme {
            QuantScheme::DeltaU8 => 1,
            QuantScheme::RangeCoded => 2,
        }
    }

    fn max_tail_code(&self) -> u16 {
        match self.scheme {
            QuantScheme::DeltaU8 => NO_TAIL - 1,
            QuantScheme::RangeCoded => crate::codec::MAX_TAIL_CODE,
        }
    }

    /// Codes one position: the K log-probabilities (descending) as code differences appended
    /// to `deltas`, and the tail as the returned tail code.
    ///
    /// Decoding rescales the K probabilities to `1 − tail`, so only the codes' differences
    /// matter: they are taken relative to the top entry (the first difference is 0, which the
    /// coders store almost free), then the tail code and each of the likeliest entries is moved one
    /// step up or down wherever that lowers the KL of the reconstruction — the decoder is
    /// unchanged.
    pub fn encode_position(&self, logprobs: &[f32], tail_logprob: f32, deltas: &mut Vec<u8>) -> u16 {
        let mut tail_code = self.encode_tail(tail_logprob);
        let start = deltas.len();
        let top = logprobs.first().copied().filter(|lp| lp.is_finite()).unwrap_or(0.0) as f64;
        let mut previous = 0i64;
        for &lp in logprobs {
            let code = if lp.is_finite() {
                ((top - lp as f64) / self.step as f64).round().max(0.0) as i64
            } else {
                i64::MAX / 2
            };
            let code = code.max(previous);
            let delta = (code - previous).min(255);
            previous += delta;
            deltas.push(delta as u8);
        }
        self.refine(logprobs, tail_logprob, &mut tail_code, &mut deltas[start..]);
        tail_code
    }

    /// Greedy search over ±1 moves of the tail code and of the codes of the entries that carry
    /// most of the mass.
    fn refine(&self, logprobs: &[f32], tail_logprob: f32, tail_code: &mut u16, deltas: &mut [u8]) {
        const ENTRIES: usize = 16;
        const PASSES: usize = 3;
        let mut back = vec![0f32; deltas.len()];
        let mut kl = |d: &[u8], tail: u16| {
            let tail_back = self.decode_position(d, tail, &mut back);
            kl_with_tail(logprobs, tail_logprob, &back, tail_back)
        };
        let mut best = kl(deltas, *tail_code);
        for _ in 0..PASSES {
            let mut improved = false;
            if *tail_code != NO_TAIL {
                let moves = [tail_code.checked_sub(1), Some(*tail_code + 1).filter(|&t| t <= self.max_tail_code())];
                for tail in moves.into_iter().flatten() {
                    let candidate = kl(deltas, tail);
                    if candidate < best - 1e-12 {
                        (best, *tail_code, improved) = (candidate, tail, true);
                    }
                }
            }
            for j in 0..deltas.len().min(ENTRIES) {
                for up in [true, false] {
                    // Code j moves by one and the codes after it stay where they were.
                    let (dj, next) = (deltas[j], deltas.get(j + 1).copied());
                    let moved = if up {
                        dj.checked_add(1).filter(|_| next.is_none_or(|n| n > 0))
                    } else {
                        dj.checked_sub(1).filter(|_| next.is_none_or(|n| n < 255))
                    };
                    let Some(new_dj) = moved else { continue };
                    deltas[j] = new_dj;
                    if let Some(n) = next {
                        deltas[j + 1] = if up { n - 1 } else { n + 1 };
                    }
                    let candidate = kl(deltas, *tail_code);
                    if candidate < best - 1e-12 {
                        best = candidate;
                        improved = true;
                    } else {
                        deltas[j] = dj;
                        if let Some(n) = next {
                            deltas[j + 1] = n;
                        }
                    }
                }
            }
            if !improved {
                break;
            }
        }
    }

    pub fn encode_tail(&self, tail_logprob: f32) -> u16 {
        if !tail_logprob.is_finite() {
            return NO_TAIL;
        }
        let lp = tail_logprob as f64;
        let value = match self.scheme {
            QuantScheme::DeltaU8 => -lp,
            // ln(1 − tail) = ln(−expm1(lp)); −∞ (a tail of 1) clamps to code 0.
            QuantScheme::RangeCoded => TAIL_LOGIT_MAX - (lp - (-lp.exp_m1()).ln()),
        };
        (value * self.tail_scale as f64).round().clamp(0.0, self.max_tail_code() as f64) as u16
    }

    /// The tail log-probability a code stands for.
    fn tail_logprob(&self, tail_code: u16) -> f64 {
        let value = tail_code as f64 / self.tail_scale as f64;
        match self.scheme {
            QuantScheme::DeltaU8 => -value,
            // ln σ(x) = −ln(1 + e^−x), x the log-odds.
            QuantScheme::RangeCoded => -(-(TAIL_LOGIT_MAX - value)).exp().ln_1p(),
        }
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
            let tail_lp = self.tail_logprob(tail_code);
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
        for q in [Quantization::default(), Quantization::plain()] {
            round_trip(q);
        }
    }

    fn round_trip(q: Quantization) {
        // A peaked distribution with a long top-k tail and residual mass.
        let raw: Vec<f64> = (0..32).map(|j| -0.05 - 0.6 * j as f64 - 0.01 * (j * j) as f64).collect();
        let total: f64 = raw.iter().map(|l| l.exp()).sum::<f64>() / 0.97;
        let lps: Vec<f32> = raw.iter().map(|l| (l - total.ln()) as f32).collect();
        let tail = (0.03f64).ln() as f32;
        let mut codes = Vec::new();
        let tail_code = q.encode_position(&lps, tail, &mut codes);
        assert_eq!(codes[0], 0, "codes are relative to the top entry");
        let mut out = vec![0f32; 32];
        let tail_back = q.decode_position(&codes, tail_code, &mut out);
        let mass: f64 = out.iter().map(|l| (*l as f64).exp()).sum::<f64>() + (tail_back as f64).exp();
        assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
        let kl = kl_with_tail(&lps, tail, &out, tail_back);
        assert!(kl < 1e-3, "kl {kl}");
    }

    /// A flat top-K with most of the mass in the tail: `−ln(tail)` steps of 1/16 nat gave
    /// 1.1e-3 nats here; the log-odds keep it near the small-tail error.
    #[test]
    fn a_large_tail_is_kept_as_precisely_as_a_small_one() {
        let q = Quantization::default();
        let top = [-3.4306064f32, -3.8056064, -4.0556064, -4.0556064, -4.1806064, -4.4931064, -4.5556064, -4.5556064];
        let kept: f64 = top.iter().map(|l| (*l as f64).exp()).sum();
        for tail_mass in [1.0 - kept, 0.95, 0.999] {
            let scale = ((1.0 - tail_mass) / kept).ln() as f32;
            let lps: Vec<f32> = top.iter().map(|l| l + scale).collect();
            let tail = tail_mass.ln() as f32;
            let mut codes = Vec::new();
            let code = q.encode_position(&lps, tail, &mut codes);
            let mut out = vec![0f32; lps.len()];
            let tail_back = q.decode_position(&codes, code, &mut out);
            let kl = kl_with_tail(&lps, tail, &out, tail_back);
            assert!(kl < 3e-4, "tail {tail_mass}: KL {kl}");
        }
    }

    #[test]
    fn no_tail_and_deep_entries_survive() {
        let q = Quantization::plain();
        let lps = [-0.0001f32, -9.9, -40.0];
        let mut codes = Vec::new();
        let tail_code = q.encode_position(&lps, f32::NEG_INFINITY, &mut codes);
        assert_eq!(codes[2], 255, "the jump to -40 is clamped, not wrapped");
        let mut out = [0f32; 3];
        assert_eq!(q.decode_position(&codes, tail_code, &mut out), f32::NEG_INFINITY);
        assert!(out[0] <= 0.0 && out[1] < out[0] && out[2] < out[1]);
    }
}
