//! The Llama family: Llama 2/3, SmolLM/SmolLM2, Qwen2 (q/k/v bias) and Mistral.
//!
//! One set of weights, two entry points: [`Llama::forward`] returns logits for every position
//! (training, teacher scoring) and [`Llama::step`] decodes with a KV cache. Both run the same
//! blocks, built only from differentiable ops (see `ops`), so every parameter gets a gradient.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops;

/// Model hyper-parameters, spelled as in a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections. Absent in Qwen2 configs, where it is always on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
}

/// `eos_token_id` is a single id in most configs and a list in Llama 3's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Context-extension schemes for RoPE, as in HF `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}

impl LlamaConfig {
    /// SmolLM2-135M(-Instruct): the default teacher.
    pub fn smollm2_135m() -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: Some(3),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: None,
            hidden_act: "silu".into(),
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
        }
    }

    /// SmolLM2-360M(-Instruct).
    pub fn smollm2_360m() -> Self {
        Self {
            hidden_size: 960,
            intermediate_size: 2560,
            num_hidden_layers: 32,
            num_attention_heads: 15,
            num_key_value_heads: Some(5),
            ..Self::smollm2_135m()
        }
    }

    /// Named presets for published sizes.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "smollm2-135m" => Some(Self::smollm2_135m()),
            "smollm2-360m" => Some(Self::smollm2_360m()),
            _ => None,
        }
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Rejects configurations the architecture cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return fail(format!(
                "hidden_act `{}` is not supported (only `silu`, as in Llama/Qwen2/Mistral)",
                self.hidden_act
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !matches!(s.rope_type.as_str(), "llama3" | "linear" | "default") {
                return fail(format!(
                    "rope_scaling type `{}` is not supported (llama3, linear)",
                    s.rope_type
                ));
            }
        }
        Ok(())
    }

    /// Inverse RoPE frequencies, one per rotated pair, with `rope_scaling` applied.
    fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim();
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        let Some(scaling) = &self.rope_scaling else {
            return base;
        };
        match scaling.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / scaling.factor).collect(),
            "llama3" => {
                let old_ctx = scaling
                    .original_max_position_embeddings
                    .unwrap_or(self.max_position_embeddings) as f64;
                let low_wavelen = old_ctx / scaling.low_freq_factor;
                let high_wavelen = old_ctx / scaling.high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / scaling.factor
                        } else {
                            let smooth = (old_ctx / wavelen - scaling.low_freq_factor)
                                / (scaling.high_freq_factor - scaling.low_freq_factor);
                            (1.0 - smooth) * f / scaling.factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (c, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (h, kv, d) = (
            self.num_attention_heads,
            self.num_kv_heads(),
            self.head_dim(),
        );
        let attn = c * h * d * 2 + c * kv * d * 2;
        let bias = if self.qkv_bias() {
            h * d + 2 * kv * d
        } else {
            0
        };
        let block = attn + bias + 3 * c * i + 2 * c;
        let head = if self.tie_word_embeddings { 0 } else { v * c };
        v * c + self.num_hidden_layers * block + c + head
    }
}

struct Block {
    attn_norm: Tensor,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o_proj: Tensor,
    mlp_norm: Tensor,
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
}

/// A Llama-family decoder. Weights are plain tensors; pass `Var`-backed tensors to train.
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    cos: Tensor, // (P, D/2)
    sin: Tensor, // (P, D/2)
}

/// Per-layer keys and values of the sequences being decoded, plus the left padding of each row.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>, // each (B, KVH, S, D)
    left_pad: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// A cache for a batch whose rows are left-padded by `left_pad[b]` tokens.
    pub fn new(cfg: &LlamaConfig, left_pad: Vec<usize>) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
            left_pad,
            len: 0,
        }
    }

    /// Positions held so far, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch_size(&self) -> usize {
        self.left_pad.len()
    }
}

/// HF tensor names of one block's parameters.
fn block_names(i: usize) -> [(&'static str, String); 9] {
    let p = format!("model.layers.{i}");
    [
        ("attn_norm", format!("{p}.input_layernorm.weight")),
        ("q", format!("{p}.self_attn.q_proj.weight")),
        ("k", format!("{p}.self_attn.k_proj.weight")),
        ("v", format!("{p}.self_attn.v_proj.weight")),
        ("o", format!("{p}.self_attn.o_proj.weight")),
        ("mlp_norm", format!("{p}.post_attention_layernorm.weight")),
        ("gate", format!("{p}.mlp.gate_proj.weight")),
        ("up", format!("{p}.mlp.up_proj.weight")),
        ("down", format!("{p}.mlp.down_proj.weight")),
    ]
}

impl Llama {
    /// Builds the model from tensors named as in HF checkpoints, checking every shape.
    pub fn from_weights(cfg: LlamaConfig, weights: &HashMap<String, Tensor>) -> Result<Self> {
        cfg.validate()?;
        let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = weights
                .get(name)
                .ok_or_else(|| Error::tensor(name, "is missing from the checkpoint"))?;
            if t.dims() != shape {
                return Err(Error::tensor(
                    name,
                    format!("has shape {:?}, the config implies {shape:?}", t.dims()),
                ));
            }
            Ok(t.clone())
        };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for layer in 0..cfg.num_hidden_layers {
            let n = block_names(layer);
            let bias = |proj: &str, len: usize| -> Result<Option<Tensor>> {
                if cfg.qkv_bias() {
                    let name = format!("model.layers.{layer}.self_attn.{proj}.bias");
                    get(&name, &[len]).map(Some)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm: get(&n[0].1, &[c])?,
                q_proj: get(&n[1].1, &[h * d, c])?,
                k_proj: get(&n[2].1, &[kv * d, c])?,
                v_proj: get(&n[3].1, &[kv * d, c])?,
                q_bias: bias("q_proj", h * d)?,
                k_bias: bias("k_proj", kv * d)?,
                v_bias: bias("v_proj", kv * d)?,
                o_proj: get(&n[4].1, &[c, h * d])?,
                mlp_norm: get(&n[5].1, &[c])?,
                gate_proj: get(&n[6].1, &[i, c])?,
                up_proj: get(&n[7].1, &[i, c])?,
                down_proj: get(&n[8].1, &[c, i])?,
            });
        }
        let embed_tokens = get("model.embed_tokens.weight", &[v, c])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight", &[v, c])?)
        };
        let norm = get("model.norm.weight", &[c])?;
        let device = embed_tokens.device().clone();
        let dtype = embed_tokens.dtype();
        let (cos, sin) = rope_tables(&cfg, &device, dtype)?;
        Ok(Self {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// All parameters under their HF names (a tied head appears once, as the embedding).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (layer, b) in self.blocks.iter().enumerate() {
            let n = block_names(layer);
            let tensors = [
                &b.attn_norm,
                &b.q_proj,
                &b.k_proj,
                &b.v_proj,
                &b.o_proj,
                &b.mlp_norm,
                &b.gate_proj,
                &b.up_proj,
                &b.down_proj,
            ];
            for ((_, name), t) in n.into_iter().zip(tensors) {
                out.push((name, t.clone()));
            }
            for (proj, bias) in [
                ("q_proj", &b.q_bias),
                ("k_proj", &b.k_bias),
                ("v_proj", &b.v_bias),
            ] {
                if let Some(t) = bias {
                    out.push((
                        format!("model.layers.{layer}.self_attn.{proj}.bias"),
                        t.clone(),
                    ));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.clone()));
        }
        out
    }

    /// The output projection (V, C): the embedding matrix when tied.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits for every position. `ids`: (B, T) u32 → (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids)?; // (B, T, C)
        Ok(ops::linear(&hidden, self.lm_head_weight(), None)?) // (B, T, V)
    }

    /// Final-norm hidden states for every position, for callers that apply the head themselves
    /// (chunked over the vocabulary). `ids`: (B, T) → (B, T, C).
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        self.check_context(t)?;
        let cos = self.cos.narrow(0, 0, t)?; // (T, D/2)
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = ops::causal_mask(t, 0, self.dtype(), self.device())?; // (1, 1, T, T)
        let mut x = self.embed(ids)?; // (B, T, C)
        for block in &self.blocks {
            x = self.block_forward(block, &x, &cos, &sin, &mask, None)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// Decodes `ids` (B, T_new) after what `cache` holds and returns the logits of the last new
    /// position (B, V). Rows are left-padded as the cache says; padding is never attended to.
    pub fn step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if b != cache.batch_size() {
            return Err(Error::Input(format!(
                "step got a batch of {b} rows, the cache was made for {}",
                cache.batch_size()
            )));
        }
        let past = cache.len;
        self.check_context(past + t)?;
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t * (past + t));
        for &pad in &cache.left_pad {
            for q in 0..t {
                let abs = past + q;
                positions.push(abs.saturating_sub(pad) as u32);
                mask.extend((0..past + t).map(|k| {
                    if (k >= pad && k <= abs) || k == abs {
                        0.0f32
                    } else {
                        ops::MASKED
                    }
                }));
            }
        }
        let device = self.device();
        let positions = Tensor::from_vec(positions, b * t, device)?;
        let half = self.cfg.head_dim() / 2;
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((b, 1, t, half))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((b, 1, t, half))?;
        let mask = Tensor::from_vec(mask, (b, 1, t, past + t), device)?.to_dtype(self.dtype())?;
        let mut x = self.embed(ids)?; // (B, T, C)
        for (layer, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(block, &x, &cos, &sin, &mask, Some(&mut cache.layers[layer]))?;
        }
        cache.len += t;
        let last = x.narrow(1, t - 1, 1)?; // (B, 1, C)
        let last = ops::rms_norm(&last, &self.norm, self.cfg.rms_norm_eps)?;
        Ok(ops::linear(&last, self.lm_head_weight(), None)?.squeeze(1)?) // (B, V)
    }

    fn check_context(&self, len: usize) -> Result<()> {
        if len > self.cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {len} tokens exceeds the model's context of {} (max_position_embeddings)",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let max_id = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= self.cfg.vocab_size {
            return Err(Error::Input(format!(
                "token id {max_id} is outside the model's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(self
            .embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.hidden_size))?) // (B, T, C)
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let h = ops::rms_norm(x, &block.attn_norm, eps)?;
        let attn = self.attention(block, &h, cos, sin, mask, cache)?;
        let x = (x + attn)?;
        let h = ops::rms_norm(&x, &block.mlp_norm, eps)?;
        let gate = ops::linear(&h, &block.gate_proj, None)?; // (B, T, I)
        let up = ops::linear(&h, &block.up_proj, None)?;
        let mlp = ops::linear(&ops::swiglu(&gate, &up)?, &block.down_proj, None)?; // (B, T, C)
        Ok((x + mlp)?)
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, d) = (
            self.cfg.num_attention_heads,
            self.cfg.num_kv_heads(),
            self.cfg.head_dim(),
        );
        let heads = |proj: &Tensor, bias: Option<&Tensor>, n: usize| -> Result<Tensor> {
            Ok(ops::linear(x, proj, bias)?
                .reshape((b, t, n, d))?
                .transpose(1, 2)?) // (B, n, T, D)
        };
        let q = ops::rope(&heads(&block.q_proj, block.q_bias.as_ref(), h)?, cos, sin)?;
        let k = ops::rope(&heads(&block.k_proj, block.k_bias.as_ref(), kv)?, cos, sin)?;
        let v = heads(&block.v_proj, block.v_bias.as_ref(), kv)?.contiguous()?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v) // (B, KVH, S, D)
            }
            None => (k, v),
        };
        let k = repeat_kv(&k, h / kv)?; // (B, H, S, D)
        let v = repeat_kv(&v, h / kv)?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?; // (B, H, T, S)
        let probs = ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // (B, H, T, D)
        let out = out.transpose(1, 2)?.reshape((b, t, h * d))?; // (B, T, H·D)
        Ok(ops::linear(&out, &block.o_proj, None)?)
    }
}

/// Repeats each key/value head `n_rep` times for grouped-query attention.
fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d)) // (B, H, S, D)
}

fn rope_tables(cfg: &LlamaConfig, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let inv_freq = cfg.inv_freq();
    let positions = cfg.max_position_embeddings;
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

#[cfg(test)]
#[path = "llama_tests.rs"]
mod tests;
