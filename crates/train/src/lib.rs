//! Training a student from a teacher signal: the student's initial weights ([`init`]), the
//! losses, the optimiser, and the loop ([`Trainer`]) with resume, metrics, evaluation,
//! checkpoints and on-policy batches from a teacher ([`rollouts`]).
//!
//! Shape letters: `N` scored positions (B·T flattened), `V` vocabulary, `K` teacher top-k entries;
//! a "bucket" distribution has K + 1 entries: the teacher's top-K tokens and everything else (tail).

pub mod checkpoint;
pub mod chunked;
pub mod config;
pub mod cross;
pub mod data;
pub mod device_check;
pub mod error;
pub mod fused;
pub mod init;
pub mod loss;
pub mod optim;
pub mod reference;
pub mod rollouts;
pub mod student;
pub mod tensorboard;
pub mod trainer;

pub use config::{Compute, TrainConfig};
pub use error::{Error, Result};
pub use loss::{Divergence, LossConfig, PlainTargets, TailModel, TeacherTargets};
pub use student::{Evaluation, Optimizer, Student};
pub use trainer::{EvalMetrics, RunStart, StepMetrics, TrainObserver, TrainOutcome, Trainer};
