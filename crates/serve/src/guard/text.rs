//! What the guard reads from one request's text: a fingerprint (MinHash over character
//! 5-grams of the normalised text of every role but the assistant's, variable slots and
//! courtesy preambles removed), an exact-repeat hash, a sample of its content words, whether it
//! asks for a chain of thought, and whether it continues a conversation. Everything is hashed
//! once per request and kept small, so the guard never stores prompt text.

use crate::wire::{GenerationRequest, Prompt};

/// MinHash values per request; split into [`BANDS`] bands for near-duplicate lookups.
pub const MINHASH: usize = 64;
/// Locality-sensitive bands of `MINHASH / BANDS` rows: two prompts with Jaccard similarity 0.8
/// share a band with probability 0.78, at 0.6 with probability 0.13, and two unrelated long
/// texts (which share common character shingles: J ≈ 0.2) with probability 2e-5 — low enough
/// that busy keys are not linked by chance.
pub const BANDS: usize = 8;
const ROWS: usize = MINHASH / BANDS;
/// Each part of a prompt (system message, last user message) is read up to this many bytes:
/// enough to see what is asked, and it bounds the guard's time per request.
const MAX_BYTES: usize = 4096;
/// Content words kept per request: the ones with the smallest hashes, a sample that two
/// requests draw alike from the words they share (bottom-k sketching).
const MAX_CONTENT: usize = 24;
/// Characters per shingle: long enough to carry a word and its neighbour, short enough that a
/// reworded instruction still shares most of them.
const SHINGLE: usize = 5;

/// The fingerprint of one request, computed once on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFeatures {
    pub minhash: [u64; MINHASH],
    /// Hash of each LSH band: equal bands mean near-duplicate prompts.
    pub bands: [u64; BANDS],
    /// The bands of the user's part alone, for linking keys: many people share a system
    /// prompt (an application's, or a popular one) without being one client.
    pub user_bands: [u64; BANDS],
    /// Hash of the whole normalised prompt: equal means the same prompt again.
    pub exact: u64,
    /// A sample of its distinct content words (hashed): words of three or more letters that
    /// are not stop words.
    pub content: Vec<u64>,
    /// The prompt asks the model to show its reasoning.
    pub chain_of_thought: bool,
    /// For a request carrying earlier turns, the [`TextFeatures::exact`] hash its previous
    /// user turn had when sent: a conversation goes on when the key did send that turn (a
    /// harvester can write a history, but not one the server saw it ask).
    pub previous: Option<u64>,
    /// Characters of prompt (every message), for a token estimate where no tokenizer ran.
    pub chars: usize,
}

impl TextFeatures {
    pub fn of_request(req: &GenerationRequest) -> Self {
        match &req.prompt {
            Prompt::Text(t) => Self::of_text(t, t),
            // The server passes the decoded text instead (see `Guard::observation`).
            Prompt::Tokens(_) => Self::of_text("", ""),
            Prompt::Chat(messages) => {
                // What is asked now: the system message (where an instruction may hide) and the
                // last user message; earlier turns are history the fingerprint would repeat.
                let system: Vec<&str> = messages
                    .iter()
                    .filter(|m| m.role == "system" || m.role == "developer")
                    .map(|m| m.content.as_str())
                    .collect();
                let system = system.join("\n");
                let mut users = messages.iter().enumerate().rev().filter(|(_, m)| m.role == "user");
                let last = users.next();
                let last_user = last.map_or("", |(_, m)| m.content.as_str());
                let asked = asked_text(&system, last_user);
                let mut f = Self::of_text(&asked, &asked);
                if !system.is_empty() {
                    f.user_bands =
                        bands_of(&minhash_of(&normalised(&slot_stripped_words(truncate(last_user, MAX_BYTES)))));
                }
                // The user turn before an assistant's answer that precedes the last user turn.
                let answered = last.is_some_and(|(i, _)| messages[..i].iter().any(|m| m.role == "assistant"));
                if answered {
                    f.previous = users
                        .next()
                        .map(|(_, m)| hash_str(&normalised(&asked_words(&asked_text(&system, &m.content)))));
                }
                f.chars = messages.iter().map(|m| m.content.len()).sum();
                f
            }
        }
    }

    /// `asked` is fingerprinted and searched for reasoning requests; `all` counts its length.
    pub fn of_text(asked: &str, all: &str) -> Self {
        let words = asked_words(asked);
        let normal = normalised(&words);
        let minhash = minhash_of(&normal);
        let bands = bands_of(&minhash);
        let mut content: Vec<u64> = words
            .iter()
            .filter(|w| w.len() >= 3 && w.bytes().all(|b| b.is_ascii_alphabetic() || b >= 0x80) && !is_stop_word(w))
            .map(|w| hash_str(w))
            .collect();
        content.sort_unstable();
        content.dedup();
        content.truncate(MAX_CONTENT);
        Self {
            minhash,
            bands,
            user_bands: bands,
            exact: hash_str(&normal),
            content,
            chain_of_thought: asks_for_reasoning(truncate(asked, 2 * MAX_BYTES)),
            previous: None,
            chars: all.len(),
        }
    }

    /// The share of MinHash values two fingerprints agree on: an estimate of the Jaccard
    /// similarity of their character shingles.
    pub fn similarity(&self, other: &TextFeatures) -> f64 {
        let same = self.minhash.iter().zip(&other.minhash).filter(|(a, b)| a == b && **a != u64::MAX).count();
        same as f64 / MINHASH as f64
    }

    /// Prompt tokens, estimated at four characters a token where the server did not count them.
    pub fn estimated_tokens(&self) -> usize {
        self.chars.div_ceil(4).max(1)
    }
}

/// What a chat request asks: its system message(s) and one user message, each cut to
/// [`MAX_BYTES`].
fn asked_text(system: &str, user: &str) -> String {
    let mut asked = truncate(system, MAX_BYTES).to_string();
    asked.push('\n');
    asked.push_str(truncate(user, MAX_BYTES));
    asked
}

/// The words after any courtesy preamble, joined by single spaces.
fn normalised(words: &[String]) -> String {
    let start = words.iter().take_while(|w| is_preamble(w)).count().min(words.len().saturating_sub(3));
    words[start..].join(" ")
}

/// The slot-stripped words of what a request asks, as [`TextFeatures::of_text`] reads them:
/// the exact-repeat hash of an earlier turn must be computed the same way.
fn asked_words(asked: &str) -> Vec<String> {
    slot_stripped_words(truncate(asked, 2 * MAX_BYTES))
}

/// One-permutation MinHash of the character shingles of a normalised text: each shingle's hash
/// goes to one bucket, which keeps the smallest — one hash per shingle instead of one per
/// shingle and permutation.
fn minhash_of(normal: &str) -> [u64; MINHASH] {
    let mut minhash = [u64::MAX; MINHASH];
    let bytes = normal.as_bytes();
    let mut add = |piece: &[u8]| {
        let h = hash_bytes(piece);
        let slot = (h % MINHASH as u64) as usize;
        minhash[slot] = minhash[slot].min(mix(h ^ SEEDS[slot]));
    };
    if bytes.len() <= SHINGLE {
        add(bytes);
    } else {
        bytes.windows(SHINGLE).for_each(&mut add);
    }
    densify(&mut minhash);
    minhash
}

fn bands_of(minhash: &[u64; MINHASH]) -> [u64; BANDS] {
    let mut bands = [0u64; BANDS];
    for (b, band) in bands.iter_mut().enumerate() {
        *band = minhash[b * ROWS..(b + 1) * ROWS].iter().fold(mix(b as u64 + 1), |h, v| mix(h ^ v));
    }
    bands
}

/// Gives each empty bucket (a short text has fewer shingles than buckets) the value of the
/// next filled one, marked by the distance, so that two short texts do not agree on buckets
/// merely for both being empty (rotation densification, Shrivastava 2017).
fn densify(minhash: &mut [u64; MINHASH]) {
    let Some(filled) = minhash.iter().position(|v| *v != u64::MAX) else { return };
    let original = *minhash;
    for i in 0..MINHASH {
        if original[i] == u64::MAX {
            let j = (1..MINHASH).find(|j| original[(i + j) % MINHASH] != u64::MAX).unwrap_or(filled);
            minhash[i] = mix(original[(i + j) % MINHASH] ^ j as u64);
        }
    }
}

/// Courtesy and framing words a request may open with; they say nothing about what is asked, and
/// a paraphrasing harvester varies them first.
fn is_preamble(word: &str) -> bool {
    const PREAMBLE: &[&str] =
        &["can", "could", "hello", "hey", "hi", "i", "kindly", "me", "need", "please", "want", "would", "you"];
    PREAMBLE.binary_search(&word).is_ok()
}

/// Lower-cased words with the variable slots of a template replaced by placeholders: numbers
/// become `0`, quoted spans `"_"`, links `_url`. What remains of a templated prompt is its
/// fixed part plus the words filled in.
fn slot_stripped_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut quoted = false;
    for raw in text.split_whitespace() {
        let opens = raw.starts_with(['"', '“', '\'', '`']) && raw.len() > 1;
        let closes = raw.ends_with(['"', '”', '`']) || (raw.ends_with('\'') && raw.len() > 1);
        if quoted {
            quoted = !closes;
            continue;
        }
        if opens {
            words.push("\"_\"".to_string());
            quoted = !closes;
            continue;
        }
        if raw.contains("://") || raw.starts_with("www.") {
            words.push("_url".to_string());
            continue;
        }
        let mut word = String::new();
        let mut flush = |word: &mut String| {
            if !word.is_empty() {
                words.push(std::mem::take(word));
            }
        };
        let mut in_number = false;
        for c in raw.chars() {
            if c.is_ascii_digit() {
                if !in_number {
                    flush(&mut word);
                    word.push('0');
                    in_number = true;
                }
            } else if c.is_alphanumeric() {
                if in_number {
                    flush(&mut word);
                    in_number = false;
                }
                word.extend(c.to_lowercase());
            } else {
                flush(&mut word);
                in_number = false;
            }
        }
        flush(&mut word);
    }
    words
}

/// Phrases that ask a model to write out its reasoning: what a distiller adds to harvest
/// reasoning traces.
const REASONING_PHRASES: &[&str] = &[
    "step by step",
    "step-by-step",
    "think carefully",
    "think through",
    "think it through",
    "show your work",
    "show your reasoning",
    "show all your work",
    "explain your reasoning",
    "reasoning process",
    "chain of thought",
    "chain-of-thought",
    "reason through",
    "walk me through your",
    "before answering",
    "before giving the final answer",
    "let's think",
    "let us think",
    "<think>",
    "thought process",
    "detailed reasoning",
    "full reasoning",
];

pub fn asks_for_reasoning(text: &str) -> bool {
    let lower = text.to_lowercase();
    REASONING_PHRASES.iter().any(|p| lower.contains(p))
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

const STOP_WORDS: &[&str] = &[
    "about", "above", "after", "again", "all", "also", "and", "any", "are", "because", "been", "before", "being",
    "below", "between", "both", "but", "can", "could", "did", "does", "doing", "down", "during", "each", "few", "for",
    "from", "further", "give", "had", "has", "have", "having", "her", "here", "hers", "him", "his", "how", "into",
    "its", "just", "let", "like", "make", "more", "most", "much", "must", "not", "now", "off", "once", "only", "other",
    "our", "out", "over", "own", "please", "same", "say", "she", "should", "some", "such", "tell", "than", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "too", "under", "until",
    "use", "very", "was", "way", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will",
    "with", "would", "write", "you", "your", "yours",
];

fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// FNV-1a, finished with [`mix`]: fast, stable across builds and platforms (unlike std's
/// hasher), and good enough for fingerprints that an attacker gains nothing by colliding.
pub fn hash_str(s: &str) -> u64 {
    hash_bytes(s.as_bytes())
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: spreads every input bit over the output.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One seed per MinHash permutation, fixed so fingerprints compare across restarts.
const SEEDS: [u64; MINHASH] = {
    let mut seeds = [0u64; MINHASH];
    let mut state: u64 = 0x0005_eed0_fd15_7111;
    let mut i = 0;
    while i < MINHASH {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seeds[i] = state ^ (state >> 29);
        i += 1;
    }
    seeds
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn variable_slots_are_stripped() {
        let words = slot_stripped_words("Order #12345 for \"blue wool socks\" at https://x.io/a costs 19.99 EUR");
        assert_eq!(words, ["order", "0", "for", "\"_\"", "at", "_url", "costs", "0", "0", "eur"]);
    }

    #[test]
    fn a_template_with_other_slot_values_is_near_duplicate_and_other_questions_are_not() {
        let a = TextFeatures::of_text(
            "Write a detailed, comprehensive explanation of photosynthesis for a university student, with examples.",
            "",
        );
        let b = TextFeatures::of_text(
            "Write a detailed, comprehensive explanation of medieval tax law for a university student, with examples.",
            "",
        );
        let c = TextFeatures::of_text("How do I get red wine out of a white carpet before guests arrive tonight?", "");
        assert!(a.similarity(&b) >= 0.5, "{}", a.similarity(&b));
        assert!(a.similarity(&c) < 0.15, "{}", a.similarity(&c));
        let same_numbers = TextFeatures::of_text("What is 1234 times 5678?", "");
        let other_numbers = TextFeatures::of_text("What is 98 times 76?", "");
        assert_eq!(same_numbers.minhash, other_numbers.minhash);
        assert_eq!(same_numbers.bands, other_numbers.bands);
        // Courtesy words in front change nothing; an exact repeat hashes alike.
        let polite = TextFeatures::of_text("Please, could you tell me: what is 3 times 4?", "");
        let plain = TextFeatures::of_text("tell me: what is 3 times 4?", "");
        assert_eq!((polite.minhash, polite.exact), (plain.minhash, plain.exact));
    }

    #[test]
    fn content_words_skip_stop_words_numbers_and_short_words() {
        let f = TextFeatures::of_text("What is the capital of France in 1900? Tell me about it", "");
        let expected: Vec<u64> = {
            let mut v = vec![hash_str("capital"), hash_str("france")];
            v.sort_unstable();
            v
        };
        assert_eq!(f.content, expected);
    }

    #[test]
    fn reasoning_requests_are_found_in_any_message() {
        assert!(TextFeatures::of_text(&asked_text("Think step by step.", "Solve 2x+3=7."), "").chain_of_thought);
        assert!(asks_for_reasoning("Let's THINK about it. Show your work."));
        assert!(!asks_for_reasoning("What steps does a bill take to become law?"));
    }
}
