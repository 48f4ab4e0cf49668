//! A run's report: one self-contained HTML page (inline SVG plots) and the same figures as JSON —
//! loss curves (train, held-out, a baseline run when given), the retention table of every
//! evaluated model file (`eval*.json` in the run directory), the speed/size table, samples, the
//! optimiser's curves (learning rate, gradient norm, throughput) and how the run was made
//! ([`run::RunInfo`]: teacher, dataset, config, stage times).

mod run;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::evaluate::{CostReport, EvalReport, Retention};
pub use run::RunInfo;

/// The figures of a report, as `report.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFigures {
    pub run: String,
    pub train_loss: Vec<(f64, f64)>,
    pub held_out_kl: Vec<(f64, f64)>,
    pub held_out_top1_pct: Vec<(f64, f64)>,
    pub baseline: Option<BaselineFigures>,
    pub evaluations: Vec<EvaluatedModel>,
    #[serde(default)]
    pub lr: Vec<(f64, f64)>,
    #[serde(default)]
    pub grad_norm: Vec<(f64, f64)>,
    #[serde(default)]
    pub tokens_per_s: Vec<(f64, f64)>,
    #[serde(default)]
    pub run_info: RunInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineFigures {
    pub held_out_kl: Vec<(f64, f64)>,
    pub held_out_top1_pct: Vec<(f64, f64)>,
}

/// One evaluated model file of the run (`student`, `student (q8_0)`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluatedModel {
    pub model: String,
    pub in_domain: Retention,
    pub out_of_domain: Option<Retention>,
    pub cost: CostReport,
    /// Executed pass@1 on code tasks, where the evaluation ran them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodePassRate>,
}

/// Teacher and student pass@1 on a run's code tasks, without the per-task outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CodePassRate {
    pub tasks: usize,
    pub teacher_pass_at_1: f64,
    pub student_pass_at_1: f64,
    pub retention_pct: Option<f64>,
}

/// A written report: where the page is, and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub html: PathBuf,
    pub json: PathBuf,
    pub figures: ReportFigures,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Train loss and held-out KL points of a run's metrics.jsonl.
struct Curves {
    train: Vec<(f64, f64)>,
    held_out: Vec<(f64, f64)>,
    top1: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    grad_norm: Vec<(f64, f64)>,
    tokens_per_s: Vec<(f64, f64)>,
}

fn curves(run: &Path) -> Result<Curves> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Report(format!(
            "cannot read {}: {e}\nHINT: point at a directory made by `distill train`",
            path.display()
        ))
    })?;
    let mut c =
        Curves { train: vec![], held_out: vec![], top1: vec![], lr: vec![], grad_norm: vec![], tokens_per_s: vec![] };
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::Report(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let Some(step) = v["step"].as_f64() else { continue };
        if let Some(loss) = v["loss"].as_f64() {
            c.train.push((step, loss));
            for (series, key) in
                [(&mut c.lr, "lr"), (&mut c.grad_norm, "grad_norm"), (&mut c.tokens_per_s, "tokens_per_s")]
            {
                if let Some(x) = v[key].as_f64() {
                    series.push((step, x));
                }
            }
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
        let err = |e: &dyn std::fmt::Display| Error::Report(format!("plot `{title}`: {e}"));
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

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map(|x| format!("{x:.digits$}{suffix}")).unwrap_or_else(|| "–".into())
}

/// A percentage for people: one decimal, or two significant digits below 1%; "–" when absent.
pub fn percent(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x != 0.0 && x.abs() < 1.0 => format!("{x:.2}%"),
        Some(x) => format!("{x:.1}%"),
    }
}

/// `eval*.json` files of the run: (label, contents), the unsuffixed one first.
fn evaluations(run: &Path) -> Result<Vec<(String, EvalReport)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run).map_err(io(run))? {
        let path = entry.map_err(io(run))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with("eval") && name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let v: EvalReport = serde_json::from_str(&text).map_err(|e| {
                Error::Report(format!("{} is not an evaluation written by `distill eval -o`: {e}", path.display()))
            })?;
            let label = name.trim_start_matches("eval").trim_start_matches('-').trim_end_matches(".json");
            found.push((if label.is_empty() { "student".to_string() } else { format!("student ({label})") }, v));
        }
    }
    found.sort_by(|a, b| (a.0 != "student", &a.0).cmp(&(b.0 != "student", &b.0)));
    Ok(found)
}

/// Writes `run/report.html` and `run/report.json` for the training run in `run`, with the
/// held-out curves of `baseline` (another run) drawn beside its own.
pub fn write_report(run: &Path, baseline: Option<&Path>) -> Result<Report> {
    if !run.is_dir() {
        return Err(Error::Report(format!("{} is not a run directory", run.display())));
    }
    let ours = curves(run)?;
    let baseline_curves = baseline.map(curves).transpose()?;
    let label = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut held = vec![("held-out KL".to_string(), ours.held_out.as_slice())];
    let mut top1 = vec![("top-1 %".to_string(), ours.top1.as_slice())];
    if let (Some(b), Some(path)) = (&baseline_curves, baseline) {
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
    let optimiser_plots = [
        chart("learning rate", "lr", &[("lr".to_string(), ours.lr.as_slice())], SeriesLabelPosition::UpperRight)?,
        chart(
            "gradient norm (before clipping)",
            "norm",
            &[("grad norm".to_string(), ours.grad_norm.as_slice())],
            SeriesLabelPosition::UpperRight,
        )?,
        chart(
            "training throughput",
            "target tokens / s",
            &[("tokens/s".to_string(), ours.tokens_per_s.as_slice())],
            SeriesLabelPosition::LowerRight,
        )?,
    ];
    let evals = evaluations(run)?;
    let run_info = RunInfo::read(run);

    let mut html = String::new();
    let title = format!("distill report: {}", esc(&run.display().to_string()));
    // Writing to a String cannot fail.
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}.sample th,.sample td{{text-align:left;vertical-align:top;white-space:pre-wrap}}\
         </style></head><body><h1>{title}</h1>"
    );
    html += &run_info.html();
    html += "<h2>Training</h2>";
    for plot in [&train_plot, &held_plot, &top1_plot] {
        html += &format!("<figure>{plot}</figure>");
    }
    html += "<details><summary>optimiser: learning rate, gradient norm, throughput</summary>";
    for plot in &optimiser_plots {
        html += &format!("<figure>{plot}</figure>");
    }
    html += "</details>";
    let mut evaluated = Vec::new();
    if let Some((_, first)) = evals.first() {
        html += "<h2>Retention (student as % of teacher)</h2><table><tr><th>model</th><th>prompts</th><th>top-1 agreement</th>\
                 <th>perplexity</th><th>ROUGE-L vs teacher</th><th>exact match</th><th>KL(t‖s)</th><th>KL(s‖t)</th>\
                 <th>looping outputs, teacher / student</th></tr>";
        for (name, e) in &evals {
            for (set, r) in [("in-domain", Some(&e.in_domain)), ("out-of-domain", e.out_of_domain.as_ref())] {
                let Some(r) = r else { continue };
                let _ = write!(
                    html,
                    "<tr><td>{} — {set}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}% / {:.0}%</td></tr>",
                    esc(name),
                    r.prompts,
                    percent(Some(r.retention.top1_agreement_pct)),
                    percent(r.retention.perplexity_pct),
                    percent(Some(r.retention.rouge_l_pct)),
                    percent(r.retention.exact_match_pct),
                    num(Some(r.tokens.kl_forward), 3, ""),
                    num(Some(r.tokens.kl_reverse), 3, ""),
                    100.0 * r.repetition.teacher.looping,
                    100.0 * r.repetition.student.looping,
                );
            }
            evaluated.push(EvaluatedModel {
                model: name.clone(),
                in_domain: e.in_domain.retention,
                out_of_domain: e.out_of_domain.as_ref().map(|r| r.retention),
                cost: e.cost.clone(),
                code: e.code.as_ref().map(|c| CodePassRate {
                    tasks: c.tasks,
                    teacher_pass_at_1: c.teacher.pass_at_1,
                    student_pass_at_1: c.student.pass_at_1,
                    retention_pct: c.retention_pct,
                }),
            });
        }
        if evaluated.iter().any(|e| e.code.is_some()) {
            html += "</table><h2>Code tasks (executed pass@1, greedy)</h2><table><tr><th>model</th><th>tasks</th>\
                     <th>teacher</th><th>student</th><th>retention</th></tr>";
            for e in &evaluated {
                let Some(c) = e.code else { continue };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                    esc(&e.model),
                    c.tasks,
                    c.teacher_pass_at_1,
                    c.student_pass_at_1,
                    percent(c.retention_pct)
                );
            }
        }
        html += "</table><h2>Cost on this machine</h2><table><tr><th>model</th><th>parameters</th><th>file</th>\
                 <th>peak memory</th><th>prefill tok/s</th><th>decode tok/s</th></tr>";
        let mut rows = vec![("teacher".to_string(), &first.cost.teacher)];
        rows.extend(evals.iter().map(|(n, e)| (n.clone(), &e.cost.student)));
        for (name, c) in rows {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:.1}M</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&name),
                c.parameters as f64 / 1e6,
                num(c.file_bytes.map(|b| b as f64 / 1e6), 1, " MB"),
                num(c.peak_rss_bytes.map(|b| b as f64 / 1e6), 0, " MB"),
                num(c.speed.map(|s| s.prefill_tok_s), 0, ""),
                num(c.speed.map(|s| s.decode_tok_s), 1, ""),
            );
        }
        html += "</table><h2>Samples (greedy)</h2><table class=\"sample\"><tr><th>prompt</th><th>teacher</th><th>student</th></tr>";
        for s in &first.in_domain.samples {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.prompt),
                esc(&s.teacher),
                esc(&s.student)
            );
        }
        html += "</table>";
    } else {
        html +=
            "<p>No evaluation yet: run <code>distill eval --student RUN/final --prompts … -o RUN/eval.json</code>.</p>";
    }
    html += "</body></html>\n";
    let html_path = run.join("report.html");
    std::fs::write(&html_path, &html).map_err(io(&html_path))?;
    let figures = ReportFigures {
        run: run.display().to_string(),
        train_loss: ours.train,
        held_out_kl: ours.held_out,
        held_out_top1_pct: ours.top1,
        baseline: baseline_curves.map(|b| BaselineFigures { held_out_kl: b.held_out, held_out_top1_pct: b.top1 }),
        evaluations: evaluated,
        lr: ours.lr,
        grad_norm: ours.grad_norm,
        tokens_per_s: ours.tokens_per_s,
        run_info,
    };
    let json_path = run.join("report.json");
    let json = serde_json::to_string_pretty(&figures).map_err(|e| Error::Report(e.to_string()))?;
    std::fs::write(&json_path, json).map_err(io(&json_path))?;
    Ok(Report { html: html_path, json: json_path, figures })
}
