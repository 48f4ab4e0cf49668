//! Token-level comparison of teacher and student on the same text (the teacher's own output):
//! both score every position over the full vocabulary.

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
}

/// Means over the positions seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub positions: usize,
    pub kl_forward: f64,
    pub kl_reverse: f64,
    pub top1_agreement: f64,
    /// exp(mean NLL) of the text under each model.
    pub student_perplexity: f64,
    pub teacher_perplexity: f64,
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
                }
            })
            .collect();
        for r in rows {
            self.merge(&r);
        }
    }

    pub fn merge(&mut self, o: &TokenStats) {
        self.positions += o.positions;
        self.kl_forward += o.kl_forward;
        self.kl_reverse += o.kl_reverse;
        self.top1_agree += o.top1_agree;
        self.student_nll += o.student_nll;
        self.teacher_nll += o.teacher_nll;
    }

    pub fn summary(&self) -> TokenSummary {
        let n = self.positions.max(1) as f64;
        TokenSummary {
            positions: self.positions,
            kl_forward: self.kl_forward / n,
            kl_reverse: self.kl_reverse / n,
            top1_agreement: self.top1_agree as f64 / n,
            student_perplexity: (self.student_nll / n).exp(),
            teacher_perplexity: (self.teacher_nll / n).exp(),
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
}
