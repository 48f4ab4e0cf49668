//! The device half of `bench/gpu.sh`: numerics against the CPU, then training and scoring speed,
//! each printed as one JSON line. PyTorch's half is `bench/reference/gpu_torch.py`, on the same
//! shapes.
//!
//! ```sh
//! gpu_bench --device cuda numerics
//! gpu_bench --device cuda train --size 0.5b --batch 8 --seq 512 --steps 10
//! gpu_bench --device cuda score --size 1.5b --batch 8 --seq 512 --reps 3
//! ```
//! `--size tiny` runs anywhere in seconds (the CPU included), to check the harness itself.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use distill_models::{DeviceSpec, LlamaConfig};
use distill_train::device_check::{check_scoring, check_training, synthetic_batch, time_scoring, time_training};
use serde_json::json;

/// The shapes of Qwen2.5-0.5B and -1.5B (random weights: speed does not depend on the values),
/// and a tiny one.
fn size(name: &str) -> Result<LlamaConfig> {
    let base = LlamaConfig {
        model_type: "qwen2".into(),
        attention_bias: Some(true),
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_position_embeddings: 4096,
        ..distill_models::fixtures::tiny_config()
    };
    Ok(match name {
        "0.5b" => LlamaConfig {
            vocab_size: 151_936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: Some(2),
            tie_word_embeddings: true,
            ..base
        },
        "1.5b" => LlamaConfig {
            vocab_size: 151_936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_hidden_layers: 28,
            num_attention_heads: 12,
            num_key_value_heads: Some(2),
            tie_word_embeddings: true,
            ..base
        },
        "tiny" => LlamaConfig {
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            ..base
        },
        other => bail!("unknown --size {other}: 0.5b, 1.5b or tiny"),
    })
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{name} {v}: {e}"))
        }
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec: DeviceSpec = flag(&args, "--device", DeviceSpec::Cpu)?;
    let device = spec.open()?;
    let what = args.iter().find(|a| ["numerics", "train", "score"].contains(&a.as_str())).map(String::as_str);
    let cfg = size(&flag(&args, "--size", String::from("tiny"))?)?;
    let (b, l, k) = (flag(&args, "--batch", 8usize)?, flag(&args, "--seq", 512usize)?, flag(&args, "--k", 32usize)?);
    let compute = match flag(&args, "--dtype", String::from("bf16"))?.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--dtype {other}: bf16 or f32"),
    };
    match what {
        Some("numerics") => {
            // A student of a few layers at a real width and vocabulary: what a GPU changes.
            let cfg = LlamaConfig { num_hidden_layers: 2, vocab_size: 32_000, ..size("0.5b")? };
            let batch = synthetic_batch(cfg.vocab_size, 2, 128, 16, 1);
            for dtype in [DType::F32, DType::BF16] {
                let t = check_training(&cfg, &device, dtype, &batch, 3)?;
                println!(
                    "{}",
                    json!({"check": "train_step", "device": spec.to_string(), "dtype": format!("{dtype:?}"), "result": t})
                );
                let s = check_scoring(&cfg, &device, dtype, (2, 128, 32), 5)?;
                println!(
                    "{}",
                    json!({"check": "teacher_topk", "device": spec.to_string(), "dtype": format!("{dtype:?}"), "result": s})
                );
            }
        }
        Some("train") => {
            let steps = flag(&args, "--steps", 10usize)?;
            let s = time_training(&cfg, &device, compute, (b, l, k), (2, steps))?;
            println!(
                "{}",
                json!({"bench": "train", "device": spec.to_string(), "dtype": format!("{compute:?}"), "batch": b, "seq": l, "result": s})
            );
        }
        Some("score") => {
            let reps = flag(&args, "--reps", 3usize)?;
            let tps = time_scoring(&cfg, &device, compute, (b, l, k), (1, reps))?;
            println!(
                "{}",
                json!({"bench": "score", "device": spec.to_string(), "dtype": format!("{compute:?}"), "batch": b, "seq": l, "tokens_per_s": tps})
            );
        }
        _ => bail!("say what to run: numerics, train or score (see the example's header)"),
    }
    Ok(())
}
