//! `distill generate`: text from a model, streamed for one prompt, batched JSONL for many.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use distill_models::{generate, generate_with_logprobs, DeviceSpec, LoadedModel, SamplingParams};
use distill_teacher::prompts::{read_prompt_file, render, Prompt};
use distill_teacher::{Layout, Precision};
use serde_json::json;

use crate::progress;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  distill generate --chat \"How do I reset my password?\"
  distill generate --model ./SmolLM2-135M-Instruct.Q4_1.gguf --temperature 0.7 --seed 1 \"Once upon a time\"
  distill generate --prompts-file prompts.jsonl --max-tokens 64 > completions.jsonl
  distill generate --dataset data/support --prompts-file prompts.jsonl --chat --k 32 --max-tokens 64")]
pub struct GenerateArgs {
    /// Prompt text; several prompts are generated as one batch.
    #[arg(value_name = "PROMPT")]
    prompts: Vec<String>,

    /// Model: a .gguf file, a Hugging Face model directory, or a Hub id (org/name).
    /// Defaults to the fetched default teacher (SmolLM2-135M-Instruct).
    #[arg(long, short, env = "DISTILL_MODEL")]
    model: Option<String>,

    /// JSONL file of prompts: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}.
    #[arg(long, value_name = "FILE", conflicts_with = "prompts")]
    prompts_file: Option<PathBuf>,

    /// Wrap text prompts as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,

    /// System message for --chat prompts (the template's default when absent).
    #[arg(long, requires = "chat")]
    system: Option<String>,

    /// Maximum number of new tokens per prompt.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,

    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,

    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,

    /// Sample only among the K most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,

    /// Random seed; the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Stop before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,

    /// Prompts decoded together in one batch.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    batch_size: usize,

    /// Print JSON lines ({"index", "prompt", "text", "finish_reason", ...}) instead of streaming text.
    #[arg(long)]
    json: bool,

    /// With --json: each generated token's log-probability and the N most likely alternatives
    /// (temperature 1, before sampling filters), as "logprobs": [{"token", "id", "logprob", "top"}].
    #[arg(long, value_name = "N", requires = "json")]
    logprobs: Option<usize>,

    /// Build a teacher-signal dataset in DIR from --prompts-file instead of printing text:
    /// completions plus the teacher's top-k log-probabilities, as Parquet shards. Re-running the
    /// same command resumes an interrupted run.
    #[arg(long, value_name = "DIR", requires = "prompts_file", help_heading = "Dataset")]
    dataset: Option<PathBuf>,

    /// Top-k entries stored per completion token.
    #[arg(long, default_value_t = 32, value_parser = at_least_one, requires = "dataset", help_heading = "Dataset")]
    k: usize,

    /// Completions generated per prompt (a prompt with a given completion is scored once).
    #[arg(long, default_value_t = 1, value_parser = at_least_one, requires = "dataset", help_heading = "Dataset")]
    completions: usize,

    /// Prompts per Parquet shard (the unit of resumption).
    #[arg(long, default_value_t = 64, value_parser = at_least_one, requires = "dataset", help_heading = "Dataset")]
    prompts_per_shard: usize,

    /// Temperature of the stored teacher distributions (softmax(logits / T)).
    #[arg(long, default_value_t = 1.0, requires = "dataset", help_heading = "Dataset")]
    logprob_temperature: f32,

    /// System messages, one per line (a line in double quotes is read as a JSON string, so it can
    /// hold \n), given to a share of the prompts (--system-share), so that a student learns to
    /// answer under the system messages real traffic carries. Which prompts get which message
    /// follows from --seed and the prompt's position; prompts with their own system message keep it.
    #[arg(long, value_name = "FILE", requires_all = ["dataset", "chat"], conflicts_with = "system", help_heading = "Dataset")]
    system_file: Option<PathBuf>,

    /// The share of the prompts given a message from --system-file (0 to 1).
    #[arg(long, default_value_t = distill_teacher::SystemMessages::DEFAULT_SHARE, requires = "system_file", help_heading = "Dataset")]
    system_share: f64,

    /// How shards store the top-k: `coded` (range-coded, about half the bytes, read through
    /// distill) or `plain` (lists any Parquet reader uses as they are). Default: coded for a new
    /// dataset, the dataset's own layout when resuming one.
    #[arg(long, value_parser = parse_layout(), requires = "dataset", help_heading = "Dataset")]
    layout: Option<Layout>,

    /// Have the teacher write prompts: N new ones like the --seeds examples (Self-Instruct:
    /// a few seeds as a numbered list, continued at --temperature, 1.0 when it is 0, with top-p
    /// 0.95 unless --top-p is set), kept when 12 characters or longer and at most three times the
    /// longest seed, in the seeds' script and not a near-duplicate of a seed or of each other;
    /// appended to --output as a prompt file.
    /// Re-running the same command goes on from the prompts already there.
    #[arg(long, value_name = "N", requires_all = ["seeds", "output"], conflicts_with_all = ["dataset", "prompts_file", "prompts"], help_heading = "Synthesize")]
    synthesize: Option<usize>,

    /// Seed prompts to imitate (any prompt file; a handful of typical ones is enough).
    #[arg(long, value_name = "FILE", requires = "synthesize", help_heading = "Synthesize")]
    seeds: Option<PathBuf>,

    /// The prompt file synthesised prompts go to.
    #[arg(long, short = 'o', value_name = "FILE", requires = "synthesize", help_heading = "Synthesize")]
    output: Option<PathBuf>,

    /// Estimated Jaccard similarity of character 5-grams at which a new prompt counts as a
    /// near-duplicate of a seed or of one already kept.
    #[arg(long, default_value_t = 0.5, requires = "synthesize", help_heading = "Synthesize")]
    synthesize_similarity: f64,

    /// Arithmetic of the model's matmuls. By default a GGUF file's quantised weights (Q4_0 … Q8_0,
    /// Q4_K, Q5_K, Q6_K) run as they are, on 8-bit integer products (AVX-512 VNNI or AVX2), and f32/f16/bf16
    /// weights in f32. Naming one applies it to every matmul: `f32` dequantises quantised weights
    /// (the reference path: 4 bytes per weight); `bf16` rounds weights and activations to bfloat16
    /// with f32 sums, faster on CPUs with AVX-512 BF16 at a small cost in fidelity
    /// (docs/performance.md); `int8` also rounds f32 weights to Q8_0 blocks. Where the CPU lacks
    /// the instructions: the file's own (as without --matmuls), with a warning.
    #[arg(long, value_parser = parse_precision(), conflicts_with = "teacher_urls")]
    matmuls: Option<Precision>,

    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` on a binary built with `--features cuda`
    /// (a GGUF file's weights are then dequantised to f32 on the GPU).
    #[arg(long, env = "DISTILL_DEVICE", default_value = "cpu")]
    device: DeviceSpec,

    /// With --dataset: the teacher is served at this OpenAI-compatible URL (repeat for several
    /// endpoints; prompts fan out over all, a failing one is retried elsewhere). --model then
    /// names a local copy of the teacher for its tokenizer and chat template. The API key is read
    /// from DISTILL_TEACHER_API_KEY or OPENAI_API_KEY. At most 20 alternatives per token (--k 20).
    /// Given completions are scored through `prompt_logprobs` (vLLM, distill serve).
    #[arg(long = "teacher-url", value_name = "URL", requires = "dataset", help_heading = "Remote teacher")]
    teacher_urls: Vec<String>,

    /// Model name asked of the endpoints (default: the first model the first endpoint lists).
    #[arg(long, requires = "teacher_urls", help_heading = "Remote teacher")]
    teacher_model: Option<String>,

    /// Requests in flight per endpoint.
    #[arg(long, default_value_t = 4, requires = "teacher_urls", help_heading = "Remote teacher")]
    teacher_concurrency: usize,

    /// Seconds before a request is abandoned (and retried on another endpoint).
    #[arg(long, default_value_t = 300, requires = "teacher_urls", help_heading = "Remote teacher")]
    teacher_timeout: u64,
}

/// A count that must be at least 1, refused at parsing with the flag named.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--layout`: coded or plain (listed in `--help`).
fn parse_layout() -> impl TypedValueParser<Value = Layout> {
    // Only the listed names reach the parse, so it cannot fail.
    PossibleValuesParser::new(["coded", "plain"]).map(|s| s.parse().unwrap_or_default())
}

/// `--matmuls`: f32, bf16 or int8 (listed in `--help`).
pub(crate) fn parse_precision() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(["f32", "bf16", "int8"]).map(|s| s.parse().unwrap_or_default())
}

/// Runs `model`'s matmuls in `precision` where the CPU can (the model is only used for inference
/// from here on), saying which and warning when it falls back to f32. None: a GGUF file's
/// quantised weights as they are, the others in f32.
pub fn use_matmuls(model: &mut LoadedModel, requested: Option<Precision>) -> Result<Precision> {
    let started = Instant::now();
    let device = model.model.device().clone();
    let done = model.use_matmuls(requested)?;
    let (asked, got) = (requested.unwrap_or_default(), done.running);
    if !device.is_cpu() {
        if requested.is_some_and(|p| p != Precision::F32) {
            eprintln!(
                "warning: --matmuls {asked} is for the CPU's kernels; {} runs f32 matmuls",
                distill_models::device::name(&device)
            );
        }
        return Ok(got);
    }
    if done.dequantized {
        eprintln!("dequantised the file's quantised weights to f32 (--matmuls {asked})");
    }
    if requested.is_some_and(|asked| asked != got) {
        let needs = if asked == Precision::Bf16 { "AVX-512 BF16" } else { "AVX-512 VNNI or AVX2" };
        eprintln!("warning: --matmuls {asked} needs a CPU with {needs}; running the file's own {got} matmuls");
    }
    if got != Precision::F32 {
        let kernel = match (got, distill_kernels::quant::kernel_name()) {
            (Precision::Int8, Some(name)) => format!(", {name}"),
            _ => String::new(),
        };
        eprintln!("matmuls in {got}{kernel} (packed in {:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(got)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
    };
    params.validate()?;
    if let Some(output) = &args.dataset {
        let prompts_file = args.prompts_file.clone().context("--dataset needs --prompts-file")?;
        let options = distill_teacher::DatasetOptions {
            chat: args.chat,
            system: args.system.clone(),
            system_messages: args
                .system_file
                .as_deref()
                .map(|path| distill_teacher::SystemMessages::from_file(path, args.system_share))
                .transpose()?,
            sampling: params,
            k: args.k,
            completions: args.completions,
            prompts_per_shard: args.prompts_per_shard,
            batch_size: args.batch_size,
            logprob_temperature: args.logprob_temperature,
            layout: args.layout,
        };
        let remote = remote_options(&args)?;
        return super::dataset::run(
            output,
            &prompts_file,
            args.model.as_deref(),
            args.device,
            args.matmuls,
            remote,
            options,
        );
    }
    if let (Some(count), Some(seeds), Some(output)) = (args.synthesize, &args.seeds, &args.output) {
        let options = distill_teacher::synthesize::SynthesizeOptions {
            count,
            temperature: if args.temperature > 0.0 { args.temperature } else { 1.0 },
            top_p: if args.top_p < 1.0 { args.top_p } else { 0.95 },
            max_tokens: args.max_tokens.min(256),
            max_similarity: args.synthesize_similarity,
            batch_size: args.batch_size,
            seed: args.seed,
            ..Default::default()
        };
        return synthesize(args.model.as_deref(), args.device, args.matmuls, seeds, output, &options);
    }
    let prompts = collect_prompts(&args)?;
    let mut model = load_model(args.model.as_deref(), args.device)?;
    use_matmuls(&mut model, args.matmuls)?;
    let template = model.chat_template.as_ref();
    let rendered: Vec<String> = prompts
        .iter()
        .map(|p| render(template, &model.source, p, args.chat, args.system.as_deref()))
        .collect::<Result<_, _>>()?;
    let token_ids: Vec<Vec<u32>> =
        rendered.iter().map(|text| model.tokenizer.encode(text, true)).collect::<Result<_, _>>()?;

    if prompts.len() == 1 && !args.json {
        return stream_one(&model, &token_ids[0], &params);
    }
    let bar = progress::bar(prompts.len() as u64, "{pos}/{len} prompts");
    let started = Instant::now();
    let mut generated = 0usize;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (batch_index, batch) in token_ids.chunks(args.batch_size).enumerate() {
        let completions = generate_with_logprobs(
            &model.model,
            &model.tokenizer,
            batch,
            &params,
            &model.stop_ids,
            args.logprobs,
            |_, _| {},
        )?;
        for (offset, completion) in completions.iter().enumerate() {
            let index = batch_index * args.batch_size + offset;
            generated += completion.token_ids.len();
            let mut line = json!({
                "index": index,
                "prompt": rendered[index],
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "prompt_tokens": token_ids[index].len(),
                "completion_tokens": completion.token_ids.len(),
            });
            if args.logprobs.is_some() {
                let token = |id: u32| model.tokenizer.decode(&[id], false).unwrap_or_default();
                line["logprobs"] = completion
                    .logprobs
                    .iter()
                    .map(|t| {
                        json!({
                            "token": token(t.id),
                            "id": t.id,
                            "logprob": t.logprob,
                            "top": t.top.iter().map(|(id, lp)| json!({"token": token(*id), "id": id, "logprob": lp})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
            }
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        bar.inc(batch.len() as u64);
        bar.set_message(format!("{:.1} tok/s", generated as f64 / started.elapsed().as_secs_f64()));
    }
    bar.finish_and_clear();
    eprintln!(
        "{} prompts, {generated} tokens in {:.1} s ({:.1} tok/s)",
        prompts.len(),
        started.elapsed().as_secs_f64(),
        generated as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The remote teacher asked for with --teacher-url, if any.
fn remote_options(args: &GenerateArgs) -> Result<Option<distill_teacher::RemoteOptions>> {
    let Some(first) = args.teacher_urls.first() else { return Ok(None) };
    let timeout = std::time::Duration::from_secs(args.teacher_timeout.max(1));
    let options = distill_teacher::RemoteOptions::from_env(
        args.teacher_urls.clone(),
        args.teacher_model.clone(),
        args.teacher_concurrency,
        timeout,
        8,
    )
    .with_context(|| format!("asking {first} which model it serves (or pass --teacher-model)"))?;
    Ok(Some(options))
}

fn collect_prompts(args: &GenerateArgs) -> Result<Vec<Prompt>> {
    if let Some(path) = &args.prompts_file {
        return Ok(read_prompt_file(path)?.into_iter().map(|r| r.prompt).collect());
    }
    if args.prompts.is_empty() {
        bail!("no prompt given: pass PROMPT text or --prompts-file FILE (see `distill generate --help`)");
    }
    if let Some(i) = args.prompts.iter().position(String::is_empty) {
        bail!("prompt {} is empty", i + 1);
    }
    Ok(args.prompts.iter().cloned().map(Prompt::Text).collect())
}

/// Loads `spec` on `device`, or the default teacher when no spec is given.
pub fn load_model(spec: Option<&str>, device: DeviceSpec) -> Result<LoadedModel> {
    let device = device.open()?;
    let spec = match spec {
        Some(s) => s.to_string(),
        None => distill_models::teacher::default_teacher()
            .with_context(|| {
                format!(
                    "no --model given and the default teacher is not fetched\n{}",
                    distill_models::teacher::FETCH_HINT
                )
            })?
            .display()
            .to_string(),
    };
    let started = Instant::now();
    let model = distill_models::load(&spec, &device).with_context(|| format!("loading model `{spec}`"))?;
    let cfg = model.model.config();
    let on = if device.is_cpu() { String::new() } else { format!(" on {}", distill_models::device::name(&device)) };
    eprintln!(
        "loaded {spec}{on}: {:.1}M parameters, vocab {}, context {} ({:.1} s)",
        cfg.num_parameters() as f64 / 1e6,
        cfg.vocab_size,
        cfg.max_position_embeddings,
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn stream_one(model: &LoadedModel, prompt: &[u32], params: &SamplingParams) -> Result<()> {
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let mut first_text = None;
    let completions =
        generate(&model.model, &model.tokenizer, &[prompt.to_vec()], params, &model.stop_ids, |_, piece| {
            first_text.get_or_insert_with(Instant::now);
            if write_error.is_none() {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_error = Some(e);
                }
            }
        })?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    writeln!(out)?;
    let c = &completions[0];
    let secs = started.elapsed().as_secs_f64();
    // Decoding speed from the first text on (the prompt's prefill excluded), as llama.cpp reports it.
    let decoding = first_text
        .map(|t| t.elapsed().as_secs_f64())
        .filter(|&s| s > 0.0 && c.token_ids.len() > 1)
        .map(|s| format!(", decoding {:.1} tok/s", (c.token_ids.len() - 1) as f64 / s))
        .unwrap_or_default();
    eprintln!(
        "[{} prompt + {} generated tokens in {secs:.1} s, {:.1} tok/s{decoding}, finish: {:?}]",
        prompt.len(),
        c.token_ids.len(),
        c.token_ids.len() as f64 / secs,
        c.finish_reason
    );
    Ok(())
}

fn synthesize(
    model: Option<&str>,
    device: DeviceSpec,
    matmuls: Option<Precision>,
    seeds: &Path,
    output: &Path,
    options: &distill_teacher::synthesize::SynthesizeOptions,
) -> Result<()> {
    let seeds: Vec<String> = read_prompt_file(seeds)?.iter().map(|r| r.display_text()).collect();
    let mut model = load_model(model, device)?;
    use_matmuls(&mut model, matmuls)?;
    let bar = progress::bar(options.count as u64, "{pos}/{len} prompts kept");
    let report = distill_teacher::synthesize::synthesize(&model, &seeds, output, options, &mut |kept, _| {
        bar.set_position(kept as u64)
    })?;
    bar.finish_and_clear();
    let r = report.rejected;
    eprintln!(
        "{}: {} prompts ({} new, {} from before) after {} attempts; not kept: {} too short, {} too long, {} in another language, {} near-duplicates",
        output.display(),
        report.total,
        report.total - report.resumed,
        report.resumed,
        report.attempts,
        r.too_short,
        r.too_long,
        r.other_language,
        r.near_duplicate
    );
    Ok(())
}
