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
    /// quantised weights are dequantised first unless it is int8. Falls back to f32 where the CPU
    /// lacks the instructions. For inference only.
    pub fn use_matmuls(&mut self, requested: Option<distill_kernels::packed::Precision>) -> Result<Matmuls> {
        use distill_kernels::packed::Precision;
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

/// Resolves a `--model` argument: an existing `.gguf` file or directory, else a Hub id.
pub fn resolve(spec: &str) -> Result<ModelLocation> {
    // `~/…` as a shell would expand it (config files are not shell-expanded).
    let expanded = match (spec.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(spec),
    };
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
    /// against. Without the kernel's instructions (AVX-512 VNNI) or off the CPU, they are
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

/// Architectures whose GGUF conversion permutes q/k rows for llama.cpp's interleaved RoPE.
const PERMUTED_QK_ARCHS: [&str; 2] = ["llama", "mistral"];
const SUPPORTED_ARCHS: [&str; 3] = ["llama", "mistral", "qwen2"];

/// The HF config a GGUF file describes.
pub fn gguf_config(gguf: &GgufFile) -> Result<LlamaConfig> {
    let arch = gguf.str("general.architecture")?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(Error::Config(format!(
            "GGUF architecture `{arch}` is not supported yet (supported: {})",
            SUPPORTED_ARCHS.join(", ")
        )));
    }
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
            "linear" => Some(crate::llama::RopeScaling {
                rope_type: "linear".into(),
                factor: gguf.f64(&key("rope.scaling.factor"))?,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: None,
            }),
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
    let cfg = LlamaConfig {
        model_type: if arch == "qwen2" { "qwen2".into() } else { "llama".into() },
        vocab_size,
        hidden_size: hidden,
        intermediate_size: gguf.usize(&key("feed_forward_length"))?,
        num_hidden_layers: gguf.usize(&key("block_count"))?,
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
        hidden_act: "silu".into(),
        bos_token_id: optional_u32(gguf, "tokenizer.ggml.bos_token_id")?,
        eos_token_id: optional_u32(gguf, "tokenizer.ggml.eos_token_id")?.map(TokenIds::One),
    };
    cfg.validate()?;
    Ok(cfg)
}

fn optional_u32(gguf: &GgufFile, key: &str) -> Result<Option<u32>> {
    if gguf.has(key) {
        Ok(Some(gguf.u64(key)? as u32))
    } else {
        Ok(None)
    }
}

/// llama.cpp tensor names and their HF counterparts: whole names, then per-block suffixes.
const TOP_LEVEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const BLOCK_NAMES: [(&str, &str); 12] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// HF tensor name for a llama.cpp tensor name, if it is one the architecture uses.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    translate(gguf_name, "blk.", "model.layers.", |(g, h)| (g, h))
}

/// llama.cpp tensor name for an HF tensor name, if it is one the architecture uses.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    translate(hf_name, "model.layers.", "blk.", |(g, h)| (h, g))
}

fn translate(
    name: &str,
    from_prefix: &str,
    to_prefix: &str,
    orient: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some((_, to)) = TOP_LEVEL_NAMES.into_iter().map(&orient).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (layer, tail) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = BLOCK_NAMES.into_iter().map(&orient).find(|(from, _)| *from == tail)?;
    Some(format!("{to_prefix}{layer}.{to}"))
}

/// Undoes llama.cpp's q/k row permutation: within each head GGUF stores the rotated pairs
/// interleaved (x0, x_{D/2}, x1, …); HF keeps the two halves apart. Works on weights (rows, C)
/// and biases (rows).
pub fn unpermute_qk(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let half = rows / n_heads / 2;
    t.reshape((n_heads, half, 2, cols))?
        .transpose(1, 2)? // (H, 2, D/2, C)
        .contiguous()?
        .reshape(dims)
}

/// The inverse of [`unpermute_qk`], as llama.cpp's converter applies it (for GGUF export).
pub fn permute_qk(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let half = rows / n_heads / 2;
    t.reshape((n_heads, 2, half, cols))?
        .transpose(1, 2)? // (H, D/2, 2, C)
        .contiguous()?
        .reshape(dims)
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
    let permuted = PERMUTED_QK_ARCHS.contains(&arch.as_str());
    let names: Vec<String> = gguf.tensor_names().map(str::to_string).collect();
    let mut weights = HashMap::new();
    for name in names {
        let Some(hf) = hf_name(&name) else { continue };
        let heads = match hf {
            _ if !permuted => None,
            _ if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") => Some(cfg.num_attention_heads),
            _ if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") => Some(cfg.num_kv_heads()),
            _ => None,
        };
        let shape = gguf.tensor_shape(&name).unwrap_or_default().to_vec();
        let weight = match gguf.block_type(&name) {
            Some(ty) if keep_blocks && shape.len() == 2 => {
                let mut bytes = gguf.tensor_bytes(&name)?;
                if let Some(heads) = heads {
                    bytes = unpermute_rows(&bytes, shape[0], heads);
                }
                let matrix = QuantMatrix::from_blocks(ty, shape[0], shape[1], &bytes).map_err(|e| Error::BadGguf {
                    path: gguf.path().to_path_buf(),
                    reason: format!("tensor `{name}` ({}): {e}", ty.name()),
                })?;
                Weight::Quant(Arc::new(matrix))
            }
            _ => {
                let mut t = gguf.tensor_f32(&name, device)?;
                if let Some(heads) = heads {
                    t = unpermute_qk(&t, heads)?;
                }
                Weight::Plain(t)
            }
        };
        weights.insert(hf, weight);
    }
    Ok(weights)
}

/// [`unpermute_qk`] on the rows of a stored tensor (`rows` rows of whole blocks).
fn unpermute_rows(bytes: &[u8], rows: usize, n_heads: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows;
    let half = rows / n_heads / 2;
    let mut out = Vec::with_capacity(bytes.len());
    // Row (h, a, j) of the result is row (h, j, a) of the file: (H, D/2, 2) → (H, 2, D/2).
    for h in 0..n_heads {
        for a in 0..2 {
            for j in 0..half {
                let from = h * 2 * half + j * 2 + a;
                out.extend_from_slice(&bytes[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    out
}

fn load_gguf(path: &Path, device: &Device, source: &str, options: LoadOptions) -> Result<LoadedModel> {
    let mut gguf = GgufFile::open(path)?;
    let cfg = gguf_config(&gguf)?;
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
    let json = read_json(&path)?;
    let model_type = json.get("model_type").and_then(Json::as_str).unwrap_or("llama");
    if !matches!(model_type, "llama" | "mistral" | "qwen2") {
        return Err(Error::Config(format!(
            "{}: model_type `{model_type}` is not supported yet (llama, mistral, qwen2)",
            path.display()
        )));
    }
    let cfg: LlamaConfig =
        serde_json::from_value(json).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    cfg.validate()?;
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
    let weights = safetensors_weights(dir, device)?;
    let mut stop_ids = cfg.eos_token_ids();
    stop_ids.extend(eos_id);
    let model = Llama::from_weights(cfg, &weights)?;
    Ok(finish(model, tokenizer, chat_template, stop_ids, source))
}
