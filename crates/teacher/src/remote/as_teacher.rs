//! [`RemoteTeacher`] as a [`Teacher`]: chat completions with log-probabilities for
//! `generate_scored`, `/v1/completions` for `generate`, `prompt_logprobs` for `score`.

use distill_kernels::packed::Precision;
use distill_kernels::TopK;
use distill_models::{ChatTemplate, SamplingParams, TextTokenizer};

use super::{EndpointReport, RemoteTeacher, MAX_REMOTE_TOP_K};
use crate::{Error, Result, ScoreRequest, ScoredCompletion, Teacher, TeacherIdentity, TeacherPrompt};

/// A remote teacher returns at most [`MAX_REMOTE_TOP_K`] alternatives with a completion.
pub(super) fn check_remote_k(k: usize) -> Result<()> {
    if k == 0 || k > MAX_REMOTE_TOP_K {
        return Err(Error::Input(format!(
            "k = {k}: OpenAI-compatible endpoints return 1 to {MAX_REMOTE_TOP_K} alternatives per token; use --k 20"
        )));
    }
    Ok(())
}

/// The APIs give log-probabilities at temperature 1 only.
fn check_temperature_one(temperature: f32) -> Result<()> {
    if temperature != 1.0 {
        return Err(Error::Input(
            "remote teachers return temperature-1 log-probabilities; drop --logprob-temperature".into(),
        ));
    }
    Ok(())
}

impl Teacher for RemoteTeacher {
    fn id(&self) -> &str {
        &self.label
    }

    fn tokenizer(&self) -> &TextTokenizer {
        &self.text.tokenizer
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.text.chat_template.as_ref()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn stop_ids(&self) -> &[u32] {
        &self.text.stop_ids
    }

    /// Endpoints may change between resumed runs; the model they serve may not.
    fn identity(&self) -> Result<TeacherIdentity> {
        let name = format!("remote:{}", self.options.model);
        let hash = distill_store::sha256_hex(name.as_bytes());
        // The endpoints compute; the local copy only tokenizes.
        Ok(TeacherIdentity { name, hash, matmuls: Precision::F32 })
    }

    fn check_signal(&self, k: usize, temperature: f32) -> Result<()> {
        check_remote_k(k)?;
        check_temperature_one(temperature)
    }

    fn needs_messages(&self) -> bool {
        true
    }

    /// All of them: the requests fan out over every endpoint's workers at once.
    fn prompts_per_call(&self, _batch_size: usize) -> usize {
        usize::MAX
    }

    /// Through `/v1/completions` with token-id prompts; the text is tokenized again locally.
    fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
        self.complete_tokens(prompts, params)?
            .into_iter()
            .map(|c| {
                let mut ids = self.text.tokenizer.encode(&c.text, false)?;
                if c.ended_on_eos {
                    ids.extend(self.text.stop_ids.first());
                }
                Ok(ids)
            })
            .collect()
    }

    /// Through the chat API with each prompt's messages (a plain-text prompt is refused).
    fn generate_scored(
        &self,
        prompts: &[TeacherPrompt],
        params: &SamplingParams,
        k: usize,
        temperature: f32,
    ) -> Result<Vec<ScoredCompletion>> {
        check_temperature_one(temperature)?;
        let conversations = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.messages.clone().ok_or_else(|| {
                    Error::Input(format!(
                        "prompt {} of the batch is plain text: remote teachers are asked through the chat API; \
                         add --chat or use `messages`",
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .complete_chats(&conversations, params, k)?
            .into_iter()
            .map(|c| ScoredCompletion { token_ids: c.token_ids, top: c.top })
            .collect())
    }

    /// Through `prompt_logprobs` (vLLM, `distill serve`): see [`Self::score_tokens`].
    fn score(&self, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>> {
        check_temperature_one(temperature)?;
        self.score_tokens(requests, k)
    }

    fn endpoints(&self) -> Vec<EndpointReport> {
        self.report()
    }
}
