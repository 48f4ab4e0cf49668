//! Token-level comparison of teacher and student on the same text (the teacher's own output):
//! both score every position over the full vocabulary. Where the two vocabularies differ, the
//! positions compared are the byte offsets where both tokenizations start a token, and each
//! side's next-token distribution is read over the tokens both vocabularies spell the same way,
//! the rest pooled into one "other" outcome ([`TokenStats::add_aligned`]).

use distill_models::retokenize::VocabMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Sums over positions; [`TokenStats::summary`] turns them into means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenStats {
    pub positions: usize,
    /// Σ KL(teacher ‖ student), nats
    pub kl_forward: f64,
    /// Σ KL(student ‖ teacher), nats
    pub kl_reverse: f64,
    /// Positions where the two argmaxes agree.
    pub top1_agree: usize,
    /// Σ −ln q_student(text token)
    pub student_nll: f64,
    /// Σ −ln p_teacher(text token)
    pub teacher_nll: f64,
    /// Tokens of the text in each model's tokenization (both `positions` with one vocabulary).
    pub student_tokens: usize,
    pub teacher_tokens: usize,
    /// Bytes of the text.
    pub bytes: usize,
}

/// Means over the positions seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub positions: usize,
    pub kl_forward: f64,
    pub kl_reverse: f64,
    pub top1_agreement: f64,
    /// exp(mean NLL) of the text under each model, per token of its own tokenization.
    pub student_perplexity: f64,
    pub teacher_perplexity: f64,
    /// Bytes of the text and each model's NLL per byte (nats): comparable across tokenizers.
    #[serde(default)]
    pub bytes: usize,
    #[serde(default)]
    pub student_nll_per_byte: f64,
    #[serde(default)]
    pub teacher_nll_per_byte: f64,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

impl TokenStats {
    /// Adds positions: `teacher` and `student` logits (rows × V, row-major, the same vocabulary)
    /// where row i predicts `targets[i]`.
    pub fn add(&mut self, teacher: &[f32], student: &[f32], targets: &[u32], vocab: usize) {
        let rows: Vec<TokenStats> = teacher
            .par_chunks(vocab)
            .zip(student.par_chunks(vocab))
            .zip(targets.par_iter())
            .map(|((t, s), &target)| {
                let (lt, ls) = (log_softmax(t), log_softmax(s));
                let (mut fwd, mut rev) = (0f64, 0f64);
                for (a, b) in lt.iter().zip(&ls) {
                    fwd += a.exp() * (a - b);
                    rev += b.exp() * (b - a);
                }
                TokenStats {
                    positions: 1,
                    kl_forward: fwd.max(0.0),
                    kl_reverse: rev.max(0.0),
                    top1_agree: usize::from(argmax(t) == argmax(s)),
                    student_nll: -ls[target as usize],
                    teacher_nll: -lt[target as usize],
                    student_tokens: 1,
                    teacher_tokens: 1,
                    bytes: 0,
                }
            })
            .collect();
        for r in rows {
            self.merge(&r);
        }
    }

    /// Adds one text both models scored in their own tokenizations: `teacher` holds a row of
    /// logits (`teacher_vocab` wide) per teacher token, predicting `teacher_ids`; `student` the
    /// same for the student. `starts` pairs the rows (teacher, student) that predict a token
    /// starting at the same byte; there the distributions are compared over `map`'s shared
    /// tokens (`twins`: [`VocabMap::twins_in_student`]) plus one pooled remainder, and the
    /// top-1 agrees when the teacher's first choice is the student's first choice's twin.
    #[allow(clippy::too_many_arguments)]
    pub fn add_aligned(
        &mut self,
        teacher: (&[f32], usize, &[u32]),
        student: (&[f32], usize, &[u32]),
        bytes: usize,
        starts: &[(usize, usize)],
        map: &VocabMap,
        twins: &[bool],
    ) {
        let ((t_logits, vt, t_ids), (s_logits, vs, s_ids)) = (teacher, student);
        let nll = |logits: &[f32], v: usize, ids: &[u32]| -> f64 {
            logits.par_chunks(v).zip(ids.par_iter()).map(|(row, &id)| -log_softmax(row)[id as usize]).sum()
        };
        self.teacher_nll += nll(t_logits, vt, t_ids);
        self.student_nll += nll(s_logits, vs, s_ids);
        self.teacher_tokens += t_ids.len();
        self.student_tokens += s_ids.len();
        self.bytes += bytes;
        let rows: Vec<(f64, f64, bool)> = starts
            .par_iter()
            .map(|&(t, s)| {
                let (t_row, s_row) = (&t_logits[t * vt..(t + 1) * vt], &s_logits[s * vs..(s + 1) * vs]);
                let (lt, ls) = (log_softmax(t_row), log_softmax(s_row));
                // Both distributions over the student's shared ids, the rest pooled last.
                let mut p = vec![0f64; vs + 1];
                for (id, l) in lt.iter().enumerate() {
                    let class = map.student_id(id as u32).map_or(vs, |s| s as usize);
                    p[class] += l.exp();
                }
                let mut q = vec![0f64; vs + 1];
                for (id, l) in ls.iter().enumerate() {
                    q[if twins.get(id).copied().unwrap_or(false) { id } else { vs }] += l.exp();
                }
                let kl = |a: &[f64], b: &[f64]| -> f64 {
                    a.iter()
                        .zip(b)
                        .filter(|(x, _)| **x > 0.0)
                        .map(|(x, y)| x * (x.ln() - y.max(f64::MIN_POSITIVE).ln()))
                        .sum::<f64>()
                        .max(0.0)
                };
                let agree = map.student_id(argmax(t_row) as u32) == Some(argmax(s_row) as u32);
                (kl(&p, &q), kl(&q, &p), agree)
            })
            .collect();
        for (fwd, rev, agree) in rows {
            self.positions += 1;
            self.kl_forward += fwd;
            self.kl_reverse += rev;
            self.top1_agree += usize::from(agree);
        }
    }

    pub fn merge(&mut self, o: &TokenStats) {
        self.positions += o.positions;
        self.kl_forward += o.kl_forward;
        self.kl_reverse += o.kl_reverse;
        self.top1_agree += o.top1_agree;
        self.student_nll += o.student_nll;
        self.teacher_nll += o.teacher_nll;
        self.student_tokens += o.student_tokens;
        self.teacher_tokens += o.teacher_tokens;
        self.bytes += o.bytes;
    }

    pub fn summary(&self) -> TokenSummary {
        let n = self.positions.max(1) as f64;
        TokenSummary {
            positions: self.positions,
            kl_forward: self.kl_forward / n,
            kl_reverse: self.kl_reverse / n,
            top1_agreement: self.top1_agree as f64 / n,
            student_perplexity: (self.student_nll / self.student_tokens.max(1) as f64).exp(),
            teacher_perplexity: (self.teacher_nll / self.teacher_tokens.max(1) as f64).exp(),
            bytes: self.bytes,
            student_nll_per_byte: self.student_nll / self.bytes.max(1) as f64,
            teacher_nll_per_byte: self.teacher_nll / self.bytes.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_models_agree_and_divergences_are_hand_checked() {
        let t = [1.0f32, 2.0, 3.0, 0.0, 0.0, 5.0];
        let mut same = TokenStats::default();
        same.add(&t, &t, &[2, 2], 3);
        let s = same.summary();
        assert_eq!((s.positions, s.top1_agreement), (2, 1.0));
        assert!(s.kl_forward.abs() < 1e-12 && s.kl_reverse.abs() < 1e-12);
        assert!((s.student_perplexity - s.teacher_perplexity).abs() < 1e-12);

        // Two-token vocabulary: teacher (0.5, 0.5), student (e/(1+e), 1/(1+e)).
        let mut stats = TokenStats::default();
        stats.add(&[0.0, 0.0], &[1.0, 0.0], &[1], 2);
        let q: f64 = 1f64.exp() / (1.0 + 1f64.exp());
        let fwd = 0.5 * (0.5f64 / q).ln() + 0.5 * (0.5f64 / (1.0 - q)).ln();
        let rev = q * (q / 0.5).ln() + (1.0 - q) * ((1.0 - q) / 0.5).ln();
        let s = stats.summary();
        assert!((s.kl_forward - fwd).abs() < 1e-9, "{} vs {fwd}", s.kl_forward);
        assert!((s.kl_reverse - rev).abs() < 1e-9);
        assert_eq!(s.top1_agreement, 1.0, "a tie goes to the lower id, which is the student's argmax too");
        assert!((s.student_perplexity - 1.0 / (1.0 - q)).abs() < 1e-9);
        assert!((s.teacher_perplexity - 2.0).abs() < 1e-9);
    }

    #[test]
    fn aligned_positions_pool_what_only_one_vocabulary_has() {
        // Teacher ids a=0 b=1 c=2; student ids b=0 a=1 x=2: a and b are shared, c and x are not.
        let map = VocabMap::from_pairs(3, 3, &[(0, 1), (1, 0)]);
        let twins = map.twins_in_student(3);
        let ln = |p: [f32; 3]| p.map(f32::ln);
        let (t, s) = (ln([0.5, 0.3, 0.2]), ln([0.2, 0.6, 0.2]));
        let mut stats = TokenStats::default();
        stats.add_aligned((&t, 3, &[2]), (&s, 3, &[2]), 4, &[(0, 0)], &map, &twins);
        // Classes (a, b, other): teacher (0.5, 0.3, 0.2), student (0.6, 0.2, 0.2).
        let fwd = 0.5 * (0.5f64 / 0.6).ln() + 0.3 * (0.3f64 / 0.2).ln();
        let rev = 0.6 * (0.6f64 / 0.5).ln() + 0.2 * (0.2f64 / 0.3).ln();
        let r = stats.summary();
        assert!((r.kl_forward - fwd).abs() < 1e-6, "{} vs {fwd}", r.kl_forward);
        assert!((r.kl_reverse - rev).abs() < 1e-6);
        assert_eq!(r.top1_agreement, 1.0, "the teacher's a is the student's a");
        assert!((r.teacher_nll_per_byte - (-(0.2f64).ln() / 4.0)).abs() < 1e-6);
        assert_eq!((r.positions, r.bytes), (1, 4));
    }

    #[test]
    fn aligned_comparison_with_one_vocabulary_is_the_plain_one() {
        let map = VocabMap::from_pairs(3, 3, &[(0, 0), (1, 1), (2, 2)]);
        let t = [1.0f32, 2.0, 3.0, 0.5, -1.0, 0.0];
        let s = [0.0f32, 2.5, 1.0, 1.0, 0.0, -2.0];
        let mut plain = TokenStats::default();
        plain.add(&t, &s, &[2, 0], 3);
        let mut aligned = TokenStats::default();
        aligned.add_aligned((&t, 3, &[2, 0]), (&s, 3, &[2, 0]), 2, &[(0, 0), (1, 1)], &map, &map.twins_in_student(3));
        let (p, a) = (plain.summary(), aligned.summary());
        assert!((p.kl_forward - a.kl_forward).abs() < 1e-9 && (p.kl_reverse - a.kl_reverse).abs() < 1e-9);
        assert_eq!(p.top1_agreement, a.top1_agreement);
        assert!((p.student_perplexity - a.student_perplexity).abs() < 1e-9);
    }
}
