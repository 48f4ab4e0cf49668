//! Progress display: indicatif bars for the libraries' progress reports.

use distill_train::{EvalMetrics, RunStart, StepMetrics, TrainObserver, TrainOutcome};
use indicatif::{ProgressBar, ProgressStyle};

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
        eprintln!(
            "student: {} layers, {:.1}M parameters; {}",
            start.student.num_hidden_layers,
            start.student.num_parameters() as f64 / 1e6,
            start.data
        );
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
    }

    fn step(&mut self, m: &StepMetrics) {
        if let Some(b) = &self.bar {
            b.set_position(m.step);
            b.set_message(format!("loss {:.4}, {:.0} tok/s", m.loss, m.tokens_per_s));
        }
    }

    fn evaluated(&mut self, m: &EvalMetrics) {
        if let Some(b) = &self.bar {
            b.println(format!("step {}: held-out KL {:.4}, top-1 {:.3}", m.step, m.eval_kl, m.eval_top1));
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
