//! Run reports: `metrics.json` (machine-readable), `report.md` (the side-by-side table),
//! `report.html` (the same, self-contained, with the plots inline) and SVG plots (the trade-offs
//! of score against size and latency with their front; training curves; sub-model rounds;
//! compression). Built from what the stages recorded, never by re-training, so
//! `distillery report DIR` redoes them from `metrics.json` alone.

mod draw;
pub mod html;
pub mod plot;

use crate::data::Task;
use crate::error::{Error, Result};
pub use crate::store::{DataSummary, DistillSummary, ModelMetrics, Ratios};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Experiment name.
    pub experiment: String,
    /// distillery version.
    pub distillery_version: String,
    /// Seed.
    pub seed: u64,
    /// Task.
    pub task: Task,
    /// Data summary.
    pub data: DataSummary,
    /// One entry per model.
    pub models: Vec<ModelMetrics>,
    /// One entry per transfer round of every sub-model group (round 0: after phase 1).
    #[serde(default)]
    pub transfer_rounds: Vec<crate::submodels::RoundRecord>,
    /// What each sub-model group recorded.
    #[serde(default)]
    pub submodel_groups: Vec<crate::submodels::GroupRecord>,
    /// What the `[[export]]` stages wrote, and how each ONNX export compared in tract.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<crate::store::ExportRecord>,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// MPI ranks the run was spread over (absent for one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
}

fn fmt_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn fmt_us(us: f64) -> String {
    if us <= 0.0 {
        "—".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

fn arch_col(x: &ModelMetrics) -> String {
    let mut a = x.architecture.clone();
    if x.precision != "f32" {
        a = format!("{a}, {}", x.precision);
    }
    if let Some(nz) = x.nonzero_params {
        if nz < x.params {
            a = format!(
                "{a}, {:.0}% zero",
                100.0 * (1.0 - nz as f64 / x.params.max(1) as f64)
            );
        }
    }
    a
}

fn exports_section(s: &mut String, m: &Metrics) {
    if m.exports.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Exports\n");
    let _ = writeln!(
        s,
        "| model | format | file | bytes | checked in tract on | max \\|Δoutput\\| | class agreement |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
    for e in &m.exports {
        let _ = writeln!(
            s,
            "| {} | {} | [{}]({}) | {} | {} | {} | {} |",
            e.from,
            e.format,
            e.file,
            e.file,
            e.bytes,
            if e.checked_samples > 0 {
                format!("{} test samples", e.checked_samples)
            } else {
                "—".into()
            },
            e.max_abs_diff
                .map(|d| format!("{d:.2e}"))
                .unwrap_or_else(|| "—".into()),
            e.class_agreement
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "—".into())
        );
    }
    let _ = writeln!(s);
}

fn compression_section(s: &mut String, m: &Metrics) {
    let stages: Vec<&ModelMetrics> = m
        .models
        .iter()
        .filter(|x| x.compression.is_some())
        .collect();
    if stages.is_empty() {
        return;
    }
    let cls = m.task == Task::Classification;
    s.push_str("## Compression stages\n\n");
    s.push_str(if cls {
        "| model | from | stage | params before → after | file size | before fine-tuning | after |\n|---|---|---|---:|---:|---:|---:|\n"
    } else {
        "| model | from | stage | params before → after | file size | MSE before fine-tuning | after |\n|---|---|---|---:|---:|---:|---:|\n"
    });
    for x in stages {
        let c = x.compression.as_ref().expect("filtered");
        let fmt = |a: Option<f64>, e: Option<usize>, mse: Option<f64>| -> String {
            match (a, mse) {
                (Some(a), _) => format!("{:.2}% ({} errors)", 100.0 * a, e.unwrap_or(0)),
                (None, Some(v)) => format!("{v:.4}"),
                _ => "—".into(),
            }
        };
        let before = c
            .before
            .as_ref()
            .map(|b| fmt(b.accuracy, b.errors, b.mse))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} → {} | {} | {} | {} |",
            x.name,
            c.from,
            c.method,
            c.params_before,
            x.nonzero_params.unwrap_or(x.params),
            fmt_bytes(x.file_bytes as usize),
            before,
            fmt(x.accuracy, x.test_errors, x.mse)
        );
    }
    s.push_str("\n\"before fine-tuning\": the model right after pruning (at the final sparsity) or after post-training quantization, before distillation-aware recovery or quantization-aware training; \"—\" when the stage has no fine-tuning.\n\n");
}

/// The Markdown report.
pub fn markdown(m: &Metrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# distillery report: {}\n", m.experiment);
    let d = &m.data;
    let _ = writeln!(
        s,
        "Data: {} — input shape {:?}, {} train / {} validation / {} test samples{}. Seed {}. Wall time {:.1} s.\n",
        d.source,
        d.input_shape,
        d.train,
        d.val,
        d.test,
        d.classes.as_ref().map(|c| format!(", {} classes", c.len())).unwrap_or_default(),
        m.seed,
        m.wall_seconds
    );
    if let Some(n) = m.ranks {
        let _ = writeln!(
            s,
            "Run across {n} MPI ranks: in each sub-model group, sub-model i trained on rank i mod {n}; every other network trained data-parallel (each rank a slice of every batch). Latency measured on rank 0.\n"
        );
    }
    models_table(&mut s, m);
    text_section(&mut s, m);
    tasks_section(&mut s, m);
    agreement_section(&mut s, m);
    auto_section(&mut s, m);
    rules_section(&mut s, m);
    compression_section(&mut s, m);
    exports_section(&mut s, m);
    training_section(&mut s, m);
    for g in &m.submodel_groups {
        group_section(&mut s, g);
    }
    let plots = plot_list(m);
    if !plots.is_empty() {
        s.push_str("\n## Plots\n\n");
        for (file, caption) in &plots {
            let _ = writeln!(s, "![{caption}](plots/{file})\n");
        }
    }
    s
}

/// The table of every model: role, size, test score, latency and the ratios to the teacher.
fn models_table(s: &mut String, m: &Metrics) {
    let cls = m.task == Task::Classification;
    if cls {
        s.push_str("| model | role | architecture | params | size | test accuracy | test errors | latency b=1 | latency b=256 | size vs teacher | b=1 speed-up | accuracy Δ vs teacher |\n");
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        s.push_str("| model | role | architecture | params | size | test MSE | test MAE | latency b=1 | latency b=256 | size vs teacher | b=1 speed-up | MSE vs teacher |\n");
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    let teacher = m.models.iter().find(|x| {
        x.vs_teacher
            .as_ref()
            .map(|r| r.reference == x.name)
            .unwrap_or(false)
    });
    for x in &m.models {
        let r = x.vs_teacher.as_ref();
        let size_vs = r
            .map(|r| format!("{:.1}× smaller", 1.0 / r.bytes))
            .unwrap_or_else(|| "—".into());
        let speed = r
            .map(|r| format!("{:.1}×", 1.0 / r.latency_b1))
            .unwrap_or_else(|| "—".into());
        let mut role = x.role.clone();
        if let Some(ds) = &x.distill {
            role = format!(
                "{role} ({} from {}, T={}, α={})",
                ds.loss.as_deref().unwrap_or("KD"),
                ds.teacher,
                ds.temperature,
                ds.alpha
            );
        }
        if cls {
            let delta = match (x.accuracy, teacher.and_then(|t| t.accuracy)) {
                (Some(a), Some(t)) => format!("{:+.2} pts", 100.0 * (a - t)),
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                x.name,
                role,
                arch_col(x),
                x.params,
                fmt_bytes(x.bytes),
                x.accuracy
                    .map(|a| format!("{:.2}%", 100.0 * a))
                    .unwrap_or_else(|| "—".into()),
                x.test_errors
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "—".into()),
                fmt_us(x.latency_us_b1),
                fmt_us(x.latency_us_b256),
                size_vs,
                speed,
                delta
            );
        } else {
            let mse_vs = r
                .and_then(|r| r.mse)
                .map(|v| format!("{v:.2}×"))
                .unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {} | {} | {} | {} | {} |",
                x.name,
                role,
                arch_col(x),
                x.params,
                fmt_bytes(x.bytes),
                x.mse.unwrap_or(f64::NAN),
                x.mae.unwrap_or(f64::NAN),
                fmt_us(x.latency_us_b1),
                fmt_us(x.latency_us_b256),
                size_vs,
                speed,
                mse_vs
            );
        }
    }
    s.push_str("\nLatency: median of repeated timed forward passes on this machine (after warm-up). Size: bytes of the stored weights in their precision (f32, int8 codes + scales, packed int4 + scales).\n\n");
}

/// Each model's training: epochs, best epoch, early stop, time, and its warnings.
fn training_section(s: &mut String, m: &Metrics) {
    s.push_str("## Training\n\n");
    s.push_str("| model | source | epochs run | best epoch | early stop | train time |\n|---|---|---:|---:|---|---:|\n");
    for x in &m.models {
        match &x.training {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.1} s |",
                    x.name,
                    x.source,
                    t.epochs_run,
                    t.best_epoch,
                    if t.stopped_early { "yes" } else { "no" },
                    t.seconds
                );
            }
            None => {
                let _ = writeln!(s, "| {} | {} | — | — | — | — |", x.name, x.source);
            }
        }
    }
    for x in &m.models {
        if let Some(w) = x.training.as_ref().and_then(|t| t.warning.as_ref()) {
            let _ = writeln!(s, "\n**Warning, {}:** {w}.", x.name);
        }
    }
}

/// One sub-model group: its settings, warnings, transfer choice, rounds and phase-1 scores.
fn group_section(s: &mut String, g: &crate::submodels::GroupRecord) {
    let _ = writeln!(
        s,
        "\n## Sub-models: {} (K = {}, {}, {}, peers {})\n",
        g.name,
        g.k,
        match g.init {
            crate::config::SubmodelInit::Fresh => "fresh",
            crate::config::SubmodelInit::Split => "split from the teacher",
        },
        if g.shards {
            "each on its own shard"
        } else {
            "all on the full training set"
        },
        g.peers
    );
    let _ = writeln!(s, "Training samples per sub-model: {:?}.", g.shard_sizes);
    if let Some(k) = &g.weight_mass_kept {
        let total: f64 = k.iter().sum();
        let parts: Vec<String> = k.iter().map(|v| format!("{:.1}%", 100.0 * v)).collect();
        let _ = writeln!(
            s,
            "Teacher weight mass (Σ|w|) kept by each sub-model: {} — {:.1}% in all{}.",
            parts.join(", "),
            100.0 * total,
            if total < 0.999 {
                " (weights between different sub-models' units are dropped)"
            } else {
                ""
            }
        );
    }
    for w in &g.warnings {
        let _ = writeln!(s, "\n**Warning:** {w}");
    }
    if let Some(a) = &g.auto {
        let _ = writeln!(
            s,
            "\nTransfer settings chosen on validation: {} candidates, each {} round(s) from phase 1 (β = 0 is phase 1 itself, no transfer; a trial's figures are its ensemble's best over its rounds); chose **β = {}{}**.\n",
            a.trials.len(),
            a.trial_rounds,
            a.peer_weight,
            if a.peer_weight == 0.0 || a.trials.iter().all(|t| t.val_accuracy.is_none()) {
                String::new()
            } else {
                format!(", T = {}", a.temperature)
            }
        );
        trials_table(s, "β", &a.trials);
    }
    let _ = writeln!(s, "\n| round | disagreement | validation accuracy per sub-model | ensemble validation accuracy | ensemble validation loss |\n|---:|---:|---|---:|---:|");
    for r in &g.rounds {
        let accs: Vec<String> = if r.val_accuracy.is_empty() {
            r.val_loss.iter().map(|l| format!("loss {l:.4}")).collect()
        } else {
            r.val_accuracy
                .iter()
                .map(|a| format!("{:.2}%", 100.0 * a))
                .collect()
        };
        let _ = writeln!(
            s,
            "| {}{} | {:.3e} | {} | {} | {:.4} |",
            r.round,
            if r.round == g.chosen_round {
                " (kept)"
            } else {
                ""
            },
            r.disagreement,
            accs.join(", "),
            r.ensemble_val_accuracy
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "—".into()),
            r.ensemble_val_loss
        );
    }
    let _ = writeln!(
        s,
        "\nKept round {}: {}. Stopped: {}.",
        g.chosen_round, g.chosen_reason, g.stop_reason
    );
    let alone: Vec<String> = g
        .phase1_test
        .iter()
        .map(|t| match t.accuracy {
            Some(a) => format!("{:.2}%", 100.0 * a),
            None => format!("MSE {:.4}", t.mse.unwrap_or(f64::NAN)),
        })
        .collect();
    let _ = writeln!(
        s,
        "After phase 1 (each sub-model trained alone{}), test: {} ; their ensemble: {}.",
        if g.shards { " on its shard" } else { "" },
        alone.join(", "),
        match g.phase1_ensemble_test.accuracy {
            Some(a) => format!("{:.2}%", 100.0 * a),
            None => format!("MSE {:.4}", g.phase1_ensemble_test.mse.unwrap_or(f64::NAN)),
        }
    );
}

/// Writes metrics.json, report.md and the plots into `out`, atomically.
pub fn write_reports(out: &Path, m: &Metrics) -> Result<String> {
    let json = serde_json::to_string_pretty(m).map_err(|e| Error::Other(e.to_string()))?;
    crate::io::write_atomic_str(&out.join("metrics.json"), &json)?;
    render(out, m)
}

/// Writes `report.md`, the plots and `report.html` from `m` (what `distillery report DIR`
/// redoes from a run folder's `metrics.json`). Returns the Markdown.
pub fn render(out: &Path, m: &Metrics) -> Result<String> {
    let md = markdown(m);
    // Under MPI only rank 0 holds the latencies (it alone measures them), so the set of plots
    // can differ between ranks: rank 0 writes every file in one shared write, and the other
    // ranks take part in that one exchange only.
    crate::dist::shared_write(|| crate::dist::local(|| write_files(out, m, &md)))?;
    Ok(md)
}

fn write_files(out: &Path, m: &Metrics, md: &str) -> Result<()> {
    crate::io::write_atomic_str(&out.join("report.md"), md)?;
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let config = std::fs::read_to_string(out.join("config.toml")).ok();
    let tolerances = tolerances(config.as_deref());
    let mut svgs = Vec::new();
    for (file, _) in plot_list(m) {
        let svg = draw::draw(m, &file, &tolerances)?;
        crate::io::write_atomic_str(&dir.join(&file), &svg)?;
        svgs.push((file, svg));
    }
    let page = html::page(m, md, &svgs, config.as_deref(), out);
    crate::io::write_atomic_str(&out.join("report.html"), &page)
}

/// Each sub-model group's tolerance, from the run's resolved `config.toml` (the records do not
/// hold it).
fn tolerances(config: Option<&str>) -> Vec<(String, f64)> {
    let Some(text) = config else {
        return Vec::new();
    };
    let Ok(t) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    t.get("submodels")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|g| {
                    let name = g.get("name")?.as_str()?.to_string();
                    let tol = g
                        .get("transfer")
                        .and_then(|t| t.get("tolerance"))
                        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                        .unwrap_or(crate::submodels::TransferConfig::default().tolerance);
                    Some((name, tol))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A file name made of a model's or group's name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The plots a run gets, each with its caption, in report order.
pub fn plot_list(m: &Metrics) -> Vec<(String, String)> {
    let cls = m.task == Task::Classification;
    let score = if cls { "accuracy" } else { "mse" };
    let mut v = vec![(
        format!("{score}_vs_size.svg"),
        format!(
            "test {} against size, with the front of models no other beats on both",
            if cls { "accuracy" } else { "MSE" }
        ),
    )];
    if m.models.iter().any(|x| x.latency_us_b1 > 0.0) {
        v.push((
            format!("{score}_vs_latency.svg"),
            format!(
                "test {} against batch-1 latency, with the front",
                if cls { "accuracy" } else { "MSE" }
            ),
        ));
    }
    if m.models.iter().any(|x| x.training.is_some()) {
        v.push((
            if cls {
                "val_accuracy.svg"
            } else {
                "val_mse.svg"
            }
            .to_string(),
            format!(
                "validation {} per epoch, every trained model",
                if cls { "accuracy" } else { "MSE" }
            ),
        ));
    }
    if m.models.iter().any(|x| {
        x.training
            .as_ref()
            .is_some_and(|t| !t.curves.val_agreement.is_empty())
    }) {
        v.push((
            "val_agreement.svg".into(),
            "validation top-1 agreement with the teacher per epoch (solid) beside validation accuracy (dashed), every distilled classifier".into(),
        ));
    }
    if !m.submodel_groups.is_empty() {
        v.push((
            "disagreement.svg".into(),
            "sub-model disagreement per transfer round, with the tolerance and the round kept"
                .into(),
        ));
        for g in &m.submodel_groups {
            v.push((
                format!("rounds-{}.svg", slug(&g.name)),
                format!(
                    "{}: validation score of each sub-model and of the ensemble per round",
                    g.name
                ),
            ));
        }
    }
    if m.models.iter().any(|x| {
        x.compression
            .as_ref()
            .map(|c| c.before.is_some())
            .unwrap_or(false)
    }) {
        v.push((
            "compression.svg".into(),
            "compression stages: test score before and after recovery".into(),
        ));
    }
    for x in &m.models {
        if x.training
            .as_ref()
            .map(|t| !t.curves.epoch.is_empty())
            .unwrap_or(false)
        {
            v.push((
                format!("curves-{}.svg", slug(&x.name)),
                format!("{}: training and validation curves", x.name),
            ));
        }
    }
    v
}

/// The grids of `alpha` / `temperature` = "auto": every trial's validation scores, the choice,
/// and the warning about a teacher worse than labels.
/// Each decision tree as rules.
fn rules_section(s: &mut String, m: &Metrics) {
    let trees: Vec<_> = m
        .models
        .iter()
        .filter_map(|x| x.rules.as_ref().map(|r| (x, r)))
        .collect();
    if trees.is_empty() {
        return;
    }
    s.push_str(
        "## Decision trees as rules

",
    );
    for (x, rules) in trees {
        let lines = rules.lines().count();
        let _ = writeln!(
            s,
            "**{}** ({}):
",
            x.name, x.architecture
        );
        if lines > 400 {
            let _ = writeln!(
                s,
                "({lines} lines; the first 400 are shown, all of them are in metrics.json)\n"
            );
        }
        s.push_str("```text\n");
        for l in rules.lines().take(400) {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("```\n\n");
    }
}

/// The table of a grid search's trials (`symbol`: the weight's name, α or β), the best marked.
fn trials_table(s: &mut String, symbol: &str, trials: &[crate::train::Trial]) {
    let best = crate::train::Trial::best(trials);
    let _ = writeln!(
        s,
        "| {symbol} | T | validation accuracy | validation loss | |\n|---:|---:|---:|---:|---|"
    );
    for t in trials {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {} |",
            t.weight,
            if t.weight == 0.0 || t.val_accuracy.is_none() {
                "—".to_string()
            } else {
                t.temperature.to_string()
            },
            t.val_accuracy
                .map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or_else(|| "—".into()),
            t.val_loss,
            if best == Some(t) { "best trial" } else { "" }
        );
    }
}

/// Each distilled classifier's fidelity to its teacher beside its accuracy (Stanton et al. 2021:
/// the two can part).
fn agreement_section(s: &mut String, m: &Metrics) {
    let rows: Vec<_> = m
        .models
        .iter()
        .filter_map(|x| {
            let d = x.distill.as_ref()?;
            Some((x, d, d.agreement.as_ref()?))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    s.push_str("## Agreement with the teacher\n\nTop-1 agreement: the share of samples on which the student's class is the teacher's; KL: the mean KL(teacher ‖ student) at T = 1, nats. \n\n| model | teacher | test accuracy | test agreement | test KL | validation agreement | validation KL |\n|---|---|---:|---:|---:|---:|---:|\n");
    for (x, d, a) in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}% | {:.4} | {:.2}% | {:.4} |",
            x.name,
            d.teacher,
            x.accuracy
                .map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or_else(|| "—".into()),
            100.0 * a.test.top1,
            a.test.kl,
            100.0 * a.val.top1,
            a.val.kl
        );
    }
    s.push('\n');
}

fn auto_section(s: &mut String, m: &Metrics) {
    let chosen: Vec<_> = m
        .models
        .iter()
        .filter_map(|x| {
            x.distill
                .as_ref()
                .and_then(|d| d.auto.as_ref().map(|a| (x, d, a)))
        })
        .collect();
    if chosen.is_empty() {
        return;
    }
    s.push_str("## Distillation settings chosen on validation\n\n");
    for (x, d, a) in chosen {
        let _ = writeln!(
            s,
            "**{}** (teacher {}): {} trials {}; in the end **α = {}, T = {}**{}.\n",
            x.name,
            d.teacher,
            a.trials.len(),
            if a.trial_epochs == 0 {
                "(full fits: tree models fit in one go)".to_string()
            } else {
                format!("of {} epoch(s)", a.trial_epochs)
            },
            a.alpha,
            a.temperature,
            if a.alpha == 0.0 {
                " (labels only: distilling from this teacher did not help on validation)"
            } else {
                ""
            }
        );
        trials_table(s, "α", &a.trials);
        if let Some(f) = &a.full_runs {
            let _ = writeln!(
                s,
                "\nThe best trial trained in full (α = {}, T = {}) validated at {}, the same student on labels alone{} at {}: the {} one was kept.",
                f.distilled.weight,
                f.distilled.temperature,
                f.distilled.describe(),
                f.labels_model
                    .as_ref()
                    .map(|n| format!(" ('{n}' of this run)"))
                    .unwrap_or_default(),
                f.labels.describe(),
                if f.kept_labels { "labels-only" } else { "distilled" }
            );
        }
        if let Some(w) = &a.warning {
            let _ = writeln!(s, "\n> **Warning:** {w}");
        }
        s.push('\n');
    }
}

/// Text models: F1, agreement with the teacher's embeddings, and texts per second (latency
/// from raw text, tokenizing included).
fn text_section(s: &mut String, m: &Metrics) {
    let text = m
        .models
        .iter()
        .any(|x| x.cosine_to_teacher.is_some() || m.data.source.starts_with("text "));
    if !text {
        return;
    }
    s.push_str("## Text models

Latency and throughput from raw text (tokenizing included). Embedding students are scored against the teacher's embeddings of the test texts: mean cosine, and how often the nearest other test text is the same for student and teacher.

");
    s.push_str("| model | test accuracy | macro F1 | cosine to teacher | nearest-neighbour agreement | texts/s b=1 | texts/s b=256 |\n|---|---:|---:|---:|---:|---:|---:|\n");
    let pct = |v: Option<f64>| {
        v.map(|a| format!("{:.2}%", 100.0 * a))
            .unwrap_or_else(|| "—".into())
    };
    let rate = |us: f64, b: f64| {
        if us > 0.0 {
            format!("{:.0}", b * 1e6 / us)
        } else {
            "—".into()
        }
    };
    for x in &m.models {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.name,
            pct(x.accuracy),
            x.f1.map(|f| format!("{f:.4}"))
                .unwrap_or_else(|| "—".into()),
            x.cosine_to_teacher
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "—".into()),
            pct(x.nn_agreement),
            rate(x.latency_us_b1, 1.0),
            rate(x.latency_us_b256, 256.0)
        );
    }
    s.push('\n');
}

/// Multi-task students: each head's test score beside the single-task student it replaces
/// (the task's `baseline`), and the model's size and latency beside the baselines' sums.
fn tasks_section(s: &mut String, m: &Metrics) {
    let multi: Vec<&ModelMetrics> = m.models.iter().filter(|x| !x.tasks.is_empty()).collect();
    if multi.is_empty() {
        return;
    }
    s.push_str("## Multi-task students

One shared trunk, one head per task. Each head is scored on the test split against its labels (accuracy, or MSE in the target's units) or, without labels, against its teacher (mean cosine to its embeddings, top-1 agreement with its classes, or MSE to its values), beside the single-task student of the same trunk named as the task's baseline. Weight: the task's weight at the end of training (learned ones by uncertainty weighting).

");
    let fmt = |metric: &str, v: f64| match metric {
        "accuracy" | "agreement" => format!("{:.2}%", 100.0 * v),
        "cosine" => format!("{v:.3}"),
        _ => format!("{v:.4}"),
    };
    let find = |name: &str| m.models.iter().find(|x| x.name == name);
    let base_value = |b: &ModelMetrics, task: &str, metric: &str| -> Option<f64> {
        // A baseline with heads of its own (a task on a further column): its head of that
        // task, or its one head of that metric.
        if !b.tasks.is_empty() {
            let same: Vec<_> = b.tasks.iter().filter(|t| t.metric == metric).collect();
            return same
                .iter()
                .find(|t| t.name == task)
                .or(same.first().filter(|_| same.len() == 1))
                .map(|t| t.value);
        }
        match metric {
            "accuracy" => b.accuracy,
            "mse" => b.mse,
            "cosine" => b.cosine_to_teacher,
            "agreement" => b.distill.as_ref()?.agreement.as_ref().map(|a| a.test.top1),
            _ => None,
        }
    };
    for x in multi {
        let _ = writeln!(
            s,
            "**{}** ({}):\n\n| task | teacher | metric | weight | multi-task | single-task student | single-task |  Δ |\n|---|---|---|---:|---:|---|---:|---:|",
            x.name, x.architecture
        );
        let mut bases: Vec<&ModelMetrics> = Vec::new();
        for t in &x.tasks {
            let b = t.baseline.as_deref().and_then(find);
            let bv = b.and_then(|b| base_value(b, &t.name, &t.metric));
            let delta = match (bv, t.metric.as_str()) {
                (Some(v), "accuracy" | "agreement") => format!("{:+.2} pts", 100.0 * (t.value - v)),
                (Some(v), _) => format!("{:+.4}", t.value - v),
                (None, _) => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {} | {} | {} | {} |",
                t.name,
                t.teacher.as_deref().unwrap_or("labels"),
                t.metric,
                t.weight,
                fmt(&t.metric, t.value),
                t.baseline.as_deref().unwrap_or("—"),
                bv.map(|v| fmt(&t.metric, v)).unwrap_or_else(|| "—".into()),
                delta
            );
            if let Some(b) = b {
                if !bases.iter().any(|y| y.name == b.name) {
                    bases.push(b);
                }
            }
        }
        if !bases.is_empty() {
            let params: usize = bases.iter().map(|b| b.params).sum();
            let bytes: usize = bases.iter().map(|b| b.bytes).sum();
            let b1: f64 = bases.iter().map(|b| b.latency_us_b1).sum();
            let b256: f64 = bases.iter().map(|b| b.latency_us_b256).sum();
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}×", a / b)
                } else {
                    "—".into()
                }
            };
            let names: Vec<&str> = bases.iter().map(|b| b.name.as_str()).collect();
            let _ = writeln!(
                s,
                "\n| | {} | sum of {} | ratio |\n|---|---:|---:|---:|\n| params | {} | {} | {} |\n| size | {} | {} | {} |\n| latency b=1 | {} | {} | {} |\n| latency b=256 | {} | {} | {} |",
                x.name,
                names.join(" + "),
                x.params,
                params,
                ratio(x.params as f64, params as f64),
                fmt_bytes(x.bytes),
                fmt_bytes(bytes),
                ratio(x.bytes as f64, bytes as f64),
                fmt_us(x.latency_us_b1),
                fmt_us(b1),
                ratio(x.latency_us_b1, b1),
                fmt_us(x.latency_us_b256),
                fmt_us(b256),
                ratio(x.latency_us_b256, b256)
            );
        }
        s.push('\n');
    }
}

/// Reads a run folder's `metrics.json`.
pub fn read_metrics(dir: &Path) -> Result<Metrics> {
    let f = dir.join("metrics.json");
    let bytes = crate::io::read_file(&f)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not a metrics.json this distillery ({}) reads: {e}",
            f.display(),
            env!("CARGO_PKG_VERSION")
        ))
    })
}

/// `distillery report DIR`: `report.md`, `report.html` and the plots made again from the run
/// folder's `metrics.json` (and its `config.toml`, when there). Returns the Markdown.
pub fn rebuild(dir: &Path) -> Result<String> {
    let m = read_metrics(dir)?;
    render(dir, &m)
}

/// `distillery compare DIR…`: the models of several runs in one table and one trade-off plot
/// of score against size (the front across all runs marked), written to `out` as
/// `compare.md`, `compare.html` and `accuracy_vs_size.svg` (`mse_vs_size.svg`). Runs must be
/// of one task. Returns the Markdown.
pub fn compare(dirs: &[std::path::PathBuf], out: &Path) -> Result<String> {
    if dirs.len() < 2 {
        return Err(Error::Input(
            "compare: give at least two run folders".into(),
        ));
    }
    let runs: Vec<(String, Metrics)> = dirs
        .iter()
        .map(|d| read_metrics(d).map(|m| (d.display().to_string(), m)))
        .collect::<Result<_>>()?;
    let task = runs[0].1.task;
    if let Some((d, other)) = runs.iter().find(|(_, m)| m.task != task) {
        return Err(Error::Input(format!(
            "compare: {d} is a {:?} run but {} is {:?}; compare runs of one task",
            other.task, runs[0].0, task
        )));
    }
    let cls = task == Task::Classification;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# distillery: {} runs compared
",
        runs.len()
    );
    for (i, (d, m)) in runs.iter().enumerate() {
        let _ = writeln!(
            md,
            "- run {}: `{d}` — {} ({}; {} train / {} test samples; seed {})",
            i + 1,
            m.experiment,
            m.data.source,
            m.data.train,
            m.data.test,
            m.seed
        );
    }
    let _ = writeln!(
        md,
        "\n| run | model | role | architecture | params | size | {} | latency b=1 | latency b=256 |\n|---|---|---|---|---:|---:|---:|---:|---:|",
        if cls { "test accuracy" } else { "test MSE" }
    );
    let mut points = Vec::new();
    let mut k = 0;
    for (i, (_, m)) in runs.iter().enumerate() {
        for x in &m.models {
            let score = if cls {
                x.accuracy.map(|a| 100.0 * a)
            } else {
                x.mse
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                x.name,
                x.role,
                arch_col(x),
                x.params,
                fmt_bytes(x.bytes),
                match score {
                    Some(v) if cls => format!("{v:.2}%"),
                    Some(v) => format!("{v:.4}"),
                    None => "—".into(),
                },
                fmt_us(x.latency_us_b1),
                fmt_us(x.latency_us_b256)
            );
            if let Some(y) = score {
                points.push(plot::Point {
                    name: format!("{}: {}", i + 1, x.name),
                    look: plot::look(k),
                    x: x.bytes as f64,
                    y,
                });
            }
            k += 1;
        }
    }
    let file = if cls {
        "accuracy_vs_size.svg"
    } else {
        "mse_vs_size.svg"
    };
    let caption = "every run's models: test score against size, with the front across runs";
    let _ = writeln!(md, "\n![{caption}]({file})");
    let svg = plot::tradeoff(
        &plot::Axes {
            title: "Test score against size, all runs",
            x_label: "size of the weights (bytes, log scale)",
            y_label: if cls {
                "test accuracy (%)"
            } else {
                "test MSE (lower is better)"
            },
            x: plot::Scale::LogBytes,
            y: plot::Scale::Linear,
        },
        &points,
        cls,
    )?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::io::write_atomic_str(&out.join("compare.md"), &md)?;
    crate::io::write_atomic_str(&out.join(file), &svg)?;
    let page = html::simple_page("distillery: runs compared", &md, &[(file.to_string(), svg)]);
    crate::io::write_atomic_str(&out.join("compare.html"), &page)?;
    Ok(md)
}
