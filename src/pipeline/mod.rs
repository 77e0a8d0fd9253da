//! Runs a whole experiment into an output folder.
//!
//! Stages run in file order: each `[[model]]` is trained (or loaded), then every model is
//! evaluated and the report written. A model is finished when `models/<name>.safetensors`
//! exists (written atomically), so a run killed and restarted with the same `--out` skips
//! finished models and continues the current one from its last epoch checkpoint.

mod compression;

use crate::config::{
    DataFormat, ExperimentConfig, FinalStudentConfig, ModelConfig, Role, SubmodelsConfig,
};
use crate::data::{self, csv::CsvOptions, idx, Dataset, NormalizeKind, Splits, Task};
use crate::error::{Error, Result};
use crate::eval::{self, Scores};
use crate::models::{self, Model, ModelMeta, ModelSpec};
use crate::progress::Progress;
use crate::report::{self, DataSummary, DistillSummary, Metrics, ModelMetrics, Ratios};
use crate::rng::Rng;
use crate::submodels::{self, GroupJob, GroupRecord};
use crate::train::{self, HintTerm, Objective, TeacherSignal, TrainJob, TrainRecord};
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
}

impl RunOptions {
    /// Defaults: progress lines or bars as the terminal allows, all models.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        RunOptions {
            out: out.into(),
            progress: Progress::detect(false),
            only: None,
            groups: true,
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
    let d = &cfg.data;
    let (full, test, default_norm) = match d.format {
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
            let opts = CsvOptions {
                label: d.label.clone().unwrap_or_default(),
                task: d.task,
                image_shape: d.image_shape.clone(),
            };
            let train = data::csv::read_csv(path, &opts, None)?;
            let test = match &d.test_path {
                Some(p) => {
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

fn data_source(cfg: &ExperimentConfig) -> String {
    let d = &cfg.data;
    match d.format {
        DataFormat::Digits => "embedded UCI 8×8 digits".into(),
        DataFormat::Idx => format!(
            "IDX {}",
            d.train_images
                .as_ref()
                .map(|p| p.display().to_string())
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

/// A trained or loaded model with what is known about it.
struct Entry {
    cfg: ModelConfig,
    model: Model,
    meta: ModelMeta,
    source: String,
    file: PathBuf,
}

/// Runs the experiment. The config must already carry any overrides; it is validated here
/// before anything else happens.
pub fn run_experiment(user_cfg: &ExperimentConfig, opts: &RunOptions) -> Result<RunSummary> {
    let start = Instant::now();
    user_cfg.validate()?;
    let resolved = user_cfg.to_toml()?;
    // Born-again generations and assistant chains become plain [[model]] entries.
    let expanded = crate::methods::expand(user_cfg);
    expanded.validate()?;
    let cfg = &expanded;
    let out = &opts.out;
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
        crate::io::write_atomic_str(&cfg_path, &resolved)?;
    }
    for sub in ["", "models", "checkpoints", "plots"] {
        crate::io::clean_temp_files(&out.join(sub));
    }

    let splits = load_splits(cfg)?;
    let shape = splits.train.shape.clone();
    let outputs = splits.train.outputs();
    let task = splits.train.targets.task();
    let progress = opts.progress;
    progress.say(&format!(
        "data: {} train / {} val / {} test samples, input {:?}, {} outputs",
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        shape,
        outputs
    ));

    // Check every model against the data before training anything.
    let selected = |m: &ModelConfig| {
        opts.only
            .as_ref()
            .map(|o| {
                // Models generated from a selected entry (assistants, born-again generations)
                // are selected with it.
                o.iter().any(|n| {
                    m.name == *n
                        || m.name.starts_with(&format!("{n}-ta"))
                        || m.name.starts_with(&format!("{n}-gen"))
                })
            })
            .unwrap_or(true)
    };
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
            let (model, meta) = models::load_model(f)?;
            models::check_fits(
                &model.spec,
                &shape,
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
                if !trained && t.map(|t| t.from.is_none()).unwrap_or(true) {
                    return Err(Error::Input(format!(
                        "model.{}.distill.teacher: teacher '{}' is not trained in this run folder; train it first or give --teacher FILE",
                        m.name, ds.teacher
                    )));
                }
            }
        }
    }

    let mut entries: Vec<Entry> = Vec::new();
    let needed: Vec<String> = cfg
        .models
        .iter()
        .filter(|m| selected(m))
        .filter_map(|m| m.distill.as_ref().map(|d| d.teacher.clone()))
        .collect();
    for m in &cfg.models {
        if !selected(m) && !needed.contains(&m.name) {
            continue;
        }
        let file = out.join("models").join(format!("{}.safetensors", m.name));
        let entry = if let Some(f) = &m.from {
            let (model, mut meta) = models::load_model(f)?;
            meta.name = m.name.clone();
            meta.role = m.role().as_str().into();
            Entry {
                cfg: m.clone(),
                model,
                meta,
                source: format!("loaded from {}", f.display()),
                file: f.clone(),
            }
        } else if file.exists() {
            let (model, meta) = models::load_model(&file)?;
            progress.say(&format!(
                "{}: already trained ({}); skipping",
                m.name,
                file.display()
            ));
            Entry {
                cfg: m.clone(),
                model,
                meta,
                source: "trained (earlier session)".into(),
                file,
            }
        } else if !selected(m) {
            return Err(Error::Input(format!(
                "model '{}' is needed as a teacher but is not trained in {}",
                m.name,
                out.display()
            )));
        } else {
            let (model, meta) = train_model(cfg, m, &splits, &entries, out, progress)?;
            Entry {
                cfg: m.clone(),
                model,
                meta,
                source: "trained".into(),
                file,
            }
        };
        entries.push(entry);
    }

    // Sub-model groups.
    let mut groups: Vec<GroupDone> = Vec::new();
    if opts.groups {
        for g in &cfg.submodels {
            groups.push(run_or_load_group(cfg, g, &splits, &entries, out, progress)?);
        }
    }

    // Compression stages.
    let stages = if cfg.prune.is_empty() && cfg.quantize.is_empty() {
        Vec::new()
    } else {
        let mut base: Vec<compression::Available> = entries
            .iter()
            .map(|e| compression::Available {
                name: e.cfg.name.clone(),
                model: &e.model,
                meta: e.meta.clone(),
            })
            .collect();
        for gd in &groups {
            for (name, m, _) in &gd.members {
                base.push(compression::Available {
                    name: name.clone(),
                    model: m,
                    meta: model_meta(name, "submodel", m, &splits, serde_json::Value::Null),
                });
            }
            if let Some((f, m, _, meta)) = &gd.final_student {
                base.push(compression::Available {
                    name: f.name.clone(),
                    model: m,
                    meta: meta.clone(),
                });
            }
        }
        compression::run_stages(cfg, &splits, base, out, progress)?
    };

    // Evaluate.
    progress.say("evaluating on the test split (accuracy, latency at batch 1 and 256)...");
    let mut rows: Vec<ModelMetrics> = Vec::new();
    let ev = |p: &dyn eval::Predictor| -> Result<(Scores, f64, f64)> {
        Ok((
            eval::evaluate(p, &splits.test, splits.target_scale.as_ref())?,
            eval::latency_us(p, &splits.test, 1, &cfg.eval)?,
            eval::latency_us(p, &splits.test, 256, &cfg.eval)?,
        ))
    };
    for e in entries.iter().filter(|e| selected(&e.cfg)) {
        let (scores, b1, b256) = ev(&e.model)?;
        let training: Option<TrainRecord> = serde_json::from_value(e.meta.training.clone()).ok();
        let distill = e.cfg.distill.as_ref().map(|d| DistillSummary {
            teacher: d.teacher.clone(),
            temperature: d.temperature,
            alpha: d.alpha,
            loss: (d.loss != crate::losses::SoftLoss::Kd).then(|| d.loss.describe().to_uppercase()),
        });
        rows.push(row(
            &e.cfg.name,
            e.cfg.role().as_str(),
            &e.model,
            &e.file,
            scores,
            b1,
            b256,
            distill,
            &e.source,
            training,
        ));
    }
    for gd in &groups {
        for (i, (name, m, file)) in gd.members.iter().enumerate() {
            let (scores, b1, b256) = ev(m)?;
            let phase1 = gd.record.phase1.get(i).cloned();
            rows.push(row(
                name, "submodel", m, file, scores, b1, b256, None, &gd.source, phase1,
            ));
        }
        let regression = task == Task::Regression;
        let ens = eval::Ensemble {
            members: gd.members.iter().map(|(_, m, _)| m).collect(),
            regression,
        };
        let (scores, b1, b256) = ev(&ens)?;
        let params: usize = gd.members.iter().map(|(_, m, _)| m.num_params()).sum();
        let (first, first_file) = gd
            .members
            .first()
            .map(|(_, m, f)| (m, f))
            .ok_or_else(|| Error::Other(format!("group {} has no members", gd.record.name)))?;
        let mut ens_row = row(
            &format!("{}-ensemble", gd.record.name),
            "ensemble",
            first,
            first_file,
            scores,
            b1,
            b256,
            None,
            &gd.source,
            None,
        );
        ens_row.architecture = format!(
            "average of {} sub-models ({})",
            gd.members.len(),
            gd.members
                .iter()
                .map(|(_, m, _)| m.spec.describe())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ens_row.params = params;
        ens_row.bytes = params * 4;
        ens_row.file_bytes = gd
            .members
            .iter()
            .map(|(_, _, f)| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        rows.push(ens_row);
        if let Some((fcfg, m, file, meta)) = &gd.final_student {
            let (scores, b1, b256) = ev(m)?;
            let training: Option<TrainRecord> = serde_json::from_value(meta.training.clone()).ok();
            let distill = Some(DistillSummary {
                teacher: format!("{}-ensemble", gd.record.name),
                temperature: fcfg.temperature,
                alpha: fcfg.alpha,
                loss: None,
            });
            rows.push(row(
                &fcfg.name, "student", m, file, scores, b1, b256, distill, &gd.source, training,
            ));
        }
    }
    for st in &stages {
        let (scores, b1, b256) = ev(&st.model)?;
        rows.push(compression::stage_row(st, scores, b1, b256)?);
    }
    let reference = cfg
        .models
        .iter()
        .find(|m| m.role() == Role::Teacher && rows.iter().any(|r| r.name == m.name))
        .map(|m| m.name.clone());
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
    let metrics = Metrics {
        experiment: cfg.name.clone(),
        distillery_version: env!("CARGO_PKG_VERSION").into(),
        seed: cfg.seed,
        task,
        data: DataSummary {
            source: data_source(cfg),
            input_shape: shape,
            train: splits.train.len(),
            val: splits.val.len(),
            test: splits.test.len(),
            classes: splits.train.class_names().map(|c| c.to_vec()),
        },
        models: rows,
        transfer_rounds: groups
            .iter()
            .flat_map(|g| g.record.rounds.clone())
            .collect(),
        submodel_groups: groups.iter().map(|g| g.record.clone()).collect(),
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    let md = report::write_reports(out, &metrics)?;
    Ok(RunSummary {
        metrics,
        report_markdown: md,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    name: &str,
    role: &str,
    m: &Model,
    file: &Path,
    scores: Scores,
    b1: f64,
    b256: f64,
    distill: Option<DistillSummary>,
    source: &str,
    training: Option<TrainRecord>,
) -> ModelMetrics {
    ModelMetrics {
        name: name.to_string(),
        role: role.to_string(),
        architecture: m.spec.describe(),
        params: m.num_params(),
        bytes: m.bytes(),
        file_bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        precision: "f32".into(),
        accuracy: scores.accuracy,
        test_errors: scores.errors,
        mse: scores.mse,
        mae: scores.mae,
        test_loss: scores.loss,
        latency_us_b1: b1,
        latency_us_b256: b256,
        vs_teacher: None,
        distill,
        source: source.to_string(),
        training,
        nonzero_params: None,
        compression: None,
        kernel: None,
    }
}

/// A finished sub-model group.
struct GroupDone {
    record: GroupRecord,
    members: Vec<(String, Model, PathBuf)>,
    final_student: Option<(FinalStudentConfig, Model, PathBuf, ModelMeta)>,
    source: String,
}

pub(crate) fn model_meta(
    name: &str,
    role: &str,
    model: &Model,
    splits: &Splits,
    training: serde_json::Value,
) -> ModelMeta {
    ModelMeta {
        name: name.to_string(),
        role: role.to_string(),
        spec: model.spec.clone(),
        task: splits.train.targets.task(),
        class_names: splits.train.class_names().map(|c| c.to_vec()),
        normalizer: splits.normalizer.clone(),
        target_scale: splits.target_scale,
        training,
        quantization: None,
        compression: None,
    }
}

/// Runs a sub-model group (or loads it when a previous session finished it), then its final
/// student. The group is finished when `models/<group>.group.json` exists; it is written after
/// every member's model file.
fn run_or_load_group(
    cfg: &ExperimentConfig,
    g: &SubmodelsConfig,
    splits: &Splits,
    entries: &[Entry],
    out: &Path,
    progress: Progress,
) -> Result<GroupDone> {
    let mdir = out.join("models");
    let group_file = mdir.join(format!("{}.group.json", g.name));
    let member_files: Vec<PathBuf> = (0..g.k)
        .map(|i| mdir.join(format!("{}-{}.safetensors", g.name, i + 1)))
        .collect();
    let teacher = g
        .teacher
        .as_ref()
        .and_then(|t| entries.iter().find(|e| &e.cfg.name == t))
        .map(|e| &e.model);
    let (record, members, source) = if group_file.exists() {
        progress.say(&format!(
            "{}: sub-models already trained ({}); skipping",
            g.name,
            group_file.display()
        ));
        let text = std::fs::read_to_string(&group_file).map_err(|e| Error::io(&group_file, e))?;
        let record: GroupRecord = serde_json::from_str(&text).map_err(|e| {
            Error::Input(format!(
                "{}: malformed group record: {e}",
                group_file.display()
            ))
        })?;
        let members = member_files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                Ok((
                    format!("{}-{}", g.name, i + 1),
                    models::load_model(f)?.0,
                    f.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        (record, members, "trained (earlier session)".to_string())
    } else {
        let outcome = submodels::run_group(GroupJob {
            cfg: g,
            splits,
            teacher,
            seed: cfg.seed,
            out,
            progress,
        })?;
        let mut members = Vec::new();
        for (i, ((name, m), f)) in outcome.members.into_iter().zip(&member_files).enumerate() {
            let training = serde_json::to_value(&outcome.record.phase1[i])
                .map_err(|e| Error::Other(e.to_string()))?;
            models::save_model(f, &m, &model_meta(&name, "submodel", &m, splits, training))?;
            members.push((name, m, f.clone()));
        }
        let json = serde_json::to_string_pretty(&outcome.record)
            .map_err(|e| Error::Other(e.to_string()))?;
        crate::io::write_atomic_str(&group_file, &json)?;
        let _ = std::fs::remove_file(
            out.join("checkpoints")
                .join(format!("{}.rounds.safetensors", g.name)),
        );
        (outcome.record, members, "trained".to_string())
    };
    let final_student = match &g.final_student {
        None => None,
        Some(f) => {
            let file = mdir.join(format!("{}.safetensors", f.name));
            if file.exists() {
                let (m, meta) = models::load_model(&file)?;
                Some((f.clone(), m, file, meta))
            } else {
                let regression = splits.train.targets.task() == Task::Regression;
                let outs: Vec<Vec<f32>> = members
                    .iter()
                    .map(|(_, m, _)| m.predict(&splits.train.x, 512))
                    .collect::<Result<_>>()?;
                let refs: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
                let soft = if regression {
                    crate::losses::mutual::mean_outputs(&refs)
                } else {
                    let c = splits.train.outputs();
                    crate::losses::mutual::probs_as_logits(
                        &crate::losses::mutual::peer_average(&refs, c, f.temperature),
                        f.temperature,
                    )
                };
                let spec = ModelSpec {
                    arch: f.arch.clone(),
                    input_shape: splits.train.shape.clone(),
                    outputs: splits.train.outputs(),
                };
                let model = Model::new(
                    spec,
                    &mut Rng::derive(cfg.seed, &format!("init/{}", f.name)),
                )?;
                progress.say(&format!(
                    "{}: distilling the {}-ensemble into {}",
                    f.name,
                    g.name,
                    model.spec.describe()
                ));
                let objective =
                    Objective::hinton(TeacherSignal::Cached(soft), f.temperature, f.alpha);
                let meta = fit_and_save(
                    cfg.seed,
                    &f.name,
                    "student",
                    &model,
                    &f.train,
                    objective,
                    splits,
                    out,
                    progress,
                    Vec::new(),
                    None,
                )?;
                Some((f.clone(), model, file, meta))
            }
        }
    };
    Ok(GroupDone {
        record,
        members,
        final_student,
        source,
    })
}

fn train_model(
    cfg: &ExperimentConfig,
    m: &ModelConfig,
    splits: &Splits,
    done: &[Entry],
    out: &Path,
    progress: Progress,
) -> Result<(Model, ModelMeta)> {
    let arch = m
        .arch
        .clone()
        .ok_or_else(|| Error::Input(format!("model.{}.arch: required", m.name)))?;
    let spec = ModelSpec {
        arch,
        input_shape: splits.train.shape.clone(),
        outputs: splits.train.outputs(),
    };
    let mut init_rng = Rng::derive(cfg.seed, &format!("init/{}", m.name));
    let model = Model::new(spec, &mut init_rng)?;
    let teacher = match &m.distill {
        Some(ds) => Some(
            done.iter()
                .find(|e| e.cfg.name == ds.teacher)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "model.{}.distill.teacher: '{}' is not available",
                        m.name, ds.teacher
                    ))
                })?,
        ),
        None => None,
    };
    let objective = match (&m.distill, teacher) {
        (Some(ds), Some(t)) => {
            let signal = if m.train.jitter == 0 {
                progress.say(&format!(
                    "{}: computing {}'s soft targets once for the whole training set",
                    m.name, t.cfg.name
                ));
                TeacherSignal::Cached(t.model.predict(&splits.train.x, 512)?)
            } else {
                TeacherSignal::Live(&t.model)
            };
            let mut obj = Objective::distill(signal, ds.loss, ds.temperature, ds.alpha);
            obj.hint = ds.hint.as_ref().map(|h| HintTerm {
                teacher: &t.model,
                teacher_layer: h.teacher_layer,
                student_layer: h.student_layer,
                weight: h.weight,
            });
            obj
        }
        _ => Objective::supervised(),
    };
    progress.say(&format!(
        "{}: training {} ({} parameters) for up to {} epochs",
        m.name,
        model.spec.describe(),
        model.num_params(),
        m.train.epochs
    ));
    let meta = fit_and_save(
        cfg.seed,
        &m.name,
        m.role().as_str(),
        &model,
        &m.train,
        objective,
        splits,
        out,
        progress,
        Vec::new(),
        None,
    )?;
    Ok((model, meta))
}

/// Trains `model` on the training split with a per-epoch checkpoint in `checkpoints/`, saves it
/// atomically as `models/<name>.safetensors` with its training record, then drops the checkpoint
/// (the model file now marks the stage as finished).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_and_save(
    seed: u64,
    name: &str,
    role: &str,
    model: &Model,
    train_cfg: &crate::config::TrainConfig,
    objective: Objective,
    splits: &Splits,
    out: &Path,
    progress: Progress,
    hooks: Vec<Box<dyn train::StepHook + '_>>,
    compression: Option<crate::compress::StageRecord>,
) -> Result<ModelMeta> {
    let ckpt = out
        .join("checkpoints")
        .join(format!("{name}.ckpt.safetensors"));
    let record = train::fit(
        model,
        TrainJob {
            name,
            cfg: train_cfg,
            train: &splits.train,
            val: &splits.val,
            objective,
            fill: splits.normalizer.zero_value(),
            checkpoint: Some(ckpt.clone()),
            seed,
            progress,
            hooks,
        },
    )?;
    let training = serde_json::to_value(&record).map_err(|e| Error::Other(e.to_string()))?;
    let mut meta = model_meta(name, role, model, splits, training);
    meta.compression = compression;
    models::save_model(
        &out.join("models").join(format!("{name}.safetensors")),
        model,
        &meta,
    )?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(meta)
}

/// Evaluates a saved model on a data set given by raw files (the normalisation stored in the
/// model file is applied). Returns the scores and the number of samples.
pub fn evaluate_file(model_path: &Path, data: Dataset) -> Result<(Scores, ModelMeta)> {
    let model = crate::compress::load_any(model_path)?;
    let meta = model.meta.clone();
    let mut data = data;
    // Only the input must fit: a test file may hold fewer classes than the model knows (the
    // class names are mapped below), and regression files have one target.
    if meta.spec.input_dim() != data.dim() {
        return Err(Error::Input(format!(
            "{}: the model takes inputs of shape {:?} but the data have shape {:?}",
            model_path.display(),
            meta.spec.input_shape,
            data.shape
        )));
    }
    if meta.task != data.targets.task() {
        return Err(Error::Input(format!(
            "{}: a {:?} model cannot be evaluated on {:?} data",
            model_path.display(),
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
                        "the data hold class '{}', which model {} does not know (classes: {})",
                        dn[*l as usize],
                        model_path.display(),
                        names.join(", ")
                    )))
                }
            }
        }
        *dn = names.clone();
    }
    let scores = eval::evaluate(&model, &data, meta.target_scale.as_ref())?;
    Ok((scores, meta))
}
