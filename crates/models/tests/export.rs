//! GGUF export: a model written by `export::write_gguf` loads back (through the same reader that
//! loads llama.cpp's files) with the same weights, tokenizer and chat template; quantised types
//! stay close and shrink the file.

use candle_core::{Device, Tensor};
use distill_models::export::{write_gguf, GgufTokenizer, GgufType};
use distill_models::fixtures::tiny_gguf;
use distill_models::{checkpoint, load, LoadedModel};

fn logits(m: &LoadedModel) -> Vec<f32> {
    let ids = Tensor::new(&[[5u32, 70, 100, 3, 250, 17, 9]], &Device::Cpu).unwrap();
    m.model.forward(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn export(m: &LoadedModel, path: &std::path::Path, ty: GgufType) -> u64 {
    let tok = GgufTokenizer::from_tokenizer(&m.tokenizer, m.model.config().vocab_size).unwrap();
    let weights = m.model.named_parameters().into_iter().collect();
    let template = m.chat_template.as_ref().map(|t| t.source().to_string());
    let summary = write_gguf(path, "test", m.model.config(), &weights, &tok, template.as_deref(), ty).unwrap();
    assert!(summary.fallbacks.is_empty(), "{:?}", summary.fallbacks);
    assert_eq!(std::fs::read(path).unwrap()[4..8], 3u32.to_le_bytes(), "GGUF version 3");
    summary.bytes
}

#[test]
fn exported_gguf_loads_back_with_the_same_model_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    tiny_gguf(&src, 4).unwrap();
    let original = load(src.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(original.tokenizer.gguf_pre().as_deref(), Some("smollm"));
    let reference = logits(&original);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let text = "<|im_start|>user\nthe 2024 heater, 12 ÷ 3<|im_end|>";
    let ids = original.tokenizer.encode(text, false).unwrap();

    let weights = original.model.named_parameters();
    let mut sizes = Vec::new();
    // (type, largest weight error as a share of the tensor's largest |value|, same for logits).
    // Q4_0 rounds to 1/16 of a block's range (1/8 at the clamped end); on this tiny model, whose
    // weights are scaled up so every one matters, that is too coarse to keep logits close.
    let cases = [
        (GgufType::F32, 0.0, Some(0.0)),
        (GgufType::F16, 1e-3, Some(2e-3)),
        (GgufType::Q8_0, 1e-2, Some(2e-2)),
        (GgufType::Q4_0, 0.125, None),
    ];
    for (ty, weight_tol, logit_tol) in cases {
        let path = dir.path().join(format!("out-{ty:?}.gguf"));
        sizes.push(export(&original, &path, ty));
        let back = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
        let back_weights: std::collections::HashMap<String, Tensor> =
            back.model.named_parameters().into_iter().collect();
        for (name, w) in &weights {
            let max = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let err = (w - &back_weights[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= weight_tol * max * 1.0001, "{ty:?} {name}: error {err} vs largest value {max}");
        }
        if let Some(tol) = logit_tol {
            let worst = logits(&back).iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tol * scale, "{ty:?}: logits moved by {worst} (scale {scale})");
        }
        assert_eq!(back.tokenizer.encode(text, false).unwrap(), ids, "{ty:?}: tokenizer changed");
        assert_eq!(
            back.chat_template.as_ref().map(|t| t.source()),
            original.chat_template.as_ref().map(|t| t.source())
        );
        assert_eq!(back.stop_ids, original.stop_ids);
    }
    assert!(sizes.windows(2).all(|w| w[0] > w[1]), "each type is smaller than the last: {sizes:?}");
}

#[test]
fn a_student_saved_as_an_hf_directory_exports_with_the_gguf_pre_tokenizer() {
    // The tokenizer now comes from tokenizer.json: the pre-tokenizer must still be recognised.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny.gguf");
    tiny_gguf(&src, 5).unwrap();
    let original = load(src.to_str().unwrap(), &Device::Cpu).unwrap();
    let hf = dir.path().join("hf");
    let template = original.chat_template.as_ref().map(|t| t.source().to_string());
    checkpoint::save_hf_dir(&hf, &original.model, &original.tokenizer, template.as_deref()).unwrap();
    let from_hf = load(hf.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(from_hf.tokenizer.gguf_pre().as_deref(), Some("smollm"));
    let a = GgufTokenizer::from_tokenizer(&original.tokenizer, original.model.config().vocab_size).unwrap();
    let b = GgufTokenizer::from_tokenizer(&from_hf.tokenizer, from_hf.model.config().vocab_size).unwrap();
    assert_eq!(a, b);
    let out = dir.path().join("student.gguf");
    export(&from_hf, &out, GgufType::F32);
    let back = load(out.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(logits(&back), logits(&original));
}

#[test]
fn k_quant_exports_mix_types_as_llama_cpp_and_load_back() {
    use candle_core::quantized::{gguf_file, GgmlDType};
    let dir = tempfile::tempdir().unwrap();
    // Rows of 256 and 512 values: whole k-quant blocks.
    let cfg = distill_models::LlamaConfig {
        hidden_size: 256,
        intermediate_size: 512,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        ..distill_models::fixtures::tiny_config()
    };
    let weights = distill_models::init::random_weights(&cfg, 3, &Device::Cpu).unwrap();
    let src = dir.path().join("src.gguf");
    distill_models::fixtures::write_tiny_gguf(&src, &cfg, &weights).unwrap();
    let original = load(src.to_str().unwrap(), &Device::Cpu).unwrap();
    let mut errors = Vec::new();
    for ty in [GgufType::Q4KM, GgufType::Q5KM, GgufType::Q6K] {
        let path = dir.path().join(format!("{ty:?}.gguf"));
        export(&original, &path, ty);
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let dtype = |name: &str| content.tensor_infos[name].ggml_dtype;
        let base = match ty {
            GgufType::Q4KM => GgmlDType::Q4K,
            GgufType::Q5KM => GgmlDType::Q5K,
            _ => GgmlDType::Q6K,
        };
        assert_eq!(dtype("token_embd.weight"), GgmlDType::Q6K, "{ty:?}: the tied head at 6 bits");
        assert_eq!(dtype("blk.0.attn_q.weight"), base, "{ty:?}");
        assert_eq!(dtype("blk.0.attn_v.weight"), base, "{ty:?}: layer 0 of 2 is not among the kept ones");
        assert_eq!(dtype("blk.1.attn_v.weight"), GgmlDType::Q6K, "{ty:?}: the last eighth of the layers");
        assert_eq!(dtype("blk.1.ffn_down.weight"), GgmlDType::Q6K, "{ty:?}");
        assert_eq!(dtype("blk.0.attn_norm.weight"), GgmlDType::F32);
        let file_type = content.metadata["general.file_type"].to_u32().unwrap();
        assert_eq!(file_type, [15, 17, 18][errors.len()], "LLAMA_FTYPE_MOSTLY_{ty:?}");
        assert_eq!(content.metadata["general.type"].to_string().unwrap(), "model");
        assert!(!content.metadata["general.size_label"].to_string().unwrap().is_empty());
        let back = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
        let back_weights: std::collections::HashMap<String, Tensor> =
            back.model.named_parameters().into_iter().collect();
        let w = &original
            .model
            .named_parameters()
            .into_iter()
            .find(|(n, _)| n.ends_with("layers.0.self_attn.q_proj.weight"))
            .unwrap()
            .1;
        let b = &back_weights["model.layers.0.self_attn.q_proj.weight"];
        let max = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = (w - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / max;
        errors.push(err);
    }
    // 4, 5 and 6 bits: each more precise than the last, and all close.
    assert!(errors[0] > errors[1] && errors[1] > errors[2] && errors[0] < 0.15, "{errors:?}");

    // Rows of 32 do not fill 256-value blocks: Q4_K falls back to Q5_0, named in the summary.
    let tiny = dir.path().join("tiny.gguf");
    tiny_gguf(&tiny, 4).unwrap();
    let small = load(tiny.to_str().unwrap(), &Device::Cpu).unwrap();
    let tok = GgufTokenizer::from_tokenizer(&small.tokenizer, small.model.config().vocab_size).unwrap();
    let weights = small.model.named_parameters().into_iter().collect();
    let out = dir.path().join("small.q4_k_m.gguf");
    let summary = write_gguf(&out, "t", small.model.config(), &weights, &tok, None, GgufType::Q4KM).unwrap();
    assert!(summary.fallbacks.iter().any(|f| f == "blk.0.attn_q.weight (Q5_0)"), "{:?}", summary.fallbacks);
    assert!(load(out.to_str().unwrap(), &Device::Cpu).is_ok());
}
