//! Models for `distill`: the Llama-family architecture on candle, loading from GGUF, Hugging Face
//! directories and the Hub, tokenizers, chat templates and generation.
//!
//! Shape letters used throughout: `B` batch, `T` time (new positions), `S` all attended positions
//! (cache included), `C` hidden channels, `H` attention heads, `KVH` key/value heads, `D` head
//! dimension, `I` MLP width, `V` vocabulary, `P` RoPE table positions.

pub mod chat;
pub mod checkpoint;
pub mod cpu;
pub mod device;
pub mod error;
pub mod export;
pub mod family;
pub mod fixtures;
mod frame;
pub mod generate;
pub mod gguf;
pub mod gguf_names;
pub mod hf_config;
pub mod hub;
pub mod init;
mod kv_cache;
pub mod llama;
pub mod llama_config;
pub mod loader;
pub mod ops;
pub mod probe;
mod proj;
pub mod prune;
pub mod retokenize;
mod spm;
pub mod teacher;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use generate::{
    generate, generate_with_logprobs, Completion, FinishReason, Sampler, SamplingParams, Sequence, TokenLogprob,
};
pub use gguf::GgufFile;
pub use llama::{ActivationProbe, KvCache, Llama, LlamaConfig};
pub use loader::{load, load_with, LoadOptions, LoadedModel, Matmuls, ModelText};
pub use proj::Weight;
pub use tokenizer::TextTokenizer;
