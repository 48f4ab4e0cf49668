//! Qwen3's, Llama 3's and Gemma 3's tokenizers against Hugging Face `tokenizers` (Python) on mixed text
//! (`tests/reference/make_tokenizer_fixtures.py` wrote the fixture): from their tokenizer.json,
//! and as they come back from GGUF — Qwen3's and Llama 3's written by our exporter (llama.cpp's
//! `qwen2` and `llama-bpe` pre-tokenizers), Gemma 3's rebuilt from the real file's pieces and
//! scores.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use distill_models::export::{write_gguf, GgufTokenizer, GgufType};
use distill_models::{init, load, teacher, LlamaConfig, TextTokenizer};
use serde_json::Value;

mod common;
use common::{assert_same_ids, ids};

fn fixture(name: &str) -> (String, Vec<u32>) {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    let all = FIXTURE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tokenizers_reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    });
    (all[name]["text"].as_str().unwrap().to_string(), ids(&all[name]["ids"]))
}

fn tokenizer_json(name: &str) -> PathBuf {
    let path = teacher::distill_home().unwrap().join("tokenizers").join(name).join("tokenizer.json");
    assert!(path.is_file(), "{} is missing\nHINT: fetch it with `scripts/fetch-tokenizer.sh {name}`", path.display());
    path
}

/// `tok` encodes `text` to `want` (HF tokenizers' ids) and decodes it back.
fn assert_encodes(what: &str, tok: &TextTokenizer, text: &str, want: &[u32]) {
    let got = tok.encode(text, false).unwrap();
    assert_same_ids(what, "tokenizers", tok, &got, want);
    assert_eq!(tok.decode(&got, false).unwrap(), text, "{what}: decode(encode(text)) != text");
}

/// A byte-level BPE from its tokenizer.json, then through a GGUF file (a one-layer model over
/// the whole vocabulary, written and loaded back).
fn check_byte_level(name: &str, model_type: &str, pre: &str) {
    let (text, want) = fixture(name);
    let tok = TextTokenizer::from_file(&tokenizer_json(name)).unwrap();
    assert_encodes(&format!("{name} tokenizer.json"), &tok, &text, &want);

    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        tie_word_embeddings: true,
        ..LlamaConfig::plain(model_type)
    };
    let weights = init::random_weights(&cfg, 0, &Device::Cpu).unwrap();
    let gguf_tok = GgufTokenizer::from_tokenizer(&tok, cfg.vocab_size).unwrap();
    assert_eq!(gguf_tok.pre, pre, "llama.cpp's name for {name}'s pre-tokenizer");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    write_gguf(&path, name, &cfg, &weights, &gguf_tok, None, GgufType::Q8_0).unwrap();
    let back = load(path.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(back.model.config().model_type, model_type);
    assert_encodes(&format!("{name} from GGUF"), &back.tokenizer, &text, &want);
}

#[test]
fn qwen3_tokenizer_json_and_its_gguf_match_hf_tokenizers() {
    check_byte_level("qwen3", "qwen3", "qwen2");
}

#[test]
fn llama3_tokenizer_json_and_its_gguf_match_hf_tokenizers() {
    check_byte_level("llama3", "llama", "llama-bpe");
}

#[test]
fn gemma3_tokenizer_json_and_the_gguf_pieces_match_hf_tokenizers() {
    let (text, want) = fixture("gemma3");
    let tok = TextTokenizer::from_file(&tokenizer_json("gemma3")).unwrap();
    assert!(tok.is_spm());
    assert_encodes("gemma3 tokenizer.json", &tok, &text, &want);

    let gguf = teacher::fetched_model(teacher::GEMMA3_270M_FILE)
        .expect("Gemma-3-270M is missing\nHINT: fetch it with `scripts/fetch-teacher.sh gemma3-270m`");
    let file = distill_models::GgufFile::open(&gguf).unwrap();
    let from_gguf = TextTokenizer::from_gguf(&file).unwrap();
    assert_encodes("gemma3 from GGUF", &from_gguf, &text, &want);
}
