//! The `distillery` command line: parses arguments and calls the library; one function per verb.

use clap::{Parser, Subcommand};
use distillery::config::{self, Role};
use distillery::data::{self, csv::CsvOptions, idx, Task};
use distillery::error::{Error, Result};
use distillery::pipeline::{self, RunOptions};
use distillery::progress::Progress;
use std::path::{Path, PathBuf};

/// The demo experiment (also in configs/demo.toml).
const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

#[derive(Parser)]
#[command(
    name = "distillery",
    version,
    about = "Distil large neural networks into small, fast models."
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Override a config value, e.g. --set model.teacher.train.epochs=5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Tiny end-to-end check: at most 300 training samples and 2 epochs per model.
    #[arg(long)]
    quick: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Verb {
    /// Train a teacher and distilled students on the embedded 8×8 digits and write the report.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Run a whole experiment from a TOML file (resumes when --out holds a killed run).
    Run {
        /// Experiment file.
        config: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Train only the teacher models of an experiment (or the models named with --model).
    Train {
        /// Experiment file.
        config: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Train this model (repeatable); default: every teacher.
        #[arg(long = "model", value_name = "NAME")]
        models: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Distil the students of an experiment from a saved teacher model file.
    Distill {
        /// Experiment file.
        config: PathBuf,
        /// The teacher: FILE, or NAME=FILE when the experiment has several teachers.
        #[arg(long)]
        teacher: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Make report.md, report.html and the plots again from a run folder's metrics.json.
    Report {
        /// Run folder (holds metrics.json).
        dir: PathBuf,
    },
    /// Put the models of several runs in one table and one accuracy–size plot.
    Compare {
        /// Run folders (each holds metrics.json).
        #[arg(required = true, num_args = 2..)]
        dirs: Vec<PathBuf>,
        /// Where compare.md, compare.html and the plot go.
        #[arg(long, default_value = "runs/compare")]
        out: PathBuf,
    },
    /// Evaluate a saved model on a data set.
    Evaluate {
        /// Model file (.safetensors written by distillery).
        model: PathBuf,
        /// IDX images file.
        #[arg(long, requires = "labels", conflicts_with_all = ["csv", "digits"])]
        images: Option<PathBuf>,
        /// IDX labels file.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// CSV file with a header row.
        #[arg(long, requires = "label", conflicts_with = "digits")]
        csv: Option<PathBuf>,
        /// CSV label column.
        #[arg(long)]
        label: Option<String>,
        /// Use the embedded digits.
        #[arg(long)]
        digits: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time a named workload: train-mlp, train-student, train-cnn, infer, infer-int8, gemm,
    /// their bf16 forms (train-mlp-bf16, …, infer-bf16, gemm-bf16), train-trees, infer-trees,
    /// collectives (under mpirun), ….
    Bench {
        /// Workload name.
        workload: String,
        /// Timed training steps or inference calls.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Model file for `infer` (default: a 784-1200-1200-10 MLP).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Convert a saved model (any precision) to ONNX or to a plain safetensors file.
    Export {
        /// Model file written by distillery (.safetensors or .safetensors.gz).
        model: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "onnx")]
        format: ExportFormat,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Predict with a saved model: an IDX file, a CSV file, a PNG image or a folder of PNGs.
    Predict {
        /// Model file written by distillery (.safetensors or .safetensors.gz).
        model: PathBuf,
        /// Inputs: IDX images, CSV with a header row, a .png image, or a folder of .png images.
        input: PathBuf,
        /// CSV column to ignore (the label column of a labelled file); for a text model, the
        /// column (or JSON field) holding the texts (default `text`).
        #[arg(long)]
        label: Option<String>,
        /// Write every prediction (class and all probabilities) to this CSV file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Inputs per forward pass.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an experiment file without running it.
    Check {
        /// Experiment file.
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ExportFormat {
    /// ONNX (opset 13): f32, or QDQ int8 for int8 models.
    Onnx,
    /// Plain (uncompressed) safetensors with distillery metadata.
    Safetensors,
}

/// Writes one line to stderr in one `write` call: under MPI several ranks share the pipe, and
/// `eprintln!`'s pieces (one write per formatted part) interleaved with another rank's, cutting
/// both messages ("error: rank 0error: rank  of 2: …"). A pipe write up to 4 KiB is atomic.
fn say_error(line: &str) {
    use std::io::Write;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

fn main() {
    distillery::tune_allocator();
    let cli = Cli::parse();
    // Built with the `mpi` feature, the verbs that run an experiment join MPI's world (a world
    // of one when not started by mpirun or srun).
    #[cfg(feature = "mpi")]
    let session = match &cli.verb {
        Verb::Run { .. }
        | Verb::Train { .. }
        | Verb::Distill { .. }
        | Verb::Demo { .. }
        | Verb::Bench { .. } => match distillery::dist::mpi_world() {
            Ok(s) => Some(s),
            Err(e) => {
                say_error(&format!("error: {e}"));
                std::process::exit(e.exit_code());
            }
        },
        _ => None,
    };
    let result = dispatch(cli);
    let job = distillery::dist::job();
    if let Err(e) = result {
        if job.size() > 1 {
            say_error(&format!(
                "error: rank {} of {}: {e}",
                job.rank(),
                job.size()
            ));
            if !distillery::dist::failure_is_agreed() {
                // The other ranks may wait in a collective for this one: end them all now.
                say_error(&format!(
                    "error: rank {}: ending every rank of the job",
                    job.rank()
                ));
                job.abort(e.exit_code());
            }
        } else {
            say_error(&format!("error: {e}"));
        }
        #[cfg(feature = "mpi")]
        drop(session);
        std::process::exit(e.exit_code());
    }
    #[cfg(feature = "mpi")]
    drop(session);
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.verb {
        Verb::Demo { out, common } => demo(&out, &common),
        Verb::Run {
            config,
            out,
            common,
        } => run(&config, &out, &common),
        Verb::Train {
            config,
            out,
            models,
            common,
        } => train(&config, &out, models, &common),
        Verb::Distill {
            config,
            teacher,
            out,
            common,
        } => distill(&config, &teacher, &out, &common),
        Verb::Evaluate {
            model,
            images,
            labels,
            csv,
            label,
            digits,
            json,
        } => evaluate(&model, images, labels, csv, label, digits, json),
        Verb::Check { config, common } => check(&config, &common),
        Verb::Report { dir } => {
            let md = distillery::report::rebuild(&dir)?;
            println!("{md}");
            println!(
                "report.md, report.html and plots/ written to {}",
                dir.display()
            );
            Ok(())
        }
        Verb::Compare { dirs, out } => {
            let md = distillery::report::compare(&dirs, &out)?;
            println!("{md}");
            println!(
                "compare.md, compare.html and the plot written to {}",
                out.display()
            );
            Ok(())
        }
        Verb::Export { model, format, out } => export(&model, format, &out),
        Verb::Predict {
            model,
            input,
            label,
            out,
            batch,
            json,
        } => predict(
            &model,
            &input,
            label.as_deref(),
            out.as_deref(),
            batch,
            json,
        ),
        Verb::Bench {
            workload,
            steps,
            model,
            json,
        } => {
            let r = distillery::bench::run(&workload, steps, model.as_deref())?;
            if distillery::dist::world().rank() != 0 {
                return Ok(());
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| Error::Other(e.to_string()))?
                );
            } else {
                println!("{}", r.describe());
            }
            Ok(())
        }
    }
}

/// The experiment file as written, with `--set` overrides and `--quick` applied.
fn load_raw(path: &Path, common: &Common) -> Result<config::ExperimentConfig> {
    let mut cfg = config::load(path, &common.set)?;
    if common.quick {
        cfg.make_quick();
    }
    Ok(cfg)
}

/// The experiment file, checked.
fn load_config(path: &Path, common: &Common) -> Result<config::CheckedConfig> {
    load_raw(path, common)?
        .validate()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

fn execute(
    cfg: &config::CheckedConfig,
    out: &Path,
    common: &Common,
    only: Option<Vec<String>>,
) -> Result<()> {
    // `train` (teachers only) skips the sub-model groups; `run` and `distill` include them.
    let groups = only
        .as_ref()
        .map(|o| {
            o.iter().any(|n| {
                cfg.models
                    .iter()
                    .any(|m| &m.name == n && m.role() != Role::Teacher)
            })
        })
        .unwrap_or(true);
    // Under MPI rank 0 speaks for the job; the others report only errors.
    let rank0 = distillery::dist::world().rank() == 0;
    let opts = RunOptions {
        out: out.to_path_buf(),
        progress: Progress::detect(common.quiet || !rank0),
        only,
        groups,
        arrays: None,
    };
    let summary = pipeline::run_experiment(cfg, &opts)?;
    if rank0 {
        println!("{}", summary.report_markdown);
        println!("results written to {}", out.display());
    }
    Ok(())
}

fn demo(out: &Path, common: &Common) -> Result<()> {
    let mut cfg = config::load_str(DEMO_CONFIG, "configs/demo.toml (embedded)", &common.set)?;
    if common.quick {
        cfg.make_quick();
    }
    execute(&cfg.validate()?, out, common, None)
}

fn run(path: &Path, out: &Path, common: &Common) -> Result<()> {
    let cfg = load_config(path, common)?;
    execute(&cfg, out, common, None)
}

fn train(path: &Path, out: &Path, models: Vec<String>, common: &Common) -> Result<()> {
    let cfg = load_config(path, common)?;
    let names: Vec<String> = if models.is_empty() {
        cfg.models
            .iter()
            .filter(|m| m.role() == Role::Teacher)
            .map(|m| m.name.clone())
            .collect()
    } else {
        for n in &models {
            if !cfg.models.iter().any(|m| &m.name == n) {
                return Err(Error::Input(format!(
                    "--model {n}: no [[model]] named '{n}' in {}",
                    path.display()
                )));
            }
        }
        models
    };
    if names.is_empty() {
        return Err(Error::Input(format!(
            "{}: no teacher model to train (name one with --model)",
            path.display()
        )));
    }
    execute(&cfg, out, common, Some(names))
}

fn distill(path: &Path, teacher: &str, out: &Path, common: &Common) -> Result<()> {
    let mut cfg = load_raw(path, common)?;
    let teachers: Vec<usize> = (0..cfg.models.len())
        .filter(|&i| cfg.models[i].role() == Role::Teacher)
        .collect();
    let (idx, file) = match teacher.split_once('=') {
        Some((name, file)) => {
            let i = cfg
                .models
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "--teacher {teacher}: no [[model]] named '{name}' in {}",
                        path.display()
                    ))
                })?;
            (i, PathBuf::from(file))
        }
        None => match teachers.as_slice() {
            [i] => (*i, PathBuf::from(teacher)),
            [] => {
                return Err(Error::Input(format!(
                    "{}: the experiment has no teacher model",
                    path.display()
                )))
            }
            _ => {
                return Err(Error::Input(format!(
                    "--teacher: {} has several teachers; use --teacher NAME=FILE",
                    path.display()
                )))
            }
        },
    };
    if !file.exists() {
        return Err(Error::Input(format!(
            "--teacher: model file '{}' does not exist",
            file.display()
        )));
    }
    cfg.models[idx].arch = None;
    cfg.models[idx].from = Some(file);
    let teacher_name = cfg.models[idx].name.clone();
    let cfg = cfg
        .validate()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let students: Vec<String> = cfg
        .models
        .iter()
        .filter(|m| m.role() != Role::Teacher || m.name == teacher_name)
        .map(|m| m.name.clone())
        .collect();
    execute(&cfg, out, common, Some(students))
}

fn evaluate(
    model: &Path,
    images: Option<PathBuf>,
    labels: Option<PathBuf>,
    csv: Option<PathBuf>,
    label: Option<String>,
    digits: bool,
    json: bool,
) -> Result<()> {
    let meta = distillery::compress::load_any(model)?.meta;
    let data = if let (Some(i), Some(l)) = (images, labels) {
        idx::load_idx_pair(&i, &l, None)?
    } else if let Some(c) = csv {
        let opts = CsvOptions {
            label: label.unwrap_or_default(),
            task: meta.task,
            // The model's own input shape is checked against the column count below.
            image_shape: None,
            extra: Vec::new(),
        };
        data::csv::read_csv(&c, &opts, None)?
    } else if digits {
        data::embedded_digits()?
    } else {
        return Err(Error::Input(
            "evaluate: give a data set: --images F --labels F, --csv F --label COL, or --digits"
                .into(),
        ));
    };
    let n = data.len();
    let (scores, meta) = pipeline::evaluate_file(model, data)?;
    if json {
        let v = serde_json::json!({
            "model": meta.name, "samples": n, "task": meta.task,
            "accuracy": scores.accuracy, "errors": scores.errors,
            "mse": scores.mse, "mae": scores.mae, "loss": scores.loss,
        });
        println!("{v}");
    } else {
        match meta.task {
            Task::Classification => println!(
                "{}: accuracy {:.2}% ({} errors in {n} samples), mean cross-entropy {:.4}",
                meta.name,
                100.0 * scores.accuracy.unwrap_or(0.0),
                scores.errors.unwrap_or(0),
                scores.loss
            ),
            Task::Regression => println!(
                "{}: MSE {:.4}, MAE {:.4} on {n} samples",
                meta.name,
                scores.mse.unwrap_or(f64::NAN),
                scores.mae.unwrap_or(f64::NAN)
            ),
        }
    }
    Ok(())
}

fn check(path: &Path, common: &Common) -> Result<()> {
    let cfg = load_config(path, common)?;
    let splits = pipeline::load_splits(&cfg)?;
    for m in &cfg.models {
        if let Some(a) = &m.arch {
            let spec = distillery::models::ModelSpec {
                arch: a.clone(),
                input_shape: splits.train.shape.clone(),
                outputs: splits.train.outputs(),
            };
            spec.param_shapes()
                .map_err(|e| Error::Input(format!("model.{}: {e}", m.name)))?;
            let n: usize = spec
                .param_shapes()?
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            if a.is_tree() {
                println!("model {}: {}", m.name, spec.describe());
            } else {
                println!("model {}: {} ({n} parameters)", m.name, spec.describe());
            }
        }
    }
    println!(
        "{}: OK ({} train / {} val / {} test samples)",
        path.display(),
        splits.train.len(),
        splits.val.len(),
        splits.test.len()
    );
    Ok(())
}

fn export(model: &Path, format: ExportFormat, out: &Path) -> Result<()> {
    let m = distillery::compress::load_any(model)?;
    let bytes = match format {
        ExportFormat::Onnx => distillery::compress::onnx::export(&m)?,
        ExportFormat::Safetensors => m.to_safetensors()?,
    };
    distillery::io::write_atomic(out, &bytes)?;
    println!(
        "{}: {} ({}, {}) → {} ({} bytes)",
        model.display(),
        m.meta.name,
        m.meta.spec.describe(),
        m.precision().as_str(),
        out.display(),
        bytes.len()
    );
    Ok(())
}

fn predict(
    model: &Path,
    input: &Path,
    label: Option<&str>,
    out: Option<&Path>,
    batch: usize,
    json: bool,
) -> Result<()> {
    if batch == 0 {
        return Err(Error::Input("--batch: must be at least 1".into()));
    }
    let m = distillery::compress::load_any(model)?;
    let inputs = match &m.meta.text {
        Some(f) => distillery::predict::read_text_inputs(input, f, label.unwrap_or("text"))?,
        None => distillery::predict::read_inputs(input, &m.meta.spec.input_shape, label)?,
    };
    let preds = distillery::predict::predict(&m, inputs, batch)?;
    if let Some(o) = out {
        distillery::io::write_atomic_str(o, &distillery::predict::to_csv(&m, &preds))?;
        eprintln!("{} predictions written to {}", preds.len(), o.display());
        return Ok(());
    }
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for p in &preds {
        let line = if json {
            serde_json::to_string(p).map_err(|e| Error::Other(e.to_string()))?
        } else if let Some(tasks) = &p.tasks {
            // A multi-task model: each head's answer, named.
            let mut parts = vec![p.input.clone()];
            for (name, t) in tasks {
                parts.push(
                    match (t.get("class"), t.get("probabilities"), t.get("value")) {
                        (Some(c), Some(pr), _) => {
                            let best = pr
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|v| v.as_f64())
                                .fold(0f64, f64::max);
                            format!("{name}={}\t{best:.4}", c.as_str().unwrap_or(""))
                        }
                        (_, _, Some(v)) => format!("{name}={v}"),
                        _ => {
                            let n = t
                                .get("embedding")
                                .and_then(|e| e.as_array())
                                .map_or(0, |e| e.len());
                            format!("{name}=[{n} values; --json or --out for them]")
                        }
                    },
                );
            }
            parts.join("\t")
        } else if let (Some(c), Some(pr)) = (&p.class, &p.probabilities) {
            let best = pr.iter().fold(0f32, |a, &b| a.max(b));
            format!("{}\t{c}\t{best:.4}", p.input)
        } else {
            format!("{}\t{}", p.input, p.value.unwrap_or(f32::NAN))
        };
        if writeln!(w, "{line}").is_err() {
            break; // closed pipe (e.g. `| head`)
        }
    }
    Ok(())
}
