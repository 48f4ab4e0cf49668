//! The figures `distill align` reports for a pair of tokenizers (the byte alignment itself is
//! [`distill_models::retokenize`]'s).

use distill_models::retokenize::{byte_ends, VocabMap};
use distill_models::TextTokenizer;
use distill_teacher::{ScoreRequest, Teacher};
use serde::Serialize;

/// How well a student's tokenizer fits a teacher's, as `distill align` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AlignReport {
    pub teacher_vocab: usize,
    pub student_vocab: usize,
    /// Teacher tokens whose byte string (or special name) the student has.
    pub shared_tokens: usize,
    /// The same tokenizer (identical id → token tables).
    pub identical: bool,
    /// Texts measured, their bytes and teacher tokens.
    pub texts: usize,
    pub bytes: usize,
    pub teacher_tokens: usize,
    pub student_tokens: usize,
    /// Share of the teacher's token boundaries inside a text where the student's tokenization has
    /// a boundary too.
    pub boundary_agreement: f64,
    /// Mean share of the teacher's top-k probability mass (of the whole distribution) on tokens
    /// the student has as single tokens, and of the top-k mass alone.
    pub mapped_mass: f64,
    pub mapped_topk_share: f64,
    /// Positions the mass figures average over.
    pub scored_positions: usize,
    /// Agreed and all inner teacher boundaries so far.
    #[serde(skip)]
    boundary_pairs: (usize, usize),
}

impl AlignReport {
    /// The vocabulary figures of a pair, before any text is measured.
    pub fn vocabularies(teacher: &TextTokenizer, student: &TextTokenizer, map: &VocabMap) -> Self {
        Self {
            teacher_vocab: map.teacher_vocab,
            student_vocab: map.student_vocab,
            shared_tokens: map.shared,
            identical: teacher.fingerprint() == student.fingerprint(),
            ..Self::default()
        }
    }

    /// Adds one text: its teacher ids (specials allowed, they span no bytes) and the student ids
    /// of the same text, for the boundary figure.
    pub fn add_text(&mut self, teacher: &TextTokenizer, student: &TextTokenizer, teacher_ids: &[u32], text: &str) {
        let Ok(student_ids) = student.encode(text, false) else { return };
        let t_ends = byte_ends(teacher, teacher_ids);
        let s_ends: std::collections::HashSet<usize> = byte_ends(student, &student_ids).into_iter().collect();
        let bytes = t_ends.last().copied().unwrap_or(0);
        // Inner boundaries only: every tokenization starts at 0 and ends at the text's end.
        let mut inner: Vec<usize> = t_ends.iter().copied().filter(|&e| e > 0 && e < bytes).collect();
        inner.dedup(); // zero-width (special) tokens repeat an end
        let agreed = inner.iter().filter(|e| s_ends.contains(e)).count();
        self.boundary_pairs.0 += agreed;
        self.boundary_pairs.1 += inner.len();
        self.texts += 1;
        self.bytes += bytes;
        self.teacher_tokens += teacher_ids.len();
        self.student_tokens += student_ids.len();
        self.boundary_agreement = self.boundary_pairs.0 as f64 / self.boundary_pairs.1.max(1) as f64;
    }

    /// Adds one teacher top-k row (ids and log-probabilities).
    pub fn add_topk(&mut self, map: &VocabMap, ids: &[u32], logprobs: &[f32]) {
        let (mut mapped, mut total) = (0f64, 0f64);
        for (&id, &lp) in ids.iter().zip(logprobs) {
            let p = (lp as f64).exp();
            total += p;
            if map.student_id(id).is_some() {
                mapped += p;
            }
        }
        let n = self.scored_positions as f64;
        self.mapped_mass = (self.mapped_mass * n + mapped) / (n + 1.0);
        self.mapped_topk_share = (self.mapped_topk_share * n + mapped / total.max(f64::MIN_POSITIVE)) / (n + 1.0);
        self.scored_positions += 1;
    }

    /// Which training modes make sense for the pair, most useful first, each with why.
    pub fn advice(&self) -> Vec<String> {
        if self.identical {
            return vec!["same tokenizer: train with ordinary logit distillation (no [cross_tokenizer] section)".into()];
        }
        let mut out = Vec::new();
        if self.scored_positions == 0 {
            out.push(
                "measure a text (--prompts FILE) to see how much of the teacher's mass the student can match".into(),
            );
        } else if self.mapped_topk_share >= 0.5 {
            out.push(format!(
                "gold: {:.0}% of the teacher's top-k mass lands on tokens the student has, so exact matching carries most of the signal",
                self.mapped_topk_share * 100.0
            ));
            out.push(
                "uld: usable, but it ignores which tokens match and learns only the shape of each distribution".into(),
            );
        } else {
            out.push(format!(
                "uld: only {:.0}% of the teacher's top-k mass lands on tokens the student has; the sorted-probability term carries the rest",
                self.mapped_topk_share * 100.0
            ));
            out.push("gold: still usable, its exact-match term covers the shared part".into());
        }
        if self.texts > 0 && self.boundary_agreement < 0.5 {
            out.push(format!(
                "only {:.0}% of token boundaries agree: aligned spans are long, so per-span losses see coarse distributions",
                self.boundary_agreement * 100.0
            ));
        }
        out.push("sequence: always possible (the teacher's text re-tokenised, cross-entropy), the baseline".into());
        out
    }
}

/// Measures a student tokenizer against `teacher` on `texts`: vocabularies, token boundaries
/// and, from the teacher scoring each text (one forward pass, no generation), how much of its
/// top-`k` mass the student has as single tokens. `progress` hears texts done.
pub fn measure(
    teacher: &dyn Teacher,
    student: &TextTokenizer,
    texts: &[String],
    k: usize,
    progress: &mut dyn FnMut(usize),
) -> crate::Result<AlignReport> {
    let t_tok = teacher.tokenizer();
    let map = VocabMap::new(t_tok, student);
    let mut report = AlignReport::vocabularies(t_tok, student, &map);
    let batch = teacher.prompts_per_call(8).max(1);
    for (done, chunk) in texts.chunks(batch).enumerate() {
        let mut requests = Vec::new();
        for text in chunk {
            let ids = t_tok.encode(text, false)?;
            report.add_text(t_tok, student, &ids, text);
            // Position 0 needs a context: BOS where the model has one, else the first token.
            let (token_ids, from) = match t_tok.bos_id() {
                Some(bos) => (std::iter::once(bos).chain(ids.iter().copied()).collect::<Vec<_>>(), 1),
                None => (ids.clone(), 1),
            };
            if token_ids.len() > from {
                requests.push(ScoreRequest { token_ids, from });
            }
        }
        for top in teacher.score(&requests, k, 1.0)? {
            for (ids, lps) in top.ids.chunks(k).zip(top.logprobs.chunks(k)) {
                report.add_topk(&map, ids, lps);
            }
        }
        progress((done * batch + chunk.len()).min(texts.len()));
    }
    Ok(report)
}
