//! Loading a model with its tokenizer and chat template from a GGUF file, a Hugging Face
//! directory, or a Hub id (`org/name`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gguf_names;
use crate::llama::{Llama, LlamaConfig, TokenIds};
use crate::proj::Weight;
use crate::tokenizer::TextTokenizer;
use distill_kernels::quant::QuantMatrix;

/// A model ready to run: weights, tokenizer, chat template and stop tokens.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Ids that end a generation (EOS and the chat template's end-of-turn).
    pub stop_ids: Vec<u32>,
    /// Where the model came from, as the user named it.
    pub source: String,
}

/// What a model brings besides its weights. Code that needs only this once the weights were
/// copied (a student built from a teacher) keeps it instead of the [`LoadedModel`], so the
/// weights are freed.
#[derive(Clone)]
pub struct ModelText {
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub stop_ids: Vec<u32>,
    pub source: String,
}

impl LoadedModel {
    /// Drops the weights, keeping the tokenizer, chat template and stop ids.
    pub fn into_text(self) -> ModelText {
        ModelText {
            tokenizer: self.tokenizer,
            chat_template: self.chat_template,
            stop_ids: self.stop_ids,
            source: self.source,
        }
    }

    /// Runs the matmuls in `precision` where this CPU has the kernel's instructions, else in f32
    /// (packed where the CPU runs the f32 kernel, plain otherwise: the same arithmetic). Returns
    /// the precision it runs; for inference only (see [`Llama::use_packed_matmuls`]).
    pub fn pack_matmuls(
        &mut self,
        precision: distill_kernels::packed::Precision,
    ) -> Result<distill_kernels::packed::Precision> {
        use distill_kernels::packed::Precision;
        if precision == Precision::F32 || !self.model.use_packed_matmuls(precision)? {
            self.model.use_packed_matmuls(Precision::F32)?;
        }
        Ok(self.model.packed_matmuls().unwrap_or(Precision::F32))
    }

    /// Runs the matmuls as asked: None keeps a GGUF file's quantised weights as they are (the
    /// int8 kernel) and runs the others in f32; a named precision applies to every matmul, so
    /// quantised weights are dequantised first unless it is int8. A precision the CPU lacks the
    /// instructions for falls back to the file's own arithmetic, as if none was named. For
    /// inference only.
    pub fn use_matmuls(&mut self, requested: Option<distill_kernels::packed::Precision>) -> Result<Matmuls> {
        use distill_kernels::packed::Precision;
        let requested = requested.filter(|p| *p == Precision::F32 || p.available());
        let dequantized = requested.is_some_and(|p| p != Precision::Int8) && self.model.dequantize();
        let running = self.pack_matmuls(requested.unwrap_or_default())?;
        Ok(Matmuls { running, dequantized })
    }
}

/// What [`LoadedModel::use_matmuls`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matmuls {
    /// The precision the matmuls run in.
    pub running: distill_kernels::packed::Precision,
    /// Whether a GGUF file's quantised weights were dequantised to f32 for it.
    pub dequantized: bool,
}

/// What a model argument refers to once resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

/// `path` with a leading `~/` replaced by the home directory, as a shell would expand it (config
/// files are not shell-expanded); any other path as it is.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.to_str().and_then(|s| s.strip_prefix("~/")), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// Resolves a `--model` argument: an existing `.gguf` file or directory, else a Hub id.
pub fn resolve(spec: &str) -> Result<ModelLocation> {
    let expanded = expand_home(Path::new(spec));
    let path = expanded.as_path();
    if path.is_file() {
        return Ok(ModelLocation::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(Error::Input(not_a_model_dir(path)));
        }
        return Ok(ModelLocation::HfDir(path.to_path_buf()));
    }
    let looks_like_id = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.ends_with(".gguf");
    if !looks_like_id {
        return Err(Error::Input(format!(
            "model `{spec}` is neither a file, a directory nor a Hub id like `HuggingFaceTB/SmolLM2-135M-Instruct`"
        )));
    }
    crate::hub::download(spec).map(ModelLocation::HfDir)
}

/// Why a directory is not a model, and where the model may be: a training run keeps its student
/// in `final/`, a pipeline in `train/final/`.
fn not_a_model_dir(dir: &Path) -> String {
    let hint = ["final", "train/final"]
        .iter()
        .map(|sub| dir.join(sub))
        .find(|d| d.join("config.json").is_file())
        .map(|d| format!("HINT: it looks like a training run; its student is {}", d.display()))
        .unwrap_or_else(|| {
            "HINT: a model directory holds config.json, *.safetensors and tokenizer.json; or give a .gguf file".into()
        });
    format!("{} is a directory without config.json, so not a model\n{hint}", dir.display())
}

/// How [`load_with`] reads a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Dequantise a GGUF file's quantised weights to f32 instead of keeping their blocks for the
    /// quantised kernel: what training from them needs, and the reference the kernel is measured
    /// against. Without the kernels' instructions (AVX-512 VNNI, or AVX2 with FMA and F16C) or off the CPU, they are
    /// dequantised anyway.
    pub dequantize: bool,
}

/// Loads any model `distill` understands on `device`: f32 weights, except that a GGUF file's
/// quantised weights keep their blocks where the CPU runs the quantised kernel (inference only;
/// [`load_with`] to dequantise them).
pub fn load(spec: &str, device: &Device) -> Result<LoadedModel> {
    load_with(spec, device, LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(spec: &str, device: &Device, options: LoadOptions) -> Result<LoadedModel> {
    match resolve(spec)? {
        ModelLocation::Gguf(path) => load_gguf(&path, device, spec, options),
        ModelLocation::HfDir(dir) => load_hf_dir(&dir, device, spec),
    }
}

/// The HF config a GGUF file describes.
pub fn gguf_config(gguf: &mut GgufFile) -> Result<LlamaConfig> {
    let arch = gguf.str("general.architecture")?.to_string();
    let arch = arch.as_str();
    let model_type = match gguf_names::model_type(arch) {
        Some(t) => t,
        None => {
            return Err(Error::Config(format!(
                "GGUF architecture `{arch}` is not supported yet (supported: {})",
                gguf_names::GGUF_ARCHS.join(", ")
            )));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let embed_shape = gguf
        .tensor_shape("token_embd.weight")
        .ok_or_else(|| Error::tensor("token_embd.weight", "is missing from the GGUF file"))?;
    let vocab_size = if gguf.has(&key("vocab_size")) { gguf.usize(&key("vocab_size"))? } else { embed_shape[0] };
    let heads = gguf.usize(&key("attention.head_count"))?;
    let hidden = gguf.usize(&key("embedding_length"))?;
    let head_dim = if gguf.has(&key("attention.key_length")) {
        Some(gguf.usize(&key("attention.key_length"))?).filter(|&d| d * heads != hidden)
    } else {
        None
    };
    let rope_scaling = if gguf.has(&key("rope.scaling.type")) {
        let kind = gguf.str(&key("rope.scaling.type"))?;
        match kind {
            "none" => None,
            "linear" => Some(crate::llama::RopeScaling::linear(gguf.f64(&key("rope.scaling.factor"))?)),
            other => return Err(Error::Config(format!("GGUF rope scaling `{other}` is not supported yet"))),
        }
    } else {
        None
    };
    if gguf.has_tensor("rope_freqs.weight") {
        return Err(Error::Config(
            "this GGUF carries per-frequency RoPE factors (rope_freqs, Llama 3.1 style), not supported yet\nHINT: load the model from its Hugging Face directory".into(),
        ));
    }
    let rope_scaling = match (rope_scaling, model_type) {
        (None, "phi3") if gguf.has_tensor("rope_factors_long.weight") => Some(phi3_longrope(gguf)?),
        (scaling, _) => scaling,
    };
    let layers = gguf.usize(&key("block_count"))?;
    let gemma = model_type == "gemma3";
    let key_length = head_dim.unwrap_or(hidden / heads.max(1));
    let cfg = LlamaConfig {
        model_type: model_type.into(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: gguf.usize(&key("feed_forward_length"))?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: if gguf.has(&key("attention.head_count_kv")) {
            Some(gguf.usize(&key("attention.head_count_kv"))?)
        } else {
            None
        },
        head_dim,
        rms_norm_eps: gguf.f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: if gguf.has(&key("rope.freq_base")) { gguf.f64(&key("rope.freq_base"))? } else { 10_000.0 },
        rope_scaling,
        max_position_embeddings: gguf.usize(&key("context_length"))?,
        tie_word_embeddings: !gguf.has_tensor("output.weight"),
        attention_bias: Some(gguf.has_tensor("blk.0.attn_q.bias")),
        hidden_act: if gemma { "gelu_pytorch_tanh".into() } else { "silu".into() },
        bos_token_id: optional_u32(gguf, "tokenizer.ggml.bos_token_id")?,
        eos_token_id: optional_u32(gguf, "tokenizer.ggml.eos_token_id")?.map(TokenIds::One),
        sliding_window: if gguf.has(&key("attention.sliding_window")) {
            Some(gguf.usize(&key("attention.sliding_window"))?)
        } else {
            None
        },
        // What llama.cpp assumes for Gemma 3, whose GGUF files do not say: local RoPE base 10^4,
        // every sixth layer global, scores scaled by the head size (the hidden size per head
        // for the 27B model, the one with 62 layers).
        rope_local_base_freq: gemma.then_some(10_000.0),
        query_pre_attn_scalar: gemma.then_some(if layers == 62 { hidden / heads } else { key_length }),
        ..LlamaConfig::plain(model_type)
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Phi-3's longrope from GGUF: the factor tensors and the original context (llama.cpp's
/// converter writes them so).
fn phi3_longrope(gguf: &mut GgufFile) -> Result<crate::llama::RopeScaling> {
    let mut factors = |name: &str| -> Result<Vec<f64>> {
        let t = gguf.tensor_f32(name, &Device::Cpu)?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    };
    let (short, long) = (factors("rope_factors_short.weight")?, factors("rope_factors_long.weight")?);
    let original = "phi3.rope.scaling.original_context_length";
    let attn = "phi3.rope.scaling.attn_factor";
    Ok(crate::llama::RopeScaling {
        rope_type: "longrope".into(),
        original_max_position_embeddings: if gguf.has(original) { Some(gguf.usize(original)?) } else { None },
        short_factor: Some(short),
        long_factor: Some(long),
        attention_factor: if gguf.has(attn) { Some(gguf.f64(attn)?) } else { None },
        ..crate::llama::RopeScaling::linear(1.0)
    })
}

fn optional_u32(gguf: &GgufFile, key: &str) -> Result<Option<u32>> {
    if gguf.has(key) {
        Ok(Some(gguf.u64(key)? as u32))
    } else {
        Ok(None)
    }
}

/// Reads every tensor of a GGUF model, dequantised to f32 and renamed to HF names.
pub fn gguf_weights(gguf: &mut GgufFile, cfg: &LlamaConfig, device: &Device) -> Result<HashMap<String, Tensor>> {
    let weights = gguf_parts(gguf, cfg, device, false)?;
    weights.into_iter().map(|(name, w)| Ok((name, w.tensor(device)?))).collect()
}

/// Reads every tensor of a GGUF model renamed to HF names: quantised ones as their blocks when
/// `keep_blocks`, the rest (all, otherwise) dequantised to f32.
fn gguf_parts(
    gguf: &mut GgufFile,
    cfg: &LlamaConfig,
    device: &Device,
    keep_blocks: bool,
) -> Result<HashMap<String, Weight>> {
    let arch = gguf.str("general.architecture")?.to_string();
    let permuted = gguf_names::permutes_qk(&arch);
    let family = cfg.family();
    let names: Vec<String> = gguf.tensor_names().map(str::to_string).collect();
    let mut weights = HashMap::new();
    for name in names {
        let Some(hf) = gguf_names::hf_name(&name, &family) else { continue };
        let heads = match hf {
            _ if !permuted => None,
            _ if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") => Some(cfg.num_attention_heads),
            _ if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") => Some(cfg.num_kv_heads()),
            _ => None,
        };
        let shape = gguf.tensor_shape(&name).unwrap_or_default().to_vec();
        // A fused tensor (Phi-3's qkv, gate/up) is its parts' rows one after another.
        // GGUF tensors have at least one dimension; a crafted file without one is refused later
        // by the shape check, not here by a panic.
        let rows = shape.first().copied().unwrap_or(1);
        let parts = crate::hf_config::fused_rows(cfg, &hf).unwrap_or_else(|| vec![(hf.clone(), rows)]);
        if parts.iter().map(|(_, rows)| rows).sum::<usize>() != rows {
            return Err(Error::tensor(name, format!("has {rows} rows, the config implies other projections")));
        }
        match gguf.block_type(&name) {
            Some(ty) if keep_blocks && shape.len() == 2 => {
                let mut bytes = gguf.tensor_bytes(&name)?;
                if let Some(heads) = heads {
                    bytes = gguf_names::unpermute_rows(&bytes, shape[0], heads);
                }
                let row_bytes = bytes.len() / rows.max(1);
                let mut start = 0;
                for (part, rows) in parts {
                    let range = &bytes[start * row_bytes..(start + rows) * row_bytes];
                    let matrix = QuantMatrix::from_blocks(ty, rows, shape[1], range).map_err(|e| Error::BadGguf {
                        path: gguf.path().to_path_buf(),
                        reason: format!("tensor `{name}` ({}): {e}", ty.name()),
                    })?;
                    weights.insert(part, Weight::Quant(Arc::new(matrix)));
                    start += rows;
                }
            }
            _ => {
                let mut t = gguf.tensor_f32(&name, device)?;
                if let Some(heads) = heads {
                    t = gguf_names::unpermute_qk(&t, heads)?;
                }
                if gguf_names::norm_plus_one(&family, &hf) {
                    t = (t - 1.0)?; // GGUF holds Gemma's `1 + w`
                }
                let mut start = 0;
                for (part, rows) in parts {
                    weights.insert(part, Weight::Plain(t.narrow(0, start, rows)?));
                    start += rows;
                }
            }
        }
    }
    Ok(weights)
}

fn load_gguf(path: &Path, device: &Device, source: &str, options: LoadOptions) -> Result<LoadedModel> {
    let mut gguf = GgufFile::open(path)?;
    let cfg = gguf_config(&mut gguf)?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    check_vocab(&cfg, &tokenizer)?;
    let keep_blocks = !options.dequantize && device.is_cpu() && distill_kernels::quant::available();
    let weights = gguf_parts(&mut gguf, &cfg, device, keep_blocks)?;
    let model = Llama::from_parts(cfg, &weights)?;
    let chat_template = if gguf.has("tokenizer.chat_template") {
        let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).unwrap_or_default();
        Some(ChatTemplate::new(
            gguf.str("tokenizer.chat_template")?,
            &token(tokenizer.bos_id()),
            &token(tokenizer.eos_id()),
        )?)
    } else {
        None
    };
    let mut stop_ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    if gguf.has("tokenizer.ggml.eot_token_id") {
        stop_ids.push(gguf.u64("tokenizer.ggml.eot_token_id")? as u32);
    }
    Ok(finish(model, tokenizer, chat_template, stop_ids, source))
}

fn finish(
    model: Llama,
    tokenizer: TextTokenizer,
    chat_template: Option<ChatTemplate>,
    mut stop_ids: Vec<u32>,
    source: &str,
) -> LoadedModel {
    // The chat template's end-of-turn marker also ends a reply.
    for marker in ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_to_id(marker) {
            stop_ids.push(id);
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    LoadedModel { model, tokenizer, chat_template, stop_ids, source: source.to_string() }
}

fn check_vocab(cfg: &LlamaConfig, tokenizer: &TextTokenizer) -> Result<()> {
    // Padded embedding tables (Qwen2: 151936 rows for 151665 tokens) are fine; the reverse is not.
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(Error::Tokenizer(format!(
            "tokenizer has {} tokens but the model's vocabulary is {}\nHINT: the tokenizer belongs to another model",
            tokenizer.vocab_size(),
            cfg.vocab_size
        )));
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))
}

/// Loads the config of an HF directory.
pub fn hf_config(dir: &Path) -> Result<LlamaConfig> {
    config_file(&dir.join("config.json"))
}

/// Reads and validates an HF `config.json` (any file name).
pub fn config_file(path: &Path) -> Result<LlamaConfig> {
    let path = path.to_path_buf();
    let json = crate::hf_config::normalize(read_json(&path)?);
    let model_type = json.get("model_type").and_then(Json::as_str).unwrap_or("llama");
    if !crate::family::MODEL_TYPES.contains(&model_type) {
        return Err(Error::Config(format!(
            "{}: model_type `{model_type}` is not supported yet ({})",
            path.display(),
            crate::family::MODEL_TYPES.join(", ")
        )));
    }
    let cfg: LlamaConfig =
        serde_json::from_value(json).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    cfg.validate().map_err(|e| match e {
        Error::Config(problem) => Error::Config(format!("{}: {problem}", path.display())),
        other => other,
    })?;
    Ok(cfg)
}

/// Reads all `*.safetensors` of an HF directory as f32.
pub fn safetensors_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Input(format!("{} holds no *.safetensors weights", dir.display())));
    }
    let mut weights = HashMap::new();
    for file in files {
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| Error::BadSafetensors { path: file.clone(), reason: e.to_string() })?;
        for (name, t) in tensors {
            weights.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(weights)
}

fn load_hf_dir(dir: &Path, device: &Device, source: &str) -> Result<LoadedModel> {
    let cfg = hf_config(dir)?;
    let tok_cfg = match dir.join("tokenizer_config.json") {
        p if p.is_file() => Some(read_json(&p)?),
        _ => None,
    };
    let token_str = |field: &str| -> Option<String> {
        let v = tok_cfg.as_ref()?.get(field)?;
        v.as_str().map(str::to_string).or_else(|| v.get("content").and_then(Json::as_str).map(str::to_string))
    };
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let bos_id = token_str("bos_token").and_then(|t| tokenizer.token_to_id(&t)).or(cfg.bos_token_id);
    let eos_id =
        token_str("eos_token").and_then(|t| tokenizer.token_to_id(&t)).or_else(|| cfg.eos_token_ids().first().copied());
    let add_bos = tok_cfg.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Json::as_bool).unwrap_or(false);
    let tokenizer = tokenizer.with_special_ids(bos_id, eos_id, add_bos);
    check_vocab(&cfg, &tokenizer)?;
    let template_src = match dir.join("chat_template.jinja") {
        p if p.is_file() => Some(std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?),
        _ => tok_cfg.as_ref().and_then(|c| match c.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }),
    };
    let chat_template = template_src
        .map(|src| {
            ChatTemplate::new(
                &src,
                &token_str("bos_token").unwrap_or_default(),
                &token_str("eos_token").unwrap_or_default(),
            )
        })
        .transpose()?;
    let weights = crate::hf_config::unfuse(&cfg, safetensors_weights(dir, device)?)?;
    let mut stop_ids = cfg.eos_token_ids();
    stop_ids.extend(eos_id);
    let model = Llama::from_weights(cfg, &weights)?;
    Ok(finish(model, tokenizer, chat_template, stop_ids, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(expand_home(Path::new("~/x/y.gz")), Path::new(&home).join("x/y.gz"));
        }
        assert_eq!(expand_home(Path::new("rel/y.gz")), Path::new("rel/y.gz"));
    }
}
