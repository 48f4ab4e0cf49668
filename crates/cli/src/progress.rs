//! Progress display: indicatif bars for the libraries' progress reports on a terminal, and a
//! line every half minute (and at the end) when stderr goes to a file or a pipe, where bars do not
//! show.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use distill_train::{EvalMetrics, RunStart, StepMetrics, TrainObserver, TrainOutcome};
use indicatif::{ProgressBar, ProgressStyle};

/// How often a progress line is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Progress lines for logs: `what done/total …, ETA` at most every [`LOG_EVERY`], always at the end;
/// silent on a terminal, where the bar shows it.
pub struct LogLines {
    on: bool,
    started: Instant,
    last: Instant,
    /// Units done when the clock started (a resumed run's earlier steps do not count for the ETA).
    first: u64,
}

impl LogLines {
    pub fn new(first: u64) -> Self {
        let now = Instant::now();
        Self { on: !std::io::stderr().is_terminal(), started: now, last: now, first }
    }

    /// Logs `what done/total, detail, ETA …` when due.
    pub fn tick(&mut self, what: &str, done: u64, total: u64, detail: &str) {
        if !self.on || (done < total && self.last.elapsed() < LOG_EVERY) {
            return;
        }
        self.last = Instant::now();
        let per_unit = self.started.elapsed().as_secs_f64() / done.saturating_sub(self.first).max(1) as f64;
        let eta = Duration::from_secs_f64(per_unit * total.saturating_sub(done) as f64);
        let detail = if detail.is_empty() { String::new() } else { format!(", {detail}") };
        eprintln!(
            "{what} {done}/{total}{detail}, ETA {}",
            humantime::format_duration(Duration::from_secs(eta.as_secs()))
        );
    }
}

/// A bar of `len` items whose middle reads `what` (an indicatif template, e.g. `{pos}/{len} prompts`),
/// then elapsed and remaining time and a message.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let template = format!("{{spinner}} {what} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    // The templates are written in this crate; a bad one shows the default style.
    let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}

/// `distill train`'s display: a line about the student, a bar of steps with the loss and speed,
/// a line per held-out evaluation, and how the run ended.
#[derive(Default)]
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    calibration: Option<ProgressBar>,
    log: Option<LogLines>,
    steps: u64,
}

impl TrainObserver for TrainProgress {
    fn calibrating(&mut self, done: usize, total: usize) {
        let bar = self.calibration.get_or_insert_with(|| bar(total as u64, "measuring importance {pos}/{len} batches"));
        bar.set_position(done as u64);
    }

    fn started(&mut self, start: &RunStart) {
        if let Some(b) = self.calibration.take() {
            b.finish_and_clear();
        }
        let kept = match &start.kept_layers {
            Some(layers) => {
                format!(" (teacher layers {})", layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "))
            }
            None => String::new(),
        };
        eprintln!(
            "student: {} layers{kept}, {:.1}M parameters; {}",
            start.student.num_hidden_layers,
            start.student.num_parameters() as f64 / 1e6,
            start.data
        );
        for (which, t) in &start.truncation {
            eprintln!(
                "warning: seq_len = {} cuts {} of the {} sequences of {which}: {} of its {} target tokens ({:.0}%) \
                 fall outside the rows; its longest sequence has {} tokens (set seq_len = {} to keep them all)",
                t.seq_len,
                t.truncated,
                t.sequences,
                t.dropped(),
                t.target_tokens,
                100.0 * t.dropped() as f64 / t.target_tokens.max(1) as f64,
                t.longest,
                t.longest
            );
        }
        if let Some(before) = start.extended_from {
            eprintln!(
                "extending the run from {before} to {} steps (the learning-rate schedule now spans {})",
                start.steps, start.steps
            );
        }
        if let Some(step) = start.resumed_at {
            eprintln!("resuming from the checkpoint at step {step} of {}", start.steps);
        }
        let b = bar(start.steps, "step {pos}/{len}");
        b.set_position(start.resumed_at.unwrap_or(0));
        self.bar = Some(b);
        self.log = Some(LogLines::new(start.resumed_at.unwrap_or(0)));
        self.steps = start.steps;
    }

    fn step(&mut self, m: &StepMetrics) {
        let detail = format!("loss {:.4}, {:.0} tok/s", m.loss, m.tokens_per_s);
        if let Some(log) = &mut self.log {
            log.tick("step", m.step, self.steps, &detail);
        }
        if let Some(b) = &self.bar {
            b.set_position(m.step);
            b.set_message(detail);
        }
    }

    fn evaluated(&mut self, m: &EvalMetrics) {
        let line = match m.eval_nll_per_byte {
            Some(nll) => format!("step {}: held-out NLL {nll:.4} nats/byte, span top-1 {:.3}", m.step, m.eval_top1),
            None => format!("step {}: held-out KL {:.4}, top-1 {:.3}", m.step, m.eval_kl, m.eval_top1),
        };
        match &self.bar {
            // A hidden bar (no terminal) prints nothing: the line goes to stderr as it is.
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finished(&mut self, outcome: &TrainOutcome) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if outcome.interrupted {
            eprintln!(
                "interrupted at step {}: checkpoint saved in {}; run the same command to continue",
                outcome.steps,
                outcome.checkpoint_dir.display()
            );
        } else {
            eprintln!(
                "trained {} steps ({} target tokens; {:.1} s in this session); student saved to {}; metrics in {}",
                outcome.steps,
                outcome.tokens,
                outcome.seconds,
                outcome.final_dir.display(),
                outcome.metrics.display()
            );
        }
    }
}
