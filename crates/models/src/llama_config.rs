//! The Hugging Face `config.json` of the Llama family, with presets and validation.
//!
//! Kept beside `llama.rs` (which re-exports it) so the architecture file stays readable.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    /// The MLP gate's activation: `silu`, or tanh-approximated GELU (Gemma's `hidden_activation`).
    #[serde(default = "default_hidden_act", alias = "hidden_activation")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Keys further back than this many positions are not attended to, in the layers that
    /// slide (see [`LlamaConfig::sliding_layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2/Qwen3: whether `sliding_window` applies at all (their configs carry one that does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Per layer, `sliding_attention` or `full_attention` (Gemma 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: the RoPE base of the sliding-window layers (`rope_theta` is the global layers').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-½` instead of `head_dim^-½`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_number")]
    pub query_pre_attn_scalar: Option<usize>,
    /// Phi-3: the context the model was pretrained with, where `longrope` switches factors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// The share of each head RoPE rotates; only 1 is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Gemma 2 style soft-capping; rejected when set (Gemma 3 has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
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
    /// `longrope` (Phi-3): per-frequency divisors below and above the original context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_factor: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_factor: Option<Vec<f64>>,
    /// `longrope`: the factor cos and sin are multiplied by (default from the context ratio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
}

impl RopeScaling {
    /// Positions divided by `factor` (HF's `linear`).
    pub fn linear(factor: f64) -> Self {
        Self {
            rope_type: "linear".into(),
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: None,
            short_factor: None,
            long_factor: None,
            attention_factor: None,
        }
    }
}

/// A whole number written as an integer or a float (`256` or `256.0`).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let value = Option::<f64>::deserialize(d)?;
    match value {
        Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
        Some(x) => Err(serde::de::Error::custom(format!("expected a whole number, found {x}"))),
        None => Ok(None),
    }
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
            ..Self::plain("llama")
        }
    }

    /// A config of `model_type` with every family-specific field unset and zero sizes: the base
    /// presets and converters fill in.
    pub fn plain(model_type: &str) -> Self {
        Self {
            model_type: model_type.into(),
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: default_rms_norm_eps(),
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            max_position_embeddings: default_max_position_embeddings(),
            tie_word_embeddings: false,
            attention_bias: None,
            hidden_act: default_hidden_act(),
            bos_token_id: None,
            eos_token_id: None,
            sliding_window: None,
            use_sliding_window: None,
            layer_types: None,
            rope_local_base_freq: None,
            query_pre_attn_scalar: None,
            original_max_position_embeddings: None,
            partial_rotary_factor: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
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
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn qkv_bias(&self) -> bool {
        self.family().qkv_bias
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
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
            return fail(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        if !crate::family::MODEL_TYPES.contains(&self.model_type.as_str()) {
            return fail(format!(
                "model_type `{}` is not supported yet (supported: {})",
                self.model_type,
                crate::family::MODEL_TYPES.join(", ")
            ));
        }
        if !matches!(self.hidden_act.as_str(), "silu" | "gelu_pytorch_tanh" | "gelu_tanh") {
            return fail(format!(
                "hidden_act `{}` is not supported (silu, or gelu_pytorch_tanh as in Gemma)",
                self.hidden_act
            ));
        }
        if self.final_logit_softcapping.is_some() || self.attn_logit_softcapping.is_some() {
            return fail("logit soft-capping (Gemma 2) is not supported".into());
        }
        if self.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            return fail(format!(
                "partial_rotary_factor {} is not supported: RoPE rotates whole heads here",
                self.partial_rotary_factor.unwrap_or(1.0)
            ));
        }
        if self.sliding_window == Some(0) {
            return fail("sliding_window must be positive".into());
        }
        if matches!(self.model_type.as_str(), "qwen2" | "qwen3") && self.use_sliding_window == Some(true) {
            return fail("use_sliding_window (Qwen's per-layer windows) is not supported".into());
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return fail(format!("layer_types has {} entries for {} layers", types.len(), self.num_hidden_layers));
            }
            if let Some(bad) = types.iter().find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention")) {
                return fail(format!("layer_types: `{bad}` is neither sliding_attention nor full_attention"));
            }
            if types.iter().any(|t| t == "sliding_attention") && self.sliding_window.is_none() {
                return fail("layer_types has sliding layers but sliding_window is not set".into());
            }
        }
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "llama3" | "linear" | "default" => {}
                "longrope" | "su" => {
                    let half = self.head_dim() / 2;
                    for (name, f) in [("short_factor", &s.short_factor), ("long_factor", &s.long_factor)] {
                        match f {
                            Some(f) if f.len() == half => {}
                            Some(f) => {
                                return fail(format!(
                                    "rope_scaling.{name} has {} entries, head_dim/2 is {half}",
                                    f.len()
                                ))
                            }
                            None => return fail(format!("rope_scaling type longrope needs {name}")),
                        }
                    }
                }
                other => {
                    return fail(format!("rope_scaling type `{other}` is not supported (llama3, linear, longrope)"))
                }
            }
        }
        Ok(())
    }

    /// Inverse RoPE frequencies, one per rotated pair, of the global layers with `rope_scaling`
    /// applied (longrope's short factors; [`Self::long_inv_freq`] has the long ones).
    pub(crate) fn inv_freq(&self) -> Vec<f64> {
        let base = base_inv_freq(self.rope_theta, self.head_dim());
        let Some(scaling) = &self.rope_scaling else {
            return base;
        };
        match scaling.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / scaling.factor).collect(),
            "llama3" => {
                let old_ctx = scaling.original_max_position_embeddings.unwrap_or(self.max_position_embeddings) as f64;
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
            "longrope" | "su" => divide(&base, scaling.short_factor.as_deref()),
            _ => base,
        }
    }

    /// longrope's frequencies beyond the original context, and the length from which they apply
    /// (a pass over more positions than the original context uses them for all its positions).
    pub(crate) fn long_inv_freq(&self) -> Option<(Vec<f64>, usize)> {
        let scaling = self.rope_scaling.as_ref().filter(|s| matches!(s.rope_type.as_str(), "longrope" | "su"))?;
        let base = base_inv_freq(self.rope_theta, self.head_dim());
        Some((divide(&base, scaling.long_factor.as_deref()), self.longrope_original_context()))
    }

    fn longrope_original_context(&self) -> usize {
        let scaling = self.rope_scaling.as_ref();
        self.original_max_position_embeddings
            .or(scaling.and_then(|s| s.original_max_position_embeddings))
            .unwrap_or(self.max_position_embeddings)
    }

    /// What longrope multiplies cos and sin by: `attention_factor`, else
    /// `√(1 + ln(ctx / original) / ln(original))` when the context was extended, else 1.
    pub fn rope_attention_factor(&self) -> f64 {
        let Some(scaling) = self.rope_scaling.as_ref().filter(|s| matches!(s.rope_type.as_str(), "longrope" | "su"))
        else {
            return 1.0;
        };
        if let Some(f) = scaling.attention_factor {
            return f;
        }
        let original = self.longrope_original_context() as f64;
        // An explicit `factor`, else the ratio of the contexts (Phi-3's configs give no factor).
        let factor =
            if scaling.factor != 1.0 { scaling.factor } else { self.max_position_embeddings as f64 / original };
        if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / original.ln()).sqrt()
        }
    }

    /// The sliding layers' own frequencies (Gemma 3's `rope_local_base_freq`, unscaled).
    pub(crate) fn local_inv_freq(&self) -> Option<Vec<f64>> {
        self.rope_local_base_freq.map(|theta| base_inv_freq(theta, self.head_dim()))
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (c, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (h, kv, d) = (self.num_attention_heads, self.num_kv_heads(), self.head_dim());
        let attn = c * h * d * 2 + c * kv * d * 2;
        let bias = if self.qkv_bias() { h * d + 2 * kv * d } else { 0 };
        let family = self.family();
        let qk_norm = if family.qk_norm { 2 * d } else { 0 };
        let norms = if family.sandwich_norms { 4 * c } else { 2 * c };
        let block = attn + bias + qk_norm + 3 * c * i + norms;
        let head = if self.tie_word_embeddings { 0 } else { v * c };
        v * c + self.num_hidden_layers * block + c + head
    }
}

fn base_inv_freq(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect()
}

/// Frequencies divided by per-frequency factors (longrope), or as they are without them.
fn divide(freqs: &[f64], factors: Option<&[f64]>) -> Vec<f64> {
    match factors {
        Some(factors) => freqs.iter().zip(factors).map(|(f, d)| f / d).collect(),
        None => freqs.to_vec(),
    }
}
