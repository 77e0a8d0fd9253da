//! Training settings: the `train = { … }` table of a model, a recovery or a transfer round.

use crate::error::{bad_field, Result};
use serde::{Deserialize, Serialize};

/// Optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Adam; `weight_decay` is an L2 term added to the gradient (as PyTorch's Adam).
    Adam,
    /// AdamW; decoupled weight decay.
    Adamw,
    /// SGD with (heavy-ball) momentum; `weight_decay` as an L2 term.
    Sgd,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs.
    Step,
    /// Cosine decay from `lr` to `min_lr` over the epochs.
    Cosine,
}

/// How a model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Mini-batch size.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `adam`, `adamw` or `sgd`.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    /// Initial learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// `constant`, `step` or `cosine`.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Step schedule: epochs between decays.
    #[serde(default = "default_step_size")]
    pub step_size: usize,
    /// Step schedule: decay factor.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Cosine schedule: final learning rate.
    #[serde(default)]
    pub min_lr: f64,
    /// Epochs of linear warm-up (lr · (e + 1) / w) before the schedule, which then runs over
    /// the remaining epochs.
    #[serde(default, skip_serializing_if = "is_zero_epochs")]
    pub warmup_epochs: usize,
    /// Max-norm constraint (Srivastava et al. 2014, as Hinton et al. 2015 trained their MNIST
    /// teacher): after every step, each unit's incoming weight vector of every dense layer is
    /// scaled back to this L2 norm when it is longer. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f64>,
    /// Random shifts of the input images by up to this many pixels.
    #[serde(default)]
    pub jitter: usize,
    /// Augmentation of every training batch (shifts, flips, erasing, scaling, noise, mixup,
    /// CutMix), seen by the student and by a live teacher alike.
    #[serde(default, skip_serializing_if = "is_inactive")]
    pub augment: crate::data::augment::AugmentConfig,
    /// Fixed views (unset: a fresh view every batch): each sample has this many augmented
    /// views, drawn once from the run's seed, and epoch e shows every sample its view e mod
    /// `views`. A teacher too slow to run on every batch then runs once per view, into the
    /// run's disk cache (keyed by teacher, augmentation, seed and view), and the student reads
    /// its outputs on the very view it sees. Not with mixup or CutMix, which pair samples anew
    /// every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<usize>,
    /// Stop when the validation loss has not improved for this many epochs (the best
    /// epoch's weights are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// A training loss above this (or NaN) stops the run as diverged.
    #[serde(default = "default_max_loss")]
    pub max_loss: f64,
    /// `f32`, or `bf16`: the dense layers' matrix products of the autograd-free path (MLPs and
    /// the CNNs' dense layers) take bf16 operands with f32 sums, as PyTorch's CPU autocast;
    /// weights, optimizer state and everything else stay f32. Models trained through autograd
    /// (hints, peers, text students) train in f32 and say so.
    #[serde(default, skip_serializing_if = "MatmulPrecision::is_f32")]
    pub precision: MatmulPrecision,
    /// Within an epoch, the training state is also checkpointed when this many seconds of
    /// training have passed since the last checkpoint, so that a run killed mid-epoch resumes
    /// from there with the same result (0: only after each epoch). Not with hooks (pruning,
    /// QAT), under data parallelism, or for models trained together.
    #[serde(
        default = "default_checkpoint_seconds",
        skip_serializing_if = "is_default_checkpoint_seconds"
    )]
    pub checkpoint_seconds: f64,
}

fn default_checkpoint_seconds() -> f64 {
    60.0
}
fn is_default_checkpoint_seconds(v: &f64) -> bool {
    *v == default_checkpoint_seconds()
}

pub use crate::kernels::bf16::MatmulPrecision;

fn default_epochs() -> usize {
    10
}
fn default_batch() -> usize {
    128
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_lr() -> f64 {
    1e-3
}
fn default_momentum() -> f64 {
    0.9
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_step_size() -> usize {
    10
}
fn default_gamma() -> f64 {
    0.1
}
fn default_max_loss() -> f64 {
    1e4
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            batch_size: default_batch(),
            optimizer: default_optimizer(),
            lr: default_lr(),
            momentum: default_momentum(),
            weight_decay: 0.0,
            schedule: default_schedule(),
            step_size: default_step_size(),
            gamma: default_gamma(),
            min_lr: 0.0,
            max_norm: None,
            jitter: 0,
            augment: Default::default(),
            views: None,
            warmup_epochs: 0,
            patience: None,
            max_loss: default_max_loss(),
            precision: MatmulPrecision::F32,
            checkpoint_seconds: default_checkpoint_seconds(),
        }
    }
}

fn is_zero_epochs(v: &usize) -> bool {
    *v == 0
}

fn is_inactive(a: &crate::data::augment::AugmentConfig) -> bool {
    !a.is_active()
}

impl TrainConfig {
    /// The number of fixed views per sample (`views`), 0 when every batch draws fresh ones.
    pub fn fixed_views(&self) -> usize {
        self.views.unwrap_or(0)
    }

    /// Whether the training batches are changed (shifted, augmented): a teacher must then be
    /// run on each batch, not read from outputs computed once.
    pub fn augments(&self) -> bool {
        self.jitter > 0 || self.augment.is_active()
    }

    /// The images' shift in pixels (`jitter`, or `augment.shift` on images).
    pub fn image_shift(&self) -> usize {
        self.jitter.max(self.augment.shift)
    }

    /// Checks the values; `p` is the table's path in the experiment file, for the messages, and
    /// `images` whether the data are images (jitter needs them).
    pub fn check(&self, p: &str, images: bool) -> Result<()> {
        self.check_for(p, crate::data::augment::InputKind::of(images, false))
    }

    /// [`TrainConfig::check`] for data of a known kind (texts take the token augmentations).
    pub fn check_for(&self, p: &str, kind: crate::data::augment::InputKind) -> Result<()> {
        let images = kind == crate::data::augment::InputKind::Images;
        let t = self;
        if t.epochs == 0 {
            bad_field(&format!("{p}.epochs"), "must be at least 1")?;
        }
        if t.batch_size == 0 {
            bad_field(&format!("{p}.batch_size"), "must be at least 1")?;
        }
        if !(t.checkpoint_seconds.is_finite() && t.checkpoint_seconds >= 0.0) {
            bad_field(
                &format!("{p}.checkpoint_seconds"),
                &format!("expected seconds ≥ 0, got {}", t.checkpoint_seconds),
            )?;
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bad_field(
                &format!("{p}.lr"),
                &format!("must be a positive number, got {}", t.lr),
            )?;
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bad_field(
                &format!("{p}.momentum"),
                &format!("expected [0, 1), got {}", t.momentum),
            )?;
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bad_field(
                &format!("{p}.weight_decay"),
                &format!("must be ≥ 0, got {}", t.weight_decay),
            )?;
        }
        if t.schedule == ScheduleKind::Step
            && (t.step_size == 0 || !(t.gamma > 0.0 && t.gamma <= 1.0))
        {
            bad_field(
                &format!("{p}.step_size"),
                "step schedule needs step_size ≥ 1 and gamma in (0, 1]",
            )?;
        }
        if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            bad_field(
                &format!("{p}.min_lr"),
                &format!("expected 0 ≤ min_lr ≤ lr, got {}", t.min_lr),
            )?;
        }
        if t.jitter > 0 && !images {
            bad_field(
                &format!("{p}.jitter"),
                "jitter shifts images; the data are not images (set data.image_shape)",
            )?;
        }
        t.augment.check(&format!("{p}.augment"), kind)?;
        if t.jitter > 0 && t.augment.shift > 0 {
            bad_field(
                &format!("{p}.augment.shift"),
                "give the shift once: jitter or augment.shift",
            )?;
        }
        if t.views == Some(0) {
            bad_field(
                &format!("{p}.views"),
                "expected at least 1 view (leave views out for a fresh view every batch)",
            )?;
        }
        if t.views.is_some() {
            if !t.augments() {
                bad_field(
                    &format!("{p}.views"),
                    "fixed views are augmented views: set jitter or augment too (or remove views)",
                )?;
            }
            if t.augment.mixup > 0.0 || t.augment.cutmix > 0.0 {
                bad_field(
                    &format!("{p}.views"),
                    "mixup and CutMix pair the samples of each batch anew, so their views cannot be fixed beforehand: remove views (the teacher then runs on every batch) or mixup/cutmix",
                )?;
            }
        }
        if t.warmup_epochs >= t.epochs && t.warmup_epochs > 0 {
            bad_field(
                &format!("{p}.warmup_epochs"),
                &format!(
                    "expected fewer warm-up epochs than epochs ({}), got {}",
                    t.epochs, t.warmup_epochs
                ),
            )?;
        }
        if t.patience == Some(0) {
            bad_field(&format!("{p}.patience"), "must be at least 1 epoch")?;
        }
        if t.max_loss.is_nan() || t.max_loss <= 0.0 {
            bad_field(&format!("{p}.max_loss"), "must be positive")?;
        }
        if let Some(c) = t.max_norm {
            if !(c.is_finite() && c > 0.0) {
                bad_field(
                    &format!("{p}.max_norm"),
                    &format!("expected a positive norm, got {c}"),
                )?;
            }
        }
        Ok(())
    }
}

use super::grid::Trial;

/// The grid, its scores and the choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoChoice {
    /// Epochs per trial.
    pub trial_epochs: usize,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The chosen α.
    pub alpha: f32,
    /// The chosen temperature.
    pub temperature: f32,
    /// The teacher's validation accuracy (classification), for the warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_val_accuracy: Option<f64>,
    /// Set when the teacher validates worse than the labels-only trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// When the winner distils (α > 0): the full runs of the winner and of the same student on
    /// labels alone, at their best epochs, and which was kept (the better on validation), so
    /// that "auto" never ends below labels alone on validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_runs: Option<FullRuns>,
}

impl AutoChoice {
    /// The (α, T) of the best trial: the choice itself until the full runs are compared, which
    /// may then set α to 0.
    pub fn winner(&self) -> (f32, f32) {
        match &self.full_runs {
            Some(f) => (f.distilled.weight, f.distilled.temperature),
            None => (self.alpha, self.temperature),
        }
    }
}

/// The full-length check of an "auto" winner against labels alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullRuns {
    /// The winner, trained in full.
    pub distilled: Trial,
    /// The same student on labels alone, trained in full.
    pub labels: Trial,
    /// True when the labels-only model was kept.
    pub kept_labels: bool,
    /// The labels-only student compared with, when it was one of the run's own models (then
    /// its weights are the ones kept); else the comparison was trained for the purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_model: Option<String>,
}

/// A distillation setting: a number, or `"auto"` (chosen on the validation split).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tunable {
    /// Chosen on the validation split.
    Auto,
    /// As given.
    Fixed(f32),
}

impl Tunable {
    /// The value when fixed.
    pub fn fixed(self) -> Option<f32> {
        match self {
            Tunable::Fixed(v) => Some(v),
            Tunable::Auto => None,
        }
    }
}

impl Serialize for Tunable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Tunable::Auto => s.serialize_str("auto"),
            Tunable::Fixed(v) => s.serialize_f32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Tunable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(Tunable::Fixed(v as f32)),
            Raw::Word(w) if w == "auto" => Ok(Tunable::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a number or \"auto\", got \"{w}\""
            ))),
        }
    }
}
