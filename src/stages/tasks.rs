//! A multi-task `[[model]]`: one shared trunk (any family that can be a trunk) and one head
//! per `[[model.task]]`, each task with its own labels, teacher, loss and weight. The heads
//! are blocks of the last layer's columns, so the model is a model of its family whose
//! outputs are the heads side by side; the objective ([`crate::train::tasks`]) gives each head
//! its own terms, and the model file names the heads ([`crate::models::TaskHead`]).

use crate::data::Task;
use crate::error::{bad_field, Error, Result};
use crate::losses::SoftLoss;
use crate::models::Arch;
use crate::models::{HeadKind, Model, ModelSpec, TaskHead};
use crate::rng::Rng;
use crate::store::RunStore;
use crate::train::TrainConfig;
use crate::train::{Objective, SoftTerm, TaskObjective, TeacherSignal, Tunable};
use serde::{Deserialize, Serialize};

/// One `[[model.task]]` of a multi-task model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task's name (the head's name in predictions, exports and the report).
    pub name: String,
    /// The teacher of this head: an earlier `[[model]]` or `[[teacher]]` (its class scores,
    /// values, or — with an embedding loss — a BERT teacher's sentence embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// Whether the head learns the data's labels; default: yes, unless the loss is an
    /// embedding loss (which has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<bool>,
    /// The head learns this further target column (one of `data.targets`) instead of
    /// `data.label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The head's soft-target loss: `{ kind = "kd" }` (default), `dkd`, `dist`, or for an
    /// embedding head `cosine` / `mse`.
    #[serde(default, skip_serializing_if = "is_kd")]
    pub loss: SoftLoss,
    /// With labels and a teacher: the teacher term's weight α within the task, (1 − α) the
    /// label term's.
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Softmax temperature of the teacher term (class heads).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// The task's weight in the sum over tasks, or `"auto"`: learned by homoscedastic
    /// uncertainty weighting (Kendall et al. 2018).
    #[serde(default = "default_weight")]
    pub weight: Tunable,
    /// Teacher annealing (BAM!): the head's target moves from its teacher to its labels over
    /// training.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anneal: bool,
    /// Text students: start the shared embedding table from this task's BERT teacher's token
    /// embeddings (Model2Vec); at most one task sets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_from_teacher: bool,
    /// The single-task student of the same trunk to compare this head with in the report
    /// (an earlier `[[model]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

fn is_kd(l: &SoftLoss) -> bool {
    *l == SoftLoss::Kd
}
fn default_alpha() -> f32 {
    0.5
}
fn default_temperature() -> f32 {
    4.0
}
fn default_weight() -> Tunable {
    Tunable::Fixed(1.0)
}

impl TaskConfig {
    /// Whether the head learns the data's labels.
    pub fn learns_labels(&self) -> bool {
        self.labels.unwrap_or(!self.loss.is_embedding())
    }
}

/// What a multi-task `[[model]]` entry gives: its name, trunk, training settings and tasks.
pub struct MultiTask<'a> {
    /// The model's name.
    pub name: &'a str,
    /// The shared trunk.
    pub arch: Option<&'a Arch>,
    /// Training settings.
    pub train: &'a TrainConfig,
    /// Its role, as written in the model file.
    pub role: &'a str,
    /// The tasks.
    pub tasks: &'a [TaskConfig],
}

/// The checks of a model's `[[model.task]]` tables: at least two, names unique and valid,
/// teachers earlier models or teachers, weights > 0, each task learning something, a family
/// that can be a trunk, and none of the single-task keys `given` (name, set) beside them.
pub fn check(
    m: &MultiTask,
    given: &[(&str, bool)],
    earlier: &[&str],
    data: &crate::data::DataConfig,
) -> Result<()> {
    let labelled = data.labels;
    let p = format!("model.{}", m.name);
    if m.tasks.is_empty() {
        return Ok(());
    }
    if m.tasks.len() < 2 && m.tasks[0].column.is_none() {
        bad_field(
            &format!("{p}.task"),
            "a multi-task model declares at least two [[model.task]] tables (one task is a plain model with `distill`; one task alone only to learn a further column, `column = \"…\"`)",
        )?;
    }
    for (key, set) in given {
        if *set {
            bad_field(
                &format!("{p}.{key}"),
                &format!("a multi-task model gives each task its own teacher in [[model.task]]; remove {key}"),
            )?;
        }
    }
    if let Some(a) = m.arch {
        if a.is_tree() {
            bad_field(
                &format!("{p}.arch.kind"),
                &format!(
                    "'{}' cannot be the shared trunk of a multi-task model (mlp, cnn, conv1d, resnet or embedding-bag can)",
                    a.kind()
                ),
            )?;
        }
    }
    let mut names: Vec<&str> = Vec::new();
    let mut inits = 0;
    for (i, t) in m.tasks.iter().enumerate() {
        let f = format!("{p}.task[{i}]");
        crate::io::check_name(&format!("{f}.name"), &t.name)?;
        if names.contains(&t.name.as_str()) {
            bad_field(
                &format!("{f}.name"),
                &format!("duplicate task name '{}'", t.name),
            )?;
        }
        names.push(&t.name);
        match t.weight {
            Tunable::Fixed(w) if !(w.is_finite() && w > 0.0) => bad_field(
                &format!("{f}.weight"),
                &format!("expected a weight > 0 or \"auto\", got {w}"),
            )?,
            _ => {}
        }
        if !(0.0..=1.0).contains(&t.alpha) {
            bad_field(
                &format!("{f}.alpha"),
                &format!("expected [0, 1], got {}", t.alpha),
            )?;
        }
        if !(t.temperature.is_finite() && t.temperature > 0.0) {
            bad_field(
                &format!("{f}.temperature"),
                &format!("must be positive, got {}", t.temperature),
            )?;
        }
        let labels = t.learns_labels();
        // The task's own kind: its column's, or the data's.
        let mut task = data.task;
        if let Some(c) = &t.column {
            match data.targets.iter().find(|x| &x.column == c) {
                Some(x) => task = x.task,
                None => bad_field(
                    &format!("{f}.column"),
                    &format!(
                        "'{c}' is not one of data.targets (declare it there: {{ column = \"{c}\", task = \"regression\" }})"
                    ),
                )?,
            }
            if !labels {
                bad_field(
                    &format!("{f}.labels"),
                    "a task with a column learns its labels",
                )?;
            }
        }
        if labels && !labelled {
            bad_field(
                &format!("{f}.labels"),
                "the data have no labels (data.labels = false): set labels = false and give a teacher",
            )?;
        }
        if labels && t.loss.is_embedding() {
            bad_field(
                &format!("{f}.labels"),
                "an embedding head matches its teacher's vectors and has no labels: set labels = false",
            )?;
        }
        match &t.teacher {
            None if !labels => bad_field(
                &format!("{f}.teacher"),
                "the task has neither labels nor a teacher: it would learn nothing",
            )?,
            None if t.loss != SoftLoss::Kd => bad_field(
                &format!("{f}.loss"),
                "a loss needs a teacher: give teacher = \"…\"",
            )?,
            Some(name) if !earlier.contains(&name.as_str()) => bad_field(
                &format!("{f}.teacher"),
                &format!(
                    "'{name}' is not the name of an earlier [[model]] or [[teacher]] (known: {})",
                    if earlier.is_empty() {
                        "none".to_string()
                    } else {
                        earlier.join(", ")
                    }
                ),
            )?,
            _ => {}
        }
        if t.anneal && !(labels && t.teacher.is_some()) {
            bad_field(
                &format!("{f}.anneal"),
                "teacher annealing moves a head's target from its teacher to its labels: the task needs both",
            )?;
        }
        if t.loss != SoftLoss::Kd && !t.loss.is_embedding() && task == Task::Regression {
            bad_field(
                &format!("{f}.loss"),
                "needs class probabilities; a regression head matches its teacher by MSE",
            )?;
        }
        if let Some(b) = &t.baseline {
            if !earlier.contains(&b.as_str()) {
                bad_field(
                    &format!("{f}.baseline"),
                    &format!("'{b}' is not the name of an earlier [[model]]"),
                )?;
            }
        }
        if t.init_from_teacher {
            inits += 1;
            if t.teacher.is_none() {
                bad_field(
                    &format!("{f}.init_from_teacher"),
                    "needs the task's teacher (a bert teacher)",
                )?;
            }
        }
    }
    if inits > 1 {
        bad_field(
            &format!("{p}.task"),
            "init_from_teacher starts the one shared embedding table: at most one task sets it",
        )?;
    }
    Ok(())
}

/// What one task's head is, found from the data and its teacher before training.
struct Planned<'a> {
    head: TaskHead,
    objective: Objective<'a>,
    weight: Option<f32>,
    column: Option<usize>,
}

/// The head and objective of task `t`, starting at column `start`.
fn plan<'s>(
    m: &MultiTask,
    t: &TaskConfig,
    start: usize,
    store: &'s RunStore,
) -> Result<Planned<'s>> {
    let splits = &store.splits;
    let f = format!("model.{}.task.{}", m.name, t.name);
    let labels = t.learns_labels();
    // The labels it learns: a further target column's, or the data's.
    let column = match &t.column {
        Some(c) => Some(
            splits
                .train
                .extra
                .iter()
                .position(|e| &e.name == c)
                .ok_or_else(|| Error::Input(format!("{f}.column: no column '{c}' in the data")))?,
        ),
        None => None,
    };
    let targets = match column {
        Some(k) => &splits.train.extra[k].targets,
        None => &splits.train.targets,
    };
    let regression = targets.task() == Task::Regression;
    let data_outputs = match targets {
        crate::data::Targets::Classes { names, .. } => names.len(),
        crate::data::Targets::Values(_) => 1,
    };
    let (mut objective, width, kind) = match &t.teacher {
        None => (
            Objective::supervised(),
            data_outputs,
            if regression {
                HeadKind::Values
            } else {
                HeadKind::Classes
            },
        ),
        Some(name) if t.loss.is_embedding() => {
            let e = store
                .known(name)
                .and_then(|k| k.embeddings.as_ref())
                .ok_or_else(|| {
                    Error::Input(format!(
                        "{f}.loss: '{name}' gives no embeddings; an embedding head needs a bert teacher"
                    ))
                })?;
            let o = Objective::embedding(e.train.clone(), e.val.clone(), t.loss);
            (o, e.cols, HeadKind::Embedding)
        }
        Some(name) => {
            let known = store.known(name).is_some();
            if known && m.train.augments() {
                return Err(Error::Input(format!(
                    "model.{}.train.augment: teacher '{name}' of task '{}' has outputs for the samples as they are, not for augmented ones; remove augment",
                    m.name, t.name
                )));
            }
            if store.get(name).is_ok_and(|f| f.model.meta.heads.len() > 1) {
                return Err(Error::Input(format!(
                    "{f}.teacher: '{name}' is a multi-task model; a head learns from a teacher of one task"
                )));
            }
            let val = store.teacher_outputs(name, "val")?;
            let n_val = splits.val.len().max(1);
            let width = val.len() / n_val;
            if width * n_val != val.len() || width == 0 {
                return Err(Error::Input(format!(
                    "{f}.teacher: '{name}' gives {} values for {n_val} validation samples",
                    val.len()
                )));
            }
            if labels && width != data_outputs {
                return Err(Error::Input(format!(
                    "{f}.teacher: '{name}' gives {width} outputs per sample but the task's labels have {data_outputs} {}",
                    if regression { "value" } else { "classes" }
                )));
            }
            let signal = if known || !m.train.augments() {
                TeacherSignal::Cached(store.teacher_outputs(name, "train")?)
            } else {
                TeacherSignal::Live(store.teacher(name)?)
            };
            let alpha = if labels { t.alpha } else { 1.0 };
            // A head without labels takes its teacher's kind of outputs: values from a
            // regression model (or a one-head model of values), class scores otherwise.
            let teacher_values = store.get(name).ok().map(|f| {
                let meta = &f.model.meta;
                match meta.heads.as_slice() {
                    [h] => h.kind == HeadKind::Values,
                    _ => meta.task == Task::Regression,
                }
            });
            let regression = if labels {
                regression
            } else {
                teacher_values.unwrap_or(regression)
            };
            let mut o = Objective::supervised();
            o.label_weight = if labels { 1.0 - alpha } else { 0.0 };
            o.soft.push(SoftTerm {
                signal,
                temperature: t.temperature,
                weight: alpha,
                loss: t.loss,
            });
            o.teacher_val = Some(val);
            o.anneal = t.anneal;
            let kind = if regression {
                HeadKind::Values
            } else {
                HeadKind::Classes
            };
            (o, width, kind)
        }
    };
    if !labels {
        objective.label_weight = 0.0;
    }
    let (classes, scale) = match (column, targets) {
        (Some(_), crate::data::Targets::Classes { names, .. }) => (Some(names.clone()), None),
        (Some(k), crate::data::Targets::Values(_)) => (None, splits.extra_scales[k]),
        _ => (None, None),
    };
    Ok(Planned {
        head: TaskHead {
            name: t.name.clone(),
            start,
            outputs: width,
            kind,
            teacher: t.teacher.clone(),
            labels,
            column: t.column.clone(),
            classes,
            scale,
        },
        objective,
        weight: t.weight.fixed(),
        column,
    })
}

/// Trains the multi-task model `m` and saves it, with its heads, as
/// `store.model_path(m.name)`.
pub fn train(m: &MultiTask, store: &RunStore) -> Result<()> {
    let splits = &store.splits;
    let mut arch = m
        .arch
        .cloned()
        .ok_or_else(|| Error::Input(format!("model.{}.arch: required", m.name)))?;
    if let Some(f) = &splits.featurizer {
        arch.set_vocab(f.vocab());
    }
    let mut planned = Vec::with_capacity(m.tasks.len());
    let mut start = 0;
    for t in m.tasks {
        let p = plan(m, t, start, store)?;
        start += p.head.outputs;
        planned.push(p);
    }
    let spec = ModelSpec {
        arch,
        input_shape: splits.train.shape.clone(),
        outputs: start,
    };
    let mut init_rng = Rng::derive(store.seed, &format!("init/{}", m.name));
    let model = Model::new(spec, &mut init_rng)?;
    if let Some((t, p)) = m
        .tasks
        .iter()
        .zip(&planned)
        .find(|(t, _)| t.init_from_teacher)
    {
        let teacher = t.teacher.as_deref().unwrap_or_default();
        // An embedding head takes the PCA's map back to the teacher's space, as a one-task
        // embedding student does.
        let cols = (p.head.kind == HeadKind::Embedding).then(|| p.head.cols());
        crate::stages::text::init_from_teacher(&model, teacher, m.name, store, cols)?;
    }
    let heads: Vec<TaskHead> = planned.iter().map(|p| p.head.clone()).collect();
    let tasks: Vec<TaskObjective> = planned
        .into_iter()
        .map(|p| TaskObjective {
            name: p.head.name.clone(),
            cols: p.head.cols(),
            labels: p.head.labels,
            values: p.head.kind == HeadKind::Values,
            column: p.column,
            weight: p.weight,
            objective: p.objective,
        })
        .collect();
    store.progress.say(&format!(
        "{}: training {} with {} head{} ({}) for up to {} epochs",
        m.name,
        model.spec.describe(),
        heads.len(),
        if heads.len() == 1 { "" } else { "s" },
        heads
            .iter()
            .map(|h| format!("{} ×{}", h.name, h.outputs))
            .collect::<Vec<_>>()
            .join(", "),
        m.train.epochs
    ));
    let ckpt = store.checkpoint_path(m.name, "ckpt");
    let record = store.fit(
        &splits.train,
        m.name,
        &ckpt,
        &model,
        m.train,
        Objective::multi_task(tasks),
        Vec::new(),
    )?;
    let training = serde_json::to_value(&record).map_err(|e| Error::Other(e.to_string()))?;
    let mut meta = store.meta(m.name, m.role, &model.spec, training);
    meta.heads = heads;
    crate::models::save_model(&store.model_path(m.name), &model, &meta)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(())
}
