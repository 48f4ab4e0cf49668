//! What a student kept of its teacher, on prompt sets: both models decode greedily; on the
//! teacher's own text both score every position over the full vocabulary (KL both ways, top-1
//! agreement, perplexity), and the same on the student's own text; ROUGE-L of the student's output
//! against the teacher's; exact match against `reference` answers where the prompts have them.
//! Cost: parameters, file size and, through a [`Measure`] the caller supplies, peak memory and
//! prefill/decode speed. Retention is the student's figure as % of the teacher's.

use std::path::Path;

use candle_core::{Device, Tensor};
use distill_models::{generate, LoadedModel, SamplingParams};
use distill_teacher::prompts::render;
use distill_teacher::PromptRecord;
use serde::{Deserialize, Serialize};

use crate::speed::Speed;
use crate::text::{exact_match, rouge_l};
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
}

/// One prompt set's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    pub prompts: usize,
    /// On the teacher's text.
    pub tokens: TokenSummary,
    /// On the student's own greedy text: where on-policy training aims.
    pub tokens_on_student_text: TokenSummary,
    /// Mean ROUGE-L F of the student's output against the teacher's.
    pub rouge_l: f64,
    pub exact_match: Option<ExactMatch>,
    pub retention: Retention,
    /// The first few prompts with both outputs.
    pub samples: Vec<Sample>,
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
    if teacher.tokenizer.fingerprint() != student.tokenizer.fingerprint()
        || teacher.model.config().vocab_size != student.model.config().vocab_size
    {
        return Err(Error::Input(format!(
            "the student's tokenizer or vocabulary ({} rows) differs from the teacher's ({} rows): token-level comparison needs the same ids\nHINT: evaluate a student distilled from this teacher",
            student.model.config().vocab_size,
            teacher.model.config().vocab_size
        )));
    }
    let mut reports = Vec::with_capacity(sets.len());
    for set in sets {
        reports.push(evaluate_set(teacher, student, set, opts, progress)?);
    }
    let mut reports = reports.into_iter();
    let in_domain = reports.next().ok_or_else(|| Error::Input("no prompt set to evaluate on".into()))?;
    Ok(EvalReport {
        in_domain,
        out_of_domain: reports.next(),
        cost: cost(teacher, student, measure)?,
        teacher: teacher.source.clone(),
        student: student.source.clone(),
    })
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
    let logits = model.model.forward(&input)?.squeeze(0)?; // (T, V)
    Ok(logits.narrow(0, from, ids.len() - 1 - from)?.flatten_all()?.to_vec1::<f32>()?)
}

fn evaluate_set(
    teacher: &LoadedModel,
    student: &LoadedModel,
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
    let vocab = teacher.model.config().vocab_size;
    // Token metrics on a text: teacher and student logits at every completion position.
    let mut on_text = |prompts: &[Vec<u32>], outs: &[(Vec<u32>, String)], count: bool| -> Result<TokenStats> {
        let mut stats = TokenStats::default();
        for (prompt, (completion, _)) in prompts.iter().zip(outs) {
            if count {
                tick(1);
            }
            if completion.is_empty() {
                continue;
            }
            let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
            let from = prompt.len() - 1;
            let t = position_logits(teacher, &ids, from)?;
            let s = position_logits(student, &ids, from)?;
            stats.add(&t, &s, completion, vocab);
        }
        Ok(stats)
    };
    let tokens = on_text(&teacher_prompts, &teacher_out, true)?.summary();
    // The same on the student's own (greedy) text: the text it will actually produce, where
    // on-policy training aims (reverse KL is an expectation under the student).
    let tokens_on_student_text = on_text(&student_prompts, &student_out, false)?.summary();
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
        tokens,
        tokens_on_student_text,
        rouge_l: rouge,
        exact_match: exact,
        retention: Retention {
            top1_agreement_pct: 100.0 * tokens.top1_agreement,
            perplexity_pct: pct(tokens.teacher_perplexity, tokens.student_perplexity),
            rouge_l_pct: 100.0 * rouge,
            exact_match_pct: exact.and_then(|e| pct(e.student, e.teacher)),
        },
        samples,
    })
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
