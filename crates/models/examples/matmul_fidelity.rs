//! How far the teacher's fast matmuls move its next-token distributions from the f32 path on
//! dequantised weights: loads a model twice, runs the same sequences through both, and prints
//! KL(f32 ‖ fast) over the whole vocabulary per position (mean and worst), top-1 agreement and
//! the overlap of the top-32 sets. `fast` is `bf16` (the default) or `int8` (a GGUF file's
//! quantised blocks through the quantised kernel). `bench/score_speed.sh` and
//! `bench/quant_speed.sh` run it on their benchmark's sequences.
//!
//! Usage: matmul_fidelity MODEL SEQS [bf16|int8]
//! (SEQS: {"ids": [[u32, …], …]} as JSON, or a .txt file of which 8 × 128 tokens are taken)

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use distill_kernels::packed::Precision;
use distill_models::ops::log_softmax_last_dim;
use distill_models::LoadOptions;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, seqs, fast) = match args.as_slice() {
        [model, seqs] => (model, seqs, Precision::Bf16),
        [model, seqs, fast] => (model, seqs, fast.parse().map_err(anyhow::Error::msg)?),
        _ => bail!("usage: matmul_fidelity MODEL SEQS_JSON [bf16|int8]"),
    };
    let text = std::fs::read_to_string(seqs).with_context(|| format!("reading {seqs}"))?;
    let dequantized = LoadOptions { dequantize: true };
    let loaded = distill_models::load_with(model, &Device::Cpu, dequantized)?;
    let seqs: Vec<Vec<u32>> = if seqs.ends_with(".txt") {
        // Plain text: 8 sequences of 128 tokens of it.
        let ids = loaded.tokenizer.encode(&text, false)?;
        ids.chunks_exact(128).take(8).map(<[u32]>::to_vec).collect()
    } else {
        let json: serde_json::Value = serde_json::from_str(&text)?;
        serde_json::from_value(json["ids"].clone()).context("SEQS_JSON needs \"ids\"")?
    };
    let mut exact = loaded.model;
    exact.use_packed_matmuls(Precision::F32)?;
    let precision = fast;
    let mut fast =
        distill_models::load_with(model, &Device::Cpu, LoadOptions { dequantize: precision != Precision::Int8 })?.model;
    if !fast.use_packed_matmuls(precision)? || fast.packed_matmuls() != Some(precision) {
        bail!("this CPU or model does not run {precision} matmuls: nothing to compare");
    }
    let (mut kls, mut top1, mut overlap, mut positions) = (Vec::new(), 0usize, 0usize, 0usize);
    for ids in &seqs {
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let lp = |m: &distill_models::Llama| -> Result<Tensor> {
            Ok(log_softmax_last_dim(&m.forward(&input)?.squeeze(0)?)?) // (T, V)
        };
        let (p, q) = (lp(&exact)?, lp(&fast)?);
        let kl = (p.exp()? * (&p - &q)?)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        kls.extend(kl.iter().map(|&v| v as f64));
        for (row_p, row_q) in p.to_vec2::<f32>()?.iter().zip(q.to_vec2::<f32>()?) {
            let top = |row: &[f32]| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                order.truncate(32);
                order
            };
            let (tp, tq) = (top(row_p), top(&row_q));
            top1 += usize::from(tp[0] == tq[0]);
            overlap += tp.iter().filter(|id| tq.contains(id)).count();
            positions += 1;
        }
    }
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    let worst = kls.iter().cloned().fold(0f64, f64::max);
    println!(
        "{positions} positions: KL(f32 || {precision}) mean {mean:.2e}, max {worst:.2e} nats; top-1 agreement {:.2}%; \
         top-32 overlap {:.2}%",
        100.0 * top1 as f64 / positions as f64,
        100.0 * overlap as f64 / (32 * positions) as f64
    );
    Ok(())
}
