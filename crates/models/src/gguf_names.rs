//! How llama.cpp's GGUF files name and lay out what HF checkpoints hold: architectures, tensor
//! names per family, the q/k row permutation of the Llama family and Gemma's `1 + w` norms.

use candle_core::Tensor;

use crate::family::Family;

/// GGUF `general.architecture` for an HF `model_type`.
pub fn gguf_arch(model_type: &str) -> &'static str {
    match model_type {
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        "gemma3" => "gemma3",
        _ => "llama",
    }
}

/// HF `model_type` for a GGUF architecture, if `distill` runs it.
pub fn model_type(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "phi3" => "phi3",
        "gemma3" => "gemma3",
        _ => return None,
    })
}

/// The GGUF architectures `distill` loads and writes.
pub const GGUF_ARCHS: [&str; 6] = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"];

/// Whether llama.cpp's converter permuted this architecture's q/k rows for its interleaved RoPE.
pub fn permutes_qk(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

/// Whether GGUF stores this family's norm weights as `1 + w` (Gemma), HF as `w`.
pub fn norm_plus_one(family: &Family, hf_name: &str) -> bool {
    family.norm_plus_one && hf_name.ends_with("norm.weight")
}

/// llama.cpp tensor names and their HF counterparts: whole names, then per-block suffixes.
const TOP_LEVEL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const BLOCK_NAMES: [(&str, &str); 13] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];
/// The norms around the MLP: Llama's one before it, or Gemma's before and after both halves.
const LLAMA_NORMS: [(&str, &str); 1] = [("ffn_norm.weight", "post_attention_layernorm.weight")];
const GEMMA_NORMS: [(&str, &str); 3] = [
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
];

/// Phi-3's fused projections (`ffn_up` holds the gate's rows, then the up projection's).
const FUSED_NAMES: [(&str, &str); 2] =
    [("attn_qkv.weight", "self_attn.qkv_proj.weight"), ("ffn_up.weight", "mlp.gate_up_proj.weight")];

fn block_names(family: &Family) -> impl Iterator<Item = (&'static str, &'static str)> {
    let norms: &[(&str, &str)] = if family.sandwich_norms { &GEMMA_NORMS } else { &LLAMA_NORMS };
    let fused: &[(&str, &str)] = if family.fused_projections { &FUSED_NAMES } else { &[] };
    fused.iter().copied().chain(BLOCK_NAMES).chain(norms.iter().copied())
}

/// HF tensor name for a llama.cpp tensor name, if it is one the family uses.
pub fn hf_name(gguf_name: &str, family: &Family) -> Option<String> {
    translate(gguf_name, family, "blk.", "model.layers.", |(g, h)| (g, h))
}

/// llama.cpp tensor name for an HF tensor name, if it is one the family uses.
pub fn gguf_name(hf_name: &str, family: &Family) -> Option<String> {
    translate(hf_name, family, "model.layers.", "blk.", |(g, h)| (h, g))
}

fn translate(
    name: &str,
    family: &Family,
    from_prefix: &str,
    to_prefix: &str,
    orient: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some((_, to)) = TOP_LEVEL_NAMES.into_iter().map(&orient).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (layer, tail) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = block_names(family).map(&orient).find(|(from, _)| *from == tail)?;
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

/// [`unpermute_qk`] on the rows of a stored tensor (`rows` rows of whole blocks).
pub fn unpermute_rows(bytes: &[u8], rows: usize, n_heads: usize) -> Vec<u8> {
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
