//! Decoding: sampling settings, the sampler, and batched generation with streaming.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::llama::{KvCache, Llama};
use crate::tokenizer::TextTokenizer;

/// How to pick each next token. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0, max_tokens: 256, stop: Vec::new() }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Input(format!("temperature must be ≥ 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::Input("stop strings must not be empty".into()));
        }
        Ok(())
    }
}

/// Picks token ids from logits according to [`SamplingParams`], reproducibly for a seed.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Next token for one row of logits (V). Top-p sorts only a head of the most likely tokens,
    /// grown until it holds the nucleus, not the whole vocabulary (a sort of 49k–152k values per
    /// token was a tenth of a sampled dataset's time).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature as f32;
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l * inv_t)).collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        // Most likely first; equal values by id, so the order does not depend on the algorithm.
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < candidates.len() {
            candidates.select_nth_unstable_by(k - 1, desc);
            candidates.truncate(k);
        }
        // Each candidate's unnormalised probability (monotonic in the logit, so the order holds).
        let max = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        candidates.iter_mut().for_each(|c| c.1 = (c.1 - max).exp());
        if self.params.top_p < 1.0 {
            let target = self.params.top_p as f32 * candidates.iter().map(|c| c.1).sum::<f32>();
            let mut head = NUCLEUS_HEAD.min(candidates.len());
            loop {
                if head < candidates.len() {
                    candidates.select_nth_unstable_by(head - 1, desc);
                }
                candidates[..head].sort_unstable_by(desc);
                let mut cumulative = 0.0;
                let end = candidates[..head].iter().position(|c| {
                    cumulative += c.1;
                    cumulative >= target
                });
                match end {
                    Some(i) => break candidates.truncate(i + 1),
                    None if head == candidates.len() => break,
                    None => head = (head * 8).min(candidates.len()),
                }
            }
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut r = self.rng.gen::<f32>() * total;
        for &(id, p) in &candidates {
            r -= p;
            if r <= 0.0 {
                return id;
            }
        }
        candidates[candidates.len() - 1].0
    }
}

/// How many of the most likely tokens top-p sorts first; it sorts 8× more while their
/// probabilities fall short of top-p.
const NUCLEUS_HEAD: usize = 64;

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Why a completion ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

/// One generated completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The end-of-sequence token that ended the completion (not in `token_ids`).
    pub stop_token: Option<u32>,
    /// Per generated token (as `token_ids`), when asked for with [`generate_with_logprobs`].
    pub logprobs: Vec<TokenLogprob>,
}

impl Completion {
    /// The completion's token ids with the end-of-sequence token that ended it, if one did: the
    /// tokens a teacher's signal covers.
    pub fn ids_with_stop(self) -> Vec<u32> {
        let mut ids = self.token_ids;
        ids.extend(self.stop_token);
        ids
    }
}

/// The model's log-probability (temperature 1, before any sampling filter) of a generated token
/// and of the most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `k` most likely tokens at that step, most likely first: (id, logprob).
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of one row, then the chosen token's value and the top `k`.
fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln();
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(logits.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |a, b| logits[*b].total_cmp(&logits[*a]));
    }
    let mut top: Vec<(u32, f32)> = order[..k].iter().map(|&i| (i as u32, lp(i))).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    TokenLogprob { id, logprob: lp(id as usize), top }
}

/// Incremental detokenisation of one row: emits only text that is final (no partial UTF-8, no
/// prefix of a stop string that may still complete).
struct RowState {
    ids: Vec<u32>,
    emitted: usize,
    text: String,
    done: Option<FinishReason>,
    stop_token: Option<u32>,
}

/// One sequence being decoded: its sampler, its text so far and its stop conditions. Batched
/// generation and the server's continuous batching both drive sequences one token at a time.
pub struct Sequence {
    sampler: Sampler,
    stop: Vec<String>,
    top_logprobs: Option<usize>,
    max_tokens: usize,
    logit_bias: Vec<(u32, f32)>,
    state: RowState,
    logprobs: Vec<TokenLogprob>,
}

impl Sequence {
    /// A sequence sampled with `params` (its own `seed`), ending after `max_tokens` tokens at
    /// most. With `Some(k)`, each token's log-probability and the `k` most likely alternatives
    /// are recorded.
    pub fn new(params: &SamplingParams, max_tokens: usize, top_logprobs: Option<usize>) -> Self {
        Self {
            sampler: Sampler::new(params.clone()),
            stop: params.stop.clone(),
            top_logprobs,
            max_tokens,
            logit_bias: Vec::new(),
            state: RowState { ids: Vec::new(), emitted: 0, text: String::new(), done: None, stop_token: None },
            logprobs: Vec::new(),
        }
    }

    /// Adds `bias` to the logit of each listed token before sampling (OpenAI's `logit_bias`).
    /// Recorded log-probabilities stay the model's own.
    pub fn with_logit_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        self.logit_bias = bias;
        self
    }

    /// Picks the next token from this sequence's logits (V) and returns it with the text that
    /// became final (often empty). Call only while [`Sequence::is_done`] is false.
    pub fn push(&mut self, tokenizer: &TextTokenizer, logits: &[f32], stop_ids: &[u32]) -> Result<(u32, String)> {
        let token = if self.logit_bias.is_empty() {
            self.sampler.sample(logits)
        } else {
            let mut biased = logits.to_vec();
            for &(id, bias) in &self.logit_bias {
                if let Some(l) = biased.get_mut(id as usize) {
                    *l += bias;
                }
            }
            self.sampler.sample(&biased)
        };
        if stop_ids.contains(&token) {
            self.state.done = Some(FinishReason::Stop);
            self.state.stop_token = Some(token);
        } else {
            self.state.ids.push(token);
            if let Some(k) = self.top_logprobs {
                self.logprobs.push(token_logprob(logits, token, k));
            }
            if self.state.ids.len() >= self.max_tokens {
                self.state.done = Some(FinishReason::Length);
            }
        }
        let mut piece = String::new();
        advance_text(tokenizer, &mut self.state, &self.stop, &mut |p| piece.push_str(p))?;
        Ok((token, piece))
    }

    pub fn is_done(&self) -> bool {
        self.state.done.is_some()
    }

    /// Tokens generated so far (an end-of-sequence token is not counted).
    pub fn len(&self) -> usize {
        self.state.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.ids.is_empty()
    }

    /// Per generated token, when asked for at creation.
    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// Ends the sequence (by length if nothing else ended it) and returns the completion with the
    /// text that became final only now.
    pub fn finish(mut self, tokenizer: &TextTokenizer) -> Result<(Completion, String)> {
        let mut piece = String::new();
        if self.state.done.is_none() {
            self.state.done = Some(FinishReason::Length);
        }
        advance_text(tokenizer, &mut self.state, &self.stop, &mut |p| piece.push_str(p))?;
        let completion = Completion {
            text: self.state.text,
            token_ids: self.state.ids,
            finish_reason: self.state.done.unwrap_or(FinishReason::Length),
            stop_token: self.state.stop_token,
            logprobs: self.logprobs,
        };
        Ok((completion, piece))
    }
}

/// Generates a continuation for every prompt (token ids) in one left-padded batch.
///
/// `on_text(row, piece)` receives each row's text as soon as it is final, for streaming.
pub fn generate(
    model: &Llama,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stop_ids: &[u32],
    on_text: impl FnMut(usize, &str),
) -> Result<Vec<Completion>> {
    generate_with_logprobs(model, tokenizer, prompts, params, stop_ids, None, on_text)
}

/// [`generate`], also recording each generated token's log-probability and, with
/// `Some(k)`, the `k` most likely alternatives (`Some(0)`: the token's own only).
pub fn generate_with_logprobs(
    model: &Llama,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    stop_ids: &[u32],
    top_logprobs: Option<usize>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Completion>> {
    params.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!("prompt {i} has no tokens")));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = model.config().max_position_embeddings;
    if longest >= context {
        return Err(Error::Input(format!(
            "a prompt of {longest} tokens leaves no room in the model's context of {context}"
        )));
    }
    let max_new = params.max_tokens.min(context - longest);
    let pad_id = tokenizer.eos_id().unwrap_or(0);
    let left_pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let batch: Vec<u32> = prompts
        .iter()
        .zip(&left_pad)
        .flat_map(|(p, &pad)| std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()))
        .collect();
    let b = prompts.len();
    let device = model.device();
    let mut cache = KvCache::new(model.config(), left_pad);
    let mut input = Tensor::from_vec(batch, (b, longest), device)?;
    let mut sequences: Vec<Sequence> = (0..b)
        .map(|row| {
            let seeded = SamplingParams { seed: params.seed.wrapping_add(row as u64), ..params.clone() };
            Sequence::new(&seeded, max_new, top_logprobs)
        })
        .collect();
    if max_new > 0 {
        loop {
            let logits = model.step(&input, &mut cache)?.to_vec2::<f32>()?; // (B, V)
            let mut next = Vec::with_capacity(b);
            for (row, sequence) in sequences.iter_mut().enumerate() {
                if sequence.is_done() {
                    next.push(pad_id);
                    continue;
                }
                let (token, piece) = sequence.push(tokenizer, &logits[row], stop_ids)?;
                next.push(token);
                if !piece.is_empty() {
                    on_text(row, &piece);
                }
            }
            if sequences.iter().all(Sequence::is_done) {
                break;
            }
            input = Tensor::from_vec(next, (b, 1), device)?;
        }
    }
    let mut out = Vec::with_capacity(b);
    for (row, sequence) in sequences.into_iter().enumerate() {
        let (completion, piece) = sequence.finish(tokenizer)?;
        if !piece.is_empty() {
            on_text(row, &piece);
        }
        out.push(completion);
    }
    Ok(out)
}

/// Re-decodes a row after a new token, cuts at a stop string, and emits the final part.
fn advance_text(
    tokenizer: &TextTokenizer,
    state: &mut RowState,
    stop: &[String],
    on_text: &mut impl FnMut(&str),
) -> Result<()> {
    let mut text = tokenizer.decode(&state.ids, true)?;
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
        state.done = Some(FinishReason::Stop);
    }
    // While running, hold back an incomplete UTF-8 sequence and any tail that could still grow
    // into a stop string.
    let mut final_len = text.len();
    if state.done.is_none() {
        final_len = text.trim_end_matches('\u{FFFD}').len();
        let settled = &text[..final_len];
        let hold = stop
            .iter()
            .filter_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && settled.ends_with(&s[..k])))
            .max()
            .unwrap_or(0);
        final_len -= hold;
    }
    if final_len > state.emitted && text.is_char_boundary(final_len) && text.is_char_boundary(state.emitted) {
        on_text(&text[state.emitted..final_len]);
        state.emitted = final_len;
    }
    state.text = text;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.0, 1.0, 5.0]), 2);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 2.0, 1.0, 1.9]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps the first token only.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits), 0);
        }
    }

    #[test]
    fn top_p_finds_a_nucleus_larger_than_the_first_head() {
        // 2,000 tokens whose probabilities fall slowly: the 0.9 nucleus holds about 575 of them.
        let logits: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.004 + ((i * 7919) % 13) as f32 * 1e-3).collect();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] - logits[order[0]]) as f64).exp()).collect();
        let target = 0.9 * weights.iter().sum::<f64>();
        let mut cumulative = 0.0;
        let last = weights.iter().position(|w| {
            cumulative += w;
            cumulative >= target
        });
        let size = last.unwrap() + 1;
        assert!(size > NUCLEUS_HEAD * 8, "{size}");
        let rank = |t: u32| order.iter().position(|&i| i == t as usize).unwrap();
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.9, seed: 3, ..Default::default() });
        let ranks: Vec<usize> = (0..3000).map(|_| rank(s.sample(&logits))).collect();
        // Within the nucleus (one token of rounding either side), and reaching its far end.
        assert!(ranks.iter().all(|&r| r <= size), "{:?}", ranks.iter().max());
        assert!(ranks.iter().any(|&r| r > size * 9 / 10), "{:?}", ranks.iter().max());
    }

    #[test]
    fn sampling_is_reproducible_for_a_seed_and_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let params = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
        let draw = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone());
            (0..4000).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "share of token 1 = {ones}");
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { stop: vec![String::new()], ..Default::default() },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
