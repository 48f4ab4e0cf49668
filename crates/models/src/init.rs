//! Fresh weights for a config: HF's initialisation (normal, std 0.02; norms at one, or at zero
//! where the family applies them as `1 + w`).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::error::Result;
use crate::llama::LlamaConfig;

/// Standard deviation of HF's `initializer_range` default.
pub const INIT_STD: f32 = 0.02;

/// Every parameter `cfg` needs, under HF names, drawn reproducibly from `seed`.
pub fn random_weights(cfg: &LlamaConfig, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, INIT_STD).map_err(|e| crate::Error::Config(e.to_string()))?;
    let mut weights = HashMap::new();
    for (name, shape) in parameter_shapes(cfg) {
        let n: usize = shape.iter().product();
        let norm = name.ends_with("norm.weight");
        let t = if norm && !cfg.family().norm_plus_one {
            Tensor::ones(shape.as_slice(), candle_core::DType::F32, device)?
        } else if norm || name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), candle_core::DType::F32, device)?
        } else {
            let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Tensor::from_vec(values, shape.as_slice(), device)?
        };
        weights.insert(name, t);
    }
    Ok(weights)
}

/// Names and shapes of every parameter, in a fixed order (tied head omitted).
pub fn parameter_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let family = cfg.family();
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
    for layer in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        out.push((format!("{p}.input_layernorm.weight"), vec![c]));
        if family.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        }
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![h * d, c]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv * d, c]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv * d, c]));
        if cfg.qkv_bias() {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![h * d]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv * d]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv * d]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![c, h * d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![c]));
        if family.sandwich_norms {
            out.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![c]));
            out.push((format!("{p}.post_feedforward_layernorm.weight"), vec![c]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, c]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, c]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![c, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, c]));
    }
    out
}
