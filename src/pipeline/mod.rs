//! Runs a whole experiment into an output folder.
//!
//! Stages run in file order: each `[[model]]` is trained (or loaded), then every model is
//! evaluated and the report written. A model is finished when `models/<name>.safetensors`
//! exists (written atomically), so a run killed and restarted with the same `--out` skips
//! finished models and continues the current one from its last epoch checkpoint.

use crate::config::{CheckedConfig, DataFormat, ExperimentConfig, ModelConfig, Role};
use crate::data::{self, csv::CsvOptions, idx, Dataset, NormalizeKind, Splits};
use crate::error::{Error, Result};
use crate::eval::{self, Scores};
use crate::models::{self, ModelMeta, ModelSpec};
use crate::progress::Progress;
use crate::report::{self, DataSummary, Metrics, ModelMetrics, Ratios};
use crate::store::RunStore;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of one invocation.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Progress display.
    pub progress: Progress,
    /// Train only these models (others are neither trained nor reported).
    pub only: Option<Vec<String>>,
    /// Run the `[[submodels]]` groups (off when training teachers alone).
    pub groups: bool,
    /// The data and teacher outputs of `data.format = "arrays"`, given in memory.
    pub arrays: Option<std::sync::Arc<data::Arrays>>,
}

impl RunOptions {
    /// Defaults: progress lines or bars as the terminal allows, all models.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        RunOptions {
            out: out.into(),
            progress: Progress::detect(false),
            only: None,
            groups: true,
            arrays: None,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// All figures.
    pub metrics: Metrics,
    /// The Markdown report.
    pub report_markdown: String,
}

/// Loads the data the config names and makes the train/val/test splits.
pub fn load_splits(cfg: &ExperimentConfig) -> Result<Splits> {
    load_splits_with(cfg, None)
}

/// Like [`load_splits`], with the arrays of `data.format = "arrays"` when the caller gave them.
/// With `data.labels_per_class`, the training split keeps that many labels per class.
pub fn load_splits_with(cfg: &ExperimentConfig, arrays: Option<&data::Arrays>) -> Result<Splits> {
    let mut s = read_splits(cfg, arrays)?;
    if let Some(n) = cfg.data.labels_per_class {
        let mut rng = crate::rng::Rng::derive(cfg.seed, "labels-per-class");
        s.train.keep_labels_per_class(n, &mut rng);
    }
    Ok(s)
}

fn read_splits(cfg: &ExperimentConfig, arrays: Option<&data::Arrays>) -> Result<Splits> {
    let d = &cfg.data;
    let (full, test, default_norm) = match d.format {
        DataFormat::Text => return load_text_splits(cfg),
        DataFormat::Arrays => {
            let a = arrays.and_then(|a| a.data.clone()).ok_or_else(|| {
                Error::Input(
                    "data.format = \"arrays\": the data are arrays given from Python (distillery.distill, distillery.submodels); an experiment file names csv, idx, digits or text data".into(),
                )
            })?;
            if let Some(s) = &d.image_shape {
                if &a.shape != s {
                    return Err(Error::Input(format!(
                        "data.image_shape: {s:?}, but the arrays' samples have shape {:?}",
                        a.shape
                    )));
                }
            }
            let test = arrays.and_then(|a| a.test.clone());
            if let Some(t) = &test {
                if t.shape != a.shape {
                    return Err(Error::Input(format!(
                        "test arrays: samples of shape {:?}, but the training arrays' are {:?}",
                        t.shape, a.shape
                    )));
                }
                if t.targets.task() != a.targets.task() {
                    return Err(Error::Input(
                        "test arrays: the targets are not of the same task as the training arrays' (class labels against values)".into(),
                    ));
                }
            }
            let norm = if a.shape.len() == 3 {
                NormalizeKind::Global
            } else {
                NormalizeKind::PerFeature
            };
            (a, test, norm)
        }
        DataFormat::Digits => (data::embedded_digits()?, None, NormalizeKind::Global),
        DataFormat::Idx => {
            let ti = d
                .train_images
                .as_deref()
                .ok_or_else(|| Error::Input("data.train_images: required".into()))?;
            let tl = d
                .train_labels
                .as_deref()
                .ok_or_else(|| Error::Input("data.train_labels: required".into()))?;
            let train = idx::load_idx_pair(ti, tl, None)?;
            let test = match (&d.test_images, &d.test_labels) {
                (Some(i), Some(l)) => {
                    let t = idx::load_idx_pair(i, l, Some(train.outputs()))?;
                    if t.shape != train.shape {
                        return Err(Error::Input(format!(
                            "{}: test images have shape {:?} but training images {:?}",
                            i.display(),
                            t.shape,
                            train.shape
                        )));
                    }
                    Some(t)
                }
                _ => None,
            };
            (train, test, NormalizeKind::Global)
        }
        DataFormat::Csv => {
            let path = d
                .path
                .as_deref()
                .ok_or_else(|| Error::Input("data.path: required".into()))?;
            let mut opts = CsvOptions {
                label: d.label.clone().unwrap_or_default(),
                task: d.task,
                image_shape: d.image_shape.clone(),
                extra: d
                    .targets
                    .iter()
                    .map(|t| (t.column.clone(), t.task, None))
                    .collect(),
            };
            let train = data::csv::read_csv(path, &opts, None)?;
            let test = match &d.test_path {
                Some(p) => {
                    // The test file's further class columns keep the training file's classes.
                    for (o, e) in opts.extra.iter_mut().zip(&train.extra) {
                        o.2 = match &e.targets {
                            data::Targets::Classes { names, .. } => Some(names.clone()),
                            data::Targets::Values(_) => None,
                        };
                    }
                    let t = data::csv::read_csv(p, &opts, train.class_names())?;
                    if t.dim() != train.dim() {
                        return Err(Error::Input(format!(
                            "{}: {} feature columns, but the training file has {}",
                            p.display(),
                            t.dim(),
                            train.dim()
                        )));
                    }
                    Some(t)
                }
                None => None,
            };
            let norm = if d.image_shape.is_some() {
                NormalizeKind::Global
            } else {
                NormalizeKind::PerFeature
            };
            (train, test, norm)
        }
    };
    Splits::make(
        full,
        test,
        d.val_fraction,
        d.test_fraction,
        d.normalize.unwrap_or(default_norm),
        d.max_train,
        d.max_test,
        cfg.seed,
    )
}

/// Text data: reads the texts and labels, featurizes them for the students and keeps the
/// texts for text teachers. No normalisation (the features are token ids).
fn load_text_splits(cfg: &ExperimentConfig) -> Result<Splits> {
    use crate::data::text;
    let d = &cfg.data;
    let path = d
        .path
        .as_deref()
        .ok_or_else(|| Error::Input("data.path: required".into()))?;
    let fc = d
        .features
        .as_ref()
        .ok_or_else(|| Error::Input("data.features: required".into()))?;
    let col = d.text_column.as_deref().unwrap_or("text");
    let label = d.labels.then(|| d.label.as_deref().unwrap_or("label"));
    let f = text::Featurizer::from_config(fc)?;
    let rows = text::read_text_file(path, col, label)?;
    // Unlabelled texts: one placeholder class, never trained on (validation allows only
    // embedding distillation, which reads no label).
    let unlabelled = |n: usize| data::Targets::Classes {
        labels: vec![0; n],
        names: vec!["(unlabelled)".into()],
    };
    let targets = match label {
        Some(_) => text::class_targets(&rows.labels, None, &path.display().to_string())?,
        None => unlabelled(rows.texts.len()),
    };
    let names = match &targets {
        data::Targets::Classes { names, .. } => names.clone(),
        data::Targets::Values(_) => Vec::new(),
    };
    let full = text::text_dataset(rows, targets, &f)?;
    let test = match &d.test_path {
        Some(p) => {
            let rows = text::read_text_file(p, col, label)?;
            let t = match label {
                Some(_) => {
                    text::class_targets(&rows.labels, Some(&names), &p.display().to_string())?
                }
                None => unlabelled(rows.texts.len()),
            };
            Some(text::text_dataset(rows, t, &f)?)
        }
        None => None,
    };
    let mut s = Splits::make(
        full,
        test,
        d.val_fraction,
        d.test_fraction,
        NormalizeKind::None,
        d.max_train,
        d.max_test,
        cfg.seed,
    )?;
    s.featurizer = Some(f);
    Ok(s)
}

fn data_source(cfg: &ExperimentConfig, splits: &Splits) -> String {
    let d = &cfg.data;
    match d.format {
        DataFormat::Digits => "embedded UCI 8×8 digits".into(),
        DataFormat::Arrays => format!(
            "arrays given from Python ({} samples{})",
            splits.source_rows,
            if splits.test_from_file {
                ", and a test set"
            } else {
                ""
            }
        ),
        DataFormat::Idx => format!(
            "IDX {}",
            d.train_images
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        DataFormat::Text => format!(
            "text {} (label '{}'; {})",
            d.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            d.label.as_deref().unwrap_or("label"),
            splits
                .featurizer
                .as_ref()
                .map(|f| f.describe())
                .unwrap_or_default()
        ),
        DataFormat::Csv => format!(
            "CSV {} (label '{}')",
            d.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            d.label.clone().unwrap_or_default()
        ),
    }
}

/// Runs the experiment. The config must already carry any overrides; it is validated here
/// before anything else happens.
pub fn run_experiment(checked: &CheckedConfig, opts: &RunOptions) -> Result<RunSummary> {
    let start = Instant::now();
    // Born-again generations and assistant chains are plain [[model]] entries here.
    let cfg: &ExperimentConfig = checked;
    let resolved = checked.resolved_toml();
    let out = &opts.out;
    crate::dist::check_launch()?;
    crate::dist::check_same_run(resolved, out)?;
    claim_folder(out, resolved, opts.arrays.as_deref())?;
    let splits = load_splits_with(cfg, opts.arrays.as_deref())?;
    let shape = splits.train.shape.clone();
    let outputs = splits.train.outputs();
    let task = splits.train.targets.task();
    let progress = opts.progress;
    progress.say(&format!(
        "data: {} train{} / {} val / {} test samples, input {:?}, {} outputs",
        splits.train.len(),
        match splits.train.labelled() {
            n if n < splits.train.len() => format!(" ({n} labelled)"),
            _ => String::new(),
        },
        splits.val.len(),
        splits.test.len(),
        shape,
        outputs
    ));

    // Check every model against the data before training anything.
    let only = opts.only.as_deref();
    check_models(cfg, opts, &splits, out)?;

    for t in &cfg.teachers {
        crate::stages::teacher::preflight(t, &splits)?;
    }
    let stages = checked.stages(only, opts.groups);
    let mut store = RunStore::open(out, splits, cfg.seed, cfg.eval.clone(), progress)?;
    store.arrays = opts.arrays.clone();
    for stage in &stages {
        stage.run(&mut store)?;
    }

    // The report, from the store's records alone.
    let mut rows: Vec<ModelMetrics> = store.records().to_vec();
    compare_with_teacher(cfg, &mut rows);
    let splits = &store.splits;
    let metrics = Metrics {
        experiment: cfg.name.clone(),
        distillery_version: env!("CARGO_PKG_VERSION").into(),
        seed: cfg.seed,
        task,
        data: DataSummary {
            source: data_source(cfg, splits),
            input_shape: shape,
            train: splits.train.len(),
            val: splits.val.len(),
            test: splits.test.len(),
            classes: splits.train.class_names().map(|c| c.to_vec()),
        },
        models: rows,
        transfer_rounds: store
            .groups()
            .iter()
            .flat_map(|g| g.rounds.clone())
            .collect(),
        submodel_groups: store.groups().to_vec(),
        exports: store.exports().to_vec(),
        wall_seconds: start.elapsed().as_secs_f64(),
        ranks: (crate::dist::world().size() > 1).then(|| crate::dist::world().size()),
    };
    let md = report::write_reports(out, &metrics)?;
    Ok(RunSummary {
        metrics,
        report_markdown: md,
    })
}

/// Makes `out` this run's folder: the resolved config saved there, or, when a run is already
/// there, the same config (and the same arrays, for a run on arrays) required of it.
fn claim_folder(out: &Path, resolved: &str, arrays: Option<&crate::data::Arrays>) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.toml");
    if cfg_path.exists() {
        let old = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        if old != resolved {
            return Err(Error::Input(format!(
                "{}: this output folder holds a run of a different config; use another --out (or delete the folder) to start a new run",
                cfg_path.display()
            )));
        }
    } else {
        crate::io::write_atomic_str(&cfg_path, resolved)?;
        if !cfg_path.exists() {
            return Err(Error::Input(format!(
                "{}: rank 0 wrote it and rank {} cannot see it: --out must be a folder every rank shares (a shared file system)",
                cfg_path.display(),
                crate::dist::world().rank()
            )));
        }
    }

    if let Some(a) = arrays {
        // A run folder is resumed only on the same arrays.
        let digest = a.digest();
        let f = out.join("arrays.sha256");
        if f.exists() {
            let old = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            if old.trim() != digest {
                return Err(Error::Input(format!(
                    "{}: this output folder holds a run on other arrays; use another out folder (or delete it) to start a new run",
                    out.display()
                )));
            }
        } else {
            crate::io::write_atomic_str(&f, &digest)?;
        }
    }
    Ok(())
}

/// Every model's shapes, `from` file and synthetic samples checked against the data, and a
/// teacher trained before a student of `--only` needs it: before any work starts.
fn check_models(
    cfg: &ExperimentConfig,
    opts: &RunOptions,
    splits: &Splits,
    out: &Path,
) -> Result<()> {
    let (shape, outputs) = (&splits.train.shape, splits.train.outputs());
    let task = splits.train.targets.task();
    let only = opts.only.as_deref();
    let selected = |m: &ModelConfig| CheckedConfig::selects(only, m);
    for m in &cfg.models {
        if let Some(a) = &m.arch {
            let spec = ModelSpec {
                arch: a.clone(),
                input_shape: shape.clone(),
                outputs,
            };
            spec.param_shapes()
                .map_err(|e| Error::Input(format!("model.{}: {e}", m.name)))?;
        }
        if let Some(f) = &m.from {
            let any = crate::compress::load_any(f)?;
            let meta = &any.meta;
            models::check_fits(
                &meta.spec,
                shape,
                outputs,
                &format!("model.{}.from ({})", m.name, f.display()),
            )?;
            if meta.task != task {
                return Err(Error::Input(format!(
                    "model.{}.from: {} is a {:?} model but the data are {:?}",
                    m.name,
                    f.display(),
                    meta.task,
                    task
                )));
            }
        }
        if let Some(sc) = m.distill.as_ref().and_then(|d| d.synthetic.as_ref()) {
            crate::data::munge::check_fits_memory(
                sc.samples,
                splits.train.len(),
                splits.train.dim(),
                outputs,
                &format!("model.{}.distill.synthetic.samples", m.name),
            )?;
        }
        if let Some(ds) = &m.distill {
            if selected(m)
                && opts
                    .only
                    .as_ref()
                    .map(|o| !o.contains(&ds.teacher))
                    .unwrap_or(false)
            {
                let t = cfg.models.iter().find(|t| t.name == ds.teacher);
                let trained = out
                    .join("models")
                    .join(format!("{}.safetensors", ds.teacher))
                    .exists();
                let outside = cfg.teachers.iter().any(|t| t.name == ds.teacher);
                if !trained && !outside && t.map(|t| t.from.is_none()).unwrap_or(true) {
                    return Err(Error::Input(format!(
                        "model.{}.distill.teacher: teacher '{}' is not trained in this run folder; train it first or give --teacher FILE",
                        m.name, ds.teacher
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Every row's size, accuracy, errors and latency against the run's teacher: its first
/// [[model]] teacher that ran, else its first outside teacher that ran here.
fn compare_with_teacher(cfg: &ExperimentConfig, rows: &mut [ModelMetrics]) {
    let reference = cfg
        .models
        .iter()
        .find(|m| m.role() == Role::Teacher && rows.iter().any(|r| r.name == m.name))
        .map(|m| m.name.clone())
        .or_else(|| {
            // No [[model]] teacher: the first outside teacher that ran here.
            cfg.teachers
                .iter()
                .find(|t| {
                    rows.iter()
                        .any(|r| r.name == t.name && r.latency_us_b1 > 0.0)
                })
                .map(|t| t.name.clone())
        });
    if let Some(rn) = &reference {
        if let Some(t) = rows.iter().find(|r| &r.name == rn).cloned() {
            for r in rows.iter_mut() {
                r.vs_teacher = Some(Ratios {
                    reference: rn.clone(),
                    params: r.params as f64 / t.params as f64,
                    bytes: r.bytes as f64 / t.bytes as f64,
                    accuracy: r.accuracy.zip(t.accuracy).map(|(a, b)| a / b),
                    test_errors: r
                        .test_errors
                        .zip(t.test_errors)
                        .map(|(a, b)| a as f64 / (b.max(1)) as f64),
                    mse: r.mse.zip(t.mse).map(|(a, b)| a / b),
                    latency_b1: r.latency_us_b1 / t.latency_us_b1,
                    latency_b256: r.latency_us_b256 / t.latency_us_b256,
                });
            }
        }
    }
}

/// Evaluates a saved model on a data set given by raw files (the normalisation stored in the
/// model file is applied). Returns the scores and the number of samples.
pub fn evaluate_file(model_path: &Path, data: Dataset) -> Result<(Scores, ModelMeta)> {
    let model = crate::compress::load_any(model_path)?;
    let scores = evaluate_model(&model, data, &model_path.display().to_string())?;
    Ok((scores, model.meta))
}

/// Evaluates a model on raw data (its normalisation is applied here); `name` names the model
/// in messages.
pub fn evaluate_model(
    model: &crate::compress::AnyModel,
    data: Dataset,
    name: &str,
) -> Result<Scores> {
    let meta = &model.meta;
    let mut data = data;
    // Only the input must fit: a test file may hold fewer classes than the model knows (the
    // class names are mapped below), and regression files have one target.
    if meta.spec.input_dim() != data.dim() {
        return Err(Error::Input(format!(
            "{name}: the model takes inputs of shape {:?} but the data have shape {:?}",
            meta.spec.input_shape, data.shape
        )));
    }
    if meta.task != data.targets.task() {
        return Err(Error::Input(format!(
            "{name}: a {:?} model cannot be evaluated on {:?} data",
            meta.task,
            data.targets.task()
        )));
    }
    let dim = data.dim();
    meta.normalizer.apply(&mut data.x, dim);
    if let (Some(ts), data::Targets::Values(v)) = (&meta.target_scale, &mut data.targets) {
        for t in v.iter_mut() {
            *t = ts.forward(*t);
        }
    }
    if let (Some(names), data::Targets::Classes { labels, names: dn }) =
        (&meta.class_names, &mut data.targets)
    {
        // Map the file's class names onto the model's.
        let map: Vec<Option<usize>> = dn
            .iter()
            .map(|n| names.iter().position(|m| m == n))
            .collect();
        for l in labels.iter_mut() {
            match map[*l as usize] {
                Some(k) => *l = k as u32,
                None => {
                    return Err(Error::Input(format!(
                        "the data hold class '{}', which model {name} does not know (classes: {})",
                        dn[*l as usize],
                        names.join(", ")
                    )))
                }
            }
        }
        *dn = names.clone();
    }
    eval::evaluate(model, &data, meta.target_scale.as_ref())
}
