//! Lining two tokenizations of one text up by bytes, for a teacher and a student that do not
//! share a vocabulary: which tokens both vocabularies spell the same way ([`VocabMap`]), where
//! each token's bytes end, the shortest spans that close on a boundary of both ([`Group`]), and
//! one token sequence's text re-tokenised by the other tokenizer ([`retokenize`]).

use std::collections::HashMap;
use std::ops::Range;

use crate::TextTokenizer;

/// Where each token's bytes end in the concatenation of `ids`' bytes.
pub fn byte_ends(tokenizer: &TextTokenizer, ids: &[u32]) -> Vec<usize> {
    let mut end = 0;
    ids.iter()
        .map(|&id| {
            end += tokenizer.token_bytes(id).len();
            end
        })
        .collect()
}

/// One aligned span: student tokens `student` and teacher tokens `teacher` cover the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub student: Range<usize>,
    pub teacher: Range<usize>,
}

/// Splits two tokenizations of the same bytes into the shortest spans that start and end on a
/// boundary of both: walks both lists of token ends, advancing the side that ends first, and
/// closes a group where both end at the same byte. Tokens left over after the last common
/// boundary form one last group when both sides have some.
pub fn align_groups(student_ends: &[usize], teacher_ends: &[usize]) -> Vec<Group> {
    let mut groups = Vec::new();
    let (mut s, mut t, mut s_start, mut t_start) = (0, 0, 0, 0);
    while s < student_ends.len() && t < teacher_ends.len() {
        match student_ends[s].cmp(&teacher_ends[t]) {
            std::cmp::Ordering::Less => s += 1,
            std::cmp::Ordering::Greater => t += 1,
            std::cmp::Ordering::Equal => {
                s += 1;
                t += 1;
                groups.push(Group { student: s_start..s, teacher: t_start..t });
                (s_start, t_start) = (s, t);
            }
        }
    }
    if s_start < student_ends.len() && t_start < teacher_ends.len() {
        groups.push(Group { student: s_start..student_ends.len(), teacher: t_start..teacher_ends.len() });
    }
    groups
}

/// Teacher id → student id for the tokens both vocabularies hold.
#[derive(Debug, Clone)]
pub struct VocabMap {
    /// Indexed by teacher id; `NONE` where the student has no such token.
    to_student: Vec<u32>,
    /// Teacher tokens with a student twin.
    pub shared: usize,
    pub teacher_vocab: usize,
    pub student_vocab: usize,
}

const NONE: u32 = u32::MAX;

impl VocabMap {
    pub fn new(teacher: &TextTokenizer, student: &TextTokenizer) -> Self {
        let mut by_bytes: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut by_name: HashMap<String, u32> = HashMap::new();
        for id in 0..student.vocab_size() as u32 {
            if student.is_special(id) {
                if let Some(name) = student.id_to_token(id) {
                    by_name.entry(name).or_insert(id);
                }
                continue;
            }
            let bytes = student.token_bytes(id);
            if !bytes.is_empty() {
                // The first id wins where a vocabulary spells one string twice.
                by_bytes.entry(bytes).or_insert(id);
            }
        }
        let to_student: Vec<u32> = (0..teacher.vocab_size() as u32)
            .map(|id| {
                let twin = if teacher.is_special(id) {
                    teacher.id_to_token(id).and_then(|name| by_name.get(&name).copied())
                } else {
                    by_bytes.get(&teacher.token_bytes(id)).copied()
                };
                twin.unwrap_or(NONE)
            })
            .collect();
        let shared = to_student.iter().filter(|&&s| s != NONE).count();
        Self { to_student, shared, teacher_vocab: teacher.vocab_size(), student_vocab: student.vocab_size() }
    }

    /// A map from explicit (teacher id, student id) pairs (for tests and hand-made maps).
    pub fn from_pairs(teacher_vocab: usize, student_vocab: usize, pairs: &[(u32, u32)]) -> Self {
        let mut map = Self { to_student: vec![NONE; teacher_vocab], shared: 0, teacher_vocab, student_vocab };
        for &(t, s) in pairs {
            map.pair(t, s);
        }
        map
    }

    /// The student's twin of teacher token `id`.
    pub fn student_id(&self, id: u32) -> Option<u32> {
        self.to_student.get(id as usize).copied().filter(|&s| s != NONE)
    }

    /// Makes teacher token `teacher` (its end of turn, say) stand for student token `student`.
    pub fn pair(&mut self, teacher: u32, student: u32) {
        if let Some(slot) = self.to_student.get_mut(teacher as usize) {
            if *slot == NONE {
                self.shared += 1;
            }
            *slot = student;
        }
    }

    /// Which student ids (of `student_rows`, its logit rows) are some teacher token's twin.
    pub fn twins_in_student(&self, student_rows: usize) -> Vec<bool> {
        let mut twins = vec![false; student_rows];
        for &s in self.to_student.iter().filter(|&&s| s != NONE) {
            if let Some(slot) = twins.get_mut(s as usize) {
                *slot = true;
            }
        }
        twins
    }

    /// Share of the teacher's vocabulary the student has.
    pub fn overlap(&self) -> f64 {
        self.shared as f64 / self.teacher_vocab.max(1) as f64
    }
}

/// A sequence's text in both tokenizations, lined up.
#[derive(Debug, Clone, PartialEq)]
pub struct Retokenized {
    /// The source tokens that spell the text (a trailing special token and a character cut by
    /// a length limit left out).
    pub source_ids: Vec<u32>,
    /// The same text in the other tokenizer (no special tokens added).
    pub target_ids: Vec<u32>,
    /// Bytes of the text.
    pub bytes: usize,
    /// Spans closing on a boundary of both (`student` = target, `teacher` = source).
    pub groups: Vec<Group>,
    /// The special token (an end of turn) the source ended with, if it did and the text was
    /// not cut inside a character.
    pub end: Option<u32>,
}

/// Re-tokenises the text `ids` spell in `source` with `target`: `None` when `target`'s tokens do
/// not spell the same bytes (a normaliser that rewrites text, say).
pub fn retokenize(source: &TextTokenizer, ids: &[u32], target: &TextTokenizer) -> Option<Retokenized> {
    let mut text_len = ids.len();
    let mut end = match ids.last() {
        Some(&id) if source.is_special(id) => {
            text_len -= 1;
            Some(id)
        }
        _ => None,
    };
    let mut bytes: Vec<u8> = ids[..text_len].iter().flat_map(|&id| source.token_bytes(id)).collect();
    let mut source_ends = byte_ends(source, &ids[..text_len]);
    if let Err(e) = std::str::from_utf8(&bytes) {
        // A text cut by a token limit inside a character: keep the whole characters.
        let valid = e.valid_up_to();
        bytes.truncate(valid);
        source_ends.retain(|&e| e <= valid);
        text_len = source_ends.len();
        end = None;
    }
    let text = std::str::from_utf8(&bytes).ok()?;
    let target_ids = target.encode(text, false).ok()?;
    let mut target_ends = byte_ends(target, &target_ids);
    if target_ends.last().copied().unwrap_or(0) == bytes.len() + 1 && target.adds_space_prefix() {
        // SentencePiece's dummy prefix: the first piece's space is not in the text.
        target_ends.iter_mut().for_each(|e| *e = e.saturating_sub(1));
    }
    if target_ends.last().copied().unwrap_or(0) != bytes.len()
        || source_ends.last().copied().unwrap_or(0) != bytes.len()
    {
        return None;
    }
    let groups = align_groups(&target_ends, &source_ends);
    Some(Retokenized { source_ids: ids[..text_len].to_vec(), target_ids, bytes: bytes.len(), groups, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_close_where_both_tokenizations_end() {
        // "hello world": student "hel|lo| world", teacher "hello| wor|ld".
        let s = [3, 5, 11];
        let t = [5, 9, 11];
        let g = align_groups(&s, &t);
        assert_eq!(g, vec![Group { student: 0..2, teacher: 0..1 }, Group { student: 2..3, teacher: 1..3 }]);
    }

    #[test]
    fn leftover_tokens_after_the_last_common_boundary_form_one_group() {
        // The student's text stops short of the teacher's last byte.
        let g = align_groups(&[2, 4], &[2, 5]);
        assert_eq!(g, vec![Group { student: 0..1, teacher: 0..1 }, Group { student: 1..2, teacher: 1..2 }]);
        assert_eq!(align_groups(&[], &[1]), vec![]);
    }
}
