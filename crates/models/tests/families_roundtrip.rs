//! Every family through the checkpoint edges: saved as an HF directory (transformers' names and
//! config spelling: Phi-3's fused tensors, `gemma3_text`) and as GGUF (llama.cpp's names, Gemma's
//! `1 + w` norms, Phi-3's fused tensors and longrope factors), then read back to the same logits; a pruned student keeps its layer kinds.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use distill_models::fixtures::{tiny_config, write_tiny_gguf};
use distill_models::{checkpoint, hf_config, init, load, loader, prune, Llama, LlamaConfig, TextTokenizer};

/// A tiny config of `model_type` with what sets the family apart switched on.
fn family_config(model_type: &str) -> LlamaConfig {
    let mut cfg = LlamaConfig { model_type: model_type.into(), num_hidden_layers: 3, ..tiny_config() };
    match model_type {
        "qwen3" => cfg.head_dim = Some(16),
        "phi3" => {
            // longrope with an original context of 8: the 12-token test sequence is past it.
            cfg.sliding_window = Some(5);
            cfg.original_max_position_embeddings = Some(8);
            cfg.rope_scaling = Some(distill_models::llama::RopeScaling {
                rope_type: "longrope".into(),
                short_factor: Some(vec![1.0, 1.5, 2.0, 4.0]),
                long_factor: Some(vec![1.0, 3.0, 9.0, 27.0]),
                ..distill_models::llama::RopeScaling::linear(1.0)
            });
        }
        "gemma3" => {
            // What llama.cpp assumes of Gemma 3 (its GGUF cannot say otherwise): seven layers,
            // the sixth global; local RoPE base 10^4; scores scaled by the head size.
            cfg.num_hidden_layers = 7;
            cfg.hidden_act = "gelu_pytorch_tanh".into();
            cfg.sliding_window = Some(4);
            cfg.rope_local_base_freq = Some(10_000.0);
            cfg.rope_theta = 1e6;
            cfg.query_pre_attn_scalar = Some(cfg.head_dim());
        }
        _ => {}
    }
    cfg.validate().unwrap();
    cfg
}

/// Random weights, scaled so every one matters, norms away from their init.
fn weights(cfg: &LlamaConfig) -> HashMap<String, Tensor> {
    let mut w = init::random_weights(cfg, 3, &Device::Cpu).unwrap();
    for (name, t) in w.iter_mut() {
        let scale = if name.ends_with("norm.weight") { 1.0 } else { 20.0 };
        let noise = Tensor::randn(0f32, 0.3, t.dims(), &Device::Cpu).unwrap();
        *t = ((&*t * scale).unwrap() + if name.ends_with("norm.weight") { noise } else { t.zeros_like().unwrap() })
            .unwrap();
    }
    w
}

fn logits(model: &Llama) -> Tensor {
    let ids = Tensor::new(&[[5u32, 70, 100, 3, 250, 17, 9, 44, 101, 7, 8, 12]], &Device::Cpu).unwrap();
    model.forward(&ids).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

const FAMILIES: [&str; 4] = ["llama", "qwen3", "phi3", "gemma3"];

#[test]
fn every_family_round_trips_through_an_hf_directory() {
    let tok_dir = tempfile::tempdir().unwrap();
    let gguf = tok_dir.path().join("tok.gguf");
    distill_models::fixtures::tiny_gguf(&gguf, 1).unwrap();
    let tokenizer: TextTokenizer = load(gguf.to_str().unwrap(), &Device::Cpu).unwrap().tokenizer;
    for family in FAMILIES {
        let cfg = family_config(family);
        let model = Llama::from_weights(cfg.clone(), &weights(&cfg)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_hf_dir(dir.path(), &model, &tokenizer, None).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        let stored = loader::safetensors_weights(dir.path(), &Device::Cpu).unwrap();
        match family {
            "phi3" => {
                assert!(stored.contains_key("model.layers.0.self_attn.qkv_proj.weight"), "Phi-3 stores qkv_proj");
                assert!(stored.contains_key("model.layers.0.mlp.gate_up_proj.weight"), "Phi-3 stores gate_up_proj");
            }
            "gemma3" => {
                assert_eq!(config["model_type"], "gemma3_text", "transformers' text-only Gemma 3");
                assert_eq!(config["hidden_activation"], "gelu_pytorch_tanh");
                assert!(stored.contains_key("model.layers.0.pre_feedforward_layernorm.weight"));
            }
            _ => {}
        }
        let back = loader::config_file(&dir.path().join("config.json")).unwrap();
        assert_eq!(back.sliding_layers(), cfg.sliding_layers(), "{family}");
        let reloaded = Llama::from_weights(back.clone(), &hf_config::unfuse(&back, stored).unwrap()).unwrap();
        let diff = max_diff(&logits(&model), &logits(&reloaded));
        assert!(diff == 0.0, "{family}: logits differ by {diff} after an HF round trip");
    }
}

#[test]
fn every_family_round_trips_through_gguf() {
    for family in FAMILIES {
        let cfg = family_config(family);
        let w = weights(&cfg);
        let model = Llama::from_weights(cfg.clone(), &w).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        write_tiny_gguf(&path, &cfg, &w).unwrap();
        let back = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(back.model.config().model_type, family);
        let diff = max_diff(&logits(&model), &logits(&back.model));
        let scale = logits(&model).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4 * scale.max(1.0), "{family}: logits differ by {diff} after a GGUF round trip");
    }
}

#[test]
fn a_pruned_gemma3_student_keeps_each_layers_kind_and_gguf_export_says_when_llama_cpp_cannot_run_it() {
    let cfg = family_config("gemma3");
    let w = weights(&cfg);
    let (student, pruned) = prune::prune_layers(&cfg, &w, &[1, 5]).unwrap();
    assert_eq!(student.sliding_layers(), vec![true, false]);
    let model = Llama::from_weights(student.clone(), &pruned).unwrap();
    assert_eq!(logits(&model).dims(), &[1, 12, cfg.vocab_size]);
    let dir = tempfile::tempdir().unwrap();
    let err = write_tiny_gguf(&dir.path().join("m.gguf"), &student, &pruned).unwrap_err().to_string();
    assert!(err.contains("SG") && err.contains("SS") && err.contains("HINT"), "{err}");
}

/// Phi-3's fused tensors split into their projections as quantised blocks too (the rows of
/// each block-quantised part), the same weights as when dequantised first.
#[test]
fn phi3_fused_q8_0_tensors_split_into_the_same_projections_as_blocks_or_dequantised() {
    use distill_models::export::{write_gguf, GgufTokenizer, GgufType};
    use distill_models::{load_with, LoadOptions};
    let cfg = family_config("phi3");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tok.gguf");
    distill_models::fixtures::tiny_gguf(&src, 1).unwrap();
    let tok = load(src.to_str().unwrap(), &Device::Cpu).unwrap().tokenizer;
    let path = dir.path().join("phi3.q8_0.gguf");
    let gguf_tok = GgufTokenizer::from_tokenizer(&tok, cfg.vocab_size).unwrap();
    write_gguf(&path, "phi3", &cfg, &weights(&cfg), &gguf_tok, None, GgufType::Q8_0).unwrap();
    let blocks = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
    let plain = load_with(path.to_str().unwrap(), &Device::Cpu, LoadOptions { dequantize: true }).unwrap();
    let named = |m: &distill_models::LoadedModel| -> HashMap<String, Tensor> {
        m.model.named_parameters().into_iter().collect()
    };
    let (a, b) = (named(&blocks), named(&plain));
    for (name, t) in &b {
        assert_eq!(max_diff(t, &a[name]), 0.0, "{name}: blocks and dequantised weights differ");
    }
    let (la, lb) = (logits(&blocks.model), logits(&plain.model));
    let scale = lb.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max_diff(&la, &lb) < 0.02 * scale, "int8 kernel vs f32: {}", max_diff(&la, &lb));
}
