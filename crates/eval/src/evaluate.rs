//! What a student kept of its teacher, on prompt sets: both models decode greedily; on the
//! teacher's own text both score every position over the full vocabulary (KL both ways, top-1
//! agreement, perplexity), and the same on the student's own text; ROUGE-L of the student's output
//! against the teacher's; exact match against `reference` answers where the prompts have them.
//! Cost: parameters, file size and, through a [`Measure`] the caller supplies, peak memory and
//! prefill/decode speed. Retention is the student's figure as % of the teacher's.
//!
//! A student with another tokenizer is compared where the two tokenizations line up (see
//! [`TokenStats::add_aligned`]); its perplexity retention is then per byte of the text, the one
//! figure both tokenizations share.

use std::path::Path;

use candle_core::{Device, Tensor};
use distill_models::retokenize::{retokenize, VocabMap};
use distill_models::{generate, LoadedModel, SamplingParams};
use distill_teacher::prompts::render;
use distill_teacher::PromptRecord;
use serde::{Deserialize, Serialize};

use crate::speed::Speed;
use crate::text::{exact_match, repetition, rouge_l, Repetition};
use crate::tokens::{TokenStats, TokenSummary};

pub use crate::error::{Error, Result};

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Tokens each model generates per prompt (greedy).
    pub max_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { max_tokens: 64, batch_size: 8 }
    }
}

/// A set of prompts to evaluate on, by name (`in_domain`, `out_of_domain`).
pub struct PromptSet<'a> {
    pub name: &'a str,
    pub records: &'a [PromptRecord],
}

/// Peak memory and speed of one model, named as it was loaded.
pub type Measure<'a> = &'a dyn Fn(&str) -> Result<Measured>;

/// What a [`Measure`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub speed: Speed,
    pub peak_rss_bytes: Option<u64>,
}

/// The whole evaluation, as `distill eval -o` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub in_domain: SetReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_domain: Option<SetReport>,
    pub cost: CostReport,
    pub teacher: String,
    pub student: String,
    /// Executed pass@1 on code tasks, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::code::CodeReport>,
}

/// One prompt set's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    pub prompts: usize,
    /// The student's vocabulary is not the teacher's: token figures are on aligned positions
    /// and over shared tokens, perplexity retention is per byte.
    #[serde(default)]
    pub cross_tokenizer: bool,
    /// On the teacher's text.
    pub tokens: TokenSummary,
    /// On the student's own greedy text: where on-policy training aims.
    pub tokens_on_student_text: TokenSummary,
    /// Mean ROUGE-L F of the student's output against the teacher's.
    pub rouge_l: f64,
    /// How repetitive each model's greedy outputs are (a student that loops shows here).
    #[serde(default)]
    pub repetition: RepetitionPair,
    pub exact_match: Option<ExactMatch>,
    pub retention: Retention,
    /// The first few prompts with both outputs.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RepetitionPair {
    pub teacher: Repetition,
    pub student: Repetition,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExactMatch {
    pub teacher: f64,
    pub student: f64,
    /// Prompts with a `reference`.
    pub with_reference: usize,
}

/// The student's figures as % of the teacher's (`None` where the teacher's is zero or absent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub top1_agreement_pct: f64,
    pub perplexity_pct: Option<f64>,
    pub rouge_l_pct: f64,
    pub exact_match_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub teacher: String,
    pub student: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub teacher: ModelCost,
    pub student: ModelCost,
    pub student_vs_teacher: CostRatios,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCost {
    pub parameters: usize,
    pub file_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<Speed>,
}

/// Student ÷ teacher.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostRatios {
    pub parameters: Option<f64>,
    pub file_bytes: Option<f64>,
    pub peak_rss: Option<f64>,
    pub prefill_speedup: Option<f64>,
    pub decode_speedup: Option<f64>,
}

/// Compares `student` with `teacher` on each set (the first is the in-domain one), and their cost;
/// without `measure`, memory and speed are left out. `progress(set, done, total)` hears each
/// set's progress.
pub fn evaluate(
    teacher: &LoadedModel,
    student: &LoadedModel,
    sets: &[PromptSet<'_>],
    opts: &EvalOptions,
    measure: Option<Measure<'_>>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<EvalReport> {
    if opts.batch_size == 0 || opts.max_tokens == 0 {
        return Err(Error::Input("batch_size and max_tokens must be at least 1".into()));
    }
    let cross = (teacher.tokenizer.fingerprint() != student.tokenizer.fingerprint()
        || teacher.model.config().vocab_size != student.model.config().vocab_size)
        .then(|| {
            let map = VocabMap::new(&teacher.tokenizer, &student.tokenizer);
            let twins = map.twins_in_student(student.model.config().vocab_size);
            Vocabularies { map, twins }
        });
    if cross.as_ref().is_some_and(|v| v.map.shared == 0) {
        return Err(Error::Input(
            "the student's vocabulary shares no token with the teacher's, so no position can be compared\nHINT: evaluate a student distilled from this teacher".into(),
        ));
    }
    let mut reports = Vec::with_capacity(sets.len());
    for set in sets {
        reports.push(evaluate_set(teacher, student, cross.as_ref(), set, opts, progress)?);
    }
    let mut reports = reports.into_iter();
    let in_domain = reports.next().ok_or_else(|| Error::Input("no prompt set to evaluate on".into()))?;
    Ok(EvalReport {
        in_domain,
        out_of_domain: reports.next(),
        cost: cost(teacher, student, measure)?,
        teacher: teacher.source.clone(),
        student: student.source.clone(),
        code: None,
    })
}

/// Where the two vocabularies differ: the tokens both spell the same way.
struct Vocabularies {
    map: VocabMap,
    twins: Vec<bool>,
}

fn greedy_all(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    opts: &EvalOptions,
    tick: &mut dyn FnMut(usize),
) -> Result<Vec<(Vec<u32>, String)>> {
    let params = SamplingParams { max_tokens: opts.max_tokens, ..SamplingParams::default() };
    let mut out = Vec::new();
    for batch in prompts.chunks(opts.batch_size) {
        for c in generate(&model.model, &model.tokenizer, batch, &params, &model.stop_ids, |_, _| {})? {
            out.push((c.token_ids, c.text));
        }
        tick(batch.len());
    }
    Ok(out)
}

/// Logits (T−1−from rows predicting tokens from+1..T) of `ids` under `model`, flat.
fn position_logits(model: &LoadedModel, ids: &[u32], from: usize) -> Result<Vec<f32>> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    let hidden = model.model.forward_hidden(&input)?.squeeze(0)?; // (T, C)
                                                                  // The head only where a completion token is predicted: most positions are the prompt's.
    let logits = model.model.logits(&hidden.narrow(0, from, ids.len() - 1 - from)?)?;
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

fn evaluate_set(
    teacher: &LoadedModel,
    student: &LoadedModel,
    cross: Option<&Vocabularies>,
    set: &PromptSet<'_>,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<SetReport> {
    let records = set.records;
    let encode = |m: &LoadedModel| -> Result<Vec<Vec<u32>>> {
        records
            .iter()
            .map(|r| {
                let text = render(m.chat_template.as_ref(), &m.source, &r.prompt, m.chat_template.is_some(), None)?;
                Ok(m.tokenizer.encode(&text, true)?)
            })
            .collect()
    };
    let (teacher_prompts, student_prompts) = (encode(teacher)?, encode(student)?);
    // Both decode, then the teacher's text is scored: three passes over the prompts.
    let total = 3 * records.len();
    let mut done = 0;
    let mut tick = |n: usize| {
        done += n;
        progress(set.name, done, total);
    };
    let teacher_out = greedy_all(teacher, &teacher_prompts, opts, &mut tick)?;
    let student_out = greedy_all(student, &student_prompts, opts, &mut tick)?;
    let (vt, vs) = (teacher.model.config().vocab_size, student.model.config().vocab_size);
    // Token metrics on one model's text: teacher and student logits at every completion
    // position (each in its own tokenization of the text where the vocabularies differ).
    let mut on_text = |teacher_wrote: bool, count: bool| -> Result<TokenStats> {
        let (writer, reader) = if teacher_wrote { (teacher, student) } else { (student, teacher) };
        let outs = if teacher_wrote { &teacher_out } else { &student_out };
        let mut stats = TokenStats::default();
        for (i, (completion, _)) in outs.iter().enumerate() {
            if count {
                tick(1);
            }
            let (tp, sp) = (&teacher_prompts[i], &student_prompts[i]);
            let Some(v) = cross else {
                if completion.is_empty() {
                    continue;
                }
                let ids: Vec<u32> = tp.iter().chain(completion).copied().collect();
                let t = position_logits(teacher, &ids, tp.len() - 1)?;
                let s = position_logits(student, &ids, tp.len() - 1)?;
                stats.add(&t, &s, completion, vt);
                stats.bytes += text_bytes(writer, completion);
                continue;
            };
            let Some(r) = retokenize(&writer.tokenizer, completion, &reader.tokenizer) else { continue };
            if r.source_ids.is_empty() || r.target_ids.is_empty() {
                continue;
            }
            // Groups name the reader's tokens `student` and the writer's `teacher`.
            let (t_ids, s_ids, starts): (_, _, Vec<(usize, usize)>) = if teacher_wrote {
                (r.source_ids, r.target_ids, r.groups.iter().map(|g| (g.teacher.start, g.student.start)).collect())
            } else {
                (r.target_ids, r.source_ids, r.groups.iter().map(|g| (g.student.start, g.teacher.start)).collect())
            };
            let with = |p: &[u32], c: &[u32]| -> Vec<u32> { p.iter().chain(c).copied().collect() };
            let t = position_logits(teacher, &with(tp, &t_ids), tp.len() - 1)?;
            let s = position_logits(student, &with(sp, &s_ids), sp.len() - 1)?;
            stats.add_aligned((&t, vt, &t_ids), (&s, vs, &s_ids), r.bytes, &starts, &v.map, &v.twins);
        }
        Ok(stats)
    };
    let tokens = on_text(true, true)?.summary();
    // The same on the student's own (greedy) text: the text it will actually produce, where
    // on-policy training aims (reverse KL is an expectation under the student).
    let tokens_on_student_text = on_text(false, false)?.summary();
    let rouge: f64 =
        teacher_out.iter().zip(&student_out).map(|((_, t), (_, s))| rouge_l(s, t)).sum::<f64>() / records.len() as f64;
    let with_ref: Vec<(usize, &String)> =
        records.iter().enumerate().filter_map(|(i, r)| r.reference.as_ref().map(|x| (i, x))).collect();
    let exact = (!with_ref.is_empty()).then(|| {
        let rate = |outs: &[(Vec<u32>, String)]| {
            with_ref.iter().filter(|(i, r)| exact_match(&outs[*i].1, r)).count() as f64 / with_ref.len() as f64
        };
        ExactMatch { teacher: rate(&teacher_out), student: rate(&student_out), with_reference: with_ref.len() }
    });
    let pct = |a: f64, b: f64| if b > 0.0 { Some(100.0 * a / b) } else { None };
    let samples = records
        .iter()
        .zip(teacher_out.iter().zip(&student_out))
        .take(4)
        .map(|(r, ((_, t), (_, s)))| Sample { prompt: r.display_text(), teacher: t.clone(), student: s.clone() })
        .collect();
    Ok(SetReport {
        prompts: records.len(),
        cross_tokenizer: cross.is_some(),
        tokens,
        tokens_on_student_text,
        rouge_l: rouge,
        repetition: RepetitionPair {
            teacher: repetition(&teacher_out.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>()),
            student: repetition(&student_out.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>()),
        },
        exact_match: exact,
        retention: Retention {
            top1_agreement_pct: 100.0 * tokens.top1_agreement,
            perplexity_pct: match cross {
                None => pct(tokens.teacher_perplexity, tokens.student_perplexity),
                Some(_) => pct(tokens.teacher_nll_per_byte.exp(), tokens.student_nll_per_byte.exp()),
            },
            rouge_l_pct: 100.0 * rouge,
            exact_match_pct: exact.and_then(|e| pct(e.student, e.teacher)),
        },
        samples,
    })
}

/// Bytes of the text `ids` spell (special tokens, an end of turn say, spell none).
fn text_bytes(model: &LoadedModel, ids: &[u32]) -> usize {
    ids.iter().filter(|&&id| !model.tokenizer.is_special(id)).map(|&id| model.tokenizer.token_bytes(id).len()).sum()
}

/// Bytes on disk of a model given as a file or a directory (its weight files).
pub fn model_bytes(source: &str) -> Option<u64> {
    let path = Path::new(source);
    if path.is_file() {
        return path.metadata().ok().map(|m| m.len());
    }
    let entries = std::fs::read_dir(path).ok()?;
    Some(
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors" || x == "gguf"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .sum(),
    )
}

/// Speed and peak memory of the model in this process: 128 prompt tokens and 32 decoded (less
/// when the context is shorter), best of two. Run it in a process of its own for a memory figure
/// that is the model's alone.
pub fn measure_here(model: &LoadedModel) -> Result<Measured> {
    let ctx = model.model.config().max_position_embeddings;
    let prompt = 128.min(ctx / 2).max(1);
    let speed = crate::speed::measure(&model.model, prompt, 32.min(ctx - prompt - 1), 2)?;
    Ok(Measured { speed, peak_rss_bytes: crate::speed::peak_rss_bytes() })
}

fn cost(teacher: &LoadedModel, student: &LoadedModel, measure: Option<Measure<'_>>) -> Result<CostReport> {
    let side = |m: &LoadedModel| -> Result<ModelCost> {
        let measured = measure.map(|f| f(&m.source)).transpose()?;
        Ok(ModelCost {
            parameters: m.model.config().num_parameters(),
            file_bytes: model_bytes(&m.source),
            peak_rss_bytes: measured.and_then(|x| x.peak_rss_bytes),
            speed: measured.map(|x| x.speed),
        })
    };
    let (t, s) = (side(teacher)?, side(student)?);
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let speed = |c: &ModelCost, f: fn(&Speed) -> f64| c.speed.as_ref().map(f);
    let student_vs_teacher = CostRatios {
        parameters: ratio(Some(s.parameters as f64), Some(t.parameters as f64)),
        file_bytes: ratio(s.file_bytes.map(|b| b as f64), t.file_bytes.map(|b| b as f64)),
        peak_rss: ratio(s.peak_rss_bytes.map(|b| b as f64), t.peak_rss_bytes.map(|b| b as f64)),
        prefill_speedup: ratio(speed(&s, |x| x.prefill_tok_s), speed(&t, |x| x.prefill_tok_s)),
        decode_speedup: ratio(speed(&s, |x| x.decode_tok_s), speed(&t, |x| x.decode_tok_s)),
    };
    Ok(CostReport { teacher: t, student: s, student_vs_teacher })
}
