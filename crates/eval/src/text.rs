//! Text metrics on whole outputs.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// ROUGE-L F1 between `candidate` and `reference` over lower-cased whitespace tokens (longest
/// common subsequence; 1.0 for two empty texts).
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let a: Vec<String> = candidate.split_whitespace().map(str::to_lowercase).collect();
    let b: Vec<String> = reference.split_whitespace().map(str::to_lowercase).collect();
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut row = vec![0usize; b.len() + 1];
    for x in &a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y { diagonal + 1 } else { row[j + 1].max(row[j]) };
            diagonal = above;
        }
    }
    let lcs = row[b.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / a.len() as f64, lcs / b.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD-style normalisation: lower case, punctuation and the articles a/an/the removed,
/// whitespace collapsed.
fn normalise(s: &str) -> String {
    let lowered: String =
        s.to_lowercase().chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    lowered.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// Whether `output` gives the answer `reference`: after normalisation, the reference appears as
/// a whole-word phrase in the output's first line (chat models answer "The capital of France is
/// Paris."; later lines are explanation and are not searched).
pub fn exact_match(output: &str, reference: &str) -> bool {
    let r = normalise(reference);
    let first_line = output.trim_start().lines().next().unwrap_or_default();
    let o = normalise(first_line);
    !r.is_empty() && format!(" {o} ").contains(&format!(" {r} "))
}

/// How repetitive a model's outputs are (over lower-cased whitespace words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Repetition {
    /// Distinct words and word pairs as a share of all, over every output together (distinct-n):
    /// low when the outputs say the same few things.
    pub distinct_1: f64,
    pub distinct_2: f64,
    /// Mean over outputs of the share of 4-word spans that repeat an earlier span of the same
    /// output (seq-rep-4): 0 for text that never repeats itself, near 1 for a loop.
    pub seq_rep_4: f64,
    /// Share of outputs caught in a loop: some 4-word span occurs three times or more.
    pub looping: f64,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// [`Repetition`] of a set of outputs.
pub fn repetition<S: AsRef<str>>(outputs: &[S]) -> Repetition {
    let (mut seen1, mut seen2) = (HashSet::new(), HashSet::new());
    let (mut n1, mut n2) = (0usize, 0usize);
    let (mut rep_sum, mut looping) = (0f64, 0usize);
    for output in outputs {
        let w = words(output.as_ref());
        n1 += w.len();
        seen1.extend(w.iter().cloned());
        for pair in w.windows(2) {
            n2 += 1;
            seen2.insert(pair.to_vec());
        }
        let mut counts: HashMap<&[String], usize> = HashMap::new();
        let mut repeats = 0;
        for span in w.windows(4) {
            let c = counts.entry(span).or_default();
            repeats += usize::from(*c > 0);
            *c += 1;
        }
        let spans = w.len().saturating_sub(3);
        if spans > 0 {
            rep_sum += repeats as f64 / spans as f64;
        }
        looping += usize::from(counts.values().any(|&c| c >= 3));
    }
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Repetition {
        distinct_1: share(seen1.len(), n1),
        distinct_2: share(seen2.len(), n2),
        seq_rep_4: if outputs.is_empty() { 0.0 } else { rep_sum / outputs.len() as f64 },
        looping: share(looping, outputs.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_matches_hand_computed_values() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("dog", "the cat sat"), 0.0);
        // LCS("the cat was on the mat", "the cat sat on the mat") = 5: P = 5/6, R = 5/6.
        assert!((rouge_l("the cat was on the mat", "The cat sat on the mat") - 5.0 / 6.0).abs() < 1e-12);
        // LCS = 2 ("a c"): P = 2/3, R = 2/2 → F = 0.8.
        assert!((rouge_l("a b c", "a c") - 0.8).abs() < 1e-12);
        assert_eq!(rouge_l("", ""), 1.0);
        assert_eq!(rouge_l("x", ""), 0.0);
    }

    #[test]
    fn exact_match_normalises_like_squad() {
        assert!(exact_match("The Eiffel Tower.", "eiffel tower"));
        assert!(exact_match("42", "42"));
        assert!(exact_match("The capital of France is Paris.", "Paris"));
        assert!(exact_match("12 times 12 is 144.", "144"));
        assert!(!exact_match("421", "42"));
        assert!(!exact_match("The answer is 365.\nActually 366.", "366"), "only the first line counts");
        assert!(!exact_match("anything", ""));
    }

    #[test]
    fn repetition_tells_a_loop_from_varied_text() {
        let varied = ["The parcel ships today and arrives on Monday.", "Refunds take five business days."];
        let r = repetition(&varied);
        assert_eq!((r.seq_rep_4, r.looping), (0.0, 0.0));
        assert_eq!(r.distinct_1, 1.0, "no word repeats");
        let looped = ["I'm sorry to assist you can assist you can assist you can assist you can assist you"];
        let l = repetition(&looped);
        // The share of four-word spans seen earlier in the output, counted directly.
        let w: Vec<&str> = looped[0].split_whitespace().collect();
        let spans: Vec<&[&str]> = w.windows(4).collect();
        let repeats = (0..spans.len()).filter(|&i| spans[..i].contains(&spans[i])).count();
        assert!((l.seq_rep_4 - repeats as f64 / spans.len() as f64).abs() < 1e-12);
        assert!(l.seq_rep_4 > 0.5 && l.looping == 1.0, "{l:?}");
        assert!(l.distinct_1 < 0.5);
        // Distinct-n counts over all outputs together: the same answer twice halves it.
        let twice = repetition(&["refunds take five days", "refunds take five days"]);
        assert_eq!((twice.distinct_1, twice.distinct_2), (0.5, 0.5));
        assert_eq!(repetition::<&str>(&[]), Repetition::default());
    }
}
