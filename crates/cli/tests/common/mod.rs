//! Helpers shared by the CLI integration tests: the built binary, run without a `DISTILL_MODEL`
//! from the caller's environment.

#![allow(dead_code)] // each test binary uses its own subset

pub mod server;

use std::process::{Command, Output};

/// The `distill` binary as a command to add arguments to.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
    cmd.env_remove("DISTILL_MODEL");
    cmd
}

/// Runs `distill ARGS` to completion.
pub fn distill(args: &[&str]) -> Output {
    command().args(args).output().expect("the distill binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
