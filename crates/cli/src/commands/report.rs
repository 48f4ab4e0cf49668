//! `distill report RUN_DIR`: the run's report page and figures (`distill_eval::report`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
#[command(after_help = "Example:
  distill report runs/support --baseline runs/support-sft")]
pub struct ReportArgs {
    /// A training run directory (holds metrics.jsonl; `distill eval -o RUN/eval.json` adds the
    /// retention and cost tables).
    pub(crate) run: PathBuf,
    /// Another run (e.g. SFT only) whose held-out curve is drawn for comparison.
    #[arg(long)]
    pub(crate) baseline: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<distill_eval::Report> {
    let report = distill_eval::write_report(&args.run, args.baseline.as_deref())?;
    println!("{}", report.html.display());
    Ok(report)
}
