//! A device's training and scoring path held to the CPU's, and timed: the same random student and
//! batch trained one step on the CPU (the fused f32 kernels, the reference) and on the device in a
//! compute dtype, and the same model's top-k log-probabilities on both. The CUDA tests and
//! `bench/gpu.sh` run these on a GPU; on the CPU they check the generic path (chunked head,
//! composed ops, bf16 mixed precision) that a GPU runs.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use distill_models::{Llama, LlamaConfig};
use distill_store::Batch;
use distill_teacher::{score_with, ScoreRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::loss::LossConfig;
use crate::optim::{AdamWConfig, Schedule};
use crate::student::{Optimizer, Student};

/// A packed batch of `b` rows of `l` random tokens (one segment each) with a random teacher
/// signal of `k` entries on every position but each row's first quarter (the "prompt").
pub fn synthetic_batch(vocab: usize, b: usize, l: usize, k: usize, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = b * l;
    let input_ids: Vec<u32> = (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect();
    let mut batch = Batch {
        batch_size: b,
        seq_len: l,
        k,
        position_ids: (0..n).map(|i| (i % l) as u32).collect(),
        segment_ids: vec![1; n],
        target_ids: (0..n).map(|i| if (i + 1) % l == 0 { 0 } else { input_ids[i + 1] }).collect(),
        input_ids,
        loss_mask: (0..n).map(|i| if i % l >= l / 4 && (i + 1) % l != 0 { 1.0 } else { 0.0 }).collect(),
        topk_ids: vec![0; n * k],
        topk_logprobs: vec![0.0; n * k],
        tail_logprobs: vec![0.0; n],
    };
    for i in 0..n {
        // k distinct ids and a descending distribution over them, the rest in the tail.
        let mut ids: Vec<u32> = Vec::with_capacity(k);
        while ids.len() < k.min(vocab) {
            let id = rng.gen_range(0..vocab as u32);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let weights: Vec<f64> = (0..k).map(|j| (-(j as f64) * 0.7 - rng.gen_range(0.0..0.5)).exp()).collect();
        let total: f64 = weights.iter().sum::<f64>() / 0.9; // 10% in the tail
        for j in 0..k {
            batch.topk_ids[i * k + j] = ids[j];
            batch.topk_logprobs[i * k + j] = (weights[j] / total).ln() as f32;
        }
        batch.tail_logprobs[i] = 0.1f64.ln() as f32;
    }
    batch
}

/// One training step compared: loss and the gradients of every parameter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainCheck {
    pub loss_cpu: f64,
    pub loss_device: f64,
    /// The largest |g_device − g_cpu| over a parameter, relative to that parameter's largest
    /// |g_cpu|: the worst parameter.
    pub max_grad_error: f64,
    pub worst_parameter: String,
}

/// The loss and gradients of one micro-batch on `device` in `compute`, against the CPU's fused
/// f32 path, for a student of `cfg` drawn from `seed`.
pub fn check_training(
    cfg: &LlamaConfig,
    device: &Device,
    compute: DType,
    batch: &Batch,
    seed: u64,
) -> candle_core::Result<TrainCheck> {
    let loss = LossConfig { kd_weight: 0.8, ..LossConfig::default() };
    let run = |device: &Device, compute: DType| -> candle_core::Result<(f64, HashMap<String, Vec<f32>>)> {
        let weights = distill_models::init::random_weights(cfg, seed, device).map_err(candle_err)?;
        let student = Student::with_compute(cfg.clone(), &weights, Some(compute)).map_err(candle_err)?;
        let step =
            student.batch_loss(batch, &loss)?.ok_or_else(|| candle_core::Error::Msg("no scored position".into()))?;
        let grads = step.objective.backward()?;
        let mut out = HashMap::new();
        for (name, var) in &student.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                out.insert(name.clone(), g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok((step.loss, out))
    };
    let (loss_cpu, want) = run(&Device::Cpu, DType::F32)?;
    let (loss_device, got) = run(device, compute)?;
    let (mut max_grad_error, mut worst_parameter) = (0f64, String::new());
    for (name, w) in &want {
        let g =
            got.get(name).ok_or_else(|| candle_core::Error::Msg(format!("{name} got no gradient on the device")))?;
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12) as f64;
        let err = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64 / scale;
        if err > max_grad_error {
            (max_grad_error, worst_parameter) = (err, name.clone());
        }
    }
    Ok(TrainCheck { loss_cpu, loss_device, max_grad_error, worst_parameter })
}

/// The teacher signal compared: top-k log-probabilities over every position of a few sequences.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoreCheck {
    /// The largest |lp_device − lp_cpu| over the ids both put in their top k.
    pub max_abs: f64,
    /// Mean KL(cpu ‖ device) over the top-k + tail buckets of the CPU's ids, nats.
    pub mean_kl: f64,
    /// Share of positions whose top-1 agrees.
    pub top1_agreement: f64,
}

/// Requests of `rows` random sequences of `len` tokens, scored from their second token.
fn score_requests(vocab: usize, rows: usize, len: usize, seed: u64) -> Vec<ScoreRequest> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..rows)
        .map(|_| ScoreRequest { token_ids: (0..len).map(|_| rng.gen_range(0..vocab as u32)).collect(), from: 1 })
        .collect()
}

/// The teacher signal (`distill_teacher::score_with`: all-position top-`k`) of a random model
/// of `cfg` in `compute` on `device`, against the f32 CPU model's.
pub fn check_scoring(
    cfg: &LlamaConfig,
    device: &Device,
    compute: DType,
    (rows, len, k): (usize, usize, usize),
    seed: u64,
) -> candle_core::Result<ScoreCheck> {
    let requests = score_requests(cfg.vocab_size, rows, len, seed);
    let score = |device: &Device, compute: DType| -> candle_core::Result<Vec<distill_teacher::TopK>> {
        let model = random_model(cfg, seed, device, compute)?;
        score_with(&model, &requests, k, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    let (want, got) = (score(&Device::Cpu, DType::F32)?, score(device, compute)?);
    let (mut max_abs, mut kl, mut agree, mut n) = (0f64, 0f64, 0usize, 0usize);
    for (w, g) in want.iter().zip(&got) {
        for p in 0..w.tail_logprob.len() {
            let (wi, gi) = (&w.ids[p * k..(p + 1) * k], &g.ids[p * k..(p + 1) * k]);
            let (wl, gl) = (&w.logprobs[p * k..(p + 1) * k], &g.logprobs[p * k..(p + 1) * k]);
            // The device's log-probability of each of the CPU's ids; outside its own top k, its
            // k-th log-probability, an upper bound, stands in.
            let floor = gl.iter().fold(f32::INFINITY, |m, x| m.min(*x)) as f64;
            let mut q_mass = 0f64;
            for (j, id) in wi.iter().enumerate() {
                let q = match gi.iter().position(|x| x == id) {
                    Some(at) => {
                        max_abs = max_abs.max((wl[j] - gl[at]).abs() as f64);
                        gl[at] as f64
                    }
                    None => floor,
                };
                let pw = wl[j] as f64;
                kl += pw.exp() * (pw - q);
                q_mass += q.exp();
            }
            let (pt, qt) = (w.tail_logprob[p] as f64, (1.0 - q_mass).max(1e-6).ln());
            if pt.is_finite() {
                kl += pt.exp() * (pt - qt);
            }
            agree += usize::from(wi[0] == gi[0]);
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    Ok(ScoreCheck { max_abs, mean_kl: kl / n, top1_agreement: agree as f64 / n })
}

fn random_model(cfg: &LlamaConfig, seed: u64, device: &Device, compute: DType) -> candle_core::Result<Llama> {
    let weights = distill_models::init::random_weights(cfg, seed, device).map_err(candle_err)?;
    let weights: HashMap<String, Tensor> =
        weights.into_iter().map(|(n, t)| Ok((n, t.to_dtype(compute)?))).collect::<candle_core::Result<_>>()?;
    Llama::from_weights(cfg.clone(), &weights).map_err(candle_err)
}

/// Training speed and memory of a student of `cfg` on `device` in `compute`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSpeed {
    /// Tokens (rows × sequence length) per second over the timed steps.
    pub tokens_per_s: f64,
    pub steps: usize,
    pub loss_first: f64,
    pub loss_last: f64,
}

/// Times `steps` optimiser steps (after `warmup` untimed ones) on batches of `b` × `l` tokens.
pub fn time_training(
    cfg: &LlamaConfig,
    device: &Device,
    compute: DType,
    (b, l, k): (usize, usize, usize),
    (warmup, steps): (usize, usize),
) -> candle_core::Result<TrainSpeed> {
    let weights = distill_models::init::random_weights(cfg, 1, device).map_err(candle_err)?;
    let student = Student::with_compute(cfg.clone(), &weights, Some(compute)).map_err(candle_err)?;
    drop(weights);
    let schedule = Schedule { peak: 1e-3, warmup: 0, total: (warmup + steps) as u64, min_ratio: 0.1 };
    let mut optimizer = Optimizer::new(&student, AdamWConfig::default(), schedule, Some(1.0))?;
    let loss = LossConfig::default();
    let batches: Vec<Batch> = (0..4).map(|s| synthetic_batch(cfg.vocab_size, b, l, k, s)).collect();
    let mut losses = Vec::with_capacity(warmup + steps);
    let secs = timed(device, warmup, steps, |step| {
        let micro = student
            .batch_loss(&batches[step % batches.len()], &loss)?
            .ok_or_else(|| candle_core::Error::Msg(format!("rows of {l} tokens leave no scored position")))?;
        optimizer.step(&micro.objective)?;
        losses.push(micro.loss);
        Ok(())
    })?;
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    Ok(TrainSpeed { tokens_per_s: (steps * b * l) as f64 / secs, steps, loss_first: first, loss_last: last })
}

/// Teacher-scoring speed (tokens a second): all-position top-`k` of `rows` × `len` tokens
/// through `distill_teacher::score_with` on a random model of `cfg` in `compute`.
pub fn time_scoring(
    cfg: &LlamaConfig,
    device: &Device,
    compute: DType,
    (rows, len, k): (usize, usize, usize),
    (warmup, reps): (usize, usize),
) -> candle_core::Result<f64> {
    let model = random_model(cfg, 2, device, compute)?;
    let requests = score_requests(cfg.vocab_size, rows, len, 9);
    let secs = timed(device, warmup, reps, |_| {
        score_with(&model, &requests, k, 1.0).map(drop).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    Ok((reps * rows * len) as f64 / secs)
}

/// Runs `run(i)` for i in 0..warmup + reps and returns the seconds the last `reps` took, the
/// device synchronised at both ends of the timed span. `reps` must be at least 1.
fn timed(
    device: &Device,
    warmup: usize,
    reps: usize,
    mut run: impl FnMut(usize) -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    if reps == 0 {
        candle_core::bail!("nothing to time: at least one timed repetition is needed");
    }
    for i in 0..warmup {
        run(i)?;
    }
    device.synchronize()?;
    let started = Instant::now();
    for i in warmup..warmup + reps {
        run(i)?;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64())
}

fn candle_err(e: distill_models::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
