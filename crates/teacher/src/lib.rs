//! Teachers: a model that writes completions and scores sequences with its top-K log-probabilities.
//!
//! [`Teacher`] is the one seam between the pipeline and a teacher: the dataset builder
//! ([`build_dataset`]), the trainer's online and on-policy batches and the evaluation reach a
//! teacher only through it. [`LocalTeacher`] runs a model in-process; [`RemoteTeacher`] asks
//! OpenAI-compatible endpoints. Prompt files ([`prompts`]) are read here too: a teacher is what
//! turns them into signal.
//!
//! Shape letters: `K` top-k entries per position; a [`TopK`] holds rows of K (ids, log-probs)
//! and one tail log-probability per row.

mod collections;
pub mod dataset;
pub mod local;
pub mod prompts;
pub mod remote;
pub mod synthesize;

use std::path::PathBuf;

pub use dataset::{build_dataset, create_dataset, DatasetOptions, DatasetProgress, DatasetSummary, SAMPLE_SEED_STRIDE};
pub use distill_kernels::packed::Precision;
pub use distill_kernels::TopK;
use distill_models::{ChatMessage, ChatTemplate, SamplingParams, TextTokenizer};
pub use distill_store::Layout;
pub use local::{score_with, weights_hash, LocalTeacher};
pub use prompts::{read_prompt_file, Prompt, PromptRecord, SystemMessages};
pub use remote::{EndpointReport, RemoteOptions, RemoteTeacher};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] distill_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Store(#[from] distill_store::Error),
    /// A request the teacher cannot serve (k out of range, a plain-text prompt for a chat API…).
    #[error("{0}")]
    Input(String),
    /// The endpoints failed: transport errors, timeouts, refused requests, bad answers.
    #[error("{0}")]
    Network(String),
    /// A line of a prompt file that cannot be read as a prompt.
    #[error("{path}:{line}: {message}")]
    Prompt { path: PathBuf, line: usize, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A sequence to score: the teacher's top-K is wanted for predicting tokens `from..`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRequest {
    pub token_ids: Vec<u32>,
    /// First token whose prediction is scored (≥ 1: token 0 has no context).
    pub from: usize,
}

/// A prompt as a teacher receives it: rendered token ids (chat template applied), and the
/// conversation it came from when it is one (chat APIs are asked with the messages).
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherPrompt {
    pub token_ids: Vec<u32>,
    pub messages: Option<Vec<ChatMessage>>,
}

/// A completion and the teacher's top-K for predicting each of its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCompletion {
    /// Completion token ids, the end-of-sequence token included when the teacher stopped on it.
    pub token_ids: Vec<u32>,
    /// One row per completion token.
    pub top: TopK,
}

/// What a dataset's manifest records of the teacher that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherIdentity {
    /// How the teacher was named (a path, a Hub id, `remote:MODEL`).
    pub name: String,
    /// SHA-256 of its weights (of its name for a remote teacher, whose weights are not here).
    pub hash: String,
    /// The arithmetic of its matmuls.
    pub matmuls: Precision,
}

/// A model that writes completions and scores sequences.
pub trait Teacher: Sync {
    /// How the user named the teacher.
    fn id(&self) -> &str;
    fn tokenizer(&self) -> &TextTokenizer;
    /// The chat template prompts are rendered with (`None`: the teacher takes raw text only).
    fn chat_template(&self) -> Option<&ChatTemplate>;
    /// Rows of the output layer.
    fn vocab_size(&self) -> usize;
    /// Ids that end a completion.
    fn stop_ids(&self) -> &[u32];
    /// Name, weights hash and matmul precision, for a dataset's manifest.
    fn identity(&self) -> Result<TeacherIdentity>;
    /// Refuses, before any work, a signal this teacher cannot give: `k` alternatives per token at
    /// `temperature`.
    fn check_signal(&self, k: usize, temperature: f32) -> Result<()>;
    /// Whether prompts must be conversations (chat APIs cannot take raw text).
    fn needs_messages(&self) -> bool {
        false
    }
    /// Prompts one call should carry when the caller would batch `batch_size`: a model here
    /// decodes them as one batch; endpoints fan a larger call out over themselves.
    fn prompts_per_call(&self, batch_size: usize) -> usize {
        batch_size
    }
    /// One completion per prompt, prompt `i` sampled with seed `params.seed + i`: its token ids,
    /// the stop token included when the teacher ended on one.
    fn generate(&self, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>>;
    /// [`Self::generate`] with the teacher's top-`k` at `temperature` for every completion token.
    fn generate_scored(
        &self,
        prompts: &[TeacherPrompt],
        params: &SamplingParams,
        k: usize,
        temperature: f32,
    ) -> Result<Vec<ScoredCompletion>>;
    /// Top-`k` log-probabilities at `temperature` for predicting each token `from..` of each
    /// request: one [`TopK`] with `token_ids.len() − from` rows per request.
    fn score(&self, requests: &[ScoreRequest], k: usize, temperature: f32) -> Result<Vec<TopK>>;
    /// How each endpoint behind the teacher fared so far (none for a model in this process).
    fn endpoints(&self) -> Vec<EndpointReport> {
        Vec::new()
    }
}
