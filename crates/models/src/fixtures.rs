//! Tiny models built in code, for tests and examples that must not need a real model file.
//!
//! The tokenizer is byte-level BPE over the 256 byte symbols plus a handful of merges and the
//! ChatML control tokens, so every text round-trips and chat templates work.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::llama::LlamaConfig;
use crate::loader::{gguf_name, permute_qk};

/// ChatML, as SmolLM2 and Qwen2 use it.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 6] = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("l", "l"), ("e", "r"), ("Ġ", "a")];

/// Vocabulary (specials first, then the byte alphabet, then merge results), merges and GGUF
/// token types of the tiny tokenizer.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    tokens.extend(alphabet.iter().map(char::to_string));
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
    }
    let merges = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let types = (0..tokens.len()).map(|i| if i < SPECIALS.len() { 3 } else { 1 }).collect();
    (tokens, merges, types)
}

/// A tiny Llama config whose vocabulary fits [`tiny_vocab`].
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        model_type: "llama".into(),
        vocab_size: tiny_vocab().0.len(),
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        attention_bias: None,
        hidden_act: "silu".into(),
        bos_token_id: None,
        eos_token_id: Some(crate::llama::TokenIds::One(2)),
    }
}

/// Writes a GGUF file the way llama.cpp's converter would: llama.cpp tensor names, q/k rows
/// permuted, f32 data, tokenizer and chat template in the metadata.
pub fn write_tiny_gguf(path: &Path, cfg: &LlamaConfig, weights: &HashMap<String, Tensor>) -> Result<()> {
    let (tokens, merges, types) = tiny_vocab();
    let arch = if cfg.model_type == "qwen2" { "qwen2" } else { "llama" };
    let k = |s: &str| format!("{arch}.{s}");
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String("tiny".into())),
        (k("block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (k("context_length"), Value::U32(cfg.max_position_embeddings as u32)),
        (k("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (k("feed_forward_length"), Value::U32(cfg.intermediate_size as u32)),
        (k("attention.head_count"), Value::U32(cfg.num_attention_heads as u32)),
        (k("attention.head_count_kv"), Value::U32(cfg.num_kv_heads() as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("vocab_size"), Value::U32(cfg.vocab_size as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(CHATML_TEMPLATE.into())),
    ];
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in weights {
        let gguf_name = gguf_name(name).ok_or_else(|| Error::tensor(name, "has no GGUF name"))?;
        let t = if arch == "llama" && name.contains("q_proj") {
            permute_qk(t, cfg.num_attention_heads)?
        } else if arch == "llama" && name.contains("k_proj") {
            permute_qk(t, cfg.num_kv_heads())?
        } else {
            t.clone()
        };
        tensors.push((gguf_name, QTensor::quantize(&t, GgmlDType::F32)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(())
}

/// Writes a tiny random model as GGUF to `path` and returns its config and weights.
pub fn tiny_gguf(path: &Path, seed: u64) -> Result<(LlamaConfig, HashMap<String, Tensor>)> {
    let cfg = tiny_config();
    let mut weights = crate::init::random_weights(&cfg, seed, &Device::Cpu)?;
    // Scale up so the tiny model's outputs depend visibly on every weight.
    for t in weights.values_mut() {
        *t = (&*t * 20.0)?;
    }
    write_tiny_gguf(path, &cfg, &weights)?;
    Ok((cfg, weights))
}
