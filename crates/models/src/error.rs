use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Messages say what happened and, where there is one, what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a usable GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },

    #[error("{path} is not a usable safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("GGUF metadata key `{key}` {problem}")]
    Metadata { key: String, problem: String },

    #[error("model config: {0}")]
    Config(String),

    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("model `{id}` is not on this machine and could not be fetched from the Hugging Face Hub: {reason}\nHINT: download it where the Hub is reachable and pass its local directory or .gguf file")]
    Hub { id: String, reason: String },

    #[error("{0}")]
    Input(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn tensor(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), problem: problem.into() }
    }
}
