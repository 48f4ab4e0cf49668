//! The path a GPU trains and scores on, held to the CPU's fused f32 path: on the device that
//! DISTILL_TEST_DEVICE names (`cpu` by default; `bench/gpu.sh` sets `cuda`). On the CPU these
//! check the generic path itself: the chunked head, the composed ops, bf16 mixed precision.

use candle_core::{DType, Device};
use distill_models::{DeviceSpec, LlamaConfig};
use distill_train::device_check::{check_scoring, check_training, synthetic_batch, time_training};

fn device() -> Device {
    let name = std::env::var("DISTILL_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    name.parse::<DeviceSpec>().unwrap().open().unwrap()
}

/// A small Qwen2-like student: grouped-query attention with q/k/v biases, an untied head.
fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: Some(true),
        ..distill_models::fixtures::tiny_config()
    }
}

#[test]
fn an_f32_step_on_the_device_matches_the_cpu() {
    let device = device();
    if device.is_cpu() {
        return; // the same path as the reference: nothing to compare (the chunked head is unit-tested)
    }
    let cfg = config();
    let batch = synthetic_batch(cfg.vocab_size, 3, 40, 8, 1);
    let c = check_training(&cfg, &device, DType::F32, &batch, 3).unwrap();
    assert!((c.loss_device - c.loss_cpu).abs() < 1e-4 * c.loss_cpu.abs().max(1.0), "{c:?}");
    assert!(c.max_grad_error < 1e-3, "{c:?}");
}

/// bf16 weights, activations and gradients over f32 master weights: the loss within 1% of f32's,
/// every parameter's gradient within 3% of its largest entry.
#[test]
fn a_bf16_mixed_precision_step_tracks_the_f32_step() {
    let cfg = config();
    let batch = synthetic_batch(cfg.vocab_size, 3, 40, 8, 2);
    let c = check_training(&cfg, &device(), DType::BF16, &batch, 4).unwrap();
    eprintln!("bf16 step: {c:?}");
    assert!((c.loss_device - c.loss_cpu).abs() < 0.01 * c.loss_cpu.abs(), "{c:?}");
    assert!(c.max_grad_error < 0.03, "{c:?}");
}

#[test]
fn the_teacher_signal_on_the_device_matches_the_cpu() {
    let cfg = config();
    let device = device();
    if !device.is_cpu() {
        let c = check_scoring(&cfg, &device, DType::F32, (2, 24, 8), 5).unwrap();
        assert!(c.mean_kl < 1e-5 && c.max_abs < 1e-3 && c.top1_agreement == 1.0, "{c:?}");
    }
    let c = check_scoring(&cfg, &device, DType::BF16, (2, 24, 8), 5).unwrap();
    eprintln!("bf16 scoring: {c:?}");
    assert!(c.mean_kl < 1e-4 && c.max_abs < 0.02 && c.top1_agreement > 0.9, "bf16 scoring: {c:?}");
}

/// Mixed-precision training learns: the loss on a fixed set of batches falls.
#[test]
fn bf16_training_lowers_the_loss() {
    let cfg = config();
    let s = time_training(&cfg, &device(), DType::BF16, (2, 32, 8), (0, 30)).unwrap();
    eprintln!("bf16 training: {s:?}");
    assert!(s.loss_last < s.loss_first * 0.9, "{s:?}");
}
