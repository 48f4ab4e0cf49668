//! `distill inspect DIR`: what a teacher-signal dataset holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use distill_store::reader::topk_entropy;
use distill_store::Dataset;
use serde_json::json;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Dataset directory (made by `distill generate --dataset`).
    dir: PathBuf,

    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let dataset = Dataset::open(&args.dir)?;
    let m = dataset.manifest();
    let spec = &m.spec;
    let (mut entropy_sum, mut positions, mut prompt_tokens) = (0f64, 0usize, 0usize);
    for seq in dataset.sequences() {
        let seq = seq?;
        prompt_tokens += seq.prompt_len as usize;
        for (pos, tail) in seq.tail_logprobs.iter().enumerate() {
            entropy_sum += topk_entropy(&seq.topk_logprobs[pos * spec.k..(pos + 1) * spec.k], *tail);
            positions += 1;
        }
    }
    let tokens = m.tokens();
    let kl_mean = m.shards.iter().map(|s| s.quant_kl_mean * s.tokens as f64).sum::<f64>() / tokens.max(1) as f64;
    let kl_max = m.shards.iter().map(|s| s.quant_kl_max).fold(0f64, f64::max);
    let summary = json!({
        "dir": args.dir.display().to_string(),
        "complete": m.complete,
        "format_version": m.format_version,
        "prompts": spec.prompts,
        "prompts_done": m.prompts_done(),
        "shards": m.shards.len(),
        "sequences": m.sequences(),
        "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "bytes": m.bytes(),
        "bytes_per_token": m.bytes() as f64 / tokens.max(1) as f64,
        "teacher": spec.teacher,
        "teacher_hash": spec.teacher_hash,
        "tokenizer_hash": spec.tokenizer_hash,
        "vocab": spec.model_vocab,
        "k": spec.k,
        "logprob_temperature": spec.logprob_temperature,
        "sampling": spec.sampling,
        "completions_per_prompt": spec.completions_per_prompt,
        "mean_topk_entropy_nats": entropy_sum / positions.max(1) as f64,
        "quantization": spec.quantization,
        "quantization_kl_mean_nats": kl_mean,
        "quantization_kl_max_nats": kl_max,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "dataset      {}{}",
        args.dir.display(),
        if m.complete { "" } else { "  (incomplete: re-run the same `distill generate` to finish)" }
    );
    println!("teacher      {} (sha256 {})", spec.teacher, &spec.teacher_hash[..12]);
    println!("tokenizer    sha256 {}, vocab {}", &spec.tokenizer_hash[..12], spec.model_vocab);
    println!("prompts      {} of {} done, {} per prompt", m.prompts_done(), spec.prompts, spec.completions_per_prompt);
    println!("sequences    {} in {} shards", m.sequences(), m.shards.len());
    println!("tokens       {tokens} completion (with top-{}), {prompt_tokens} prompt", spec.k);
    println!("size         {} bytes, {:.1} bytes/token", m.bytes(), m.bytes() as f64 / tokens.max(1) as f64);
    println!("entropy      {:.3} nats mean over top-{} + tail", entropy_sum / positions.max(1) as f64, spec.k);
    println!(
        "quantisation {:?} (format version {}), step {} nats: KL mean {kl_mean:.2e}, max {kl_max:.2e} nats",
        spec.quantization.scheme, m.format_version, spec.quantization.step
    );
    println!("sampling     {}", spec.sampling);
    Ok(())
}
