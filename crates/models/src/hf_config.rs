//! The edge between HF checkpoints and the decoder: `config.json` as every transformers version
//! writes it, and the fused tensors some families store (Phi-3's `qkv_proj`, `gate_up_proj`).
//! The decoder holds Llama's unfused names for every family.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::llama::LlamaConfig;

/// transformers' class for a `model_type`, as `config.json`'s `architectures` names it.
pub fn architecture(model_type: &str) -> &'static str {
    match model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

/// A `config.json` in the one spelling [`LlamaConfig`] reads:
/// - a multimodal Gemma 3 config's `text_config` is the model (the vision tower is not run);
///   `gemma3_text` is `gemma3`;
/// - transformers 5's `rope_parameters` (one set, or one per layer type) become `rope_theta`,
///   `rope_scaling`, `partial_rotary_factor` and Gemma's `rope_local_base_freq`;
/// - Gemma 3's `sliding_window_pattern` becomes `layer_types`.
pub fn normalize(mut json: Json) -> Json {
    if let Some(text) = json.get("text_config").filter(|t| t.is_object()).cloned() {
        let mut text = text;
        text["model_type"] = json!("gemma3");
        for key in ["bos_token_id", "eos_token_id", "tie_word_embeddings"] {
            if text.get(key).is_none() {
                if let Some(v) = json.get(key) {
                    text[key] = v.clone();
                }
            }
        }
        json = text;
    }
    if json.get("model_type").and_then(Json::as_str) == Some("gemma3_text") {
        json["model_type"] = json!("gemma3");
    }
    if let Some(params) = json.get("rope_parameters").filter(|p| p.is_object()).cloned() {
        let global = params.get("full_attention").cloned().unwrap_or_else(|| params.clone());
        apply_rope(&mut json, &global);
        if let Some(theta) = params.get("sliding_attention").and_then(|p| p.get("rope_theta")) {
            json["rope_local_base_freq"] = theta.clone();
        }
        json.as_object_mut().map(|o| o.remove("rope_parameters"));
    }
    let pattern = ["sliding_window_pattern", "_sliding_window_pattern"].iter().find_map(|k| json.get(*k)?.as_u64());
    if let (None, Some(pattern), Some(layers)) =
        (json.get("layer_types"), pattern, json.get("num_hidden_layers").and_then(Json::as_u64))
    {
        let types: Vec<&str> = (0..layers)
            .map(|i| if (i + 1) % pattern.max(1) == 0 { "full_attention" } else { "sliding_attention" })
            .collect();
        json["layer_types"] = json!(types);
    }
    json
}

/// One transformers 5 `rope_parameters` set as the older top-level fields.
fn apply_rope(json: &mut Json, params: &Json) {
    if let Some(theta) = params.get("rope_theta") {
        json["rope_theta"] = theta.clone();
    }
    if let Some(f) = params.get("partial_rotary_factor") {
        json["partial_rotary_factor"] = f.clone();
    }
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Json::as_str).unwrap_or("default");
    if kind != "default" {
        let mut scaling = params.clone();
        if let Some(o) = scaling.as_object_mut() {
            o.remove("rope_theta");
            o.remove("partial_rotary_factor");
        }
        json["rope_scaling"] = scaling;
    }
}

/// Phi-3's fused tensors and the projections stacked in their rows, with each one's rows.
fn fused(cfg: &LlamaConfig) -> Vec<(&'static str, Vec<(&'static str, usize)>)> {
    if !cfg.family().fused_projections {
        return Vec::new();
    }
    let (h, kv, d, i) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim(), cfg.intermediate_size);
    vec![
        (
            "self_attn.qkv_proj.weight",
            vec![
                ("self_attn.q_proj.weight", h * d),
                ("self_attn.k_proj.weight", kv * d),
                ("self_attn.v_proj.weight", kv * d),
            ],
        ),
        ("mlp.gate_up_proj.weight", vec![("mlp.gate_proj.weight", i), ("mlp.up_proj.weight", i)]),
    ]
}

/// For a fused checkpoint tensor (`model.layers.N.self_attn.qkv_proj.weight`, …), the decoder's
/// tensors stacked in its rows, in order, with each one's number of rows.
pub fn fused_rows(cfg: &LlamaConfig, name: &str) -> Option<Vec<(String, usize)>> {
    let (prefix, tail) = name.strip_prefix("model.layers.")?.split_once('.')?;
    let (_, parts) = fused(cfg).into_iter().find(|(fused_name, _)| *fused_name == tail)?;
    Some(parts.into_iter().map(|(part, rows)| (format!("model.layers.{prefix}.{part}"), rows)).collect())
}

/// A checkpoint's tensors under the decoder's names: fused ones split by rows (views, so a
/// gradient reaches the fused tensor).
pub fn unfuse(cfg: &LlamaConfig, mut weights: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    for layer in 0..cfg.num_hidden_layers {
        for (fused_name, parts) in fused(cfg) {
            let name = format!("model.layers.{layer}.{fused_name}");
            let Some(t) = weights.remove(&name) else { continue };
            let rows: usize = parts.iter().map(|(_, r)| r).sum();
            if t.dim(0)? != rows {
                return Err(Error::tensor(name, format!("has {} rows, the config implies {rows}", t.dim(0)?)));
            }
            let mut start = 0;
            for (part, len) in parts {
                weights.insert(format!("model.layers.{layer}.{part}"), t.narrow(0, start, len)?);
                start += len;
            }
        }
    }
    Ok(weights)
}

/// The decoder's tensors under the checkpoint's names: the inverse of [`unfuse`].
pub fn fuse(cfg: &LlamaConfig, mut weights: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    for layer in 0..cfg.num_hidden_layers {
        for (fused_name, parts) in fused(cfg) {
            let names: Vec<String> = parts.iter().map(|(p, _)| format!("model.layers.{layer}.{p}")).collect();
            let tensors: Vec<Tensor> = names
                .iter()
                .map(|n| weights.remove(n).ok_or_else(|| Error::tensor(n.as_str(), "is missing")))
                .collect::<Result<_>>()?;
            weights.insert(format!("model.layers.{layer}.{fused_name}"), Tensor::cat(&tensors, 0)?);
        }
    }
    Ok(weights)
}
