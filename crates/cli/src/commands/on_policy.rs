//! On-policy distillation inside `distill train` (`[on_policy]`): the student completes prompts
//! with its current weights, the teacher scores every token of those completions, and the packed
//! result is trained on with the generalized JSD(β). With `sampler = "teacher"` the teacher
//! writes the completions instead: online distillation, no store.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use distill_models::{generate, Llama, LoadedModel, SamplingParams};
use distill_store::{pack_sequences, Batch, PackOptions, Sequence};
use distill_teacher::{LocalTeacher, ScoreRequest, Teacher};
use distill_train::config::{OnPolicyConfig, Sampler};
use distill_train::trainer::Student;

use crate::commands::generate::render;
use crate::prompts::read_prompt_file;

/// Whether micro-batch `m` (counted over the whole run) is a rollout: exactly ⌊λ·M⌋ of the first
/// M micro-batches are, spread evenly.
pub fn is_rollout(m: u64, fraction: f64) -> bool {
    ((m + 1) as f64 * fraction).floor() > (m as f64 * fraction).floor()
}

pub struct Rollouts {
    cfg: OnPolicyConfig,
    teacher: LocalTeacher,
    prompts: Vec<Vec<u32>>,
    k: usize,
    pack: PackOptions,
    /// Completion tokens the teacher scored in this session.
    pub teacher_tokens: u64,
}

impl Rollouts {
    /// Loads the teacher and the prompts; refuses a teacher whose tokenizer is not the student's.
    pub fn new(
        cfg: &OnPolicyConfig,
        student_tokenizer: &str,
        k: usize,
        seq_len: usize,
        batch_size: usize,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&cfg.fraction) || !(0.0..=1.0).contains(&cfg.beta) {
            bail!("on_policy.fraction and on_policy.beta must be in [0, 1]");
        }
        if cfg.rollouts == 0 || cfg.max_tokens == 0 {
            bail!("on_policy.rollouts and on_policy.max_tokens must be at least 1");
        }
        let teacher: LoadedModel = distill_models::load(&cfg.teacher, &Device::Cpu)
            .with_context(|| format!("loading on_policy.teacher `{}`", cfg.teacher))?;
        if teacher.tokenizer.fingerprint() != student_tokenizer {
            bail!(
                "on_policy.teacher `{}` has another tokenizer than the student; the teacher must share the student's vocabulary",
                cfg.teacher
            );
        }
        let records = read_prompt_file(&cfg.prompts)?;
        let prompts = records
            .iter()
            .map(|r| {
                let text = render(&teacher, &r.prompt, cfg.chat, None)
                    .with_context(|| format!("{}:{}", cfg.prompts.display(), r.line))?;
                Ok(teacher.tokenizer.encode(&text, true)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let pack = PackOptions { seq_len, batch_size, seed: 0, pad_id: 0 };
        Ok(Self { cfg: cfg.clone(), teacher: LocalTeacher::new(teacher), prompts, k, pack, teacher_tokens: 0 })
    }

    /// The rollout batches of micro-batch `m`: a function of `m`, `seed` and the student's
    /// weights only, so a resumed run redoes them identically.
    pub fn batches(&mut self, student: &Student, m: u64, seed: u64) -> Result<Vec<Batch>> {
        let cfg = &self.cfg;
        // The how-manieth rollout this is decides which prompts it completes.
        let index = (m as f64 * cfg.fraction).floor() as usize;
        let chosen: Vec<Vec<u32>> =
            (0..cfg.rollouts).map(|i| self.prompts[(index * cfg.rollouts + i) % self.prompts.len()].clone()).collect();
        let student_copy;
        let sampler = match cfg.sampler {
            Sampler::Student => {
                let detached: std::collections::HashMap<String, Tensor> =
                    student.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
                student_copy = Llama::from_weights(student.model.config().clone(), &detached)?;
                &student_copy
            }
            Sampler::Teacher => &self.teacher.model.model,
        };
        let tokenizer = &self.teacher.model.tokenizer;
        let params = SamplingParams {
            temperature: cfg.temperature,
            seed: seed.wrapping_add(m.wrapping_mul(1_000_003)),
            max_tokens: cfg.max_tokens,
            ..SamplingParams::default()
        };
        let completions = generate(sampler, tokenizer, &chosen, &params, &self.teacher.model.stop_ids, |_, _| {})?;
        let mut requests = Vec::with_capacity(chosen.len());
        for (prompt, c) in chosen.iter().zip(completions) {
            let mut ids = c.token_ids;
            ids.extend(c.stop_token);
            if !ids.is_empty() {
                requests
                    .push(ScoreRequest { token_ids: prompt.iter().chain(&ids).copied().collect(), from: prompt.len() });
            }
        }
        let scored = self.teacher.score(&requests, self.k, 1.0)?;
        let sequences: Vec<Sequence> = requests
            .into_iter()
            .zip(scored)
            .enumerate()
            .map(|(i, (r, top))| Sequence {
                prompt_index: i as u32,
                prompt_id: format!("rollout-{m}-{i}"),
                sample: 0,
                prompt_len: r.from as u32,
                token_ids: r.token_ids,
                topk_ids: top.ids,
                topk_logprobs: top.logprobs,
                tail_logprobs: top.tail_logprob,
            })
            .collect();
        self.teacher_tokens += sequences.iter().map(Sequence::completion_len).sum::<usize>() as u64;
        Ok(pack_sequences(sequences, self.k, &self.pack)?)
    }
}

#[cfg(test)]
mod tests {
    use super::is_rollout;

    #[test]
    fn the_rollout_share_is_exact_and_spread_out() {
        for (fraction, expected) in [(0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)] {
            let rollouts: Vec<u64> = (0..100).filter(|&m| is_rollout(m, fraction)).collect();
            assert_eq!(rollouts.len(), expected, "λ = {fraction}");
        }
        let half: Vec<bool> = (0..6).map(|m| is_rollout(m, 0.5)).collect();
        assert_eq!(half, [false, true, false, true, false, true]);
    }
}
