//! A multi-task `[[model]]`: one shared trunk (any family that can be a trunk) and one head
//! per `[[model.task]]`, each task with its own labels, teacher, loss and weight. The heads
//! are blocks of the last layer's columns, so the model is a model of its family whose
//! outputs are the heads side by side; the objective ([`crate::train::tasks`]) gives each head
//! its own terms, and the model file names the heads ([`crate::models::TaskHead`]).

use crate::data::Task;
use crate::error::{Error, Result};
use crate::models::{HeadKind, Model, ModelSpec, TaskHead};
use crate::rng::Rng;
use crate::store::RunStore;
pub use crate::train::tasks::{check, MultiTask, TaskConfig};
use crate::train::{Objective, SoftTerm, TaskObjective, TeacherSignal};

/// What one task's head is, found from the data and its teacher before training.
struct Planned<'a> {
    head: TaskHead,
    objective: Objective<'a>,
    weight: Option<f32>,
    column: Option<usize>,
}

impl<'a> Planned<'a> {
    /// The head, and the task's objective on the head's columns.
    fn into_task(self) -> (TaskHead, TaskObjective<'a>) {
        let task = TaskObjective {
            name: self.head.name.clone(),
            cols: self.head.cols(),
            labels: self.head.labels,
            values: self.head.kind == HeadKind::Values,
            column: self.column,
            weight: self.weight,
            objective: self.objective,
        };
        (self.head, task)
    }
}

/// The head and objective of task `t`, starting at column `start`.
fn plan<'s>(
    m: &MultiTask,
    t: &TaskConfig,
    start: usize,
    store: &'s RunStore,
) -> Result<Planned<'s>> {
    let splits = &store.splits;
    let f = format!("{}.{}.task.{}", m.table, m.name, t.name);
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
            let known = store.known(name).is_some() && store.teacher(name).is_err();
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

/// The heads of `m`'s tasks, in column order, and each head's objective: what every member
/// of a multi-task sub-model group carries (`[[submodels]]` with task tables). Every teacher's
/// outputs are computed once (a group's members learn from cached targets).
pub fn plan_heads(
    m: &MultiTask,
    store: &RunStore,
) -> Result<(Vec<TaskHead>, Vec<TaskObjective<'static>>)> {
    let mut heads = Vec::with_capacity(m.tasks.len());
    let mut tasks = Vec::with_capacity(m.tasks.len());
    let mut start = 0;
    for t in m.tasks {
        let (head, task) = plan(m, t, start, store)?.into_task();
        start += head.outputs;
        tasks.push(task.try_clone().ok_or_else(|| {
            Error::Input(format!(
                "submodels.{}.task.{}: the members learn from targets computed once; a teacher that runs on every batch (augmentation) is not available in a group",
                m.name, t.name
            ))
        })?);
        heads.push(head);
    }
    Ok((heads, tasks))
}

/// The objective `m` trains with — each task's head, labels, teacher and weight — to train a
/// multi-task model again after pruning, or quantization-aware.
pub fn objective<'s>(m: &MultiTask, store: &'s RunStore) -> Result<Objective<'s>> {
    let mut tasks = Vec::with_capacity(m.tasks.len());
    let mut start = 0;
    for t in m.tasks {
        let p = plan(m, t, start, store)?;
        start += p.head.outputs;
        tasks.push(p.into_task().1);
    }
    Ok(Objective::multi_task(tasks))
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
    let tasks: Vec<TaskObjective> = planned.into_iter().map(|p| p.into_task().1).collect();
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
