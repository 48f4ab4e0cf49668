//! `distill generate --dataset DIR`: turn a prompt file into a teacher-signal dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use distill_models::loader::{resolve, ModelLocation};
use distill_models::SamplingParams;
use distill_store::quant::Quantization;
use distill_store::{DatasetSpec, DatasetWriter, Manifest, Sequence};
use distill_teacher::remote::{RemoteOptions, RemoteTeacher};
use distill_teacher::{LocalTeacher, ScoreRequest, Teacher};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::generate::{conversation, render};
use crate::prompts::{read_prompt_file, PromptRecord};

/// Settings of a dataset run (from `distill generate --dataset`).
pub struct DatasetOptions {
    pub output: PathBuf,
    pub prompts_file: PathBuf,
    pub model: Option<String>,
    pub chat: bool,
    pub system: Option<String>,
    pub sampling: SamplingParams,
    pub k: usize,
    pub completions: usize,
    pub prompts_per_shard: usize,
    pub batch_size: usize,
    pub logprob_temperature: f32,
    /// `None`: coded for a new dataset, the existing layout when resuming.
    pub layout: Option<Layout>,
    /// The local teacher's matmul arithmetic.
    pub matmuls: crate::commands::generate::Matmuls,
    /// Generate and score through OpenAI-compatible endpoints instead of the local model, which
    /// then only supplies the tokenizer and chat template.
    pub remote: Option<RemoteOptions>,
}

/// How shards store the teacher signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Range-coded ids and log-probabilities (format version 2).
    Coded,
    /// Lists of ids, log-probability codes and tail codes (format version 1).
    Plain,
}

/// Seeds are a function of (prompt, sample) alone, so a resumed run redoes a shard identically.
const SAMPLE_SEED_STRIDE: u64 = 1_000_003;

pub fn run(opts: DatasetOptions) -> Result<()> {
    if opts.k == 0 || opts.completions == 0 || opts.prompts_per_shard == 0 || opts.batch_size == 0 {
        bail!("--k, --completions, --prompts-per-shard and --batch-size must be at least 1");
    }
    if opts.remote.is_some() && opts.k > distill_teacher::remote::MAX_REMOTE_TOP_K {
        bail!(
            "--k {}: OpenAI-compatible endpoints return at most {} alternatives per token; use --k 20",
            opts.k,
            distill_teacher::remote::MAX_REMOTE_TOP_K
        );
    }
    let records = read_prompt_file(&opts.prompts_file)?;
    let prompts_hash = distill_store::sha256_file(&opts.prompts_file)?;
    let mut model = crate::commands::generate::load_model(opts.model.as_deref())?;
    let teacher_matmuls = match &opts.remote {
        Some(_) => "f32", // the endpoints compute; the local copy only tokenizes
        None => crate::commands::generate::use_matmuls(&mut model, opts.matmuls)?,
    };
    let (teacher_name, teacher_hash) = match &opts.remote {
        // Endpoints may change between resumed runs; the model they serve may not.
        Some(remote) => {
            let name = format!("remote:{}", remote.model);
            let hash = distill_store::sha256_hex(name.as_bytes());
            (name, hash)
        }
        None => (model.source.clone(), weights_hash(&model.source)?),
    };
    let quantization = match opts.layout {
        Some(Layout::Coded) => Quantization::default(),
        Some(Layout::Plain) => Quantization::plain(),
        None => Manifest::read(&opts.output)?.map(|m| m.spec.quantization).unwrap_or_default(),
    };
    let tokenizer = &model.tokenizer;
    let spec = DatasetSpec {
        teacher: teacher_name,
        teacher_hash,
        tokenizer_hash: tokenizer.fingerprint(),
        tokenizer_vocab: tokenizer.vocab_size(),
        model_vocab: model.model.config().vocab_size,
        k: opts.k,
        logprob_temperature: opts.logprob_temperature,
        sampling: serde_json::to_value(&opts.sampling)?,
        completions_per_prompt: opts.completions,
        chat: opts.chat,
        prompts_hash,
        prompts: records.len(),
        prompts_per_shard: opts.prompts_per_shard,
        quantization,
        teacher_matmuls: teacher_matmuls.into(),
    };
    let mut writer = DatasetWriter::open(&opts.output, spec, &opts.prompts_file.display().to_string())?;
    let remote = match opts.remote.clone() {
        Some(remote) => {
            if opts.logprob_temperature != 1.0 {
                bail!("remote teachers return temperature-1 log-probabilities; drop --logprob-temperature");
            }
            let teacher = RemoteTeacher::new(remote, model.tokenizer.clone(), model.stop_ids.clone())?;
            eprintln!("teacher: {}", teacher.id());
            Some(teacher)
        }
        None => None,
    };
    let teacher = LocalTeacher::new(model);
    let already = writer.manifest().prompts_done();
    if already > 0 {
        eprintln!("resuming {}: {already} of {} prompts already done", opts.output.display(), records.len());
    }
    let bar = ProgressBar::new(records.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} prompts [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("static template is valid"),
    );
    bar.set_position(already as u64);
    let started = Instant::now();
    let mut tokens = 0usize;
    while let Some(range) = writer.next_shard() {
        let sequences = match &remote {
            Some(remote) => remote_pass(remote, &teacher.model, &records[range.clone()], range.start, &opts)?,
            None => teacher_pass(&teacher, &records[range.clone()], range.start, &opts)?,
        };
        tokens += sequences.iter().map(Sequence::completion_len).sum::<usize>();
        writer.write_shard(range.clone(), &sequences)?;
        bar.set_position(range.end as u64);
        bar.set_message(format!("{:.1} tok/s", tokens as f64 / started.elapsed().as_secs_f64()));
    }
    bar.finish_and_clear();
    for e in remote.iter().flat_map(RemoteTeacher::report) {
        eprintln!(
            "endpoint {}: {} completions, {} failed requests{}",
            e.url,
            e.served,
            e.failures,
            e.last_error.map(|m| format!(" (last: {m})")).unwrap_or_default()
        );
    }
    let m = writer.manifest();
    eprintln!(
        "{}: {} prompts, {} sequences, {} tokens, {:.1} bytes/token (this run: {tokens} tokens in {:.2} s)",
        opts.output.display(),
        m.prompts_done(),
        m.sequences(),
        m.tokens(),
        m.bytes() as f64 / m.tokens().max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// SHA-256 of the teacher's weights: the GGUF file, or the hashes of an HF directory's
/// safetensors files in name order.
fn weights_hash(source: &str) -> Result<String> {
    Ok(match resolve(source)? {
        ModelLocation::Gguf(path) => distill_store::sha256_file(&path)?,
        ModelLocation::HfDir(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            let hashes = files.iter().map(|f| distill_store::sha256_file(f)).collect::<Result<Vec<_>, _>>()?;
            distill_store::sha256_hex(hashes.join("\n").as_bytes())
        }
    })
}

/// Generates (or takes) completions for one shard's prompts and scores them.
fn teacher_pass(
    teacher: &LocalTeacher,
    records: &[PromptRecord],
    first_index: usize,
    opts: &DatasetOptions,
) -> Result<Vec<Sequence>> {
    let model = &teacher.model;
    let prompt_ids: Vec<Vec<u32>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = render(model, &r.prompt, opts.chat, opts.system.as_deref())
                .with_context(|| format!("prompt {}", first_index + i + 1))?;
            Ok(model.tokenizer.encode(&text, true)?)
        })
        .collect::<Result<_>>()?;
    // (record offset, sample, completion tokens)
    let mut pending: Vec<(usize, u16, Vec<u32>)> = Vec::new();
    for (offset, r) in records.iter().enumerate() {
        if let Some(text) = &r.completion {
            pending.push((offset, 0, given_completion(model, text, opts.chat)?));
        }
    }
    let to_generate: Vec<usize> = (0..records.len()).filter(|&i| records[i].completion.is_none()).collect();
    for sample in 0..opts.completions {
        for batch in to_generate.chunks(opts.batch_size) {
            let prompts: Vec<Vec<u32>> = batch.iter().map(|&i| prompt_ids[i].clone()).collect();
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
            let completions = teacher.generate(&prompts, &params)?;
            for (&i, c) in batch.iter().zip(completions) {
                let mut ids = c.token_ids;
                ids.extend(c.stop_token);
                pending.push((i, sample as u16, ids));
            }
        }
    }
    pending.sort_by_key(|(i, s, _)| (*i, *s));
    let mut sequences = Vec::with_capacity(pending.len());
    for chunk in pending.chunks(opts.batch_size) {
        let requests: Vec<ScoreRequest> = chunk
            .iter()
            .filter(|(_, _, completion)| !completion.is_empty())
            .map(|(i, _, completion)| ScoreRequest {
                token_ids: prompt_ids[*i].iter().chain(completion).copied().collect(),
                from: prompt_ids[*i].len(),
            })
            .collect();
        let scored = teacher.score(&requests, opts.k, opts.logprob_temperature)?;
        let kept = chunk.iter().filter(|(_, _, completion)| !completion.is_empty());
        for ((i, sample, _), (request, top)) in kept.zip(requests.into_iter().zip(scored)) {
            let index = first_index + i;
            sequences.push(Sequence {
                prompt_index: index as u32,
                prompt_id: records[*i].id.clone().unwrap_or_else(|| format!("line-{}", records[*i].line)),
                sample: *sample,
                prompt_len: request.from as u32,
                token_ids: request.token_ids,
                topk_ids: top.ids,
                topk_logprobs: top.logprobs,
                tail_logprobs: top.tail_logprob,
            });
        }
    }
    Ok(sequences)
}

/// A given completion's tokens: its text, then end-of-sequence for a chat turn.
fn given_completion(model: &distill_models::LoadedModel, text: &str, chat: bool) -> Result<Vec<u32>> {
    let mut ids = model.tokenizer.encode(text, false)?;
    if chat {
        ids.extend(model.tokenizer.eos_id());
    }
    Ok(ids)
}

/// One shard through remote endpoints: prompts without a completion are sent as conversations
/// and come back with their completion's top-k from the endpoints' logprobs; given completions
/// are scored token for token through `prompt_logprobs` (vLLM, distill serve).
fn remote_pass(
    teacher: &RemoteTeacher,
    model: &distill_models::LoadedModel,
    records: &[PromptRecord],
    first_index: usize,
    opts: &DatasetOptions,
) -> Result<Vec<Sequence>> {
    let mut conversations = Vec::with_capacity(records.len());
    let mut to_generate = Vec::with_capacity(records.len());
    let mut given = Vec::new();
    let mut prompt_ids = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let line = first_index + i + 1;
        let text =
            render(model, &r.prompt, opts.chat, opts.system.as_deref()).with_context(|| format!("prompt {line}"))?;
        prompt_ids.push(model.tokenizer.encode(&text, true)?);
        if let Some(completion) = &r.completion {
            given.push((i, given_completion(model, completion, opts.chat)?));
            continue;
        }
        let Some(messages) = conversation(&r.prompt, opts.chat, opts.system.as_deref()) else {
            bail!("prompt {line} is plain text: remote teachers are asked through the chat API; add --chat or use `messages`");
        };
        conversations.push(messages);
        to_generate.push(i);
    }
    let id_of = |i: usize| records[i].id.clone().unwrap_or_else(|| format!("line-{}", records[i].line));
    let given: Vec<(usize, Vec<u32>)> = given.into_iter().filter(|(_, ids)| !ids.is_empty()).collect();
    let requests: Vec<ScoreRequest> = given
        .iter()
        .map(|(i, ids)| ScoreRequest {
            token_ids: prompt_ids[*i].iter().chain(ids).copied().collect(),
            from: prompt_ids[*i].len(),
        })
        .collect();
    let scored = if requests.is_empty() { Vec::new() } else { teacher.score_tokens(&requests, opts.k)? };
    let mut sequences: Vec<Sequence> = given
        .iter()
        .zip(requests.into_iter().zip(scored))
        .map(|((i, _), (request, top))| Sequence {
            prompt_index: (first_index + i) as u32,
            prompt_id: id_of(*i),
            sample: 0,
            prompt_len: request.from as u32,
            token_ids: request.token_ids,
            topk_ids: top.ids,
            topk_logprobs: top.logprobs,
            tail_logprobs: top.tail_logprob,
        })
        .collect();
    if conversations.is_empty() {
        return Ok(sequences);
    }
    for sample in 0..opts.completions {
        let params = SamplingParams {
            seed: opts.sampling.seed.wrapping_add(sample as u64 * SAMPLE_SEED_STRIDE).wrapping_add(first_index as u64),
            ..opts.sampling.clone()
        };
        let completions = teacher.generate_scored(&conversations, &params, opts.k)?;
        for (&i, c) in to_generate.iter().zip(completions) {
            if c.token_ids.is_empty() {
                continue;
            }
            sequences.push(Sequence {
                prompt_index: (first_index + i) as u32,
                prompt_id: id_of(i),
                sample: sample as u16,
                prompt_len: prompt_ids[i].len() as u32,
                token_ids: prompt_ids[i].iter().chain(&c.token_ids).copied().collect(),
                topk_ids: c.top.ids,
                topk_logprobs: c.top.logprobs,
                tail_logprobs: c.top.tail_logprob,
            });
        }
    }
    sequences.sort_by_key(|s| (s.prompt_index, s.sample));
    Ok(sequences)
}
