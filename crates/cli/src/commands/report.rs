//! `distill report RUN_DIR`: one self-contained HTML page (inline SVG plots) and the same figures
//! as JSON — loss curves (train, held-out, a baseline run when given), the retention table of every
//! evaluated model file (`eval*.json` in the run directory), the speed/size table, and samples.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde_json::{json, Value};

#[derive(Args, Debug)]
#[command(after_help = "Example:
  distill report runs/support --baseline runs/support-sft")]
pub struct ReportArgs {
    /// A training run directory (holds metrics.jsonl; `distill eval --out RUN/eval.json` adds the
    /// retention and cost tables).
    pub(crate) run: PathBuf,
    /// Another run (e.g. SFT only) whose held-out curve is drawn for comparison.
    #[arg(long)]
    pub(crate) baseline: Option<PathBuf>,
}

/// Train loss and held-out KL points of a run's metrics.jsonl.
struct Curves {
    train: Vec<(f64, f64)>,
    held_out: Vec<(f64, f64)>,
    top1: Vec<(f64, f64)>,
}

fn curves(run: &Path) -> Result<Curves> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {}\nHINT: point at a directory made by `distill train`", path.display())
    })?;
    let mut c = Curves { train: vec![], held_out: vec![], top1: vec![] };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
        let Some(step) = v["step"].as_f64() else { continue };
        if let Some(loss) = v["loss"].as_f64() {
            c.train.push((step, loss));
        }
        if let Some(kl) = v["eval_kl"].as_f64() {
            c.held_out.push((step, kl));
            c.top1.push((step, v["eval_top1"].as_f64().unwrap_or(0.0) * 100.0));
        }
    }
    Ok(c)
}

/// An SVG line chart of named series.
fn chart(
    title: &str,
    y_label: &str,
    series: &[(String, &[(f64, f64)])],
    legend: SeriesLabelPosition,
) -> Result<String> {
    let points: Vec<&(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter()).collect();
    if points.is_empty() {
        return Ok(String::new());
    }
    let (x0, x1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 340)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plot `{title}`: {e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("step").y_desc(y_label).draw().map_err(|e| err(&e))?;
        for (i, (name, s)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            if s.len() < 40 {
                c.draw_series(s.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|e| err(&e))?;
            }
        }
        c.configure_series_labels()
            .position(legend)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: &Value, digits: usize, suffix: &str) -> String {
    v.as_f64().map(|x| format!("{x:.digits$}{suffix}")).unwrap_or_else(|| "–".into())
}

/// `eval*.json` files of the run: (label, contents), the unsuffixed one first.
fn evaluations(run: &Path) -> Result<Vec<(String, Value)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with("eval") && name.ends_with(".json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let label = name.trim_start_matches("eval").trim_start_matches('-').trim_end_matches(".json");
            found.push((if label.is_empty() { "student".to_string() } else { format!("student ({label})") }, v));
        }
    }
    found.sort_by(|a, b| (a.0 != "student", &a.0).cmp(&(b.0 != "student", &b.0)));
    Ok(found)
}

pub fn run(args: ReportArgs) -> Result<()> {
    if !args.run.is_dir() {
        bail!("{} is not a run directory", args.run.display());
    }
    let ours = curves(&args.run)?;
    let baseline = args.baseline.as_ref().map(|b| curves(b)).transpose()?;
    let label = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut held = vec![("held-out KL".to_string(), ours.held_out.as_slice())];
    let mut top1 = vec![("top-1 %".to_string(), ours.top1.as_slice())];
    if let (Some(b), Some(path)) = (&baseline, &args.baseline) {
        held.push((format!("{} held-out KL", label(path)), b.held_out.as_slice()));
        top1.push((format!("{} top-1 %", label(path)), b.top1.as_slice()));
    }
    let train_plot = chart(
        "training loss",
        "loss",
        &[("train loss".to_string(), ours.train.as_slice())],
        SeriesLabelPosition::UpperRight,
    )?;
    let held_plot = chart("held-out KL(teacher ‖ student)", "nats / token", &held, SeriesLabelPosition::UpperRight)?;
    let top1_plot = chart("held-out top-1 agreement with the teacher", "%", &top1, SeriesLabelPosition::LowerRight)?;
    let evals = evaluations(&args.run)?;

    let mut html = String::new();
    let title = format!("distill report: {}", esc(&args.run.display().to_string()));
    write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}.sample th,.sample td{{text-align:left;vertical-align:top;white-space:pre-wrap}}\
         </style></head><body><h1>{title}</h1>"
    )?;
    html += "<h2>Training</h2>";
    for plot in [&train_plot, &held_plot, &top1_plot] {
        html += &format!("<figure>{plot}</figure>");
    }
    let mut json_evals = Vec::new();
    if evals.is_empty() {
        html += "<p>No evaluation yet: run <code>distill eval --student RUN/final --prompts … --out RUN/eval.json</code>.</p>";
    } else {
        html += "<h2>Retention (student as % of teacher)</h2><table><tr><th>model</th><th>prompts</th><th>top-1 agreement</th>\
                 <th>perplexity</th><th>ROUGE-L vs teacher</th><th>exact match</th><th>KL(t‖s)</th><th>KL(s‖t)</th></tr>";
        for (name, e) in &evals {
            for set in ["in_domain", "out_of_domain"] {
                let r = &e[set];
                if r.is_null() {
                    continue;
                }
                write!(
                    html,
                    "<tr><td>{} — {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    set.replace('_', "-"),
                    r["prompts"],
                    super::eval::percent(&r["retention"]["top1_agreement_pct"]),
                    super::eval::percent(&r["retention"]["perplexity_pct"]),
                    super::eval::percent(&r["retention"]["rouge_l_pct"]),
                    super::eval::percent(&r["retention"]["exact_match_pct"]),
                    num(&r["tokens"]["kl_forward"], 3, ""),
                    num(&r["tokens"]["kl_reverse"], 3, ""),
                )?;
            }
            json_evals.push(json!({"model": name, "in_domain": e["in_domain"]["retention"], "out_of_domain": e["out_of_domain"]["retention"], "cost": e["cost"]}));
        }
        html += "</table><h2>Cost on this machine</h2><table><tr><th>model</th><th>parameters</th><th>file</th>\
                 <th>peak memory</th><th>prefill tok/s</th><th>decode tok/s</th></tr>";
        let mut rows = vec![("teacher".to_string(), &evals[0].1["cost"]["teacher"])];
        rows.extend(evals.iter().map(|(n, e)| (n.clone(), &e["cost"]["student"])));
        for (name, c) in rows {
            write!(
                html,
                "<tr><td>{}</td><td>{:.1}M</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&name),
                c["parameters"].as_f64().unwrap_or(0.0) / 1e6,
                num(&json!(c["file_bytes"].as_f64().map(|b| b / 1e6)), 1, " MB"),
                num(&json!(c["peak_rss_bytes"].as_f64().map(|b| b / 1e6)), 0, " MB"),
                num(&c["speed"]["prefill_tok_s"], 0, ""),
                num(&c["speed"]["decode_tok_s"], 1, ""),
            )?;
        }
        html += "</table><h2>Samples (greedy)</h2><table class=\"sample\"><tr><th>prompt</th><th>teacher</th><th>student</th></tr>";
        for s in evals[0].1["in_domain"]["samples"].as_array().into_iter().flatten() {
            let cell = |k: &str| esc(s[k].as_str().unwrap_or_default());
            write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                cell("prompt"),
                cell("teacher"),
                cell("student")
            )?;
        }
        html += "</table>";
    }
    html += "</body></html>\n";
    let html_path = args.run.join("report.html");
    std::fs::write(&html_path, &html).with_context(|| format!("cannot write {}", html_path.display()))?;
    let pairs = |v: &[(f64, f64)]| v.iter().map(|(x, y)| json!([x, y])).collect::<Vec<_>>();
    let figures = json!({
        "run": args.run.display().to_string(),
        "train_loss": pairs(&ours.train),
        "held_out_kl": pairs(&ours.held_out),
        "held_out_top1_pct": pairs(&ours.top1),
        "baseline": baseline.as_ref().map(|b| json!({"held_out_kl": pairs(&b.held_out), "held_out_top1_pct": pairs(&b.top1)})),
        "evaluations": json_evals,
    });
    std::fs::write(args.run.join("report.json"), serde_json::to_string_pretty(&figures)?)?;
    println!("{}", html_path.display());
    Ok(())
}
