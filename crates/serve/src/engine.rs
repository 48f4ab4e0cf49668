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

/// Most positions (padding included) prefilled in one batch: enough rows that the matmuls run at
/// their batched speed, few enough that the batch's activations stay small beside the weights
/// (8,192 positions of Qwen2.5-1.5B held some 250 MB of them) and the first prompts start
/// decoding before the last are prefilled.
const PREFILL_TOKENS: usize = 1024;

/// Prompts longer than this are prefilled one chunk of this many tokens per engine step,
/// between decoding steps of the running batch: a long prompt delays every stream by one
/// chunk's time per token instead of stalling them for its whole prefill.
pub const PREFILL_CHUNK: usize = 256;

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
        Self::start_with(model, max_batch, PREFILL_CHUNK)
    }

    /// [`Engine::start`] with prompts longer than `prefill_chunk` prefilled in chunks of it.
    pub fn start_with(model: Arc<LoadedModel>, max_batch: usize, prefill_chunk: usize) -> Self {
        let (jobs, inbox) = mpsc::channel();
        let limits = Limits { max_batch: max_batch.max(1), prefill_chunk: prefill_chunk.max(1) };
        std::thread::Builder::new()
            .name("distill-engine".into())
            .spawn(move || supervise(&model, &inbox, limits))
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
fn supervise(model: &LoadedModel, inbox: &mpsc::Receiver<Job>, limits: Limits) {
    restarting_on_panic(|| run(model, inbox, limits))
}

#[derive(Clone, Copy)]
struct Limits {
    max_batch: usize,
    prefill_chunk: usize,
}

/// A long prompt being prefilled a chunk at a time, in a cache of its own.
struct Prefilling {
    job: Job,
    cache: KvCache,
    done: usize,
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

fn run(model: &LoadedModel, inbox: &mpsc::Receiver<Job>, limits: Limits) {
    let Limits { max_batch, prefill_chunk } = limits;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut prefilling: Option<Prefilling> = None;
    let mut cache = KvCache::new(model.model.config(), Vec::new());
    loop {
        if running.is_empty() && waiting.is_empty() && prefilling.is_none() {
            match inbox.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // every handle dropped: the server is shutting down
            }
        }
        while let Ok(job) = inbox.try_recv() {
            waiting.push_back(job);
        }
        // Admit whole jobs in order while their choices fit; one oversized job runs alone. A
        // long prompt takes the chunked-prefill place when it is free (shorter prompts behind
        // it may go first while it waits for it).
        let mut admitted: Vec<Job> = Vec::new();
        let mut rows = running.len() + prefilling.as_ref().map_or(0, |p| p.job.n);
        let mut longest = 0;
        let mut i = 0;
        while let Some(job) = waiting.get(i) {
            if job.events.is_closed() {
                waiting.remove(i);
                continue;
            }
            if rows > 0 && rows + job.n > max_batch {
                break;
            }
            if job.prompt.len() > prefill_chunk {
                if prefilling.is_none() {
                    let Some(job) = waiting.remove(i) else { break };
                    rows += job.n;
                    let cache = KvCache::new(model.model.config(), vec![0]);
                    prefilling = Some(Prefilling { job, cache, done: 0 });
                } else {
                    i += 1;
                }
                continue;
            }
            // Prompts are padded to the longest: keep one prefill batch within a token budget.
            let padded = (admitted.len() + 1) * longest.max(job.prompt.len());
            if !admitted.is_empty() && padded > PREFILL_TOKENS {
                break;
            }
            let Some(job) = waiting.remove(i) else { break };
            rows += job.n;
            longest = longest.max(job.prompt.len());
            admitted.push(job);
        }
        if !admitted.is_empty() {
            if let Err(e) = distill_kernels::on_worker(|| admit(model, admitted, &mut running, &mut cache)) {
                tracing::error!("prefill failed: {e}");
            }
        }
        // A client that went away while its prompt was being prefilled costs no further chunk.
        if prefilling.as_ref().is_some_and(|p| p.job.events.is_closed()) {
            prefilling = None;
        }
        if let Some(p) = prefilling.as_mut() {
            match distill_kernels::on_worker(|| prefill_chunk_step(model, p, prefill_chunk)) {
                Ok(None) => {}
                Ok(Some(logits)) => {
                    let Some(p) = prefilling.take() else { continue };
                    let joined = distill_kernels::on_worker(|| {
                        join(model, std::slice::from_ref(&p.job), &logits, p.cache, &mut running, &mut cache)
                    });
                    if let Err(e) = joined {
                        tracing::error!("joining a prefilled prompt failed: {e}");
                    }
                }
                Err(e) => {
                    tracing::error!("prefill failed: {e}");
                    let _ = p.job.events.send(Event::Failed(e.to_string()));
                    prefilling = None;
                }
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

/// Prefills the next chunk of a long prompt; once the last is done, its logits (one row).
fn prefill_chunk_step(
    model: &LoadedModel,
    p: &mut Prefilling,
    chunk: usize,
) -> distill_models::Result<Option<Vec<Vec<f32>>>> {
    let end = (p.done + chunk).min(p.job.prompt.len());
    let input = Tensor::from_vec(p.job.prompt[p.done..end].to_vec(), (1, end - p.done), model.model.device())?;
    let logits = model.model.step(&input, &mut p.cache)?;
    p.done = end;
    Ok((end == p.job.prompt.len()).then(|| logits.to_vec2::<f32>()).transpose()?)
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
    join(model, &jobs, &logits, prefilled, running, cache)
}

/// Samples each choice's first token from its prompt's logits (row `i` for `jobs[i]`) and joins
/// the choices that go on to the running batch, the prompt's row of `prefilled` forked once per
/// choice.
fn join(
    model: &LoadedModel,
    jobs: &[Job],
    logits: &[Vec<f32>],
    mut prefilled: KvCache,
    running: &mut Vec<Running>,
    cache: &mut KvCache,
) -> distill_models::Result<()> {
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

    fn tiny_model(dir: &std::path::Path) -> Arc<LoadedModel> {
        let path = dir.join("tiny.gguf");
        distill_models::fixtures::tiny_gguf(&path, 7).unwrap();
        Arc::new(distill_models::load(path.to_str().unwrap(), &candle_core::Device::Cpu).unwrap())
    }

    /// Runs `prompts` through `engine` together and returns each one's greedy tokens.
    fn complete(engine: &Engine, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
        let receivers: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let (events, rx) = tokio::sync::mpsc::unbounded_channel();
                let sampling = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
                let job = Job {
                    prompt: prompt.clone(),
                    n: 1,
                    sampling,
                    max_tokens: 6,
                    top_logprobs: None,
                    logit_bias: vec![],
                    events,
                };
                assert!(engine.submit(job));
                rx
            })
            .collect();
        receivers
            .into_iter()
            .map(|mut rx| loop {
                match rx.blocking_recv().expect("the engine answers") {
                    Event::Done { completion, .. } => break completion.token_ids,
                    Event::Failed(e) => panic!("{e}"),
                    Event::Delta { .. } => {}
                }
            })
            .collect()
    }

    #[test]
    fn a_long_prompt_prefilled_in_chunks_beside_running_streams_gives_the_same_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let long: Vec<u32> = (0..45).map(|i| 5 + (i * 7) % 20).collect();
        let short: Vec<u32> = vec![5, 9, 11];
        let prompts = vec![short.clone(), long.clone(), vec![6, 7], long[..20].to_vec()];
        let whole = complete(&Engine::start_with(model.clone(), 8, 1_000), &prompts);
        // Chunks of 8: the long prompts are prefilled over several steps, one at a time, while
        // the short ones decode.
        let chunked = complete(&Engine::start_with(model, 8, 8), &prompts);
        assert_eq!(chunked, whole);
        assert!(whole.iter().all(|t| !t.is_empty()));
    }

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
