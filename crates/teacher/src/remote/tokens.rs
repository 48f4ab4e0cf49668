//! Token-exact work against `/v1/completions`: completing token-id prompts, and scoring given
//! tokens through `prompt_logprobs` (vLLM's extension, also offered by `distill serve`). This is
//! what training needs from a remote teacher: the top-k at exactly the tokens a student wrote,
//! with no re-tokenisation on the way.

use serde_json::{json, Value};

use super::{push_row, Failure, RemoteTeacher, MAX_REMOTE_TOP_K};
use crate::{Result, ScoreRequest};
use distill_kernels::TopK;
use distill_models::SamplingParams;

/// A completion of a token-id prompt: its text, and whether it ended on end-of-sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TextCompletion {
    pub text: String,
    pub ended_on_eos: bool,
}

impl RemoteTeacher {
    /// One completion per token-id prompt (the prompt already rendered, chat template included),
    /// sampled with `params` (prompt `i` with `seed + i`).
    pub fn complete_tokens(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<TextCompletion>> {
        self.fan_out(prompts, |endpoint, index, prompt| {
            let mut body = json!({
                "model": self.options.model,
                "prompt": prompt,
                "max_tokens": params.max_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed.wrapping_add(index as u64),
            });
            if !params.stop.is_empty() {
                body["stop"] = json!(params.stop);
            }
            let value = self.post(endpoint, "/v1/completions", &body, |_, _| false)?;
            let choice = &value["choices"][0];
            let text = choice["text"]
                .as_str()
                .ok_or_else(|| Failure::Fatal("the response has no `choices[0].text`".into()))?
                .to_string();
            let ended_on_eos = super::ended_on_eos(choice, &text, params);
            Ok(TextCompletion { text, ended_on_eos })
        })
    }

    /// The teacher's top-`k` log-probabilities for predicting tokens `from..` of each request,
    /// as [`crate::Teacher::score`] gives them: rows of width `k`, of which at most 20 (the APIs'
    /// cap) are filled; the tail is the mass the returned entries miss. Needs an endpoint that
    /// offers `prompt_logprobs` (vLLM, `distill serve`).
    pub fn score_tokens(&self, requests: &[ScoreRequest], k: usize) -> Result<Vec<TopK>> {
        let asked = k.min(MAX_REMOTE_TOP_K);
        self.fan_out(requests, |endpoint, _, request| {
            if request.from == 0 || request.from > request.token_ids.len() {
                return Err(Failure::Fatal(format!(
                    "`from` {} must be in 1..={}",
                    request.from,
                    request.token_ids.len()
                )));
            }
            let body = json!({
                "model": self.options.model,
                "prompt": request.token_ids,
                "max_tokens": 1,
                "temperature": 0,
                "prompt_logprobs": asked,
            });
            let value = self.post(endpoint, "/v1/completions", &body, |_, _| false).map_err(|f| match f {
                Failure::Fatal(e) if e.contains("prompt_logprobs") => Failure::Fatal(format!(
                    "{e}; scoring given tokens needs a server that offers `prompt_logprobs` (vLLM, distill serve)"
                )),
                other => other,
            })?;
            self.parse_prompt_logprobs(&value, request, k).map_err(Failure::Fatal)
        })
    }

    fn parse_prompt_logprobs(
        &self,
        value: &Value,
        request: &ScoreRequest,
        k: usize,
    ) -> std::result::Result<TopK, String> {
        let positions = value["choices"][0]["prompt_logprobs"].as_array().ok_or(
            "the response has no `prompt_logprobs`; scoring given tokens needs a server that offers them \
             (vLLM, distill serve)",
        )?;
        if positions.len() != request.token_ids.len() {
            return Err(format!(
                "`prompt_logprobs` has {} positions for a prompt of {} tokens",
                positions.len(),
                request.token_ids.len()
            ));
        }
        let mut top = TopK { k, ids: Vec::new(), logprobs: Vec::new(), tail_logprob: Vec::new() };
        for (position, entries) in positions.iter().enumerate().skip(request.from) {
            let entries =
                entries.as_object().ok_or_else(|| format!("`prompt_logprobs[{position}]` is not an object"))?;
            let mut row = Vec::with_capacity(entries.len());
            for (id, entry) in entries {
                let id: u32 =
                    id.parse().map_err(|_| format!("`prompt_logprobs[{position}]` key `{id}` is not a token id"))?;
                let logprob = entry["logprob"]
                    .as_f64()
                    .or_else(|| entry.as_f64())
                    .ok_or_else(|| format!("`prompt_logprobs[{position}][{id}]` has no logprob"))?;
                // The same tokenizer on both sides, checked where the server says how it
                // decodes a token: a different vocabulary would make every id mean another word.
                if position == request.from && row.is_empty() {
                    if let Some(theirs) = entry["decoded_token"].as_str() {
                        let ours = self.text.tokenizer.decode(&[id], false).map_err(|e| e.to_string())?;
                        if theirs != ours {
                            return Err(format!(
                                "the teacher decodes token {id} as {theirs:?} and the local tokenizer as {ours:?}: \
                                 they are not the same tokenizer; the teacher must share the student's vocabulary"
                            ));
                        }
                    }
                }
                row.push((id, logprob as f32));
            }
            row.sort_by(|a, b| b.1.total_cmp(&a.1));
            row.truncate(k);
            push_row(&mut top, &row, k);
        }
        Ok(top)
    }
}
