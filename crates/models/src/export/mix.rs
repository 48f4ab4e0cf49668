//! Which element type each exported matrix gets: the rules llama.cpp's quantiser applies for a
//! file type, so a distill export is the file `llama-quantize` would have made.
//!
//! - The output head — the token embedding when the head is tied to it — is kept at 6 bits
//!   (Q6_K; Q8_0 where its rows do not fill 256-value blocks) in every quantised type but q8_0:
//!   it is the most sensitive matrix, and 4-bit heads lose the most.
//! - In the `_M` k-quant mixes, `attn_v` and `ffn_down` of the first and last eighth of the layers
//!   and of every third layer between get Q6_K, and a fused `attn_qkv` one step more (Q5_K/Q6_K).
//! - A matrix whose rows do not fill whole blocks of its type takes the nearest type whose blocks
//!   fit (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), else f16.

use candle_core::quantized::GgmlDType;

use super::GgufType;

/// A matrix's type, and whether the rules above moved it off the file's base type because its
/// rows do not fill the base type's blocks.
pub(super) struct Choice {
    pub dtype: GgmlDType,
    pub fallback: bool,
}

/// The type of matrix `name` (llama.cpp's name) with rows of `cols` values, in a file of type `ty`
/// for a model of `layers` layers whose head is tied to the embedding when `tied`.
pub(super) fn matrix_type(ty: GgufType, name: &str, cols: usize, layers: usize, tied: bool) -> Choice {
    let base = ty.ggml();
    if matches!(ty, GgufType::F32 | GgufType::F16) {
        return Choice { dtype: base, fallback: false };
    }
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    let mixed = matches!(ty, GgufType::Q4KM | GgufType::Q5KM);
    let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
    let wanted = if is_output {
        if ty == GgufType::Q8_0 {
            GgmlDType::Q8_0
        } else {
            GgmlDType::Q6K
        }
    } else if mixed && name.ends_with("attn_qkv.weight") {
        if ty == GgufType::Q4KM {
            GgmlDType::Q5K
        } else {
            GgmlDType::Q6K
        }
    } else if mixed
        && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && layer.is_some_and(|i| more_bits(i, layers))
    {
        GgmlDType::Q6K
    } else {
        base
    };
    let mut dtype = wanted;
    if !cols.is_multiple_of(dtype.block_size()) {
        dtype = match dtype {
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            other => other,
        };
        if !cols.is_multiple_of(dtype.block_size()) {
            dtype = GgmlDType::F16;
        }
    }
    // The head kept at higher precision is the rule, not a fallback; a smaller type is.
    let fallback = dtype != wanted && !(is_output && dtype == GgmlDType::Q8_0);
    Choice { dtype, fallback }
}

/// The layers whose `attn_v` / `ffn_down` an `_M` mix keeps at 6 bits.
fn more_bits(layer: usize, layers: usize) -> bool {
    let first = layers / 8;
    layer < first || layer >= 7 * layers / 8 || (layer - first) % 3 == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mixes_follow_llama_cpps_rules() {
        // 24 layers, rows of 896 values (Qwen2.5-0.5B: not a multiple of 256).
        let t = |ty, name: &str, cols| matrix_type(ty, name, cols, 24, true).dtype;
        assert_eq!(t(GgufType::Q4KM, "token_embd.weight", 896), GgmlDType::Q8_0, "tied head: Q6_K, rows fit Q8_0 only");
        assert_eq!(t(GgufType::Q4KM, "token_embd.weight", 1024), GgmlDType::Q6K);
        assert_eq!(t(GgufType::Q4_0, "token_embd.weight", 1024), GgmlDType::Q6K, "q4_0 keeps the head at 6 bits too");
        assert_eq!(t(GgufType::Q8_0, "token_embd.weight", 1024), GgmlDType::Q8_0);
        assert_eq!(t(GgufType::Q4KM, "blk.0.attn_v.weight", 1024), GgmlDType::Q6K, "first eighth");
        assert_eq!(t(GgufType::Q4KM, "blk.3.attn_v.weight", 1024), GgmlDType::Q4K);
        assert_eq!(t(GgufType::Q4KM, "blk.5.ffn_down.weight", 1024), GgmlDType::Q6K, "(5 - 3) % 3 == 2");
        assert_eq!(t(GgufType::Q4KM, "blk.21.ffn_down.weight", 1024), GgmlDType::Q6K, "last eighth");
        assert_eq!(t(GgufType::Q4KM, "blk.4.attn_q.weight", 1024), GgmlDType::Q4K);
        assert_eq!(t(GgufType::Q4KM, "blk.4.attn_q.weight", 896), GgmlDType::Q5_0, "Q4_K rows that do not fit");
        assert_eq!(t(GgufType::Q5KM, "blk.4.attn_q.weight", 896), GgmlDType::Q5_1);
        assert_eq!(t(GgufType::Q6K, "blk.4.attn_q.weight", 896), GgmlDType::Q8_0);
        assert_eq!(t(GgufType::Q6K, "blk.4.attn_q.weight", 1024), GgmlDType::Q6K);
        assert_eq!(t(GgufType::Q4KM, "blk.4.attn_qkv.weight", 1024), GgmlDType::Q5K);
        assert_eq!(t(GgufType::Q4_0, "blk.4.attn_q.weight", 100), GgmlDType::F16);
        // An untied embedding is an ordinary matrix; the separate head is kept at 6 bits.
        assert_eq!(matrix_type(GgufType::Q4KM, "token_embd.weight", 1024, 24, false).dtype, GgmlDType::Q4K);
        assert_eq!(matrix_type(GgufType::Q4KM, "output.weight", 1024, 24, false).dtype, GgmlDType::Q6K);
        let layers: Vec<usize> = (0..24).filter(|&i| more_bits(i, 24)).collect();
        assert_eq!(layers, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
    }
}
