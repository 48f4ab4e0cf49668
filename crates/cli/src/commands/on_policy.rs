//! On-policy distillation inside `distill train` (`[on_policy]`): the student completes prompts
//! with its current weights, the teacher scores every token of those completions, and the packed
//! result is trained on with the generalized JSD(β). With `sampler = "teacher"` the teacher
//! writes the completions instead: online distillation, no store. The teacher is a local model
//! or an OpenAI-compatible server (`teacher = "http://…"`) that scores given tokens through
//! `prompt_logprobs`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use distill_models::{generate, Llama, LoadedModel, ModelText, SamplingParams, TextTokenizer};
use distill_store::{pack_sequences, Batch, PackOptions, Sequence};
use distill_teacher::remote::{first_model, RemoteOptions, RemoteTeacher};
use distill_teacher::{LocalTeacher, ScoreRequest, Teacher};
use distill_train::config::{OnPolicyConfig, Sampler};
use distill_train::trainer::Student;

use crate::commands::generate::render_with;
use crate::prompts::read_prompt_file;

/// Whether micro-batch `m` (counted over the whole run) is a rollout: exactly ⌊λ·M⌋ of the first
/// M micro-batches are, spread evenly.
pub fn is_rollout(m: u64, fraction: f64) -> bool {
    ((m + 1) as f64 * fraction).floor() > (m as f64 * fraction).floor()
}

/// Where the teacher runs.
enum TeacherSide {
    Local(Box<LocalTeacher>),
    Remote(Box<RemoteTeacher>),
}

pub struct Rollouts {
    cfg: OnPolicyConfig,
    teacher: TeacherSide,
    /// The shared tokenizer and its stop ids (the teacher's, or with a remote teacher the
    /// student's, which it must equal).
    tokenizer: TextTokenizer,
    stop_ids: Vec<u32>,
    prompts: Vec<Vec<u32>>,
    k: usize,
    pack: PackOptions,
    /// Completion tokens the teacher scored in this session.
    pub teacher_tokens: u64,
}

impl Rollouts {
    /// Loads (or connects to) the teacher and reads the prompts; refuses a local teacher whose
    /// tokenizer is not the student's (a remote one is checked on its first answer). `student`
    /// is the student's tokenizer and chat template.
    pub fn new(cfg: &OnPolicyConfig, student: &ModelText, k: usize, seq_len: usize, batch_size: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&cfg.fraction) || !(0.0..=1.0).contains(&cfg.beta) {
            bail!("on_policy.fraction and on_policy.beta must be in [0, 1]");
        }
        if cfg.rollouts == 0 || cfg.max_tokens == 0 {
            bail!("on_policy.rollouts and on_policy.max_tokens must be at least 1");
        }
        let remote = cfg.teacher.starts_with("http://") || cfg.teacher.starts_with("https://");
        let teacher = if remote {
            let api_key = std::env::var("DISTILL_TEACHER_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).ok();
            let timeout = Duration::from_secs(300);
            let model = match &cfg.teacher_model {
                Some(m) => m.clone(),
                None => first_model(&cfg.teacher, api_key.as_deref(), timeout)
                    .with_context(|| format!("asking on_policy.teacher `{}` for its model", cfg.teacher))?,
            };
            let options = RemoteOptions {
                urls: vec![cfg.teacher.clone()],
                model,
                concurrency: cfg.teacher_concurrency.max(1),
                api_key,
                timeout,
                attempts: 8,
            };
            let remote = RemoteTeacher::new(options, student.tokenizer.clone(), student.stop_ids.clone())?;
            TeacherSide::Remote(Box::new(remote))
        } else {
            let teacher: LoadedModel = distill_models::load(&cfg.teacher, &Device::Cpu)
                .with_context(|| format!("loading on_policy.teacher `{}`", cfg.teacher))?;
            if teacher.tokenizer.fingerprint() != student.tokenizer.fingerprint() {
                bail!(
                    "on_policy.teacher `{}` has another tokenizer than the student; the teacher must share the student's vocabulary",
                    cfg.teacher
                );
            }
            TeacherSide::Local(Box::new(LocalTeacher::new(teacher)))
        };
        // Prompts are rendered with the teacher's template when it is here, else the student's.
        let (template, name, tokenizer, stop_ids) = match &teacher {
            TeacherSide::Local(t) => {
                (t.model.chat_template.as_ref(), &t.model.source, &t.model.tokenizer, &t.model.stop_ids)
            }
            TeacherSide::Remote(_) => {
                (student.chat_template.as_ref(), &student.source, &student.tokenizer, &student.stop_ids)
            }
        };
        let records = read_prompt_file(&cfg.prompts)?;
        let prompts = records
            .iter()
            .map(|r| {
                let text = render_with(template, name, &r.prompt, cfg.chat, None)
                    .with_context(|| format!("{}:{}", cfg.prompts.display(), r.line))?;
                Ok(tokenizer.encode(&text, true)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let (tokenizer, stop_ids) = (tokenizer.clone(), stop_ids.clone());
        let pack = PackOptions { seq_len, batch_size, seed: 0, pad_id: 0 };
        Ok(Self { cfg: cfg.clone(), teacher, tokenizer, stop_ids, prompts, k, pack, teacher_tokens: 0 })
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
            seed: seed.wrapping_add(m.wrapping_mul(1_000_003)),
            max_tokens: cfg.max_tokens,
            ..SamplingParams::default()
        };
        // Each completion's tokens, its stop token included.
        let completions: Vec<Vec<u32>> = match (cfg.sampler, &self.teacher) {
            (Sampler::Student, _) => {
                let detached: std::collections::HashMap<String, Tensor> =
                    student.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
                let copy = Llama::from_weights(student.model.config().clone(), &detached)?;
                self.sample(&copy, &chosen, &params)?
            }
            (Sampler::Teacher, TeacherSide::Local(t)) => self.sample(&t.model.model, &chosen, &params)?,
            (Sampler::Teacher, TeacherSide::Remote(t)) => t
                .complete_tokens(&chosen, &params)
                .context("the on_policy teacher completing prompts")?
                .into_iter()
                .map(|c| {
                    let mut ids = self.tokenizer.encode(&c.text, false)?;
                    if c.ended_on_eos {
                        ids.extend(self.stop_ids.first());
                    }
                    Ok(ids)
                })
                .collect::<Result<_>>()?,
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
        let scored = match &self.teacher {
            TeacherSide::Local(t) => t.score(&requests, self.k, 1.0)?,
            TeacherSide::Remote(t) => {
                t.score_tokens(&requests, self.k).context("the on_policy teacher scoring rollouts")?
            }
        };
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

    /// One completion per prompt from a local model, its stop token included.
    fn sample(&self, model: &Llama, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
        let completions = generate(model, &self.tokenizer, prompts, params, &self.stop_ids, |_, _| {})?;
        Ok(completions
            .into_iter()
            .map(|c| {
                let mut ids = c.token_ids;
                ids.extend(c.stop_token);
                ids
            })
            .collect())
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
