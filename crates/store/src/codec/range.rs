//! A byte-oriented range coder with a 64-bit range (the LZMA carry scheme, widened).
//!
//! Symbols are coded as an interval `[cum, cum + freq)` of `total`. The range never falls below
//! 2^56 before a symbol is coded, so totals up to 2^32 lose at most 2^-24 of a bit to rounding:
//! adaptive models can count freely without rescaling.

/// Ranges below this are renormalised (a byte shifted out).
const TOP: u64 = 1 << 56;
/// Bytes the encoder holds back: the range's 8 plus the pending carry byte.
const FLUSH_BYTES: usize = 9;
/// The largest `total` a model may present.
pub const MAX_TOTAL: u64 = 1 << 32;

pub struct Encoder {
    /// 64 bits of the interval's low end plus a carry bit above them.
    low: u128,
    range: u64,
    /// The last byte not yet written, held back in case a carry reaches it.
    cache: u8,
    /// `cache` plus the 0xFF bytes after it that a carry would also flip.
    pending: u64,
    out: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self { low: 0, range: u64::MAX, cache: 0, pending: 1, out: Vec::new() }
    }
}

impl Encoder {
    pub fn encode(&mut self, cum: u64, freq: u64, total: u64) {
        debug_assert!(freq > 0 && cum + freq <= total && total <= MAX_TOTAL, "{cum} {freq} {total}");
        let r = self.range / total;
        self.low += (r * cum) as u128;
        self.range = r * freq;
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// `symbol` uniformly out of `n`.
    pub fn encode_uniform(&mut self, symbol: u64, n: u64) {
        self.encode(symbol, 1, n);
    }

    fn shift_low(&mut self) {
        let carry = (self.low >> 64) as u8;
        if (self.low as u64) < 0xFF00_0000_0000_0000 || carry != 0 {
            let mut byte = self.cache;
            loop {
                self.out.push(byte.wrapping_add(carry));
                byte = 0xFF;
                self.pending -= 1;
                if self.pending == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 56) as u8;
        }
        self.pending += 1;
        self.low = ((self.low as u64) & 0x00FF_FFFF_FFFF_FFFF) as u128 * 256;
    }

    /// Writes out what is held back and returns the coded bytes.
    ///
    /// The decoder reads zeros past the end, so the stream ends on the value in the final
    /// interval with the most trailing zero bits, and trailing zero bytes are left out.
    pub fn finish(mut self) -> Vec<u8> {
        // low + range < 2^65 always (see `encode`), so the carry stays one bit.
        let last = self.low + self.range as u128 - 1;
        for bits in (0..=64u32).rev() {
            let mask = (1u128 << bits) - 1;
            let value = (self.low + mask) & !mask;
            if value <= last {
                self.low = value;
                break;
            }
        }
        for _ in 0..FLUSH_BYTES {
            self.shift_low();
        }
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }
}

pub struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
    code: u64,
    range: u64,
    /// `range / total` of the symbol being decoded.
    step: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let mut d = Self { bytes, at: 0, code: 0, range: u64::MAX, step: 1 };
        // The first byte is the encoder's initial (empty) cache.
        for _ in 0..FLUSH_BYTES {
            d.code = (d.code << 8) | d.next_byte() as u64;
        }
        d
    }

    /// Past the end the stream reads as zeros (the encoder leaves trailing zeros out).
    fn next_byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// The cumulative count the next symbol's interval contains; follow with [`Self::consume`].
    pub fn target(&mut self, total: u64) -> u64 {
        self.step = self.range / total;
        (self.code / self.step).min(total - 1)
    }

    pub fn consume(&mut self, cum: u64, freq: u64) {
        self.code -= self.step * cum;
        self.range = self.step * freq;
        while self.range < TOP {
            self.code = (self.code << 8) | self.next_byte() as u64;
            self.range <<= 8;
        }
    }

    pub fn decode_uniform(&mut self, n: u64) -> u64 {
        let s = self.target(n);
        self.consume(s, 1);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random intervals of random totals, including the extremes, come back exactly.
    #[test]
    fn random_intervals_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut symbols = Vec::new();
        for i in 0..200_000 {
            let total = match i % 4 {
                0 => rng.gen_range(1..=MAX_TOTAL),
                1 => rng.gen_range(1..300),
                2 => MAX_TOTAL,
                _ => 2,
            };
            let cum = rng.gen_range(0..total);
            // Mostly tiny intervals (many bytes out, carries), sometimes the whole range.
            let freq = if rng.gen_bool(0.1) { total - cum } else { rng.gen_range(1..=(total - cum).min(3)) };
            symbols.push((cum, freq, total));
        }
        let mut enc = Encoder::default();
        for &(c, f, t) in &symbols {
            enc.encode(c, f, t);
        }
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes);
        for (i, &(c, f, t)) in symbols.iter().enumerate() {
            let target = dec.target(t);
            assert!(target >= c && target < c + f, "symbol {i}: target {target} outside [{c}, {})", c + f);
            dec.consume(c, f);
        }
    }

    /// A long run of near-certain symbols costs almost nothing, and a run of 0xFF-heavy output
    /// (carry propagation) still decodes.
    #[test]
    fn likely_symbols_are_cheap_and_carries_propagate() {
        let mut enc = Encoder::default();
        for _ in 0..100_000 {
            enc.encode(0, 999_999, 1_000_000);
        }
        for _ in 0..1_000 {
            enc.encode(999_999, 1, 1_000_000);
        }
        let bytes = enc.finish();
        // 100k × 1.44e-6 bits + 1k × 19.9 bits ≈ 2.5 kB.
        assert!(bytes.len() < 2_600, "{} bytes", bytes.len());
        let mut dec = Decoder::new(&bytes);
        for i in 0..101_000 {
            let t = dec.target(1_000_000);
            let expect = if i < 100_000 { (0, 999_999) } else { (999_999, 1) };
            assert!(t >= expect.0 && t < expect.0 + expect.1, "symbol {i}");
            dec.consume(expect.0, expect.1);
        }
    }
}
