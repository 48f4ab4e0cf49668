//! What the guard reads from one request's text: a template fingerprint (MinHash over word
//! bigrams after stripping the variable slots), its content words, and whether it asks for a
//! chain of thought. Everything is hashed once per request and kept small, so the guard never
//! stores prompt text.

use crate::wire::{GenerationRequest, Prompt};

/// MinHash values per request; split into [`BANDS`] bands for near-duplicate lookups.
pub const MINHASH: usize = 32;
/// Locality-sensitive bands of `MINHASH / BANDS` rows: two prompts with Jaccard similarity 0.7
/// share a band with probability 0.87, at 0.3 with probability 0.06.
pub const BANDS: usize = 8;
const ROWS: usize = MINHASH / BANDS;
/// Longer prompts are fingerprinted on their first this many bytes: enough to see a template,
/// and it bounds the guard's time per request.
const MAX_BYTES: usize = 4096;

/// The fingerprint of one request, computed once on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFeatures {
    pub minhash: [u64; MINHASH],
    /// Hash of each LSH band: equal bands mean near-duplicate prompts.
    pub bands: [u64; BANDS],
    /// Distinct content words (hashed): words of three or more letters that are not stop words.
    pub content: Vec<u64>,
    /// The prompt asks the model to show its reasoning.
    pub chain_of_thought: bool,
}

impl TextFeatures {
    pub fn of_request(req: &GenerationRequest) -> Self {
        // The template is read from what the user writes: an application's fixed system prompt
        // is the same for all its users and says nothing about harvesting.
        let (user, all) = match &req.prompt {
            Prompt::Text(t) => (t.clone(), t.clone()),
            // The server passes the decoded text instead (see `Guard::observation`).
            Prompt::Tokens(_) => (String::new(), String::new()),
            Prompt::Chat(messages) => {
                let user: Vec<&str> =
                    messages.iter().filter(|m| m.role == "user").map(|m| m.content.as_str()).collect();
                let all: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                (user.join("\n"), all.join("\n"))
            }
        };
        Self::of_text(&user, &all)
    }

    /// `user` is fingerprinted; `all` (system prompt included) is searched for reasoning requests.
    pub fn of_text(user: &str, all: &str) -> Self {
        let words = slot_stripped_words(truncate(user, MAX_BYTES));
        let shingles: Vec<u64> = if words.len() < 3 {
            words.iter().map(|w| hash_str(w.as_str())).collect()
        } else {
            words.windows(2).map(|p| mix(hash_str(&p[0]) ^ hash_str(&p[1]).rotate_left(17))).collect()
        };
        let mut minhash = [u64::MAX; MINHASH];
        for s in &shingles {
            for (i, m) in minhash.iter_mut().enumerate() {
                *m = (*m).min(mix(s ^ SEEDS[i]));
            }
        }
        let mut bands = [0u64; BANDS];
        for (b, band) in bands.iter_mut().enumerate() {
            *band = minhash[b * ROWS..(b + 1) * ROWS].iter().fold(mix(b as u64 + 1), |h, v| mix(h ^ v));
        }
        let mut content: Vec<u64> = words
            .iter()
            .filter(|w| w.len() >= 3 && w.bytes().all(|b| b.is_ascii_alphabetic() || b >= 0x80) && !is_stop_word(w))
            .map(|w| hash_str(w))
            .collect();
        content.sort_unstable();
        content.dedup();
        Self { minhash, bands, content, chain_of_thought: asks_for_reasoning(truncate(all, 4 * MAX_BYTES)) }
    }

    /// The share of MinHash values two fingerprints agree on: an estimate of the Jaccard
    /// similarity of their word bigrams.
    pub fn similarity(&self, other: &TextFeatures) -> f64 {
        let same = self.minhash.iter().zip(&other.minhash).filter(|(a, b)| a == b).count();
        same as f64 / MINHASH as f64
    }
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
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
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
        assert!(a.bands.iter().zip(&b.bands).any(|(x, y)| x == y));
        assert!(a.similarity(&c) < 0.15, "{}", a.similarity(&c));
        let same_numbers = TextFeatures::of_text("What is 1234 times 5678?", "");
        let other_numbers = TextFeatures::of_text("What is 98 times 76?", "");
        assert_eq!(same_numbers.minhash, other_numbers.minhash);
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
        assert!(TextFeatures::of_text("Solve 2x+3=7.", "Think step by step.\nSolve 2x+3=7.").chain_of_thought);
        assert!(asks_for_reasoning("Let's THINK about it. Show your work."));
        assert!(!asks_for_reasoning("What steps does a bill take to become law?"));
    }
}
