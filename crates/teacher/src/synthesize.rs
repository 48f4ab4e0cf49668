//! The teacher writes the prompts too (Self-Instruct): from a handful of seed prompts, a few-shot
//! list (a few seeds drawn at random, each under a `### Request N` header) is continued by the
//! teacher, sampled; each continuation up to the next header is one new prompt,
//! kept only if it is of a sensible length, written like the seeds (the same share of letters in
//! the seeds' script) and not a near-duplicate — by MinHash over character 5-grams — of a seed
//! or of a prompt already kept. Kept prompts are appended to a prompt file as they come, so a
//! killed run resumes where it stopped.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use distill_models::{generate, LoadedModel, SamplingParams};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::{Error, Result};

/// How prompts are synthesised; the defaults are what a user would want.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthesizeOptions {
    /// Prompts to end with in the output file (those already there count).
    pub count: usize,
    /// Seed examples shown per attempt.
    pub shots: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// Tokens the teacher writes per attempt.
    pub max_tokens: usize,
    /// Kept prompts are between these many characters long (by default, at most three times
    /// the longest seed and never less than 200: a teacher that rambles on is not writing a
    /// prompt like the seeds).
    pub min_chars: usize,
    pub max_chars: Option<usize>,
    /// Estimated Jaccard similarity (character 5-grams) at or above which a prompt is a
    /// near-duplicate.
    pub max_similarity: f64,
    /// Attempts decoded together.
    pub batch_size: usize,
    /// Attempts per prompt asked for, at most, before giving up.
    pub max_attempts_per_prompt: usize,
    pub seed: u64,
}

impl Default for SynthesizeOptions {
    fn default() -> Self {
        Self {
            count: 100,
            shots: 3,
            temperature: 1.0,
            top_p: 0.95,
            max_tokens: 96,
            min_chars: 12,
            max_chars: None,
            max_similarity: 0.5,
            batch_size: 8,
            max_attempts_per_prompt: 20,
            seed: 0,
        }
    }
}

/// Why attempts were not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rejected {
    pub too_short: usize,
    pub too_long: usize,
    pub other_language: usize,
    pub near_duplicate: usize,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Synthesized {
    /// Prompts in the file now.
    pub total: usize,
    /// Of them, found there when the run started.
    pub resumed: usize,
    pub attempts: usize,
    pub rejected: Rejected,
}

const MINHASH: usize = 64;
const SHINGLE: usize = 5;

/// A MinHash fingerprint over a text's character 5-grams (lower-cased, whitespace collapsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint([u64; MINHASH]);

impl Fingerprint {
    pub fn of(text: &str) -> Self {
        let norm: Vec<char> = text.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ").chars().collect();
        let mut sig = [u64::MAX; MINHASH];
        let grams = norm.len().saturating_sub(SHINGLE - 1).max(1);
        for start in 0..grams {
            let gram: String = norm[start..(start + SHINGLE).min(norm.len())].iter().collect();
            let h = hash(gram.as_bytes());
            for (i, m) in sig.iter_mut().enumerate() {
                *m = (*m).min(mix(h ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            }
        }
        Self(sig)
    }

    /// Share of MinHash values two fingerprints agree on: an estimate of the Jaccard similarity
    /// of their 5-gram sets.
    pub fn similarity(&self, other: &Fingerprint) -> f64 {
        self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count() as f64 / MINHASH as f64
    }
}

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a, then mixed: stable across runs and platforms.
    mix(bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)))
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Share of a text's letters that are ASCII: what tells English seeds from another script.
fn ascii_letter_share(text: &str) -> Option<f64> {
    let (mut ascii, mut all) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        all += 1;
        ascii += usize::from(c.is_ascii());
    }
    (all > 0).then(|| ascii as f64 / all as f64)
}

/// What starts each item of the few-shot list (and ends a continuation).
pub const ITEM: &str = "### Request";

/// The few-shot text the teacher continues: numbered requests under headers, the next one open.
pub fn few_shot_prompt(examples: &[&str]) -> String {
    let mut text = String::from("Requests that users sent to an assistant, each under its own header.\n\n");
    for (i, e) in examples.iter().enumerate() {
        text += &format!("{ITEM} {}\n{}\n\n", i + 1, e.trim());
    }
    text + &format!("{ITEM} {}\n", examples.len() + 1)
}

/// The new prompt in a continuation: its text up to the next header.
pub fn parse_continuation(text: &str) -> String {
    let cut = text.find("###").unwrap_or(text.len());
    text[..cut].trim().to_string()
}

/// Writes prompts synthesised from `seeds` by `model` into the prompt file `out` until it holds
/// `opts.count` (prompts already in it are kept and count). `progress(kept, wanted)` hears each
/// batch.
pub fn synthesize(
    model: &LoadedModel,
    seeds: &[String],
    out: &Path,
    opts: &SynthesizeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Synthesized> {
    let seeds: Vec<&String> = seeds.iter().filter(|s| !s.trim().is_empty()).collect();
    if seeds.len() < 2 {
        return Err(Error::Input(format!(
            "{} seed prompt(s): synthesis needs at least 2 examples to vary\nHINT: give --seeds a prompt file with a handful of typical prompts",
            seeds.len()
        )));
    }
    let existing = read_existing(out)?;
    let mut kept: Vec<Fingerprint> = seeds.iter().map(|s| Fingerprint::of(s)).collect();
    kept.extend(existing.iter().map(|p| Fingerprint::of(p)));
    let mut seen: HashSet<String> = existing.iter().cloned().collect();
    let script: f64 = {
        let shares: Vec<f64> = seeds.iter().filter_map(|s| ascii_letter_share(s)).collect();
        shares.iter().sum::<f64>() / shares.len().max(1) as f64
    };
    let longest_seed = seeds.iter().map(|s| s.trim().chars().count()).max().unwrap_or(0);
    let max_chars = opts.max_chars.unwrap_or((3 * longest_seed).max(200));
    let mut report = Synthesized { total: existing.len(), resumed: existing.len(), ..Default::default() };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(|e| Error::Input(format!("cannot write {}: {e}", out.display())))?;
    let wanted = opts.count.saturating_sub(existing.len());
    let budget = wanted * opts.max_attempts_per_prompt.max(1);
    // Where a resumed run's random draws start: after those of the prompts already kept.
    let mut rng = StdRng::seed_from_u64(opts.seed ^ (existing.len() as u64).wrapping_mul(0x9E37_79B9));
    progress(report.total, opts.count);
    while report.total < opts.count && report.attempts < budget {
        let batch = opts.batch_size.max(1).min(budget - report.attempts);
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                let mut shots: Vec<&str> = seeds.iter().map(|s| s.as_str()).collect();
                shots.shuffle(&mut rng);
                shots.truncate(opts.shots.max(1));
                model.tokenizer.encode(&few_shot_prompt(&shots), true).map_err(Error::from)
            })
            .collect::<Result<_>>()?;
        let params = SamplingParams {
            temperature: opts.temperature,
            top_p: opts.top_p,
            max_tokens: opts.max_tokens,
            seed: rand::RngCore::next_u64(&mut rng),
            stop: vec!["\n###".into()],
            ..SamplingParams::default()
        };
        let outs = generate(&model.model, &model.tokenizer, &prompts, &params, &model.stop_ids, |_, _| {})?;
        report.attempts += batch;
        for completion in outs {
            if report.total >= opts.count {
                break;
            }
            let candidate = parse_continuation(&completion.text);
            let chars = candidate.chars().count();
            if chars < opts.min_chars {
                report.rejected.too_short += 1;
                continue;
            }
            if chars > max_chars {
                report.rejected.too_long += 1;
                continue;
            }
            let share = ascii_letter_share(&candidate).unwrap_or(0.0);
            if (share - script).abs() > 0.3 || candidate.contains('\u{fffd}') {
                report.rejected.other_language += 1;
                continue;
            }
            let fp = Fingerprint::of(&candidate);
            if seen.contains(&candidate) || kept.iter().any(|k| k.similarity(&fp) >= opts.max_similarity) {
                report.rejected.near_duplicate += 1;
                continue;
            }
            report.total += 1;
            let line = json!({"prompt": candidate, "metadata": {"id": format!("synth-{:06}", report.total), "synthesized": true}});
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .map_err(|e| Error::Input(format!("cannot write {}: {e}", out.display())))?;
            seen.insert(candidate);
            kept.push(fp);
        }
        progress(report.total, opts.count);
    }
    if report.total < opts.count {
        return Err(Error::Input(format!(
            "kept {} of {} prompts after {} attempts (rejected: {} too short, {} too long, {} in another language, {} near-duplicates); {} holds those kept\nHINT: give more varied seeds, a higher temperature, or a larger --synthesize-similarity, and run the same command again to go on",
            report.total,
            opts.count,
            report.attempts,
            report.rejected.too_short,
            report.rejected.too_long,
            report.rejected.other_language,
            report.rejected.near_duplicate,
            out.display()
        )));
    }
    Ok(report)
}

/// The prompts an earlier run kept in `out`; a last line cut off by a kill is dropped from the
/// file.
fn read_existing(out: &Path) -> Result<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(out) else { return Ok(Vec::new()) };
    let mut prompts = Vec::new();
    let mut good_len = 0;
    for line in text.split_inclusive('\n') {
        let whole = line.ends_with('\n');
        match serde_json::from_str::<serde_json::Value>(line.trim()) {
            Ok(v) if whole => {
                let Some(p) = v.get("prompt").and_then(|p| p.as_str()) else {
                    return Err(Error::Input(format!(
                        "{} holds a line without a `prompt`; it is not a file this command wrote\nHINT: choose another --output",
                        out.display()
                    )));
                };
                prompts.push(p.to_string());
                good_len += line.len();
            }
            _ if !whole || line.trim().is_empty() => break,
            Err(e) => {
                return Err(Error::Input(format!(
                    "{}: a line is not JSON ({e})\nHINT: choose another --output",
                    out.display()
                )))
            }
            Ok(_) => break,
        }
    }
    if good_len < text.len() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .and_then(|f| f.set_len(good_len as u64))
            .map_err(|e| Error::Input(format!("cannot repair {}: {e}", out.display())))?;
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_are_similar_and_different_requests_are_not() {
        let a = Fingerprint::of("Where is my order #1234? It was due on Monday.");
        let b = Fingerprint::of("where is my order #1235?  It was due on Monday!");
        let c = Fingerprint::of("How do I reset the password of my account?");
        assert!(a.similarity(&b) > 0.5, "{}", a.similarity(&b));
        assert!(a.similarity(&c) < 0.2, "{}", a.similarity(&c));
        assert_eq!(a.similarity(&a), 1.0);
    }

    #[test]
    fn a_continuation_is_cut_at_the_next_item() {
        assert_eq!(parse_continuation("Can I change my address?\n\n### Request 5\nmore"), "Can I change my address?");
        assert_eq!(
            parse_continuation("Two paragraphs\n\nof one request\n### Request 5"),
            "Two paragraphs\n\nof one request"
        );
        let p = few_shot_prompt(&["a", "b"]);
        assert!(p.ends_with("### Request 2\nb\n\n### Request 3\n"), "{p}");
    }

    #[test]
    fn a_line_cut_off_by_a_kill_is_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.jsonl");
        std::fs::write(&out, "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\n{\"prompt\": \"thr").unwrap();
        assert_eq!(read_existing(&out).unwrap(), vec!["one", "two"]);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\n");
        std::fs::write(&out, "not json\n").unwrap();
        assert!(read_existing(&out).is_err());
    }
}
