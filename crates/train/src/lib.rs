//! Training a student from a teacher signal.
//!
//! Shape letters: `N` scored positions (B·T flattened), `V` vocabulary, `K` teacher top-k entries;
//! a "bucket" distribution has K + 1 entries: the teacher's top-K tokens and everything else (tail).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod fused;
pub mod loss;
pub mod optim;
pub mod trainer;

pub use loss::{Divergence, LossConfig, PlainTargets, TailModel, TeacherTargets};
