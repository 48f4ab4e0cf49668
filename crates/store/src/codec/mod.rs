//! Entropy coding of the teacher signal (the `range-coded` scheme, format version 2).
//!
//! Each shard row's completion positions are coded into one byte string with a range coder.
//! The models adapt as they go and carry over from row to row within a shard (they start
//! fresh in every shard, so shards decode independently, but a shard's rows decode in order).
//!
//! Per completion position, given the token before it (`c`), the one before that (`c'`) and
//! the token that follows (`x`, the completion token itself — all stored in plain columns):
//! 1. the rank of `x` among the top-K ids (K meaning "not among them"): the teacher sampled or
//!    scored `x`, so it is usually rank 0, and its id then costs nothing;
//! 2. the other ids in rank order, each with a PPM cascade of contexts: the ids that followed
//!    `(c', c)` before, the ids ranked below the same top-1 id before, the ids that followed
//!    `c`, every id seen (order 0), and finally the raw id. Ids already coded at the position
//!    are excluded everywhere, and the ids of a context escaped from are excluded below it;
//! 3. the K log-probability code differences (see [`crate::quant`]), each in a context of its
//!    rank band and the previous difference;
//! 4. the tail code, in a context of how deep the K-th log-probability lies.
//!
//! A repeated id at one position (a remote teacher pads a short list with its first id) is
//! excluded from every model and so reaches the raw level, which round-trips any id.

mod models;
mod range;

use std::collections::HashMap;

use crate::quant::NO_TAIL;
use models::{Coded, Exclusions, FreqTable, Order0, SparseContext};
pub use range::{Decoder, Encoder};

/// Context value for "no token" (the first positions of a sequence).
const NO_TOKEN: u32 = u32::MAX;
/// Tail codes at most this (`−ln tail` up to ~255 nats at 16 codes per nat); [`NO_TAIL`]
/// means the top-K hold all the mass.
pub const MAX_TAIL_CODE: u16 = 254 * 16 + 15;

/// Raw ids are coded as a high part and a low part of this many values.
const RAW_LOW: u64 = 1 << 12;
/// Rank bands for the log-probability models: rank 0, 1–2, 3–7, 8–15, 16+.
const RANK_BANDS: usize = 5;
/// Previous differences above this share a context.
const PREV_CAP: usize = 12;
const TAIL_DEPTH_CONTEXTS: usize = 32;

/// The log-probability model for rank `j` after a difference of `previous`.
fn delta_context(j: usize, previous: usize) -> usize {
    let band = match j {
        0 => 0,
        1..=2 => 1,
        3..=7 => 2,
        8..=15 => 3,
        _ => 4,
    };
    band * (PREV_CAP + 1) + previous.min(PREV_CAP)
}

/// The tokens around a completion position (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Neighbours {
    pub before2: u32,
    pub before: u32,
    pub token: u32,
}

impl Neighbours {
    /// The neighbours of completion position `i` of a sequence.
    pub fn at(token_ids: &[u32], prompt_len: usize, i: usize) -> Self {
        let t = prompt_len + i;
        let get = |back: usize| t.checked_sub(back).map_or(NO_TOKEN, |p| token_ids[p]);
        Self { before2: get(2), before: get(1), token: token_ids[t] }
    }
}

/// The PPM contexts over ids: what followed the previous two tokens, what was ranked below a
/// top-1 id, what followed the previous token.
#[derive(Default)]
struct IdContexts {
    order2: HashMap<u64, SparseContext>,
    after_top1: HashMap<u32, SparseContext>,
    order1: HashMap<u32, SparseContext>,
}

impl IdContexts {
    fn pair(at: Neighbours) -> u64 {
        ((at.before2 as u64) << 32) | at.before as u64
    }

    /// The contexts for rank `j` (`ids[..j]` already known), most specific first.
    fn for_rank(&self, at: Neighbours, ids: &[u32], j: usize) -> [Option<&SparseContext>; 3] {
        let after_top1 = if j > 0 { self.after_top1.get(&ids[0]) } else { None };
        [self.order2.get(&Self::pair(at)), after_top1, self.order1.get(&at.before)]
    }

    fn learn(&mut self, at: Neighbours, ids: &[u32]) {
        let order2 = self.order2.entry(Self::pair(at)).or_default();
        ids.iter().for_each(|&id| order2.add(id));
        let order1 = self.order1.entry(at.before).or_default();
        ids.iter().for_each(|&id| order1.add(id));
        let after_top1 = self.after_top1.entry(ids[0]).or_default();
        ids[1..].iter().for_each(|&id| after_top1.add(id));
    }
}

/// One completion position's top-K, as coded: ids in rank order, log-probability code
/// differences, tail code.
pub struct PositionCodes<'a> {
    pub ids: &'a [u32],
    pub deltas: &'a [u8],
    pub tail: u16,
}

/// The adaptive state shared by the encoder and the decoder of one shard.
pub struct TopkCodec {
    k: usize,
    vocab: usize,
    rank_of_token: FreqTable,
    deltas: Vec<FreqTable>,
    tail_high: Vec<FreqTable>,
    tail_low: Vec<FreqTable>,
    contexts: IdContexts,
    order0: Order0,
    excluded: Exclusions,
    /// Ids coded so far at the current position (the only exclusions of order 0).
    position_ids: Vec<u32>,
    /// Set when decoding met something no encoder writes.
    corrupt: bool,
}

impl TopkCodec {
    pub fn new(k: usize, vocab: usize) -> Self {
        Self {
            k,
            vocab,
            rank_of_token: FreqTable::new(k + 1),
            deltas: (0..RANK_BANDS * (PREV_CAP + 1)).map(|_| FreqTable::new(256)).collect(),
            tail_high: (0..TAIL_DEPTH_CONTEXTS).map(|_| FreqTable::new(256)).collect(),
            tail_low: (0..32).map(|_| FreqTable::new(16)).collect(),
            contexts: IdContexts::default(),
            order0: Order0::new(vocab),
            excluded: Exclusions::new(vocab),
            position_ids: Vec::with_capacity(k),
            corrupt: false,
        }
    }

    /// Whether decoding met a value no encoder writes.
    pub fn corrupt(&self) -> bool {
        self.corrupt
    }

    /// Checks what the coder cannot represent; the message names the offending value.
    pub fn check(&self, at: Neighbours, codes: &PositionCodes) -> Result<(), String> {
        if codes.ids.len() != self.k || codes.deltas.len() != self.k {
            return Err(format!("{} ids and {} codes for k = {}", codes.ids.len(), codes.deltas.len(), self.k));
        }
        if let Some(id) = codes.ids.iter().chain([&at.token]).find(|&&id| id as usize >= self.vocab) {
            return Err(format!("token id {id} is outside the teacher's vocabulary of {}", self.vocab));
        }
        if codes.tail > MAX_TAIL_CODE && codes.tail != NO_TAIL {
            return Err(format!("tail code {} is above {MAX_TAIL_CODE}", codes.tail));
        }
        Ok(())
    }

    /// Codes one position. Call [`Self::check`] first: out-of-range input panics.
    pub fn encode(&mut self, enc: &mut Encoder, at: Neighbours, codes: &PositionCodes) {
        let rank = codes.ids.iter().position(|&id| id == at.token).unwrap_or(self.k);
        self.rank_of_token.encode(enc, rank);
        self.start_position(at, rank);
        for (j, &id) in codes.ids.iter().enumerate() {
            if j != rank {
                self.encode_id(enc, at, codes.ids, j, id);
            }
            self.coded(id);
        }
        self.encode_logprobs(enc, codes.deltas, codes.tail);
        self.learn(at, codes.ids);
    }

    /// Decodes one position into `ids` and `deltas` (length K each) and returns the tail code.
    pub fn decode(&mut self, dec: &mut Decoder, at: Neighbours, ids: &mut [u32], deltas: &mut [u8]) -> u16 {
        let rank = self.rank_of_token.decode(dec);
        self.start_position(at, rank);
        for j in 0..self.k {
            let id = if j == rank { at.token } else { self.decode_id(dec, at, ids, j) };
            ids[j] = id;
            self.coded(id);
        }
        let tail = self.decode_logprobs(dec, deltas);
        self.learn(at, ids);
        tail
    }

    fn start_position(&mut self, at: Neighbours, rank: usize) {
        self.excluded.truncate(0);
        self.position_ids.clear();
        if rank < self.k {
            self.excluded.insert(at.token);
            self.position_ids.push(at.token);
        }
    }

    fn coded(&mut self, id: u32) {
        self.excluded.insert(id);
        if !self.position_ids.contains(&id) {
            self.position_ids.push(id);
        }
    }

    fn encode_id(&mut self, enc: &mut Encoder, at: Neighbours, ids: &[u32], j: usize, id: u32) {
        let mut found = false;
        for ctx in self.contexts.for_rank(at, ids, j).into_iter().flatten() {
            if ctx.encode(enc, id, &mut self.excluded) != Coded::Escaped {
                found = true;
                break;
            }
        }
        // Back to the position's own exclusions (what the contexts added is scoped to this id).
        self.excluded.truncate(self.position_ids.len());
        if found || self.order0.encode(enc, id, &self.position_ids) != Coded::Escaped {
            return;
        }
        // Raw ids are not excluded, so a repeated id (padding) lands here and round-trips too.
        let high = self.vocab as u64;
        enc.encode_uniform(id as u64 / RAW_LOW, high.div_ceil(RAW_LOW));
        enc.encode_uniform(id as u64 % RAW_LOW, RAW_LOW);
    }

    fn decode_id(&mut self, dec: &mut Decoder, at: Neighbours, ids: &[u32], j: usize) -> u32 {
        let mut found = None;
        for ctx in self.contexts.for_rank(at, ids, j).into_iter().flatten() {
            if let Coded::Found(id) = ctx.decode(dec, &mut self.excluded) {
                found = Some(id);
                break;
            }
        }
        self.excluded.truncate(self.position_ids.len());
        if let Some(id) = found {
            return id;
        }
        if let Coded::Found(id) = self.order0.decode(dec, &self.position_ids) {
            return id;
        }
        let high = dec.decode_uniform((self.vocab as u64).div_ceil(RAW_LOW));
        let id = high * RAW_LOW + dec.decode_uniform(RAW_LOW);
        if id >= self.vocab as u64 {
            // Only a corrupt stream names an id past the vocabulary.
            self.corrupt = true;
            return 0;
        }
        id as u32
    }

    fn encode_logprobs(&mut self, enc: &mut Encoder, deltas: &[u8], tail: u16) {
        let mut previous = 0usize;
        for (j, &d) in deltas.iter().enumerate() {
            self.deltas[delta_context(j, previous)].encode(enc, d as usize);
            previous = d as usize;
        }
        let depth = Self::depth_context(deltas);
        let high = if tail == NO_TAIL { 255 } else { (tail >> 4) as usize };
        self.tail_high[depth].encode(enc, high);
        if tail != NO_TAIL {
            self.tail_low[high.min(31)].encode(enc, (tail & 15) as usize);
        }
    }

    fn decode_logprobs(&mut self, dec: &mut Decoder, deltas: &mut [u8]) -> u16 {
        let mut previous = 0usize;
        for (j, d) in deltas.iter_mut().enumerate() {
            let symbol = self.deltas[delta_context(j, previous)].decode(dec);
            *d = symbol as u8;
            previous = symbol;
        }
        let high = self.tail_high[Self::depth_context(deltas)].decode(dec);
        if high == 255 {
            return NO_TAIL;
        }
        (high as u16) << 4 | self.tail_low[high.min(31)].decode(dec) as u16
    }

    /// How deep the last top-K entry lies, in units of 8 codes (one nat at the default step).
    fn depth_context(deltas: &[u8]) -> usize {
        let depth: usize = deltas.iter().map(|&d| d as usize).sum();
        (depth / 8).min(TAIL_DEPTH_CONTEXTS - 1)
    }

    fn learn(&mut self, at: Neighbours, ids: &[u32]) {
        self.contexts.learn(at, ids);
        ids.iter().for_each(|&id| self.order0.add(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Positions drawn like a teacher's: a few hundred likely ids, the sampled token usually
    /// first, occasional padding repeats and ids from anywhere in the vocabulary.
    fn positions(n: usize, k: usize, vocab: u32, seed: u64) -> Vec<(Neighbours, Vec<u32>, Vec<u8>, u16)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tokens = vec![1u32, 2];
        (0..n)
            .map(|i| {
                let mut ids: Vec<u32> = Vec::new();
                while ids.len() < k {
                    let id = if rng.gen_bool(0.9) { rng.gen_range(0..300.min(vocab)) } else { rng.gen_range(0..vocab) };
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                if i % 17 == 0 {
                    // A short remote list padded with its first id.
                    for j in k / 2..k {
                        ids[j] = ids[0];
                    }
                }
                let token = if rng.gen_bool(0.8) { ids[0] } else { rng.gen_range(0..vocab) };
                let at = Neighbours { before2: tokens[tokens.len() - 2], before: tokens[tokens.len() - 1], token };
                tokens.push(token);
                let deltas: Vec<u8> = (0..k).map(|j| if j == 0 { rng.gen_range(0..3) } else { rng.gen() }).collect();
                let tail = match i % 5 {
                    0 => NO_TAIL,
                    1 => MAX_TAIL_CODE,
                    _ => rng.gen_range(0..400),
                };
                (at, ids, deltas, tail)
            })
            .collect()
    }

    #[test]
    fn positions_round_trip_exactly() {
        for (k, vocab) in [(32usize, 49_152u32), (5, 152_064), (1, 10)] {
            let data = positions(600, k, vocab, k as u64);
            let mut codec = TopkCodec::new(k, vocab as usize);
            let mut enc = Encoder::default();
            for (at, ids, deltas, tail) in &data {
                let codes = PositionCodes { ids, deltas, tail: *tail };
                codec.check(*at, &codes).unwrap();
                codec.encode(&mut enc, *at, &codes);
            }
            let bytes = enc.finish();
            let mut codec = TopkCodec::new(k, vocab as usize);
            let mut dec = Decoder::new(&bytes);
            let (mut ids, mut deltas) = (vec![0u32; k], vec![0u8; k]);
            for (i, (at, want_ids, want_deltas, want_tail)) in data.iter().enumerate() {
                let tail = codec.decode(&mut dec, *at, &mut ids, &mut deltas);
                assert_eq!((&ids, &deltas, tail), (want_ids, want_deltas, *want_tail), "k {k}, position {i}");
            }
        }
    }

    /// Garbage decodes to something (the shard reader's row-end check then refuses it) without
    /// panicking or indexing past the vocabulary.
    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = StdRng::seed_from_u64(9);
        let (k, vocab) = (8usize, 1000usize);
        let mut codec = TopkCodec::new(k, vocab);
        let (mut ids, mut deltas) = (vec![0u32; k], vec![0u8; k]);
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let mut dec = Decoder::new(&bytes);
            for _ in 0..20 {
                let at = Neighbours { before2: rng.gen_range(0..2000), before: 1, token: rng.gen_range(0..1000) };
                let tail = codec.decode(&mut dec, at, &mut ids, &mut deltas);
                assert!(ids.iter().all(|&id| (id as usize) < vocab));
                assert!(tail <= MAX_TAIL_CODE || tail == NO_TAIL);
            }
        }
    }

    #[test]
    fn out_of_range_input_is_refused_by_name() {
        let codec = TopkCodec::new(2, 100);
        let at = Neighbours { before2: 0, before: 1, token: 5 };
        let err = codec.check(at, &PositionCodes { ids: &[3, 100], deltas: &[0, 1], tail: 0 }).unwrap_err();
        assert!(err.contains("token id 100") && err.contains("100"), "{err}");
        let err = codec.check(at, &PositionCodes { ids: &[3, 4], deltas: &[0, 1], tail: 5000 }).unwrap_err();
        assert!(err.contains("tail code 5000"), "{err}");
        assert!(codec.check(at, &PositionCodes { ids: &[3], deltas: &[0, 1], tail: 0 }).is_err());
    }
}
