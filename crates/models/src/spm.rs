//! SentencePiece BPE vocabularies from GGUF (`tokenizer.ggml.model = llama`: Llama 2, Gemma),
//! rebuilt as a `tokenizers` BPE whose ids equal llama.cpp's.
//!
//! GGUF keeps SentencePiece's pieces and scores, not merges. llama.cpp's tokenizer repeatedly
//! joins the adjacent pair whose joined piece is in the vocabulary with the highest score; a BPE
//! whose merges are every split of every piece into two pieces, ranked by the joined piece's
//! score, makes the same choices. Spaces are `▁`, characters outside the vocabulary fall back to
//! `<0xXX>` byte pieces, and the decoder undoes both.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::error::{Error, Result};

/// SentencePiece's space.
pub(crate) const SPACE: char = '\u{2581}';

/// GGUF token types (llama.cpp's `llama_token_type`) that take part in merges.
const TOKEN_TYPE_NORMAL: i64 = 1;

/// The tokenizer of a SentencePiece vocabulary: `pieces` with their `scores` and GGUF token
/// `types`; `add_space_prefix` puts `▁` in front of the text, as Llama 2 (not Gemma) does.
pub(crate) fn tokenizer(pieces: &[&str], scores: &[f32], types: &[i64], add_space_prefix: bool) -> Result<Tokenizer> {
    if scores.len() != pieces.len() {
        return Err(Error::Tokenizer(format!("{} scores for {} tokens", scores.len(), pieces.len())));
    }
    let vocab: HashMap<String, u32> = pieces.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
    let mergeable = |id: u32| types.get(id as usize).is_none_or(|&t| t == TOKEN_TYPE_NORMAL);
    // Every split of every normal piece into two normal pieces, best joined score first.
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in pieces.iter().enumerate() {
        let id = id as u32;
        if !mergeable(id) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if mergeable(l) && mergeable(r) {
                    ranked.push((scores[id as usize], id, l, r));
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = ranked
        .into_iter()
        .map(|(_, _, l, r)| (pieces[l as usize].to_string(), pieces[r as usize].to_string()))
        .collect();
    let unk = ["<unk>"].into_iter().find(|t| vocab.contains_key(*t)).map(str::to_string);
    let vocab: Vocab = vocab.into_iter().collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| Error::Tokenizer(format!("SentencePiece BPE from GGUF metadata: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    let space = Replace::new(" ", SPACE.to_string()).map_err(|e| Error::Tokenizer(format!("normalizer: {e}")))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPACE.to_string()).into(), space.into()]).into()
    } else {
        space.into()
    };
    inner.with_normalizer(Some(normalizer)).map_err(|e| Error::Tokenizer(format!("normalizer: {e}")))?;
    let unspace = Replace::new(SPACE.to_string(), " ").map_err(|e| Error::Tokenizer(format!("decoder: {e}")))?;
    let decoder: DecoderWrapper =
        DecoderSequence::new(vec![DecoderWrapper::Replace(unspace), ByteFallback::new().into(), Fuse::new().into()])
            .into();
    inner.with_decoder(Some(decoder));
    Ok(inner)
}

/// The byte a `<0xXX>` piece stands for.
pub(crate) fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}
