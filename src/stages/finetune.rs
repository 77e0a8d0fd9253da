//! Fine-tuning a BERT teacher end to end (`[[teacher]] finetune = { … }`): every weight of the
//! encoder and a linear head on its sentence embedding, trained on the run's labels through
//! candle's autograd — AdamW (decoupled weight decay on the matrices only), linear warm-up
//! then linear decay, the gradient's global norm clipped to 1, dropout on the hidden states —
//! with the texts batched by length (little padding). After each epoch the validation split
//! is scored by the native encoder on the new weights; the epoch that validates best is
//! written as a Hugging Face folder (`config.json`, `model.safetensors` with the original
//! names, the tokenizer and sentence-transformers files) that [`BertEncoder`]
//! then runs, and its head as weights of a linear layer on the encoder's sentence embedding.
//! A checkpoint after each epoch (weights, AdamW's moments, the step) lets a killed run resume
//! at the start of the epoch it was in, to the same result.

use crate::error::{bad_field, Error, Result};
use crate::rng::Rng;
use crate::teachers::bert::{BertEncoder, Pooling};
use crate::teachers::native::{Config, HiddenAct};
use crate::train::optim::Optimizer;
use crate::train::TrainRecord;
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `[[teacher]] finetune = { … }`: how a BERT teacher is fine-tuned on the run's labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Texts per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The encoder's peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// The head's peak learning rate (it starts from scratch on an embedding of norm 1 when
    /// the folder normalises, so it needs larger steps than the pretrained encoder).
    #[serde(default = "default_head_lr")]
    pub head_lr: f64,
    /// AdamW's decoupled weight decay, on matrices only (not on biases or LayerNorm).
    #[serde(default = "default_decay")]
    pub weight_decay: f64,
    /// Share of the steps over which the learning rate rises linearly from 0; it then falls
    /// linearly to 0 at the last step.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    /// Dropout on the hidden states (after the embeddings, each attention output and each
    /// feed-forward output), as BERT was pretrained.
    #[serde(default = "default_dropout")]
    pub dropout: f32,
}

fn default_epochs() -> usize {
    3
}
fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    5e-5
}
fn default_head_lr() -> f64 {
    1e-3
}
fn default_decay() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.1
}
fn default_dropout() -> f32 {
    0.1
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: default_epochs(),
            batch_size: default_batch(),
            lr: default_lr(),
            head_lr: default_head_lr(),
            weight_decay: default_decay(),
            warmup: default_warmup(),
            dropout: default_dropout(),
        }
    }
}

impl FinetuneConfig {
    /// Checks the table; `p` is its path for messages.
    pub fn check(&self, p: &str) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            bad_field(p, "epochs and batch_size must be at least 1")?;
        }
        for (f, v) in [("lr", self.lr), ("head_lr", self.head_lr)] {
            if !(v.is_finite() && v > 0.0) {
                bad_field(
                    &format!("{p}.{f}"),
                    &format!("expected a positive number, got {v}"),
                )?;
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bad_field(
                &format!("{p}.weight_decay"),
                &format!("expected a number ≥ 0, got {}", self.weight_decay),
            )?;
        }
        if !(0.0..1.0).contains(&self.warmup) {
            bad_field(
                &format!("{p}.warmup"),
                &format!(
                    "expected a share of the steps in [0, 1), got {}",
                    self.warmup
                ),
            )?;
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bad_field(
                &format!("{p}.dropout"),
                &format!("expected a probability in [0, 1), got {}", self.dropout),
            )?;
        }
        Ok(())
    }

    /// The learning-rate factor (0..1) at optimizer step `step` (0-based) of `total`.
    pub fn schedule(&self, step: usize, total: usize) -> f64 {
        let warm = (self.warmup * total as f64).round() as usize;
        if step < warm {
            (step + 1) as f64 / warm as f64
        } else {
            let rest = total.saturating_sub(warm).max(1);
            (total.saturating_sub(step)) as f64 / rest as f64
        }
    }
}

/// The encoder's weights as trainable f32 variables, under the names of the file they came
/// from (written back under the same names).
pub struct Weights {
    names: Vec<String>,
    vars: Vec<Var>,
    index: HashMap<String, usize>,
    /// `""`, `"bert."` or `"<model_type>."`: what the file's names start with.
    prefix: String,
}

impl Weights {
    /// Reads every floating-point tensor of a `model.safetensors`.
    pub fn read(path: &Path, c: &Config) -> Result<Weights> {
        let bytes = crate::io::read_file(path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::Input(format!(
                "{}: not a valid safetensors file ({e})",
                path.display()
            ))
        })?;
        let mut all: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        all.sort();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        let mut names = Vec::new();
        let mut vars = Vec::new();
        let mut index = HashMap::new();
        for n in all {
            let Some(t) = tensors.get(&n) else { continue };
            if !t.dtype().is_float() {
                continue;
            }
            let t = t
                .to_dtype(DType::F32)
                .map_err(|e| Error::Input(format!("{}: {n}: {e}", path.display())))?;
            let v = Var::from_tensor(&t).map_err(|e| Error::Other(e.to_string()))?;
            index.insert(n.clone(), names.len());
            names.push(n);
            vars.push(v);
        }
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(t) = &c.model_type {
            prefixes.push(format!("{t}."));
        }
        let prefix = prefixes
            .into_iter()
            .find(|p| index.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                Error::Input(format!(
                    "{}: no tensor embeddings.word_embeddings.weight (with or without a bert. prefix)",
                    path.display()
                ))
            })?;
        Ok(Weights {
            names,
            vars,
            index,
            prefix,
        })
    }

    /// The tensor `name` (without the file's prefix).
    fn get(&self, name: &str) -> Result<&Tensor> {
        let full = format!("{}{name}", self.prefix);
        self.index
            .get(&full)
            .map(|&i| self.vars[i].as_tensor())
            .ok_or_else(|| Error::Input(format!("the weights have no tensor {full}")))
    }

    /// A LayerNorm's scale and shift (`weight`/`bias`, or the older `gamma`/`beta`).
    fn layer_norm(&self, name: &str) -> Result<(&Tensor, &Tensor)> {
        match (
            self.get(&format!("{name}.weight")),
            self.get(&format!("{name}.bias")),
        ) {
            (Ok(w), Ok(b)) => Ok((w, b)),
            _ => Ok((
                self.get(&format!("{name}.gamma"))?,
                self.get(&format!("{name}.beta"))?,
            )),
        }
    }

    /// Every tensor by its file name (for the native encoder and for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }
}

/// Dropout on the hidden states, its masks drawn from the run's seed by the models' own
/// [`crate::models::dropout`] (candle's own draws are not seeded); `Mode::Eval`: none.
struct Dropout<'r> {
    p: f32,
    mode: crate::models::Mode<'r>,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        crate::models::dropout(x, self.p, &mut self.mode)
    }
}

/// The encoder as a differentiable candle graph (the native encoder's forward pass, padded).
pub struct Graph<'a> {
    w: &'a Weights,
    c: &'a Config,
    pooling: Pooling,
    normalize: bool,
}

fn layer_norm(x: &Tensor, (g, b): (&Tensor, &Tensor), eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(g)?.broadcast_add(b)?)
}

impl<'a> Graph<'a> {
    /// The graph over `w`; `pooling` must be resolved (not `Auto`).
    pub fn new(w: &'a Weights, c: &'a Config, pooling: Pooling, normalize: bool) -> Self {
        Graph {
            w,
            c,
            pooling,
            normalize,
        }
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.w.get(&format!("{name}.weight"))?;
        let b = self.w.get(&format!("{name}.bias"))?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    }

    /// Sentence embeddings `[b, hidden]` of the padded ids `[b, l]` (`mask` `[b, l]`: 1 for a
    /// token, 0 for padding).
    fn embed(&self, ids: &Tensor, mask: &Tensor, drop: &mut Dropout<'_>) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let c = self.c;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let d = h / nh;
        let eps = c.layer_norm_eps;
        let word = self.w.get("embeddings.word_embeddings.weight")?;
        let pos = self
            .w
            .get("embeddings.position_embeddings.weight")?
            .narrow(0, 0, l)?;
        let ty = self
            .w
            .get("embeddings.token_type_embeddings.weight")?
            .narrow(0, 0, 1)?;
        let x = word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, h))?;
        let x = x.broadcast_add(&pos.broadcast_add(&ty)?)?;
        let x = layer_norm(&x, self.w.layer_norm("embeddings.LayerNorm")?, eps)?;
        let mut x = drop.apply(&x)?.reshape((b * l, h))?;
        // Padding gets −10⁹ before the softmax: no weight at all.
        let bias = ((mask - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (d as f64).sqrt();
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let heads = |t: Tensor| -> Result<Tensor> {
                Ok(t.reshape((b, l, nh, d))?.transpose(1, 2)?.contiguous()?)
            };
            let q = heads(self.linear(&x, &format!("{p}.attention.self.query"))?)?;
            let k = heads(self.linear(&x, &format!("{p}.attention.self.key"))?)?;
            let v = heads(self.linear(&x, &format!("{p}.attention.self.value"))?)?;
            let s = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let m = s.max_keepdim(D::Minus1)?.detach();
            let e = s.broadcast_sub(&m)?.exp()?;
            let pr = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let ctx = pr
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * l, h))?;
            let a = drop.apply(&self.linear(&ctx, &format!("{p}.attention.output.dense"))?)?;
            x = layer_norm(
                &(x + a)?,
                self.w
                    .layer_norm(&format!("{p}.attention.output.LayerNorm"))?,
                eps,
            )?;
            let u = self.linear(&x, &format!("{p}.intermediate.dense"))?;
            let u = match c.hidden_act {
                HiddenAct::Gelu => u.gelu_erf()?,
                HiddenAct::GeluApproximate => u.gelu()?,
                HiddenAct::Relu => u.relu()?,
            };
            let o = drop.apply(&self.linear(&u, &format!("{p}.output.dense"))?)?;
            x = layer_norm(
                &(x + o)?,
                self.w.layer_norm(&format!("{p}.output.LayerNorm"))?,
                eps,
            )?;
        }
        let x = x.reshape((b, l, h))?;
        let e = match self.pooling {
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
            _ => {
                let m = mask.unsqueeze(2)?;
                x.broadcast_mul(&m)?
                    .sum(1)?
                    .broadcast_div(&mask.sum_keepdim(1)?.maximum(1.0)?)?
            }
        };
        if self.normalize {
            let n = e.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
            Ok(e.broadcast_div(&n)?)
        } else {
            Ok(e)
        }
    }
}

impl Graph<'_> {
    /// Sentence embeddings of `ids` (`n × hidden`, no dropout), padded into one batch: what
    /// the native encoder gives for the same weights (tested).
    pub fn embeddings(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let refs: Vec<&Vec<u32>> = ids.iter().collect();
        let (t, mask) = padded(&refs)?;
        let mut none = Dropout {
            p: 0.0,
            mode: crate::models::Mode::Eval,
        };
        to_f32(&self.embed(&t, &mask, &mut none)?)
    }
}

/// Pads token-id lists to one length: ids `[b, l]` (u32, padding 0) and the mask `[b, l]`.
fn padded(ids: &[&Vec<u32>]) -> Result<(Tensor, Tensor)> {
    let l = ids.iter().map(|v| v.len()).max().unwrap_or(1).max(1);
    let mut flat = vec![0u32; ids.len() * l];
    let mut mask = vec![0f32; ids.len() * l];
    for (i, v) in ids.iter().enumerate() {
        flat[i * l..i * l + v.len()].copy_from_slice(v);
        mask[i * l..i * l + v.len()]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    Ok((
        Tensor::from_vec(flat, (ids.len(), l), &Device::Cpu)?,
        Tensor::from_vec(mask, (ids.len(), l), &Device::Cpu)?,
    ))
}

/// One epoch's batches: the samples shuffled, sorted by length within windows of 50 batches
/// (so a batch's texts are of similar length), and the batches shuffled.
pub fn batches(lens: &[usize], batch: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let order = rng.permutation(lens.len());
    let mut out = Vec::new();
    for window in order.chunks(batch * 50) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lens[i]);
        out.extend(w.chunks(batch).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut out);
    out
}

/// What fine-tuning needs from the run.
pub struct FinetuneJob<'a> {
    /// The teacher's name (for messages and files).
    pub name: &'a str,
    /// Settings.
    pub cfg: &'a FinetuneConfig,
    /// The pretrained encoder (its folder, tokenizer, pooling and normalisation).
    pub encoder: &'a BertEncoder,
    /// Token ids and class labels of the training and validation texts.
    pub train: (&'a [Vec<u32>], &'a [u32]),
    /// Validation ids and labels.
    pub val: (&'a [Vec<u32>], &'a [u32]),
    /// Number of classes.
    pub classes: usize,
    /// The folder the fine-tuned encoder goes to.
    pub out: PathBuf,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The run's seed.
    pub seed: u64,
    /// Progress display.
    pub progress: crate::progress::Progress,
}

/// The result: the fine-tuned folder, the head (`[hidden, classes]` row-major weight, bias)
/// over the encoder's sentence embedding, and the training record.
pub struct Finetuned {
    /// The folder with the fine-tuned encoder.
    pub dir: PathBuf,
    /// The head's weight, `hidden × classes`, row-major (distillery's `[in, out]`).
    pub head_w: Vec<f32>,
    /// The head's bias.
    pub head_b: Vec<f32>,
    /// Curves and the kept epoch.
    pub record: TrainRecord,
}

#[derive(Serialize, Deserialize)]
struct Done {
    settings: FinetuneConfig,
    source: String,
    seed: u64,
    record: TrainRecord,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    /// The encoder and data it fine-tunes (empty in a checkpoint that did not record them).
    #[serde(default)]
    source: String,
    epochs_done: usize,
    step: u64,
    best_val_loss: f64,
    record: TrainRecord,
}

/// The head's file inside the fine-tuned folder.
const HEAD_FILE: &str = "distillery_head.safetensors";
/// The record written last into the fine-tuned folder: present and equal means done.
const DONE_FILE: &str = "distillery_finetune.json";

fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Fine-tunes the encoder and a linear head on the labels; reads back a finished run.
pub fn finetune(job: FinetuneJob) -> Result<Finetuned> {
    let enc = job.encoder;
    let config: Config = enc.config.clone();
    let done_path = job.out.join(DONE_FILE);
    let source = source_key(&job);
    if let Some(done) = read_back(&job, &source)? {
        return Ok(done);
    }
    let w = Weights::read(&enc.dir.join("model.safetensors"), &config)?;
    let h = config.hidden_size;
    let k = job.classes;
    // The head reads the embedding × √hidden when it is normalised (entries of order 1).
    let in_scale = if enc.normalize {
        (h as f64).sqrt()
    } else {
        1.0
    };
    let mut init = Rng::derive(job.seed, &format!("finetune/{}/head", job.name));
    let std = 1.0 / (h as f32).sqrt();
    let head_w = Var::from_vec(
        (0..h * k).map(|_| init.normal() * std).collect::<Vec<_>>(),
        (h, k),
        &Device::Cpu,
    )?;
    let head_b = Var::from_vec(vec![0f32; k], k, &Device::Cpu)?;
    let mut all: Vec<Var> = w.vars.clone();
    all.push(head_w.clone());
    all.push(head_b.clone());
    let sizes: Vec<usize> = all.iter().map(|v| v.elem_count()).collect();
    let tc = crate::train::TrainConfig {
        optimizer: crate::train::OptimizerKind::Adamw,
        weight_decay: job.cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&tc, &sizes);
    let t = Trained {
        decays: all.iter().map(|v| v.rank() == 2).collect(),
        all,
        head_w,
        head_b,
        head_at: w.vars.len(),
        in_scale,
    };
    let (all, head_w, head_b) = (&t.all, &t.head_w, &t.head_b);
    let lens: Vec<usize> = job.train.0.iter().map(|v| v.len()).collect();
    let per_epoch = lens.len().div_ceil(job.cfg.batch_size);
    let total = per_epoch * job.cfg.epochs;
    let mut state = CheckpointState {
        source: source.clone(),
        epochs_done: 0,
        step: 0,
        best_val_loss: f64::INFINITY,
        record: TrainRecord::default(),
    };
    if job.checkpoint.exists() {
        state = read_checkpoint(&job.checkpoint, all, &mut opt)?;
        if !state.source.is_empty() && state.source != source {
            return Err(Error::Input(format!(
                "{}: a fine-tuning checkpoint of another encoder or other texts; delete it to start again",
                job.checkpoint.display()
            )));
        }
        state.source = source.clone();
        state.record.resumed_from_epoch = Some(state.epochs_done + 1);
        job.progress.say(&format!(
            "{}: resuming fine-tuning after epoch {} ({})",
            job.name,
            state.epochs_done,
            job.checkpoint.display()
        ));
    }
    let graph = Graph::new(&w, &config, enc.pooling, enc.normalize);
    for epoch in state.epochs_done..job.cfg.epochs {
        let started = std::time::Instant::now();
        let mut order = Rng::derive(job.seed, &format!("finetune/{}/order/{epoch}", job.name));
        let plan = batches(&lens, job.cfg.batch_size, &mut order);
        let mut masks = Rng::derive(job.seed, &format!("finetune/{}/dropout/{epoch}", job.name));
        let mut drop = Dropout {
            p: job.cfg.dropout,
            mode: crate::models::Mode::Train(&mut masks),
        };
        let bar = job.progress.epoch(
            &format!("{} fine-tuning", job.name),
            epoch,
            job.cfg.epochs,
            plan.len(),
        );
        let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
        let mut lr_sum = 0f64;
        for (bi, idx) in plan.iter().enumerate() {
            crate::progress::check_interrupt()?;
            let f = job.cfg.schedule(epoch * per_epoch + bi, total);
            lr_sum += f * job.cfg.lr;
            let (lv, ok) = train_step(&job, &graph, &t, &mut opt, idx, &mut drop, f, (epoch, bi))?;
            right += ok;
            seen += idx.len();
            loss_sum += lv * idx.len() as f64;
            bar.step(loss_sum / seen as f64, Some(right as f64 / seen as f64));
        }
        // Validation through the native encoder on the new weights.
        let (val_loss, val_acc) = validate(
            &job,
            &w,
            &to_f32(head_w.as_tensor())?,
            &to_f32(head_b.as_tensor())?,
            in_scale,
        )?;
        let c = &mut state.record.curves;
        c.epoch.push(epoch + 1);
        c.train_loss.push(loss_sum / seen.max(1) as f64);
        c.train_accuracy.push(right as f64 / seen.max(1) as f64);
        c.val_loss.push(val_loss);
        c.val_accuracy.push(val_acc);
        c.lr.push(lr_sum / plan.len().max(1) as f64);
        c.seconds.push(started.elapsed().as_secs_f64());
        state.record.seconds += started.elapsed().as_secs_f64();
        state.record.epochs_run = epoch + 1;
        if val_loss < state.best_val_loss {
            state.best_val_loss = val_loss;
            state.record.best_epoch = epoch + 1;
            let hw: Vec<f32> = to_f32(head_w.as_tensor())?
                .iter()
                .map(|v| v * in_scale as f32)
                .collect();
            write_folder(
                &enc.dir,
                &job.out,
                &w,
                &hw,
                &to_f32(head_b.as_tensor())?,
                (h, k),
            )?;
        }
        state.epochs_done = epoch + 1;
        state.step = opt.step;
        write_checkpoint(&job.checkpoint, all, &opt, &state)?;
        bar.finish(&format!(
            "train loss {:.4} acc {:.2}% | val loss {val_loss:.4} acc {:.2}% | {:.0} s",
            loss_sum / seen.max(1) as f64,
            100.0 * right as f64 / seen.max(1) as f64,
            100.0 * val_acc,
            started.elapsed().as_secs_f64()
        ));
    }
    let done = Done {
        settings: job.cfg.clone(),
        source,
        seed: job.seed,
        record: state.record.clone(),
    };
    crate::io::write_atomic(
        &done_path,
        &serde_json::to_vec_pretty(&done).map_err(|e| Error::Other(e.to_string()))?,
    )?;
    let _ = std::fs::remove_file(&job.checkpoint);
    let (head_w, head_b) = read_head(&job.out.join(HEAD_FILE))?;
    Ok(Finetuned {
        dir: job.out.clone(),
        head_w,
        head_b,
        record: state.record,
    })
}

/// The key of what is fine-tuned: the encoder and the labelled texts it learns and validates
/// on (a folder fine-tuned on another split is not read back).
fn source_key(job: &FinetuneJob) -> String {
    let bytes = |ids: &[Vec<u32>], y: &[u32]| -> Vec<u8> {
        let mut b = Vec::new();
        for (v, l) in ids.iter().zip(y) {
            b.extend((v.len() as u32).to_le_bytes());
            v.iter().for_each(|i| b.extend(i.to_le_bytes()));
            b.extend(l.to_le_bytes());
        }
        b
    };
    let (tr, va) = (bytes(job.train.0, job.train.1), bytes(job.val.0, job.val.1));
    crate::teachers::cache::key(
        &job.encoder.digest,
        "finetune: train, val",
        [&tr[..], &va[..]].into_iter(),
    )
}

/// The finished folder of an earlier run with the same settings, seed and `source`, if there
/// is one.
fn read_back(job: &FinetuneJob, source: &str) -> Result<Option<Finetuned>> {
    let done_path = job.out.join(DONE_FILE);
    if !done_path.exists() {
        return Ok(None);
    }
    let Ok(d) = serde_json::from_slice::<Done>(&crate::io::read_file(&done_path)?) else {
        return Ok(None);
    };
    if d.settings != *job.cfg || d.source != source || d.seed != job.seed {
        return Ok(None);
    }
    job.progress.say(&format!(
        "{}: already fine-tuned ({}); skipping",
        job.name,
        job.out.display()
    ));
    let (head_w, head_b) = read_head(&job.out.join(HEAD_FILE))?;
    Ok(Some(Finetuned {
        dir: job.out.clone(),
        head_w,
        head_b,
        record: d.record,
    }))
}

/// What one step updates: every encoder tensor, then the head.
struct Trained {
    all: Vec<Var>,
    head_w: Var,
    head_b: Var,
    /// Weight decay per tensor: matrices (and the embedding tables) only.
    decays: Vec<bool>,
    /// Where the head's two tensors start in `all`.
    head_at: usize,
    /// The head reads the embedding × this (√hidden when it is normalised).
    in_scale: f64,
}

/// One step on the training texts `idx`: the graph and the head, cross-entropy, the gradient's
/// global norm clipped to 1, AdamW at `f` of the peak learning rates (the encoder's and the
/// head's). Returns the batch's mean loss and its right answers.
#[allow(clippy::too_many_arguments)]
fn train_step(
    job: &FinetuneJob,
    graph: &Graph,
    t: &Trained,
    opt: &mut Optimizer,
    idx: &[usize],
    drop: &mut Dropout,
    f: f64,
    at: (usize, usize),
) -> Result<(f64, usize)> {
    let ids: Vec<&Vec<u32>> = idx.iter().map(|&i| &job.train.0[i]).collect();
    let (t_ids, mask) = padded(&ids)?;
    let y: Vec<u32> = idx.iter().map(|&i| job.train.1[i]).collect();
    let y = Tensor::from_vec(y.clone(), y.len(), &Device::Cpu)?;
    let e = graph.embed(&t_ids, &mask, drop)?;
    let logits = (e * t.in_scale)?
        .matmul(t.head_w.as_tensor())?
        .broadcast_add(t.head_b.as_tensor())?;
    let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
    let lv = loss.to_scalar::<f32>()? as f64;
    if !lv.is_finite() {
        return Err(Error::Diverged(format!(
            "teacher.{}.finetune: the loss diverged ({lv}) at step {} of epoch {}; lower finetune.lr",
            job.name,
            at.1 + 1,
            at.0 + 1
        )));
    }
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let right = pred
        .iter()
        .zip(idx)
        .filter(|(p, &i)| **p == job.train.1[i])
        .count();
    let grads = loss.backward()?;
    let mut sq = 0f64;
    for v in &t.all {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let clip = 1.0 / sq.sqrt().max(1.0);
    let lrs: Vec<f64> = (0..t.all.len())
        .map(|i| {
            f * if i >= t.head_at {
                job.cfg.head_lr
            } else {
                job.cfg.lr
            }
        })
        .collect();
    opt.step_vars(&t.all, &lrs, &t.decays, &grads, clip as f32)?;
    Ok((lv, right))
}

/// Validation loss and accuracy of the current weights, through the native encoder.
fn validate(
    job: &FinetuneJob,
    w: &Weights,
    head_w: &[f32],
    head_b: &[f32],
    in_scale: f64,
) -> Result<(f64, f64)> {
    let enc = job.encoder.with_weights(w.tensors())?;
    let (ids, labels) = job.val;
    let h = enc.hidden;
    let k = head_b.len();
    let (mut loss, mut right) = (0f64, 0usize);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    for chunk in order.chunks(32) {
        let part: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let e = enc.embed_ids(&part)?;
        for (r, &i) in chunk.iter().enumerate() {
            let x = &e[r * h..(r + 1) * h];
            let z: Vec<f64> = (0..k)
                .map(|c| {
                    head_b[c] as f64
                        + x.iter()
                            .enumerate()
                            .map(|(j, &v)| v as f64 * in_scale * head_w[j * k + c] as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let y = labels[i] as usize;
            loss += lse - z[y];
            let best = (0..k).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap_or(0);
            right += usize::from(best == y);
        }
    }
    let n = ids.len().max(1) as f64;
    Ok((loss / n, right as f64 / n))
}

/// Writes the fine-tuned folder: the weights under their original names, the head, and the
/// source folder's config, tokenizer and sentence-transformers files.
fn write_folder(
    src: &Path,
    out: &Path,
    w: &Weights,
    head_w: &[f32],
    head_b: &[f32],
    (h, k): (usize, usize),
) -> Result<()> {
    std::fs::create_dir_all(out.join("1_Pooling")).map_err(|e| Error::io(out, e))?;
    for f in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
        "1_Pooling/config.json",
    ] {
        let from = src.join(f);
        if from.exists() {
            crate::io::write_atomic(&out.join(f), &crate::io::read_file(&from)?)?;
        }
    }
    save_tensors(&out.join("model.safetensors"), &w.tensors())?;
    let mut head = HashMap::new();
    head.insert(
        "weight".to_string(),
        Tensor::from_vec(head_w.to_vec(), (h, k), &Device::Cpu)?,
    );
    head.insert(
        "bias".to_string(),
        Tensor::from_vec(head_b.to_vec(), k, &Device::Cpu)?,
    );
    save_tensors(&out.join(HEAD_FILE), &head)
}

fn save_tensors(path: &Path, t: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = path.with_extension("safetensors.part");
    candle_core::safetensors::save(t, &tmp)
        .map_err(|e| Error::Other(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn read_head(path: &Path) -> Result<(Vec<f32>, Vec<f32>)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let get = |n: &str| -> Result<Vec<f32>> {
        to_f32(
            t.get(n)
                .ok_or_else(|| Error::Input(format!("{}: no tensor {n}", path.display())))?,
        )
    };
    Ok((get("weight")?, get("bias")?))
}

fn write_checkpoint(
    path: &Path,
    all: &[Var],
    opt: &Optimizer,
    state: &CheckpointState,
) -> Result<()> {
    let mut t = HashMap::new();
    for (i, v) in all.iter().enumerate() {
        t.insert(format!("w{i}"), v.as_tensor().clone());
        let n = v.elem_count();
        t.insert(
            format!("m{i}"),
            Tensor::from_slice(&opt.m[i], n, &Device::Cpu)?,
        );
        t.insert(
            format!("v{i}"),
            Tensor::from_slice(&opt.v[i], n, &Device::Cpu)?,
        );
    }
    let json = serde_json::to_vec(state).map_err(|e| Error::Other(e.to_string()))?;
    t.insert(
        "state".to_string(),
        Tensor::from_vec(json.clone(), json.len(), &Device::Cpu)?,
    );
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    save_tensors(path, &t)
}

fn read_checkpoint(path: &Path, all: &[Var], opt: &mut Optimizer) -> Result<CheckpointState> {
    let bad = |what: &str| {
        Error::Input(format!(
            "{}: not a fine-tuning checkpoint of this teacher ({what}); delete it to start again",
            path.display()
        ))
    };
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(&e.to_string()))?;
    let state = t
        .get("state")
        .ok_or_else(|| bad("no state"))?
        .to_vec1::<u8>()
        .map_err(|e| bad(&e.to_string()))?;
    let state: CheckpointState = serde_json::from_slice(&state).map_err(|e| bad(&e.to_string()))?;
    for (i, v) in all.iter().enumerate() {
        let get = |n: String| -> Result<Tensor> {
            let x = t.get(&n).ok_or_else(|| bad(&format!("no tensor {n}")))?;
            if x.elem_count() != v.elem_count() {
                return Err(bad(&format!("{n} has another size")));
            }
            Ok(x.clone())
        };
        v.set(&get(format!("w{i}"))?.reshape(v.shape())?)?;
        opt.m[i] = to_f32(&get(format!("m{i}"))?)?;
        opt.v[i] = to_f32(&get(format!("v{i}"))?)?;
    }
    opt.step = state.step;
    Ok(state)
}
