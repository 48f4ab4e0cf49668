//! Text metrics on whole outputs.

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
}
