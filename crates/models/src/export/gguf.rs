//! Writing a model as GGUF for llama.cpp and other GGUF runtimes.
//!
//! The file is what llama.cpp's own converter writes for a Llama-family model: llama.cpp tensor
//! names, q/k rows permuted for its interleaved RoPE (llama/mistral), 1-D tensors (norms, biases)
//! in f32, matrices in the chosen type mixed as llama.cpp's quantiser mixes it ([`super::mix`]:
//! the head at 6 bits, k-quant `_M` mixes, types whose blocks fit the rows), the hyper-parameters,
//! the byte-level BPE tokenizer (`tokenizer.ggml.*`, with the `pre` name llama.cpp dispatches its
//! pre-tokenizer on) and the chat template. Blocks are quantised by candle's `QTensor`
//! (llama.cpp's block layouts); the container is GGUF version 3 (little-endian; version 3 differs
//! from 2 only in allowing big-endian files).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf_names::{self, gguf_name, permute_qk};
use crate::llama::LlamaConfig;
use crate::tokenizer::TextTokenizer;

/// Element type of the exported matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    /// llama.cpp's `Q4_K_M` mix: Q4_K, with Q6_K where it counts ([`super::mix`]).
    Q4KM,
    /// `Q5_K_M`: Q5_K, with Q6_K where it counts.
    Q5KM,
    Q6K,
}

impl GgufType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k_m" => Self::Q4KM,
            "q5_k_m" => Self::Q5KM,
            "q6_k" => Self::Q6K,
            _ => return None,
        })
    }

    /// The name [`Self::parse`] takes for this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4KM => "q4_k_m",
            Self::Q5KM => "q5_k_m",
            Self::Q6K => "q6_k",
        }
    }

    /// The names [`Self::parse`] takes.
    pub const NAMES: &'static str = "f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0";

    pub(super) fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4KM => GgmlDType::Q4K,
            Self::Q5KM => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Q5KM => 17,
            Self::Q6K => 18,
        }
    }
}

/// The tokenizer as GGUF metadata: a byte-level BPE (`gpt2`: tokens and merges) or a
/// SentencePiece vocabulary (`llama`: tokens and scores, as Llama 2 and Gemma ship).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    pub tokens: Vec<String>,
    /// Byte-level BPE only.
    pub merges: Vec<String>,
    /// SentencePiece only: llama.cpp joins the adjacent pair whose joined piece scores highest.
    pub scores: Option<Vec<f32>>,
    /// SentencePiece only: whether `▁` goes in front of the text.
    pub add_space_prefix: bool,
    /// llama.cpp token types: 1 normal, 3 control, 4 user-defined, 5 unused (padding), 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.pre`: which pre-tokenizer llama.cpp applies.
    pub pre: String,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
}

impl GgufTokenizer {
    /// From a byte-level BPE or SentencePiece-style tokenizer, padded with unused tokens to
    /// `vocab_size` entries.
    pub fn from_tokenizer(tok: &TextTokenizer, vocab_size: usize) -> Result<Self> {
        let pre = match tok.is_spm() {
            true => "default".to_string(),
            false => tok.gguf_pre().ok_or_else(|| {
                Error::Tokenizer(
                    "the tokenizer's pre-tokenizer is not one llama.cpp knows by name (smollm, gpt2, llama3, qwen2), so GGUF export cannot say which to use".into(),
                )
            })?,
        };
        let json: Json = serde_json::from_str(&tok.to_json()?).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let model = &json["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(Error::Tokenizer(format!(
                "GGUF export supports byte-level BPE tokenizers; this one is {}",
                model["type"]
            )));
        }
        let size = tok.vocab_size().max(vocab_size);
        let mut tokens: Vec<Option<String>> = vec![None; size];
        let mut types = vec![1i32; size];
        for (text, id) in model["vocab"].as_object().into_iter().flatten() {
            if let Some(slot) = id.as_u64().and_then(|id| tokens.get_mut(id as usize)) {
                *slot = Some(text.clone());
            }
        }
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = Some(text.to_string());
                types[id as usize] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
            }
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                t.unwrap_or_else(|| {
                    types[id] = 5;
                    format!("[PAD{id}]")
                })
            })
            .collect();
        let merges: Vec<String> = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => {
                    Ok(format!("{} {}", pair[0].as_str().unwrap_or_default(), pair[1].as_str().unwrap_or_default()))
                }
                other => Err(Error::Tokenizer(format!("unexpected BPE merge {other}"))),
            })
            .collect::<Result<_>>()?;
        let (merges, scores) = match tok.is_spm() {
            false => (merges, None),
            true => (Vec::new(), Some(spm_scores(&tokens, &merges, &mut types))),
        };
        Ok(Self {
            model: if tok.is_spm() { "llama" } else { "gpt2" }.into(),
            tokens,
            merges,
            scores,
            add_space_prefix: tok.adds_space_prefix(),
            token_types: types,
            pre,
            bos_id: tok.bos_id(),
            eos_id: tok.eos_id(),
            add_bos: tok.adds_bos(),
        })
    }
}

/// llama.cpp's Gemma 3 reads no layer pattern, local RoPE base or attention scale from the file:
/// it assumes every sixth layer global, base 10^4 and the head size (the hidden size per head
/// for the 62-layer 27B). A model that differs would run wrong there, so it is not written.
fn gemma3_fits_llama_cpp(cfg: &LlamaConfig) -> Result<()> {
    let n = cfg.num_hidden_layers;
    let assumed: Vec<bool> = (0..n).map(|i| (i + 1) % 6 != 0).collect();
    let kind = |s: bool| if s { 'S' } else { 'G' };
    if cfg.sliding_layers() != assumed {
        let ours: String = cfg.sliding_layers().into_iter().map(kind).collect();
        let theirs: String = assumed.into_iter().map(kind).collect();
        return Err(Error::Config(format!(
            "this Gemma 3 model's layers are {ours} (S sliding, G global) but llama.cpp assumes {theirs} (every sixth global), so its GGUF would run wrong there\nHINT: export safetensors (transformers reads the layer kinds), or prune with layers whose kinds follow the pattern (keep_every = 6, or keep_layers ending each group of five sliding layers with a global one)"
        )));
    }
    if cfg.rope_local_base_freq.is_some_and(|b| b != 10_000.0) {
        return Err(Error::Config(
            "llama.cpp assumes Gemma 3's local RoPE base is 10000; this model's differs\nHINT: export safetensors"
                .into(),
        ));
    }
    let assumed_scalar = if n == 62 { cfg.hidden_size / cfg.num_attention_heads } else { cfg.head_dim() };
    if cfg.query_pre_attn_scalar.is_some_and(|q| q != assumed_scalar) {
        return Err(Error::Config(format!(
            "llama.cpp scales this Gemma 3's attention by 1/√{assumed_scalar}, its query_pre_attn_scalar is {}\nHINT: export safetensors",
            cfg.query_pre_attn_scalar.unwrap_or_default()
        )));
    }
    Ok(())
}

/// SentencePiece scores that make llama.cpp join pieces in the BPE merges' order: a piece made
/// by the merge of rank r scores -r (the earliest merge that makes it); byte pieces score 0 and
/// are typed as bytes, control and user-defined ones -1000, as Gemma's files have them.
fn spm_scores(tokens: &[String], merges: &[String], types: &mut [i32]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut scores = vec![f32::NEG_INFINITY; tokens.len()];
    for (rank, merge) in merges.iter().enumerate() {
        let joined: String = merge.split(' ').collect();
        if let Some(&id) = ids.get(joined.as_str()) {
            scores[id] = scores[id].max(-(rank as f32));
        }
    }
    let lowest = -(merges.len() as f32);
    for (id, token) in tokens.iter().enumerate() {
        if crate::spm::byte_piece(token).is_some() {
            types[id] = 6;
            scores[id] = 0.0;
        } else if matches!(types[id], 3..=5) {
            scores[id] = -1000.0;
        } else if scores[id] == f32::NEG_INFINITY {
            scores[id] = lowest; // a single character: never the result of a join
        }
    }
    scores
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    pub bytes: u64,
    pub tensors: usize,
    /// Matrices written in another type (named) because their rows do not fill whole blocks of
    /// the file's type.
    pub fallbacks: Vec<String>,
}

/// Writes `weights` (HF names) of a model with config `cfg` as a GGUF file at `path` (atomically).
pub fn write_gguf(
    path: &Path,
    name: &str,
    cfg: &LlamaConfig,
    weights: &HashMap<String, Tensor>,
    tokenizer: &GgufTokenizer,
    chat_template: Option<&str>,
    ty: GgufType,
) -> Result<GgufSummary> {
    let arch = gguf_names::gguf_arch(&cfg.model_type);
    if !gguf_names::GGUF_ARCHS.contains(&arch) {
        return Err(Error::Config(format!(
            "a {} model cannot be exported to GGUF yet (its fused tensors are not written); export safetensors instead",
            cfg.model_type
        )));
    }
    if arch == "gemma3" {
        gemma3_fits_llama_cpp(cfg)?;
    }
    let family = cfg.family();
    let meta = metadata(arch, name, cfg, tokenizer, chat_template, ty)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut fallbacks = Vec::new();
    // Phi-3's GGUF keeps its projections fused, as its checkpoints do.
    let weights = crate::hf_config::fuse(cfg, weights.clone())?;
    let tied = !weights.contains_key("lm_head.weight");
    let mut sorted: Vec<(&String, &Tensor)> = weights.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (hf, t) in sorted {
        let gguf = gguf_name(hf, &family).ok_or_else(|| Error::tensor(hf.as_str(), "has no llama.cpp name"))?;
        let permuted = gguf_names::permutes_qk(arch);
        let t = if permuted && hf.contains("self_attn.q_proj") {
            permute_qk(t, cfg.num_attention_heads)?
        } else if permuted && hf.contains("self_attn.k_proj") {
            permute_qk(t, cfg.num_kv_heads())?
        } else if gguf_names::norm_plus_one(&family, hf) {
            (t + 1.0)? // llama.cpp reads Gemma's norms as `1 + w`
        } else {
            t.clone()
        };
        let dtype = if t.rank() < 2 {
            GgmlDType::F32
        } else {
            let choice = super::mix::matrix_type(ty, &gguf, t.dim(1)?, cfg.num_hidden_layers, tied);
            if choice.fallback {
                fallbacks.push(format!("{gguf} ({:?})", choice.dtype));
            }
            choice.dtype
        };
        tensors.push((gguf, QTensor::quantize(&t.contiguous()?, dtype)?));
    }
    if let Some(scaling) = cfg.rope_scaling.as_ref().filter(|s| matches!(s.rope_type.as_str(), "longrope" | "su")) {
        for (name, factors) in
            [("rope_factors_long.weight", &scaling.long_factor), ("rope_factors_short.weight", &scaling.short_factor)]
        {
            let values: Vec<f32> = factors.iter().flatten().map(|&f| f as f32).collect();
            let t = Tensor::from_vec(values.clone(), values.len(), &candle_core::Device::Cpu)?;
            tensors.push((name.to_string(), QTensor::quantize(&t, GgmlDType::F32)?));
        }
    }
    let mut buffer = std::io::Cursor::new(Vec::new());
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut buffer, &meta_refs, &tensor_refs)?;
    let mut bytes = buffer.into_inner();
    // candle writes the version-2 layout, which is version 3's for little-endian files.
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    crate::checkpoint::write_bytes_atomic(path, &bytes)?;
    Ok(GgufSummary { bytes: bytes.len() as u64, tensors: tensors.len(), fallbacks })
}

/// A parameter count as llama.cpp's converter labels it: K, M, B or T with at least two
/// significant digits (`135M`, `48M`, `1.5B`).
pub(crate) fn size_label(parameters: usize) -> String {
    let n = parameters as f64;
    let (scaled, suffix) = match n {
        n if n > 1e12 => (n / 1e12, "T"),
        n if n > 1e9 => (n / 1e9, "B"),
        n if n > 1e6 => (n / 1e6, "M"),
        n => (n / 1e3, "K"),
    };
    let digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let decimals = 2usize.saturating_sub(digits);
    format!("{scaled:.decimals$}{suffix}")
}

fn metadata(
    arch: &str,
    name: &str,
    cfg: &LlamaConfig,
    tok: &GgufTokenizer,
    chat_template: Option<&str>,
    ty: GgufType,
) -> Result<Vec<(String, Value)>> {
    let k = |s: &str| format!("{arch}.{s}");
    let u32v = |x: usize| Value::U32(x as u32);
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    meta.insert("general.architecture".into(), Value::String(arch.into()));
    meta.insert("general.name".into(), Value::String(name.into()));
    // As llama.cpp's converter writes them: what the file is and its size class.
    meta.insert("general.type".into(), Value::String("model".into()));
    meta.insert("general.size_label".into(), Value::String(size_label(cfg.num_parameters())));
    meta.insert("general.file_type".into(), Value::U32(ty.file_type()));
    if !matches!(ty, GgufType::F32 | GgufType::F16) {
        meta.insert("general.quantization_version".into(), Value::U32(2));
    }
    meta.insert(k("block_count"), u32v(cfg.num_hidden_layers));
    meta.insert(k("context_length"), u32v(cfg.max_position_embeddings));
    meta.insert(k("embedding_length"), u32v(cfg.hidden_size));
    meta.insert(k("feed_forward_length"), u32v(cfg.intermediate_size));
    meta.insert(k("attention.head_count"), u32v(cfg.num_attention_heads));
    meta.insert(k("attention.head_count_kv"), u32v(cfg.num_kv_heads()));
    meta.insert(k("attention.key_length"), u32v(cfg.head_dim()));
    meta.insert(k("attention.value_length"), u32v(cfg.head_dim()));
    meta.insert(k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32));
    meta.insert(k("rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    meta.insert(k("rope.dimension_count"), u32v(cfg.head_dim()));
    meta.insert(k("vocab_size"), u32v(cfg.vocab_size));
    if let Some(window) = cfg.sliding_window.filter(|_| cfg.sliding_layers().contains(&true)) {
        meta.insert(k("attention.sliding_window"), u32v(window));
    }
    let longrope = |s: &crate::llama::RopeScaling| matches!(s.rope_type.as_str(), "longrope" | "su");
    if let Some(scaling) = cfg.rope_scaling.as_ref().filter(|s| arch == "phi3" && longrope(s)) {
        // The factors go in as tensors (rope_factors_long/short), as llama.cpp's converter writes them.
        let original = scaling.original_max_position_embeddings.or(cfg.original_max_position_embeddings);
        meta.insert(k("rope.scaling.original_context_length"), u32v(original.unwrap_or(cfg.max_position_embeddings)));
        meta.insert(k("rope.scaling.attn_factor"), Value::F32(cfg.rope_attention_factor() as f32));
    } else if let Some(scaling) = &cfg.rope_scaling {
        if scaling.rope_type != "linear" {
            return Err(Error::Config(format!(
                "RoPE scaling `{}` cannot be exported to GGUF yet (only linear)",
                scaling.rope_type
            )));
        }
        meta.insert(k("rope.scaling.type"), Value::String("linear".into()));
        meta.insert(k("rope.scaling.factor"), Value::F32(scaling.factor as f32));
    }
    meta.insert("tokenizer.ggml.model".into(), Value::String(tok.model.clone()));
    meta.insert("tokenizer.ggml.pre".into(), Value::String(tok.pre.clone()));
    meta.insert("tokenizer.ggml.tokens".into(), strings(&tok.tokens));
    match &tok.scores {
        Some(scores) => {
            meta.insert("tokenizer.ggml.scores".into(), Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()));
            meta.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(tok.add_space_prefix));
        }
        None => {
            meta.insert("tokenizer.ggml.merges".into(), strings(&tok.merges));
        }
    }
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(tok.token_types.iter().map(|&t| Value::I32(t)).collect()),
    );
    if let Some(id) = tok.bos_id {
        meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(id));
    }
    if let Some(id) = tok.eos_id {
        meta.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(id));
    }
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok.add_bos));
    if let Some(template) = chat_template {
        meta.insert("tokenizer.chat_template".into(), Value::String(template.into()));
    }
    Ok(meta.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_labels_keep_two_significant_digits() {
        assert_eq!(super::size_label(134_515_008), "135M");
        assert_eq!(super::size_label(47_500_000), "48M");
        assert_eq!(super::size_label(1_543_714_304), "1.5B");
        assert_eq!(super::size_label(7_615_616_512), "7.6B");
        assert_eq!(super::size_label(494_032_768), "494M");
    }
}
