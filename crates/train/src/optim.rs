//! AdamW (PyTorch's semantics), the warmup + cosine learning-rate schedule, and gradient clipping.
//!
//! Update for step t (1-based), per parameter p with gradient g:
//! `p ← p·(1 − lr·wd)`; `m ← β1·m + (1 − β1)·g`; `v ← β2·v + (1 − β2)·g²`;
//! `p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)` — as `torch.optim.AdamW`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use distill_models::cpu::{f32_data, f32_data_mut, with_f32_data};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(alias = "learning_rate")]
    pub lr: f64,
    #[serde(alias = "adam_beta1")]
    pub beta1: f64,
    #[serde(alias = "adam_beta2")]
    pub beta2: f64,
    #[serde(alias = "adam_epsilon")]
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW over named variables. Moments are kept per name so they can be saved and restored.
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<(String, Var)>,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for (name, var) in &params {
            m.insert(name.clone(), var.as_tensor().zeros_like()?);
            v.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self { config, params, m, v, step: 0 })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr` (from the schedule). Parameters without a gradient are
    /// skipped entirely (no decay either), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`AdamW::step`] on the gradients times `grad_scale` (gradient clipping), without making
    /// the scaled copies.
    pub fn step_scaled(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (m, v, p) = (&self.m[name], &self.v[name], var.as_tensor());
            if [g, m, v, p]
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
            {
                // In place, without a temporary: the composed update below allocates ~8 tensors of
                // the parameter's size per step.
                let fused = Fused { c, lr, bias1, bias2, grad_scale };
                m.inplace_op2(g, &Moment { fused, second: false })?;
                v.inplace_op2(g, &Moment { fused, second: true })?;
                p.inplace_op3(m, v, &Update(fused))?;
                continue;
            }
            let scaled;
            let g = if grad_scale == 1.0 {
                g
            } else {
                scaled = (g * grad_scale)?;
                &scaled
            };
            let m = ((&self.m[name] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[name] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let denom = ((v.sqrt()? / bias2.sqrt())? + c.eps)?;
            let update = (m.div(&denom)? * (lr / bias1))?;
            var.set(&(decayed - update)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// Moments under `m.{name}` / `v.{name}` and the step count, for checkpoints. The tensors
    /// share storage with the optimizer, whose next step updates them in place: save them first.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (name, t) in &self.m {
            out.insert(format!("m.{name}"), t.clone());
        }
        for (name, t) in &self.v {
            out.insert(format!("v.{name}"), t.clone());
        }
        (out, self.step)
    }

    /// Restores what [`AdamW::state`] returned; every parameter's moments must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (name, var) in &self.params {
            for (prefix, store) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{name}");
                let t =
                    state.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks `{key}`")))?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        var.as_tensor().dims()
                    )));
                }
                // A copy, on the parameter's device: the moments are updated in place.
                let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
                store.insert(name.clone(), t.copy()?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The constants of one AdamW step, for the in-place CPU kernels.
#[derive(Clone, Copy)]
struct Fused {
    c: AdamWConfig,
    lr: f64,
    bias1: f64,
    bias2: f64,
    /// Multiplies the gradient (clipping).
    grad_scale: f64,
}

/// `m ← β1·m + (1 − β1)·g`, or with `second`, `v ← β2·v + (1 − β2)·g²`, in place (g times the
/// gradient scale).
struct Moment {
    fused: Fused,
    second: bool,
}

/// `p ← p·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`, in place.
struct Update(Fused);

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The data of an operand of the in-place kernels, which [`AdamW::step_scaled`] only calls on
/// contiguous f32 CPU tensors.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    f32_data(storage, layout).ok_or_else(|| candle_core::Error::Msg(NOT_F32.into()))
}

fn slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    f32_data_mut(storage, layout).ok_or_else(|| candle_core::Error::Msg(NOT_F32.into()))
}

const NOT_F32: &str = "the in-place AdamW kernels take contiguous f32 tensors";

impl candle_core::InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, g_l: &Layout) -> Result<()> {
        let (out, g) = (slice_mut(dst, dst_l)?, slice(g, g_l)?);
        let beta = if self.second { self.fused.c.beta2 } else { self.fused.c.beta1 } as f32;
        let (second, scale) = (self.second, self.fused.grad_scale as f32);
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(o, g)| {
            for (o, &g) in o.iter_mut().zip(g) {
                let g = g * scale;
                let x = if second { g * g } else { g };
                *o = beta * *o + (1.0 - beta) * x;
            }
        });
        Ok(())
    }
}

impl candle_core::InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let (p, m, v) = (slice_mut(dst, dst_l)?, slice(m, m_l)?, slice(v, v_l)?);
        let Fused { c, lr, bias1, bias2, .. } = self.0;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (step, sqrt_bias2, eps) = ((lr / bias1) as f32, bias2.sqrt() as f32, c.eps as f32);
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).for_each(|((p, m), v)| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                *p = *p * decay - step * (m / (v.sqrt() / sqrt_bias2 + eps));
            }
        });
        Ok(())
    }
}

/// Linear warmup to `peak` over `warmup` steps, then cosine decay to `peak · min_ratio` at `total`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
}

impl Schedule {
    /// Learning rate for the update numbered `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let floor = self.peak * self.min_ratio;
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The global L2 norm of the gradients of `params`.
pub fn grad_norm(grads: &GradStore, params: &[(String, Var)]) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += sum_of_squares(g)?;
        }
    }
    Ok(total.sqrt())
}

/// Σ g², read in place from a contiguous f32 CPU tensor (else through candle's ops).
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    let in_place = with_f32_data(g, |data| {
        data.par_chunks(CHUNK).map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>()).sum()
    });
    match in_place {
        Some(sum) => Ok(sum),
        None => g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>(),
    }
}

/// The factor that brings a gradient norm `norm` down to `max_norm` (1 when it is not above).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if norm > max_norm && norm > 0.0 {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, params)?;
    let scale = clip_scale(norm, max_norm);
    if scale != 1.0 {
        for (_, var) in params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The same update written out in f64 scalars, step by step.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], c: AdamWConfig) -> Vec<f64> {
        let mut p = p0.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            let t = (t + 1) as i32;
            for i in 0..p.len() {
                p[i] *= 1.0 - lr * c.weight_decay;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                let denom = v[i].sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
                p[i] -= lr / (1.0 - c.beta1.powi(t)) * m[i] / denom;
            }
        }
        p
    }

    #[test]
    fn adamw_matches_the_written_out_update_and_resumes_exactly() {
        let c = AdamWConfig { lr: 0.1, weight_decay: 0.1, ..Default::default() };
        let p0 = [0.5f64, -1.0, 2.0];
        let dev = Device::Cpu;
        // Loss Σ (p − target)² with targets chosen so gradients change sign over the steps.
        let target = Tensor::new(&[1.0f32, 0.0, -1.0], &dev).unwrap();
        let sched = Schedule { peak: 0.1, warmup: 2, total: 6, min_ratio: 0.1 };
        let run = |steps: std::ops::Range<u64>, opt: &mut AdamW, var: &Var, grads_seen: &mut Vec<Vec<f64>>| {
            for s in steps {
                let loss = (var.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                grads_seen.push(
                    g.get(var.as_tensor()).unwrap().to_vec1::<f32>().unwrap().iter().map(|x| *x as f64).collect(),
                );
                opt.step(&g, sched.lr(s)).unwrap();
            }
        };
        let var = Var::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], c).unwrap();
        let mut grads = Vec::new();
        run(0..6, &mut opt, &var, &mut grads);
        let lrs: Vec<f64> = (0..6).map(|s| sched.lr(s)).collect();
        let want = reference(&p0, &grads, &lrs, c);
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }

        // Stop after 3 steps, restore into a fresh optimizer, finish: bit-identical.
        let var2 = Var::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let mut first = AdamW::new(vec![("w".into(), var2.clone())], c).unwrap();
        run(0..3, &mut first, &var2, &mut Vec::new());
        let (state, step) = first.state();
        let var3 = Var::from_tensor(&var2.as_tensor().copy().unwrap()).unwrap();
        let mut second = AdamW::new(vec![("w".into(), var3.clone())], c).unwrap();
        second.load_state(&state, step).unwrap();
        run(3..6, &mut second, &var3, &mut Vec::new());
        assert_eq!(var3.as_tensor().to_vec1::<f32>().unwrap(), got);
    }

    #[test]
    fn in_place_kernels_match_the_composed_update() {
        // f32 on CPU takes the in-place kernels, f64 the composed ops; several parallel chunks.
        let c = AdamWConfig { lr: 0.01, weight_decay: 0.1, ..Default::default() };
        let n = 3 * CHUNK + 17;
        let dev = Device::Cpu;
        let init: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0).collect();
        let w: Vec<f64> = (0..n).map(|i| ((i * 104_729) % 997) as f64 / 498.5 - 1.0).collect();
        let run = |dtype: candle_core::DType| -> Vec<f64> {
            let var = Var::from_tensor(&Tensor::new(init.as_slice(), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let w = Tensor::new(w.as_slice(), &dev).unwrap().to_dtype(dtype).unwrap();
            let mut opt = AdamW::new(vec![("p".into(), var.clone())], c).unwrap();
            for step in 0..4 {
                // Gradient w + p: changes with p, so the moments see varied values.
                let p = var.as_tensor();
                let loss = ((p * &w).unwrap().sum_all().unwrap()
                    + (p.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
                .unwrap();
                opt.step_scaled(&loss.backward().unwrap(), 0.01 * (step + 1) as f64, 0.5).unwrap();
            }
            var.as_tensor().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap()
        };
        let (fused, composed) = (run(candle_core::DType::F32), run(candle_core::DType::F64));
        let moved = fused.iter().zip(&init).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(moved > 0.01, "the parameters barely moved ({moved})");
        let worst = fused.iter().zip(&composed).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-5, "in-place and composed AdamW differ by {worst}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule { peak: 1.0, warmup: 4, total: 14, min_ratio: 0.1 };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(9) - 0.55).abs() < 1e-12, "midpoint {}", s.lr(9));
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let dev = Device::Cpu;
        let a = Var::new(&[3.0f32], &dev).unwrap();
        let b = Var::new(&[4.0f32], &dev).unwrap();
        let loss =
            ((a.as_tensor().sqr().unwrap() + b.as_tensor().sqr().unwrap()).unwrap() * 0.5).unwrap().sum_all().unwrap();
        let mut grads = loss.backward().unwrap();
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(((ga * ga + gb * gb).sqrt() - 1.0).abs() < 1e-4);
    }
}
