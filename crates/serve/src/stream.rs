//! Streamed responses (`stream: true`): server-sent events in OpenAI's chunk format, ending with
//! an optional usage chunk and `data: [DONE]`. A client that disconnects drops the stream, which
//! closes the request's channel; the engine then frees its slot at the next step.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use distill_models::Completion;
use serde_json::{json, Value};

use crate::engine::Event;
use crate::routes::InFlight;
use crate::wire::{self, Endpoint};

struct StreamState {
    flight: InFlight,
    done: Vec<Option<Completion>>,
    /// Characters of text already sent per choice (`text_offset` of legacy logprobs).
    offsets: Vec<usize>,
    queue: VecDeque<SseEvent>,
    finished: bool,
}

pub(crate) fn respond(flight: InFlight) -> Response {
    let n = flight.req.n;
    let mut state =
        StreamState { flight, done: vec![None; n], offsets: vec![0; n], queue: VecDeque::new(), finished: false };
    if state.flight.req.endpoint == Endpoint::Chat {
        for index in 0..n {
            let choice = json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
            state.push_chunk(vec![choice]);
        }
    }
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), s));
            }
            if s.finished {
                return None;
            }
            let event = s.flight.rx.recv().await;
            s.handle(event).await;
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

impl StreamState {
    /// A chunk of this stream; with `include_usage`, every chunk has a `usage` field (null but
    /// for the last).
    fn chunk(&self, choices: Vec<Value>, usage: Value) -> SseEvent {
        let mut chunk = json!({
            "id": self.flight.id,
            "object": wire::object_names(self.flight.req.endpoint).1,
            "created": self.flight.created,
            "model": self.flight.req.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.flight.req.include_usage {
            chunk["usage"] = usage;
        }
        SseEvent::default().data(chunk.to_string())
    }

    fn push_chunk(&mut self, choices: Vec<Value>) {
        let event = self.chunk(choices, Value::Null);
        self.queue.push_back(event);
    }

    fn fail(&mut self, message: &str) {
        let error = crate::ApiError::internal("generating", message);
        self.queue.push_back(SseEvent::default().data(error.body().to_string()));
        self.finished = true;
    }

    async fn handle(&mut self, event: Option<Event>) {
        let tokenizer = &self.flight.app.model.tokenizer;
        let k = self.flight.req.logprobs;
        match event {
            Some(Event::Delta { index, text, logprobs, generated }) => {
                self.flight.usage.generated(index, generated);
                let choice = match self.flight.req.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "delta": {"content": text},
                        "logprobs": k.map(|k| wire::chat_logprobs(tokenizer, &logprobs, k)),
                        "finish_reason": null,
                    }),
                    Endpoint::Completions => {
                        let offset = self.offsets.get(index).copied().unwrap_or(0);
                        json!({
                            "index": index,
                            "text": text,
                            "logprobs": k.map(|k| wire::completion_logprobs(tokenizer, &logprobs, k, offset)),
                            "finish_reason": null,
                        })
                    }
                };
                if let Some(o) = self.offsets.get_mut(index) {
                    *o += text.len();
                }
                self.push_chunk(vec![choice]);
            }
            Some(Event::Done { index, completion }) => {
                self.flight.usage.generated(index, completion.token_ids.len());
                let reason = wire::finish_reason(completion.finish_reason);
                let choice = match self.flight.req.endpoint {
                    Endpoint::Chat => json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}),
                    Endpoint::Completions => {
                        json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
                    }
                };
                self.push_chunk(vec![choice]);
                if let Some(slot) = self.done.get_mut(index) {
                    *slot = Some(completion);
                }
                if self.done.iter().all(Option::is_some) {
                    self.end().await;
                }
            }
            Some(Event::Failed(e)) => self.fail(&e),
            None => self.fail("the engine dropped the request"),
        }
    }

    /// All choices ended: usage chunk if asked, capture and usage committed, then `[DONE]`.
    async fn end(&mut self) {
        let completions: Vec<Completion> = self.done.iter_mut().filter_map(Option::take).collect();
        let generated: usize = completions.iter().map(|c| c.token_ids.len()).sum();
        if self.flight.req.include_usage {
            let event = self.chunk(Vec::new(), wire::usage(self.flight.prompt_tokens, generated));
            self.queue.push_back(event);
        }
        match self.flight.finish(&completions, None).await {
            Ok(()) => self.queue.push_back(SseEvent::default().data("[DONE]")),
            Err(e) => self.queue.push_back(SseEvent::default().data(e.body().to_string())),
        }
        self.finished = true;
    }
}
