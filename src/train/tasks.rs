//! Multi-task students: one model whose outputs are its task heads side by side (a shared
//! trunk; each head a block of the last layer's columns), each head with an objective of its
//! own — its labels, its teacher, or both — summed with a weight per task: fixed, or learned
//! by homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).
//!
//! The loop calls into this file from its fused and autograd steps, its validation and its
//! checkpoints; a single-task objective never reaches it.

use super::objective::{BatchLabels, SoftBatch};
use super::{autograd_loss, embedding_scores, Objective, TrainConfig, Tunable};
use crate::data::{Dataset, Task, MISSING};
use crate::error::{bad_field, Error, Result};
use crate::eval::{score_outputs, Scores};
use crate::losses::SoftLoss;
use crate::models::fused::Workspace;
use crate::models::Arch;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::Range;

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
    /// The table it comes from (`model`, `submodels`), for messages.
    pub table: &'a str,
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

/// Refuses `a` as the shared trunk of `what` (a multi-task model, sub-model or final
/// student): a tree family has no trunk to share; `field` names the offending key.
pub fn check_trunk(field: &str, a: &Arch, what: &str) -> Result<()> {
    if a.is_tree() {
        bad_field(
            field,
            &format!(
                "'{}' cannot be the shared trunk of {what} (mlp, cnn, conv1d, resnet or embedding-bag can)",
                a.kind()
            ),
        )?;
    }
    Ok(())
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
    let p = format!("{}.{}", m.table, m.name);
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
                &format!(
                    "not with task tables (a multi-task {}); remove {key}",
                    if m.table == "model" {
                        "model: each task names its own teacher"
                    } else {
                        "group: each task names its own teacher; the group's `teacher` only names the [[model]] that init = \"split\" cuts"
                    }
                ),
            )?;
        }
    }
    if let Some(a) = m.arch {
        check_trunk(&format!("{p}.arch.kind"), a, "a multi-task model")?;
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

/// One task of a multi-task objective: a head (columns of the model's outputs) and what it
/// learns from.
pub struct TaskObjective<'a> {
    /// The task's name (the head's name in predictions and exports).
    pub name: String,
    /// The head's columns of the model's outputs.
    pub cols: Range<usize>,
    /// The head learns from the data's labels (the label term of `objective`).
    pub labels: bool,
    /// The head's outputs are values (regression: MSE terms), not class scores or an embedding.
    pub values: bool,
    /// Its labels are this further target column of the data (`Dataset::extra`), not the
    /// data's own.
    pub column: Option<usize>,
    /// The task's weight; `None`: learned (uncertainty weighting).
    pub weight: Option<f32>,
    /// The head's own objective, its soft terms' targets as wide as the head.
    pub objective: Objective<'a>,
}

impl TaskObjective<'_> {
    /// A copy whose teacher signals are all cached or peers' (no live teacher, no hint).
    pub fn try_clone(&self) -> Option<TaskObjective<'static>> {
        Some(TaskObjective {
            name: self.name.clone(),
            cols: self.cols.clone(),
            labels: self.labels,
            values: self.values,
            column: self.column,
            weight: self.weight,
            objective: self.objective.try_clone()?,
        })
    }
}

/// The learned task weights of uncertainty weighting: per task `s = log σ²`, the task's
/// term `exp(−s)·L + s` (Kendall et al. 2018, the form of their classification likelihood;
/// `s` starts at 0, weight 1). Each `s` takes an Adam step on its exact gradient
/// `1 − exp(−s)·L` after every optimizer step of the model, at the model's learning rate.
/// Fixed-weight tasks keep their weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskWeights {
    /// `log σ²` per task (0 for fixed-weight tasks).
    pub log_vars: Vec<f32>,
    /// The fixed weight of each task, or `None` where it is learned.
    pub fixed: Vec<Option<f32>>,
    m: Vec<f64>,
    v: Vec<f64>,
    step: u64,
}

impl TaskWeights {
    /// The weights of `tasks` (learned ones start at 1).
    pub fn new(tasks: &[TaskObjective]) -> TaskWeights {
        let n = tasks.len();
        TaskWeights {
            log_vars: vec![0.0; n],
            fixed: tasks.iter().map(|t| t.weight).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// Whether any weight is learned.
    pub fn learned(&self) -> bool {
        self.fixed.iter().any(|f| f.is_none())
    }

    /// Each task's current weight.
    pub fn weights(&self) -> Vec<f32> {
        self.fixed
            .iter()
            .zip(&self.log_vars)
            .map(|(f, &s)| f.unwrap_or((-s).exp()))
            .collect()
    }

    /// The regulariser `Σ s` of the learned tasks (added to the reported loss).
    fn penalty(&self) -> f64 {
        self.fixed
            .iter()
            .zip(&self.log_vars)
            .filter(|(f, _)| f.is_none())
            .map(|(_, &s)| s as f64)
            .sum()
    }

    /// One Adam step of each learned `s` on the batch's task losses (unweighted).
    pub fn update(&mut self, losses: &[f64], lr: f64) {
        if !self.learned() {
            return;
        }
        self.step += 1;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let t = self.step as i32;
        for i in 0..self.log_vars.len() {
            if self.fixed[i].is_some() {
                continue;
            }
            let s = self.log_vars[i] as f64;
            let g = 1.0 - (-s).exp() * losses.get(i).copied().unwrap_or(0.0);
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let mh = self.m[i] / (1.0 - b1.powi(t));
            let vh = self.v[i] / (1.0 - b2.powi(t));
            self.log_vars[i] = (s - lr * mh / (vh.sqrt() + eps)) as f32;
        }
    }
}

/// The labels a head reads on a batch: the batch's own (or its further column's, `extra`)
/// when the task learns from labels; otherwise none (class or embedding heads: every row
/// `MISSING`; value heads: zeros, under a label weight of 0).
fn head_labels<'b>(
    task: &TaskObjective,
    batch: &BatchLabels<'b>,
    extra: &[BatchLabels<'b>],
    missing: &'b [u32],
    zeros: &'b [f32],
) -> BatchLabels<'b> {
    let batch = match task.column {
        Some(k) if k < extra.len() => &extra[k],
        _ => batch,
    };
    if task.labels {
        return match batch {
            BatchLabels::Classes(y) => BatchLabels::Classes(y),
            BatchLabels::Values(v) => BatchLabels::Values(v),
            BatchLabels::Mixed {
                own,
                partner,
                lambda,
            } => BatchLabels::Mixed {
                own,
                partner,
                lambda: *lambda,
            },
            BatchLabels::Partial {
                own,
                partner,
                share,
            } => BatchLabels::Partial {
                own,
                partner: *partner,
                share: *share,
            },
        };
    }
    if task.values {
        BatchLabels::Values(zeros)
    } else {
        BatchLabels::Classes(missing)
    }
}

/// The columns `cols` of row-major `rows × width` values.
pub fn columns(z: &[f32], width: usize, cols: &Range<usize>) -> Vec<f32> {
    z.chunks_exact(width.max(1))
        .flat_map(|r| r[cols.clone()].iter().copied())
        .collect()
}

/// Several multi-task models' outputs (`width` values per row each) combined head by head:
/// class heads as the log of their mean probabilities, value and embedding heads as their mean.
pub fn ensemble_heads(
    outs: &[Vec<f32>],
    heads: &[crate::models::TaskHead],
    width: usize,
) -> Vec<f32> {
    use crate::losses::mutual;
    let rows = outs.first().map_or(0, |o| o.len() / width.max(1));
    let mut ens = vec![0f32; rows * width];
    for h in heads {
        let cols: Vec<Vec<f32>> = outs.iter().map(|o| columns(o, width, &h.cols())).collect();
        let refs: Vec<&[f32]> = cols.iter().map(|c| c.as_slice()).collect();
        let v = match h.kind {
            crate::models::HeadKind::Classes => {
                mutual::probs_as_logits(&mutual::peer_average(&refs, h.outputs, 1.0), 1.0)
            }
            _ => mutual::mean_outputs(&refs),
        };
        for (r, row) in v.chunks_exact(h.outputs).enumerate() {
            ens[r * width + h.start..r * width + h.start + h.outputs].copy_from_slice(row);
        }
    }
    ens
}

/// How many soft terms each task has, in order (the loop's flat list of soft-target buffers
/// holds the single-task terms first, then each task's).
fn soft_split<'v>(obj: &Objective, soft: &'v [Vec<f32>]) -> Vec<&'v [Vec<f32>]> {
    let mut at = obj.soft.len();
    obj.tasks
        .iter()
        .map(|t| {
            let n = t.objective.soft.len();
            let s = &soft[at.min(soft.len())..(at + n).min(soft.len())];
            at += n;
            s
        })
        .collect()
}

/// The fused step's multi-task loss: each head's objective on its columns, its gradient
/// scattered into `ws.dz`, weighted by the task's weight. Returns the weighted total (with
/// the learned weights' regulariser) and each task's unweighted loss.
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_loss(
    ws: &mut Workspace,
    obj: &Objective,
    labels: &BatchLabels,
    extra: &[BatchLabels],
    soft: &[Vec<f32>],
    weights: &TaskWeights,
    progress: f32,
    outputs: usize,
) -> Result<(f64, Vec<f64>)> {
    let rows = ws.logits.len() / outputs.max(1);
    let missing = vec![MISSING; rows];
    let zeros = vec![0f32; rows];
    ws.dz.clear();
    ws.dz.resize(ws.logits.len(), 0.0);
    let w = weights.weights();
    let mut total = weights.penalty();
    let mut per = Vec::with_capacity(obj.tasks.len());
    for ((task, bufs), &wt) in obj.tasks.iter().zip(soft_split(obj, soft)).zip(&w) {
        let width = task.cols.len();
        let mut sub = Workspace::default();
        sub.logits = columns(&ws.logits, outputs, &task.cols);
        let (lw, scale) = task.objective.weights_at(progress);
        let terms: Vec<SoftBatch> = task
            .objective
            .soft
            .iter()
            .zip(bufs)
            .map(|(t, v)| SoftBatch {
                targets: v,
                temperature: t.temperature,
                weight: t.weight * scale,
                loss: t.loss,
            })
            .collect();
        let hl = head_labels(task, labels, extra, &missing, &zeros);
        let v = sub.loss_and_grad(&hl, lw, &terms, width)?;
        for (dr, sr) in ws
            .dz
            .chunks_exact_mut(outputs)
            .zip(sub.dz.chunks_exact(width))
        {
            for (d, s) in dr[task.cols.clone()].iter_mut().zip(sr) {
                *d += wt * s;
            }
        }
        total += wt as f64 * v;
        per.push(v);
    }
    Ok((total, per))
}

/// The autograd step's multi-task loss: each head's objective on its columns of `logits`
/// (`narrow`), weighted. Returns the loss tensor and each task's unweighted loss.
#[allow(clippy::too_many_arguments)]
pub(super) fn autograd_tasks_loss(
    obj: &Objective,
    weights: &TaskWeights,
    progress: f32,
    logits: &Tensor,
    y: &Tensor,
    mix: Option<(&Tensor, f32)>,
    label_scale: Option<[f32; 2]>,
    extra: &[(Tensor, Option<[f32; 2]>)],
    soft: &[Vec<f32>],
    b: usize,
    name: &str,
) -> Result<(Tensor, Vec<f64>)> {
    let missing = Tensor::from_slice(&vec![MISSING; b], b, &Device::Cpu)?;
    let zeros = Tensor::zeros((b, 1), candle_core::DType::F32, &Device::Cpu)?;
    let w = weights.weights();
    let mut total: Option<Tensor> = None;
    let mut per = Vec::with_capacity(obj.tasks.len());
    for ((task, bufs), &wt) in obj.tasks.iter().zip(soft_split(obj, soft)).zip(&w) {
        let z = logits.narrow(1, task.cols.start, task.cols.len())?;
        let (yt, mix_t, scale_t) = if let Some((t, s)) = task.column.and_then(|k| extra.get(k)) {
            (t, None, *s)
        } else if task.labels {
            (y, mix, label_scale)
        } else if task.values {
            (&zeros, None, None)
        } else {
            (&missing, None, None)
        };
        let l = autograd_loss(
            &task.objective,
            task.objective.weights_at(progress),
            &z,
            yt,
            mix_t,
            scale_t,
            bufs,
            None,
            None,
            None,
            !task.values,
            b,
            name,
        )?;
        per.push(l.to_scalar::<f32>()? as f64);
        let lw = (l * wt as f64)?;
        total = Some(match total {
            Some(t) => (t + lw)?,
            None => lw,
        });
    }
    let total = total.ok_or_else(|| Error::Input(format!("model {name}: no tasks")))?;
    let pen = weights.penalty();
    let total = if pen != 0.0 { (total + pen)? } else { total };
    Ok((total, per))
}

/// Training accuracy's hits: the first head that learns class labels, on its columns.
pub(super) fn hits(obj: &Objective, logits: &[f32], outputs: usize, classes: &[u32]) -> usize {
    let Some(t) = obj
        .tasks
        .iter()
        .find(|t| t.labels && !t.values && t.column.is_none())
    else {
        return 0;
    };
    logits
        .chunks_exact(outputs.max(1))
        .zip(classes)
        .filter(|(r, &y)| y != MISSING && crate::eval::argmax(&r[t.cols.clone()]) == y as usize)
        .count()
}

/// One task's validation loss on its columns `z`: against the labels where it learns them,
/// else against its teacher's validation outputs (the embedding loss, KL at T = 1, or MSE).
fn task_val(task: &TaskObjective, z: &[f32], val: &Dataset) -> Result<(f64, Option<f64>)> {
    let width = task.cols.len();
    if let Some(k) = task.column {
        let t = val
            .extra
            .get(k)
            .ok_or_else(|| Error::Other(format!("task {}: no column {k}", task.name)))?;
        let s = crate::eval::score_targets(z, &t.targets, None);
        return Ok((s.loss, s.accuracy));
    }
    if task.labels {
        let s = score_outputs(z, val, None);
        return Ok((s.loss, s.accuracy));
    }
    let obj = &task.objective;
    if let (Some(t), Some(term)) = (&obj.val_targets, obj.soft.first()) {
        return Ok((embedding_scores(z, t, width, term.loss)?.loss, None));
    }
    let Some(t) = &obj.teacher_val else {
        return Ok((0.0, None));
    };
    let rows = z.len() / width.max(1);
    let mut grad = vec![0f32; z.len()];
    let loss = if task.values {
        SoftLoss::Mse
    } else {
        SoftLoss::Kd
    };
    let l = loss.value_and_grad(z, t, &vec![0; rows], width, 1.0, 1.0, 1.0, &mut grad);
    Ok((l / rows.max(1) as f64, None))
}

/// Validation scores of a multi-task model's outputs `out`: what early stopping reads, and
/// the first labelled class head's accuracy. The validation loss is `Σ w·L` over the
/// fixed-weight tasks plus `Σ ln L` over the learned ones — uncertainty weighting's own
/// objective `Σ exp(−s)·L + s` at its best `s = ln L` (less a constant), so it does not move
/// with the weights as they are learned, and a task counts by its relative improvement.
pub fn val_scores(
    obj: &Objective,
    weights: &TaskWeights,
    out: &[f32],
    val: &Dataset,
    outputs: usize,
) -> Result<Scores> {
    let w = weights.weights();
    let mut scores = Scores::default();
    for (task, &wt) in obj.tasks.iter().zip(&w) {
        let z = columns(out, outputs, &task.cols);
        let (l, acc) = task_val(task, &z, val)?;
        scores.loss += match task.weight {
            Some(_) => wt as f64 * l,
            None => l.max(1e-12).ln(),
        };
        if scores.accuracy.is_none() && task.column.is_none() {
            scores.accuracy = acc;
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{SoftTerm, TeacherSignal};
    use candle_core::Var;

    const Z: [f32; 15] = [
        1.0, 2.0, 0.5, 0.5, -1.0, 0.3, -1.0, 2.0, 2.0, 1.0, 2.0, 0.0, -1.0, 0.0, 3.0,
    ];
    const T: [f32; 9] = [2.0, 1.0, 0.1, 0.0, 0.5, 3.0, 1.0, 1.0, 1.0];
    const E: [f32; 6] = [1.0, 0.0, 1.0, 1.0, -1.0, 2.0];

    /// Two heads on 5 outputs: `a` (columns 0–2: labels, one missing, and a teacher at T = 2,
    /// α = 0.6) and `b` (columns 3–4: a teacher's embedding, cosine, no labels).
    fn two_heads(weights: [Option<f32>; 2]) -> (Objective<'static>, Vec<Vec<f32>>) {
        let mut a = Objective::supervised();
        a.label_weight = 0.4;
        a.soft.push(SoftTerm {
            signal: TeacherSignal::Cached(T.to_vec().into()),
            temperature: 2.0,
            weight: 0.6,
            loss: SoftLoss::Kd,
        });
        let b = Objective::embedding(E.to_vec().into(), E.to_vec().into(), SoftLoss::Cosine);
        let task = |name: &str, cols, labels, weight, objective| TaskObjective {
            name: name.into(),
            cols,
            labels,
            values: false,
            column: None,
            weight,
            objective,
        };
        let obj = Objective::multi_task(vec![
            task("a", 0..3, true, weights[0], a),
            task("b", 3..5, false, weights[1], b),
        ]);
        (obj, vec![T.to_vec(), E.to_vec()])
    }

    /// The multi-task objective `Σ w_t · L_t` (fixed weights 1 and 0.5), and uncertainty
    /// weighting's `Σ exp(−s_t) · L_t + s_t` (s = 0.3, −0.2), through the fused and the
    /// autograd paths, against values computed in float64 (NumPy; the PyTorch expressions):
    ///
    /// ```python
    /// za, zb = z[:, :3], z[:, 3:]
    /// la = 0.4 * F.cross_entropy(za, torch.tensor([1, -100, 0]), ignore_index=-100) \
    ///    + 0.6 * 4 * F.kl_div(F.log_softmax(za / 2, 1), F.softmax(t / 2, 1), reduction="batchmean")
    /// lb = (1 - F.cosine_similarity(zb, e, dim=1)).mean()
    /// loss = 1.0 * la + 0.5 * lb                               # 0.518447000591689
    /// s = torch.tensor([0.3, -0.2])
    /// loss_uw = torch.exp(-s[0]) * la + torch.exp(-s[1]) * lb + s.sum()   # 0.6853848831821
    /// ```
    #[test]
    fn multi_task_loss_matches_hand_computed_values_on_both_paths() {
        let fixed = [
            -0.0377279378202,
            -0.00359955336743,
            0.0413274911876,
            -0.1192569588,
            -0.0596284794,
            0.0444599021438,
            -0.0218393664653,
            -0.0226205356786,
            0.0105409255339,
            -0.0210818510678,
            0.0868383012476,
            -0.0180047344076,
            -0.0688335668401,
            0.02484519975,
            0.0,
        ];
        let learned = [
            -0.027949543766,
            -0.0026666147209,
            0.0306161584869,
            -0.291321556816,
            -0.145660778408,
            0.0329367055979,
            -0.0161790006056,
            -0.0167577049923,
            0.0257494310413,
            -0.0514988620826,
            0.0643313958173,
            -0.0133382353077,
            -0.0509931605096,
            0.0606919910034,
            0.0,
        ];
        let (la, lb) = (0.4001676813500869, 0.23655863848320416);
        let y = [1u32, MISSING, 0];
        for (weights, s, want, want_grad) in [
            ([Some(1.0), Some(0.5)], [0.0, 0.0], 0.518447000591689, fixed),
            ([None, None], [0.3, -0.2], 0.6853848831821, learned),
        ] {
            let (obj, soft) = two_heads(weights);
            let mut tw = TaskWeights::new(&obj.tasks);
            tw.log_vars = s.to_vec();
            // The fused path.
            let mut ws = Workspace::default();
            ws.logits = Z.to_vec();
            let (v, per) = fused_loss(
                &mut ws,
                &obj,
                &BatchLabels::Classes(&y),
                &[],
                &soft,
                &tw,
                0.0,
                5,
            )
            .unwrap();
            assert!((v - want).abs() < 1e-6, "{v} vs {want}");
            assert!(
                (per[0] - la).abs() < 1e-6 && (per[1] - lb).abs() < 1e-6,
                "{per:?}"
            );
            for (a, b) in ws.dz.iter().zip(want_grad) {
                assert!((*a as f64 - b).abs() < 1e-6, "fused {a} vs {b}");
            }
            // The autograd path.
            let var =
                Var::from_tensor(&Tensor::from_slice(&Z, (3, 5), &Device::Cpu).unwrap()).unwrap();
            let yt = Tensor::from_slice(&y, 3, &Device::Cpu).unwrap();
            let (l, per) = autograd_tasks_loss(
                &obj,
                &tw,
                0.0,
                var.as_tensor(),
                &yt,
                None,
                None,
                &[],
                &soft,
                3,
                "t",
            )
            .unwrap();
            assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-5);
            assert!((per[0] - la).abs() < 1e-5 && (per[1] - lb).abs() < 1e-5);
            let g = l.backward().unwrap();
            let g = g.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            for (a, b) in g.to_vec1::<f32>().unwrap().iter().zip(want_grad) {
                assert!((*a as f64 - b).abs() < 1e-6, "autograd {a} vs {b}");
            }
            // Learned weights step on d/ds = 1 − exp(−s)·L (> 0 here: 0.7035, 0.7111), so
            // Adam's first step lowers each s by the learning rate; fixed ones do not move.
            tw.update(&per, 0.01);
            for (i, &s0) in s.iter().enumerate() {
                let moved = if weights[i].is_none() { 0.01 } else { 0.0 };
                assert!(
                    (tw.log_vars[i] - (s0 - moved)).abs() < 1e-5,
                    "{:?}",
                    tw.log_vars
                );
            }
        }
    }

    /// Validation under learned weights reads `ln L` of each learned task, which does not move
    /// as the weights do.
    #[test]
    fn validation_of_learned_weights_does_not_follow_the_weights() {
        let (obj, _) = two_heads([Some(1.0), None]);
        let mut tw = TaskWeights::new(&obj.tasks);
        let x = Dataset::new(
            vec![0.0; 6],
            vec![2],
            crate::data::Targets::Classes {
                labels: vec![1, 2, 0],
                names: vec!["a".into(), "b".into(), "c".into()],
            },
        );
        let s0 = val_scores(&obj, &tw, &Z, &x, 5).unwrap();
        tw.log_vars = vec![0.0, 3.0];
        let s1 = val_scores(&obj, &tw, &Z, &x, 5).unwrap();
        assert_eq!(s0.loss, s1.loss);
        assert!(s0.accuracy.is_some());
    }
}
