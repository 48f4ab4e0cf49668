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
