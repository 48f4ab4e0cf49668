//! What a student kept of its teacher: token-level agreement on the teacher's own text, text
//! overlap of greedy outputs, how repetitive each model's outputs are, task exact match, and the
//! cost side (size, memory, speed), summed up as *retention* — the student's figure as a
//! percentage of the teacher's.

pub mod code;
pub mod error;
pub mod evaluate;
pub mod report;
pub mod speed;
pub mod text;
pub mod tokens;

pub use error::{Error, Result};
pub use evaluate::{evaluate, EvalOptions, EvalReport, Measured, PromptSet, SetReport};
pub use report::{write_report, Report, ReportFigures};
pub use text::{exact_match, repetition, rouge_l, Repetition};
pub use tokens::TokenStats;
