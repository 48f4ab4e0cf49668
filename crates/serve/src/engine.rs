//! Continuous batching on one model. A worker thread owns the model and one KV cache for every
//! sequence in flight: each iteration it admits waiting requests (prefilled together in one
//! left-padded batch, then joined to the running batch), decodes one token for every running
//! sequence in a single batched step, and drops sequences that finished or whose client went
//! away, freeing their slot at once.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;

use candle_core::Tensor;
use distill_models::{Completion, KvCache, LoadedModel, SamplingParams, Sequence, TokenLogprob};
use tokio::sync::mpsc::UnboundedSender;

/// Most positions (padding included) prefilled in one batch; a longer prompt is prefilled alone.
const PREFILL_TOKENS: usize = 8192;

/// What the engine tells a request as its choices progress.
#[derive(Debug)]
pub enum Event {
    /// Text of choice `index` that became final, with the log-probabilities of the tokens
    /// generated since the previous event of that choice.
    /// `generated`: the choice's token count so far.
    Delta { index: usize, text: String, logprobs: Vec<TokenLogprob>, generated: usize },
    /// Choice `index` ended; `completion` holds all of it.
    Done { index: usize, completion: Completion },
    /// The request failed inside the model; no further events follow.
    Failed(String),
}

/// One request for `n` completions of a prompt.
pub struct Job {
    pub prompt: Vec<u32>,
    pub n: usize,
    /// Sampling settings; choice `i` samples with `seed + i`.
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub top_logprobs: Option<usize>,
    pub logit_bias: Vec<(u32, f32)>,
    pub events: UnboundedSender<Event>,
}

/// Handle to the worker thread. Dropping every handle stops the worker after its current step.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
}

/// A running choice: row `i` of the batch cache is `running[i]`.
struct Running {
    sequence: Sequence,
    index: usize,
    next_token: u32,
    events: UnboundedSender<Event>,
    sent_logprobs: usize,
}

impl Engine {
    /// Starts the worker thread; at most `max_batch` sequences decode together.
    pub fn start(model: Arc<LoadedModel>, max_batch: usize) -> Self {
        let (jobs, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("distill-engine".into())
            .spawn(move || supervise(&model, &inbox, max_batch.max(1)))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the engine thread: {e}"));
        Self { jobs }
    }

    /// Queues a job; false when the worker has stopped.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }
}

/// Runs the engine loop and, when a step panics, starts it again with an empty batch: the
/// requests in flight then fail (their event channels close, which their handlers answer as an
/// error) and the server goes on serving new ones.
fn supervise(model: &LoadedModel, inbox: &mpsc::Receiver<Job>, max_batch: usize) {
    restarting_on_panic(|| run(model, inbox, max_batch))
}

/// Calls `body` until it returns without panicking, logging each panic.
fn restarting_on_panic(mut body: impl FnMut()) {
    while let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!("the engine panicked ({what}); the requests in flight failed, restarting it");
    }
}

fn run(model: &LoadedModel, inbox: &mpsc::Receiver<Job>, max_batch: usize) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut cache = KvCache::new(model.model.config(), Vec::new());
    loop {
        if running.is_empty() && waiting.is_empty() {
            match inbox.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // every handle dropped: the server is shutting down
            }
        }
        while let Ok(job) = inbox.try_recv() {
            waiting.push_back(job);
        }
        // Admit whole jobs while their choices fit; one oversized job runs alone.
        let mut admitted: Vec<Job> = Vec::new();
        let mut rows = running.len();
        let mut longest = 0;
        while let Some(job) = waiting.front() {
            if rows > 0 && rows + job.n > max_batch {
                break;
            }
            // Prompts are padded to the longest: keep one prefill batch within a token budget.
            let padded = (admitted.len() + 1) * longest.max(job.prompt.len());
            if !admitted.is_empty() && padded > PREFILL_TOKENS {
                break;
            }
            let Some(job) = waiting.pop_front() else { break };
            if !job.events.is_closed() {
                rows += job.n;
                longest = longest.max(job.prompt.len());
                admitted.push(job);
            }
        }
        if !admitted.is_empty() {
            if let Err(e) = distill_kernels::on_worker(|| admit(model, admitted, &mut running, &mut cache)) {
                tracing::error!("prefill failed: {e}");
            }
        }
        if running.is_empty() {
            continue;
        }
        if let Err(e) = distill_kernels::on_worker(|| decode_step(model, &mut running, &mut cache)) {
            tracing::error!("decode step failed: {e}");
            for r in running.drain(..) {
                let _ = r.events.send(Event::Failed(e.to_string()));
            }
            cache = KvCache::new(model.model.config(), Vec::new());
        }
    }
}

/// Prefills the admitted jobs' prompts in one left-padded batch, samples each choice's first
/// token, and joins the choices that go on to the running batch (a prompt's cache row forked
/// once per choice).
fn admit(
    model: &LoadedModel,
    jobs: Vec<Job>,
    running: &mut Vec<Running>,
    cache: &mut KvCache,
) -> distill_models::Result<()> {
    let longest = jobs.iter().map(|j| j.prompt.len()).max().unwrap_or(0);
    let pad_id = model.tokenizer.eos_id().unwrap_or(0);
    let left_pad: Vec<usize> = jobs.iter().map(|j| longest - j.prompt.len()).collect();
    let ids: Vec<u32> = jobs
        .iter()
        .zip(&left_pad)
        .flat_map(|(j, &pad)| std::iter::repeat_n(pad_id, pad).chain(j.prompt.iter().copied()))
        .collect();
    let mut prefilled = KvCache::new(model.model.config(), left_pad);
    let logits = Tensor::from_vec(ids, (jobs.len(), longest), model.model.device())
        .map_err(distill_models::Error::from)
        .and_then(|input| model.model.step(&input, &mut prefilled))
        .and_then(|l| Ok(l.to_vec2::<f32>()?)); // (B, V)
    let logits = match logits {
        Ok(l) => l,
        Err(e) => {
            for job in &jobs {
                let _ = job.events.send(Event::Failed(e.to_string()));
            }
            return Err(e);
        }
    };
    let mut forks = Vec::new();
    let mut rows = Vec::new();
    for (row, job) in jobs.iter().enumerate() {
        for index in 0..job.n {
            let params = SamplingParams { seed: job.sampling.seed.wrapping_add(index as u64), ..job.sampling.clone() };
            let sequence =
                Sequence::new(&params, job.max_tokens, job.top_logprobs).with_logit_bias(job.logit_bias.clone());
            let mut r = Running { sequence, index, next_token: 0, events: job.events.clone(), sent_logprobs: 0 };
            match advance(model, &mut r, &logits[row]) {
                Ok(true) => {
                    forks.push(r);
                    rows.push(row);
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    break;
                }
            }
        }
    }
    if forks.is_empty() {
        return Ok(());
    }
    prefilled.select_rows(&rows)?;
    cache.append(prefilled)?;
    running.extend(forks);
    Ok(())
}

/// Samples one token for `r` from its logits and sends what became final. Returns whether the
/// choice goes on (false: it ended and its `Done` was sent).
fn advance(model: &LoadedModel, r: &mut Running, logits: &[f32]) -> distill_models::Result<bool> {
    let (token, text) = r.sequence.push(&model.tokenizer, logits, &model.stop_ids)?;
    r.next_token = token;
    if r.sequence.is_done() {
        let sequence = std::mem::replace(&mut r.sequence, Sequence::new(&SamplingParams::default(), 0, None));
        let (completion, tail) = sequence.finish(&model.tokenizer)?;
        let text = text + &tail;
        let logprobs = completion.logprobs.get(r.sent_logprobs..).unwrap_or_default().to_vec();
        if !text.is_empty() || !logprobs.is_empty() {
            let generated = completion.token_ids.len();
            let _ = r.events.send(Event::Delta { index: r.index, text, logprobs, generated });
        }
        let _ = r.events.send(Event::Done { index: r.index, completion });
        return Ok(false);
    }
    let logprobs = r.sequence.logprobs().get(r.sent_logprobs..).unwrap_or_default();
    if !text.is_empty() {
        r.sent_logprobs += logprobs.len();
        let generated = r.sequence.len();
        let _ = r.events.send(Event::Delta { index: r.index, text, logprobs: logprobs.to_vec(), generated });
    }
    Ok(true)
}

/// One batched decoding step for every running choice; finished and abandoned choices leave.
fn decode_step(model: &LoadedModel, running: &mut Vec<Running>, cache: &mut KvCache) -> distill_models::Result<()> {
    // A client that went away frees its rows before any work is spent on them.
    let keep: Vec<usize> = (0..running.len()).filter(|&i| !running[i].events.is_closed()).collect();
    if keep.len() < running.len() {
        retain_rows(running, cache, &keep)?;
        if running.is_empty() {
            return Ok(());
        }
    }
    let b = running.len();
    let input =
        Tensor::from_vec(running.iter().map(|r| r.next_token).collect::<Vec<_>>(), (b, 1), model.model.device())?;
    let logits = model.model.step(&input, cache)?.to_vec2::<f32>()?; // (B, V)
    let mut keep = Vec::with_capacity(b);
    for (row, r) in running.iter_mut().enumerate() {
        if advance(model, r, &logits[row])? {
            keep.push(row);
        }
    }
    if keep.len() < b {
        retain_rows(running, cache, &keep)?;
    }
    Ok(())
}

fn retain_rows(running: &mut Vec<Running>, cache: &mut KvCache, keep: &[usize]) -> distill_models::Result<()> {
    cache.select_rows(keep)?;
    let mut old: Vec<Option<Running>> = running.drain(..).map(Some).collect();
    running.extend(keep.iter().filter_map(|&i| old[i].take()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_loop_is_started_again_and_what_it_held_is_dropped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let mut held = Some(tx);
        let mut runs = 0;
        restarting_on_panic(|| {
            runs += 1;
            if runs == 1 {
                // The loop owns a request's channel when it panics.
                let _owned = held.take();
                panic!("a bad step");
            }
        });
        assert_eq!(runs, 2);
        // The request's handler sees its channel closed (an error answer), not a hang.
        assert!(rx.try_recv().is_err() && rx.is_closed());
    }
}
