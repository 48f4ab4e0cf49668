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

/// The most bytes one activation of a scoring pass may take: glibc's malloc keeps blocks up to
/// 32 MiB in its heap when told to (the CLI does), and maps fresh zeroed pages for every larger
/// one. Scoring Qwen2.5-1.5B in passes of 3 × 256 positions instead of 8 × 256 took 4% less time
/// and 0.1 GB less memory, and wrote the same dataset, bit for bit.
const SCORE_ACTIVATION_BYTES: usize = 32 << 20;

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
    // Sequences in groups whose widest activation (the MLP's, f32) fits SCORE_ACTIVATION_BYTES.
    let cfg = model.config();
    let positions = SCORE_ACTIVATION_BYTES / (4 * cfg.intermediate_size.max(cfg.hidden_size).max(1));
    score_in_groups(model, requests, k, temperature, positions)
}

/// [`score_with`] in groups of consecutive requests of at most `positions` padded positions (one
/// whole request at least), each through the model on its own, in less memory than one batch:
/// the same values, bit for bit where the padding is the same (requests of one length).
fn score_in_groups(
    model: &Llama,
    requests: &[ScoreRequest],
    k: usize,
    temperature: f32,
    positions: usize,
) -> Result<Vec<TopK>> {
    let mut out = Vec::with_capacity(requests.len());
    let mut start = 0;
    while start < requests.len() {
        let (mut end, mut longest) = (start + 1, requests[start].token_ids.len());
        while end < requests.len() {
            let wider = longest.max(requests[end].token_ids.len());
            if (end + 1 - start) * wider > positions {
                break;
            }
            (end, longest) = (end + 1, wider);
        }
        out.extend(score_group(model, &requests[start..end], k, temperature)?);
        start = end;
    }
    Ok(out)
}

/// [`score_with`] of one group of requests, in one forward pass.
fn score_group(model: &Llama, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
    let vocab = model.config().vocab_size;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests scored in groups of any size, one at a time included, give the values of one
    /// batch: the same bits where the requests are as long as each other (the padding is the
    /// same), and the same to rounding where they are not (attention then sums over other
    /// numbers of padded keys, whose weights are zero).
    #[test]
    fn scoring_in_groups_gives_the_values_of_one_batch() {
        let cfg = distill_models::fixtures::tiny_config();
        let weights = distill_models::init::random_weights(&cfg, 3, &Device::Cpu).unwrap();
        let mut model = Llama::from_weights(cfg.clone(), &weights).unwrap();
        if Precision::F32.available() {
            model.use_packed_matmuls(Precision::F32).unwrap();
        }
        let vocab = cfg.vocab_size as u32;
        let requests = |lens: &[usize]| -> Vec<ScoreRequest> {
            let ids = |i: usize, len: usize| (0..len).map(|j| (i * 31 + j * 7) as u32 % vocab).collect();
            lens.iter().enumerate().map(|(i, &len)| ScoreRequest { token_ids: ids(i, len), from: 1 + i % 2 }).collect()
        };
        for (lens, exact) in [(vec![12usize; 5], true), (vec![7, 19, 3, 12, 12, 30], false)] {
            let requests = requests(&lens);
            let whole = score_in_groups(&model, &requests, 4, 1.0, usize::MAX).unwrap();
            for positions in [1, 24, 40] {
                let grouped = score_in_groups(&model, &requests, 4, 1.0, positions).unwrap();
                assert_eq!(grouped.len(), whole.len());
                for (i, (a, b)) in grouped.iter().zip(&whole).enumerate() {
                    let values = |t: &TopK| t.logprobs.iter().chain(&t.tail_logprob).copied().collect::<Vec<f32>>();
                    let (va, vb) = (values(a), values(b));
                    let same = match exact {
                        true => a.ids == b.ids && va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                        false => va.iter().zip(&vb).all(|(x, y)| (x - y).abs() < 1e-4),
                    };
                    assert!(same && va.len() == vb.len(), "lengths {lens:?}, groups of {positions}, request {i}");
                }
            }
        }
    }
}
