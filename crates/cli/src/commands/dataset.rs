//! `distill generate --dataset DIR`: turn a prompt file into a teacher-signal dataset.

use std::path::Path;

use anyhow::Result;
use distill_models::DeviceSpec;
use distill_teacher::{create_dataset, DatasetOptions, DatasetProgress, LocalTeacher, Precision, RemoteOptions};
use distill_teacher::{RemoteTeacher, Teacher};

use crate::progress;

/// Builds (or resumes) the dataset in `output` with the local model `model` (the default
/// teacher when `None`), or with the endpoints of `remote`, for which `model` is the local copy
/// that supplies the tokenizer and chat template.
pub fn run(
    output: &Path,
    prompts_file: &Path,
    model: Option<&str>,
    device: DeviceSpec,
    matmuls: Option<Precision>,
    remote: Option<RemoteOptions>,
    opts: DatasetOptions,
) -> Result<()> {
    let mut loaded = super::generate::load_model(model, device)?;
    let teacher: Box<dyn Teacher> = match remote {
        Some(remote) => {
            let vocab = loaded.model.config().vocab_size;
            let teacher = RemoteTeacher::new(remote, loaded.into_text(), vocab)?;
            eprintln!("teacher: {}", teacher.id());
            Box::new(teacher)
        }
        None => {
            super::generate::use_matmuls(&mut loaded, matmuls)?;
            Box::new(LocalTeacher::new(loaded))
        }
    };
    let (mut bar, mut log) = (None, None);
    let summary = create_dataset(teacher.as_ref(), prompts_file, output, &opts, &mut |event| match event {
        DatasetProgress::Started { done, total, with_system } => {
            if let Some(systems) = &opts.system_messages {
                eprintln!("{with_system} of {total} prompts given one of {} system messages", systems.messages().len());
            }
            if done > 0 {
                eprintln!("resuming {}: {done} of {total} prompts already done", output.display());
            }
            let b = progress::bar(total as u64, "{pos}/{len} prompts");
            b.set_position(done as u64);
            bar = Some(b);
            log = Some(progress::LogLines::new(done as u64));
        }
        DatasetProgress::Shard { done, total, tokens, elapsed } => {
            let speed = format!("{:.1} tok/s", tokens as f64 / elapsed.as_secs_f64());
            if let Some(log) = &mut log {
                log.tick("prompts", done as u64, total as u64, &speed);
            }
            if let Some(b) = &bar {
                b.set_position(done as u64);
                b.set_message(speed);
            }
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for e in teacher.endpoints() {
        eprintln!(
            "endpoint {}: {} completions, {} failed requests{}",
            e.url,
            e.served,
            e.failures,
            e.last_error.map(|m| format!(" (last: {m})")).unwrap_or_default()
        );
    }
    let m = &summary.manifest;
    eprintln!(
        "{}: {} prompts, {} sequences, {} tokens, {:.1} bytes/token (this run: {} tokens in {:.2} s)",
        output.display(),
        m.prompts_done(),
        m.sequences(),
        m.tokens(),
        m.bytes() as f64 / m.tokens().max(1) as f64,
        summary.tokens_this_run,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}
