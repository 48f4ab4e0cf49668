//! A teacher running in this process on a loaded model (GGUF or HF weights).
//!
//! Scoring never materialises (B, T, V): hidden states are projected onto the vocabulary a chunk of
//! positions at a time, and each chunk is reduced to top-K plus log-sum-exp before the next is
//! computed.

use candle_core::{Device, Tensor};
use distill_kernels::packed::Precision;
use distill_kernels::{topk_logprobs, TopK};
use distill_models::cpu::with_f32;
use distill_models::{generate, ChatTemplate, Completion, Llama, LoadedModel, SamplingParams, TextTokenizer};

use crate::{Error, Result, ScoreRequest, ScoredCompletion, Teacher, TeacherIdentity, TeacherPrompt};

pub struct LocalTeacher {
    pub model: LoadedModel,
}

impl LocalTeacher {
    /// A teacher only runs inference: unless the model's matmuls are packed already (bf16, say),
    /// its weights are packed for the f32 kernel where the CPU runs it (the plain path where not).
    /// Packing cannot fail on a loaded model's 2-d f32 weights; if it did, the plain path stays.
    pub fn new(mut model: LoadedModel) -> Self {
        if model.model.packed_matmuls().is_none() {
            let _ = model.model.use_packed_matmuls(Precision::F32);
        }
        Self { model }
    }

    /// A teacher whose matmuls run in `precision` where the CPU has the instructions, f32
    /// otherwise: [`Self::matmuls`] says which it got.
    pub fn with_matmuls(mut model: LoadedModel, precision: Precision) -> Result<Self> {
        model.pack_matmuls(precision)?;
        Ok(Self::new(model))
    }

    /// The arithmetic its matmuls run in.
    pub fn matmuls(&self) -> Precision {
        self.model.model.packed_matmuls().unwrap_or(Precision::F32)
    }
}

impl Teacher for LocalTeacher {
    fn id(&self) -> &str {
        &self.model.source
    }

    fn tokenizer(&self) -> &TextTokenizer {
        &self.model.tokenizer
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.model.chat_template.as_ref()
    }

    fn vocab_size(&self) -> usize {
        self.model.model.config().vocab_size
    }

    fn stop_ids(&self) -> &[u32] {
        &self.model.stop_ids
    }

    fn identity(&self) -> Result<TeacherIdentity> {
        Ok(TeacherIdentity {
            name: self.model.source.clone(),
            hash: crate::weights_hash(&self.model.source)?,
            matmuls: self.matmuls(),
        })
    }

    fn check_signal(&self, k: usize, temperature: f32) -> Result<()> {
        check_k_and_temperature(k, self.vocab_size(), temperature)
    }

    fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
        let m = &self.model;
        let completions = generate(&m.model, &m.tokenizer, prompts, params, &m.stop_ids, |_, _| {})?;
        Ok(completions.into_iter().map(Completion::ids_with_stop).collect())
    }

    /// Decodes the prompts as one batch, then scores the non-empty completions as one batch.
    fn generate_scored(
        &self,
        prompts: &[TeacherPrompt],
        params: &SamplingParams,
        k: usize,
        temperature: f32,
    ) -> Result<Vec<ScoredCompletion>> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.token_ids.clone()).collect();
        let completions = self.generate(&ids, params)?;
        let requests: Vec<ScoreRequest> = ids
            .iter()
            .zip(&completions)
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| ScoreRequest { token_ids: p.iter().chain(c).copied().collect(), from: p.len() })
            .collect();
        let mut scored = self.score(&requests, k, temperature)?.into_iter();
        let empty = || TopK { k, ids: Vec::new(), logprobs: Vec::new(), tail_logprob: Vec::new() };
        completions
            .into_iter()
            .map(|token_ids| {
                let top = if token_ids.is_empty() {
                    empty()
                } else {
                    // One score per non-empty completion, in order (filtered the same way above).
                    scored.next().ok_or_else(|| Error::Input("a completion got no score".into()))?
                };
                Ok(ScoredCompletion { token_ids, top })
            })
            .collect()
    }

    fn score(&self, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
        score_with(&self.model.model, requests, k, temperature)
    }
}

fn check_k_and_temperature(k: usize, vocab: usize, temperature: f32) -> Result<()> {
    if k == 0 || k > vocab {
        return Err(Error::Input(format!("k must be in 1..={vocab}, got {k}")));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Input(format!("temperature must be positive, got {temperature}")));
    }
    Ok(())
}

/// Positions projected onto the vocabulary at once while scoring: two whole blocks of the quantised
/// kernel's 48 rows (64 made a block of 48 and a slower one of 16); 96 × 151,936 f32 = 58 MB for
/// Qwen2.5's vocabulary.
const SCORE_CHUNK_ROWS: usize = 96;

/// [`Teacher::score`] for any loaded model: the server's `prompt_logprobs` use it too.
pub fn score_with(model: &Llama, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.config().vocab_size;
    check_k_and_temperature(k, vocab, temperature)?;
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

/// SHA-256 of a model's weights: the GGUF file, or the hashes of an HF directory's safetensors
/// files in name order.
pub fn weights_hash(source: &str) -> Result<String> {
    use distill_models::loader::{resolve, ModelLocation};
    Ok(match resolve(source)? {
        ModelLocation::Gguf(path) => distill_store::sha256_file(&path)?,
        ModelLocation::HfDir(dir) => {
            let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
            let mut files: Vec<std::path::PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            let hashes = files.iter().map(|f| distill_store::sha256_file(f)).collect::<Result<Vec<_>, _>>()?;
            distill_store::sha256_hex(hashes.join("\n").as_bytes())
        }
    })
}
