//! Teachers: a model that generates completions and scores sequences.
//!
//! [`Teacher`] is the small trait the dataset builder and the trainer use; [`LocalTeacher`] runs a
//! model loaded in-process. Scoring never materialises (B, T, V): hidden states are projected onto
//! the vocabulary a chunk of positions at a time, and each chunk is reduced to top-K plus
//! log-sum-exp before the next is computed.

pub mod remote;

use candle_core::{Device, Tensor};
use distill_kernels::{topk_logprobs, TopK};
use distill_models::cpu::with_f32;
use distill_models::{generate, Completion, Llama, LoadedModel, SamplingParams, TextTokenizer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A sequence to score: the teacher's top-K is wanted for predicting tokens `from..`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRequest {
    pub token_ids: Vec<u32>,
    /// First token whose prediction is scored (≥ 1: token 0 has no context).
    pub from: usize,
}

pub trait Teacher {
    /// How the user named the teacher.
    fn id(&self) -> &str;
    fn tokenizer(&self) -> &TextTokenizer;
    /// Rows of the output layer.
    fn vocab_size(&self) -> usize;
    /// Ids that end a completion.
    fn stop_ids(&self) -> &[u32];
    /// One completion per prompt (token ids), sampled with `params`.
    fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Completion>>;
    /// Top-K log-probabilities at `temperature` for predicting each token `from..` of each request:
    /// one [`TopK`] with `token_ids.len() − from` rows per request.
    fn score(&self, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>>;
}

/// Positions projected onto the vocabulary at once while scoring: 64 × 49152 f32 = 12.6 MB.
const SCORE_CHUNK_ROWS: usize = 64;

pub struct LocalTeacher {
    pub model: LoadedModel,
}

impl LocalTeacher {
    /// A teacher only runs inference: unless the model's matmuls are packed already (bf16, say),
    /// its weights are packed for the f32 kernel where the CPU runs it (the plain path where not).
    /// Packing cannot fail on a loaded model's 2-d f32 weights; if it did, the plain path stays.
    pub fn new(mut model: LoadedModel) -> Self {
        if model.model.packed_matmuls().is_none() {
            let _ = model.model.use_packed_matmuls(distill_kernels::packed::Precision::F32);
        }
        Self { model }
    }
}

impl Teacher for LocalTeacher {
    fn id(&self) -> &str {
        &self.model.source
    }

    fn tokenizer(&self) -> &TextTokenizer {
        &self.model.tokenizer
    }

    fn vocab_size(&self) -> usize {
        self.model.model.config().vocab_size
    }

    fn stop_ids(&self) -> &[u32] {
        &self.model.stop_ids
    }

    fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Completion>> {
        Ok(generate(&self.model.model, &self.model.tokenizer, prompts, params, &self.model.stop_ids, |_, _| {})?)
    }

    fn score(&self, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
        score_with(&self.model.model, requests, k, temperature)
    }
}

/// [`Teacher::score`] for any loaded model: the server's `prompt_logprobs` use it too.
pub fn score_with(model: &Llama, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.config().vocab_size;
    if k == 0 || k > vocab {
        return Err(Error::Input(format!("k must be in 1..={vocab}, got {k}")));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Input(format!("temperature must be positive, got {temperature}")));
    }
    for (i, r) in requests.iter().enumerate() {
        if r.from == 0 || r.from > r.token_ids.len() {
            return Err(Error::Input(format!("request {i}: `from` {} must be in 1..={}", r.from, r.token_ids.len())));
        }
    }
    let device: &Device = model.device();
    let longest = requests.iter().map(|r| r.token_ids.len()).max().unwrap_or(0);
    // Right padding: causal attention keeps real positions from seeing it.
    let padded: Vec<u32> = requests
        .iter()
        .flat_map(|r| r.token_ids.iter().copied().chain(std::iter::repeat_n(0, longest - r.token_ids.len())))
        .collect();
    let ids = Tensor::from_vec(padded, (requests.len(), longest), device)?;
    let hidden = model.forward_hidden(&ids)?; // (B, T, C)
    let mut out = Vec::with_capacity(requests.len());
    for (row, r) in requests.iter().enumerate() {
        // Position p predicts token p + 1.
        let positions = r.from - 1..r.token_ids.len() - 1;
        let row_hidden = hidden.get(row)?; // (T, C)
        let mut merged = TopK {
            k,
            ids: Vec::with_capacity(positions.len() * k),
            logprobs: Vec::with_capacity(positions.len() * k),
            tail_logprob: Vec::with_capacity(positions.len()),
        };
        let mut start = positions.start;
        while start < positions.end {
            let len = SCORE_CHUNK_ROWS.min(positions.end - start);
            let logits = model.logits(&row_hidden.narrow(0, start, len)?)?; // (R, V)
            let top = with_f32(&logits, |flat| topk_logprobs(flat, vocab, k, temperature))?;
            merged.ids.extend(top.ids);
            merged.logprobs.extend(top.logprobs);
            merged.tail_logprob.extend(top.tail_logprob);
            start += len;
        }
        out.push(merged);
    }
    Ok(out)
}
