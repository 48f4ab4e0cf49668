//! Batches made by a teacher inside the training loop (`[on_policy]`): the student completes
//! prompts with its current weights, the teacher scores every token of those completions, and the
//! packed result is trained on with the generalized JSD(β). With `sampler = "teacher"` the teacher
//! writes the completions instead: online distillation, no store. Any [`Teacher`] does: a local
//! model, or an OpenAI-compatible server that scores given tokens through `prompt_logprobs`.

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{Device, Tensor};
use distill_models::{generate, Completion, Llama, ModelText, SamplingParams};
use distill_store::{pack_sequences, Batch, PackOptions, Sequence};
use distill_teacher::prompts::{read_prompt_file, render};
use distill_teacher::remote::{RemoteOptions, RemoteTeacher};
use distill_teacher::{LocalTeacher, ScoreRequest, Teacher, SAMPLE_SEED_STRIDE};

use crate::config::{OnPolicyConfig, Sampler};
use crate::error::{Error, Result};
use crate::student::Student;

/// Whether micro-batch `m` (counted over the whole run) is a rollout: exactly ⌊λ·M⌋ of the first
/// M micro-batches are, spread evenly.
pub fn is_rollout(m: u64, fraction: f64) -> bool {
    ((m + 1) as f64 * fraction).floor() > (m as f64 * fraction).floor()
}

/// Requests in flight, attempts and timeout of an on-policy teacher named by URL.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(300);
const REMOTE_ATTEMPTS: usize = 8;

/// The teacher `[on_policy]` names: a model loaded here, or an OpenAI-compatible server (its key
/// from DISTILL_TEACHER_API_KEY or OPENAI_API_KEY), which then shares the `student`'s tokenizer.
pub fn open_teacher(cfg: &OnPolicyConfig, student: &ModelText, student_vocab: usize) -> Result<Box<dyn Teacher>> {
    let remote = cfg.teacher.starts_with("http://") || cfg.teacher.starts_with("https://");
    if remote {
        let options = RemoteOptions::from_env(
            vec![cfg.teacher.clone()],
            cfg.teacher_model.clone(),
            cfg.teacher_concurrency,
            REMOTE_TIMEOUT,
            REMOTE_ATTEMPTS,
        )
        .map_err(|e| Error::from(e).context(format!("asking on_policy.teacher `{}` for its model", cfg.teacher)))?;
        Ok(Box::new(RemoteTeacher::new(options, student.clone(), student_vocab)?))
    } else {
        let teacher = distill_models::load(&cfg.teacher, &Device::Cpu)
            .map_err(|e| Error::from(e).context(format!("loading on_policy.teacher `{}`", cfg.teacher)))?;
        Ok(Box::new(LocalTeacher::new(teacher)))
    }
}

pub struct Rollouts {
    cfg: OnPolicyConfig,
    teacher: Box<dyn Teacher>,
    prompts: Vec<Vec<u32>>,
    k: usize,
    pack: PackOptions,
    /// Completion tokens the teacher scored in this session.
    pub teacher_tokens: u64,
}

impl Rollouts {
    /// Reads the prompts, rendered with the teacher's chat template; refuses a teacher whose
    /// tokenizer is not the `student`'s (a remote one is checked again on its first answer).
    pub fn new(
        cfg: &OnPolicyConfig,
        teacher: Box<dyn Teacher>,
        student: &ModelText,
        k: usize,
        seq_len: usize,
        batch_size: usize,
    ) -> Result<Self> {
        if teacher.tokenizer().fingerprint() != student.tokenizer.fingerprint() {
            return Err(Error::Config(format!(
                "on_policy.teacher `{}` has another tokenizer than the student; the teacher must share the student's vocabulary",
                cfg.teacher
            )));
        }
        let records = read_prompt_file(&cfg.prompts)?;
        let prompts = records
            .iter()
            .map(|r| {
                let text = render(teacher.chat_template(), teacher.id(), &r.prompt, cfg.chat, None)
                    .map_err(|e| Error::from(e).context(format!("{}:{}", cfg.prompts.display(), r.line)))?;
                Ok(teacher.tokenizer().encode(&text, true)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let pack = PackOptions { seq_len, batch_size, seed: 0, pad_id: 0 };
        Ok(Self { cfg: cfg.clone(), teacher, prompts, k, pack, teacher_tokens: 0 })
    }

    /// The rollout batches of micro-batch `m`: a function of `m`, `seed` and the student's
    /// weights only, so a resumed run redoes them identically.
    pub fn batches(&mut self, student: &Student, m: u64, seed: u64) -> Result<Vec<Batch>> {
        let cfg = &self.cfg;
        // The how-manieth rollout this is decides which prompts it completes.
        let index = (m as f64 * cfg.fraction).floor() as usize;
        let chosen: Vec<Vec<u32>> =
            (0..cfg.rollouts).map(|i| self.prompts[(index * cfg.rollouts + i) % self.prompts.len()].clone()).collect();
        let params = SamplingParams {
            temperature: cfg.temperature,
            seed: seed.wrapping_add(m.wrapping_mul(SAMPLE_SEED_STRIDE)),
            max_tokens: cfg.max_tokens,
            ..SamplingParams::default()
        };
        // Each completion's tokens, its stop token included.
        let completions: Vec<Vec<u32>> = match cfg.sampler {
            Sampler::Student => {
                let detached: HashMap<String, Tensor> =
                    student.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
                let copy = Llama::from_weights(student.model.config().clone(), &detached)?;
                self.sample(&copy, &chosen, &params)?
            }
            Sampler::Teacher => self
                .teacher
                .generate(&chosen, &params)
                .map_err(|e| Error::from(e).context("the on_policy teacher completing prompts"))?,
        };
        let requests: Vec<ScoreRequest> = chosen
            .iter()
            .zip(completions)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(prompt, ids)| ScoreRequest {
                token_ids: prompt.iter().chain(&ids).copied().collect(),
                from: prompt.len(),
            })
            .collect();
        let scored = self
            .teacher
            .score(&requests, self.k, 1.0)
            .map_err(|e| Error::from(e).context("the on_policy teacher scoring rollouts"))?;
        let sequences: Vec<Sequence> = requests
            .into_iter()
            .zip(scored)
            .enumerate()
            .map(|(i, (r, top))| {
                Sequence::from_scored(i as u32, format!("rollout-{m}-{i}"), 0, r.token_ids, r.from, top)
            })
            .collect();
        self.teacher_tokens += sequences.iter().map(Sequence::completion_len).sum::<usize>() as u64;
        Ok(pack_sequences(sequences, self.k, &self.pack)?)
    }

    /// One completion per prompt from the student's weights, its stop token included.
    fn sample(&self, model: &Llama, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
        let (tokenizer, stop_ids) = (self.teacher.tokenizer(), self.teacher.stop_ids());
        let completions = generate(model, tokenizer, prompts, params, stop_ids, |_, _| {})?;
        Ok(completions.into_iter().map(Completion::ids_with_stop).collect())
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
