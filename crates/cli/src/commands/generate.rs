//! `distill generate`: text from a model, streamed for one prompt, batched JSONL for many.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use distill_kernels::packed::Precision;
use distill_models::{generate, generate_with_logprobs, ChatMessage, ChatTemplate, LoadedModel, SamplingParams};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::prompts::{read_prompt_file, Prompt};

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
    #[arg(long, default_value_t = 8)]
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
    #[arg(long, default_value_t = 32, help_heading = "Dataset")]
    k: usize,

    /// Completions generated per prompt (a prompt with a given completion is scored once).
    #[arg(long, default_value_t = 1, help_heading = "Dataset")]
    completions: usize,

    /// Prompts per Parquet shard (the unit of resumption).
    #[arg(long, default_value_t = 64, help_heading = "Dataset")]
    prompts_per_shard: usize,

    /// Temperature of the stored teacher distributions (softmax(logits / T)).
    #[arg(long, default_value_t = 1.0, help_heading = "Dataset")]
    logprob_temperature: f32,

    /// How shards store the top-k: `coded` (range-coded, about half the bytes, read through
    /// distill) or `plain` (lists any Parquet reader uses as they are). Default: coded for a new
    /// dataset, the dataset's own layout when resuming one.
    #[arg(long, value_enum, help_heading = "Dataset")]
    layout: Option<super::dataset::Layout>,

    /// Arithmetic of the model's matmuls. `bf16` rounds weights and activations to bfloat16 and
    /// sums in f32: about 2.5× faster scoring and generation on CPUs with AVX-512 BF16, at a small
    /// cost in fidelity (measured in the README). Elsewhere it falls back to f32, with a warning.
    #[arg(long, value_enum, default_value_t = Matmuls::F32, conflicts_with = "teacher_urls")]
    matmuls: Matmuls,

    /// With --dataset: the teacher is served at this OpenAI-compatible URL (repeat for several
    /// endpoints; prompts fan out over all, a failing one is retried elsewhere). --model then
    /// names a local copy of the teacher for its tokenizer and chat template. The API key is read
    /// from DISTILL_TEACHER_API_KEY or OPENAI_API_KEY. At most 20 alternatives per token (--k 20).
    /// Given completions are scored through `prompt_logprobs` (vLLM, distill serve).
    #[arg(long = "teacher-url", value_name = "URL", requires = "dataset", help_heading = "Remote teacher")]
    teacher_urls: Vec<String>,

    /// Model name asked of the endpoints (default: the first model the first endpoint lists).
    #[arg(long, help_heading = "Remote teacher")]
    teacher_model: Option<String>,

    /// Requests in flight per endpoint.
    #[arg(long, default_value_t = 4, help_heading = "Remote teacher")]
    teacher_concurrency: usize,

    /// Seconds before a request is abandoned (and retried on another endpoint).
    #[arg(long, default_value_t = 300, help_heading = "Remote teacher")]
    teacher_timeout: u64,
}

/// The arithmetic of a local model's matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Matmuls {
    /// f32 throughout (weights packed once for the AVX-512 kernel where the CPU has it).
    F32,
    /// bf16 operands, f32 sums (CPUs with AVX-512 BF16).
    Bf16,
}

/// Packs `model`'s weights for the asked precision's kernel where the CPU runs it (the model is
/// only used for inference from here on); returns what it runs (`"f32"` or `"bf16"`), warning
/// when bf16 was asked for and is not available. f32 falls back to the plain matmuls silently:
/// the same arithmetic.
pub fn use_matmuls(model: &mut LoadedModel, matmuls: Matmuls) -> Result<&'static str> {
    if matmuls == Matmuls::F32 {
        model.model.use_packed_matmuls(Precision::F32)?;
        return Ok("f32");
    }
    let started = Instant::now();
    if model.model.use_packed_matmuls(Precision::Bf16)? {
        eprintln!("matmuls in bf16 (packed in {:.1} s)", started.elapsed().as_secs_f64());
        Ok("bf16")
    } else {
        eprintln!("warning: --matmuls bf16 needs a CPU with AVX-512 BF16; running f32 matmuls");
        model.model.use_packed_matmuls(Precision::F32)?;
        Ok("f32")
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
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
        return super::dataset::run(super::dataset::DatasetOptions {
            output: output.clone(),
            prompts_file: args.prompts_file.clone().expect("clap requires --prompts-file with --dataset"),
            model: args.model.clone(),
            chat: args.chat,
            system: args.system.clone(),
            sampling: params,
            k: args.k,
            completions: args.completions,
            prompts_per_shard: args.prompts_per_shard,
            batch_size: args.batch_size,
            logprob_temperature: args.logprob_temperature,
            layout: args.layout,
            matmuls: args.matmuls,
            remote: remote_options(&args)?,
        });
    }
    let prompts = collect_prompts(&args)?;
    let mut model = load_model(args.model.as_deref())?;
    use_matmuls(&mut model, args.matmuls)?;
    let rendered: Vec<String> =
        prompts.iter().map(|p| render(&model, p, args.chat, args.system.as_deref())).collect::<Result<_>>()?;
    let token_ids: Vec<Vec<u32>> =
        rendered.iter().map(|text| model.tokenizer.encode(text, true)).collect::<Result<_, _>>()?;

    if prompts.len() == 1 && !args.json {
        return stream_one(&model, &token_ids[0], &params);
    }
    let bar = ProgressBar::new(prompts.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} prompts [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("static template is valid"),
    );
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
fn remote_options(args: &GenerateArgs) -> Result<Option<distill_teacher::remote::RemoteOptions>> {
    if args.teacher_urls.is_empty() {
        return Ok(None);
    }
    let api_key = ["DISTILL_TEACHER_API_KEY", "OPENAI_API_KEY"].iter().find_map(|v| std::env::var(v).ok());
    let timeout = std::time::Duration::from_secs(args.teacher_timeout.max(1));
    let model = match &args.teacher_model {
        Some(m) => m.clone(),
        None => distill_teacher::remote::first_model(&args.teacher_urls[0], api_key.as_deref(), timeout).with_context(
            || format!("asking {} which model it serves (or pass --teacher-model)", args.teacher_urls[0]),
        )?,
    };
    Ok(Some(distill_teacher::remote::RemoteOptions {
        urls: args.teacher_urls.clone(),
        model,
        concurrency: args.teacher_concurrency.max(1),
        api_key,
        timeout,
        attempts: 8,
    }))
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

/// Loads `spec`, or the default teacher when none is given.
pub fn load_model(spec: Option<&str>) -> Result<LoadedModel> {
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
    let model = distill_models::load(&spec, &Device::Cpu).with_context(|| format!("loading model `{spec}`"))?;
    let cfg = model.model.config();
    eprintln!(
        "loaded {spec}: {:.1}M parameters, vocab {}, context {} ({:.1} s)",
        cfg.num_parameters() as f64 / 1e6,
        cfg.vocab_size,
        cfg.max_position_embeddings,
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The conversation a prompt stands for: its messages, or text wrapped as a user message (after
/// `system`) when `chat` is set. `None` for raw text, which is fed to the model as it is.
pub fn conversation(prompt: &Prompt, chat: bool, system: Option<&str>) -> Option<Vec<ChatMessage>> {
    match prompt {
        Prompt::Text(_) if !chat => None,
        Prompt::Text(text) => {
            let mut m: Vec<ChatMessage> = system.map(|s| ChatMessage::new("system", s)).into_iter().collect();
            m.push(ChatMessage::new("user", text.as_str()));
            Some(m)
        }
        Prompt::Chat(messages) => Some(messages.clone()),
    }
}

pub fn render(model: &LoadedModel, prompt: &Prompt, chat: bool, system: Option<&str>) -> Result<String> {
    render_with(model.chat_template.as_ref(), &model.source, prompt, chat, system)
}

/// [`render`] with the chat template of the model named `name`.
pub fn render_with(
    template: Option<&ChatTemplate>,
    name: &str,
    prompt: &Prompt,
    chat: bool,
    system: Option<&str>,
) -> Result<String> {
    if let (Prompt::Text(text), false) = (prompt, chat) {
        return Ok(text.clone());
    }
    let messages = conversation(prompt, chat, system).unwrap_or_default(); // Some for everything else
    let template = template.with_context(|| {
        format!("model `{name}` has no chat template; drop --chat and `messages` prompts, or use a chat model")
    })?;
    Ok(template.render(&messages, true)?)
}

fn stream_one(model: &LoadedModel, prompt: &[u32], params: &SamplingParams) -> Result<()> {
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let completions =
        generate(&model.model, &model.tokenizer, &[prompt.to_vec()], params, &model.stop_ids, |_, piece| {
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
    eprintln!(
        "[{} prompt + {} generated tokens in {secs:.1} s, {:.1} tok/s, finish: {:?}]",
        prompt.len(),
        c.token_ids.len(),
        c.token_ids.len() as f64 / secs,
        c.finish_reason
    );
    Ok(())
}
