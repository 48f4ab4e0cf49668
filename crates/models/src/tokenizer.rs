//! Text ↔ token ids, built from a `tokenizer.json` or from GGUF `tokenizer.ggml.*` metadata.
//!
//! From GGUF a byte-level BPE's vocabulary and merges are taken as they are and the pre-tokenizer
//! is chosen from `tokenizer.ggml.pre`, the way llama.cpp does, so ids agree with llama.cpp's; a
//! SentencePiece vocabulary (Llama 2, Gemma) is rebuilt by [`crate::spm`].

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// GPT-2-style split used by Llama 3 (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: like Llama 3's but single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer plus the facts about special tokens a generator needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// SentencePiece-style pieces (`▁` for spaces, `<0xXX>` bytes) rather than GPT-2's
    /// byte-level alphabet.
    spm: bool,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner =
            Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        let decoder = serde_json::to_string(&inner.get_decoder()).unwrap_or_default();
        let spm = decoder.contains("ByteFallback") || decoder.contains("Metaspace");
        Ok(Self { inner, spm, bos_id: None, eos_id: None, add_bos: false })
    }

    /// Sets the BOS/EOS ids (from a model config or tokenizer_config.json).
    pub fn with_special_ids(mut self, bos_id: Option<u32>, eos_id: Option<u32>, add_bos: bool) -> Self {
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self.add_bos = add_bos && bos_id.is_some();
        self
    }

    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.str("tokenizer.ggml.model")?;
        let spm = match model {
            "gpt2" => false,
            "llama" => true,
            _ => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer model `{model}` is not supported yet (byte-level BPE `gpt2`, SentencePiece `llama`)\nHINT: load the model from its Hugging Face directory, whose tokenizer.json is used as it is"
                )))
            }
        };
        let tokens = gguf.str_array("tokenizer.ggml.tokens")?;
        let mut inner = if spm { Self::spm_from_gguf(gguf, &tokens)? } else { Self::bpe_from_gguf(gguf, &tokens)? };
        Self::add_gguf_special_tokens(gguf, &tokens, &mut inner)?;
        let id = |key: &str| -> Result<Option<u32>> {
            if !gguf.has(key) {
                return Ok(None);
            }
            let id = gguf.u64(key)?;
            if id as usize >= tokens.len() {
                return Err(Error::Metadata {
                    key: key.into(),
                    problem: format!("is {id}, outside the vocabulary of {}", tokens.len()),
                });
            }
            Ok(Some(id as u32))
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let add_bos = gguf.has("tokenizer.ggml.add_bos_token") && gguf.bool("tokenizer.ggml.add_bos_token")?;
        Ok(Self { inner, spm, bos_id, eos_id, add_bos: add_bos && bos_id.is_some() })
    }

    fn spm_from_gguf(gguf: &GgufFile, tokens: &[&str]) -> Result<Tokenizer> {
        let scores = gguf.f32_array("tokenizer.ggml.scores")?;
        let types = if gguf.has("tokenizer.ggml.token_type") {
            gguf.int_array("tokenizer.ggml.token_type")?
        } else {
            Vec::new()
        };
        // llama.cpp's default for SentencePiece vocabularies is to add the prefix.
        let prefix = !gguf.has("tokenizer.ggml.add_space_prefix") || gguf.bool("tokenizer.ggml.add_space_prefix")?;
        crate::spm::tokenizer(tokens, &scores, &types, prefix)
    }

    fn bpe_from_gguf(gguf: &GgufFile, tokens: &[&str]) -> Result<Tokenizer> {
        let merges = gguf
            .str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("merge `{m}` is not two tokens separated by a space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("BPE from GGUF metadata: {e}")))?;
        let mut inner = Tokenizer::new(bpe);

        let pre = if gguf.has("tokenizer.ggml.pre") { gguf.str("tokenizer.ggml.pre")? } else { "default" };
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        if pre == "qwen2" {
            inner.with_normalizer(Some(NFC)).map_err(|e| Error::Tokenizer(format!("normalizer: {e}")))?;
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(inner)
    }

    /// Control tokens as special tokens, user-defined ones as added tokens matched in the raw
    /// text (llama.cpp splits the text on both before tokenising the rest).
    fn add_gguf_special_tokens(gguf: &GgufFile, tokens: &[&str], inner: &mut Tokenizer) -> Result<()> {
        if gguf.has("tokenizer.ggml.token_type") {
            let types = gguf.int_array("tokenizer.ggml.token_type")?;
            let mut special = Vec::new();
            let mut user = Vec::new();
            for (id, ty) in types.iter().enumerate() {
                let Some(text) = tokens.get(id) else { break };
                match *ty {
                    TOKEN_TYPE_CONTROL => special.push(AddedToken::from(text.to_string(), true)),
                    TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(text.to_string(), false).normalized(false)),
                    _ => {}
                }
            }
            inner.add_special_tokens(special).map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?;
            inner.add_tokens(user).map_err(|e| Error::Tokenizer(format!("added tokens: {e}")))?;
        }
        Ok(())
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) are recognised,
    /// as chat templates need; `add_bos` prepends BOS when the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text for `ids`; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes token `id` stands for. A byte-level BPE token can hold part of a UTF-8
    /// character, so these are not always valid text on their own (OpenAI's `bytes` field).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.inner.id_to_token(id) else { return Vec::new() };
        if self.spm {
            return match crate::spm::byte_piece(&token) {
                Some(byte) => vec![byte],
                None => token.replace(crate::spm::SPACE, " ").into_bytes(),
            };
        }
        token
            .chars()
            .map(byte_level_byte)
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| self.decode(&[id], false).unwrap_or_default().into_bytes())
    }

    /// The id of the byte-level token spelling exactly `bytes` (the inverse of
    /// [`TextTokenizer::token_bytes`]), when the vocabulary has one.
    pub fn id_for_bytes(&self, bytes: &[u8]) -> Option<u32> {
        if self.spm {
            return match (std::str::from_utf8(bytes), bytes) {
                (Ok(text), _) if !text.is_empty() => {
                    let piece = text.replace(' ', &crate::spm::SPACE.to_string());
                    self.inner.token_to_id(&piece).or_else(|| self.inner.token_to_id(text))
                }
                (_, [byte]) => self.inner.token_to_id(&format!("<0x{byte:02X}>")),
                _ => None,
            };
        }
        let spelled: String = bytes.iter().map(|&b| byte_level_char(b)).collect();
        self.inner.token_to_id(&spelled)
    }

    /// Whether `id` is a special token (`<|im_end|>`, `<eos>`): a control mark rather than text,
    /// so it spans no bytes of the text it ends.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the pieces are SentencePiece-style (`▁` for spaces, `<0xXX>` bytes) rather than
    /// GPT-2's byte-level alphabet.
    pub fn is_spm(&self) -> bool {
        self.spm
    }

    /// Whether `▁` is put in front of the text (SentencePiece's `add_dummy_prefix`).
    pub fn adds_space_prefix(&self) -> bool {
        serde_json::to_string(&self.inner.get_normalizer()).is_ok_and(|n| n.contains("Prepend"))
    }

    /// Whether the model expects BOS in front of every sequence.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The tokenizer in `tokenizer.json` form, for exports. A model that expects BOS gets a
    /// post-processor that adds it, as transformers' fast tokenizers read it from there.
    pub fn to_json(&self) -> Result<String> {
        let json = self.inner.to_string(false).map_err(|e| Error::Tokenizer(format!("serialise: {e}")))?;
        let bos = self.bos_id.filter(|_| self.add_bos).and_then(|id| Some((id, self.id_to_token(id)?)));
        let Some((id, token)) = bos.filter(|_| self.inner.get_post_processor().is_none()) else {
            return Ok(json);
        };
        let mut value: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let special = |type_id: u32| serde_json::json!({"SpecialToken": {"id": token, "type_id": type_id}});
        let sequence = |name: &str, type_id: u32| serde_json::json!({"Sequence": {"id": name, "type_id": type_id}});
        value["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [special(0), sequence("A", 0)],
            "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
            "special_tokens": {token.clone(): {"id": token, "ids": [id], "tokens": [token]}},
        });
        serde_json::to_string(&value).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// SHA-256 over the id → token table (added tokens included): equal fingerprints mean every
    /// id denotes the same token.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for id in 0..self.vocab_size() as u32 {
            hasher.update(id.to_le_bytes());
            hasher.update(self.inner.id_to_token(id).unwrap_or_default().as_bytes());
            hasher.update([0u8]);
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The `tokenizer.ggml.pre` name of this tokenizer's pre-tokenizer, when it is one of those
    /// llama.cpp knows (compared structurally with the ones built for GGUF loading).
    pub fn gguf_pre(&self) -> Option<String> {
        // `trim_offsets` moves offsets only, never ids (Llama 3's tokenizer.json sets it).
        let shape = |p: &PreTokenizerWrapper| -> Option<String> {
            let json = serde_json::to_string(p).ok()?;
            Some(json.replace(",\"trim_offsets\":true", "").replace(",\"trim_offsets\":false", ""))
        };
        let ours = shape(self.inner.get_pre_tokenizer()?)?;
        ["smollm", "gpt2", "llama-bpe", "qwen2"]
            .into_iter()
            .find(|name| pre_tokenizer(name).ok().and_then(|p| shape(&p)).as_ref() == Some(&ours))
            .map(str::to_string)
    }
}

/// The byte a character of GPT-2's byte-level alphabet stands for: printable Latin-1 characters
/// stand for themselves, the other 68 bytes were shifted to U+0100.. in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if stands_for_itself(code) {
        return Some(code as u8);
    }
    let shifted = code.checked_sub(0x100)?;
    (0u32..=255).filter(|&b| !stands_for_itself(b)).nth(shifted as usize).map(|b| b as u8)
}

/// The character of GPT-2's byte-level alphabet that stands for `byte`.
fn byte_level_char(byte: u8) -> char {
    let b = u32::from(byte);
    if stands_for_itself(b) {
        return char::from(byte);
    }
    let shifted = (0..b).filter(|&x| !stands_for_itself(x)).count() as u32;
    char::from_u32(0x100 + shifted).unwrap_or('\u{FFFD}')
}

/// Whether byte (or code point) `b` is a printable Latin-1 character, which GPT-2's byte-level
/// alphabet keeps as itself.
fn stands_for_itself(b: u32) -> bool {
    (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into())
    };
    Ok(match pre {
        // Individual digits, then GPT-2's split (SmolLM, SmolLM2).
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "default" | "gpt2" | "gpt-2" => ByteLevel::new(false, true, true).into(),
        "llama3" | "llama-bpe" | "smaug-bpe" => split(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT)?,
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported yet; supported: smollm, gpt2, llama3/llama-bpe, qwen2\nHINT: load the model from its Hugging Face directory, whose tokenizer.json is used as it is"
            )))
        }
    })
}
