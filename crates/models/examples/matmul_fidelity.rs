//! How far the teacher's bf16 matmuls move its next-token distributions from f32: loads a model
//! twice, runs the same sequences through both, and prints KL(f32 ‖ bf16) over the whole
//! vocabulary per position (mean and worst), top-1 agreement and the overlap of the top-32 sets.
//! `bench/score_speed.sh` runs it on the benchmark's sequences.
//!
//! Usage: matmul_fidelity MODEL SEQS_JSON    (SEQS_JSON: {"ids": [[u32, …], …]})

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use distill_models::ops::log_softmax_last_dim;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, seqs] = args.as_slice() else { bail!("usage: matmul_fidelity MODEL SEQS_JSON") };
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(seqs).context("reading SEQS_JSON")?)?;
    let seqs: Vec<Vec<u32>> = serde_json::from_value(json["ids"].clone()).context("SEQS_JSON needs \"ids\"")?;
    let exact = distill_models::load(model, &Device::Cpu)?.model;
    let mut fast = distill_models::load(model, &Device::Cpu)?.model;
    if !fast.use_packed_matmuls(distill_kernels::packed::Precision::Bf16)? {
        bail!("this CPU has no AVX-512 BF16: nothing to compare");
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
        "{positions} positions: KL(f32 || bf16) mean {mean:.2e}, max {worst:.2e} nats; top-1 agreement {:.2}%; \
         top-32 overlap {:.2}%",
        100.0 * top1 as f64 / positions as f64,
        100.0 * overlap as f64 / (32 * positions) as f64
    );
    Ok(())
}
