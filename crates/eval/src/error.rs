//! The evaluation crate's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Teacher(#[from] distill_teacher::Error),
    /// Teacher and student cannot be compared token for token, or the settings are unusable.
    #[error("{0}")]
    Input(String),
    /// The speed and memory measurement failed.
    #[error("{0}")]
    Measure(String),
    /// A run directory or evaluation file a report cannot be made from.
    #[error("{0}")]
    Report(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
