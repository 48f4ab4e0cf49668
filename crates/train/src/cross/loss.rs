//! The cross-tokenizer losses, as functions of the student log-probabilities they read.
//!
//! A batch gathers the student's log-probabilities it needs into one vector `g` (entries of
//! log_softmax of the student's logits at chosen positions and tokens); everything else is the
//! teacher's, constant. The loss and its gradient with respect to `g` are computed here in f64
//! and the student's parameters get theirs through `g` (see `step.rs`).
//!
//! For an aligned group of student tokens `s_a … s_b` and teacher tokens `t_c … t_d` spanning the
//! same bytes (GOLD's merge, Patiño et al. 2025), each side's distribution over the group's first
//! token is scaled by the probability of the rest of its own tokens:
//!
//! ```text
//! ls(u) = log p_s(u | <a) + σ_s,  σ_s = Σ_{i=a+1..b} log p_s(s_i | <i)
//! lt(v) = log p_t(v | <c) + σ_t,  σ_t = Σ_{j=c+1..d} log p_t(t_j | <j)   (top-K, else the tail: a bound)
//! ```
//!
//! and the group's loss compares them in two parts:
//! - **matched** (GOLD): teacher top-K tokens the student has too (same bytes), by the
//!   generalized KL of unnormalised measures `Σ qt·(lt − ls) − qt + qs` (≥ 0, 0 only when equal),
//!   `qt = e^lt`, `qs = e^ls`;
//! - **unmatched** (ULD, Boizard et al. 2024): the teacher's other top-K probabilities, sorted,
//!   against the student's largest probabilities outside the matched tokens, sorted, by L1; and
//!   what is left on each side (the teacher's tail, the student's remaining mass) as one more
//!   L1 term.
//!
//! ULD alone is the same with no token matched: the sorted teacher top-K and tail against the
//! student's sorted top-K and rest. Sequence-level KD is the cross-entropy term alone.
//!
//! `loss = ce_weight · mean over student tokens of −log p_s(s_i)
//!       + kd_weight · mean over groups of (matched_weight · matched + unmatched_weight · unmatched)`

/// One aligned group's terms, as indices into the gathered log-probabilities `g`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupTerms {
    /// `g` indices of log p_s(s_i) at the group's later student tokens (σ_s is their sum).
    pub later: Vec<usize>,
    /// σ_t: the teacher's log-probabilities of its own later tokens, summed.
    pub teacher_later: f64,
    /// Exact matches at the first token: (`g` index of log p_s(u), teacher log p_t(v)).
    pub matched: Vec<(usize, f64)>,
    /// Teacher log-probabilities of its top-K tokens without a match, descending.
    pub teacher_unmatched: Vec<f64>,
    /// `g` indices of the student's most probable tokens outside the matched ones, descending by
    /// the student's current probability, one per teacher entry above.
    pub student_unmatched: Vec<usize>,
    /// The teacher's tail log-probability (mass outside its top-K) at its first token.
    pub teacher_tail: f64,
}

/// Everything one batch's loss reads besides `g`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossTerms {
    pub groups: Vec<GroupTerms>,
    /// `g` indices of log p_s(s_i) for every student token trained on (the cross-entropy).
    pub ce: Vec<usize>,
}

/// The weights of the loss's parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    pub ce: f64,
    pub kd: f64,
    pub matched: f64,
    pub unmatched: f64,
}

/// A batch's loss, its parts, and d loss / d g.
#[derive(Debug, Clone, PartialEq)]
pub struct LossValue {
    pub loss: f64,
    /// Mean cross-entropy per student token and mean matched / unmatched term per group
    /// (unweighted).
    pub ce: f64,
    pub matched: f64,
    pub unmatched: f64,
    pub grad: Vec<f64>,
}

/// The loss of `terms` at `g`, and its gradient.
pub fn loss_and_grad(g: &[f64], terms: &LossTerms, w: &LossWeights) -> LossValue {
    let mut grad = vec![0.0; g.len()];
    let n_ce = terms.ce.len().max(1) as f64;
    let mut ce = 0.0;
    for &i in &terms.ce {
        ce -= g[i];
        grad[i] -= w.ce / n_ce;
    }
    let n_groups = terms.groups.len().max(1) as f64;
    let (mut matched_sum, mut unmatched_sum) = (0.0, 0.0);
    for group in &terms.groups {
        let (m, u) = group_loss(g, group, w.kd * w.matched / n_groups, w.kd * w.unmatched / n_groups, &mut grad);
        matched_sum += m;
        unmatched_sum += u;
    }
    let (ce, matched, unmatched) = (ce / n_ce, matched_sum / n_groups, unmatched_sum / n_groups);
    LossValue { loss: w.ce * ce + w.kd * (w.matched * matched + w.unmatched * unmatched), ce, matched, unmatched, grad }
}

/// One group's matched and unmatched terms; adds `scale_matched · ∂matched/∂g +
/// scale_unmatched · ∂unmatched/∂g` into `grad`.
fn group_loss(g: &[f64], t: &GroupTerms, scale_matched: f64, scale_unmatched: f64, grad: &mut [f64]) -> (f64, f64) {
    let sigma_s: f64 = t.later.iter().map(|&i| g[i]).sum();
    // d loss / d σ_s, spread onto every later index at the end.
    let mut d_sigma = 0.0;

    let mut matched = 0.0;
    for &(i, lt) in &t.matched {
        let lt = lt + t.teacher_later;
        let ls = g[i] + sigma_s;
        let (qt, qs) = (lt.exp(), ls.exp());
        // 0 · log 0 = 0: a teacher entry with no mass adds only the student's.
        let cross = if qt > 0.0 { qt * (lt - ls) } else { 0.0 };
        matched += cross - qt + qs;
        let d = scale_matched * (qs - qt);
        grad[i] += d;
        d_sigma += d;
    }

    let mut unmatched = 0.0;
    for (&lt, &i) in t.teacher_unmatched.iter().zip(&t.student_unmatched) {
        let rt = (lt + t.teacher_later).exp();
        let rs = (g[i] + sigma_s).exp();
        unmatched += (rt - rs).abs();
        let d = scale_unmatched * sign(rs - rt) * rs;
        grad[i] += d;
        d_sigma += d;
    }
    // What is left: the teacher's tail against the student's mass outside every token above.
    let rho_t = (t.teacher_tail + t.teacher_later).exp();
    let picked = t.matched.iter().map(|&(i, _)| i).chain(t.student_unmatched.iter().copied());
    let picked_mass: f64 = picked.clone().map(|i| g[i].exp()).sum();
    let rho_s = sigma_s.exp() * (1.0 - picked_mass).max(0.0);
    unmatched += (rho_t - rho_s).abs();
    let d_rho = scale_unmatched * sign(rho_s - rho_t);
    if picked_mass < 1.0 {
        // ρ_s = e^σ_s − Σ e^(g_i + σ_s): ∂/∂σ_s = ρ_s, ∂/∂g_i = −e^(g_i + σ_s).
        d_sigma += d_rho * rho_s;
        for i in picked {
            grad[i] -= d_rho * (g[i] + sigma_s).exp();
        }
    }
    for &i in &t.later {
        grad[i] += d_sigma;
    }
    (matched, unmatched)
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (Vec<f64>, LossTerms) {
        // g: 8 student log-probs; two groups and four cross-entropy entries.
        let g = vec![-0.4, -1.6, -2.3, -0.2, -0.9, -3.0, -0.05, -1.2];
        let groups = vec![
            GroupTerms {
                later: vec![3],
                teacher_later: -0.3,
                matched: vec![(0, -0.5), (1, -1.9)],
                teacher_unmatched: vec![-2.2],
                student_unmatched: vec![2],
                teacher_tail: -2.8,
            },
            GroupTerms {
                later: vec![],
                teacher_later: 0.0,
                matched: vec![],
                teacher_unmatched: vec![-0.2, -2.0],
                student_unmatched: vec![6, 7],
                teacher_tail: -3.5,
            },
        ];
        (g, LossTerms { groups, ce: vec![0, 3, 4, 6] })
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (g, terms) = example();
        let w = LossWeights { ce: 0.7, kd: 1.3, matched: 1.0, unmatched: 0.6 };
        let value = loss_and_grad(&g, &terms, &w);
        for i in 0..g.len() {
            let h = 1e-6;
            let mut plus = g.clone();
            plus[i] += h;
            let mut minus = g.clone();
            minus[i] -= h;
            let fd = (loss_and_grad(&plus, &terms, &w).loss - loss_and_grad(&minus, &terms, &w).loss) / (2.0 * h);
            assert!((fd - value.grad[i]).abs() < 1e-6, "g[{i}]: analytic {} vs finite difference {fd}", value.grad[i]);
        }
    }

    #[test]
    fn matched_term_vanishes_when_the_student_agrees() {
        let terms = LossTerms {
            groups: vec![GroupTerms {
                matched: vec![(0, -0.5), (1, -1.5)],
                teacher_tail: (1.0 - (-0.5f64).exp() - (-1.5f64).exp()).ln(),
                ..GroupTerms::default()
            }],
            ce: vec![],
        };
        let w = LossWeights { ce: 1.0, kd: 1.0, matched: 1.0, unmatched: 1.0 };
        let v = loss_and_grad(&[-0.5, -1.5], &terms, &w);
        // The L1 terms have a kink at equality, so only the value is 0 there, not every gradient.
        assert!(v.loss.abs() < 1e-12 && v.matched.abs() < 1e-12, "{v:?}");
        let off = loss_and_grad(&[-0.9, -1.5], &terms, &w);
        assert!(off.matched > 0.0 && off.unmatched > 0.0, "{off:?}");
    }
}
