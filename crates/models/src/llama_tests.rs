//! Shape paths of the architecture on tiny random models; no model file needed.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::init::random_weights;

fn tiny(model_type: &str, tied: bool, kv_heads: usize) -> LlamaConfig {
    LlamaConfig {
        model_type: model_type.into(),
        vocab_size: 61,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(kv_heads),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        attention_bias: None,
        hidden_act: "silu".into(),
        bos_token_id: None,
        eos_token_id: None,
        ..LlamaConfig::plain(model_type)
    }
}

/// Random weights with non-trivial norms and biases, so those paths are exercised too.
fn weights(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut w = random_weights(cfg, seed, &Device::Cpu).unwrap();
    for (name, t) in w.iter_mut() {
        if name.ends_with("norm.weight") || name.ends_with(".bias") {
            let noise = Tensor::randn(0f32, 0.3, t.dims(), &Device::Cpu).unwrap();
            *t = (&*t + noise).unwrap();
        } else {
            // Larger weights than the 0.02 init, so attention patterns are far from uniform.
            *t = (&*t * 10.0).unwrap();
        }
    }
    w
}

fn ids(b: usize, t: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..b * t).map(|i| ((i * 7919 + seed * 104_729) % vocab) as u32).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn configs() -> Vec<LlamaConfig> {
    let mut with_head_dim = tiny("llama", false, 2);
    with_head_dim.head_dim = Some(8);
    let mut scaled = tiny("llama", true, 4);
    scaled.rope_scaling = Some(RopeScaling {
        rope_type: "llama3".into(),
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: Some(16),
        ..RopeScaling::linear(8.0)
    });
    vec![tiny("llama", true, 2), tiny("llama", false, 4), tiny("qwen2", false, 1), with_head_dim, scaled]
}

#[test]
fn forward_returns_logits_for_every_position() {
    for cfg in configs() {
        let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 1)).unwrap();
        let input = Tensor::from_vec(ids(3, 5, cfg.vocab_size, 0), (3, 5), &Device::Cpu).unwrap();
        let logits = model.forward(&input).unwrap();
        assert_eq!(logits.dims(), &[3, 5, cfg.vocab_size], "{cfg:?}");
        assert_eq!(model.named_parameters().len(), crate::init::parameter_shapes(&cfg).len());
    }
}

#[test]
fn cached_step_matches_all_position_forward() {
    for cfg in configs() {
        let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 2)).unwrap();
        let (b, t, prefill) = (2, 9, 4);
        let all = ids(b, t, cfg.vocab_size, 3);
        let input = Tensor::from_vec(all.clone(), (b, t), &Device::Cpu).unwrap();
        let full = model.forward(&input).unwrap(); // (B, T, V)
        let mut cache = KvCache::new(&cfg, vec![0; b]);
        let first = input.narrow(1, 0, prefill).unwrap();
        let mut got = vec![model.step(&first, &mut cache).unwrap()];
        for pos in prefill..t {
            got.push(model.step(&input.narrow(1, pos, 1).unwrap(), &mut cache).unwrap());
        }
        for (i, logits) in got.iter().enumerate() {
            let pos = prefill - 1 + i;
            let want = full.narrow(1, pos, 1).unwrap().squeeze(1).unwrap();
            let diff = max_abs_diff(logits, &want);
            assert!(diff < 1e-4, "{} position {pos}: diff {diff}", cfg.model_type);
        }
    }
}

#[test]
fn left_padded_batch_matches_each_row_alone() {
    let cfg = tiny("qwen2", false, 2);
    let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 4)).unwrap();
    let rows = [vec![5u32, 9, 11, 3, 7, 2], vec![8u32, 1]];
    let longest = 6;
    let padded: Vec<u32> =
        rows.iter().flat_map(|r| std::iter::repeat_n(0u32, longest - r.len()).chain(r.iter().copied())).collect();
    let mut cache = KvCache::new(&cfg, rows.iter().map(|r| longest - r.len()).collect());
    let batch_input = Tensor::from_vec(padded, (2, longest), &Device::Cpu).unwrap();
    let batch_prefill = model.step(&batch_input, &mut cache).unwrap(); // (B, V)
    let next = Tensor::new(&[[4u32], [6u32]], &Device::Cpu).unwrap();
    let batch_next = model.step(&next, &mut cache).unwrap();
    for (r, row) in rows.iter().enumerate() {
        let mut alone = KvCache::new(&cfg, vec![0]);
        let input = Tensor::from_vec(row.clone(), (1, row.len()), &Device::Cpu).unwrap();
        let a = model.step(&input, &mut alone).unwrap();
        let b = model.step(&next.narrow(0, r, 1).unwrap(), &mut alone).unwrap();
        assert!(max_abs_diff(&a, &batch_prefill.narrow(0, r, 1).unwrap()) < 1e-4, "row {r} prefill");
        assert!(max_abs_diff(&b, &batch_next.narrow(0, r, 1).unwrap()) < 1e-4, "row {r} next");
    }
}

#[test]
fn sequences_joining_and_leaving_a_running_batch_match_each_decoded_alone() {
    // Continuous batching: row A decodes two steps alone, B joins (shorter cache, left-padded),
    // A is forked, then B leaves; every step's logits must equal that sequence decoded alone.
    let cfg = tiny("qwen2", false, 2);
    let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 4)).unwrap();
    let dev = &Device::Cpu;
    let alone = |prompt: &[u32], steps: &[u32]| -> Vec<Tensor> {
        let mut cache = KvCache::new(&cfg, vec![0]);
        let mut out = vec![model.step(&Tensor::new(prompt, dev).unwrap().unsqueeze(0).unwrap(), &mut cache).unwrap()];
        for &s in steps {
            out.push(model.step(&Tensor::new(&[[s]], dev).unwrap(), &mut cache).unwrap());
        }
        out
    };
    let a_ref = alone(&[5, 9, 11, 3], &[7, 2, 6, 1]);
    let b_ref = alone(&[8, 1], &[4, 3, 5]);

    let mut batch = KvCache::new(&cfg, vec![]);
    let mut a = KvCache::new(&cfg, vec![0]);
    model.step(&Tensor::new(&[[5u32, 9, 11, 3]], dev).unwrap(), &mut a).unwrap();
    batch.append(a).unwrap();
    let got = model.step(&Tensor::new(&[[7u32]], dev).unwrap(), &mut batch).unwrap();
    assert!(max_abs_diff(&got, &a_ref[1]) < 1e-4);
    let mut b = KvCache::new(&cfg, vec![0]);
    let b0 = model.step(&Tensor::new(&[[8u32, 1]], dev).unwrap(), &mut b).unwrap();
    assert!(max_abs_diff(&b0, &b_ref[0]) < 1e-4);
    batch.append(b).unwrap();
    assert_eq!(batch.batch_size(), 2);
    let got = model.step(&Tensor::new(&[[2u32], [4]], dev).unwrap(), &mut batch).unwrap(); // (2, V)
    assert!(max_abs_diff(&got.narrow(0, 0, 1).unwrap(), &a_ref[2]) < 1e-4, "A after B joined");
    assert!(max_abs_diff(&got.narrow(0, 1, 1).unwrap(), &b_ref[1]) < 1e-4, "B after joining");
    // Fork A (rows 0, 1, 0), then both copies of A leave and B's padding is dropped.
    batch.select_rows(&[0, 1, 0]).unwrap();
    let got = model.step(&Tensor::new(&[[6u32], [3], [6]], dev).unwrap(), &mut batch).unwrap();
    assert!(max_abs_diff(&got.narrow(0, 0, 1).unwrap(), &a_ref[3]) < 1e-4, "A");
    assert!(max_abs_diff(&got.narrow(0, 1, 1).unwrap(), &b_ref[2]) < 1e-4, "B");
    assert!(max_abs_diff(&got.narrow(0, 2, 1).unwrap(), &a_ref[3]) < 1e-4, "fork of A");
    let before = batch.len();
    batch.select_rows(&[1]).unwrap();
    assert_eq!(batch.len(), before - 3, "B's left padding (3 positions) is dropped once A has left");
    let got = model.step(&Tensor::new(&[[5u32]], dev).unwrap(), &mut batch).unwrap();
    assert!(max_abs_diff(&got, &b_ref[3]) < 1e-4, "B alone");
    assert!(batch.select_rows(&[3]).is_err());
}

#[test]
fn every_parameter_receives_a_gradient() {
    for cfg in [tiny("llama", true, 2), tiny("qwen2", false, 2)] {
        let vars: HashMap<String, Var> =
            weights(&cfg, 5).into_iter().map(|(n, t)| (n, Var::from_tensor(&t).unwrap())).collect();
        let tensors: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let model = Llama::from_weights(cfg.clone(), &tensors).unwrap();
        let input = Tensor::from_vec(ids(2, 6, cfg.vocab_size, 6), (2, 6), &Device::Cpu).unwrap();
        let logits = model.forward(&input).unwrap();
        let loss = ops::log_softmax_last_dim(&logits).unwrap().mean_all().unwrap().neg().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", cfg.model_type));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    // Checks the composed backward of the whole block stack on a few parameter entries.
    let cfg = tiny("qwen2", false, 2);
    let w = weights(&cfg, 7);
    let input = Tensor::from_vec(ids(1, 5, cfg.vocab_size, 8), (1, 5), &Device::Cpu).unwrap();
    let loss_of = |w: &HashMap<String, Tensor>| -> Tensor {
        let model = Llama::from_weights(cfg.clone(), w).unwrap();
        let logits = model.forward(&input).unwrap().to_dtype(DType::F64).unwrap();
        ops::log_softmax_last_dim(&logits).unwrap().mean_all().unwrap().neg().unwrap()
    };
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.bias",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.mlp.gate_proj.weight",
    ] {
        let var = Var::from_tensor(&w[name]).unwrap();
        let mut with_var = w.clone();
        with_var.insert(name.into(), var.as_tensor().clone());
        let grads = loss_of(&with_var).backward().unwrap();
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = w[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for idx in [0, base.len() / 2, base.len() - 1] {
            let eps = 1e-2f32;
            let shifted = |delta: f32| {
                let mut v = base.clone();
                v[idx] += delta;
                let mut w2 = w.clone();
                w2.insert(name.into(), Tensor::from_vec(v, w[name].dims(), &Device::Cpu).unwrap());
                loss_of(&w2).to_scalar::<f64>().unwrap()
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
            let a = analytic[idx] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 * numeric.abs().max(1e-2),
                "{name}[{idx}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn wrong_shapes_and_missing_tensors_are_named() {
    let cfg = tiny("llama", false, 2);
    let mut w = weights(&cfg, 9);
    w.remove("lm_head.weight");
    let err = Llama::from_weights(cfg.clone(), &w).err().unwrap().to_string();
    assert!(err.contains("lm_head.weight") && err.contains("missing"), "{err}");
    let mut w = weights(&cfg, 9);
    w.insert("model.norm.weight".into(), Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap());
    let err = Llama::from_weights(cfg, &w).err().unwrap().to_string();
    assert!(err.contains("model.norm.weight") && err.contains("[7]"), "{err}");
}

#[test]
fn out_of_vocabulary_ids_and_overlong_inputs_are_errors() {
    let cfg = tiny("llama", true, 2);
    let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 10)).unwrap();
    let bad = Tensor::new(&[[1u32, 61]], &Device::Cpu).unwrap();
    assert!(model.forward(&bad).is_err());
    let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&long).unwrap_err().to_string().contains("context"));
}

#[test]
fn config_reads_hf_json_and_rejects_what_it_cannot_run() {
    let json = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,
        "rope_theta":100000.0,"max_position_embeddings":8192,"tie_word_embeddings":true,
        "bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","torch_dtype":"bfloat16"}"#;
    let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
    assert_eq!(cfg, LlamaConfig::smollm2_135m());
    assert_eq!(cfg.num_parameters(), 134_515_008);
    let mut bad = cfg.clone();
    bad.num_key_value_heads = Some(4);
    assert!(bad.validate().unwrap_err().to_string().contains("num_key_value_heads"));
    let llama3: LlamaConfig = serde_json::from_str(
        r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"eos_token_id":[1,2],
        "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
    )
    .unwrap();
    assert_eq!(llama3.eos_token_ids(), vec![1, 2]);
    llama3.validate().unwrap();
}

#[test]
fn packed_rows_equal_each_sequence_run_alone() {
    let cfg = tiny("qwen2", false, 2);
    let model = Llama::from_weights(cfg.clone(), &weights(&cfg, 12)).unwrap();
    let a = [5u32, 9, 11, 3];
    let b = [8u32, 1, 40];
    // One row: a, then b, then one padding token (segment 0).
    let row: Vec<u32> = a.iter().chain(&b).copied().chain([0]).collect();
    let positions = [0u32, 1, 2, 3, 0, 1, 2, 0];
    let segments = [1u32, 1, 1, 1, 2, 2, 2, 0];
    let ids = Tensor::from_vec(row, (1, 8), &Device::Cpu).unwrap();
    let packed = model.forward_packed_hidden(&ids, &positions, &segments).unwrap(); // (1, 8, C)
    for (seq, start) in [(&a[..], 0usize), (&b[..], 4)] {
        let alone =
            model.forward_hidden(&Tensor::from_vec(seq.to_vec(), (1, seq.len()), &Device::Cpu).unwrap()).unwrap();
        let part = packed.narrow(1, start, seq.len()).unwrap();
        assert!(max_abs_diff(&part, &alone) < 1e-4, "segment at {start}");
    }
    let err = model.forward_packed_hidden(&ids, &positions[..3], &segments).unwrap_err().to_string();
    assert!(err.contains("positions"), "{err}");
}

/// Mean over positions of KL(p ‖ q) between the softmaxes of two (…, V) logit tensors.
fn mean_kl(p_logits: &Tensor, q_logits: &Tensor) -> f64 {
    let v = p_logits.dim(candle_core::D::Minus1).unwrap();
    let lp = ops::log_softmax_last_dim(&p_logits.reshape(((), v)).unwrap()).unwrap();
    let lq = ops::log_softmax_last_dim(&q_logits.reshape(((), v)).unwrap()).unwrap();
    let kl = (lp.exp().unwrap() * (&lp - &lq).unwrap()).unwrap().sum(1).unwrap();
    kl.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

/// Packed f32 matmuls give the plain path's logits up to the order of the sums; packed bf16
/// ones stay within a small KL of them. Both refuse backward.
#[test]
fn packed_matmuls_stay_close_to_f32_and_refuse_backward() {
    for precision in [Precision::F32, Precision::Bf16] {
        for cfg in configs() {
            let w = weights(&cfg, 5);
            let exact = Llama::from_weights(cfg.clone(), &w).unwrap();
            let mut fast = Llama::from_weights(cfg.clone(), &w).unwrap();
            let switched = fast.use_packed_matmuls(precision).unwrap();
            assert_eq!(switched, precision.available());
            assert_eq!(fast.packed_matmuls(), switched.then_some(precision));
            if !switched {
                eprintln!("this CPU lacks the {precision:?} packed kernel: that model path is not exercised here");
                break;
            }
            let (b, t) = (2, 9);
            let input = Tensor::from_vec(ids(b, t, cfg.vocab_size, 4), (b, t), &Device::Cpu).unwrap();
            let (want, got) = (exact.forward(&input).unwrap(), fast.forward(&input).unwrap());
            let kl = mean_kl(&want, &got);
            match precision {
                Precision::F32 => {
                    assert!(max_abs_diff(&want, &got) < 1e-4, "{}: packed f32 vs plain", cfg.model_type);
                    // The plain weights were dropped for the packed ones, and come back unpacked.
                    for ((name, a), (_, b)) in exact.named_parameters().iter().zip(fast.named_parameters()) {
                        assert_eq!(a.to_vec2::<f32>().ok(), b.to_vec2::<f32>().ok(), "{name}");
                        assert_eq!(a.dims(), b.dims(), "{name}");
                    }
                }
                Precision::Bf16 => assert!(kl > 0.0 && kl < 3e-4, "{}: KL(f32 ‖ bf16) {kl}", cfg.model_type),
                Precision::Int8 => unreachable!("not in this test's list"),
            }
            // The cached decoding step takes the same packed path as the all-position forward.
            let mut cache = KvCache::new(&cfg, vec![0; b]);
            let step = fast.step(&input, &mut cache).unwrap();
            let last = got.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
            assert!(max_abs_diff(&step, &last) < 1e-3, "{}: step vs forward", cfg.model_type);
        }
        // Training through the packed matmuls is refused, not silently missing gradients.
        let cfg = tiny("llama", true, 2);
        let vars: HashMap<String, Tensor> =
            weights(&cfg, 6).into_iter().map(|(k, t)| (k, Var::from_tensor(&t).unwrap().as_tensor().clone())).collect();
        let mut model = Llama::from_weights(cfg.clone(), &vars).unwrap();
        if model.use_packed_matmuls(precision).unwrap() {
            let input = Tensor::from_vec(ids(1, 4, cfg.vocab_size, 0), (1, 4), &Device::Cpu).unwrap();
            let loss = model.forward(&input).unwrap().sum_all().unwrap();
            assert!(loss.backward().is_err(), "backward through {precision:?} packed matmuls must be an error");
        }
    }
}

/// A model of quantised blocks (every weight with whole blocks, the tied embedding included) runs
/// the int8 kernel within a tiny KL of the f32 path on the same weights dequantised; its cached
/// step agrees with its forward, and its parameters come back as those weights.
#[test]
fn quantised_weights_run_close_to_their_f32_values() {
    use crate::proj::Weight;
    use distill_kernels::quant::{quantize_q8_0, BlockType, QuantMatrix};
    use std::sync::Arc;
    if !distill_kernels::quant::available() {
        eprintln!("this CPU lacks AVX-512 VNNI and AVX2: the quantised model path is not exercised here");
        return;
    }
    for tied in [true, false] {
        let mut cfg = tiny("qwen2", tied, 2);
        (cfg.hidden_size, cfg.intermediate_size) = (64, 96);
        let parts: HashMap<String, Weight> = weights(&cfg, 8)
            .into_iter()
            .map(|(name, t)| {
                let weight = match *t.dims() {
                    [rows, cols] if cols % 32 == 0 => {
                        let blocks = quantize_q8_0(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                        Weight::Quant(Arc::new(QuantMatrix::from_blocks(BlockType::Q8_0, rows, cols, &blocks).unwrap()))
                    }
                    _ => Weight::Plain(t),
                };
                (name, weight)
            })
            .collect();
        let quant = Llama::from_parts(cfg.clone(), &parts).unwrap();
        assert_eq!(quant.packed_matmuls(), Some(Precision::Int8));
        let plain: HashMap<String, Tensor> =
            parts.iter().map(|(name, w)| (name.clone(), w.tensor(&Device::Cpu).unwrap())).collect();
        let exact = Llama::from_weights(cfg.clone(), &plain).unwrap();
        let (b, t) = (2, 9);
        let input = Tensor::from_vec(ids(b, t, cfg.vocab_size, 4), (b, t), &Device::Cpu).unwrap();
        let (want, got) = (exact.forward(&input).unwrap(), quant.forward(&input).unwrap());
        let kl = mean_kl(&want, &got);
        let diff = max_abs_diff(&want, &got);
        assert!(kl < 1e-6 && diff < 1e-2, "tied {tied}: KL(f32 ‖ int8) {kl}, largest logit difference {diff}");
        let mut cache = KvCache::new(&cfg, vec![0; b]);
        let step = quant.step(&input, &mut cache).unwrap();
        let last = got.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&step, &last) < 1e-3, "tied {tied}: step vs forward");
        for ((name, a), (_, b)) in exact.named_parameters().iter().zip(quant.named_parameters()) {
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name}"
            );
        }
    }
}
