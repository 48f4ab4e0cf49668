//! One cross-tokenizer batch through the student: the log-probabilities the loss reads are
//! gathered from the (N, V) logits at the positions that predict completion tokens, the loss and
//! d loss / d g come from [`crate::cross::loss`], and the objective `Σ g · (d loss / d g)` (the
//! gradient held constant) gives the parameters the loss's gradient through candle's autograd.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use crate::cross::{loss_and_grad, CrossBatch, CrossConfig, CrossMode, CrossSequence, GroupTerms, LossTerms, VocabMap};
use crate::student::{PackedRows, StepLoss, Student};

/// Held-out figures that need no shared vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CrossEvaluation {
    /// The student's negative log-likelihood of the teacher's completion text, nats per byte.
    pub nll_per_byte: f64,
    /// Share of aligned spans whose first token the student ranks first and the teacher ranks
    /// first too (the same bytes).
    pub top1_agreement: f64,
    pub bytes: usize,
    pub spans: usize,
}

/// The student's logits at the positions that predict the batch's completion tokens.
struct BatchLogits {
    /// (N, V).
    logits: Tensor,
    /// (N): log Σ exp over each row.
    lse: Tensor,
    /// Flat batch position → row of `logits`.
    row_of: HashMap<usize, usize>,
    vocab: usize,
}

impl Student {
    fn batch_logits(&self, batch: &CrossBatch<'_>) -> Result<Option<BatchLogits>> {
        let mut positions = Vec::new();
        for (seq, start) in &batch.placed {
            for i in 0..seq.completion_len() {
                if let Some(p) = predictor(seq, *start, i) {
                    positions.push(p as u32);
                }
            }
        }
        if positions.is_empty() {
            return Ok(None);
        }
        let rows = PackedRows {
            batch_size: batch.batch_size,
            seq_len: batch.seq_len,
            input_ids: &batch.input_ids,
            position_ids: &batch.position_ids,
            segment_ids: &batch.segment_ids,
        };
        // The head in f32 on the variables: the cross-tokenizer losses read whole (N, V) rows.
        let selected = self.hidden_at(&rows, &positions)?.to_dtype(self.model.dtype())?; // (N, C)
        let logits = selected.matmul(&self.model.lm_head_weight().t()?)?; // (N, V)
        let max = logits.max_keepdim(1)?.detach(); // (N, 1)
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?.flatten_all()?; // (N)
        let row_of = positions.iter().enumerate().map(|(r, &p)| (p as usize, r)).collect();
        let vocab = logits.dim(1)?;
        Ok(Some(BatchLogits { logits, lse, row_of, vocab }))
    }

    /// The cross-tokenizer loss of `batch` (None when it holds no completion token).
    pub fn cross_batch_loss(
        &self,
        batch: &CrossBatch<'_>,
        k: usize,
        map: &VocabMap,
        cfg: &CrossConfig,
    ) -> Result<Option<StepLoss>> {
        let Some(bl) = self.batch_logits(batch)? else { return Ok(None) };
        let rows = match cfg.mode {
            CrossMode::Sequence => HashMap::new(),
            _ => first_rows(&bl, &group_firsts(batch, &bl.row_of))?,
        };
        let (terms, gather) = build_terms(batch, &bl.row_of, bl.vocab, &rows, k, map, cfg.mode);
        let g = gather.values(&bl)?; // (G)
        let gv: Vec<f64> = g.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
        let value = loss_and_grad(&gv, &terms, &cfg.weights());
        let grad: Vec<f32> = value.grad.iter().map(|&d| d as f32).collect();
        let grad = Tensor::from_vec(grad, gv.len(), g.device())?;
        let objective = (g * grad)?.sum_all()?;
        Ok(Some(StepLoss { loss: value.loss, objective, tokens: terms.ce.len() }))
    }

    /// NLL per byte of the teacher's text and first-token agreement on aligned spans.
    pub fn cross_evaluate(&self, batches: &[CrossBatch<'_>], k: usize, map: &VocabMap) -> Result<CrossEvaluation> {
        let (mut nll, mut bytes, mut agree, mut spans) = (0f64, 0usize, 0usize, 0usize);
        for batch in batches {
            let Some(bl) = self.batch_logits(batch)? else { continue };
            let mut gather = Gather::default();
            for (seq, start) in &batch.placed {
                // Only texts the row holds whole: the figure is per byte of the teacher's text.
                if seq.text_tokens > seq.completion_len() {
                    continue;
                }
                for i in 0..seq.text_tokens {
                    if let Some(p) = predictor(seq, *start, i) {
                        gather.entry(bl.row_of[&p], seq.token_ids[seq.prompt_len + i]);
                    }
                }
                bytes += seq.bytes;
            }
            nll -= gather.values(&bl)?.to_vec1::<f32>()?.iter().map(|&x| x as f64).sum::<f64>();
            let argmax = bl.logits.argmax(1)?.to_vec1::<u32>()?;
            for ((seq, _), gi, row) in group_firsts(batch, &bl.row_of) {
                let teacher_top = seq.topk_ids[seq.groups[gi].teacher.start * k];
                spans += 1;
                agree += usize::from(map.student_id(teacher_top) == Some(argmax[row]));
            }
        }
        Ok(CrossEvaluation {
            nll_per_byte: nll / bytes.max(1) as f64,
            top1_agreement: agree as f64 / spans.max(1) as f64,
            bytes,
            spans,
        })
    }
}

/// The flat batch position whose output predicts completion token `i` of `seq` (none for a
/// first token with no prompt before it).
fn predictor(seq: &CrossSequence, start: usize, i: usize) -> Option<usize> {
    (seq.prompt_len + i).checked_sub(1).map(|p| start + p)
}

type Placed<'a, 'b> = &'b (&'a CrossSequence, usize);

/// A batch's loss terms and the log-probabilities they read: cross-entropy on every completion
/// token, and (unless `mode` is sequence-level KD) one [`GroupTerms`] per aligned group, whose
/// student tokens outside the matches are chosen from `first_rows` (the logits of the rows that
/// start a group). `row_of` maps a flat batch position to its row of the logits.
pub(crate) fn build_terms(
    batch: &CrossBatch<'_>,
    row_of: &HashMap<usize, usize>,
    vocab: usize,
    first_rows: &HashMap<usize, Vec<f32>>,
    k: usize,
    map: &VocabMap,
    mode: CrossMode,
) -> (LossTerms, Gather) {
    let mut gather = Gather::default();
    let mut terms = LossTerms::default();
    for (seq, start) in &batch.placed {
        for i in 0..seq.completion_len() {
            if let Some(p) = predictor(seq, *start, i) {
                terms.ce.push(gather.entry(row_of[&p], seq.token_ids[seq.prompt_len + i]));
            }
        }
    }
    if mode != CrossMode::Sequence {
        for ((seq, start), gi, row) in group_firsts(batch, row_of) {
            let at = GroupAt { seq, start: *start, row, row_of, vocab };
            terms.groups.push(group_terms(&at, &seq.groups[gi], k, map, mode, &first_rows[&row], &mut gather));
        }
    }
    (terms, gather)
}

/// Where a group's sequence sits in the batch and its first token's row.
struct GroupAt<'x> {
    seq: &'x CrossSequence,
    start: usize,
    row: usize,
    row_of: &'x HashMap<usize, usize>,
    vocab: usize,
}

/// Every aligned group of the batch with the row predicting its first student token.
fn group_firsts<'a, 'b>(
    batch: &'b CrossBatch<'a>,
    row_of: &HashMap<usize, usize>,
) -> Vec<(Placed<'a, 'b>, usize, usize)> {
    let mut out = Vec::new();
    for placed in &batch.placed {
        let (seq, start) = placed;
        for (gi, group) in seq.groups.iter().enumerate() {
            if let Some(p) = predictor(seq, *start, group.student.start) {
                out.push((placed, gi, row_of[&p]));
            }
        }
    }
    out
}

/// The logits of the rows that start a group, to choose the student's largest unmatched tokens.
fn first_rows(bl: &BatchLogits, firsts: &[(Placed<'_, '_>, usize, usize)]) -> Result<HashMap<usize, Vec<f32>>> {
    let mut rows: Vec<u32> = firsts.iter().map(|f| f.2 as u32).collect();
    rows.sort_unstable();
    rows.dedup();
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let index = Tensor::from_vec(rows.clone(), rows.len(), bl.logits.device())?;
    let values = bl.logits.index_select(&index, 0)?.to_vec2::<f32>()?;
    Ok(rows.into_iter().map(|r| r as usize).zip(values).collect())
}

/// The loss terms of one aligned group.
fn group_terms(
    at: &GroupAt<'_>,
    group: &crate::cross::Group,
    k: usize,
    map: &VocabMap,
    mode: CrossMode,
    logits_row: &[f32],
    gather: &mut Gather,
) -> GroupTerms {
    let (seq, row) = (at.seq, at.row);
    let mut terms = GroupTerms::default();
    for i in group.student.start + 1..group.student.end {
        if let Some(p) = predictor(seq, at.start, i) {
            terms.later.push(gather.entry(at.row_of[&p], seq.token_ids[seq.prompt_len + i]));
        }
    }
    let c = group.teacher.start;
    terms.teacher_later = (c + 1..group.teacher.end).map(|j| seq.teacher_own_logprob(j, k)).sum();
    terms.teacher_tail = seq.tail_logprobs[c] as f64;
    let mut taken: Vec<u32> = Vec::new();
    for r in 0..k {
        let (v, lp) = (seq.topk_ids[c * k + r], seq.topk_logprobs[c * k + r]);
        if !lp.is_finite() {
            continue;
        }
        let twin = if mode == CrossMode::Gold { map.student_id(v) } else { None };
        match twin.filter(|&u| (u as usize) < at.vocab && !taken.contains(&u)) {
            Some(u) => {
                taken.push(u);
                terms.matched.push((gather.entry(row, u), lp as f64));
            }
            None => terms.teacher_unmatched.push(lp as f64),
        }
    }
    let wanted = terms.teacher_unmatched.len();
    for u in largest_excluding(logits_row, wanted, &taken) {
        terms.student_unmatched.push(gather.entry(row, u));
    }
    terms
}

/// The `n` largest entries of `row`, descending, skipping the ids in `excluded`.
fn largest_excluding(row: &[f32], n: usize, excluded: &[u32]) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let take = (n + excluded.len()).min(row.len());
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    let by_value = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
    if take < ids.len() {
        ids.select_nth_unstable_by(take - 1, by_value);
        ids.truncate(take);
    }
    ids.sort_by(by_value);
    ids.into_iter().filter(|u| !excluded.contains(u)).take(n).collect()
}

/// The (row, token) entries of the logits the loss reads, each once.
#[derive(Default)]
pub(crate) struct Gather {
    pub(crate) entries: Vec<(usize, u32)>,
    index: HashMap<(usize, u32), usize>,
}

impl Gather {
    fn entry(&mut self, row: usize, token: u32) -> usize {
        let next = self.entries.len();
        *self.index.entry((row, token)).or_insert_with(|| {
            self.entries.push((row, token));
            next
        })
    }

    /// log p at every entry: logits[row, token] − lse[row], (G).
    fn values(&self, bl: &BatchLogits) -> Result<Tensor> {
        let device = bl.logits.device();
        // i64: rows × vocabulary passes u32 for large batches of large vocabularies.
        let flat: Vec<i64> = self.entries.iter().map(|&(r, t)| (r * bl.vocab) as i64 + t as i64).collect();
        let rows: Vec<u32> = self.entries.iter().map(|&(r, _)| r as u32).collect();
        let g = self.entries.len();
        let picked = bl.logits.flatten_all()?.index_select(&Tensor::from_vec(flat, g, device)?, 0)?;
        let norm = bl.lse.index_select(&Tensor::from_vec(rows, g, device)?, 0)?;
        picked - norm
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;

    use super::{build_terms, largest_excluding};
    use crate::cross::{
        align_groups, loss_and_grad, CrossMode, CrossSequence, CrossStream, Group, LossWeights, VocabMap,
    };

    fn list<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<T> {
        serde_json::from_value(v.clone()).unwrap()
    }

    /// The batch terms, the loss and its gradient with respect to the student's logits against
    /// float64 PyTorch written from the definitions (tests/reference/make_cross_fixtures.py).
    #[test]
    fn gold_uld_and_sequence_losses_match_the_float64_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/cross_losses.json");
        let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (vs, vt, k) =
            (f["vs"].as_u64().unwrap() as usize, f["vt"].as_u64().unwrap() as usize, f["k"].as_u64().unwrap() as usize);
        let w = &f["weights"];
        let weights = LossWeights {
            ce: w["ce"].as_f64().unwrap(),
            kd: w["kd"].as_f64().unwrap(),
            matched: w["matched"].as_f64().unwrap(),
            unmatched: w["unmatched"].as_f64().unwrap(),
        };
        for case in f["cases"].as_array().unwrap() {
            let mode: CrossMode = serde_json::from_value(case["mode"].clone()).unwrap();
            let student_ids: Vec<u32> = list(&case["student_ids"]);
            let teacher_ids: Vec<u32> = list(&case["teacher_ids"]);
            let (ns, nt) = (student_ids.len(), teacher_ids.len());
            let mut groups = align_groups(&list::<usize>(&case["student_ends"]), &list::<usize>(&case["teacher_ends"]));
            groups.push(Group { student: ns - 1..ns, teacher: nt - 1..nt });
            let topk: Vec<Vec<u32>> = list(&case["topk_ids"]);
            let topk_lp: Vec<Vec<f32>> = list(&case["topk_logprobs"]);
            let seq = CrossSequence {
                token_ids: std::iter::once(0).chain(student_ids.iter().copied()).collect(),
                prompt_len: 1,
                bytes: 24,
                text_tokens: ns - 1,
                groups,
                teacher_ids,
                topk_ids: topk.concat(),
                topk_logprobs: topk_lp.concat(),
                tail_logprobs: list(&case["tails"]),
            };
            let sequences = [seq];
            let batches = CrossStream::batches_in_order(&sequences, 64, 1);
            let logits: Vec<Vec<f64>> = list(&case["logits"]);
            // Row i of the logits predicts completion token i (the prompt is one token).
            let row_of: HashMap<usize, usize> = (0..ns).map(|i| (i, i)).collect();
            let first_rows: HashMap<usize, Vec<f32>> =
                logits.iter().enumerate().map(|(r, row)| (r, row.iter().map(|&x| x as f32).collect())).collect();
            let pairs: Vec<(u32, u32)> = list::<Vec<u32>>(&case["pairs"]).iter().map(|p| (p[0], p[1])).collect();
            let map = VocabMap::from_pairs(vt, vs, &pairs);
            let (terms, gather) = build_terms(&batches[0], &row_of, vs, &first_rows, k, &map, mode);
            let lse: Vec<f64> = logits.iter().map(|row| row.iter().map(|x| x.exp()).sum::<f64>().ln()).collect();
            let g: Vec<f64> = gather.entries.iter().map(|&(r, t)| logits[r][t as usize] - lse[r]).collect();
            let value = loss_and_grad(&g, &terms, &weights);
            let want = case["loss"].as_f64().unwrap();
            assert!((value.loss - want).abs() < 1e-5, "{mode:?}: loss {} vs reference {want}", value.loss);
            // d loss / d logits[r][v] = Σ over entries (r, t) of c · (1[v = t] − softmax[r][v]).
            let mut grad = vec![vec![0f64; vs]; ns];
            for (&(r, t), c) in gather.entries.iter().zip(&value.grad) {
                for v in 0..vs {
                    grad[r][v] += c * (f64::from(u8::from(v == t as usize)) - (logits[r][v] - lse[r]).exp());
                }
            }
            let want: Vec<Vec<f64>> = list(&case["grad"]);
            for r in 0..ns {
                for v in 0..vs {
                    let (a, b) = (grad[r][v], want[r][v]);
                    assert!((a - b).abs() < 1e-5, "{mode:?}: d/dlogits[{r}][{v}] = {a}, reference {b}");
                }
            }
        }
    }

    #[test]
    fn largest_entries_skip_the_excluded_ones() {
        let row = [0.1, 2.0, -1.0, 3.0, 0.5];
        assert_eq!(largest_excluding(&row, 2, &[3]), vec![1, 4]);
        assert_eq!(largest_excluding(&row, 3, &[]), vec![3, 1, 4]);
        assert_eq!(largest_excluding(&row, 0, &[1]), Vec::<u32>::new());
    }
}
