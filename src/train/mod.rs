//! The training loop: mini-batches from a seeded shuffle, optional image jitter, a supervised
//! or distillation objective, fused optimizer steps, a learning-rate schedule, validation every
//! epoch, early stopping that keeps the best epoch's weights, divergence detection, and an
//! atomic checkpoint after every epoch from which a killed run resumes exactly.

pub mod grid;
pub mod objective;
pub mod optim;
mod settings;
pub mod tasks;
pub mod trees;

pub use grid::Trial;
pub use settings::{AutoChoice, FullRuns, OptimizerKind, ScheduleKind, TrainConfig, Tunable};
pub use tasks::{TaskObjective, TaskWeights};

use crate::data::{Dataset, Targets, MISSING};
use crate::error::{Error, Result};
use crate::eval::{score_outputs, Scores};
use crate::losses::{self, SoftLoss};
use crate::models::{self, Mode, Model};
use crate::progress::Progress;
use crate::rng::Rng;
use candle_core::{Device, Tensor, Var};
use optim::{learning_rate, Optimizer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the soft targets come from.
pub enum TeacherSignal<'a> {
    /// The teacher's outputs on the training set, computed once (no augmentation: the teacher
    /// sees the same inputs every epoch, so its forward pass is not repeated); each batch
    /// gathers its rows, so a mapped cache file is read as training touches it.
    Cached(crate::teachers::Rows),
    /// Run the teacher on each (jittered) batch.
    Live(&'a dyn crate::teachers::Teacher),
    /// The teacher's outputs on fixed augmented views (`train.views`): `rows[v]` holds its
    /// outputs on every sample's view v, the views drawn by [`fixed_views`] from `seed`; epoch e
    /// reads view e mod `rows.len()`, the view the student sees.
    Views {
        /// One file of outputs per view.
        rows: Vec<crate::teachers::Rows>,
        /// The seed the views were drawn from.
        seed: u64,
    },
    /// The current predictions, on the same batch, of these members of the set being trained
    /// together ([`fit_together`]): their averaged softened outputs (classification) or mean
    /// output (regression). Deep mutual learning.
    Peers(Vec<usize>),
    /// The same for one head of multi-task members: the peers' columns `cols`, averaged as
    /// softened class scores, or as values (value and embedding heads, `values`).
    PeersHead {
        /// The peers.
        of: Vec<usize>,
        /// The head's columns of their outputs.
        cols: std::ops::Range<usize>,
        /// Average the columns as values rather than as class probabilities.
        values: bool,
    },
}

impl TeacherSignal<'_> {
    /// A copy, unless the signal borrows a live teacher.
    fn try_clone(&self) -> Option<TeacherSignal<'static>> {
        Some(match self {
            TeacherSignal::Cached(r) => TeacherSignal::Cached(r.clone()),
            TeacherSignal::Live(_) => return None,
            TeacherSignal::Views { rows, seed } => TeacherSignal::Views {
                rows: rows.clone(),
                seed: *seed,
            },
            TeacherSignal::Peers(of) => TeacherSignal::Peers(of.clone()),
            TeacherSignal::PeersHead { of, cols, values } => TeacherSignal::PeersHead {
                of: of.clone(),
                cols: cols.clone(),
                values: *values,
            },
        })
    }
}

/// One soft-target term: `weight · loss(signal, z; T)` for classification (Hinton's
/// `T² · KL(softmax(signal/T) ‖ softmax(z/T))` unless another [`SoftLoss`] is chosen),
/// `weight · MSE(z, signal)` for regression.
pub struct SoftTerm<'a> {
    /// Where the targets come from.
    pub signal: TeacherSignal<'a>,
    /// Temperature T.
    pub temperature: f32,
    /// Weight of the term.
    pub weight: f32,
    /// The soft-target loss (classification).
    pub loss: SoftLoss,
}

/// A FitNets hint term: `weight · MSE(h_s · A, h_t)` with a learned adapter `A`.
pub struct HintTerm<'a> {
    /// The model whose hidden layer is the hint.
    pub teacher: &'a Model,
    /// The teacher's hint layer (dense hidden layer index).
    pub teacher_layer: usize,
    /// The student's guided layer (dense hidden layer index).
    pub student_layer: usize,
    /// Weight of the term.
    pub weight: f32,
}

/// What the model learns from: a weighted sum of loss terms.
pub struct Objective<'a> {
    /// Weight of the label loss (cross-entropy or MSE).
    pub label_weight: f32,
    /// Soft-target terms (teacher, peers, ensembles).
    pub soft: Vec<SoftTerm<'a>>,
    /// Optional hint term.
    pub hint: Option<HintTerm<'a>>,
    /// Embedding distillation: the teacher's embeddings of the validation split, against which
    /// validation scores the model (its outputs are vectors, not class scores).
    pub val_targets: Option<crate::teachers::Rows>,
    /// The teacher's outputs (class logits) on the validation split, when a classifier is
    /// distilled: each epoch then records the student's top-1 agreement with it and their
    /// mean KL.
    pub teacher_val: Option<crate::teachers::Rows>,
    /// Teacher annealing (Clark et al. 2019, "BAM! Born-Again Multi-Task Networks"): the soft
    /// terms' weights fall linearly to 0 over training, the label term taking what they give
    /// up, so each sample's target moves from the teacher to its label ([`Objective::weights_at`]).
    pub anneal: bool,
    /// A multi-task student's tasks, each on its head's columns ([`tasks`]); empty for one
    /// task, whose terms are the fields above (then unused: label weight 0, no soft terms).
    pub tasks: Vec<TaskObjective<'a>>,
}

impl<'a> Objective<'a> {
    /// The label term's weight and the factor on every soft term's weight at `progress` ∈
    /// [0, 1] of training (steps taken over all steps): as set, or, with teacher annealing,
    /// `(λ + S·p, 1 − p)` for label weight λ and soft weights summing to S — at T = 1 with one
    /// KD term of weight α, the cross-entropy against `(1 − α(1 − p))·onehot(y) + α(1 − p)·
    /// softmax(t)` up to the teacher's entropy, BAM!'s target when α = 1.
    pub fn weights_at(&self, progress: f32) -> (f32, f32) {
        if !self.anneal {
            return (self.label_weight, 1.0);
        }
        let p = progress.clamp(0.0, 1.0);
        let soft: f32 = self.soft.iter().map(|t| t.weight).sum();
        (self.label_weight + soft * p, 1.0 - p)
    }

    /// A copy whose signals are all cached or peers' (none is a live teacher) and without a
    /// hint term (which borrows its teacher model).
    pub fn try_clone(&self) -> Option<Objective<'static>> {
        if self.hint.is_some() {
            return None;
        }
        let soft = self
            .soft
            .iter()
            .map(|t| {
                Some(SoftTerm {
                    signal: t.signal.try_clone()?,
                    temperature: t.temperature,
                    weight: t.weight,
                    loss: t.loss,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let tasks = self
            .tasks
            .iter()
            .map(|t| t.try_clone())
            .collect::<Option<Vec<_>>>()?;
        Some(Objective {
            label_weight: self.label_weight,
            soft,
            hint: None,
            val_targets: self.val_targets.clone(),
            teacher_val: self.teacher_val.clone(),
            anneal: self.anneal,
            tasks,
        })
    }

    /// A multi-task objective: each task's own objective on its head's columns.
    pub fn multi_task(tasks: Vec<TaskObjective<'a>>) -> Self {
        Objective {
            label_weight: 0.0,
            tasks,
            ..Self::supervised()
        }
    }

    /// Labels only.
    pub fn supervised() -> Self {
        Objective {
            label_weight: 1.0,
            soft: Vec::new(),
            hint: None,
            val_targets: None,
            teacher_val: None,
            anneal: false,
            tasks: Vec::new(),
        }
    }

    /// Hinton et al. (2015): `α · T² · KL + (1 − α) · CE` (regression: `α · MSE(teacher) + (1 − α) · MSE(y)`).
    pub fn hinton(signal: TeacherSignal<'a>, temperature: f32, alpha: f32) -> Self {
        Self::distill(signal, SoftLoss::Kd, temperature, alpha)
    }

    /// `α · loss(teacher, student; T) + (1 − α) · CE` with any soft-target loss
    /// (regression: `α · MSE(teacher) + (1 − α) · MSE(y)`).
    pub fn distill(
        signal: TeacherSignal<'a>,
        loss: SoftLoss,
        temperature: f32,
        alpha: f32,
    ) -> Self {
        Objective {
            label_weight: 1.0 - alpha,
            soft: vec![SoftTerm {
                signal,
                temperature,
                weight: alpha,
                loss,
            }],
            hint: None,
            val_targets: None,
            teacher_val: None,
            anneal: false,
            tasks: Vec::new(),
        }
    }

    /// Embedding distillation: `loss(student output, teacher embedding)` alone (no labels),
    /// with the teacher's embeddings of the training and validation splits.
    pub fn embedding(
        train: crate::teachers::Rows,
        val: crate::teachers::Rows,
        loss: SoftLoss,
    ) -> Self {
        Objective {
            label_weight: 0.0,
            soft: vec![SoftTerm {
                signal: TeacherSignal::Cached(train),
                temperature: 1.0,
                weight: 1.0,
                loss,
            }],
            hint: None,
            val_targets: Some(val),
            teacher_val: None,
            anneal: false,
            tasks: Vec::new(),
        }
    }
}

/// Per-epoch curves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    /// Epoch numbers (1-based).
    pub epoch: Vec<usize>,
    /// Mean training loss (the objective being minimised).
    pub train_loss: Vec<f64>,
    /// Training accuracy on the (augmented) batches, classification only.
    pub train_accuracy: Vec<f64>,
    /// Validation loss (cross-entropy or MSE against labels).
    pub val_loss: Vec<f64>,
    /// Validation accuracy (classification) — empty for regression.
    pub val_accuracy: Vec<f64>,
    /// Validation MSE in target units (regression) — empty for classification.
    pub val_mse: Vec<f64>,
    /// Learning rate used in the epoch.
    pub lr: Vec<f64>,
    /// Seconds spent in the epoch.
    pub seconds: Vec<f64>,
    /// Distilled classifiers: the share of validation samples whose top-1 class is the
    /// teacher's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_agreement: Vec<f64>,
    /// Distilled classifiers: the mean KL(teacher ‖ student) on validation, nats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_kl: Vec<f64>,
}

/// The result of training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Curves.
    pub curves: Curves,
    /// Epochs completed.
    pub epochs_run: usize,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// True if early stopping ended training.
    pub stopped_early: bool,
    /// Training wall time in seconds (summed across resumed sessions).
    pub seconds: f64,
    /// Epoch training resumed from, if it was resumed.
    #[serde(default)]
    pub resumed_from_epoch: Option<usize>,
    /// Ranks that trained it data-parallel (under MPI; absent for one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallel>,
    /// A warning about what training kept, printed with the run's output and in the report
    /// (for example boosted trees whose best validation round was the first: a model close
    /// to a constant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A multi-task student's task weights at the end of training (fixed, or as learned by
    /// uncertainty weighting), in task order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_weights: Vec<f32>,
}

/// Data-parallel training across MPI ranks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataParallel {
    /// Ranks that shared every batch.
    pub ranks: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Bytes rank 0 sent to the others in those steps (gradient sums).
    pub bytes_sent: u64,
}

/// Checkpoint state besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    kind: String,
    name: String,
    epoch: usize,
    opt_step: u64,
    rng: [u64; 4],
    /// Infinite until the first validation (a checkpoint within the first epoch): JSON has no
    /// number for it, so it is written as `null` and read back as infinity.
    #[serde(with = "infinite_as_null")]
    best_val_loss: f64,
    best_epoch: usize,
    bad_epochs: usize,
    record: TrainRecord,
    /// A multi-task objective's task weights and their optimizer state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_weights: Option<TaskWeights>,
    /// A checkpoint taken within epoch `epoch + 1`: where to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mid: Option<MidEpoch>,
}

/// An `f64` that may be infinite, as JSON writes it: a number, or `null` for +∞.
mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// Where a checkpoint taken within an epoch stands: the stream as the epoch began (its
/// shuffle is drawn again from it), the stream after the last completed batch, that batch, and
/// the epoch's running figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MidEpoch {
    epoch_rng: [u64; 4],
    rng: [u64; 4],
    next_batch: usize,
    tally: Tally,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tally({} seen)", self.seen)
    }
}

/// Everything the loop needs besides the model.
pub struct TrainJob<'a> {
    /// Model name (messages, checkpoint identity).
    pub name: &'a str,
    /// Training settings.
    pub cfg: &'a TrainConfig,
    /// Training split.
    pub train: &'a Dataset,
    /// Validation split.
    pub val: &'a Dataset,
    /// The objective.
    pub objective: Objective<'a>,
    /// Value of a blank pixel after normalisation (jitter fill).
    pub fill: f32,
    /// Checkpoint file, written after every epoch; resumed from if present.
    pub checkpoint: Option<PathBuf>,
    /// Seed for this job's random stream.
    pub seed: u64,
    /// Progress display.
    pub progress: Progress,
    /// Hooks on the loop: pruning masks, fake quantization.
    pub hooks: Vec<Box<dyn StepHook + 'a>>,
}

/// A hook on the training loop. Pruning (masks recomputed per epoch and re-applied after every
/// step) and quantization-aware training (a fake-quantized forward pass) are hooks, so the loop
/// itself knows neither.
pub trait StepHook {
    /// Before each epoch (0-based).
    fn start_epoch(&mut self, _model: &Model, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// After every optimizer step.
    fn after_step(&mut self, _model: &Model) -> Result<()> {
        Ok(())
    }
    /// True when [`StepHook::forward`] replaces the model's forward pass (which also rules out
    /// the autograd-free fast path).
    fn replaces_forward(&self) -> bool {
        false
    }
    /// The forward pass to train and validate through, when it replaces the model's.
    fn forward(&self, model: &Model, _x: &Tensor, _mode: Mode) -> Result<Tensor> {
        Err(Error::Other(format!(
            "hook on {} does not replace the forward pass",
            model.spec.describe()
        )))
    }
    /// After training, once the kept epoch's weights are restored.
    fn finish(&mut self, _model: &Model) -> Result<()> {
        Ok(())
    }
}

/// The hook that replaces the forward pass, if any.
fn forward_hook<'h>(hooks: &'h [Box<dyn StepHook + '_>]) -> Option<&'h dyn StepHook> {
    hooks
        .iter()
        .find(|h| h.replaces_forward())
        .map(|h| h.as_ref())
}

/// Validation scores of `model` on `val` (through a hook's forward pass when one replaces it).
fn validate(
    model: &Model,
    val: &Dataset,
    hooks: &[Box<dyn StepHook + '_>],
    objective: &Objective,
    weights: &TaskWeights,
    ranks: Option<&dyn crate::dist::Comm>,
) -> Result<(Scores, Vec<f32>)> {
    // Data-parallel ranks each predict their slice of the validation rows, then gather them.
    let d = val.dim();
    let rows = val.len();
    let (lo, hi) = match ranks {
        Some(c) => (rows * c.rank() / c.size(), rows * (c.rank() + 1) / c.size()),
        None => (0, rows),
    };
    let x = &val.x[lo * d..hi * d];
    let out = match forward_hook(hooks) {
        None => model.predict(x, 512)?,
        Some(h) => {
            let mut out = Vec::new();
            for chunk in x.chunks(512 * d) {
                let t = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)?;
                let y = h.forward(model, &t, Mode::Eval)?;
                out.extend(y.flatten_all()?.to_vec1::<f32>()?);
            }
            out
        }
    };
    let out = match ranks {
        Some(c) => c.all_gather_f32(&out).concat(),
        None => out,
    };
    if !objective.tasks.is_empty() {
        let s = tasks::val_scores(objective, weights, &out, val, model.spec.outputs)?;
        return Ok((s, out));
    }
    if let (Some(t), Some(term)) = (&objective.val_targets, objective.soft.first()) {
        return Ok((
            embedding_scores(&out, t, model.spec.outputs, term.loss)?,
            out,
        ));
    }
    Ok((score_outputs(&out, val, None), out))
}

/// Validation of embedding distillation: the mean loss against the teacher's embeddings.
fn embedding_scores(out: &[f32], teacher: &[f32], dim: usize, loss: SoftLoss) -> Result<Scores> {
    let rows = out.len() / dim.max(1);
    if teacher.len() != out.len() {
        return Err(Error::Other(format!(
            "{} teacher values for {rows} rows of {dim}",
            teacher.len()
        )));
    }
    let mut grad = vec![0f32; out.len()];
    let l = loss.value_and_grad(out, teacher, &vec![0; rows], dim, 1.0, 1.0, 1.0, &mut grad);
    Ok(Scores {
        loss: l / rows.max(1) as f64,
        ..Default::default()
    })
}

/// Anything that can learn: fitted on a data set against an objective whose targets may be hard
/// labels, soft targets from teachers and peers, or a mix, then saved as a model file. The
/// gradient-trained families (MLP, CNN) learn through the one training loop; families fitted in
/// one go (trees) implement `fit` their own way.
pub trait Learner: crate::teachers::Teacher {
    /// Fits in place; returns the training record.
    fn fit(&self, job: TrainJob) -> Result<TrainRecord>;
    /// The architecture and shapes, for the model file's metadata.
    fn spec(&self) -> &models::ModelSpec;
    /// Saves the fitted model with its metadata, atomically.
    fn save(&self, path: &Path, meta: &models::ModelMeta) -> Result<()>;
}

impl Learner for Model {
    fn fit(&self, job: TrainJob) -> Result<TrainRecord> {
        fit(self, job)
    }

    fn spec(&self) -> &models::ModelSpec {
        &self.spec
    }

    fn save(&self, path: &Path, meta: &models::ModelMeta) -> Result<()> {
        models::save_model(path, self, meta)
    }
}

/// Trains `model` in place; returns its training record. Resumes from `job.checkpoint` when
/// that file exists.
pub fn fit(model: &Model, job: TrainJob) -> Result<TrainRecord> {
    let stream = format!("train/{}", job.name);
    let mut records = fit_together(&[model], vec![job], &stream)?;
    Ok(records.remove(0))
}

/// One member of a set trained in lockstep.
struct Member<'m, 'a> {
    model: &'m Model,
    job: TrainJob<'a>,
    opt: Optimizer,
    adapter: Option<Var>,
    adapter_opt: Option<Optimizer>,
    record: TrainRecord,
    best_val_loss: f64,
    best_weights: Option<Vec<Vec<f32>>>,
    bad_epochs: usize,
    fast: bool,
    ws: crate::models::fused::Workspace,
    tally: Tally,
    /// Steps taken over all steps of the schedule (teacher annealing reads it).
    progress: f32,
    /// A multi-task objective's task weights (fixed or learned; empty for one task).
    weights: TaskWeights,
    /// Each task's unweighted loss on this rank's rows of the last batch.
    task_losses: Vec<f64>,
    /// Restored from a checkpoint taken within an epoch: where that epoch goes on.
    mid: Option<MidEpoch>,
}

/// The one training loop. Trains `models` in lockstep on the same shuffled batches (every
/// member's job must share the data, settings and seed): each batch, every member predicts, then
/// each takes a step on its own objective, whose soft targets may be another member's current
/// predictions ([`TeacherSignal::Peers`], deep mutual learning). One model is the usual case.
/// `stream` names the random stream (batch order, jitter, dropout).
///
/// With several members, early stopping and checkpoints are not used (a transfer round keeps
/// its best state through the sub-model group's round guard).
pub fn fit_together(
    models: &[&Model],
    jobs: Vec<TrainJob>,
    stream: &str,
) -> Result<Vec<TrainRecord>> {
    fit_shared(models, jobs, stream, None)
}

/// The members of a set trained together that this rank holds ([`fit_together_across`]).
pub struct Share<'c> {
    /// The set's members on this rank, by their index in the whole set (ascending).
    pub ids: Vec<usize>,
    /// The whole set's size.
    pub k: usize,
    /// The ranks holding the set (member i on rank i mod size).
    pub comm: &'c dyn crate::dist::Comm,
}

/// [`fit_together`] for a set spread over ranks: this rank trains `models` (the members
/// `share.ids`), and after every batch's forward pass the ranks exchange their members' outputs
/// on the batch (an all-gather), so each member's [`TeacherSignal::Peers`] sees every peer, as
/// in one process. Every rank walks the same batches; a rank that holds no member still takes
/// part in each exchange. Results equal one process's bit for bit.
pub fn fit_together_across(
    models: &[&Model],
    jobs: Vec<TrainJob>,
    stream: &str,
    share: Share,
    steps: (usize, usize),
) -> Result<Vec<TrainRecord>> {
    if models.is_empty() {
        let (epochs, batches) = steps;
        for _ in 0..epochs * batches {
            share.comm.all_gather_f32(&[]);
        }
        return Ok(Vec::new());
    }
    fit_shared(models, jobs, stream, Some(share))
}

/// Batches per epoch and epochs of a set trained together on `n` samples (what an idle rank of
/// [`fit_together_across`] walks through).
pub fn lockstep_steps(cfg: &TrainConfig, n: usize) -> (usize, usize) {
    (cfg.epochs, n.div_ceil(cfg.batch_size.max(1)))
}

fn fit_shared(
    models: &[&Model],
    jobs: Vec<TrainJob>,
    stream: &str,
    share: Option<Share>,
) -> Result<Vec<TrainRecord>> {
    let Some(mut run) = Lockstep::new(models, jobs, stream, share)? else {
        return Ok(Vec::new());
    };
    for epoch in run.start_epoch..run.cfg.epochs {
        if run.epoch(epoch)? {
            break;
        }
    }
    run.finish()
}

/// The state of one [`fit_shared`] call: the settings every member shares, how the set is
/// spread (together, data-parallel, over ranks), the random streams, and the members.
struct Lockstep<'m, 'a, 'c> {
    cfg: &'a TrainConfig,
    train: &'a Dataset,
    val: &'a Dataset,
    seed: u64,
    fill: f32,
    progress: Progress,
    stream: String,
    /// The seed the fixed views (`train.views`) are drawn from.
    view_seed: u64,
    /// Several members trained in lockstep (here or across ranks).
    together: bool,
    /// Data-parallel: one model, several ranks, each taking its slice of every global batch.
    dp: bool,
    comm: &'static dyn crate::dist::Comm,
    share: Option<Share<'c>>,
    /// The batch order and, for one model in one process, its dropout.
    rng: Rng,
    /// Each member's dropout stream when members are trained together.
    member_rngs: Vec<Rng>,
    members: Vec<Member<'m, 'a>>,
    patience: Option<usize>,
    start_epoch: usize,
    batch: Batch,
    outputs: usize,
    set_name: String,
    /// Checkpoints within an epoch are taken (one model in one process, without hooks).
    mid_epoch: bool,
    last_checkpoint: Instant,
}

impl<'m, 'a, 'c> Lockstep<'m, 'a, 'c> {
    /// The run's settings from its first job, the members, and where a checkpoint left off;
    /// `None` without jobs.
    fn new(
        models: &[&'m Model],
        jobs: Vec<TrainJob<'a>>,
        stream: &str,
        share: Option<Share<'c>>,
    ) -> Result<Option<Self>> {
        let Some(first) = jobs.first() else {
            return Ok(None);
        };
        let (cfg, train, val, seed, fill, progress) = (
            first.cfg,
            first.train,
            first.val,
            first.seed,
            first.fill,
            first.progress,
        );
        // Fixed views: those the teacher's outputs were computed on, else the job's own.
        let view_seed = first
            .objective
            .soft
            .iter()
            .find_map(|t| match &t.signal {
                TeacherSignal::Views { seed, rows } => (rows.len() == cfg.fixed_views())
                    .then_some(Ok(*seed))
                    .or(Some(Err(()))),
                _ => None,
            })
            .unwrap_or(Ok(seed))
            .map_err(|_| Error::Other("the teacher's fixed views are not train.views".into()))?;
        let together = match &share {
            Some(sh) => sh.k > 1,
            None => models.len() > 1,
        };
        let comm = crate::dist::world();
        let dp = !together && share.is_none() && comm.size() > 1;
        let ids: Vec<usize> = match &share {
            Some(sh) => sh.ids.clone(),
            None => (0..models.len()).collect(),
        };
        if together && jobs.iter().any(|j| j.checkpoint.is_some()) {
            return Err(Error::Other(
                "models trained together take no epoch checkpoints".into(),
            ));
        }
        let mut rng = Rng::derive(seed, stream);
        // Members trained together draw their dropout from streams of their own, so a member's
        // masks do not depend on which other members share its process.
        let member_rngs: Vec<Rng> = ids
            .iter()
            .map(|i| Rng::derive(seed, &format!("{stream}/member{i}")))
            .collect();
        let mut members = new_members(models, jobs, together)?;
        let patience = if together { None } else { cfg.patience };
        let start_epoch = if together {
            0
        } else {
            resume(&mut members[0], &mut rng, patience)?
        };
        let set_name = first_name(&members);
        // Checkpoints within an epoch: one model in one process, without hooks (their
        // per-epoch state is not saved), every `checkpoint_seconds` of training.
        let mid_epoch = !together
            && !dp
            && members.len() == 1
            && members[0].job.checkpoint.is_some()
            && members[0].job.hooks.is_empty()
            && cfg.checkpoint_seconds > 0.0;
        Ok(Some(Lockstep {
            cfg,
            train,
            val,
            seed,
            fill,
            progress,
            stream: stream.to_string(),
            view_seed,
            together,
            dp,
            comm,
            share,
            rng,
            member_rngs,
            members,
            patience,
            start_epoch,
            batch: Batch::default(),
            outputs: models[0].spec.outputs,
            set_name,
            mid_epoch,
            last_checkpoint: Instant::now(),
        }))
    }

    /// One epoch: every batch of a fresh shuffle (from where a mid-epoch checkpoint left off),
    /// then each member's validation. True when every member stops early.
    fn epoch(&mut self, epoch: usize) -> Result<bool> {
        let cfg = self.cfg;
        let n = self.train.len();
        let t0 = Instant::now();
        let sent0 = crate::dist::bytes_sent();
        crate::dist::fault_point(&format!("epoch{}/{}", epoch + 1, self.set_name))?;
        let lr = learning_rate(cfg, epoch);
        // Data-parallel ranks draw dropout for their rows from a stream of their own (one per
        // epoch, so a resumed run draws the same masks).
        let mut dp_rng = Rng::derive(
            self.seed,
            &format!("{}/rank{}/epoch{epoch}", self.stream, self.comm.rank()),
        );
        let epoch_rng = self.rng.state();
        let perm = self.rng.permutation(n);
        let bar = self.progress.epoch(
            &self.set_name,
            epoch,
            cfg.epochs,
            n.div_ceil(cfg.batch_size),
        );
        for m in self.members.iter_mut() {
            for h in m.job.hooks.iter_mut() {
                h.start_epoch(m.model, epoch)?;
            }
            m.tally = Tally::default();
        }
        // Resumed within this epoch: the same shuffle (drawn again above), then the stream,
        // the batch and the running figures where the checkpoint left them.
        let mut skip = 0;
        if let Some(mid) = self.members.first_mut().and_then(|m| m.mid.take()) {
            self.rng = Rng::from_state(mid.rng);
            skip = mid.next_batch;
            self.members[0].tally = mid.tally;
        }
        let steps = n.div_ceil(cfg.batch_size.max(1));
        for (bi, full_idx) in perm.chunks(cfg.batch_size).enumerate().skip(skip) {
            crate::progress::check_interrupt()?;
            let progress = (epoch * steps + bi) as f32 / (cfg.epochs * steps).max(1) as f32;
            for m in self.members.iter_mut() {
                m.progress = progress;
            }
            self.step(full_idx, (epoch, bi), lr, &mut dp_rng)?;
            let (loss, acc) = mean_tally(&self.members);
            let classification = matches!(self.train.targets, Targets::Classes { .. });
            bar.step(loss, classification.then_some(acc));
            if self.mid_epoch
                && bi + 1 < steps
                && self.last_checkpoint.elapsed().as_secs_f64() >= cfg.checkpoint_seconds
            {
                let m = &self.members[0];
                let mid = MidEpoch {
                    epoch_rng,
                    rng: self.rng.state(),
                    next_batch: bi + 1,
                    tally: m.tally.clone(),
                };
                m.save_checkpoint(epoch, epoch_rng, Some(mid))?;
                self.last_checkpoint = Instant::now();
                let at = format!("mid{}.{}/{}", epoch + 1, bi + 1, self.set_name);
                crate::dist::fault_point(&at)?;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut stop_all = !self.members.is_empty();
        let mut summary = Vec::new();
        let ranks = self.dp.then_some(self.comm);
        for m in self.members.iter_mut() {
            let (stop, line) = m.end_epoch(
                self.val,
                epoch,
                lr,
                secs,
                ranks,
                sent0,
                self.patience,
                &self.rng,
            )?;
            stop_all &= stop;
            summary.push(line);
        }
        self.last_checkpoint = Instant::now();
        bar.finish(&format!("{}  lr {lr:.2e}  {secs:.1}s", summary.join(" | ")));
        if stop_all {
            let m = &self.members[0];
            self.progress.say(&format!(
                "{}: early stop after epoch {} (no val-loss improvement for {} epochs); keeping epoch {}",
                m.job.name,
                epoch + 1,
                m.bad_epochs,
                m.record.best_epoch
            ));
        }
        Ok(stop_all)
    }

    /// One batch (`full_idx`, the global batch's sample indices): gather and augment it, every
    /// member's forward pass first (so that peers see each other's predictions from before this
    /// batch's steps), the outputs exchanged between members (and ranks), then each member's
    /// step on its own objective.
    fn step(
        &mut self,
        full_idx: &[usize],
        at: (usize, usize),
        lr: f64,
        dp_rng: &mut Rng,
    ) -> Result<()> {
        let (cfg, train) = (self.cfg, self.train);
        let ranks = self.dp.then_some(self.comm);
        let views = cfg.fixed_views();
        let view = (views > 0).then_some((self.view_seed, at.0 % views.max(1)));
        let batch = &mut self.batch;
        batch.gather(train, full_idx, ranks, cfg, self.fill, &mut self.rng, view)?;
        let tensors = self.members.iter().any(|m| !m.fast);
        let (x, y) = if tensors {
            let x = Tensor::from_slice(&batch.x, (batch.b, train.dim()), &Device::Cpu)?;
            (Some(x), Some(batch.labels_tensor()?))
        } else {
            (None, None)
        };
        let mut forwards: Vec<Forward> = Vec::with_capacity(self.members.len());
        for (mi, m) in self.members.iter_mut().enumerate() {
            let drop_rng = if self.together {
                &mut self.member_rngs[mi]
            } else if self.dp {
                &mut *dp_rng
            } else {
                &mut self.rng
            };
            forwards.push(m.forward(batch, x.as_ref(), drop_rng)?);
        }
        let peer_outputs = if self.together {
            let mine = forwards
                .iter()
                .map(Forward::outputs)
                .collect::<Result<Vec<_>>>()?;
            match &self.share {
                None => mine,
                Some(sh) => exchange_outputs(sh, mine, batch.b * self.outputs)?,
            }
        } else {
            Vec::new()
        };
        for (m, fwd) in self.members.iter_mut().zip(forwards) {
            let soft = soft_targets(&m.job.objective, batch, &peer_outputs, self.outputs)?;
            let (lv, hits, grads) = if m.fast {
                m.fused_grads(batch, &soft, self.outputs)?
            } else {
                m.autograd_grads(fwd, batch, &soft, x.as_ref(), y.as_ref())?
            };
            let (lv, hits) = m.take_step(grads, lv, hits, batch, ranks, lr, at)?;
            for h in m.job.hooks.iter_mut() {
                h.after_step(m.model)?;
            }
            m.tally.add(lv, batch.full_b, hits, batch.labelled[0]);
        }
        Ok(())
    }

    /// Each member's best weights back (when early stopping kept an epoch), its hooks
    /// finished, and its record.
    fn finish(self) -> Result<Vec<TrainRecord>> {
        let mut records = Vec::with_capacity(self.members.len());
        for mut m in self.members {
            if let Some(w) = &m.best_weights {
                m.model.set_weights(w)?;
            } else if self.patience.is_none() {
                m.record.best_epoch = m.record.epochs_run;
            }
            for h in m.job.hooks.iter_mut() {
                h.finish(m.model)?;
            }
            records.push(m.record);
        }
        Ok(records)
    }
}

/// One model's training step exactly as [`fit`] takes it — the fused pass or autograd, the
/// optimizer, the one divergence check — on batches the caller gives: what `bench` times.
pub struct Stepper<'m, 'a> {
    member: Member<'m, 'a>,
    batch: Batch,
}

impl<'m, 'a> Stepper<'m, 'a> {
    /// The step of `model` under `job` (its settings and objective; its data are not read).
    pub fn new(model: &'m Model, job: TrainJob<'a>) -> Result<Self> {
        let member = new_members(&[model], vec![job], false)?
            .pop()
            .ok_or_else(|| Error::Other("no member".into()))?;
        Ok(Stepper {
            member,
            batch: Batch::default(),
        })
    }

    /// Whether the step takes the autograd-free fused path.
    pub fn fused(&self) -> bool {
        self.member.fast
    }

    /// One step on the rows `x` with class labels and each soft term's targets (dropout drawn
    /// from `rng`). Returns the loss and the seconds spent in the forward pass, in the loss
    /// and its gradients, and in the optimizer.
    pub fn step(
        &mut self,
        x: &[f32],
        classes: &[u32],
        soft: &[Vec<f32>],
        lr: f64,
        rng: &mut Rng,
    ) -> Result<(f64, [f64; 3])> {
        let b = classes.len();
        let batch = &mut self.batch;
        batch.x.clear();
        batch.x.extend_from_slice(x);
        batch.idx = (0..b).collect();
        batch.classes.clear();
        batch.classes.extend_from_slice(classes);
        batch.values.clear();
        batch.partner_classes.clear();
        batch.mix = None;
        (batch.b, batch.full_b, batch.classification) = (b, b, true);
        batch.labelled = [b, b];
        let m = &mut self.member;
        let t0 = Instant::now();
        let (xt, yt) = if m.fast {
            (None, None)
        } else {
            (
                Some(Tensor::from_slice(
                    x,
                    (b, x.len() / b.max(1)),
                    &Device::Cpu,
                )?),
                Some(Tensor::from_slice(classes, b, &Device::Cpu)?),
            )
        };
        let fwd = m.forward(&self.batch, xt.as_ref(), rng)?;
        let t1 = Instant::now();
        let outputs = m.model.spec.outputs;
        let (lv, hits, grads) = if m.fast {
            m.fused_grads(&self.batch, soft, outputs)?
        } else {
            m.autograd_grads(fwd, &self.batch, soft, xt.as_ref(), yt.as_ref())?
        };
        let t2 = Instant::now();
        let (lv, _) = m.take_step(grads, lv, hits, &self.batch, None, lr, (0, 0))?;
        let t3 = Instant::now();
        Ok((
            lv,
            [
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ],
        ))
    }
}

/// The members of a set, each with its optimizer and its step: the autograd-free fused pass
/// for families that have one, without a hint term, a hook that replaces the forward pass, or
/// peers (their mutual learning runs through autograd); autograd otherwise.
fn new_members<'m, 'a>(
    models: &[&'m Model],
    jobs: Vec<TrainJob<'a>>,
    together: bool,
) -> Result<Vec<Member<'m, 'a>>> {
    let mut members = Vec::with_capacity(models.len());
    for (model, job) in models.iter().copied().zip(jobs) {
        let cfg = job.cfg;
        let sizes: Vec<usize> = model.params.iter().map(|(_, v)| v.elem_count()).collect();
        let adapter = hint_adapter(model, &job)?;
        let adapter_opt = adapter
            .as_ref()
            .map(|a| Optimizer::new(cfg, &[a.elem_count()]));
        let fast = crate::models::fused::eligible(model)
            && job.objective.hint.is_none()
            && forward_hook(&job.hooks).is_none()
            && !together;
        if !fast && cfg.precision == crate::kernels::bf16::MatmulPrecision::Bf16 {
            job.progress.say(&format!(
                "{}: trains through autograd (hint, peers, hooks or its family), in f32: \
                 precision = \"bf16\" applies to the autograd-free path",
                job.name
            ));
        }
        if job.objective.label_weight == 0.0
            && job.objective.soft.iter().all(|t| t.weight == 0.0)
            && job.objective.hint.is_none()
            && job.objective.tasks.is_empty()
        {
            return Err(Error::Input(format!(
                "model {}: every loss term has weight 0",
                job.name
            )));
        }
        members.push(Member {
            model,
            opt: Optimizer::new(cfg, &sizes),
            adapter,
            adapter_opt,
            record: TrainRecord::default(),
            best_val_loss: f64::INFINITY,
            best_weights: None,
            bad_epochs: 0,
            fast,
            ws: crate::models::fused::Workspace::with_precision(cfg.precision),
            tally: Tally::default(),
            progress: 0.0,
            weights: TaskWeights::new(&job.objective.tasks),
            task_losses: Vec::new(),
            mid: None,
            job,
        });
    }
    Ok(members)
}

/// Restores a lone member from its checkpoint, if one of this job exists: its weights,
/// optimizer moments, early-stopping state, record and the batch-order stream. Returns the
/// epoch to start from (all of them done when it had already stopped early).
fn resume(m: &mut Member, rng: &mut Rng, patience: Option<usize>) -> Result<usize> {
    let mut start = 0;
    if let Some(ck) = m.job.checkpoint.clone() {
        if ck.exists() {
            let st = load_checkpoint(&ck, m.model, &mut m.opt, &mut m.best_weights)?;
            if st.name == m.job.name {
                start = st.epoch;
                *rng = Rng::from_state(st.rng);
                m.opt.step = st.opt_step;
                m.best_val_loss = st.best_val_loss;
                m.bad_epochs = st.bad_epochs;
                m.record = st.record;
                m.record.resumed_from_epoch = Some(st.epoch);
                if let Some(w) = st.task_weights {
                    m.weights = w;
                }
                let at = match &st.mid {
                    Some(mid) => {
                        format!("in epoch {} after batch {}", st.epoch + 1, mid.next_batch)
                    }
                    None => format!("after epoch {}", st.epoch),
                };
                m.mid = st.mid;
                m.job.progress.say(&format!(
                    "{}: resuming from the checkpoint {at}",
                    m.job.name
                ));
            }
        }
    }
    if patience.is_some_and(|p| m.bad_epochs >= p) {
        start = m.job.cfg.epochs; // already stopped early before the kill
    }
    Ok(start)
}

/// One batch as this rank trains on it: its rows of the global batch (all of them in one
/// process), their inputs (jittered) and targets.
#[derive(Default)]
struct Batch {
    /// Sample indices of this rank's rows.
    idx: Vec<usize>,
    /// The fixed view the batch shows (`train.views`), if views are fixed.
    view: Option<usize>,
    /// Their inputs, row after row.
    x: Vec<f32>,
    /// Their class labels (classification) …
    classes: Vec<u32>,
    /// … or target values (regression).
    values: Vec<f32>,
    /// This rank's rows.
    b: usize,
    /// The global batch's rows.
    full_b: usize,
    /// Whether the targets are classes.
    classification: bool,
    /// How the batch was mixed (mixup, CutMix), if it was.
    mix: Option<crate::data::augment::Mix>,
    /// A mixed batch's partner labels (classification).
    partner_classes: Vec<u32>,
    /// The global batch's rows that have a label (what training accuracy counts) and, in a
    /// mixed batch, whose partner has one.
    labelled: [usize; 2],
    /// The labels of the data's further target columns (multi-task heads read them).
    extra: Vec<ExtraBatch>,
}

/// One further target column's labels on a batch (this rank's rows).
#[derive(Default)]
struct ExtraBatch {
    classes: Vec<u32>,
    values: Vec<f32>,
    classification: bool,
    /// The global batch's rows that have this column's label.
    labelled: usize,
}

impl Batch {
    /// Gathers the rows `full_idx` (this rank's slice of them under data parallelism), shifted
    /// and augmented as `cfg` asks.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &mut self,
        train: &Dataset,
        full_idx: &[usize],
        ranks: Option<&dyn crate::dist::Comm>,
        cfg: &TrainConfig,
        fill: f32,
        rng: &mut Rng,
        view: Option<(u64, usize)>,
    ) -> Result<()> {
        let d = train.dim();
        let full_b = full_idx.len();
        let (lo, hi) = match ranks {
            Some(c) => (
                full_b * c.rank() / c.size(),
                full_b * (c.rank() + 1) / c.size(),
            ),
            None => (0, full_b),
        };
        let jitter = cfg.image_shift();
        // Fixed views are drawn per sample (not from the batch stream), so every rank draws its
        // own rows' views.
        let augment = cfg.augment.is_active() && view.is_none();
        self.view = view.map(|(_, v)| v);
        // Under data parallelism every rank shifts and augments the whole global batch from the
        // shared stream (so the stream, and a mixed sample's partner, are the same on every
        // rank), then keeps its rows.
        let whole = ranks.is_some() && view.is_none() && (train.jitters(jitter) || augment);
        let idx = if whole { full_idx } else { &full_idx[lo..hi] };
        match view {
            Some((seed, v)) => fixed_views(train, cfg, seed, v, idx, fill, &mut self.x)?,
            None => train.gather(idx, jitter, fill, rng, &mut self.x),
        }
        self.classes.clear();
        self.values.clear();
        match &train.targets {
            Targets::Classes { labels, .. } => {
                self.classes.extend(idx.iter().map(|&i| labels[i]));
            }
            Targets::Values(v) => self.values.extend(idx.iter().map(|&i| v[i])),
        }
        self.extra.resize_with(train.extra.len(), Default::default);
        for (e, t) in self.extra.iter_mut().zip(&train.extra) {
            e.classes.clear();
            e.values.clear();
            match &t.targets {
                Targets::Classes { labels, .. } => {
                    e.classification = true;
                    e.classes.extend(idx.iter().map(|&i| labels[i]));
                    e.labelled = full_idx.iter().filter(|&&i| labels[i] != MISSING).count();
                }
                Targets::Values(v) => {
                    e.classification = false;
                    e.values.extend(idx.iter().map(|&i| v[i]));
                    e.labelled = full_b;
                }
            }
        }
        self.partner_classes.clear();
        self.mix = None;
        if augment {
            let tokens =
                cfg.augment.mask > 0.0 || cfg.augment.ngram > 0.0 || cfg.augment.replace > 0.0;
            if train.text.is_empty() == tokens {
                return Err(Error::Input(if tokens {
                    "train.augment: mask and ngram augment texts; these data are not texts".into()
                } else {
                    "train.augment: texts (token ids) take mask and ngram only".into()
                }));
            }
            self.mix = cfg.augment.apply(&mut self.x, &train.shape, fill, rng);
            if self.mix.is_some() && !train.extra.is_empty() {
                return Err(Error::Input(
                    "train.augment: mixup and CutMix do not mix the further target columns (data.targets); remove them".into(),
                ));
            }
            if let Some(m) = &self.mix {
                if self.values.is_empty() {
                    self.partner_classes = m.partner.iter().map(|&j| self.classes[j]).collect();
                } else {
                    // Regression: the targets are mixed as the inputs are.
                    let v = self.values.clone();
                    for (i, t) in self.values.iter_mut().enumerate() {
                        *t = m.lambda * v[i] + (1.0 - m.lambda) * v[m.partner[i]];
                    }
                }
            }
        }
        // Missing labels: the label term's mean is over the global batch's labelled rows.
        self.labelled = [full_b, full_b];
        if let Targets::Classes { labels, .. } = &train.targets {
            self.labelled[0] = full_idx.iter().filter(|&&i| labels[i] != MISSING).count();
            // The partners span the global batch here (one process, or `whole`).
            if !self.partner_classes.is_empty() {
                self.labelled[1] = self
                    .partner_classes
                    .iter()
                    .filter(|&&c| c != MISSING)
                    .count();
            }
        }
        if whole {
            self.x.copy_within(lo * d..hi * d, 0);
            self.x.truncate((hi - lo) * d);
            for v in [&mut self.classes, &mut self.partner_classes] {
                if !v.is_empty() {
                    v.copy_within(lo..hi, 0);
                    v.truncate(hi - lo);
                }
            }
            if !self.values.is_empty() {
                self.values.copy_within(lo..hi, 0);
                self.values.truncate(hi - lo);
            }
            for e in self.extra.iter_mut() {
                if !e.classes.is_empty() {
                    e.classes.copy_within(lo..hi, 0);
                    e.classes.truncate(hi - lo);
                }
                if !e.values.is_empty() {
                    e.values.copy_within(lo..hi, 0);
                    e.values.truncate(hi - lo);
                }
            }
        }
        self.idx.clear();
        self.idx.extend_from_slice(&full_idx[lo..hi]);
        self.b = hi - lo;
        self.full_b = full_b;
        self.classification = matches!(train.targets, Targets::Classes { .. });
        Ok(())
    }

    /// The labels as a tensor (autograd): classes, or values as a column.
    fn labels_tensor(&self) -> Result<Tensor> {
        Ok(if self.classification {
            Tensor::from_slice(&self.classes, self.b, &Device::Cpu)?
        } else {
            Tensor::from_slice(&self.values, (self.b, 1), &Device::Cpu)?
        })
    }

    /// A mixed batch's partner labels and λ, as autograd takes them.
    fn mix_tensor(&self) -> Result<Option<(Tensor, f32)>> {
        match &self.mix {
            Some(m) if self.classification && !self.partner_classes.is_empty() => Ok(Some((
                Tensor::from_slice(&self.partner_classes, self.b, &Device::Cpu)?,
                m.lambda,
            ))),
            _ => Ok(None),
        }
    }

    /// When some labels of the global batch are missing: its rows over its labelled rows, for
    /// the own labels and a mixed batch's partners' (`objective::BatchLabels::Partial`).
    fn share(&self) -> Option<[f32; 2]> {
        let full = self.full_b;
        (self.classification && self.labelled.iter().any(|&n| n < full))
            .then(|| self.labelled.map(|n| full as f32 / n.max(1) as f32))
    }

    /// The further target columns' labels, as the objective reads them (a column with missing
    /// labels: its mean over the global batch's labelled rows).
    fn extra_labels(&self) -> Vec<objective::BatchLabels<'_>> {
        self.extra
            .iter()
            .map(|e| {
                if !e.classification {
                    objective::BatchLabels::Values(&e.values)
                } else if e.labelled < self.full_b {
                    objective::BatchLabels::Partial {
                        own: &e.classes,
                        partner: None,
                        share: [self.full_b as f32 / e.labelled.max(1) as f32, 1.0],
                    }
                } else {
                    objective::BatchLabels::Classes(&e.classes)
                }
            })
            .collect()
    }

    /// The further target columns' labels as autograd takes them, with a column's share when
    /// some of its labels are missing (per row of this rank's slice).
    fn extra_tensors(&self) -> Result<Vec<(Tensor, Option<[f32; 2]>)>> {
        self.extra
            .iter()
            .map(|e| {
                Ok(if e.classification {
                    let share = (e.labelled < self.full_b).then(|| {
                        let s = self.full_b as f32 / e.labelled.max(1) as f32;
                        [s / self.b.max(1) as f32, 0.0]
                    });
                    (Tensor::from_slice(&e.classes, self.b, &Device::Cpu)?, share)
                } else {
                    (
                        Tensor::from_slice(&e.values, (self.b, 1), &Device::Cpu)?,
                        None,
                    )
                })
            })
            .collect()
    }

    fn labels(&self) -> objective::BatchLabels<'_> {
        if let Some(share) = self.share() {
            return objective::BatchLabels::Partial {
                own: &self.classes,
                partner: match &self.mix {
                    Some(m) if !self.partner_classes.is_empty() => {
                        Some((&self.partner_classes, m.lambda))
                    }
                    _ => None,
                },
                share,
            };
        }
        match &self.mix {
            Some(m) if self.classification && !self.partner_classes.is_empty() => {
                objective::BatchLabels::Mixed {
                    own: &self.classes,
                    partner: &self.partner_classes,
                    lambda: m.lambda,
                }
            }
            _ if self.classification => objective::BatchLabels::Classes(&self.classes),
            _ => objective::BatchLabels::Values(&self.values),
        }
    }
}

/// A member's forward pass on a batch: autograd's logits (and the hint layer's output), or
/// nothing when the fused pass keeps its outputs in the member's workspace or the rank has no
/// rows.
struct Forward {
    logits: Option<Tensor>,
    hidden: Option<Tensor>,
}

impl Forward {
    /// The outputs as values, for peers (empty when this rank had no rows).
    fn outputs(&self) -> Result<Vec<f32>> {
        match &self.logits {
            Some(l) => Ok(l.flatten_all()?.to_vec1::<f32>()?),
            None => Ok(Vec::new()),
        }
    }
}

/// A step's gradients on this rank's rows, before data-parallel ranks sum them.
/// The fixed views `view` of the samples `idx` (`train.views`), row after row into `out`: each
/// sample shifted and augmented as `cfg` asks from a stream of its own, drawn from `seed`, the
/// view and the sample's index alone, so the teacher's outputs computed beforehand and the
/// student's batch, in any order and on any rank, see the same view.
pub fn fixed_views(
    train: &Dataset,
    cfg: &TrainConfig,
    seed: u64,
    view: usize,
    idx: &[usize],
    fill: f32,
    out: &mut Vec<f32>,
) -> Result<()> {
    let d = train.dim();
    out.clear();
    out.reserve(idx.len() * d);
    let base = Rng::derive(seed, &format!("views/{view}")).next_u64();
    let mut one = Vec::with_capacity(d);
    for &i in idx {
        let mut rng = Rng::new(base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        train.gather(&[i], cfg.image_shift(), fill, &mut rng, &mut one);
        if cfg.augment.is_active()
            && cfg
                .augment
                .apply(&mut one, &train.shape, fill, &mut rng)
                .is_some()
        {
            return Err(Error::Input(
                "train.views: mixup and CutMix cannot be fixed per sample".into(),
            ));
        }
        out.extend_from_slice(&one);
    }
    Ok(())
}

enum Grads {
    /// In the member's fused workspace.
    Fused,
    /// Autograd's store (the model's and a hint adapter's).
    Autograd(candle_core::backprop::GradStore),
    /// This rank had no rows of the batch (data-parallel only).
    Empty,
}

/// Each soft term's targets for the batch: the cached teacher outputs of its rows, the live
/// teacher on its inputs, or the peers' current predictions.
fn soft_targets(
    obj: &Objective,
    batch: &Batch,
    peer_outputs: &[Vec<f32>],
    outputs: usize,
) -> Result<Vec<Vec<f32>>> {
    // A multi-task objective's terms follow, each as wide as its head.
    let heads = obj.tasks.iter().flat_map(|t| {
        let w = t.cols.len();
        t.objective.soft.iter().map(move |s| (s, w))
    });
    obj.soft
        .iter()
        .map(|s| (s, outputs))
        .chain(heads)
        .map(|(term, outputs)| {
            Ok(match &term.signal {
                TeacherSignal::Cached(all) => {
                    let mut v = Vec::with_capacity(batch.b * outputs);
                    for &i in &batch.idx {
                        v.extend_from_slice(&all[i * outputs..(i + 1) * outputs]);
                    }
                    v
                }
                TeacherSignal::Live(t) => t.predict_rows(&batch.x, batch.b)?,
                TeacherSignal::Views { rows, .. } => {
                    let v = batch.view.ok_or_else(|| {
                        Error::Other("a teacher's fixed views need train.views".into())
                    })?;
                    let all = &rows[v % rows.len()];
                    let mut out = Vec::with_capacity(batch.b * outputs);
                    for &i in &batch.idx {
                        out.extend_from_slice(&all[i * outputs..(i + 1) * outputs]);
                    }
                    out
                }
                TeacherSignal::Peers(of) => {
                    let refs: Vec<&[f32]> =
                        of.iter().map(|&j| peer_outputs[j].as_slice()).collect();
                    if batch.classification {
                        losses::mutual::probs_as_logits(
                            &losses::mutual::peer_average(&refs, outputs, term.temperature),
                            term.temperature,
                        )
                    } else {
                        losses::mutual::mean_outputs(&refs)
                    }
                }
                TeacherSignal::PeersHead { of, cols, values } => {
                    let full = peer_outputs.first().map_or(0, |p| p.len() / batch.b.max(1));
                    let heads: Vec<Vec<f32>> = of
                        .iter()
                        .map(|&j| tasks::columns(&peer_outputs[j], full, cols))
                        .collect();
                    let refs: Vec<&[f32]> = heads.iter().map(|h| h.as_slice()).collect();
                    if *values {
                        losses::mutual::mean_outputs(&refs)
                    } else {
                        losses::mutual::probs_as_logits(
                            &losses::mutual::peer_average(&refs, cols.len(), term.temperature),
                            term.temperature,
                        )
                    }
                }
            })
        })
        .collect()
}

impl Member<'_, '_> {
    /// The forward pass of a step (dropout drawn from `drop_rng`).
    fn forward(
        &mut self,
        batch: &Batch,
        x: Option<&Tensor>,
        drop_rng: &mut Rng,
    ) -> Result<Forward> {
        let none = Forward {
            logits: None,
            hidden: None,
        };
        if batch.b == 0 {
            return Ok(none);
        }
        if self.fast {
            self.ws
                .forward(self.model, &batch.x, batch.b, Some(drop_rng))?;
            return Ok(none);
        }
        let x = x.ok_or_else(|| Error::Other("no batch tensor".into()))?;
        Ok(match forward_hook(&self.job.hooks) {
            Some(h) => Forward {
                logits: Some(h.forward(self.model, x, Mode::Train(drop_rng))?),
                hidden: None,
            },
            None => {
                let hint_layer = self.job.objective.hint.as_ref().map(|h| h.student_layer);
                let (l, hidden) =
                    self.model
                        .forward_hidden(x, Mode::Train(drop_rng), hint_layer)?;
                Forward {
                    logits: Some(l),
                    hidden,
                }
            }
        })
    }

    /// The fused pass's loss, hits and gradients (in the workspace).
    fn fused_grads(
        &mut self,
        batch: &Batch,
        soft: &[Vec<f32>],
        outputs: usize,
    ) -> Result<(f64, usize, Grads)> {
        if batch.b == 0 {
            return Ok((0.0, 0, Grads::Empty));
        }
        let obj = &self.job.objective;
        if !obj.tasks.is_empty() {
            let (lv, per) = tasks::fused_loss(
                &mut self.ws,
                obj,
                &batch.labels(),
                &batch.extra_labels(),
                soft,
                &self.weights,
                self.progress,
                outputs,
            )?;
            self.task_losses = per;
            self.ws.backward(self.model, batch.b)?;
            let hits = tasks::hits(obj, &self.ws.logits, outputs, &batch.classes);
            return Ok((lv, hits, Grads::Fused));
        }
        let (label_weight, soft_scale) = obj.weights_at(self.progress);
        let terms: Vec<objective::SoftBatch> = obj
            .soft
            .iter()
            .zip(soft)
            .map(|(t, v)| objective::SoftBatch {
                targets: v,
                temperature: t.temperature,
                weight: t.weight * soft_scale,
                loss: t.loss,
            })
            .collect();
        let lv = self
            .ws
            .loss_and_grad(&batch.labels(), label_weight, &terms, outputs)?;
        self.ws.backward(self.model, batch.b)?;
        let hits = self
            .ws
            .logits
            .chunks_exact(outputs)
            .zip(&batch.classes)
            .filter(|(row, &y)| crate::eval::argmax(row) == y as usize)
            .count();
        Ok((lv, hits, Grads::Fused))
    }

    /// The loss, hits and gradients through candle autograd.
    fn autograd_grads(
        &mut self,
        fwd: Forward,
        batch: &Batch,
        soft: &[Vec<f32>],
        x: Option<&Tensor>,
        y: Option<&Tensor>,
    ) -> Result<(f64, usize, Grads)> {
        let Some(logits) = fwd.logits.filter(|_| batch.b > 0) else {
            return Ok((0.0, 0, Grads::Empty));
        };
        let obj = &self.job.objective;
        let classification = batch.classification;
        let y = y.ok_or_else(|| Error::Other("no labels".into()))?;
        let mix = batch.mix_tensor()?;
        if !obj.tasks.is_empty() {
            let (loss, per) = tasks::autograd_tasks_loss(
                obj,
                &self.weights,
                self.progress,
                &logits,
                y,
                mix.as_ref().map(|(t, l)| (t, *l)),
                batch.share().map(|s| s.map(|v| v / batch.b.max(1) as f32)),
                &batch.extra_tensors()?,
                soft,
                batch.b,
                self.job.name,
            )?;
            self.task_losses = per;
            let out = logits.flatten_all()?.to_vec1::<f32>()?;
            let hits = tasks::hits(obj, &out, self.model.spec.outputs, &batch.classes);
            let lv = loss.to_scalar::<f32>()? as f64;
            return Ok((lv, hits, Grads::Autograd(loss.backward()?)));
        }
        let loss = autograd_loss(
            obj,
            obj.weights_at(self.progress),
            &logits,
            y,
            mix.as_ref().map(|(t, l)| (t, *l)),
            batch.share().map(|s| s.map(|v| v / batch.b.max(1) as f32)),
            soft,
            fwd.hidden.as_ref(),
            self.adapter.as_ref(),
            x,
            classification,
            batch.b,
            self.job.name,
        )?;
        let hits = if classification && obj.val_targets.is_none() {
            let v = logits.argmax(1)?.to_vec1::<u32>()?;
            v.iter().zip(&batch.classes).filter(|(a, b)| a == b).count()
        } else {
            0
        };
        let lv = loss.to_scalar::<f32>()? as f64;
        Ok((lv, hits, Grads::Autograd(loss.backward()?)))
    }

    /// The optimizer step on a step's gradients, with the one divergence check: in one
    /// process on this batch's loss; under data parallelism, ranks first sum their slices'
    /// gradients (each weighted by its share of the global batch), check the global loss, and
    /// take the same step. Returns the loss and hits the tally counts.
    #[allow(clippy::too_many_arguments)]
    fn take_step(
        &mut self,
        grads: Grads,
        lv: f64,
        hits: usize,
        batch: &Batch,
        ranks: Option<&dyn crate::dist::Comm>,
        lr: f64,
        (epoch, bi): (usize, usize),
    ) -> Result<(f64, usize)> {
        let max_loss = self.job.cfg.max_loss;
        let adapter = self.adapter.as_ref().map(adapter_model);
        let Some(comm) = ranks else {
            if !lv.is_finite() || lv > max_loss {
                return Err(divergence(&self.job, epoch, bi, lv));
            }
            match grads {
                Grads::Fused => self.opt.step_slices(self.model, &self.ws.grads, lr)?,
                Grads::Autograd(store) => {
                    self.opt.step(self.model, &store, lr)?;
                    if let (Some(a), Some(ao)) = (&adapter, self.adapter_opt.as_mut()) {
                        ao.step(a, &store, lr)?;
                    }
                }
                Grads::Empty => return Err(Error::Other("no gradients".into())),
            }
            let losses = std::mem::take(&mut self.task_losses);
            self.weights.update(&losses, lr);
            self.constrain()?;
            return Ok((lv, hits));
        };
        let owned;
        let local: &[Vec<f32>] = match grads {
            Grads::Fused => &self.ws.grads,
            Grads::Autograd(store) => {
                let mut g = grads_of(self.model, &store)?;
                if let Some(a) = &adapter {
                    g.extend(grads_of(a, &store)?);
                }
                owned = g;
                &owned
            }
            Grads::Empty => {
                let mut g = zero_grads(self.model);
                if let Some(a) = &adapter {
                    g.extend(zero_grads(a));
                }
                owned = g;
                &owned
            }
        };
        // Learned task weights step on the global batch's task losses: each rank's, weighted
        // by its share of the batch as the gradients are, summed with them.
        let with_losses;
        let local: &[Vec<f32>] = if self.weights.learned() {
            let mut v = local.to_vec();
            let n = self.weights.log_vars.len();
            let mut l: Vec<f32> = std::mem::take(&mut self.task_losses)
                .iter()
                .map(|&x| x as f32)
                .collect();
            l.resize(n, 0.0);
            v.push(l);
            with_losses = v;
            &with_losses
        } else {
            local
        };
        let (sum, glv, ghits) = sum_across(comm, local, lv, hits, batch.b, batch.full_b);
        if !glv.is_finite() || glv > max_loss {
            return Err(divergence(&self.job, epoch, bi, glv));
        }
        let mut grads = split_like(&sum, local);
        if self.weights.learned() {
            let losses: Vec<f64> = grads
                .pop()
                .unwrap_or(&[])
                .iter()
                .map(|&x| x as f64)
                .collect();
            self.weights.update(&losses, lr);
        }
        let n_model = self.model.params.len();
        self.opt.step_slices(self.model, &grads[..n_model], lr)?;
        if let (Some(a), Some(ao)) = (&adapter, self.adapter_opt.as_mut()) {
            ao.step_slices(a, &grads[n_model..], lr)?;
        }
        self.constrain()?;
        Ok((glv, ghits))
    }

    /// The weight constraints after a step: `train.max_norm`.
    fn constrain(&self) -> Result<()> {
        match self.job.cfg.max_norm {
            Some(c) => optim::constrain_max_norm(self.model, c as f32),
            None => Ok(()),
        }
    }

    /// Validates after an epoch, records the epoch's figures, keeps the best weights, writes
    /// the checkpoint. Returns whether patience ran out, and the progress line's part.
    #[allow(clippy::too_many_arguments)]
    fn end_epoch(
        &mut self,
        val: &Dataset,
        epoch: usize,
        lr: f64,
        secs: f64,
        ranks: Option<&dyn crate::dist::Comm>,
        sent0: u64,
        patience: Option<usize>,
        rng: &Rng,
    ) -> Result<(bool, String)> {
        let cfg = self.job.cfg;
        let (vs, out) = validate(
            self.model,
            val,
            &self.job.hooks,
            &self.job.objective,
            &self.weights,
            ranks,
        )?;
        let agree =
            self.job.objective.teacher_val.as_ref().and_then(|t| {
                crate::losses::agreement::agreement(&out, t, self.model.spec.outputs)
            });
        let tally = std::mem::take(&mut self.tally);
        let record = &mut self.record;
        let c = &mut record.curves;
        c.epoch.push(epoch + 1);
        c.train_loss.push(tally.loss());
        if matches!(self.job.train.targets, Targets::Classes { .. }) {
            // (A multi-task model without a head on the data's classes has no accuracy.)
            if let Some(a) = vs.accuracy {
                c.train_accuracy.push(tally.accuracy());
                c.val_accuracy.push(a);
            }
        } else {
            c.val_mse.push(vs.loss);
        }
        c.val_loss.push(vs.loss);
        c.lr.push(lr);
        c.seconds.push(secs);
        if let Some(a) = agree {
            c.val_agreement.push(a.top1);
            c.val_kl.push(a.kl);
        }
        if let Some(comm) = ranks {
            let d = record.data_parallel.get_or_insert_with(Default::default);
            d.ranks = comm.size();
            d.steps += self.job.train.len().div_ceil(cfg.batch_size) as u64;
            d.bytes_sent += crate::dist::bytes_sent() - sent0;
        }
        record.seconds += secs;
        record.epochs_run = epoch + 1;
        if !self.weights.fixed.is_empty() {
            record.task_weights = self.weights.weights();
        }
        if vs.loss < self.best_val_loss {
            self.best_val_loss = vs.loss;
            record.best_epoch = epoch + 1;
            self.bad_epochs = 0;
            if patience.is_some() {
                self.best_weights = Some(self.model.weights()?);
            }
        } else {
            self.bad_epochs += 1;
        }
        let line = match vs.accuracy {
            Some(a) => format!(
                "loss {:.4}  val_loss {:.4}  val_acc {:.2}%",
                tally.loss(),
                vs.loss,
                100.0 * a
            ),
            None => format!("loss {:.4}  val_mse(std) {:.4}", tally.loss(), vs.loss),
        };
        let line = match agree {
            Some(a) => format!("{line}  agree {:.2}%", 100.0 * a.top1),
            None => line,
        };
        let stop = patience.is_some_and(|p| self.bad_epochs >= p);
        self.record.stopped_early = stop && epoch + 1 < cfg.epochs;
        self.save_checkpoint(epoch + 1, rng.state(), None)?;
        Ok((stop, line))
    }

    /// Writes the job's checkpoint (if it has one): `epochs` completed, the stream's state
    /// (at the start of the epoch in progress, for a checkpoint within it), the weights,
    /// optimizer moments, best weights, early-stopping state, record and task weights.
    fn save_checkpoint(&self, epochs: usize, rng: [u64; 4], mid: Option<MidEpoch>) -> Result<()> {
        let Some(ck) = &self.job.checkpoint else {
            return Ok(());
        };
        let st = CheckpointState {
            kind: "checkpoint".into(),
            name: self.job.name.to_string(),
            epoch: epochs,
            opt_step: self.opt.step,
            rng,
            best_val_loss: self.best_val_loss,
            best_epoch: self.record.best_epoch,
            bad_epochs: self.bad_epochs,
            record: self.record.clone(),
            task_weights: (!self.weights.fixed.is_empty()).then(|| self.weights.clone()),
            mid,
        };
        save_checkpoint(ck, self.model, &self.opt, self.best_weights.as_deref(), &st)
    }
}

/// The objective's loss on a batch through candle autograd (the path of models without a
/// fused pass, hint terms, hooks that replace the forward pass, and peers).
#[allow(clippy::too_many_arguments)]
fn autograd_loss(
    obj: &Objective,
    (label_weight, soft_scale): (f32, f32),
    logits: &Tensor,
    y: &Tensor,
    mix: Option<(&Tensor, f32)>,
    label_scale: Option<[f32; 2]>,
    soft_bufs: &[Vec<f32>],
    s_hidden: Option<&Tensor>,
    adapter: Option<&Var>,
    x: Option<&Tensor>,
    classification: bool,
    b: usize,
    name: &str,
) -> Result<Tensor> {
    let mut terms: Vec<Tensor> = Vec::new();
    if label_weight > 0.0 {
        // Missing labels: each part sums its labelled rows, scaled to the global batch's
        // labelled rows; otherwise the mean over the rows.
        let ce = |y: &Tensor, part: usize| match label_scale {
            Some(s) => losses::supervised::cross_entropy_sum(logits, y, s[part]),
            None => losses::cross_entropy(logits, y),
        };
        let l = match (classification, mix) {
            // Mixup / CutMix: λ·CE(own label) + (1 − λ)·CE(partner's label).
            (true, Some((partner, lambda))) => {
                ((ce(y, 0)? * lambda as f64)? + (ce(partner, 1)? * (1.0 - lambda) as f64)?)?
            }
            (true, None) => ce(y, 0)?,
            (false, _) => losses::mse(logits, y)?,
        };
        terms.push((l * label_weight as f64)?);
    }
    for (term, t_out) in obj.soft.iter().zip(soft_bufs) {
        let weight = term.weight * soft_scale;
        if weight == 0.0 {
            continue;
        }
        let l = if classification {
            term.loss.autograd(logits, t_out, y, term.temperature)?
        } else {
            losses::mse(logits, &Tensor::from_slice(t_out, (b, 1), &Device::Cpu)?)?
        };
        terms.push((l * weight as f64)?);
    }
    if let (Some(h), Some(sh), Some(a)) = (&obj.hint, s_hidden, adapter) {
        let x = x.ok_or_else(|| Error::Other("no batch tensor".into()))?;
        let (_, th) = h
            .teacher
            .forward_hidden(x, Mode::Eval, Some(h.teacher_layer))?;
        let th = th
            .ok_or_else(|| Error::Other("teacher hint layer missing".into()))?
            .detach();
        terms.push((losses::hint_loss(sh, a.as_tensor(), &th)? * h.weight as f64)?);
    }
    let mut loss = terms
        .pop()
        .ok_or_else(|| Error::Input(format!("model {name}: every loss term has weight 0")))?;
    for t in terms {
        loss = (loss + t)?;
    }
    Ok(loss)
}

/// Zero gradients shaped like `model`'s parameters (a rank whose slice of a batch is empty).
fn zero_grads(model: &Model) -> Vec<Vec<f32>> {
    model
        .params
        .iter()
        .map(|(_, v)| vec![0f32; v.elem_count()])
        .collect()
}

/// `model`'s gradients from an autograd pass, one flat vector per parameter (zeros where a
/// parameter has none).
fn grads_of(model: &Model, store: &candle_core::backprop::GradStore) -> Result<Vec<Vec<f32>>> {
    model
        .params
        .iter()
        .map(|(_, v)| match store.get(v.as_tensor()) {
            Some(g) => Ok(g.flatten_all()?.to_vec1::<f32>()?),
            None => Ok(vec![0f32; v.elem_count()]),
        })
        .collect()
}

/// Sums data-parallel ranks' gradients of their slices (`b` of the global batch's `full_b`
/// rows; each slice's loss is a mean over its rows, so each is weighted by `b / full_b`), in
/// rank order; returns the summed gradients (flat, in `grads`' order) and the global batch's
/// loss and hits, the same on every rank.
fn sum_across(
    comm: &dyn crate::dist::Comm,
    grads: &[Vec<f32>],
    lv: f64,
    hits: usize,
    b: usize,
    full_b: usize,
) -> (Vec<f32>, f64, usize) {
    let w = b as f32 / full_b.max(1) as f32;
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let mut buf = Vec::with_capacity(total + 2);
    for g in grads.iter() {
        if w == 1.0 {
            buf.extend_from_slice(g);
        } else {
            buf.extend(g.iter().map(|v| v * w));
        }
    }
    buf.push((lv * b as f64 / full_b.max(1) as f64) as f32);
    buf.push(hits as f32);
    comm.sum_in_rank_order(&mut buf);
    let (lv, hits) = (buf[total] as f64, buf[total + 1] as usize);
    (buf, lv, hits)
}

/// `flat` cut into slices as long as `like`'s vectors.
fn split_like<'f>(flat: &'f [f32], like: &[Vec<f32>]) -> Vec<&'f [f32]> {
    let mut at = 0;
    like.iter()
        .map(|g| {
            let s = &flat[at..at + g.len()];
            at += g.len();
            s
        })
        .collect()
}

/// Every member's outputs on the batch, indexed by member: this rank's (`mine`, for
/// `share.ids`) and the other ranks', through one all-gather. `len` values per member.
fn exchange_outputs(share: &Share, mine: Vec<Vec<f32>>, len: usize) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<f32> = mine.concat();
    let got = share.comm.all_gather_f32(&flat);
    let n = share.comm.size();
    let mut all = vec![Vec::new(); share.k];
    for (r, buf) in got.iter().enumerate() {
        let ids: Vec<usize> = (0..share.k)
            .filter(|&i| crate::dist::owner(i, n) == r)
            .collect();
        if buf.len() != ids.len() * len {
            return Err(Error::Other(format!(
                "rank {r} sent {} outputs for {} members of {len}",
                buf.len(),
                ids.len()
            )));
        }
        for (j, &i) in ids.iter().enumerate() {
            all[i] = buf[j * len..(j + 1) * len].to_vec();
        }
    }
    Ok(all)
}

fn first_name(members: &[Member]) -> String {
    members
        .first()
        .map(|m| m.job.name.to_string())
        .unwrap_or_default()
}

/// Mean running loss and accuracy over the members (the progress line).
fn mean_tally(members: &[Member]) -> (f64, f64) {
    let k = members.len().max(1) as f64;
    (
        members.iter().map(|m| m.tally.loss()).sum::<f64>() / k,
        members.iter().map(|m| m.tally.accuracy()).sum::<f64>() / k,
    )
}

/// FitNets: a learned linear adapter from the student's hint width to the teacher's.
fn hint_adapter(model: &Model, job: &TrainJob) -> Result<Option<Var>> {
    let Some(h) = &job.objective.hint else {
        return Ok(None);
    };
    let s_w = *model
        .spec
        .arch
        .hidden()
        .get(h.student_layer)
        .ok_or_else(|| {
            Error::Input(format!(
                "model {}: hint student_layer {} does not exist ({} hidden layers)",
                job.name,
                h.student_layer,
                model.spec.arch.hidden().len()
            ))
        })?;
    let t_w = *h
        .teacher
        .spec
        .arch
        .hidden()
        .get(h.teacher_layer)
        .ok_or_else(|| {
            Error::Input(format!(
                "model {}: hint teacher_layer {} does not exist ({} hidden layers)",
                job.name,
                h.teacher_layer,
                h.teacher.spec.arch.hidden().len()
            ))
        })?;
    let mut arng = Rng::derive(job.seed, &format!("adapter/{}", job.name));
    let bound = (1.0 / s_w as f32).sqrt();
    let v: Vec<f32> = (0..s_w * t_w)
        .map(|_| arng.uniform_range(-bound, bound))
        .collect();
    Ok(Some(Var::from_tensor(&Tensor::from_vec(
        v,
        (s_w, t_w),
        &Device::Cpu,
    )?)?))
}

fn save_checkpoint(
    path: &Path,
    model: &Model,
    opt: &Optimizer,
    best: Option<&[Vec<f32>]>,
    st: &CheckpointState,
) -> Result<()> {
    let mut extra = Vec::new();
    for (i, (name, var)) in model.params.iter().enumerate() {
        let shape = var.dims().to_vec();
        extra.push((format!("__opt.m.{name}"), shape.clone(), opt.m[i].clone()));
        if !opt.v[i].is_empty() {
            extra.push((format!("__opt.v.{name}"), shape.clone(), opt.v[i].clone()));
        }
        if let Some(b) = best {
            extra.push((format!("__best.{name}"), shape, b[i].clone()));
        }
    }
    let json = serde_json::to_string(st).map_err(|e| Error::Other(e.to_string()))?;
    let bytes = models::to_safetensors(model, &json, &extra)?;
    crate::io::write_atomic(path, &bytes)
}

fn load_checkpoint(
    path: &Path,
    model: &Model,
    opt: &mut Optimizer,
    best: &mut Option<Vec<Vec<f32>>>,
) -> Result<CheckpointState> {
    let file = path.display().to_string();
    let bytes = crate::io::read_file(path)?;
    let raw = models::parse_safetensors(&bytes, &file)?;
    let st: CheckpointState = serde_json::from_str(&raw.meta_json)
        .map_err(|e| Error::Input(format!("{file}: malformed checkpoint state: {e}")))?;
    let restored = Model::from_weights(model.spec.clone(), &raw.tensors, &file)?;
    model.set_weights(&restored.weights()?)?;
    let mut bw = Vec::new();
    for (i, (name, _)) in model.params.iter().enumerate() {
        let get = |k: String| raw.tensors.get(&k).map(|(_, v)| v.clone());
        if let Some(m) = get(format!("__opt.m.{name}")) {
            if m.len() != opt.m[i].len() {
                return Err(Error::Input(format!(
                    "{file}: optimizer state for {name} has the wrong size"
                )));
            }
            opt.m[i] = m;
        }
        if let Some(v) = get(format!("__opt.v.{name}")) {
            if v.len() != opt.v[i].len() {
                return Err(Error::Input(format!(
                    "{file}: optimizer state for {name} has the wrong size"
                )));
            }
            opt.v[i] = v;
        }
        if let Some(b) = get(format!("__best.{name}")) {
            bw.push(b);
        }
    }
    if bw.len() == model.params.len() {
        *best = Some(bw);
    }
    Ok(st)
}

/// Running training figures of an epoch.
#[derive(Default, Clone, Serialize, Deserialize)]
struct Tally {
    loss_sum: f64,
    seen: usize,
    labelled: usize,
    correct: usize,
}

impl Tally {
    fn add(&mut self, loss: f64, batch: usize, correct: usize, labelled: usize) {
        self.loss_sum += loss * batch as f64;
        self.seen += batch;
        self.labelled += labelled;
        self.correct += correct;
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.labelled.max(1) as f64
    }
}

/// The error for a diverged loss, naming the epoch and what was kept.
fn divergence(job: &TrainJob, epoch: usize, bi: usize, lv: f64) -> Error {
    let cfg = job.cfg;
    let keep = match &job.checkpoint {
        Some(p) if p.exists() => format!(
            "the last good checkpoint (after epoch {epoch}) is kept in {}",
            p.display()
        ),
        _ => "no earlier checkpoint exists".to_string(),
    };
    Error::Diverged(format!(
        "model '{}' diverged in epoch {} (batch {}): training loss = {lv}{}; {keep}; try a lower learning rate (e.g. model.{}.train.lr = {:e})",
        job.name,
        epoch + 1,
        bi + 1,
        if lv.is_finite() { format!(" > max_loss {}", cfg.max_loss) } else { String::new() },
        job.name,
        cfg.lr / 10.0
    ))
}

/// Wraps the hint adapter as a one-parameter model so the fused optimizer can update it.
fn adapter_model(a: &Var) -> Model {
    let arch = crate::models::Arch::mlp(Vec::new());
    Model {
        spec: models::ModelSpec {
            arch,
            input_shape: vec![a.dims()[0]],
            outputs: a.dims()[1],
        },
        params: vec![("adapter".to_string(), a.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A teacher that records every batch it is shown.
    struct Recorder<'r> {
        seen: &'r RefCell<Vec<Vec<f32>>>,
        outputs: usize,
    }

    impl crate::teachers::Teacher for Recorder<'_> {
        fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
            self.seen
                .borrow_mut()
                .push(x.flatten_all()?.to_vec1::<f32>()?);
            Ok(vec![0.5; x.dim(0)? * self.outputs])
        }
    }

    /// A forward hook that records the training batches the student is shown.
    struct Student<'r> {
        seen: &'r RefCell<Vec<Vec<f32>>>,
    }

    impl StepHook for Student<'_> {
        fn replaces_forward(&self) -> bool {
            true
        }
        fn forward(&self, model: &Model, x: &Tensor, mode: Mode) -> Result<Tensor> {
            if matches!(mode, Mode::Train(_)) {
                self.seen
                    .borrow_mut()
                    .push(x.flatten_all()?.to_vec1::<f32>()?);
            }
            model.forward(x, mode)
        }
    }

    #[test]
    fn a_live_teacher_sees_the_very_augmented_view_the_student_sees() {
        let n = 12;
        let x: Vec<f32> = (0..n * 16).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let targets = Targets::Classes {
            labels,
            names: vec!["a".into(), "b".into()],
        };
        let train = Dataset::new(x.clone(), vec![1, 4, 4], targets.clone());
        let val = Dataset::new(
            x[..4 * 16].to_vec(),
            vec![1, 4, 4],
            Targets::Classes {
                labels: vec![0, 1, 0, 1],
                names: vec!["a".into(), "b".into()],
            },
        );
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 4,
            augment: crate::data::augment::AugmentConfig {
                shift: 1,
                flip: true,
                erase: 0.5,
                noise: 0.1,
                mixup: 0.4,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        let spec = models::ModelSpec {
            arch: crate::models::Arch::mlp(vec![4]),
            input_shape: vec![1, 4, 4],
            outputs: 2,
        };
        let model = Model::new(spec, &mut Rng::new(1)).unwrap();
        let (by_teacher, by_student) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
        let teacher = Recorder {
            seen: &by_teacher,
            outputs: 2,
        };
        fit(
            &model,
            TrainJob {
                name: "s",
                cfg: &cfg,
                train: &train,
                val: &val,
                objective: Objective::hinton(TeacherSignal::Live(&teacher), 2.0, 0.5),
                fill: 0.0,
                checkpoint: None,
                seed: 3,
                progress: Progress::Quiet,
                hooks: vec![Box::new(Student { seen: &by_student })],
            },
        )
        .unwrap();
        let (t, s) = (by_teacher.into_inner(), by_student.into_inner());
        assert_eq!(t.len(), 2 * 3, "one teacher call per batch");
        assert_eq!(t, s, "the teacher saw exactly the student's views");
        // And the views are not the raw samples: augmentation took place.
        let raw: Vec<f32> = x[..4 * 16].to_vec();
        assert!(t.iter().all(|b| *b != raw));
    }

    /// Fixed views (`train.views`): the student's batches of epoch e are view e mod N of every
    /// sample, drawn per sample (the same rows whatever the batch, order or rank), and the
    /// targets a batch reads are the teacher's outputs on exactly its rows, computed beforehand.
    #[test]
    fn fixed_views_are_the_views_the_teacher_saw_beforehand() {
        let n = 10;
        let x: Vec<f32> = (0..n * 16).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let names = vec!["a".to_string(), "b".to_string()];
        let train = Dataset::new(
            x.clone(),
            vec![1, 4, 4],
            Targets::Classes {
                labels,
                names: names.clone(),
            },
        );
        let cfg = TrainConfig {
            epochs: 4,
            batch_size: 4,
            views: Some(2),
            augment: crate::data::augment::AugmentConfig {
                shift: 1,
                flip: true,
                erase: 0.5,
                noise: 0.1,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        cfg.check("train", true).unwrap();
        // A stand-in teacher: (sum, first value) of a row.
        let teach = |rows: &[f32]| -> Vec<f32> {
            rows.chunks(16)
                .flat_map(|r| [r.iter().sum::<f32>(), r[0]])
                .collect()
        };
        let all: Vec<usize> = (0..n).collect();
        let mut views = Vec::new();
        let mut rows = Vec::new();
        for v in 0..2 {
            let mut out = Vec::new();
            fixed_views(&train, &cfg, 9, v, &all, 0.0, &mut out).unwrap();
            rows.push(crate::teachers::Rows::from(teach(&out)));
            views.push(out);
        }
        assert_ne!(views[0], views[1], "two views differ");
        assert_ne!(views[0], x, "a view is augmented");
        // Any order of the samples gives each sample the same view.
        let backwards: Vec<usize> = (0..n).rev().collect();
        let mut out = Vec::new();
        fixed_views(&train, &cfg, 9, 1, &backwards, 0.0, &mut out).unwrap();
        for (k, &i) in backwards.iter().enumerate() {
            assert_eq!(out[k * 16..(k + 1) * 16], views[1][i * 16..(i + 1) * 16]);
        }
        // A batch of view 1: its inputs are those rows, its targets the teacher's on them.
        let obj = Objective::hinton(
            TeacherSignal::Views {
                rows: rows.clone(),
                seed: 9,
            },
            2.0,
            0.5,
        );
        let mut batch = Batch::default();
        let idx = [7, 2, 9, 4];
        let mut rng = Rng::new(1);
        batch
            .gather(&train, &idx, None, &cfg, 0.0, &mut rng, Some((9, 1)))
            .unwrap();
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(
                batch.x[k * 16..(k + 1) * 16],
                views[1][i * 16..(i + 1) * 16]
            );
        }
        let targets = soft_targets(&obj, &batch, &[], 2).unwrap();
        assert_eq!(
            targets[0],
            teach(&batch.x),
            "the targets are the teacher's on the view"
        );
        // Training: epoch e shows every sample its view e mod 2, once.
        let spec = models::ModelSpec {
            arch: crate::models::Arch::mlp(vec![4]),
            input_shape: vec![1, 4, 4],
            outputs: 2,
        };
        let model = Model::new(spec, &mut Rng::new(1)).unwrap();
        let by_student = RefCell::new(Vec::new());
        let val = Dataset::new(
            x[..4 * 16].to_vec(),
            vec![1, 4, 4],
            Targets::Classes {
                labels: vec![0, 1, 0, 1],
                names,
            },
        );
        fit(
            &model,
            TrainJob {
                name: "s",
                cfg: &cfg,
                train: &train,
                val: &val,
                objective: obj,
                fill: 0.0,
                checkpoint: None,
                seed: 3,
                progress: Progress::Quiet,
                hooks: vec![Box::new(Student { seen: &by_student })],
            },
        )
        .unwrap();
        let seen = by_student.into_inner();
        assert_eq!(seen.len(), 4 * 3, "three batches an epoch");
        let sorted = |rows: Vec<&[f32]>| {
            let mut r: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| r.iter().map(|v| v.to_bits()).collect())
                .collect();
            r.sort();
            r
        };
        for e in 0..4 {
            let shown: Vec<&[f32]> = seen[3 * e..3 * e + 3]
                .iter()
                .flat_map(|b| b.chunks(16))
                .collect();
            assert_eq!(
                sorted(shown),
                sorted(views[e % 2].chunks(16).collect()),
                "epoch {e}"
            );
        }
    }

    /// Teacher annealing: at a quarter of training, α = 1 gives label weight 0.25 and soft
    /// weight 0.75, and the objective's gradient is BAM!'s — the cross-entropy against the
    /// moving target — from PyTorch's expressions (float64, plain Python gave the same):
    /// ```python
    /// z=torch.tensor([[1.,2.,0.5],[0.3,-1.,2.]],requires_grad=True); t=torch.tensor([[2.,1.,0.1],[0.,0.5,3.]]); y=torch.tensor([1,2])
    /// target=0.25*F.one_hot(y,3)+0.75*F.softmax(t,1)
    /// loss=-(target*F.log_softmax(z,1)).sum(1).mean(); loss.backward()   # 0.7488915233410101
    /// # minus 0.75 × the teacher's mean entropy (a constant): 0.2674387012631366
    /// ```
    #[test]
    fn teacher_annealing_moves_the_target_from_teacher_to_labels() {
        let t = [2.0f32, 1.0, 0.1, 0.0, 0.5, 3.0];
        let mut obj = Objective::hinton(TeacherSignal::Cached(t.to_vec().into()), 1.0, 1.0);
        assert_eq!(obj.weights_at(0.25), (0.0, 1.0), "no annealing: as set");
        obj.anneal = true;
        assert_eq!(obj.weights_at(0.0), (0.0, 1.0));
        assert_eq!(obj.weights_at(1.0), (1.0, 0.0));
        let (lw, scale) = obj.weights_at(0.25);
        assert_eq!((lw, scale), (0.25, 0.75));
        let mut ws = crate::models::fused::Workspace::default();
        ws.logits = vec![1.0, 2.0, 0.5, 0.3, -1.0, 2.0];
        let soft = [objective::SoftBatch {
            targets: &t,
            temperature: 1.0,
            weight: scale,
            loss: SoftLoss::Kd,
        }];
        let v = ws
            .loss_and_grad(&objective::BatchLabels::Classes(&[1, 2]), lw, &soft, 3)
            .unwrap();
        assert!((v - 0.2674387012631366).abs() < 1e-6, "{v}");
        let want = [
            -0.131513478271,
            0.098353495592,
            0.03315998268,
            0.057617801333,
            -0.006997466544,
            -0.050620334789,
        ];
        for (a, b) in ws.dz.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn mixed_labels_weigh_both_classes_by_lambda() {
        // One row, logits [1, 2, 0], own class 0, partner class 1, λ = 0.3:
        // 0.3·CE(0) + 0.7·CE(1), with CE(c) = log Σ exp z − z_c.
        let mut ws = crate::models::fused::Workspace::with_precision(
            crate::kernels::bf16::MatmulPrecision::F32,
        );
        ws.logits = vec![1.0, 2.0, 0.0];
        let lse = (1f64.exp() + 2f64.exp() + 1.0).ln();
        let want = 0.3 * (lse - 1.0) + 0.7 * (lse - 2.0);
        let got = ws
            .loss_and_grad(
                &objective::BatchLabels::Mixed {
                    own: &[0],
                    partner: &[1],
                    lambda: 0.3,
                },
                1.0,
                &[],
                3,
            )
            .unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Its gradient: softmax(z) − (0.3, 0.7, 0).
        let p: Vec<f64> = [1f64, 2.0, 0.0].iter().map(|z| (z - lse).exp()).collect();
        for (c, w) in [0.3, 0.7, 0.0].iter().enumerate() {
            assert!(
                (ws.dz[c] as f64 - (p[c] - w)).abs() < 1e-5,
                "dz {:?}",
                ws.dz
            );
        }
    }
}
