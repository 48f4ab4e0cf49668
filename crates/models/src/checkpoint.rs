//! Writing a model as a Hugging Face directory: `config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
//! `generation_config.json`. `loader::load` reads it back.

use std::path::Path;

use candle_core::DType;
use serde_json::json;

use crate::error::{Error, Result};
use crate::llama::Llama;
use crate::tokenizer::TextTokenizer;

/// Writes `model` and its tokenizer to `dir` (created if missing). Files are written under a
/// temporary name and renamed, so a reader never sees half a file.
pub fn save_hf_dir(dir: &Path, model: &Llama, tokenizer: &TextTokenizer, chat_template: Option<&str>) -> Result<()> {
    save_hf_dir_as(dir, model, tokenizer, chat_template, DType::F32)
}

/// [`save_hf_dir`] with the weights stored as `dtype` (f32, f16 or bf16; `torch_dtype` in
/// config.json says which), as Hugging Face checkpoints are usually shipped in bf16.
pub fn save_hf_dir_as(
    dir: &Path,
    model: &Llama,
    tokenizer: &TextTokenizer,
    chat_template: Option<&str>,
    dtype: DType,
) -> Result<()> {
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        other => {
            return Err(Error::Input(format!("safetensors weights are written as f32, f16 or bf16, not {other:?}")))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = model.config();
    let mut config = serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?;
    config["architectures"] = json!([crate::hf_config::architecture(&cfg.model_type)]);
    if cfg.model_type == "gemma3" {
        config["model_type"] = json!("gemma3_text"); // transformers' `gemma3` is the multimodal one
        if let Some(act) = config.as_object_mut().and_then(|c| c.remove("hidden_act")) {
            config["hidden_activation"] = act;
        }
    }
    config["torch_dtype"] = json!(torch_dtype);
    config["attention_bias"] = json!(cfg.qkv_bias());
    write_atomic(&dir.join("config.json"), &pretty(&config)?)?;

    let mut tensors = crate::hf_config::fuse(cfg, model.named_parameters().into_iter().collect())?;
    if dtype != DType::F32 {
        for t in tensors.values_mut() {
            *t = t.to_dtype(dtype)?;
        }
    }
    save_safetensors(&tensors, &dir.join("model.safetensors"))?;

    write_atomic(&dir.join("tokenizer.json"), &tokenizer.to_json()?)?;
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
    let mut tok_cfg = json!({
        "add_bos_token": tokenizer.adds_bos(),
        "add_eos_token": false,
        "model_max_length": cfg.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = token(tokenizer.bos_id()) {
        tok_cfg["bos_token"] = json!(t);
    }
    if let Some(t) = token(tokenizer.eos_id()) {
        tok_cfg["eos_token"] = json!(t);
        tok_cfg["pad_token"] = json!(t);
    }
    if let Some(src) = chat_template {
        tok_cfg["chat_template"] = json!(src);
    }
    write_atomic(&dir.join("tokenizer_config.json"), &pretty(&tok_cfg)?)?;

    let mut generation = json!({ "do_sample": false });
    if let Some(id) = tokenizer.bos_id().or(cfg.bos_token_id) {
        generation["bos_token_id"] = json!(id);
    }
    if let Some(id) = tokenizer.eos_id() {
        generation["eos_token_id"] = json!(id);
        generation["pad_token_id"] = json!(id);
    }
    write_atomic(&dir.join("generation_config.json"), &pretty(&generation)?)
}

/// Writes `tensors` as a safetensors file at `path`, whole or not at all, readable by others as
/// any file a user writes (the safetensors crate's temporary file is private, 0600, and the
/// rename would keep that).
pub fn save_safetensors<K: AsRef<str> + Ord + std::fmt::Display>(
    tensors: &std::collections::HashMap<K, candle_core::Tensor>,
    path: &Path,
) -> Result<()> {
    candle_core::safetensors::save(tensors, path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn pretty(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Config(e.to_string()))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Writes `text` to `path` through a temporary file, fsynced before the rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_bytes_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file, fsynced before the rename.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    rename(&tmp, path)
}
