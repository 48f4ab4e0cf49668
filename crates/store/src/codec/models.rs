//! Adaptive probability models for the range coder.
//!
//! - [`FreqTable`]: a small alphabet, every symbol always possible (log-probability codes, tails,
//!   ranks).
//! - [`SparseContext`] and [`Order0`]: PPM-style models over token ids. They know only the ids
//!   seen so far and code an *escape* for the rest (PPM method C: the escape counts one per
//!   distinct id). Ids ruled out already are *excluded*, so no probability is spent on them.

use super::range::{Decoder, Encoder, MAX_TOTAL};

/// Counts over `0..n`, each starting at 1, bumped by [`FreqTable::INCREMENT`] when seen.
pub struct FreqTable {
    counts: Vec<u32>,
    total: u64,
}

impl FreqTable {
    /// Large against the initial 1s, so a few observations outweigh the uniform prior.
    const INCREMENT: u32 = 24;
    /// Halve the counts past this total (keeps the model adaptive and the total bounded).
    const LIMIT: u64 = 1 << 24;

    pub fn new(n: usize) -> Self {
        Self { counts: vec![1; n], total: n as u64 }
    }

    pub fn encode(&mut self, enc: &mut Encoder, symbol: usize) {
        let cum: u64 = self.counts[..symbol].iter().map(|&c| c as u64).sum();
        enc.encode(cum, self.counts[symbol] as u64, self.total);
        self.update(symbol);
    }

    pub fn decode(&mut self, dec: &mut Decoder) -> usize {
        let target = dec.target(self.total);
        let mut cum = 0u64;
        // The last symbol takes what is left, so a corrupt target still lands on a symbol.
        let last = self.counts.len() - 1;
        let mut symbol = last;
        for (s, &c) in self.counts.iter().enumerate() {
            if target < cum + c as u64 {
                symbol = s;
                break;
            }
            cum += c as u64;
        }
        if symbol == last {
            cum = self.total - self.counts[last] as u64;
        }
        dec.consume(cum, self.counts[symbol] as u64);
        self.update(symbol);
        symbol
    }

    fn update(&mut self, symbol: usize) {
        self.counts[symbol] += Self::INCREMENT;
        self.total += Self::INCREMENT as u64;
        if self.total > Self::LIMIT {
            self.counts.iter_mut().for_each(|c| *c = (*c).div_ceil(2));
            self.total = self.counts.iter().map(|&c| c as u64).sum();
        }
    }
}

/// The set of ids ruled out for the symbol being coded: as a bitmap over the vocabulary (fast
/// membership) and as a list (fast reset).
pub struct Exclusions {
    bits: Vec<u64>,
    list: Vec<u32>,
}

impl Exclusions {
    pub fn new(vocab: usize) -> Self {
        Self { bits: vec![0; vocab.div_ceil(64)], list: Vec::new() }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.bits[(id / 64) as usize] & (1 << (id % 64)) != 0
    }

    pub fn insert(&mut self, id: u32) {
        if !self.contains(id) {
            self.bits[(id / 64) as usize] |= 1 << (id % 64);
            self.list.push(id);
        }
    }

    /// Drops every id inserted after the first `keep`.
    pub fn truncate(&mut self, keep: usize) {
        for &id in &self.list[keep.min(self.list.len())..] {
            self.bits[(id / 64) as usize] &= !(1 << (id % 64));
        }
        self.list.truncate(keep);
    }

    #[cfg(test)]
    pub fn ids(&self) -> &[u32] {
        &self.list
    }
}

/// What a PPM model did with a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coded {
    /// The symbol was coded here.
    Found(u32),
    /// An escape was coded (or nothing, when the model had no unexcluded ids).
    Escaped,
}

/// Where the next symbol of a PPM model falls.
enum Split {
    /// The model has no unexcluded ids and codes nothing.
    Nothing,
    /// An escape (already consumed).
    Escape,
    /// Inside the ids' counts: the caller finds the id and consumes its interval.
    Target(u64),
}

/// Ids own `[0, n)` of the total `n + d`, the escape `[n, n + d)` (method C: one count per
/// distinct id).
fn decode_split(dec: &mut Decoder, n: u64, d: u64) -> Split {
    if n == 0 {
        return Split::Nothing;
    }
    let target = dec.target(n + d);
    if target >= n {
        dec.consume(n, d);
        return Split::Escape;
    }
    Split::Target(target)
}

/// Counts of the ids seen in one context.
#[derive(Default)]
pub struct SparseContext {
    ids: Vec<u32>,
    counts: Vec<u32>,
}

impl SparseContext {
    pub fn add(&mut self, id: u32) {
        match self.ids.iter().position(|&x| x == id) {
            Some(i) => self.counts[i] += 1,
            None => {
                self.ids.push(id);
                self.counts.push(1);
            }
        }
    }

    /// Counts and distinct ids that are not excluded.
    fn live(&self, excluded: &Exclusions) -> (u64, u64) {
        let (mut n, mut d) = (0u64, 0u64);
        for (&id, &c) in self.ids.iter().zip(&self.counts) {
            if !excluded.contains(id) {
                n += c as u64;
                d += 1;
            }
        }
        (n, d)
    }

    /// Codes `id` here or an escape; on an escape every id of this context joins `excluded`.
    pub fn encode(&self, enc: &mut Encoder, id: u32, excluded: &mut Exclusions) -> Coded {
        let (n, d) = self.live(excluded);
        if n == 0 {
            return Coded::Escaped;
        }
        debug_assert!(n + d <= MAX_TOTAL);
        if !excluded.contains(id) {
            let mut cum = 0u64;
            for (&x, &c) in self.ids.iter().zip(&self.counts) {
                if x == id {
                    enc.encode(cum, c as u64, n + d);
                    return Coded::Found(id);
                }
                if !excluded.contains(x) {
                    cum += c as u64;
                }
            }
        }
        enc.encode(n, d, n + d);
        self.exclude_all(excluded);
        Coded::Escaped
    }

    pub fn decode(&self, dec: &mut Decoder, excluded: &mut Exclusions) -> Coded {
        let (n, d) = self.live(excluded);
        let target = match decode_split(dec, n, d) {
            Split::Nothing => return Coded::Escaped,
            Split::Escape => {
                self.exclude_all(excluded);
                return Coded::Escaped;
            }
            Split::Target(target) => target,
        };
        let mut cum = 0u64;
        for (&x, &c) in self.ids.iter().zip(&self.counts) {
            if excluded.contains(x) {
                continue;
            }
            if target < cum + c as u64 {
                dec.consume(cum, c as u64);
                return Coded::Found(x);
            }
            cum += c as u64;
        }
        unreachable!("target {target} < live count {n}, so some id's interval contains it")
    }

    fn exclude_all(&self, excluded: &mut Exclusions) {
        self.ids.iter().for_each(|&id| excluded.insert(id));
    }
}

/// Counts of every id over the whole vocabulary, with prefix sums in a Fenwick tree.
///
/// Only the few ids already coded at the position are excluded here (not everything the
/// higher contexts escaped from): a full exclusion would need a prefix-sum correction per
/// excluded id, thousands of them, for about 1% of the bytes.
pub struct Order0 {
    counts: Vec<u32>,
    tree: Vec<u64>,
    total: u64,
    distinct: u64,
}

impl Order0 {
    pub fn new(vocab: usize) -> Self {
        Self { counts: vec![0; vocab], tree: vec![0; vocab + 1], total: 0, distinct: 0 }
    }

    pub fn add(&mut self, id: u32) {
        if self.counts[id as usize] == 0 {
            self.distinct += 1;
        }
        self.counts[id as usize] += 1;
        self.total += 1;
        let mut i = id as usize + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of the counts of ids `< id`.
    fn prefix(&self, id: u32) -> u64 {
        let (mut i, mut sum) = (id as usize, 0);
        while i > 0 {
            sum += self.tree[i];
            i &= i - 1;
        }
        sum
    }

    /// The smallest id whose cumulative interval ends past `target`.
    fn find(&self, target: u64) -> u32 {
        let (mut pos, mut rest) = (0usize, target);
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= rest {
                pos = next;
                rest -= self.tree[next];
            }
            step /= 2;
        }
        pos as u32
    }

    fn live(&self, excluded: &[u32]) -> (u64, u64) {
        let (mut n, mut d) = (self.total, self.distinct);
        for &e in excluded {
            let c = self.counts[e as usize] as u64;
            n -= c;
            d -= (c > 0) as u64;
        }
        (n, d)
    }

    /// Codes `id` or an escape, `excluded` being the ids already coded at this position.
    pub fn encode(&self, enc: &mut Encoder, id: u32, excluded: &[u32]) -> Coded {
        let (n, d) = self.live(excluded);
        if n == 0 {
            return Coded::Escaped;
        }
        let count = self.counts[id as usize] as u64;
        if count > 0 && !excluded.contains(&id) {
            let below: u64 = excluded.iter().filter(|&&e| e < id).map(|&e| self.counts[e as usize] as u64).sum();
            enc.encode(self.prefix(id) - below, count, n + d);
            return Coded::Found(id);
        }
        enc.encode(n, d, n + d);
        Coded::Escaped
    }

    pub fn decode(&self, dec: &mut Decoder, excluded: &[u32]) -> Coded {
        let (n, d) = self.live(excluded);
        let Split::Target(target) = decode_split(dec, n, d) else {
            return Coded::Escaped;
        };
        // The id whose interval in the full table holds the target once the counts of the
        // excluded ids at or below it are skipped: a fixed point reached from below, since
        // both the search and the skipped counts only grow with the id.
        let skipped_to =
            |id: u32| -> u64 { excluded.iter().filter(|&&e| e <= id).map(|&e| self.counts[e as usize] as u64).sum() };
        let mut id = self.find(target);
        loop {
            let next = self.find(target + skipped_to(id));
            if next == id {
                break;
            }
            id = next;
        }
        dec.consume(self.prefix(id) - skipped_to(id), self.counts[id as usize] as u64);
        Coded::Found(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn order0_prefix_sums_and_search_agree_with_the_counts() {
        let mut m = Order0::new(1000);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..5000 {
            m.add(rng.gen_range(0..1000u32).pow(2) / 1000);
        }
        let mut cum = 0u64;
        for id in 0..1000u32 {
            assert_eq!(m.prefix(id), cum);
            for t in cum..cum + m.counts[id as usize] as u64 {
                assert_eq!(m.find(t), id);
            }
            cum += m.counts[id as usize] as u64;
        }
    }

    /// Every model codes a random stream against random exclusions and decodes it back.
    #[test]
    fn models_round_trip_with_exclusions() {
        let vocab = 300;
        let mut rng = StdRng::seed_from_u64(11);
        let mut events = Vec::new();
        for _ in 0..4000 {
            let excluded: Vec<u32> = (0..rng.gen_range(0..6)).map(|_| rng.gen_range(0..vocab as u32)).collect();
            let id = rng.gen_range(0..vocab as u32).min(rng.gen_range(0..vocab as u32));
            events.push((rng.gen_range(0..4usize), excluded, id, rng.gen_range(0..17usize)));
        }
        let run = |enc: Option<&mut Encoder>, dec: Option<&mut Decoder>| -> Vec<(Coded, Coded, usize)> {
            let (mut enc, mut dec) = (enc, dec);
            let mut ctx = [SparseContext::default(), SparseContext::default()];
            let mut o0 = Order0::new(vocab);
            let mut table = FreqTable::new(17);
            let mut ex = Exclusions::new(vocab);
            let mut out = Vec::new();
            for (c, excluded, id, small) in &events {
                ex.truncate(0);
                excluded.iter().for_each(|&e| ex.insert(e));
                let pos_excluded = ex.ids().to_vec();
                let (a, b, s) = match (enc.as_deref_mut(), dec.as_deref_mut()) {
                    (Some(e), _) => {
                        let a = ctx[c % 2].encode(e, *id, &mut ex);
                        let b = if a == Coded::Escaped { o0.encode(e, *id, &pos_excluded) } else { a };
                        table.encode(e, *small);
                        (a, b, *small)
                    }
                    (None, Some(d)) => {
                        let a = ctx[c % 2].decode(d, &mut ex);
                        let b = if a == Coded::Escaped { o0.decode(d, &pos_excluded) } else { a };
                        (a, b, table.decode(d))
                    }
                    _ => unreachable!(),
                };
                if !excluded.contains(id) {
                    ctx[c % 2].add(*id);
                    o0.add(*id);
                }
                out.push((a, b, s));
            }
            out
        };
        let mut enc = Encoder::default();
        let coded = run(Some(&mut enc), None);
        let bytes = enc.finish();
        let mut dec = Decoder::new(&bytes);
        let decoded = run(None, Some(&mut dec));
        assert_eq!(coded, decoded);
        // Found ids are the ids.
        for ((_, excluded, id, _), (_, b, _)) in events.iter().zip(&coded) {
            if let Coded::Found(x) = b {
                assert_eq!(x, id);
                assert!(!excluded.contains(x));
            }
        }
        // Escapes included, the stream costs less than coding each event's id and table
        // symbol uniformly: log2(300) + log2(17) = 12.3 bits.
        assert!((bytes.len() * 8) as f64 / (events.len() as f64) < 12.3, "{} bytes", bytes.len());
    }
}
