//! Run reports: `metrics.json` (machine-readable), `report.md` (the side-by-side table) and
//! SVG plots (training curves; accuracy vs size). Built from what the stages recorded, never by
//! re-training.

pub mod plot;

use crate::data::Task;
use crate::error::{Error, Result};
pub use crate::store::{DataSummary, DistillSummary, ModelMetrics, Ratios};
use plot::{line_chart, scatter_chart, Series};
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
    text_section(&mut s, m);
    auto_section(&mut s, m);
    rules_section(&mut s, m);
    compression_section(&mut s, m);
    exports_section(&mut s, m);
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
    for g in &m.submodel_groups {
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
                "\nTransfer settings chosen on validation: {} candidates, each {} round(s) from phase 1 (β = 0 is phase 1 itself, no transfer); chose **β = {}{}**.\n\n| β | T | best ensemble validation accuracy | its validation loss |\n|---:|---:|---:|---:|",
                a.trials.len(),
                a.trial_rounds,
                a.peer_weight,
                if a.peer_weight == 0.0 || a.trials.iter().all(|t| t.ensemble_val_accuracy.is_none()) {
                    String::new()
                } else {
                    format!(", T = {}", a.temperature)
                }
            );
            for t in &a.trials {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.4} |",
                    t.peer_weight,
                    if t.peer_weight == 0.0 || t.ensemble_val_accuracy.is_none() {
                        "—".to_string()
                    } else {
                        t.temperature.to_string()
                    },
                    t.ensemble_val_accuracy
                        .map(|v| format!("{:.2}%", 100.0 * v))
                        .unwrap_or_else(|| "—".into()),
                    t.ensemble_val_loss
                );
            }
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
    s.push_str("\n## Plots\n\n![training loss](plots/loss.svg)\n\n");
    if !m.submodel_groups.is_empty() {
        s.push_str("![disagreement per round](plots/disagreement.svg)\n\n");
    }
    if cls {
        s.push_str("![validation accuracy](plots/val_accuracy.svg)\n\n![accuracy vs size](plots/accuracy_vs_size.svg)\n");
    } else {
        s.push_str(
            "![validation MSE](plots/val_mse.svg)\n\n![MSE vs size](plots/mse_vs_size.svg)\n",
        );
    }
    s
}

/// Writes metrics.json, report.md and the plots into `out`, atomically.
pub fn write_reports(out: &Path, m: &Metrics) -> Result<String> {
    let json = serde_json::to_string_pretty(m).map_err(|e| Error::Other(e.to_string()))?;
    crate::io::write_atomic_str(&out.join("metrics.json"), &json)?;
    let md = markdown(m);
    crate::io::write_atomic_str(&out.join("report.md"), &md)?;
    let plots = out.join("plots");
    let mut loss = Vec::new();
    let mut val = Vec::new();
    for x in &m.models {
        if let Some(t) = &x.training {
            let c = &t.curves;
            let ep: Vec<f64> = c.epoch.iter().map(|&e| e as f64).collect();
            loss.push(Series {
                name: format!("{} train", x.name),
                points: ep
                    .iter()
                    .copied()
                    .zip(c.train_loss.iter().copied())
                    .collect(),
                dashed: false,
            });
            loss.push(Series {
                name: format!("{} val", x.name),
                points: ep.iter().copied().zip(c.val_loss.iter().copied()).collect(),
                dashed: true,
            });
            let v = if m.task == Task::Classification {
                &c.val_accuracy
            } else {
                &c.val_mse
            };
            val.push(Series {
                name: x.name.clone(),
                points: ep.iter().copied().zip(v.iter().copied()).collect(),
                dashed: false,
            });
        }
    }
    crate::io::write_atomic_str(
        &plots.join("loss.svg"),
        &line_chart(
            "Loss per epoch (train: solid, validation: dashed)",
            "epoch",
            "loss",
            &loss,
            true,
        ),
    )?;
    if !m.submodel_groups.is_empty() {
        let series: Vec<Series> = m
            .submodel_groups
            .iter()
            .map(|g| Series {
                name: g.name.clone(),
                points: g
                    .rounds
                    .iter()
                    .map(|r| (r.round as f64, r.disagreement.max(1e-12)))
                    .collect(),
                dashed: false,
            })
            .collect();
        crate::io::write_atomic_str(
            &plots.join("disagreement.svg"),
            &line_chart(
                "Sub-model disagreement on validation data per transfer round",
                "round (0 = after phase 1)",
                "disagreement (log scale)",
                &series,
                true,
            ),
        )?;
    }
    let pts_of = |f: &dyn Fn(&ModelMetrics) -> Option<f64>| -> Vec<(String, f64, f64)> {
        m.models
            .iter()
            .filter_map(|x| f(x).map(|v| (x.name.clone(), x.bytes as f64, v)))
            .collect()
    };
    if m.task == Task::Classification {
        crate::io::write_atomic_str(
            &plots.join("val_accuracy.svg"),
            &line_chart(
                "Validation accuracy per epoch",
                "epoch",
                "accuracy",
                &val,
                false,
            ),
        )?;
        let pts = pts_of(&|x| x.accuracy.map(|a| 100.0 * a));
        crate::io::write_atomic_str(
            &plots.join("accuracy_vs_size.svg"),
            &scatter_chart(
                "Test accuracy vs size",
                "bytes of weights (log scale)",
                "test accuracy (%)",
                &pts,
                true,
            ),
        )?;
    } else {
        crate::io::write_atomic_str(
            &plots.join("val_mse.svg"),
            &line_chart(
                "Validation MSE (standardised target) per epoch",
                "epoch",
                "MSE",
                &val,
                true,
            ),
        )?;
        let pts = pts_of(&|x| x.mse);
        crate::io::write_atomic_str(
            &plots.join("mse_vs_size.svg"),
            &scatter_chart(
                "Test MSE vs size",
                "bytes of weights (log scale)",
                "test MSE",
                &pts,
                true,
            ),
        )?;
    }
    Ok(md)
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
        let best = crate::train::Trial::best(&a.trials);
        s.push_str(
            "| α | T | validation accuracy | validation loss | |\n|---:|---:|---:|---:|---|\n",
        );
        for t in &a.trials {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.4} | {} |",
                t.alpha,
                if t.alpha == 0.0 {
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
        if let Some(f) = &a.full_runs {
            let _ = writeln!(
                s,
                "\nThe best trial trained in full (α = {}, T = {}) validated at {}, the same student on labels alone{} at {}: the {} one was kept.",
                f.distilled.alpha,
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
