//! The training loop: mini-batches from a seeded shuffle, optional image jitter, a supervised
//! or distillation objective, fused optimizer steps, a learning-rate schedule, validation every
//! epoch, early stopping that keeps the best epoch's weights, divergence detection, and an
//! atomic checkpoint after every epoch from which a killed run resumes exactly.

pub mod objective;
pub mod optim;
mod settings;
pub mod trees;

pub use settings::{
    AutoChoice, FullRuns, OptimizerKind, ScheduleKind, TrainConfig, Trial, Tunable,
};

use crate::data::{Dataset, Targets};
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
    /// The current predictions, on the same batch, of these members of the set being trained
    /// together ([`fit_together`]): their averaged softened outputs (classification) or mean
    /// output (regression). Deep mutual learning.
    Peers(Vec<usize>),
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
}

impl<'a> Objective<'a> {
    /// Labels only.
    pub fn supervised() -> Self {
        Objective {
            label_weight: 1.0,
            soft: Vec::new(),
            hint: None,
            val_targets: None,
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
    best_val_loss: f64,
    best_epoch: usize,
    bad_epochs: usize,
    record: TrainRecord,
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

fn labels_tensor(data: &Dataset, idx: &[usize]) -> Result<Tensor> {
    Ok(match &data.targets {
        Targets::Classes { labels, .. } => {
            let v: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            Tensor::from_vec(v, idx.len(), &Device::Cpu)?
        }
        Targets::Values(vals) => {
            let v: Vec<f32> = idx.iter().map(|&i| vals[i]).collect();
            Tensor::from_vec(v, (idx.len(), 1), &Device::Cpu)?
        }
    })
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
    ranks: Option<&dyn crate::dist::Comm>,
) -> Result<Scores> {
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
    if let (Some(t), Some(term)) = (&objective.val_targets, objective.soft.first()) {
        return embedding_scores(&out, t, model.spec.outputs, term.loss);
    }
    Ok(score_outputs(&out, val, None))
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
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let (cfg, train, val, seed, fill, progress) = (
        first.cfg,
        first.train,
        first.val,
        first.seed,
        first.fill,
        first.progress,
    );
    let together = match &share {
        Some(sh) => sh.k > 1,
        None => models.len() > 1,
    };
    // Data-parallel: one model, several ranks; each takes its slice of every global batch.
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
    let n = train.len();
    let d = train.dim();
    let classification = matches!(train.targets, Targets::Classes { .. });
    let mut rng = Rng::derive(seed, stream);
    // Members trained together draw their dropout from streams of their own, so a member's
    // masks do not depend on which other members share its process.
    let mut member_rngs: Vec<Rng> = ids
        .iter()
        .map(|i| Rng::derive(seed, &format!("{stream}/member{i}")))
        .collect();
    let mut members: Vec<Member> = Vec::with_capacity(models.len());
    for (model, job) in models.iter().copied().zip(jobs) {
        let sizes: Vec<usize> = model.params.iter().map(|(_, v)| v.elem_count()).collect();
        let adapter = hint_adapter(model, &job)?;
        let adapter_opt = adapter
            .as_ref()
            .map(|a| Optimizer::new(cfg, &[a.elem_count()]));
        // The autograd-free path: families that have one, without a hint term, a hook that
        // replaces the forward pass, or peers (their mutual learning runs through autograd).
        let fast = crate::models::fused::eligible(model)
            && job.objective.hint.is_none()
            && forward_hook(&job.hooks).is_none()
            && !together;
        if !fast && cfg.precision == crate::kernels::bf16::MatmulPrecision::Bf16 {
            progress.say(&format!(
                "{}: trains through autograd (hint, peers, hooks or its family), in f32: \
                 precision = \"bf16\" applies to the autograd-free path",
                job.name
            ));
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
            job,
        });
    }
    let patience = if together { None } else { cfg.patience };
    let patience_hit = |bad: usize| patience.map(|p| bad >= p).unwrap_or(false);
    let mut start_epoch = 0usize;
    if !together {
        let m = &mut members[0];
        if let Some(ck) = m.job.checkpoint.clone() {
            if ck.exists() {
                let st = load_checkpoint(&ck, m.model, &mut m.opt, &mut m.best_weights)?;
                if st.name == m.job.name {
                    start_epoch = st.epoch;
                    rng = Rng::from_state(st.rng);
                    m.opt.step = st.opt_step;
                    m.best_val_loss = st.best_val_loss;
                    m.bad_epochs = st.bad_epochs;
                    m.record = st.record;
                    m.record.resumed_from_epoch = Some(st.epoch);
                    progress.say(&format!(
                        "{}: resuming from the checkpoint after epoch {}",
                        m.job.name, st.epoch
                    ));
                }
            }
        }
        if patience_hit(m.bad_epochs) {
            start_epoch = cfg.epochs; // already stopped early before the kill
        }
    }

    let mut xbuf = Vec::with_capacity(cfg.batch_size * d);
    let outputs = models[0].spec.outputs;
    let mut teacher_buf: Vec<f32> = Vec::new();
    let set_name = first_name(&members);
    for epoch in start_epoch..cfg.epochs {
        let t0 = Instant::now();
        let sent0 = crate::dist::bytes_sent();
        crate::dist::fault_point(&format!("epoch{}/{set_name}", epoch + 1))?;
        let lr = learning_rate(cfg, epoch);
        // Data-parallel ranks draw dropout for their rows from a stream of their own (one per
        // epoch, so a resumed run draws the same masks).
        let mut dp_rng = Rng::derive(seed, &format!("{stream}/rank{}/epoch{epoch}", comm.rank()));
        let perm = rng.permutation(n);
        let batches = n.div_ceil(cfg.batch_size);
        let bar = progress.epoch(&set_name, epoch, cfg.epochs, batches);
        for m in members.iter_mut() {
            for h in m.job.hooks.iter_mut() {
                h.start_epoch(m.model, epoch)?;
            }
            m.tally = Tally::default();
        }
        for (bi, full_idx) in perm.chunks(cfg.batch_size).enumerate() {
            crate::progress::check_interrupt()?;
            let full_b = full_idx.len();
            let (lo, hi) = if dp {
                (
                    full_b * comm.rank() / comm.size(),
                    full_b * (comm.rank() + 1) / comm.size(),
                )
            } else {
                (0, full_b)
            };
            let idx = &full_idx[lo..hi];
            let b = idx.len();
            if dp && train.jitters(cfg.jitter) {
                // Every rank jitters the whole global batch from the shared stream (so the
                // stream stays the same on every rank), then keeps its rows.
                train.gather(full_idx, cfg.jitter, fill, &mut rng, &mut xbuf);
                xbuf.copy_within(lo * d..hi * d, 0);
                xbuf.truncate(b * d);
            } else {
                train.gather(idx, cfg.jitter, fill, &mut rng, &mut xbuf);
            }
            let (cls_buf, val_buf): (Vec<u32>, Vec<f32>) = match &train.targets {
                Targets::Classes { labels, .. } => {
                    (idx.iter().map(|&i| labels[i]).collect(), Vec::new())
                }
                Targets::Values(v) => (Vec::new(), idx.iter().map(|&i| v[i]).collect()),
            };
            // Every member's forward pass first, so that peers see each other's predictions
            // from before this batch's steps.
            let x = if members.iter().any(|m| !m.fast) {
                Some(Tensor::from_slice(&xbuf, (b, d), &Device::Cpu)?)
            } else {
                None
            };
            let y = match &x {
                Some(_) => Some(labels_tensor(train, idx)?),
                None => None,
            };
            let mut forwards: Vec<(Option<Tensor>, Option<Tensor>)> = Vec::new();
            for (mi, m) in members.iter_mut().enumerate() {
                let drop_rng = if together {
                    &mut member_rngs[mi]
                } else if dp {
                    &mut dp_rng
                } else {
                    &mut rng
                };
                if m.fast {
                    if b > 0 {
                        m.ws.forward(m.model, &xbuf, b, Some(drop_rng))?;
                    }
                    forwards.push((None, None));
                    continue;
                }
                let x = x
                    .as_ref()
                    .ok_or_else(|| Error::Other("no batch tensor".into()))?;
                let hint_layer = m.job.objective.hint.as_ref().map(|h| h.student_layer);
                if b == 0 {
                    forwards.push((None, None));
                    continue;
                }
                forwards.push(match forward_hook(&m.job.hooks) {
                    Some(h) => (Some(h.forward(m.model, x, Mode::Train(drop_rng))?), None),
                    None => {
                        let (l, hid) =
                            m.model
                                .forward_hidden(x, Mode::Train(drop_rng), hint_layer)?;
                        (Some(l), hid)
                    }
                });
            }
            let peer_outputs: Vec<Vec<f32>> = if together {
                let mine: Vec<Vec<f32>> = forwards
                    .iter()
                    .map(|(l, _)| match l {
                        Some(l) => Ok(l.flatten_all()?.to_vec1::<f32>()?),
                        None => Ok(Vec::new()),
                    })
                    .collect::<Result<_>>()?;
                match &share {
                    None => mine,
                    Some(sh) => exchange_outputs(sh, mine, b * outputs)?,
                }
            } else {
                Vec::new()
            };
            for (k, (m, (logits, s_hidden))) in members.iter_mut().zip(forwards).enumerate() {
                let obj = &m.job.objective;
                // Each soft term's targets for this batch.
                let mut soft_bufs: Vec<Vec<f32>> = Vec::new();
                for term in &obj.soft {
                    soft_bufs.push(match &term.signal {
                        TeacherSignal::Cached(all) => {
                            teacher_buf.clear();
                            for &i in idx {
                                teacher_buf.extend_from_slice(&all[i * outputs..(i + 1) * outputs]);
                            }
                            teacher_buf.clone()
                        }
                        TeacherSignal::Live(t) => t.predict_rows(&xbuf, b)?,
                        TeacherSignal::Peers(of) => {
                            let refs: Vec<&[f32]> =
                                of.iter().map(|&j| peer_outputs[j].as_slice()).collect();
                            if classification {
                                losses::mutual::probs_as_logits(
                                    &losses::mutual::peer_average(&refs, outputs, term.temperature),
                                    term.temperature,
                                )
                            } else {
                                losses::mutual::mean_outputs(&refs)
                            }
                        }
                    });
                }
                if obj.label_weight == 0.0
                    && obj.soft.iter().all(|t| t.weight == 0.0)
                    && obj.hint.is_none()
                {
                    return Err(Error::Input(format!(
                        "model {}: every loss term has weight 0",
                        m.job.name
                    )));
                }
                let (lv, hits) = if m.fast {
                    let soft: Vec<objective::SoftBatch> = obj
                        .soft
                        .iter()
                        .zip(&soft_bufs)
                        .map(|(t, v)| objective::SoftBatch {
                            targets: v,
                            temperature: t.temperature,
                            weight: t.weight,
                            loss: t.loss,
                        })
                        .collect();
                    let labels = if classification {
                        objective::BatchLabels::Classes(&cls_buf)
                    } else {
                        objective::BatchLabels::Values(&val_buf)
                    };
                    let lv = if b > 0 {
                        m.ws.loss_and_grad(&labels, obj.label_weight, &soft, outputs)?
                    } else {
                        0.0
                    };
                    if !dp && (!lv.is_finite() || lv > cfg.max_loss) {
                        return Err(divergence(&m.job, epoch, bi, lv));
                    }
                    if b > 0 {
                        m.ws.backward(m.model, b)?;
                    }
                    let hits = if b > 0 {
                        m.ws.logits
                            .chunks_exact(outputs)
                            .zip(&cls_buf)
                            .filter(|(row, &y)| crate::eval::argmax(row) == y as usize)
                            .count()
                    } else {
                        0
                    };
                    if dp {
                        let zeros;
                        let local = if b > 0 {
                            &m.ws.grads
                        } else {
                            zeros = zero_grads(m.model);
                            &zeros
                        };
                        let (sum, glv, ghits) = sum_across(comm, local, lv, hits, b, full_b);
                        if !glv.is_finite() || glv > cfg.max_loss {
                            return Err(divergence(&m.job, epoch, bi, glv));
                        }
                        m.opt.step_slices(m.model, &split_like(&sum, local), lr)?;
                        (glv, ghits)
                    } else {
                        m.opt.step_slices(m.model, &m.ws.grads, lr)?;
                        (lv, hits)
                    }
                } else {
                    // Through autograd. Data-parallel: this rank's rows' gradients (none when its
                    // slice of the batch is empty), summed across the ranks, then the same step
                    // everywhere.
                    let local = match logits {
                        Some(logits) if b > 0 => {
                            let y = y.as_ref().ok_or_else(|| Error::Other("no labels".into()))?;
                            let loss = autograd_loss(
                                obj,
                                &logits,
                                y,
                                &soft_bufs,
                                s_hidden.as_ref(),
                                m.adapter.as_ref(),
                                x.as_ref(),
                                classification,
                                b,
                                m.job.name,
                            )?;
                            let hits = if classification && obj.val_targets.is_none() {
                                let v = logits.argmax(1)?.to_vec1::<u32>()?;
                                v.iter().zip(&cls_buf).filter(|(a, b)| a == b).count()
                            } else {
                                0
                            };
                            Some((loss.to_scalar::<f32>()? as f64, hits, loss))
                        }
                        _ if dp => None,
                        _ => return Err(Error::Other("no logits".into())),
                    };
                    if dp {
                        let adapter = m.adapter.as_ref().map(adapter_model);
                        let (lv, hits, grads) = match local {
                            Some((lv, hits, loss)) => {
                                let store = loss.backward()?;
                                let mut grads = grads_of(m.model, &store)?;
                                if let Some(a) = &adapter {
                                    grads.extend(grads_of(a, &store)?);
                                }
                                (lv, hits, grads)
                            }
                            None => {
                                let mut g = zero_grads(m.model);
                                if let Some(a) = &adapter {
                                    g.extend(zero_grads(a));
                                }
                                (0.0, 0, g)
                            }
                        };
                        let (sum, glv, ghits) = sum_across(comm, &grads, lv, hits, b, full_b);
                        if !glv.is_finite() || glv > cfg.max_loss {
                            return Err(divergence(&m.job, epoch, bi, glv));
                        }
                        let grads = split_like(&sum, &grads);
                        let n_model = m.model.params.len();
                        m.opt.step_slices(m.model, &grads[..n_model], lr)?;
                        if let (Some(a), Some(ao)) = (&adapter, m.adapter_opt.as_mut()) {
                            ao.step_slices(a, &grads[n_model..], lr)?;
                        }
                        (glv, ghits)
                    } else {
                        let (lv, hits, loss) =
                            local.ok_or_else(|| Error::Other("no logits".into()))?;
                        if !lv.is_finite() || lv > cfg.max_loss {
                            return Err(divergence(&m.job, epoch, bi, lv));
                        }
                        let grads = loss.backward()?;
                        m.opt.step(m.model, &grads, lr)?;
                        if let (Some(a), Some(ao)) = (&m.adapter, m.adapter_opt.as_mut()) {
                            ao.step(&adapter_model(a), &grads, lr)?;
                        }
                        (lv, hits)
                    }
                };
                for h in m.job.hooks.iter_mut() {
                    h.after_step(m.model)?;
                }
                m.tally.add(lv, if dp { full_b } else { b }, hits);
                let _ = k;
            }
            let (loss, acc) = mean_tally(&members);
            bar.step(loss, classification.then_some(acc));
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut stop_all = !members.is_empty();
        let mut summary = String::new();
        for m in members.iter_mut() {
            let vs = validate(
                m.model,
                val,
                &m.job.hooks,
                &m.job.objective,
                dp.then_some(comm),
            )?;
            let tally = std::mem::take(&mut m.tally);
            let record = &mut m.record;
            let c = &mut record.curves;
            c.epoch.push(epoch + 1);
            c.train_loss.push(tally.loss());
            if classification {
                c.train_accuracy.push(tally.accuracy());
                c.val_accuracy.push(vs.accuracy.unwrap_or(0.0));
            } else {
                c.val_mse.push(vs.loss);
            }
            c.val_loss.push(vs.loss);
            c.lr.push(lr);
            c.seconds.push(secs);
            if dp {
                let d = record.data_parallel.get_or_insert_with(Default::default);
                d.ranks = comm.size();
                d.steps += n.div_ceil(cfg.batch_size) as u64;
                d.bytes_sent += crate::dist::bytes_sent() - sent0;
            }
            record.seconds += secs;
            record.epochs_run = epoch + 1;
            if vs.loss < m.best_val_loss {
                m.best_val_loss = vs.loss;
                record.best_epoch = epoch + 1;
                m.bad_epochs = 0;
                if patience.is_some() {
                    m.best_weights = Some(m.model.weights()?);
                }
            } else {
                m.bad_epochs += 1;
            }
            if !summary.is_empty() {
                summary.push_str(" | ");
            }
            summary.push_str(&match vs.accuracy {
                Some(a) => format!(
                    "loss {:.4}  val_loss {:.4}  val_acc {:.2}%",
                    tally.loss(),
                    vs.loss,
                    100.0 * a
                ),
                None => format!("loss {:.4}  val_mse(std) {:.4}", tally.loss(), vs.loss),
            });
            let stop = patience_hit(m.bad_epochs);
            record.stopped_early = stop && epoch + 1 < cfg.epochs;
            stop_all &= stop;
            if let Some(ck) = &m.job.checkpoint {
                let st = CheckpointState {
                    kind: "checkpoint".into(),
                    name: m.job.name.to_string(),
                    epoch: epoch + 1,
                    opt_step: m.opt.step,
                    rng: rng.state(),
                    best_val_loss: m.best_val_loss,
                    best_epoch: record.best_epoch,
                    bad_epochs: m.bad_epochs,
                    record: record.clone(),
                };
                save_checkpoint(ck, m.model, &m.opt, m.best_weights.as_deref(), &st)?;
            }
        }
        bar.finish(&format!("{summary}  lr {lr:.2e}  {secs:.1}s"));
        if stop_all {
            let m = &members[0];
            progress.say(&format!(
                "{}: early stop after epoch {} (no val-loss improvement for {} epochs); keeping epoch {}",
                m.job.name,
                epoch + 1,
                m.bad_epochs,
                m.record.best_epoch
            ));
            break;
        }
    }
    let mut records = Vec::with_capacity(members.len());
    for mut m in members {
        if let Some(w) = &m.best_weights {
            m.model.set_weights(w)?;
        } else if patience.is_none() {
            m.record.best_epoch = m.record.epochs_run;
        }
        for h in m.job.hooks.iter_mut() {
            h.finish(m.model)?;
        }
        records.push(m.record);
    }
    Ok(records)
}

/// The objective's loss on a batch through candle autograd (the path of models without a
/// fused pass, hint terms, hooks that replace the forward pass, and peers).
#[allow(clippy::too_many_arguments)]
fn autograd_loss(
    obj: &Objective,
    logits: &Tensor,
    y: &Tensor,
    soft_bufs: &[Vec<f32>],
    s_hidden: Option<&Tensor>,
    adapter: Option<&Var>,
    x: Option<&Tensor>,
    classification: bool,
    b: usize,
    name: &str,
) -> Result<Tensor> {
    let mut terms: Vec<Tensor> = Vec::new();
    if obj.label_weight > 0.0 {
        let l = if classification {
            losses::cross_entropy(logits, y)?
        } else {
            losses::mse(logits, y)?
        };
        terms.push((l * obj.label_weight as f64)?);
    }
    for (term, t_out) in obj.soft.iter().zip(soft_bufs) {
        if term.weight == 0.0 {
            continue;
        }
        let l = if classification {
            term.loss.autograd(logits, t_out, y, term.temperature)?
        } else {
            losses::mse(logits, &Tensor::from_slice(t_out, (b, 1), &Device::Cpu)?)?
        };
        terms.push((l * term.weight as f64)?);
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
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    seen: usize,
    correct: usize,
}

impl Tally {
    fn add(&mut self, loss: f64, batch: usize, correct: usize) {
        self.loss_sum += loss * batch as f64;
        self.seen += batch;
        self.correct += correct;
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
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
