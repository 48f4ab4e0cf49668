//! The training loop: resume, the micro-batch loop (offline batches from the store, on-policy and
//! online batches from a [`Teacher`]), metrics, held-out evaluation, checkpoints and a clean stop
//! on Ctrl-C. Progress goes to a [`TrainObserver`]; the `distill` binary draws it with indicatif.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg: distill_train::TrainConfig = toml::from_str(&std::fs::read_to_string("run.toml")?)?;
//! let outcome = distill_train::Trainer::new(cfg, &mut ())?.run(&mut ())?;
//! println!("student in {}", outcome.final_dir.display());
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use distill_models::{checkpoint, LlamaConfig, ModelText};
use distill_store::{Dataset, Truncation};
use distill_teacher::Teacher;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self as ckpt, TrainerState};
use crate::config::Sampler;
use crate::config::TrainConfig;
use crate::cross::{CrossConfig, CrossData, CrossStream};
use crate::data::BatchStream;
use crate::error::{Error, Result};
use crate::init::{build_student, InitialStudent};
use crate::optim::Schedule;
use crate::rollouts::{is_rollout, open_teacher, Rollouts};
use crate::student::{Optimizer, Student};
use crate::tensorboard::EventWriter;
use crate::{Divergence, LossConfig};

/// What a run is about to train, reported once before the first step.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStart {
    pub student: LlamaConfig,
    /// The teacher layers a pruned student was cut from (`None`: not pruned here, or resumed).
    pub kept_layers: Option<Vec<usize>>,
    /// The dataset and its size, or how batches are made without one.
    pub data: String,
    /// The step a resumed run continues from (`None`: a fresh run).
    pub resumed_at: Option<u64>,
    /// The step count the run had before this config raised it (`None`: not extended).
    pub extended_from: Option<u64>,
    /// The datasets whose sequences rows of `seq_len` cut, and what that drops.
    pub truncation: Vec<(String, Truncation)>,
    pub steps: u64,
}

/// Where a run writes its TensorBoard event files, inside its output directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// One optimiser step, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub epoch: u64,
    /// Mean loss of the step's micro-batches (summed in f32).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens trained on so far.
    pub tokens: u64,
    /// Tokens per second in this session.
    pub tokens_per_s: f64,
    /// Completion tokens the on-policy teacher scored in this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_teacher_tokens: Option<u64>,
}

/// A held-out evaluation, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: u64,
    /// Mean KL(teacher ‖ student) per token, nats.
    pub eval_kl: f64,
    /// Share of positions where the student's argmax is the teacher's top-1 (with another
    /// tokenizer: of aligned spans whose first token both rank first).
    pub eval_top1: f64,
    pub eval_tokens: usize,
    /// With another tokenizer (where KL over shared ids is undefined, `eval_kl` is NaN): the
    /// student's negative log-likelihood of the teacher's held-out text, nats per byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_nll_per_byte: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Steps done, over all sessions.
    pub steps: u64,
    /// Target tokens trained on, over all sessions.
    pub tokens: u64,
    /// Seconds this session trained.
    pub seconds: f64,
    /// Stopped early (Ctrl-C or [`Trainer::stop_handle`]); the checkpoint holds where it stood.
    pub interrupted: bool,
    /// The run's checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// The trained student in HF layout (written when the run finished).
    pub final_dir: PathBuf,
    pub metrics: PathBuf,
}

/// Hears how a run goes. Every method does nothing unless implemented; `()` hears nothing.
pub trait TrainObserver {
    /// Pruning (layer influence, then width) measured `done` of `total` calibration batches.
    fn calibrating(&mut self, _done: usize, _total: usize) {}
    fn started(&mut self, _start: &RunStart) {}
    fn step(&mut self, _metrics: &StepMetrics) {}
    fn evaluated(&mut self, _metrics: &EvalMetrics) {}
    fn finished(&mut self, _outcome: &TrainOutcome) {}
}

impl TrainObserver for () {}

/// A run being trained: the student, its optimiser, the data and where the run stands.
pub struct Trainer {
    cfg: TrainConfig,
    student: Student,
    optimizer: Optimizer,
    state: TrainerState,
    /// The student's tokenizer and chat template, saved with every checkpoint.
    text: ModelText,
    dataset: Option<Dataset>,
    eval: Option<Dataset>,
    rollouts: Option<Rollouts>,
    /// With `[cross_tokenizer]`: the converted data and the vocabulary map.
    cross: Option<CrossData>,
    resumed: bool,
    metrics: File,
    metrics_path: PathBuf,
    /// The same figures for TensorBoard (`OUTPUT/tensorboard/`).
    events: EventWriter,
    stop: Arc<AtomicBool>,
}

impl Trainer {
    /// [`Self::with_teacher`] with the teacher `[on_policy]` names, if any.
    pub fn new(cfg: TrainConfig, observer: &mut dyn TrainObserver) -> Result<Self> {
        Self::with_teacher(cfg, None, observer)
    }

    /// Prepares the run `cfg` describes: writes the resolved config into its output directory
    /// (or, when a checkpoint is there, checks it is this run's and resumes from it), opens the
    /// datasets, builds the student and the optimiser. `teacher` makes the on-policy or online
    /// batches of `[on_policy]` (unused without that section); without one the teacher it names is
    /// loaded or connected to.
    pub fn with_teacher(
        cfg: TrainConfig,
        teacher: Option<Box<dyn Teacher>>,
        observer: &mut dyn TrainObserver,
    ) -> Result<Self> {
        cfg.validate()?;
        // A missing GPU is found before minutes of loading, not after.
        let device = cfg.device.open()?;
        let out = &cfg.output;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let resolved = toml::to_string(&cfg).map_err(|e| Error::Config(e.to_string()))?;
        let resume_from = ckpt::find(out);
        let config_path = out.join("config.toml");
        let mut extended_from = None;
        if resume_from.is_some() {
            let saved = std::fs::read_to_string(&config_path).unwrap_or_default();
            if saved != resolved {
                extended_from = Some(ckpt::check_extension(&saved, &cfg, out)?);
            }
        }
        if resume_from.is_none() || extended_from.is_some() {
            std::fs::write(&config_path, &resolved).map_err(|e| Error::io(&config_path, e))?;
        }

        let dataset = match (&cfg.dataset, &cfg.on_policy) {
            (Some(path), _) => Some(Dataset::open(path)?),
            (None, Some(o)) if o.fraction == 1.0 && o.start_step == 0 => None,
            (None, _) => {
                return Err(Error::Config(
                    "`dataset` is missing: only pure online or on-policy training ([on_policy] with fraction = 1 and \
                     start_step = 0) needs none\nHINT: make one with `distill generate --dataset DIR --prompts-file FILE`"
                        .into(),
                ))
            }
        };
        let eval = cfg.eval_dataset.as_ref().map(|p| Dataset::open(p)).transpose()?;
        let mut truncation = Vec::new();
        for (role, d) in [("dataset", &dataset), ("eval_dataset", &eval)] {
            let Some(d) = d else { continue };
            let t = d.truncation(cfg.seq_len)?;
            if t.kept_tokens == 0 && t.target_tokens > 0 {
                return Err(Error::Config(format!(
                    "with seq_len = {} no completion token of {} fits a row: its sequences have up to {} tokens, \
                     their prompts up to {}\nHINT: set seq_len = {} to keep every token (at least more than {})",
                    cfg.seq_len,
                    d.dir().display(),
                    t.longest,
                    t.longest_prompt,
                    t.longest,
                    t.longest_prompt
                )));
            }
            if t.truncated > 0 {
                truncation.push((format!("{role} {}", d.dir().display()), t));
            }
        }
        let initial = match &resume_from {
            Some(dir) => {
                let source = distill_models::load(&dir.display().to_string(), &Device::Cpu)
                    .map_err(|e| Error::from(e).context(format!("loading the checkpoint in {}", dir.display())))?;
                let weights = source.model.named_parameters().into_iter().collect();
                InitialStudent { config: source.model.config().clone(), weights, source, kept_layers: None }
            }
            None => build_student(&cfg, dataset.as_ref(), &mut |done, total| observer.calibrating(done, total))?,
        };
        let tok = &initial.source.tokenizer;
        if cfg.cross_tokenizer.is_none() {
            if let Some(dataset) = &dataset {
                dataset.check_student(&tok.fingerprint(), tok.vocab_size(), initial.config.vocab_size)?;
            }
            if let Some(eval) = &eval {
                eval.check_student(&tok.fingerprint(), tok.vocab_size(), initial.config.vocab_size)
                    .map_err(|e| Error::from(e).context("eval_dataset was made with another teacher than dataset"))?;
            }
        }
        let weights = initial
            .weights
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_device(&device)?.to_dtype(candle_core::DType::F32)?)))
            .collect::<candle_core::Result<_>>()?;
        let student = Student::with_compute(initial.config.clone(), &weights, Some(cfg.precision.dtype()))?;
        drop(weights);
        // The student holds its own copy now: free the initial weights and the model the tokenizer
        // came from (a whole teacher, for a pruned or config student), keeping its text side.
        let InitialStudent { config: student_cfg, weights, source, kept_layers } = initial;
        drop(weights);
        let text = source.into_text();
        let rollouts = match &cfg.on_policy {
            Some(o) => {
                let k = o.k.or(dataset.as_ref().map(|d| d.manifest().spec.k)).unwrap_or(20);
                let teacher = match teacher {
                    Some(t) => t,
                    None => open_teacher(o, &text, student_cfg.vocab_size, &device)?,
                };
                let cross = cfg.cross_tokenizer.is_some();
                Some(Rollouts::new(o, teacher, &text, k, cfg.seq_len, cfg.batch_size, cross)?)
            }
            None => None,
        };
        let cross = match (&cfg.cross_tokenizer, &dataset) {
            (None, _) => None,
            (Some(_), Some(d)) => {
                let data = CrossData::open(d, eval.as_ref(), &text, cfg.seq_len)?;
                if let Some(r) = &rollouts {
                    if r.teacher().tokenizer().fingerprint() != d.manifest().spec.tokenizer_hash {
                        return Err(Error::Config(format!(
                            "on_policy.teacher has another tokenizer than the teacher that made {}",
                            d.dir().display()
                        )));
                    }
                }
                Some(data)
            }
            (Some(_), None) => rollouts.as_ref().map(|r| CrossData::without_dataset(r.teacher(), &text, r.k())),
        };
        let schedule = Schedule {
            peak: cfg.optimizer.lr,
            warmup: cfg.schedule.warmup,
            total: cfg.steps,
            min_ratio: cfg.schedule.min_lr_ratio,
        };
        let mut optimizer = Optimizer::new(&student, cfg.optimizer, schedule, cfg.clip_grad_norm)?;
        let mut state = TrainerState { step: 0, epoch: 0, batches_in_epoch: 0, tokens: 0, optimizer_steps: 0 };
        let metrics_path = out.join("metrics.jsonl");
        if let Some(dir) = &resume_from {
            let (saved, moments) = ckpt::load_state(dir)?;
            optimizer.adamw.load_state(&moments, saved.optimizer_steps)?;
            state = saved;
            ckpt::truncate_metrics(&metrics_path, state.step)?;
        } else {
            std::fs::write(&metrics_path, "").map_err(|e| Error::io(&metrics_path, e))?;
        }
        let metrics =
            std::fs::OpenOptions::new().append(true).open(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        let events = EventWriter::create(&out.join(TENSORBOARD_DIR))?;
        let data = match (&cfg.dataset, &dataset) {
            (Some(path), Some(d)) => format!("dataset {} ({} tokens)", path.display(), d.manifest().tokens()),
            _ => "no dataset: every batch is made by the teacher inside the loop".to_string(),
        };
        observer.started(&RunStart {
            student: student_cfg,
            kept_layers,
            data,
            resumed_at: resume_from.as_ref().map(|_| state.step),
            extended_from,
            truncation,
            steps: cfg.steps,
        });
        Ok(Self {
            cfg,
            student,
            optimizer,
            state,
            text,
            dataset,
            eval,
            rollouts,
            cross,
            resumed: resume_from.is_some(),
            metrics,
            metrics_path,
            events,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The student being trained.
    pub fn student(&self) -> &Student {
        &self.student
    }

    /// Setting this flag finishes the current step, writes a checkpoint and ends [`Self::run`].
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops the run cleanly on Ctrl-C (a second Ctrl-C exits at once). A process has one
    /// handler: where another is installed already, this one is not.
    pub fn stop_on_ctrl_c(&self) {
        let flag = self.stop.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }

    /// Trains to `cfg.steps` (or until stopped), evaluating every `eval_every` steps and
    /// checkpointing every `checkpoint_every`; a finished run saves the student to `final/`.
    pub fn run(mut self, observer: &mut dyn TrainObserver) -> Result<TrainOutcome> {
        if !self.resumed {
            self.evaluate(0, observer)?;
        }
        let started = Instant::now();
        let session_start_tokens = self.state.tokens;
        let cfg = self.cfg.clone();
        let (epoch, batches_in_epoch) = (self.state.epoch, self.state.batches_in_epoch);
        let dataset = self.dataset.take();
        let cross_train = self.cross.as_mut().map(|c| std::mem::take(&mut c.train));
        let mut stream = match (&cross_train, &dataset) {
            (Some(seqs), Some(_)) => Some(Stream::Cross(CrossStream::new(
                seqs,
                cfg.seq_len,
                cfg.batch_size,
                cfg.seed,
                epoch,
                batches_in_epoch,
            )?)),
            (None, Some(d)) => Some(Stream::Same(Box::new(BatchStream::new(
                d,
                cfg.seq_len,
                cfg.batch_size,
                cfg.seed,
                epoch,
                batches_in_epoch,
            )?))),
            (_, None) => None,
        };
        let mut interrupted = false;
        while self.state.step < cfg.steps {
            let (loss, tokens) = self.micro_batches(stream.as_mut())?;
            let (lr, grad_norm) = self.optimizer.apply()?;
            let state = &mut self.state;
            state.step += 1;
            state.optimizer_steps = self.optimizer.adamw.steps_taken();
            state.tokens += tokens as u64;
            let step = state.step;
            if !loss.is_finite() {
                return Err(Error::Config(format!(
                    "the loss became {loss} at step {step}\nHINT: lower optimizer.lr or set clip_grad_norm"
                )));
            }
            let metrics = StepMetrics {
                step,
                epoch: state.epoch,
                loss: loss as f64,
                lr,
                grad_norm,
                tokens: state.tokens,
                tokens_per_s: (state.tokens - session_start_tokens) as f64 / started.elapsed().as_secs_f64(),
                rollout_teacher_tokens: self.rollouts.as_ref().map(|r| r.teacher_tokens),
            };
            self.log(&metrics)?;
            observer.step(&metrics);
            if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
                self.evaluate(step, observer)?;
            }
            interrupted = self.stop.load(Ordering::SeqCst);
            if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || interrupted {
                self.save_checkpoint()?;
            }
            if interrupted {
                break;
            }
        }
        let final_dir = cfg.output.join("final");
        if !interrupted {
            let template = self.text.chat_template.as_ref().map(|t| t.source().to_string());
            checkpoint::save_hf_dir(&final_dir, &self.student.model, &self.text.tokenizer, template.as_deref())?;
        }
        let outcome = TrainOutcome {
            steps: self.state.step,
            tokens: self.state.tokens,
            seconds: started.elapsed().as_secs_f64(),
            interrupted,
            checkpoint_dir: ckpt::checkpoint_dir(&cfg.output),
            final_dir,
            metrics: self.metrics_path.clone(),
        };
        observer.finished(&outcome);
        Ok(outcome)
    }

    /// Accumulates one step's `grad_accum` micro-batches: rollouts where [`is_rollout`] says so,
    /// offline batches from `stream` otherwise. Returns the mean micro-batch loss and the target
    /// tokens trained on.
    fn micro_batches(&mut self, mut stream: Option<&mut Stream<'_>>) -> Result<(f32, usize)> {
        let cfg = &self.cfg;
        let mut micro_losses = Vec::with_capacity(cfg.grad_accum as usize);
        let mut n = 0usize;
        while (micro_losses.len() as u64) < cfg.grad_accum {
            if let (Some(r), Some(o)) = (self.rollouts.as_mut(), &cfg.on_policy) {
                // Micro-batches counted from the first step with rollouts.
                let since_start = self.state.step.checked_sub(o.start_step);
                let micro_index = since_start.map(|s| s * cfg.grad_accum + micro_losses.len() as u64);
                if let (Some(micro_index), Some(cross), Some(cross_cfg)) =
                    (micro_index.filter(|&m| is_rollout(m, o.fraction)), self.cross.as_mut(), &cfg.cross_tokenizer)
                {
                    // Another tokenizer: the cross-tokenizer loss on the rollouts, without the
                    // cross-entropy on the student's own samples (it would reinforce them).
                    let sequences =
                        r.cross_sequences(&self.student, micro_index, cfg.seed, &mut cross.map, cfg.seq_len)?;
                    let rollout_cfg = match o.sampler {
                        Sampler::Student => CrossConfig { ce_weight: 0.0, ..*cross_cfg },
                        Sampler::Teacher => *cross_cfg,
                    };
                    let batches = CrossStream::batches_in_order(&sequences, cfg.seq_len, cfg.batch_size);
                    let weight = 1.0 / (cfg.grad_accum as f64 * batches.len().max(1) as f64);
                    let mut losses = Vec::with_capacity(batches.len());
                    for batch in &batches {
                        if let Some(micro) = self.student.cross_batch_loss(batch, cross.k, &cross.map, &rollout_cfg)? {
                            self.optimizer.accumulate(&micro.objective, weight)?;
                            losses.push(micro.loss as f32);
                            n += micro.tokens;
                        }
                    }
                    micro_losses.push(losses.iter().sum::<f32>() / losses.len().max(1) as f32);
                    continue;
                }
                if let Some(micro_index) = micro_index.filter(|&m| is_rollout(m, o.fraction)) {
                    // The student's own completions, towards the teacher with JSD(β).
                    let loss = LossConfig {
                        divergence: Divergence::Jsd { beta: o.beta },
                        kd_weight: 1.0,
                        tail: o.tail,
                        ..cfg.loss
                    };
                    let batches = r.batches(&self.student, micro_index, cfg.seed)?;
                    let weight = 1.0 / (cfg.grad_accum as f64 * batches.len().max(1) as f64);
                    let mut losses = Vec::with_capacity(batches.len());
                    for batch in &batches {
                        if let Some(micro) = self.student.batch_loss(batch, &loss)? {
                            self.optimizer.accumulate(&micro.objective, weight)?;
                            losses.push(micro.loss as f32);
                            n += micro.tokens;
                        }
                    }
                    micro_losses.push(losses.iter().sum::<f32>() / losses.len().max(1) as f32);
                    continue;
                }
            }
            // Without a dataset every micro-batch is a rollout (checked when the run was made).
            let stream = stream
                .as_deref_mut()
                .ok_or_else(|| Error::Config("no dataset to read an offline batch from".into()))?;
            let micro = match stream {
                Stream::Same(stream) => {
                    let batch = stream.next_batch()?;
                    (self.state.epoch, self.state.batches_in_epoch) = (stream.epoch, stream.batches_in_epoch);
                    self.student.batch_loss(&batch, &cfg.loss)?
                }
                Stream::Cross(stream) => {
                    let batch = stream.next_batch();
                    (self.state.epoch, self.state.batches_in_epoch) = (stream.epoch, stream.batches_in_epoch);
                    let (Some(cross), Some(cross_cfg)) = (&self.cross, &cfg.cross_tokenizer) else {
                        return Err(Error::Config("cross-tokenizer batches without [cross_tokenizer]".into()));
                    };
                    self.student.cross_batch_loss(&batch, cross.k, &cross.map, cross_cfg)?
                }
            };
            let Some(micro) = micro else { continue };
            self.optimizer.accumulate(&micro.objective, 1.0 / cfg.grad_accum as f64)?;
            micro_losses.push(micro.loss as f32);
            n += micro.tokens;
        }
        Ok((micro_losses.iter().sum::<f32>() / micro_losses.len() as f32, n))
    }

    /// Held-out KL and top-1 agreement at `step`, logged and reported (nothing without an
    /// `eval_dataset`).
    fn evaluate(&mut self, step: u64, observer: &mut dyn TrainObserver) -> Result<()> {
        let Some(eval) = &self.eval else { return Ok(()) };
        let metrics = match &self.cross {
            Some(cross) => {
                let batches = CrossStream::batches_in_order(&cross.eval, self.cfg.seq_len, self.cfg.batch_size);
                let e = self.student.cross_evaluate(&batches, cross.k, &cross.map)?;
                EvalMetrics {
                    step,
                    eval_kl: f64::NAN,
                    eval_top1: e.top1_agreement,
                    eval_tokens: e.spans,
                    eval_nll_per_byte: Some(e.nll_per_byte),
                }
            }
            None => {
                let e = self.student.evaluate(eval, self.cfg.seq_len, self.cfg.batch_size)?;
                EvalMetrics {
                    step,
                    eval_kl: e.kl,
                    eval_top1: e.top1_agreement,
                    eval_tokens: e.tokens,
                    eval_nll_per_byte: None,
                }
            }
        };
        self.log(&metrics)?;
        observer.evaluated(&metrics);
        Ok(())
    }

    /// Appends a step's or an evaluation's figures to `metrics.jsonl` and, as scalars tagged
    /// `train/…` or `eval/…`, to the TensorBoard event file.
    fn log(&mut self, line: &impl Serialize) -> Result<()> {
        let value = serde_json::to_value(line).map_err(|e| Error::Config(e.to_string()))?;
        writeln!(self.metrics, "{value}")
            .and_then(|_| self.metrics.flush())
            .map_err(|e| Error::io(&self.metrics_path, e))?;
        let Some(fields) = value.as_object() else { return Ok(()) };
        let step = fields.get("step").and_then(|s| s.as_u64()).unwrap_or(self.state.step);
        let tags: Vec<(String, f64)> = fields
            .iter()
            .filter(|(name, _)| name.as_str() != "step")
            .filter_map(|(name, v)| {
                let v = v.as_f64()?;
                Some(match name.strip_prefix("eval_") {
                    Some(rest) => (format!("eval/{rest}"), v),
                    None => (format!("train/{name}"), v),
                })
            })
            .collect();
        let tags: Vec<(&str, f64)> = tags.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.events.scalars(step, &tags)
    }

    fn save_checkpoint(&self) -> Result<()> {
        let template = self.text.chat_template.as_ref().map(|t| t.source().to_string());
        ckpt::save(
            &self.cfg.output,
            &self.student.model,
            &self.text.tokenizer,
            template.as_deref(),
            &self.optimizer.adamw,
            self.state,
        )
    }
}

/// Where offline batches come from: the dataset as it is, or re-tokenised for a student with
/// another tokenizer.
enum Stream<'a> {
    Same(Box<BatchStream<'a>>),
    Cross(CrossStream<'a>),
}
