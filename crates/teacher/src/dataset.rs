//! Building a teacher-signal dataset: every prompt of a prompt file rendered, completed by the
//! teacher (or given its own completion) and scored, shard by shard through a resumable
//! [`DatasetWriter`]. Any [`Teacher`] does: local models and remote endpoints take the same path.

use std::path::Path;
use std::time::{Duration, Instant};

use distill_models::SamplingParams;
use distill_store::{DatasetSpec, DatasetWriter, Layout, Manifest, RenderSettings, Sequence, Source};

use crate::prompts::{conversation, read_prompt_file, render, PromptRecord, SystemMessages};
use crate::{Error, Result, ScoreRequest, Teacher, TeacherPrompt};

/// How far apart the seeds of successive samples are (a prime): completion `s` of a prompt samples
/// with seed `seed + s · SAMPLE_SEED_STRIDE + prompt offset`, so seeds are a function of (prompt,
/// sample) alone and a resumed run redoes a shard identically; on-policy rollouts step their
/// seeds by it per micro-batch.
pub const SAMPLE_SEED_STRIDE: u64 = 1_000_003;

/// What to ask of the teacher and how to store it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOptions {
    /// Wrap text prompts as a user message in the chat template. A base model without one
    /// (Gemma-3-270M, say) reads text prompts as they are; `messages` prompts need a template.
    pub chat: bool,
    /// System message for wrapped text prompts (the template's default when absent).
    pub system: Option<String>,
    /// System messages given to a share of the prompts, drawn by `sampling.seed` and the
    /// prompt's position (instead of `system`; needs `chat`).
    pub system_messages: Option<SystemMessages>,
    pub sampling: SamplingParams,
    /// Top-k entries stored per completion token.
    pub k: usize,
    /// Completions generated per prompt (a prompt with a given completion is scored once).
    pub completions: usize,
    /// Prompts per Parquet shard (the unit of resumption).
    pub prompts_per_shard: usize,
    /// Prompts a local teacher decodes (and scores) as one batch. A remote teacher takes a
    /// shard's prompts in one call and fans them out over its endpoints
    /// ([`Teacher::prompts_per_call`]).
    pub batch_size: usize,
    /// Temperature of the stored distributions (softmax(logits / T)).
    pub logprob_temperature: f32,
    /// `None`: coded for a new dataset, the existing dataset's layout when resuming.
    pub layout: Option<Layout>,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            chat: true,
            system: None,
            system_messages: None,
            sampling: SamplingParams::default(),
            k: 32,
            completions: 1,
            prompts_per_shard: 64,
            batch_size: 8,
            logprob_temperature: 1.0,
            layout: None,
        }
    }
}

/// Where a dataset run stands, reported as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DatasetProgress {
    /// The writer is open: `done` of `total` prompts were done by an earlier run, and
    /// `with_system` of all `total` were given one of [`DatasetOptions::system_messages`].
    Started { done: usize, total: usize, with_system: usize },
    /// A shard was written: `done` of `total` prompts; `tokens` completion tokens this run.
    Shard { done: usize, total: usize, tokens: usize, elapsed: Duration },
}

/// The dataset after a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    pub manifest: Manifest,
    /// Completion tokens written by this run, and how long it took.
    pub tokens_this_run: usize,
    pub elapsed: Duration,
}

/// Builds (or resumes) the dataset in `output` from the prompts in `prompts_file`: checks the
/// request against the teacher, records teacher, tokenizer, prompts and settings in the manifest
/// (a resumed run with other ones is refused, naming the differences), then writes the missing
/// shards.
pub fn create_dataset(
    teacher: &dyn Teacher,
    prompts_file: &Path,
    output: &Path,
    opts: &DatasetOptions,
    progress: &mut dyn FnMut(DatasetProgress),
) -> Result<DatasetSummary> {
    if opts.k == 0 || opts.completions == 0 || opts.prompts_per_shard == 0 || opts.batch_size == 0 {
        return Err(Error::Input("k, completions, prompts_per_shard and batch_size must be at least 1".into()));
    }
    teacher.check_signal(opts.k, opts.logprob_temperature)?;
    let mut records = read_prompt_file(prompts_file)?;
    // The prompts as the teacher reads them: the file, or its records with system messages added.
    let (prompts, with_system) = match &opts.system_messages {
        None => (
            std::fs::read(prompts_file)
                .map_err(|e| Error::Input(format!("cannot read {}: {e}", prompts_file.display())))?,
            0,
        ),
        Some(_) if opts.system.is_some() => {
            return Err(Error::Input("give one system message or a file of them, not both".into()))
        }
        Some(_) if !opts.chat => {
            return Err(Error::Input("system messages go into chat prompts: turn chat on (--chat)".into()))
        }
        Some(systems) => {
            let added = systems.apply(&mut records, opts.sampling.seed);
            (records.iter().map(|r| format!("{}\n", r.to_json())).collect::<String>().into_bytes(), added)
        }
    };
    let prompts_hash = distill_store::sha256_hex(&prompts);
    let quantization = match opts.layout {
        Some(layout) => layout.quantization(),
        None => Manifest::read(output)?.map(|m| m.spec.quantization).unwrap_or_default(),
    };
    let identity = teacher.identity()?;
    let tokenizer = teacher.tokenizer();
    let spec = DatasetSpec {
        teacher: identity.name,
        teacher_hash: identity.hash,
        tokenizer_hash: tokenizer.fingerprint(),
        tokenizer_vocab: tokenizer.vocab_size(),
        model_vocab: teacher.vocab_size(),
        k: opts.k,
        logprob_temperature: opts.logprob_temperature,
        sampling: serde_json::to_value(&opts.sampling).map_err(|e| Error::Input(e.to_string()))?,
        completions_per_prompt: opts.completions,
        chat: opts.chat,
        prompts_hash,
        prompts: records.len(),
        prompts_per_shard: opts.prompts_per_shard,
        quantization,
        teacher_matmuls: identity.matmuls,
        system_messages: opts.system_messages.as_ref().map(|s| distill_store::SystemMessagesSpec {
            messages: s.messages().len(),
            sha256: distill_store::sha256_hex(serde_json::json!(s.messages()).to_string().as_bytes()),
            share: s.share(),
        }),
    };
    let mut writer = DatasetWriter::open(output, spec, &prompts_file.display().to_string())?;
    // What a student with another tokenizer needs to read the teacher's text back and render the
    // prompts its own way; rewritten by every run (a resumed or repeated run adds it to a dataset
    // made before it existed).
    let settings = RenderSettings {
        chat: opts.chat && (teacher.chat_template().is_some() || teacher.needs_messages()),
        system: opts.system.clone(),
    };
    Source::of(output).write(&prompts, &tokenizer.to_json()?, &settings)?;
    progress(DatasetProgress::Started { done: writer.manifest().prompts_done(), total: records.len(), with_system });
    build_dataset(teacher, &records, opts, &mut writer, progress)
}

/// Writes every shard `writer` still misses: its prompts completed (or given completions taken)
/// and scored by `teacher`.
pub fn build_dataset(
    teacher: &dyn Teacher,
    records: &[PromptRecord],
    opts: &DatasetOptions,
    writer: &mut DatasetWriter,
    progress: &mut dyn FnMut(DatasetProgress),
) -> Result<DatasetSummary> {
    let started = Instant::now();
    let mut tokens = 0usize;
    while let Some(range) = writer.next_shard() {
        let sequences = shard(teacher, &records[range.clone()], range.start, opts)?;
        tokens += sequences.iter().map(Sequence::completion_len).sum::<usize>();
        writer.write_shard(range.clone(), &sequences)?;
        let elapsed = started.elapsed();
        progress(DatasetProgress::Shard { done: range.end, total: records.len(), tokens, elapsed });
    }
    Ok(DatasetSummary { manifest: writer.manifest().clone(), tokens_this_run: tokens, elapsed: started.elapsed() })
}

/// One shard's sequences, ordered by (prompt, sample). `first_index` is the shard's first prompt.
fn shard(
    teacher: &dyn Teacher,
    records: &[PromptRecord],
    first_index: usize,
    opts: &DatasetOptions,
) -> Result<Vec<Sequence>> {
    let tokenizer = teacher.tokenizer();
    let system = opts.system.as_deref();
    let chat = opts.chat && (teacher.chat_template().is_some() || teacher.needs_messages());
    let mut prompts = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let line = first_index + i + 1;
        let at_line = |e: Error| Error::Input(format!("prompt {line}: {e}"));
        let text = render(teacher.chat_template(), teacher.id(), &r.prompt, chat, system).map_err(at_line)?;
        let messages = conversation(&r.prompt, chat, system);
        if r.completion.is_none() && messages.is_none() && teacher.needs_messages() {
            return Err(Error::Input(format!(
                "prompt {line} is plain text: remote teachers are asked through the chat API; add --chat or use `messages`"
            )));
        }
        prompts.push(TeacherPrompt { token_ids: tokenizer.encode(&text, true)?, messages });
    }
    let sequence = |i: usize, sample: usize, completion: &[u32], top| {
        let prompt = &prompts[i].token_ids;
        let token_ids = prompt.iter().chain(completion).copied().collect();
        Sequence::from_scored((first_index + i) as u32, records[i].name(), sample as u16, token_ids, prompt.len(), top)
    };
    let mut sequences = Vec::new();
    let per_call = teacher.prompts_per_call(opts.batch_size).max(1);

    // Given completions are scored token for token.
    let mut given = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(text) = &r.completion {
            let mut ids = tokenizer.encode(text, false)?;
            if chat {
                ids.extend(tokenizer.eos_id());
            }
            if !ids.is_empty() {
                given.push((i, ids));
            }
        }
    }
    for chunk in given.chunks(per_call) {
        let requests: Vec<ScoreRequest> = chunk
            .iter()
            .map(|(i, ids)| ScoreRequest {
                token_ids: prompts[*i].token_ids.iter().chain(ids).copied().collect(),
                from: prompts[*i].token_ids.len(),
            })
            .collect();
        let scored = teacher.score(&requests, opts.k, opts.logprob_temperature)?;
        for ((i, ids), top) in chunk.iter().zip(scored) {
            sequences.push(sequence(*i, 0, ids, top));
        }
    }

    // The others are completed and scored, in batches.
    let to_generate: Vec<usize> = (0..records.len()).filter(|&i| records[i].completion.is_none()).collect();
    for sample in 0..opts.completions {
        for batch in to_generate.chunks(per_call) {
            let batch_prompts: Vec<TeacherPrompt> = batch.iter().map(|&i| prompts[i].clone()).collect();
            // Row r of a batch samples with `seed + r`: the seeds depend only on the shard's
            // prompts, so a resumed run regenerates a shard identically.
            let params = SamplingParams {
                seed: opts
                    .sampling
                    .seed
                    .wrapping_add(sample as u64 * SAMPLE_SEED_STRIDE)
                    .wrapping_add((first_index + batch[0]) as u64),
                ..opts.sampling.clone()
            };
            let scored = teacher.generate_scored(&batch_prompts, &params, opts.k, opts.logprob_temperature)?;
            for (&i, c) in batch.iter().zip(scored) {
                if !c.token_ids.is_empty() {
                    sequences.push(sequence(i, sample, &c.token_ids, c.top));
                }
            }
        }
    }
    sequences.sort_by_key(|s| (s.prompt_index, s.sample));
    Ok(sequences)
}
