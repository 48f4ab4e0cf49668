//! Which teacher tokens the student has too: ordinary tokens whose byte strings are identical,
//! special tokens whose names are (`<|im_end|>` in both ChatML families).

use std::collections::HashMap;

use distill_models::TextTokenizer;

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

    /// Share of the teacher's vocabulary the student has.
    pub fn overlap(&self) -> f64 {
        self.shared as f64 / self.teacher_vocab.max(1) as f64
    }
}
