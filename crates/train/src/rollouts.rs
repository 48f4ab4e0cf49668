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
use crate::cross::data::read_sequence;
use crate::cross::{CrossSequence, VocabMap};
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
/// A local teacher runs on `device`, the student's.
pub fn open_teacher(
    cfg: &OnPolicyConfig,
    student: &ModelText,
    student_vocab: usize,
    device: &Device,
) -> Result<Box<dyn Teacher>> {
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
        let teacher = distill_models::load(&cfg.teacher, device)
            .map_err(|e| Error::from(e).context(format!("loading on_policy.teacher `{}`", cfg.teacher)))?;
        Ok(Box::new(LocalTeacher::new(teacher)))
    }
}

pub struct Rollouts {
    cfg: OnPolicyConfig,
    teacher: Box<dyn Teacher>,
    /// The prompts rendered for the teacher.
    prompts: Vec<Vec<u32>>,
    /// With a student of another tokenizer: its text side and the prompts rendered for it.
    student: Option<(ModelText, Vec<Vec<u32>>)>,
    k: usize,
    pack: PackOptions,
    /// Completion tokens the teacher scored in this session.
    pub teacher_tokens: u64,
}

impl Rollouts {
    /// Reads the prompts, rendered with the teacher's chat template (and the student's, when
    /// `cross_tokenizer`); refuses a teacher whose tokenizer is not the `student`'s unless
    /// `cross_tokenizer` (a remote one is checked again on its first answer).
    pub fn new(
        cfg: &OnPolicyConfig,
        teacher: Box<dyn Teacher>,
        student: &ModelText,
        k: usize,
        seq_len: usize,
        batch_size: usize,
        cross_tokenizer: bool,
    ) -> Result<Self> {
        let same = teacher.tokenizer().fingerprint() == student.tokenizer.fingerprint();
        if !same && !cross_tokenizer {
            return Err(Error::Config(format!(
                "on_policy.teacher `{}` has another tokenizer than the student\nHINT: add a [cross_tokenizer] section to train across vocabularies, or use a teacher that shares the student's",
                cfg.teacher
            )));
        }
        let records = read_prompt_file(&cfg.prompts)?;
        let rendered = |template, name: &str, tokenizer: &distill_models::TextTokenizer| {
            records
                .iter()
                .map(|r| {
                    let text = render(template, name, &r.prompt, cfg.chat, None)
                        .map_err(|e| Error::from(e).context(format!("{}:{}", cfg.prompts.display(), r.line)))?;
                    Ok(tokenizer.encode(&text, true)?)
                })
                .collect::<Result<Vec<_>>>()
        };
        let prompts = rendered(teacher.chat_template(), teacher.id(), teacher.tokenizer())?;
        let student = match same {
            true => None,
            false => {
                let prompts = rendered(student.chat_template.as_ref(), &student.source, &student.tokenizer)?;
                Some((student.clone(), prompts))
            }
        };
        let pack = PackOptions { seq_len, batch_size, seed: 0, pad_id: 0 };
        Ok(Self { cfg: cfg.clone(), teacher, prompts, student, k, pack, teacher_tokens: 0 })
    }

    pub fn teacher(&self) -> &dyn Teacher {
        self.teacher.as_ref()
    }

    /// Teacher alternatives kept per rollout token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Which prompts rollout micro-batch `m` completes, and its sampling settings.
    fn plan(&self, m: u64, seed: u64) -> (Vec<usize>, SamplingParams) {
        let cfg = &self.cfg;
        // The how-manieth rollout this is decides which prompts it completes.
        let index = (m as f64 * cfg.fraction).floor() as usize;
        let chosen = (0..cfg.rollouts).map(|i| (index * cfg.rollouts + i) % self.prompts.len()).collect();
        let params = SamplingParams {
            temperature: cfg.temperature,
            seed: seed.wrapping_add(m.wrapping_mul(SAMPLE_SEED_STRIDE)),
            max_tokens: cfg.max_tokens,
            ..SamplingParams::default()
        };
        (chosen, params)
    }

    /// [`Self::batches`] for a student with another tokenizer: the completions (the student's,
    /// or the teacher's with `sampler = "teacher"`) as text, re-tokenised by the teacher to be
    /// scored, and read back by the student aligned by bytes. Sequences the student's tokenizer
    /// does not read back byte for byte are left out.
    pub fn cross_sequences(
        &mut self,
        student: &Student,
        m: u64,
        seed: u64,
        map: &mut VocabMap,
        seq_len: usize,
    ) -> Result<Vec<CrossSequence>> {
        let Some((text, student_prompts)) = &self.student else {
            return Err(Error::Config("cross-tokenizer rollouts need a student with another tokenizer".into()));
        };
        let (chosen, params) = self.plan(m, seed);
        let t_tok = self.teacher.tokenizer();
        let teacher_end = t_tok.eos_id().or(self.teacher.stop_ids().first().copied());
        // Teacher-space completions, the teacher's end of turn included where it stopped.
        let completions: Vec<Vec<u32>> = match self.cfg.sampler {
            Sampler::Student => {
                let detached: HashMap<String, Tensor> =
                    student.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
                let copy = Llama::from_weights(student.model.config().clone(), &detached)?;
                let prompts: Vec<Vec<u32>> = chosen.iter().map(|&i| student_prompts[i].clone()).collect();
                let done = generate(&copy, &text.tokenizer, &prompts, &params, &text.stop_ids, |_, _| {})?;
                done.into_iter()
                    .map(|c| {
                        let ended = c.stop_token.is_some();
                        let bytes: Vec<u8> = c
                            .token_ids
                            .iter()
                            .filter(|&&id| !text.tokenizer.is_special(id))
                            .flat_map(|&id| text.tokenizer.token_bytes(id))
                            .collect();
                        let valid = std::str::from_utf8(&bytes).map(str::len).unwrap_or_else(|e| e.valid_up_to());
                        let mut ids = t_tok.encode(&String::from_utf8_lossy(&bytes[..valid]), false)?;
                        ids.extend(teacher_end.filter(|_| ended));
                        Ok(ids)
                    })
                    .collect::<Result<_>>()?
            }
            Sampler::Teacher => {
                let prompts: Vec<Vec<u32>> = chosen.iter().map(|&i| self.prompts[i].clone()).collect();
                self.teacher
                    .generate(&prompts, &params)
                    .map_err(|e| Error::from(e).context("the on_policy teacher completing prompts"))?
            }
        };
        let kept: Vec<(usize, Vec<u32>)> =
            chosen.iter().copied().zip(completions).filter(|(_, ids)| !ids.is_empty()).collect();
        let requests: Vec<ScoreRequest> = kept
            .iter()
            .map(|(i, ids)| ScoreRequest {
                token_ids: self.prompts[*i].iter().chain(ids).copied().collect(),
                from: self.prompts[*i].len(),
            })
            .collect();
        let scored = self
            .teacher
            .score(&requests, self.k, 1.0)
            .map_err(|e| Error::from(e).context("the on_policy teacher scoring rollouts"))?;
        let student_end = text.tokenizer.eos_id().or(text.stop_ids.first().copied());
        let mut out = Vec::new();
        for ((n, ((i, _), r)), top) in kept.iter().zip(requests).enumerate().zip(scored) {
            let seq = Sequence::from_scored(n as u32, format!("rollout-{m}-{n}"), 0, r.token_ids, r.from, top);
            self.teacher_tokens += seq.completion_len() as u64;
            let prompt = student_prompts[*i].clone();
            let read = read_sequence(&seq, self.k, t_tok, &text.tokenizer, student_end, prompt, map);
            out.extend(read.and_then(|s| s.truncate(seq_len)));
        }
        Ok(out)
    }

    /// The rollout batches of micro-batch `m`: a function of `m`, `seed` and the student's
    /// weights only, so a resumed run redoes them identically.
    pub fn batches(&mut self, student: &Student, m: u64, seed: u64) -> Result<Vec<Batch>> {
        let (chosen, params) = self.plan(m, seed);
        let chosen: Vec<Vec<u32>> = chosen.into_iter().map(|i| self.prompts[i].clone()).collect();
        let cfg = &self.cfg;
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
