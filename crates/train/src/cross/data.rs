//! A teacher-signal dataset as a student with another tokenizer reads it: every sequence's
//! prompt rendered for the student, the teacher's completion re-tokenised by the student and its
//! tokens lined up with the teacher's by bytes, then packed into rows like same-tokenizer data.

use distill_models::{ModelText, TextTokenizer};
use distill_store::{Dataset, RenderSettings, Sequence, Source};
use distill_teacher::prompts::{read_prompt_file, render, Prompt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cross::{retokenize, Group, VocabMap};
use crate::error::{Error, Result};

/// The floor of a teacher log-probability read for a span's scale.
const MIN_LOGPROB: f64 = -50.0;

/// One teacher sequence as the student reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossSequence {
    /// Student prompt then completion ids (T).
    pub token_ids: Vec<u32>,
    pub prompt_len: usize,
    /// Completion bytes (the end-of-turn token spans none).
    pub bytes: usize,
    /// Student completion tokens that are text; a last one past them is the end of turn.
    pub text_tokens: usize,
    /// Aligned groups, over completion token indices of each side.
    pub groups: Vec<Group>,
    /// The teacher's completion ids and, per token, its top-K (ids, log-probs: (Tc, K)) and tail.
    pub teacher_ids: Vec<u32>,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
    pub tail_logprobs: Vec<f32>,
}

impl CrossSequence {
    pub fn completion_len(&self) -> usize {
        self.token_ids.len() - self.prompt_len
    }

    /// The teacher's log-probability of its own completion token `j` (its tail, an upper bound,
    /// where a sampled token fell outside the stored top-K; never below `MIN_LOGPROB`, so a
    /// span's scale stays finite).
    pub fn teacher_own_logprob(&self, j: usize, k: usize) -> f64 {
        let row = j * k..(j + 1) * k;
        let found = self.topk_ids[row.clone()].iter().position(|&id| id == self.teacher_ids[j]);
        let lp = match found {
            Some(r) => self.topk_logprobs[row.start + r] as f64,
            None => self.tail_logprobs[j] as f64,
        };
        lp.max(MIN_LOGPROB)
    }

    /// Cut to rows of `seq_len` tokens: only groups wholly inside the row are kept.
    pub(crate) fn truncate(mut self, seq_len: usize) -> Option<Self> {
        if self.token_ids.len() <= seq_len {
            return Some(self);
        }
        let room = seq_len.checked_sub(self.prompt_len + 1)? + 1;
        self.groups.retain(|g| g.student.end <= room);
        let kept = self.groups.last()?.student.end;
        self.token_ids.truncate(self.prompt_len + kept);
        self.text_tokens = self.text_tokens.min(kept);
        Some(self)
    }
}

/// What [`convert`] made of a dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    pub sequences: Vec<CrossSequence>,
    /// Sequences whose re-tokenised text did not come back byte for byte (skipped).
    pub skipped: usize,
}

/// The student's reading of every sequence of `dataset`, whose teacher tokenizer is `teacher`
/// (from [`teacher_tokenizer`]).
pub fn convert(
    dataset: &Dataset,
    teacher: &TextTokenizer,
    student: &ModelText,
    map: &mut VocabMap,
    seq_len: usize,
) -> Result<Converted> {
    let source = Source::of(dataset.dir());
    let settings = source.render_settings()?;
    let records = read_prompt_file(&source.prompts).map_err(|e| Error::Config(e.to_string()))?;
    let student_end = student.tokenizer.eos_id().or(student.stop_ids.first().copied());
    let k = dataset.manifest().spec.k;
    let mut out = Converted::default();
    for seq in dataset.sequences() {
        let seq = seq?;
        let record = records.get(seq.prompt_index as usize).ok_or_else(|| {
            Error::Config(format!(
                "{}: sequence {} names prompt {} of {}, which holds {}",
                dataset.dir().display(),
                seq.prompt_id,
                seq.prompt_index,
                source.prompts.display(),
                records.len()
            ))
        })?;
        let prompt = student_prompt(student, &record.prompt, &settings)?;
        match read_sequence(&seq, k, teacher, &student.tokenizer, student_end, prompt, map) {
            Some(s) => match s.truncate(seq_len) {
                Some(s) if !s.groups.is_empty() || s.text_tokens > 0 => out.sequences.push(s),
                _ => out.skipped += 1,
            },
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// The teacher's tokenizer a dataset keeps in `source/` (refused when it is not the one the
/// manifest names).
pub fn teacher_tokenizer(dataset: &Dataset) -> Result<TextTokenizer> {
    let path = Source::of(dataset.dir()).tokenizer;
    if !path.is_file() {
        return Err(Error::Config(format!(
            "{} keeps no copy of its teacher's tokenizer and prompts ({} is missing), which a student with another tokenizer needs\nHINT: run the same `distill generate` again into this dataset: it adds them without redoing any shard",
            dataset.dir().display(),
            path.display()
        )));
    }
    let tokenizer = TextTokenizer::from_file(&path).map_err(|e| Error::Config(e.to_string()))?;
    let spec = &dataset.manifest().spec;
    if tokenizer.fingerprint() != spec.tokenizer_hash {
        return Err(Error::Config(format!(
            "{} is not the tokenizer {} was made with\nHINT: run the same `distill generate` again into this dataset to rewrite it",
            path.display(),
            dataset.dir().display()
        )));
    }
    Ok(tokenizer)
}

fn student_prompt(student: &ModelText, prompt: &Prompt, settings: &RenderSettings) -> Result<Vec<u32>> {
    let chat = settings.chat && student.chat_template.is_some();
    if settings.chat && !chat && matches!(prompt, Prompt::Chat(_)) {
        return Err(Error::Config(format!(
            "the student ({}) has no chat template, but the dataset's prompts are conversations\nHINT: use a student with a chat template, or make the dataset from plain-text prompts",
            student.source
        )));
    }
    let text = render(student.chat_template.as_ref(), &student.source, prompt, chat, settings.system.as_deref())
        .map_err(|e| Error::Config(e.to_string()))?;
    student.tokenizer.encode(&text, true).map_err(|e| Error::Config(e.to_string()))
}

/// One teacher-space sequence re-tokenised and aligned, with `prompt` (the student's rendering)
/// in front; `None` when the student's tokens do not spell the teacher's bytes.
pub(crate) fn read_sequence(
    seq: &Sequence,
    k: usize,
    teacher: &TextTokenizer,
    student: &TextTokenizer,
    student_end: Option<u32>,
    prompt: Vec<u32>,
    map: &mut VocabMap,
) -> Option<CrossSequence> {
    let completion = &seq.token_ids[seq.prompt_len as usize..];
    let r = retokenize(teacher, completion, student)?;
    let (mut s_ids, mut groups, mut text_len) = (r.target_ids, r.groups, r.source_ids.len());
    let text_tokens = s_ids.len();
    if let (Some(t_end), Some(s_end)) = (r.end, student_end) {
        map.pair(t_end, s_end);
        groups.push(Group { student: s_ids.len()..s_ids.len() + 1, teacher: text_len..text_len + 1 });
        s_ids.push(s_end);
        text_len += 1;
    }
    let prompt_len = prompt.len();
    Some(CrossSequence {
        token_ids: prompt.into_iter().chain(s_ids).collect(),
        prompt_len,
        bytes: r.bytes,
        text_tokens,
        groups,
        teacher_ids: completion[..text_len].to_vec(),
        topk_ids: seq.topk_ids[..text_len * k].to_vec(),
        topk_logprobs: seq.topk_logprobs[..text_len * k].to_vec(),
        tail_logprobs: seq.tail_logprobs[..text_len].to_vec(),
    })
}

/// A packed batch of cross-tokenizer sequences: rows of `seq_len` student tokens and where each
/// sequence sits.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossBatch<'a> {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub segment_ids: Vec<u32>,
    /// (sequence, flat offset of its first token in the batch).
    pub placed: Vec<(&'a CrossSequence, usize)>,
}

/// Batches over converted sequences, in an order shuffled per epoch with `seed + epoch` (the
/// epoch's order depends on nothing else, so a resumed run sees the same batches).
pub struct CrossStream<'a> {
    sequences: &'a [CrossSequence],
    seq_len: usize,
    batch_size: usize,
    seed: u64,
    order: Vec<usize>,
    next: usize,
    pub epoch: u64,
    pub batches_in_epoch: u64,
}

impl<'a> CrossStream<'a> {
    pub fn new(
        sequences: &'a [CrossSequence],
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        batches_in_epoch: u64,
    ) -> Result<Self> {
        if sequences.is_empty() {
            return Err(Error::Config("no sequence of the dataset could be read by the student's tokenizer".into()));
        }
        let mut stream =
            Self { sequences, seq_len, batch_size, seed, order: Vec::new(), next: 0, epoch, batches_in_epoch: 0 };
        stream.shuffle();
        for _ in 0..batches_in_epoch {
            stream.next_batch();
        }
        Ok(stream)
    }

    /// A fixed pass (seed 0, no shuffling): what evaluation reads.
    pub fn batches_in_order(sequences: &'a [CrossSequence], seq_len: usize, batch_size: usize) -> Vec<CrossBatch<'a>> {
        let order: Vec<usize> = (0..sequences.len()).collect();
        let mut next = 0;
        let mut out = Vec::new();
        while next < order.len() {
            out.push(pack(sequences, &order, &mut next, seq_len, batch_size));
        }
        out
    }

    fn shuffle(&mut self) {
        self.order = (0..self.sequences.len()).collect();
        self.order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_add(self.epoch)));
        self.next = 0;
    }

    pub fn next_batch(&mut self) -> CrossBatch<'a> {
        if self.next >= self.order.len() {
            self.epoch += 1;
            self.batches_in_epoch = 0;
            self.shuffle();
        }
        self.batches_in_epoch += 1;
        pack(self.sequences, &self.order, &mut self.next, self.seq_len, self.batch_size)
    }
}

/// Fills `batch_size` rows with the sequences `order[next..]` names, one after another in each
/// row, advancing `next`.
fn pack<'a>(
    sequences: &'a [CrossSequence],
    order: &[usize],
    next: &mut usize,
    seq_len: usize,
    batch_size: usize,
) -> CrossBatch<'a> {
    let n = batch_size * seq_len;
    let mut batch = CrossBatch {
        batch_size,
        seq_len,
        input_ids: vec![0; n],
        position_ids: vec![0; n],
        segment_ids: vec![0; n],
        placed: Vec::new(),
    };
    for row in 0..batch_size {
        let (mut used, mut segment) = (0, 0);
        while let Some(&i) = order.get(*next) {
            let seq = &sequences[i];
            let len = seq.token_ids.len();
            if used + len > seq_len {
                break;
            }
            segment += 1;
            let start = row * seq_len + used;
            for (p, &id) in seq.token_ids.iter().enumerate() {
                batch.input_ids[start + p] = id;
                batch.position_ids[start + p] = p as u32;
                batch.segment_ids[start + p] = segment;
            }
            batch.placed.push((seq, start));
            used += len;
            *next += 1;
        }
    }
    batch
}

/// A run's cross-tokenizer data: the converted training and held-out sequences and the
/// vocabulary map between teacher and student.
pub struct CrossData {
    pub map: VocabMap,
    /// The teacher's top-K per token.
    pub k: usize,
    pub train: Vec<CrossSequence>,
    pub eval: Vec<CrossSequence>,
    /// Sequences the student's tokenizer could not read back byte for byte (skipped).
    pub skipped: usize,
}

impl CrossData {
    /// For pure on-policy or online training: no stored sequences, the map from `teacher`.
    pub fn without_dataset(teacher: &dyn distill_teacher::Teacher, student: &ModelText, k: usize) -> Self {
        let map = VocabMap::new(teacher.tokenizer(), &student.tokenizer);
        Self { map, k, train: Vec::new(), eval: Vec::new(), skipped: 0 }
    }

    pub fn open(dataset: &Dataset, eval: Option<&Dataset>, student: &ModelText, seq_len: usize) -> Result<Self> {
        let teacher = teacher_tokenizer(dataset)?;
        let mut map = VocabMap::new(&teacher, &student.tokenizer);
        let train = convert(dataset, &teacher, student, &mut map, seq_len)?;
        let eval = match eval {
            Some(e) if e.manifest().spec.tokenizer_hash != dataset.manifest().spec.tokenizer_hash => {
                return Err(Error::Config(format!(
                    "eval_dataset {} was made with another teacher tokenizer than dataset {}",
                    e.dir().display(),
                    dataset.dir().display()
                )))
            }
            Some(e) => convert(e, &teacher, student, &mut map, seq_len)?,
            None => Converted::default(),
        };
        Ok(Self {
            map,
            k: dataset.manifest().spec.k,
            train: train.sequences,
            eval: eval.sequences,
            skipped: train.skipped + eval.skipped,
        })
    }
}
