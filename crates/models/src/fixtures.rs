//! Tiny models built in code, for tests and examples that must not need a real model file.
//!
//! The tokenizer is byte-level BPE over the 256 byte symbols plus a handful of merges and the
//! ChatML control tokens, so every text round-trips and chat templates work.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::export::{write_gguf, GgufTokenizer, GgufType};
use crate::llama::LlamaConfig;

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
        ..LlamaConfig::plain("llama")
    }
}

/// Writes a GGUF file the way llama.cpp's converter would: llama.cpp tensor names, q/k rows
/// permuted, f32 data, tokenizer and chat template in the metadata.
pub fn write_tiny_gguf(path: &Path, cfg: &LlamaConfig, weights: &HashMap<String, Tensor>) -> Result<()> {
    let (tokens, merges, token_types) = tiny_vocab();
    let tokenizer = GgufTokenizer {
        model: "gpt2".into(),
        tokens,
        merges,
        scores: None,
        add_space_prefix: false,
        token_types,
        pre: "smollm".into(),
        bos_id: Some(1),
        eos_id: Some(2),
        add_bos: false,
    };
    write_gguf(path, "tiny", cfg, weights, &tokenizer, Some(CHATML_TEMPLATE), GgufType::F32)?;
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
