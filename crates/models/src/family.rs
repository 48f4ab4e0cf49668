//! What sets each decoder family apart from Llama, in one place.
//!
//! Every family runs the same decoder ([`crate::llama::Llama`]); these switches are all that
//! differ. Read a row to see what one family changes:
//!
//! | switch                                   | Llama, Mistral | Qwen2 | Qwen3 | Phi-3     | Gemma 3            |
//! |------------------------------------------|----------------|-------|-------|-----------|--------------------|
//! | bias on q, k, v                          |                | ✓     |       |           |                    |
//! | RMSNorm over each q and k head           |                |       | ✓     |           | ✓                  |
//! | norm weights applied as `1 + w`          |                |       |       |           | ✓                  |
//! | norms after attention and MLP too        |                |       |       |           | ✓                  |
//! | MLP gate                                 | SiLU           | SiLU  | SiLU  | SiLU      | tanh-GELU (GeGLU)  |
//! | embedding scaled by √C                   |                |       |       |           | ✓                  |
//! | attention scale                          | 1/√D           | 1/√D  | 1/√D  | 1/√D      | 1/√query_pre_attn_scalar |
//! | sliding-window layers                    | all, if set    |       |       | all, if set | `layer_types` (5 of 6), own RoPE base |
//! | checkpoints fuse qkv and gate/up         |                |       |       | ✓         |                    |
//! | RoPE scaling                             | linear, llama3 | linear | linear | longrope | linear (global layers) |
//!
//! Checkpoint naming (Phi-3's fused tensors, Gemma's norm names and GGUF's `1 + w` norms) is
//! converted at the checkpoint's edge (`loader`, `checkpoint`, `export`); the decoder itself
//! always holds HF's unfused Llama names.

use crate::llama::LlamaConfig;

/// The model types `distill` runs, as HF's `config.json` spells them.
pub const MODEL_TYPES: [&str; 6] = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"];

/// The MLP gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) * up` (GeGLU), HF's `gelu_pytorch_tanh`.
    GeluTanh,
}

/// The per-family switches of the decoder (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// RMSNorm multiplies by `1 + w`: checkpoints store `w` (HF) or `1 + w` (GGUF).
    pub norm_plus_one: bool,
    /// Norms after attention and after the MLP, before each residual add.
    pub sandwich_norms: bool,
    pub activation: Activation,
    /// Multiplies the embedding's output (not the tied head).
    pub embed_scale: Option<f64>,
    /// Checkpoints hold `qkv_proj` and `gate_up_proj` instead of the separate projections.
    pub fused_projections: bool,
}

impl Family {
    pub fn of(cfg: &LlamaConfig) -> Self {
        let gemma = cfg.model_type == "gemma3";
        Self {
            qkv_bias: cfg.attention_bias.unwrap_or(cfg.model_type == "qwen2"),
            qk_norm: matches!(cfg.model_type.as_str(), "qwen3" | "gemma3"),
            norm_plus_one: gemma,
            sandwich_norms: gemma,
            activation: if cfg.hidden_act == "silu" { Activation::Silu } else { Activation::GeluTanh },
            embed_scale: gemma.then(|| (cfg.hidden_size as f64).sqrt()),
            fused_projections: cfg.model_type == "phi3",
        }
    }
}

/// One layer's attention: how far back it sees and which RoPE table it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttention {
    /// Keys at most `window - 1` positions back are seen; None: all of them.
    pub window: Option<usize>,
    /// The sliding layers' own RoPE base (Gemma 3's `rope_local_base_freq`).
    pub local_rope: bool,
}

impl LlamaConfig {
    /// The family switches of this config.
    pub fn family(&self) -> Family {
        Family::of(self)
    }

    /// Whether each layer slides: `layer_types` when given; Gemma 3's default pattern (every
    /// sixth layer global) otherwise; for the other families, every layer when `sliding_window`
    /// is set (and, for Qwen, `use_sliding_window` is on).
    pub fn sliding_layers(&self) -> Vec<bool> {
        let n = self.num_hidden_layers;
        if let Some(types) = &self.layer_types {
            return types.iter().map(|t| t == "sliding_attention").collect();
        }
        match self.model_type.as_str() {
            "gemma3" => (0..n).map(|i| (i + 1) % 6 != 0).collect(),
            "qwen2" | "qwen3" if self.use_sliding_window != Some(true) => vec![false; n],
            _ => vec![self.sliding_window.is_some(); n],
        }
    }

    /// Each layer's attention.
    pub fn layer_attention(&self) -> Vec<LayerAttention> {
        let local_rope = self.rope_local_base_freq.is_some();
        self.sliding_layers()
            .into_iter()
            .map(|slides| LayerAttention {
                window: self.sliding_window.filter(|_| slides),
                local_rope: slides && local_rope,
            })
            .collect()
    }

    /// The factor attention scores are multiplied by.
    pub fn attention_scale(&self) -> f64 {
        1.0 / (self.query_pre_attn_scalar.unwrap_or(self.head_dim()) as f64).sqrt()
    }
}
