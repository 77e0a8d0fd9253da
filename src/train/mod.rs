//! The training loop: mini-batches from a seeded shuffle, optional image jitter, a supervised
//! or distillation objective, fused optimizer steps, a learning-rate schedule, validation every
//! epoch, early stopping that keeps the best epoch's weights, divergence detection, and an
//! atomic checkpoint after every epoch from which a killed run resumes exactly.

pub mod objective;
pub mod optim;
mod settings;

pub use settings::{OptimizerKind, ScheduleKind, TrainConfig};

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
    /// sees the same inputs every epoch, so its forward pass is not repeated).
    Cached(Vec<f32>),
    /// Run the teacher on each (jittered) batch.
    Live(&'a Model),
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
}

impl<'a> Objective<'a> {
    /// Labels only.
    pub fn supervised() -> Self {
        Objective {
            label_weight: 1.0,
            soft: Vec::new(),
            hint: None,
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
    /// Pruning masks and fake quantization during training.
    pub extras: TrainExtras,
}

/// Gradual magnitude pruning during training.
#[derive(Debug, Clone)]
pub struct PruneSchedule {
    /// Sparsity reached at the end of the ramp.
    pub sparsity: f64,
    /// Global or per-layer threshold.
    pub scope: crate::compress::prune::Scope,
    /// Epochs over which sparsity rises along the cubic schedule (then held).
    pub ramp_epochs: usize,
}

/// Optional additions to the training loop.
#[derive(Debug, Clone, Default)]
pub struct TrainExtras {
    /// Prune while training: masks recomputed at the start of each epoch, re-applied after
    /// every optimizer step.
    pub prune: Option<PruneSchedule>,
    /// Quantization-aware training: the forward pass fake-quantizes with these activation
    /// quantizers (one per dense layer) and per-channel int8 weights.
    pub qat: Option<Vec<crate::compress::quant::ActQuant>>,
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

/// Validation scores of `model` on `val` (through the fake-quantized forward pass under QAT).
fn validate(model: &Model, val: &Dataset, extras: &TrainExtras) -> Result<Scores> {
    let out = match &extras.qat {
        None => model.predict(&val.x, 512)?,
        Some(acts) => {
            let d = val.dim();
            let mut out = Vec::new();
            for chunk in val.x.chunks(512 * d) {
                let t = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)?;
                let y = crate::compress::quant::qat_forward(model, &t, acts, Mode::Eval)?;
                out.extend(y.flatten_all()?.to_vec1::<f32>()?);
            }
            out
        }
    };
    Ok(score_outputs(&out, val, None))
}

/// Trains `model` in place; returns its training record. Resumes from `job.checkpoint` when
/// that file exists.
pub fn fit(model: &Model, job: TrainJob) -> Result<TrainRecord> {
    let cfg = job.cfg;
    let n = job.train.len();
    let d = job.train.dim();
    let classification = matches!(job.train.targets, Targets::Classes { .. });
    let sizes: Vec<usize> = model.params.iter().map(|(_, v)| v.elem_count()).collect();
    let mut opt = Optimizer::new(cfg, &sizes);
    let mut rng = Rng::derive(job.seed, &format!("train/{}", job.name));
    // FitNets: a learned linear adapter from the student's hidden width to the teacher's.
    let adapter: Option<Var> = match &job.objective.hint {
        Some(h) => {
            let s_w = *model.spec.arch.hidden.get(h.student_layer).ok_or_else(|| {
                Error::Input(format!(
                    "model {}: hint student_layer {} does not exist ({} hidden layers)",
                    job.name,
                    h.student_layer,
                    model.spec.arch.hidden.len()
                ))
            })?;
            let t_w = *h
                .teacher
                .spec
                .arch
                .hidden
                .get(h.teacher_layer)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "model {}: hint teacher_layer {} does not exist ({} hidden layers)",
                        job.name,
                        h.teacher_layer,
                        h.teacher.spec.arch.hidden.len()
                    ))
                })?;
            let mut arng = Rng::derive(job.seed, &format!("adapter/{}", job.name));
            let bound = (1.0 / s_w as f32).sqrt();
            let v: Vec<f32> = (0..s_w * t_w)
                .map(|_| arng.uniform_range(-bound, bound))
                .collect();
            Some(Var::from_tensor(&Tensor::from_vec(
                v,
                (s_w, t_w),
                &Device::Cpu,
            )?)?)
        }
        None => None,
    };
    let mut adapter_opt = adapter
        .as_ref()
        .map(|a| Optimizer::new(cfg, &[a.elem_count()]));
    let mut record = TrainRecord::default();
    let mut best_val_loss = f64::INFINITY;
    let mut best_weights: Option<Vec<Vec<f32>>> = None;
    let mut bad_epochs = 0usize;
    let mut start_epoch = 0usize;

    if let Some(ck) = &job.checkpoint {
        if ck.exists() {
            let st = load_checkpoint(ck, model, &mut opt, &mut best_weights)?;
            if st.name == job.name {
                start_epoch = st.epoch;
                rng = Rng::from_state(st.rng);
                opt.step = st.opt_step;
                best_val_loss = st.best_val_loss;
                bad_epochs = st.bad_epochs;
                record = st.record;
                record.resumed_from_epoch = Some(st.epoch);
                job.progress.say(&format!(
                    "{}: resuming from the checkpoint after epoch {}",
                    job.name, st.epoch
                ));
            }
        }
    }
    let patience_hit = |bad: usize| cfg.patience.map(|p| bad >= p).unwrap_or(false);
    if patience_hit(bad_epochs) {
        start_epoch = cfg.epochs; // already stopped early before the kill
    }

    let mut xbuf = Vec::with_capacity(cfg.batch_size * d);
    // MLPs without a hint term or fake quantization train without autograd.
    let fast_path = crate::models::fused::eligible(model)
        && job.objective.hint.is_none()
        && job.extras.qat.is_none();
    let mut ws = crate::models::fused::Workspace::default();
    let mut teacher_buf: Vec<f32> = Vec::new();
    let outputs = model.spec.outputs;
    for epoch in start_epoch..cfg.epochs {
        let t0 = Instant::now();
        let lr = learning_rate(cfg, epoch);
        let perm = rng.permutation(n);
        let batches = n.div_ceil(cfg.batch_size);
        let bar = job.progress.epoch(job.name, epoch, cfg.epochs, batches);
        let masks = match &job.extras.prune {
            Some(p) => {
                let s = crate::compress::prune::cubic_sparsity(
                    p.sparsity,
                    (epoch + 1).min(p.ramp_epochs.max(1)),
                    p.ramp_epochs.max(1),
                );
                let m = crate::compress::prune::Masks::magnitude(model, s, p.scope)?;
                m.apply(model)?;
                Some(m)
            }
            None => None,
        };
        let mut tally = Tally::default();
        for (bi, idx) in perm.chunks(cfg.batch_size).enumerate() {
            let b = idx.len();
            job.train
                .gather(idx, cfg.jitter, job.fill, &mut rng, &mut xbuf);
            if fast_path {
                // The same objective without autograd (see `fast`).
                ws.forward(model, &xbuf, b, Some(&mut rng))?;
                let mut soft_bufs: Vec<Vec<f32>> = Vec::new();
                for term in &job.objective.soft {
                    soft_bufs.push(match &term.signal {
                        TeacherSignal::Cached(all) => idx
                            .iter()
                            .flat_map(|&i| all[i * outputs..(i + 1) * outputs].iter().copied())
                            .collect(),
                        TeacherSignal::Live(t) => t.predict(&xbuf, b)?,
                    });
                }
                let soft: Vec<objective::SoftBatch> = job
                    .objective
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
                let (cls_buf, val_buf): (Vec<u32>, Vec<f32>) = match &job.train.targets {
                    Targets::Classes { labels, .. } => {
                        (idx.iter().map(|&i| labels[i]).collect(), Vec::new())
                    }
                    Targets::Values(v) => (Vec::new(), idx.iter().map(|&i| v[i]).collect()),
                };
                let labels = if classification {
                    objective::BatchLabels::Classes(&cls_buf)
                } else {
                    objective::BatchLabels::Values(&val_buf)
                };
                if job.objective.label_weight == 0.0 && soft.iter().all(|t| t.weight == 0.0) {
                    return Err(Error::Input(format!(
                        "model {}: every loss term has weight 0",
                        job.name
                    )));
                }
                let lv = ws.loss_and_grad(&labels, job.objective.label_weight, &soft, outputs)?;
                if !lv.is_finite() || lv > cfg.max_loss {
                    return Err(divergence(&job, epoch, bi, lv));
                }
                ws.backward(model, b)?;
                opt.step_slices(model, &ws.grads, lr)?;
                let hits = ws
                    .logits
                    .chunks_exact(outputs)
                    .zip(&cls_buf)
                    .filter(|(row, &y)| crate::eval::argmax(row) == y as usize)
                    .count();
                tally.add(model, masks.as_ref(), lv, b, hits)?;
                bar.step(tally.loss(), classification.then(|| tally.accuracy()));
                continue;
            }
            let x = Tensor::from_slice(&xbuf, (b, d), &Device::Cpu)?;
            let y = labels_tensor(job.train, idx)?;
            let obj = &job.objective;
            let (logits, s_hidden) = match &job.extras.qat {
                Some(acts) => (
                    crate::compress::quant::qat_forward(model, &x, acts, Mode::Train(&mut rng))?,
                    None,
                ),
                None => model.forward_hidden(
                    &x,
                    Mode::Train(&mut rng),
                    obj.hint.as_ref().map(|h| h.student_layer),
                )?,
            };
            let mut terms: Vec<Tensor> = Vec::new();
            if obj.label_weight > 0.0 {
                let l = if classification {
                    losses::cross_entropy(&logits, &y)?
                } else {
                    losses::mse(&logits, &y)?
                };
                terms.push((l * obj.label_weight as f64)?);
            }
            for term in &obj.soft {
                if term.weight == 0.0 {
                    continue;
                }
                let t_out: &[f32] = match &term.signal {
                    TeacherSignal::Cached(all) => {
                        teacher_buf.clear();
                        for &i in idx {
                            teacher_buf.extend_from_slice(&all[i * outputs..(i + 1) * outputs]);
                        }
                        &teacher_buf
                    }
                    TeacherSignal::Live(t) => {
                        teacher_buf = t.forward(&x, Mode::Eval)?.flatten_all()?.to_vec1::<f32>()?;
                        &teacher_buf
                    }
                };
                let l = if classification {
                    term.loss.autograd(&logits, t_out, &y, term.temperature)?
                } else {
                    losses::mse(&logits, &Tensor::from_slice(t_out, (b, 1), &Device::Cpu)?)?
                };
                terms.push((l * term.weight as f64)?);
            }
            if let (Some(h), Some(sh), Some(a)) = (&obj.hint, &s_hidden, &adapter) {
                let (_, th) = h
                    .teacher
                    .forward_hidden(&x, Mode::Eval, Some(h.teacher_layer))?;
                let th = th
                    .ok_or_else(|| Error::Other("teacher hint layer missing".into()))?
                    .detach();
                terms.push((losses::hint_loss(sh, a.as_tensor(), &th)? * h.weight as f64)?);
            }
            let mut loss = terms.pop().ok_or_else(|| {
                Error::Input(format!("model {}: every loss term has weight 0", job.name))
            })?;
            for t in terms {
                loss = (loss + t)?;
            }
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() || lv > cfg.max_loss {
                return Err(divergence(&job, epoch, bi, lv));
            }
            let grads = loss.backward()?;
            opt.step(model, &grads, lr)?;
            if let (Some(a), Some(ao)) = (&adapter, adapter_opt.as_mut()) {
                ao.step(&adapter_model(a), &grads, lr)?;
            }
            let hits = if classification {
                let v = logits.argmax(1)?.to_vec1::<u32>()?;
                let yl = y.to_vec1::<u32>()?;
                v.iter().zip(&yl).filter(|(a, b)| a == b).count()
            } else {
                0
            };
            tally.add(model, masks.as_ref(), lv, b, hits)?;
            bar.step(tally.loss(), classification.then(|| tally.accuracy()));
        }
        let vs = validate(model, job.val, &job.extras)?;
        let secs = t0.elapsed().as_secs_f64();
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
        record.seconds += secs;
        record.epochs_run = epoch + 1;
        if vs.loss < best_val_loss {
            best_val_loss = vs.loss;
            record.best_epoch = epoch + 1;
            bad_epochs = 0;
            if cfg.patience.is_some() {
                best_weights = Some(model.weights()?);
            }
        } else {
            bad_epochs += 1;
        }
        let summary = match vs.accuracy {
            Some(a) => format!(
                "loss {:.4}  val_loss {:.4}  val_acc {:.2}%  lr {lr:.2e}  {secs:.1}s",
                tally.loss(),
                vs.loss,
                100.0 * a
            ),
            None => format!(
                "loss {:.4}  val_mse(std) {:.4}  lr {lr:.2e}  {secs:.1}s",
                tally.loss(),
                vs.loss
            ),
        };
        bar.finish(&summary);
        let stop = patience_hit(bad_epochs);
        record.stopped_early = stop && epoch + 1 < cfg.epochs;
        if let Some(ck) = &job.checkpoint {
            let st = CheckpointState {
                kind: "checkpoint".into(),
                name: job.name.to_string(),
                epoch: epoch + 1,
                opt_step: opt.step,
                rng: rng.state(),
                best_val_loss,
                best_epoch: record.best_epoch,
                bad_epochs,
                record: record.clone(),
            };
            save_checkpoint(ck, model, &opt, best_weights.as_deref(), &st)?;
        }
        if stop {
            job.progress.say(&format!(
                "{}: early stop after epoch {} (no val-loss improvement for {} epochs); keeping epoch {}",
                job.name,
                epoch + 1,
                bad_epochs,
                record.best_epoch
            ));
            break;
        }
    }
    if let Some(w) = &best_weights {
        model.set_weights(w)?;
    } else if cfg.patience.is_none() {
        record.best_epoch = record.epochs_run;
    }
    if let Some(p) = &job.extras.prune {
        // The kept epoch may precede the end of the ramp: enforce the final sparsity.
        crate::compress::prune::Masks::magnitude(model, p.sparsity, p.scope)?.apply(model)?;
    }
    Ok(record)
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
    /// After an optimizer step: re-applies pruning masks, then counts the batch.
    fn add(
        &mut self,
        model: &Model,
        masks: Option<&crate::compress::prune::Masks>,
        loss: f64,
        batch: usize,
        correct: usize,
    ) -> Result<()> {
        if let Some(m) = masks {
            m.apply(model)?;
        }
        self.loss_sum += loss * batch as f64;
        self.seen += batch;
        self.correct += correct;
        Ok(())
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
    let arch = crate::models::ArchConfig {
        kind: crate::models::ArchKind::Mlp,
        hidden: Vec::new(),
        dropout: 0.0,
        input_dropout: 0.0,
        channels: Vec::new(),
        kernel: 5,
    };
    Model {
        spec: models::ModelSpec {
            arch,
            input_shape: vec![a.dims()[0]],
            outputs: a.dims()[1],
        },
        params: vec![("adapter".to_string(), a.clone())],
    }
}
