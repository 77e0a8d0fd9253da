//! K sub-models with knowledge transfer until they agree.
//!
//! 1. **Form** K sub-models: fresh ones, or slices of a trained MLP teacher (each takes a
//!    disjoint subset of the hidden units of every hidden layer, with the weights that connect
//!    its own units; see [`split_teacher`]).
//! 2. **Phase 1**: each trains on its data — all of the training set, or its own 1/K shard —
//!    on labels, optionally mixed with the teacher's soft targets.
//! 3. **Phase 2**: transfer rounds. Each sub-model trains on
//!    `(1 − β)·[(1 − α)·CE + α·T²·KL(teacher)] + β·T²·KL(peers)`, with the peers' averaged
//!    softened outputs either live on every shared mini-batch (deep mutual learning) or from the
//!    end of the previous round on the sub-model's own shard (codistillation). After each round
//!    the validation disagreement is measured; the rounds stop below the tolerance.
//! 4. The round with the best ensemble validation accuracy (lowest validation loss for
//!    regression) is kept. Optionally the ensemble is distilled into one final student.
//!
//! Under MPI (`mpirun -np N`), sub-model k lives on rank k mod N (Anil et al. 2018,
//! codistillation): its owner alone trains it, in phase 1 and in every round, and then every
//! rank receives its weights ([`sync_members`]), so each rank computes its sub-models' stale
//! peers on its own data from the peers' weights, and measures the round as one process would.
//! Live peers exchange their outputs on every batch ([`train::fit_together_across`]). Every
//! exchange is a copy, so the results equal one process's bit for bit.

use crate::data::{self, Dataset, Splits, Targets};
use crate::dist::{self, Comm};
use crate::error::{bad_field, Error, Result};
use crate::eval::{self, Scores};
use crate::losses::mutual;
use crate::losses::SoftLoss;
use crate::models::Arch;
use crate::models::{self, Model, ModelSpec};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::train::{self, Objective, SoftTerm, TeacherSignal, TrainJob, TrainRecord};
use crate::train::{TrainConfig, Trial, Tunable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// How sub-models are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubmodelInit {
    /// Independent sub-models, initialised afresh.
    Fresh,
    /// Cut out of the trained teacher: disjoint subsets of its hidden units.
    Split,
}

/// Whose state peers' predictions come from during transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerMode {
    /// `live` on shared data, `stale` on shards.
    Auto,
    /// Peers' current predictions on every mini-batch (deep mutual learning).
    Live,
    /// Peers' predictions from the end of the previous round (codistillation).
    Stale,
}

/// Phase 2: rounds of knowledge transfer between the sub-models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Maximum number of rounds (0: phase 1 only).
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// Stop when the validation disagreement falls below this.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Epochs each sub-model trains per round.
    #[serde(default = "default_epochs_per_round")]
    pub epochs_per_round: usize,
    /// Weight β of the peer term; (1 − β) weighs the label (and teacher) loss. `"auto"`:
    /// chosen on the validation split among 0 (no transfer), 0.5 and 0.9 by short trials.
    #[serde(default = "default_peer_weight")]
    pub peer_weight: Tunable,
    /// Temperature of the peer term (default: the group's temperature); `"auto"`: chosen on
    /// the validation split among 1, 2 and 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Tunable>,
    /// `auto`, `live` or `stale`.
    #[serde(default = "default_peer_mode")]
    pub peers: PeerMode,
    /// Optimizer settings for the rounds (`epochs` is ignored: see `epochs_per_round`).
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_rounds() -> usize {
    10
}
fn default_tolerance() -> f64 {
    1e-3
}
fn default_epochs_per_round() -> usize {
    1
}
fn default_peer_weight() -> Tunable {
    Tunable::Fixed(0.5)
}

/// Peer weights tried when `peer_weight = "auto"` (0, no transfer, is phase 1 itself).
pub const PEER_WEIGHTS: [f32; 2] = [0.5, 0.9];
/// Peer temperatures tried when `transfer.temperature = "auto"`.
pub const PEER_TEMPERATURES: [f32; 3] = [1.0, 2.0, 4.0];
/// Transfer rounds in each trial of `"auto"`.
pub const TRIAL_ROUNDS: usize = 2;

/// What `"auto"` tried for a group's transfer and what it chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAuto {
    /// Rounds in each trial.
    pub trial_rounds: usize,
    /// Each candidate's best ensemble validation figures over its rounds (the trial's weight
    /// is β); β = 0 is phase 1.
    pub trials: Vec<Trial>,
    /// The chosen peer weight (0: no transfer).
    pub peer_weight: f32,
    /// The chosen peer temperature.
    pub temperature: f32,
}

fn default_peer_mode() -> PeerMode {
    PeerMode::Auto
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            rounds: default_rounds(),
            tolerance: default_tolerance(),
            epochs_per_round: default_epochs_per_round(),
            peer_weight: default_peer_weight(),
            temperature: None,
            peers: default_peer_mode(),
            train: TrainConfig::default(),
        }
    }
}

/// A student distilled from the sub-models' ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalStudentConfig {
    /// Model name.
    pub name: String,
    /// Architecture.
    pub arch: Arch,
    /// Training settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// Temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Soft-target weight.
    #[serde(default = "default_alpha")]
    pub alpha: f32,
}

/// One `[[submodels]]` group: K sub-models, phase 1 training, then transfer rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmodelsConfig {
    /// Group name; sub-models are `<name>-1` … `<name>-K`, the ensemble `<name>-ensemble`.
    pub name: String,
    /// Number of sub-models.
    pub k: usize,
    /// `fresh` or `split`.
    #[serde(default = "default_init")]
    pub init: SubmodelInit,
    /// A `[[model]]` to split (init = split) and/or whose soft targets are mixed in (alpha > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// The architecture of every sub-model (fresh), or dropout settings (split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// One architecture per sub-model (fresh), instead of `arch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archs: Vec<Arch>,
    /// Train each sub-model on its own disjoint 1/K shard of the training data.
    #[serde(default)]
    pub shards: bool,
    /// Weight of the teacher's soft targets in the sub-models' base loss.
    #[serde(default)]
    pub alpha: f32,
    /// Temperature for teacher and peer soft targets.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Phase 1 training.
    #[serde(default)]
    pub phase1: TrainConfig,
    /// Phase 2 transfer rounds.
    #[serde(default)]
    pub transfer: TransferConfig,
    /// Optionally distil the ensemble into one final student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_student: Option<FinalStudentConfig>,
    /// Multi-task sub-models: every member carries one head per `[[submodels.task]]` (the
    /// tables of a multi-task `[[model]]`, each with its teacher and labels), and the transfer
    /// between members runs per head.
    #[serde(default, rename = "task", skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<crate::train::tasks::TaskConfig>,
}

impl SubmodelsConfig {
    /// The group as a multi-task model (its task tables, the members' trunk, phase 1).
    pub fn multi_task(&self) -> crate::train::tasks::MultiTask<'_> {
        crate::train::tasks::MultiTask {
            table: "submodels",
            name: &self.name,
            arch: self.arch.as_ref(),
            train: &self.phase1,
            role: "submodel",
            tasks: &self.tasks,
        }
    }
}

impl SubmodelsConfig {
    /// Checks the group's own fields: its name (and the longest name it gives a member,
    /// `<name>-ensemble`), K, how the sub-models are made (`arch` or `archs` when fresh, none
    /// when split), the soft-target settings, phase 1, the transfer rounds and the final
    /// student. What involves other tables — a teacher that exists and, for a split, can be
    /// cut into K; names no other model uses — is the experiment's check, in `config`.
    pub fn check(&self, images: bool, text: bool) -> Result<()> {
        let g = self;
        let p = format!("submodels.{}", g.name);
        let input = models::Input::of(images, text);
        crate::io::check_name("submodels.name", &g.name)?;
        let longest = format!("{}-ensemble", g.name);
        if longest.len() > crate::io::MAX_NAME_LEN {
            bad_field(
                "submodels.name",
                &format!(
                    "'{}' leaves no room for its members' names ('{longest}' is longer than {} characters)",
                    g.name,
                    crate::io::MAX_NAME_LEN
                ),
            )?;
        }
        if g.k < 2 {
            bad_field(
                &format!("{p}.k"),
                &format!("needs at least 2 sub-models, got {}", g.k),
            )?;
        }
        match g.init {
            SubmodelInit::Split => {
                if g.teacher.is_none() {
                    bad_field(
                        &format!("{p}.teacher"),
                        "init = \"split\" needs the teacher to cut the sub-models from",
                    )?;
                }
                if !g.archs.is_empty() {
                    bad_field(
                        &format!("{p}.archs"),
                        "not used with init = \"split\" (sizes come from the teacher)",
                    )?;
                }
            }
            SubmodelInit::Fresh => match (&g.arch, g.archs.len()) {
                (None, 0) => bad_field(
                    &format!("{p}.arch"),
                    "required with init = \"fresh\" (or give `archs`, one per sub-model)",
                )?,
                (Some(_), n) if n > 0 => bad_field(
                    &format!("{p}.archs"),
                    "give either `arch` or `archs`, not both",
                )?,
                (None, n) if n != g.k => bad_field(
                    &format!("{p}.archs"),
                    &format!("has {n} entries for k = {}", g.k),
                )?,
                _ => {}
            },
        }
        if let Some(a) = &g.arch {
            a.check(&format!("{p}.arch"), input)?;
        }
        for (i, a) in g.archs.iter().enumerate() {
            a.check(&format!("{p}.archs[{i}]"), input)?;
        }
        if !(0.0..=1.0).contains(&g.alpha) {
            bad_field(
                &format!("{p}.alpha"),
                &format!("expected [0, 1], got {}", g.alpha),
            )?;
        }
        if g.alpha > 0.0 && g.teacher.is_none() {
            bad_field(
                &format!("{p}.alpha"),
                "alpha > 0 mixes in a teacher's soft targets: name the teacher",
            )?;
        }
        if !(g.temperature.is_finite() && g.temperature > 0.0) {
            bad_field(
                &format!("{p}.temperature"),
                &format!("must be positive, got {}", g.temperature),
            )?;
        }
        g.transfer
            .check(&format!("{p}.transfer"), images, g.shards)?;
        g.phase1.check(&format!("{p}.phase1"), images)?;
        if let Some(f) = &g.final_student {
            f.check(&format!("{p}.final_student"), input, images)?;
        }
        Ok(())
    }
}

impl TransferConfig {
    /// Checks the transfer rounds' settings (`shards`: the group trains on shards).
    pub fn check(&self, p: &str, images: bool, shards: bool) -> Result<()> {
        let tr = self;
        if !(tr.tolerance.is_finite() && tr.tolerance > 0.0) {
            bad_field(
                &format!("{p}.tolerance"),
                &format!("must be a positive number, got {}", tr.tolerance),
            )?;
        }
        if tr.epochs_per_round == 0 {
            bad_field(&format!("{p}.epochs_per_round"), "must be at least 1")?;
        }
        if let Some(b) = tr.peer_weight.fixed().filter(|b| !(0.0..=1.0).contains(b)) {
            bad_field(
                &format!("{p}.peer_weight"),
                &format!("expected [0, 1] or \"auto\", got {b}"),
            )?;
        }
        if let Some(t) = tr.temperature.and_then(|t| t.fixed()) {
            if !(t.is_finite() && t > 0.0) {
                bad_field(&format!("{p}.temperature"), "must be positive")?;
            }
        }
        if shards && tr.peers == PeerMode::Live {
            bad_field(&format!("{p}.peers"), "live peers need shared data: on shards each sub-model only sees its own part, so peers' predictions are taken from the previous round (stale)")?;
        }
        tr.train.check(&format!("{p}.train"), images)
    }
}

impl FinalStudentConfig {
    /// Checks the final student's own fields (that its name is unused is the experiment's
    /// check).
    pub fn check(&self, p: &str, input: models::Input, images: bool) -> Result<()> {
        crate::io::check_name(&format!("{p}.name"), &self.name)?;
        self.arch.check(&format!("{p}.arch"), input)?;
        self.train.check(&format!("{p}.train"), images)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bad_field(&format!("{p}.temperature"), "must be positive")?;
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bad_field(&format!("{p}.alpha"), "expected [0, 1]")?;
        }
        Ok(())
    }
}

/// Default distillation temperature of a group and its final student.
fn default_temperature() -> f32 {
    4.0
}
/// Default soft-target weight of a final student.
fn default_alpha() -> f32 {
    0.9
}

fn default_init() -> SubmodelInit {
    SubmodelInit::Fresh
}

/// Figures of one transfer round (round 0 = after phase 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Group name.
    pub group: String,
    /// Round number; 0 is the state after phase 1.
    pub round: usize,
    /// Mean KL between each sub-model's softened validation output and its peers' average
    /// (MSE for regression).
    pub disagreement: f64,
    /// Each sub-model's validation accuracy (classification).
    pub val_accuracy: Vec<f64>,
    /// Each sub-model's validation loss.
    pub val_loss: Vec<f64>,
    /// The ensemble's validation accuracy (classification).
    pub ensemble_val_accuracy: Option<f64>,
    /// The ensemble's validation loss.
    pub ensemble_val_loss: f64,
    /// Seconds spent in the round.
    pub seconds: f64,
    /// Bytes this rank sent to the others in the round (under MPI; 0 in one process).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_sent: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What a group run recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Group name.
    pub name: String,
    /// Number of sub-models.
    pub k: usize,
    /// `fresh` or `split`.
    pub init: SubmodelInit,
    /// Trained on disjoint shards.
    pub shards: bool,
    /// Peers' predictions: live (DML) or stale (codistillation).
    pub peers: String,
    /// Training samples each sub-model saw.
    pub shard_sizes: Vec<usize>,
    /// Split from a teacher: the fraction of the teacher's weight mass (Σ|w|) each sub-model
    /// keeps, and their sum (1 for one hidden layer; less for deeper teachers, whose weights
    /// between different sub-models' units are dropped).
    pub weight_mass_kept: Option<Vec<f64>>,
    /// Phase 1 training records.
    pub phase1: Vec<TrainRecord>,
    /// Each sub-model's test scores right after phase 1 (trained alone).
    pub phase1_test: Vec<Scores>,
    /// The ensemble's test scores right after phase 1.
    pub phase1_ensemble_test: Scores,
    /// One record per round, round 0 first.
    pub rounds: Vec<RoundRecord>,
    /// The round whose weights were kept.
    pub chosen_round: usize,
    /// Why that round.
    pub chosen_reason: String,
    /// Why the rounds stopped.
    pub stop_reason: String,
    /// Warnings (e.g. a class absent from a shard).
    pub warnings: Vec<String>,
    /// `"auto"` peer weight or temperature: the trials and the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<GroupAuto>,
    /// Wall seconds of the whole group (phase 1, trials and rounds), summed over the sessions
    /// of a resumed run.
    #[serde(default)]
    pub seconds: f64,
}

/// The outcome: the kept sub-models and the record.
pub struct GroupOutcome {
    /// `(name, model)` per sub-model.
    pub members: Vec<(String, Model)>,
    /// The record.
    pub record: GroupRecord,
}

/// Contiguous near-equal partition of `n` units into `k` groups.
fn partition(n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let base = n / k;
    let extra = n % k;
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Cuts an MLP teacher into `k` sub-models. Sub-model `i` takes the `i`-th contiguous block of
/// units in every hidden layer, with the teacher's weights among its own units (first layer:
/// the columns of its units; later layers: the rows of its previous-layer units and the
/// columns of its units; output layer: the rows of its last-layer units) and the output bias
/// divided by `k`. With one hidden layer the sub-models' logits therefore sum exactly to the
/// teacher's. Returns the models and the fraction of the teacher's Σ|w| each keeps.
pub fn split_teacher(
    teacher: &Model,
    k: usize,
    arch_override: Option<&Arch>,
) -> Result<(Vec<Model>, Vec<f64>)> {
    let spec = &teacher.spec;
    let teacher_head = match spec.arch.family().head() {
        Some(h) if spec.supports().split => h,
        _ => {
            return Err(Error::Input(format!(
                "splitting needs an MLP teacher, not {}; use init = \"fresh\"",
                spec.describe()
            )))
        }
    };
    let hidden = teacher_head.hidden;
    if hidden.is_empty() {
        return Err(Error::Input(
            "the teacher has no hidden units to split".into(),
        ));
    }
    if let Some(&min) = hidden.iter().min() {
        if k > min {
            return Err(Error::Input(format!(
                "cannot split a hidden layer of {min} units into {k} sub-models"
            )));
        }
    }
    let parts: Vec<Vec<std::ops::Range<usize>>> = hidden.iter().map(|&h| partition(h, k)).collect();
    let w = teacher.weights()?;
    let total_mass: f64 = teacher
        .param_kinds()
        .into_iter()
        .zip(&w)
        .filter(|(k, _)| k.is_weight())
        .map(|(_, v)| v.iter().map(|x| x.abs() as f64).sum::<f64>())
        .sum();
    let layers = hidden.len() + 1;
    let mut out = Vec::with_capacity(k);
    let mut kept = Vec::with_capacity(k);
    for i in 0..k {
        // Only an MLP splits (`Supports::split`): each part is an MLP of the part's widths.
        let head = arch_override
            .and_then(|o| o.family().head())
            .unwrap_or(teacher_head);
        let arch = Arch::Mlp(crate::models::mlp::MlpArch {
            hidden: parts.iter().map(|p| p[i].len()).collect(),
            dropout: head.dropout,
            input_dropout: head.input_dropout,
        });
        let sub_spec = ModelSpec {
            arch,
            input_shape: spec.input_shape.clone(),
            outputs: spec.outputs,
        };
        let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
        let mut mass = 0f64;
        for l in 0..layers {
            let (wt, bt) = (&w[2 * l], &w[2 * l + 1]);
            let shape = teacher.params[2 * l].1.dims();
            let (fan_in, fan_out) = (shape[0], shape[1]);
            let rows: std::ops::Range<usize> = if l == 0 {
                0..fan_in
            } else {
                parts[l - 1][i].clone()
            };
            let cols: std::ops::Range<usize> = if l + 1 == layers {
                0..fan_out
            } else {
                parts[l][i].clone()
            };
            let mut sw = Vec::with_capacity(rows.len() * cols.len());
            for r in rows.clone() {
                sw.extend_from_slice(&wt[r * fan_out + cols.start..r * fan_out + cols.end]);
            }
            mass += sw.iter().map(|x| x.abs() as f64).sum::<f64>();
            let sb: Vec<f32> = if l + 1 == layers {
                bt.iter().map(|b| b / k as f32).collect()
            } else {
                bt[cols.clone()].to_vec()
            };
            tensors.insert(format!("fc{l}.weight"), (vec![rows.len(), cols.len()], sw));
            tensors.insert(format!("fc{l}.bias"), (vec![cols.len()], sb));
        }
        out.push(Model::from_weights(sub_spec, &tensors, "teacher split")?);
        kept.push(if total_mass > 0.0 {
            mass / total_mass
        } else {
            0.0
        });
    }
    Ok((out, kept))
}

/// A sub-model cut from the teacher, made a multi-task member: its hidden layers as cut, and
/// an output layer of every head side by side — the columns of each head that learns from the
/// cut teacher itself (same width) are the cut's, every other head's start fresh (`rng`).
pub fn with_heads(
    cut: &Model,
    heads: &[crate::models::TaskHead],
    teacher: &str,
    rng: &mut Rng,
) -> Result<Model> {
    let width: usize = heads.iter().map(|h| h.outputs).sum();
    let member = Model::new(
        ModelSpec {
            arch: cut.spec.arch.clone(),
            input_shape: cut.spec.input_shape.clone(),
            outputs: width,
        },
        rng,
    )?;
    let (from, mut to) = (cut.weights()?, member.weights()?);
    let last = from.len() - 2;
    to[..last].clone_from_slice(&from[..last]);
    let t_out = cut.spec.outputs;
    let rows = from[last].len() / t_out;
    for h in heads
        .iter()
        .filter(|h| h.teacher.as_deref() == Some(teacher) && h.outputs == t_out)
    {
        for r in 0..rows {
            to[last][r * width + h.start..r * width + h.start + t_out]
                .copy_from_slice(&from[last][r * t_out..(r + 1) * t_out]);
        }
        to[last + 1][h.start..h.start + t_out].copy_from_slice(&from[last + 1]);
    }
    member.set_weights(&to)?;
    Ok(member)
}

/// Inputs for a group run.
pub struct GroupJob<'a> {
    /// The group's config.
    pub cfg: &'a SubmodelsConfig,
    /// Data.
    pub splits: &'a Splits,
    /// The teacher, when the group names one and it is a distillery model (what
    /// `init = "split"` cuts).
    pub teacher: Option<&'a Model>,
    /// The teacher's outputs on the training split, when the group names one (any teacher:
    /// a distillery model, an ONNX file, precomputed outputs, a mix).
    pub teacher_outputs: Option<crate::teachers::Rows>,
    /// Base seed.
    pub seed: u64,
    /// Output folder of the run.
    pub out: &'a Path,
    /// Progress display.
    pub progress: Progress,
    /// A multi-task group: every member's heads and each head's objective (its labels and
    /// teacher, with cached targets); empty for one task.
    pub heads: Vec<crate::models::TaskHead>,
    /// Each head's objective, in head order.
    pub tasks: Vec<crate::train::TaskObjective<'static>>,
}

/// What a multi-task group measures by: its members' heads, and an objective of every head's
/// task that scores validation outputs (`train::tasks::val_scores`).
struct Heads<'h> {
    heads: &'h [crate::models::TaskHead],
    val: Objective<'static>,
    weights: crate::train::TaskWeights,
}

impl Heads<'_> {
    /// Scores of outputs on validation: the tasks' validation loss and the first labelled
    /// class head's accuracy.
    fn val_scores(&self, out: &[f32], val: &Dataset, width: usize) -> Result<Scores> {
        crate::train::tasks::val_scores(&self.val, &self.weights, out, val, width)
    }

    /// Test scores of outputs: the first labelled head's, against its labels (the data's or
    /// a further column's), in the target's units.
    fn test_scores(&self, out: &[f32], test: &Dataset, s: &Splits, width: usize) -> Scores {
        let Some(h) = self.heads.iter().find(|h| h.labels) else {
            return Scores::default();
        };
        let z = crate::train::tasks::columns(out, width, &h.cols());
        match h
            .column
            .as_ref()
            .and_then(|c| test.extra.iter().position(|e| &e.name == c))
        {
            Some(k) => eval::score_targets(
                &z,
                &test.extra[k].targets,
                s.extra_scales.get(k).copied().flatten().as_ref(),
            ),
            None => eval::score_outputs(&z, test, s.target_scale.as_ref()),
        }
    }

    /// The members' disagreement, averaged over the heads (class heads at `temperature`).
    fn disagreement(&self, outs: &[Vec<f32>], width: usize, temperature: f32) -> f64 {
        let per: Vec<f64> = self
            .heads
            .iter()
            .map(|h| {
                let cols: Vec<Vec<f32>> = outs
                    .iter()
                    .map(|o| crate::train::tasks::columns(o, width, &h.cols()))
                    .collect();
                let values = h.kind != crate::models::HeadKind::Classes;
                mutual::disagreement(&cols, h.outputs, temperature, values)
            })
            .collect();
        per.iter().sum::<f64>() / per.len().max(1) as f64
    }
}

fn member_name(g: &str, i: usize) -> String {
    format!("{g}-{}", i + 1)
}

/// Every member's outputs on `data`: each rank predicts with the members it owns, then the
/// ranks exchange them (one all-gather). `scoring`: through the model's scoring path (as
/// `eval::evaluate` runs it) rather than its batch prediction.
fn member_outputs(
    comm: &dyn Comm,
    members: &[Model],
    data: &Dataset,
    scoring: bool,
) -> Result<Vec<Vec<f32>>> {
    let n = comm.size();
    let mut outs = vec![Vec::new(); members.len()];
    for (i, m) in members.iter().enumerate() {
        if dist::owner(i, n) == comm.rank() {
            outs[i] = if scoring {
                eval::predict_all(m, &data.x, data.dim(), 512)?
            } else {
                m.predict(&data.x, 512)?
            };
        }
    }
    if n == 1 {
        return Ok(outs);
    }
    let mine: Vec<Vec<f32>> = (0..members.len())
        .filter(|&i| dist::owner(i, n) == comm.rank())
        .map(|i| std::mem::take(&mut outs[i]))
        .collect();
    let got = comm.all_gather_bytes(&dist::pack_f32(&mine));
    for (r, bytes) in got.iter().enumerate() {
        let parts = dist::unpack_f32(bytes)?;
        let ids = (0..members.len()).filter(|&i| dist::owner(i, n) == r);
        for (i, p) in ids.zip(parts) {
            outs[i] = p;
        }
    }
    Ok(outs)
}

/// Each member's scores and the ensemble's on `data` (test scores in target units with `scale`;
/// `scoring` as in [`member_outputs`]).
fn member_scores(
    comm: &dyn Comm,
    members: &[Model],
    data: &Dataset,
    scale: Option<&data::TargetScale>,
    regression: bool,
    scoring: bool,
) -> Result<(Vec<Vec<f32>>, Vec<Scores>, Scores)> {
    let outs = member_outputs(comm, members, data, scoring)?;
    let scores = outs
        .iter()
        .map(|o| eval::score_outputs(o, data, scale))
        .collect();
    let ens = crate::teachers::ensemble_outputs(&outs, members[0].spec.outputs, regression);
    let ens_scores = eval::score_outputs(&ens, data, scale);
    Ok((outs, scores, ens_scores))
}

/// Validation figures of all members: (disagreement, per-member scores, ensemble scores);
/// a multi-task group's head by head (`heads`).
fn measure(
    comm: &dyn Comm,
    members: &[Model],
    val: &Dataset,
    temperature: f32,
    regression: bool,
    heads: Option<&Heads>,
) -> Result<(f64, Vec<Scores>, Scores)> {
    if let Some(h) = heads {
        let width = members[0].spec.outputs;
        let outs = member_outputs(comm, members, val, false)?;
        let scores = outs
            .iter()
            .map(|o| h.val_scores(o, val, width))
            .collect::<Result<Vec<_>>>()?;
        let ens = crate::train::tasks::ensemble_heads(&outs, h.heads, width);
        let ens_scores = h.val_scores(&ens, val, width)?;
        return Ok((
            h.disagreement(&outs, width, temperature),
            scores,
            ens_scores,
        ));
    }
    let (outs, scores, ens_scores) = member_scores(comm, members, val, None, regression, false)?;
    let classes = members[0].spec.outputs;
    let dis = mutual::disagreement(&outs, classes, temperature, regression);
    Ok((dis, scores, ens_scores))
}

/// After each rank trained the sub-models it owns: every sub-model's weights (and, when
/// `records` is given, its training record) from its owner, on every rank, through one
/// all-gather. A world of one does nothing.
fn sync_members(
    comm: &dyn Comm,
    members: &[Model],
    records: Option<&mut Vec<Option<TrainRecord>>>,
) -> Result<()> {
    let n = comm.size();
    if n == 1 {
        return Ok(());
    }
    let owned = |r: usize| (0..members.len()).filter(move |&i| dist::owner(i, n) == r);
    let mut mine = Vec::new();
    for i in owned(comm.rank()) {
        let w = dist::pack_f32(&members[i].weights()?);
        let rec = match records.as_deref() {
            Some(rs) => serde_json::to_vec(&rs[i]).map_err(|e| Error::Other(e.to_string()))?,
            None => Vec::new(),
        };
        for part in [w, rec] {
            mine.extend_from_slice(&(part.len() as u64).to_le_bytes());
            mine.extend_from_slice(&part);
        }
    }
    let got = comm.all_gather_bytes(&mine);
    let bad = |r: usize| Error::Other(format!("malformed sub-model message from rank {r}"));
    let mut records = records;
    for (r, buf) in got.iter().enumerate() {
        let mut at = 0usize;
        let mut next = || -> Result<&[u8]> {
            let len = buf
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
                .ok_or_else(|| bad(r))?;
            let part = buf.get(at + 8..at + 8 + len).ok_or_else(|| bad(r))?;
            at += 8 + len;
            Ok(part)
        };
        for i in owned(r) {
            let w = dist::unpack_f32(next()?)?;
            let rec = next()?;
            if r != comm.rank() {
                members[i].set_weights(&w)?;
                if let Some(rs) = records.as_deref_mut() {
                    rs[i] = serde_json::from_slice(rec).map_err(|_| bad(r))?;
                }
            }
        }
    }
    Ok(())
}

fn better(a: &RoundRecord, b: &RoundRecord) -> bool {
    match (a.ensemble_val_accuracy, b.ensemble_val_accuracy) {
        (Some(x), Some(y)) if x != y => x > y,
        _ => a.ensemble_val_loss < b.ensemble_val_loss,
    }
}

#[derive(Serialize, Deserialize)]
struct RoundState {
    kind: String,
    group: String,
    round: usize,
    best_round: usize,
    record: GroupRecord,
}

fn save_state(
    path: &Path,
    members: &[Model],
    best: &[Vec<Vec<f32>>],
    st: &RoundState,
) -> Result<()> {
    let mut tensors = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for ((name, var), (bw, cw)) in m.params.iter().zip(best[i].iter().zip(m.weights()?)) {
            tensors.push((format!("m{i}.{name}"), var.dims().to_vec(), cw));
            tensors.push((format!("best{i}.{name}"), var.dims().to_vec(), bw.clone()));
        }
    }
    let json = serde_json::to_string(st).map_err(|e| Error::Other(e.to_string()))?;
    crate::io::write_atomic(path, &models::tensors_to_safetensors(&tensors, &json)?)
}

fn load_state(path: &Path, members: &[Model]) -> Result<(RoundState, Vec<Vec<Vec<f32>>>)> {
    let file = path.display().to_string();
    let raw = models::parse_safetensors(&crate::io::read_file(path)?, &file)?;
    let st: RoundState = serde_json::from_str(&raw.meta_json)
        .map_err(|e| Error::Input(format!("{file}: malformed round state: {e}")))?;
    let mut best = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mut cur = Vec::new();
        let mut b = Vec::new();
        for (name, var) in &m.params {
            let get = |k: String| {
                raw.tensors
                    .get(&k)
                    .filter(|(_, v)| v.len() == var.elem_count())
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| Error::Input(format!("{file}: missing or mis-sized tensor {k}")))
            };
            cur.push(get(format!("m{i}.{name}"))?);
            b.push(get(format!("best{i}.{name}"))?);
        }
        m.set_weights(&cur)?;
        best.push(b);
    }
    Ok((st, best))
}

/// Runs a whole group: forms the sub-models, phase 1, the transfer rounds, and keeps the best
/// round. Resumes from `checkpoints/<group>.rounds.safetensors` (and phase-1 epoch checkpoints).
pub fn run_group(job: GroupJob) -> Result<GroupOutcome> {
    let g = job.cfg;
    let comm = dist::world();
    announce_ranks(&job, comm);
    let (members, kept) = form_members(&job)?;
    let (data, warnings) = member_data(&job)?;
    let teacher_out = teacher_targets(&job);
    let ckdir = job.out.join("checkpoints");
    let run = GroupRun {
        g,
        s: job.splits,
        job: &job,
        comm,
        members,
        data,
        teacher_out,
        live: match g.transfer.peers {
            PeerMode::Live => true,
            PeerMode::Stale => false,
            PeerMode::Auto => !g.shards,
        },
        regression: matches!(job.splits.train.targets, Targets::Values(_)),
        outputs: job.splits.train.outputs(),
        multi: multi_heads(&job)?,
        state_path: ckdir.join(format!("{}.rounds.safetensors", g.name)),
        ckdir,
        started: Instant::now(),
    };
    let mut state = match run.resume()? {
        Some(state) => state,
        None => run.phase_one(kept, warnings)?,
    };
    let (beta, peer_t) = run.transfer_settings(&mut state)?;
    run.rounds(&mut state, beta, peer_t)?;
    run.finish(state)
}

/// A multi-task group's heads and validation objective (`None` for one task).
fn multi_heads<'j>(job: &'j GroupJob<'_>) -> Result<Option<Heads<'j>>> {
    if job.heads.is_empty() {
        return Ok(None);
    }
    let tasks = job
        .tasks
        .iter()
        .map(|t| t.try_clone())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Other("a group task's teacher is not cached".into()))?;
    let weights = crate::train::TaskWeights::new(&tasks);
    Ok(Some(Heads {
        heads: &job.heads,
        val: Objective::multi_task(tasks),
        weights,
    }))
}

/// Says how the sub-models are spread over the ranks of an MPI job.
fn announce_ranks(job: &GroupJob, comm: &dyn Comm) {
    let g = job.cfg;
    if comm.size() == 1 {
        return;
    }
    let idle = comm.size().saturating_sub(g.k);
    job.progress.say(&format!(
        "{}: {} sub-models on {} ranks (sub-model i on rank i mod {}){}",
        g.name,
        g.k,
        comm.size(),
        comm.size(),
        if idle > 0 {
            format!(
                "; ranks {}–{} hold none: they take part in the exchanges and wait for the group to finish",
                g.k,
                comm.size() - 1
            )
        } else {
            String::new()
        }
    ));
}

/// The K sub-models: cut from the teacher (with the weight mass each keeps), or new.
fn form_members(job: &GroupJob) -> Result<(Vec<Model>, Option<Vec<f64>>)> {
    let (g, s) = (job.cfg, job.splits);
    Ok(match g.init {
        SubmodelInit::Split => {
            let t = job.teacher.ok_or_else(|| {
                Error::Input(format!(
                    "submodels.{}.teacher: required for init = \"split\"",
                    g.name
                ))
            })?;
            let (m, kept) = split_teacher(t, g.k, g.arch.as_ref())
                .map_err(|e| Error::Input(format!("submodels.{}: {e}", g.name)))?;
            if job.heads.is_empty() {
                (m, Some(kept))
            } else {
                let teacher_name = g.teacher.as_deref().unwrap_or_default();
                let mut v = Vec::with_capacity(m.len());
                for (i, cut) in m.iter().enumerate() {
                    let mut rng =
                        Rng::derive(job.seed, &format!("init/{}", member_name(&g.name, i)));
                    v.push(with_heads(cut, &job.heads, teacher_name, &mut rng)?);
                }
                (v, Some(kept))
            }
        }
        SubmodelInit::Fresh => {
            let mut v = Vec::new();
            for i in 0..g.k {
                let arch = if g.archs.is_empty() {
                    g.arch.clone()
                } else {
                    g.archs.get(i).cloned()
                }
                .ok_or_else(|| Error::Input(format!("submodels.{}.arch: required", g.name)))?;
                let outputs = if job.heads.is_empty() {
                    s.train.outputs()
                } else {
                    job.heads.iter().map(|h| h.outputs).sum()
                };
                let spec = ModelSpec {
                    arch,
                    input_shape: s.train.shape.clone(),
                    outputs,
                };
                let mut rng = Rng::derive(job.seed, &format!("init/{}", member_name(&g.name, i)));
                v.push(Model::new(spec, &mut rng)?);
            }
            (v, None)
        }
    })
}

/// Each sub-model's training data: its own shard, or (one copy of) the whole training split;
/// and a warning for every shard that misses a class.
fn member_data(job: &GroupJob) -> Result<(Vec<Dataset>, Vec<String>)> {
    let (g, s) = (job.cfg, job.splits);
    let n = s.train.len();
    if !g.shards {
        return Ok((vec![s.train.clone()], Vec::new()));
    }
    if g.k > n {
        return Err(Error::Input(format!(
            "submodels.{}.k: {} shards of {n} training samples would leave shards empty",
            g.name, g.k
        )));
    }
    let mut warnings = Vec::new();
    let sets: Vec<Dataset> = data::shards(n, g.k, job.seed)
        .iter()
        .map(|idx| s.train.subset(idx))
        .collect();
    if let Targets::Classes { names, .. } = &s.train.targets {
        for (i, d) in sets.iter().enumerate() {
            let labels = d.labels().unwrap_or(&[]);
            let missing: Vec<&str> = (0..names.len())
                .filter(|c| !labels.contains(&(*c as u32)))
                .map(|c| names[c].as_str())
                .collect();
            if !missing.is_empty() {
                let w = format!(
                    "submodels.{}: shard {} ({} samples) holds no sample of class {}",
                    g.name,
                    i + 1,
                    d.len(),
                    missing.join(", ")
                );
                job.progress.say(&format!("warning: {w}"));
                warnings.push(w);
            }
        }
    }
    Ok((sets, warnings))
}

/// Each sub-model's teacher targets (when the group distils a teacher, α > 0): the teacher's
/// training-split outputs, restricted to its shard.
fn teacher_targets(job: &GroupJob) -> Vec<Option<crate::teachers::Rows>> {
    let g = job.cfg;
    let outputs = job.splits.train.outputs();
    let shards = g
        .shards
        .then(|| data::shards(job.splits.train.len(), g.k, job.seed));
    (0..g.k)
        .map(|i| match (&job.teacher_outputs, &shards) {
            (Some(all), Some(sh)) if g.alpha > 0.0 => Some(
                sh[i]
                    .iter()
                    .flat_map(|&r| all[r * outputs..(r + 1) * outputs].iter().copied())
                    .collect::<Vec<f32>>()
                    .into(),
            ),
            (Some(all), None) if g.alpha > 0.0 => Some(all.clone()),
            _ => None,
        })
        .collect()
}

/// A group in progress: its settings and data, its members, where its state is kept.
struct GroupRun<'a, 'j> {
    g: &'a SubmodelsConfig,
    s: &'a Splits,
    job: &'j GroupJob<'a>,
    comm: &'static dyn Comm,
    members: Vec<Model>,
    /// One set per sub-model (shards), or one shared set.
    data: Vec<Dataset>,
    teacher_out: Vec<Option<crate::teachers::Rows>>,
    /// Peers' predictions on every shared batch (deep mutual learning) rather than from the
    /// previous round's end (codistillation).
    live: bool,
    regression: bool,
    outputs: usize,
    /// A multi-task group's heads and what they are measured by.
    multi: Option<Heads<'j>>,
    ckdir: std::path::PathBuf,
    state_path: std::path::PathBuf,
    started: Instant,
}

/// Where a group stands: its record, the kept round's weights, and the next round.
struct GroupState {
    record: GroupRecord,
    best: Vec<Vec<Vec<f32>>>,
    best_round: usize,
    next_round: usize,
    /// Seconds of earlier sessions (a resumed run).
    base_seconds: f64,
    /// Why the rounds stop, once they should.
    stop: bool,
}

impl GroupRun<'_, '_> {
    fn data_of(&self, i: usize) -> &Dataset {
        if self.g.shards {
            &self.data[i]
        } else {
            &self.data[0]
        }
    }

    fn mine(&self, i: usize) -> bool {
        dist::owner(i, self.comm.size()) == self.comm.rank()
    }

    /// The state saved after the last completed round, if this run was interrupted.
    fn resume(&self) -> Result<Option<GroupState>> {
        if !self.state_path.exists() {
            return Ok(None);
        }
        let (st, best) = load_state(&self.state_path, &self.members)?;
        self.job.progress.say(&format!(
            "{}: resuming after transfer round {}",
            self.g.name, st.round
        ));
        let mut state = GroupState {
            base_seconds: st.record.seconds,
            record: st.record,
            best,
            best_round: st.best_round,
            next_round: st.round + 1,
            stop: false,
        };
        self.check_converged(&mut state);
        Ok(Some(state))
    }

    /// A resumed group whose last round already agreed within the tolerance stops there.
    fn check_converged(&self, state: &mut GroupState) {
        let tol = self.g.transfer.tolerance;
        if let Some(r) = state.record.rounds.last() {
            if r.round > 0 && r.disagreement < tol {
                state.stop = true;
                state.record.stop_reason = format!(
                    "disagreement {:.3e} fell below the tolerance {tol:.1e}",
                    r.disagreement
                );
            }
        }
    }

    /// Phase 1: each sub-model on its owner rank (every one, in one process), on labels and
    /// the teacher's soft targets; then round 0 measured and saved.
    fn phase_one(&self, kept: Option<Vec<f64>>, warnings: Vec<String>) -> Result<GroupState> {
        let (g, s, job, comm) = (self.g, self.s, self.job, self.comm);
        let mut phase1: Vec<Option<TrainRecord>> = vec![None; g.k];
        for (i, m) in self.members.iter().enumerate() {
            if !self.mine(i) {
                continue;
            }
            dist::fault_point("phase1")?;
            let name = member_name(&g.name, i);
            job.progress.say(&format!(
                "{name}: phase 1, {} on {} samples{}",
                m.spec.describe(),
                self.data_of(i).len(),
                if g.shards { " (its own shard)" } else { "" }
            ));
            let objective = match (&self.teacher_out[i], &self.multi) {
                (_, Some(_)) => Objective::multi_task(self.task_templates(i)?),
                (Some(t), None) => {
                    Objective::hinton(TeacherSignal::Cached(t.clone()), g.temperature, g.alpha)
                }
                (None, None) => Objective::supervised(),
            };
            let rec = dist::local(|| {
                train::fit(
                    m,
                    TrainJob {
                        name: &name,
                        cfg: &g.phase1,
                        train: self.data_of(i),
                        val: &s.val,
                        objective,
                        fill: s.normalizer.zero_value(),
                        checkpoint: Some(
                            self.ckdir.join(format!("{name}.phase1.ckpt.safetensors")),
                        ),
                        seed: job.seed,
                        progress: job.progress,
                        hooks: Vec::new(),
                    },
                )
            })?;
            phase1[i] = Some(rec);
        }
        sync_members(comm, &self.members, Some(&mut phase1))?;
        let phase1: Vec<TrainRecord> = phase1.into_iter().flatten().collect();
        let (phase1_test, phase1_ensemble_test) = match &self.multi {
            Some(h) => {
                let width = self.members[0].spec.outputs;
                let outs = member_outputs(comm, &self.members, &s.test, true)?;
                let ens = crate::train::tasks::ensemble_heads(&outs, h.heads, width);
                (
                    outs.iter()
                        .map(|o| h.test_scores(o, &s.test, s, width))
                        .collect(),
                    h.test_scores(&ens, &s.test, s, width),
                )
            }
            None => {
                let (_, t, e) = member_scores(
                    comm,
                    &self.members,
                    &s.test,
                    s.target_scale.as_ref(),
                    self.regression,
                    true,
                )?;
                (t, e)
            }
        };
        let (dis, sc, es) = measure(
            comm,
            &self.members,
            &s.val,
            self.peer_t(),
            self.regression,
            self.multi.as_ref(),
        )?;
        let r0 = round_record(&g.name, 0, dis, &sc, &es, 0.0);
        job.progress.say(&round_line(&r0));
        let record = GroupRecord {
            name: g.name.clone(),
            k: g.k,
            init: g.init,
            shards: g.shards,
            peers: if self.live {
                "live (deep mutual learning)"
            } else {
                "stale (codistillation)"
            }
            .into(),
            shard_sizes: (0..g.k).map(|i| self.data_of(i).len()).collect(),
            weight_mass_kept: kept,
            phase1,
            phase1_test,
            phase1_ensemble_test,
            rounds: vec![r0],
            chosen_round: 0,
            chosen_reason: String::new(),
            stop_reason: String::new(),
            warnings,
            auto: None,
            seconds: 0.0,
        };
        let mut state = GroupState {
            record,
            best: self.weights()?,
            best_round: 0,
            next_round: 1,
            base_seconds: 0.0,
            stop: false,
        };
        self.save(&mut state, 0)?;
        for i in 0..g.k {
            let _ = std::fs::remove_file(self.ckdir.join(format!(
                "{}.phase1.ckpt.safetensors",
                member_name(&g.name, i)
            )));
        }
        Ok(state)
    }

    /// A copy of every head's objective (a multi-task group's), for member `i`'s training:
    /// with shards, each cached teacher target restricted to the member's shard.
    fn task_templates(&self, i: usize) -> Result<Vec<crate::train::TaskObjective<'static>>> {
        let mut tasks = self
            .job
            .tasks
            .iter()
            .map(|t| t.try_clone())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Other("a group task's teacher is not cached".into()))?;
        if self.g.shards {
            let n = self.s.train.len();
            let shard = &data::shards(n, self.g.k, self.job.seed)[i];
            for t in tasks.iter_mut() {
                for term in t.objective.soft.iter_mut() {
                    if let TeacherSignal::Cached(rows) = &term.signal {
                        let w = rows.len() / n.max(1);
                        let part: Vec<f32> = shard
                            .iter()
                            .flat_map(|&r| rows[r * w..(r + 1) * w].iter().copied())
                            .collect();
                        term.signal = TeacherSignal::Cached(part.into());
                    }
                }
            }
        }
        Ok(tasks)
    }

    /// A multi-task member's objective in a transfer round: each head's own terms weighted
    /// by 1 − β, and its peers' term on that head (`peers[h]`) weighted by β — class heads by
    /// KD at `peer_t`, value heads by MSE, embedding heads by their own loss.
    fn round_objective_heads(
        &self,
        i: usize,
        peers: Vec<TeacherSignal<'static>>,
        beta: f32,
        peer_t: f32,
    ) -> Result<Objective<'static>> {
        let mut tasks = self.task_templates(i)?;
        for (t, signal) in tasks.iter_mut().zip(peers) {
            let o = &mut t.objective;
            o.label_weight *= 1.0 - beta;
            for s in o.soft.iter_mut() {
                s.weight *= 1.0 - beta;
            }
            let loss = match o.val_targets {
                Some(_) => o.soft.first().map_or(SoftLoss::Cosine, |s| s.loss),
                None => SoftLoss::Kd,
            };
            o.soft.push(SoftTerm {
                signal,
                temperature: peer_t,
                weight: beta,
                loss,
            });
        }
        Ok(Objective::multi_task(tasks))
    }

    /// The peer temperature as configured (a number, or the group's temperature).
    fn peer_t(&self) -> f32 {
        match self.g.transfer.temperature {
            Some(Tunable::Fixed(t)) => t,
            _ => self.g.temperature,
        }
    }

    fn weights(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        self.members.iter().map(|m| m.weights()).collect()
    }

    fn set_weights(&self, w: &[Vec<Vec<f32>>]) -> Result<()> {
        for (m, w) in self.members.iter().zip(w) {
            m.set_weights(w)?;
        }
        Ok(())
    }

    /// Saves the state after `round` (atomically), with the time spent so far.
    fn save(&self, state: &mut GroupState, round: usize) -> Result<()> {
        state.record.seconds = state.base_seconds + self.started.elapsed().as_secs_f64();
        let st = RoundState {
            kind: "rounds".into(),
            group: self.g.name.clone(),
            round,
            best_round: state.best_round,
            record: state.record.clone(),
        };
        save_state(&self.state_path, &self.members, &state.best, &st)
    }

    /// β and T of the peer term: as given, chosen by an earlier session (resumed), or chosen
    /// now by the grid search (`train::grid`) — short trials of a few rounds from the phase-1
    /// state, β = 0 (no transfer) being phase 1 itself.
    fn transfer_settings(&self, state: &mut GroupState) -> Result<(f32, f32)> {
        let (g, s) = (self.g, self.s);
        let axes = train::grid::Axes {
            weight: g.transfer.peer_weight,
            weights: &PEER_WEIGHTS,
            temperature: g.transfer.temperature,
            temperatures: &PEER_TEMPERATURES,
            default_temperature: self.peer_t(),
            regression: self.regression,
            with_baseline: true,
        };
        let (beta, peer_t) = if !axes.is_auto() {
            (g.transfer.peer_weight.fixed().unwrap_or(0.5), self.peer_t())
        } else if let Some(a) = &state.record.auto {
            (a.peer_weight, a.temperature)
        } else {
            if s.val.is_empty() {
                return Err(Error::Input(format!(
                    "submodels.{}.transfer: \"auto\" chooses on the validation split, and this run has none (set data.val_fraction > 0)",
                    g.name
                )));
            }
            let auto = self.search(&axes, &state.record.rounds[0])?;
            let chosen = (auto.peer_weight, auto.temperature);
            state.record.auto = Some(auto);
            // Saved before any round, so a resumed run reads the choice instead of trying again.
            let round = state.next_round - 1;
            self.save(state, round)?;
            chosen
        };
        if beta == 0.0 && !state.stop {
            state.stop = true;
            state.record.stop_reason =
                "\"auto\" chose no transfer (β = 0): no trial round beat phase 1 on validation"
                    .into();
        }
        Ok((beta, peer_t))
    }

    /// The grid search of a group's transfer: each candidate's best ensemble validation
    /// figures over a few rounds from the phase-1 state; the members are back at phase 1
    /// afterwards.
    fn search(&self, axes: &train::grid::Axes, r0: &RoundRecord) -> Result<GroupAuto> {
        let (g, job) = (self.g, self.job);
        let trial_rounds = TRIAL_ROUNDS.min(g.transfer.rounds);
        let phase1 = self.weights()?;
        let candidates = axes.candidates();
        job.progress.say(&format!(
            "{}: choosing the transfer's {} on validation: {} trials of {trial_rounds} round(s) from phase 1",
            g.name,
            if g.transfer.temperature == Some(Tunable::Auto) && !self.regression {
                "β and T"
            } else {
                "β"
            },
            candidates.len() - 1
        ));
        let mut trials = Vec::new();
        for (b, t) in candidates {
            if b == 0.0 {
                trials.push(round_trial(0.0, t, r0));
                continue;
            }
            if trial_rounds == 0 {
                continue;
            }
            self.set_weights(&phase1)?;
            let mut best: Option<Trial> = None;
            for r in 1..=trial_rounds {
                self.transfer_round(b, t, r, &format!("/trial-b{b}-t{t}"))?;
                let (dis, sc, es) = measure(
                    self.comm,
                    &self.members,
                    &self.s.val,
                    t,
                    self.regression,
                    self.multi.as_ref(),
                )?;
                let tr = round_trial(b, t, &round_record(&g.name, r, dis, &sc, &es, 0.0));
                if best.as_ref().is_none_or(|x| tr.beats(x)) {
                    best = Some(tr);
                }
            }
            let Some(best) = best else { continue };
            job.progress.say(&format!(
                "{}: trial β = {b}{}: ensemble {}",
                g.name,
                if self.regression {
                    String::new()
                } else {
                    format!(", T = {t}")
                },
                best.line()
            ));
            trials.push(best);
        }
        self.set_weights(&phase1)?;
        let chosen = Trial::best(&trials)
            .cloned()
            .ok_or_else(|| Error::Other("empty grid".into()))?;
        let (cb, ct) = (chosen.weight, chosen.temperature);
        job.progress.say(&format!(
            "{}: chose β = {cb}{}",
            g.name,
            if cb == 0.0 {
                " (no transfer: no trial beat phase 1 on validation)".to_string()
            } else if self.regression {
                String::new()
            } else {
                format!(", T = {ct}")
            }
        ));
        Ok(GroupAuto {
            trial_rounds,
            trials,
            peer_weight: cb,
            temperature: ct,
        })
    }

    /// Phase 2: transfer rounds until the members agree within the tolerance or the rounds
    /// run out; the round with the best ensemble on validation is kept.
    fn rounds(&self, state: &mut GroupState, beta: f32, peer_t: f32) -> Result<()> {
        let g = self.g;
        let mut round = state.next_round;
        while !state.stop && round <= g.transfer.rounds {
            let t0 = Instant::now();
            let sent0 = dist::bytes_sent();
            dist::fault_point(&format!("round{round}"))?;
            self.transfer_round(beta, peer_t, round, "")?;
            let (dis, sc, es) = measure(
                self.comm,
                &self.members,
                &self.s.val,
                peer_t,
                self.regression,
                self.multi.as_ref(),
            )?;
            let mut rr = round_record(&g.name, round, dis, &sc, &es, t0.elapsed().as_secs_f64());
            rr.bytes_sent = dist::bytes_sent() - sent0;
            self.job.progress.say(&round_line(&rr));
            if better(&rr, &state.record.rounds[state.best_round]) {
                state.best_round = round;
                state.best = self.weights()?;
            }
            state.record.rounds.push(rr);
            if dis < g.transfer.tolerance {
                state.stop = true;
                state.record.stop_reason = format!(
                    "disagreement {dis:.3e} fell below the tolerance {:.1e} after round {round}",
                    g.transfer.tolerance
                );
            }
            self.save(state, round)?;
            round += 1;
        }
        Ok(())
    }

    /// The kept round's weights and the record's last words.
    fn finish(self, mut state: GroupState) -> Result<GroupOutcome> {
        let g = self.g;
        let record = &mut state.record;
        if record.stop_reason.is_empty() {
            record.stop_reason = format!(
                "reached the maximum of {} rounds (disagreement {:.3e}, tolerance {:.1e})",
                g.transfer.rounds,
                record.rounds.last().map(|r| r.disagreement).unwrap_or(0.0),
                g.transfer.tolerance
            );
        }
        record.seconds = state.base_seconds + self.started.elapsed().as_secs_f64();
        let best_round = state.best_round;
        let b = &record.rounds[best_round];
        record.chosen_round = best_round;
        record.chosen_reason = match b.ensemble_val_accuracy {
            Some(a) => format!("round {best_round} had the highest ensemble validation accuracy ({:.2}%, ties broken by lower validation loss {:.4}); later rounds did not improve it", 100.0 * a, b.ensemble_val_loss),
            None => format!("round {best_round} had the lowest ensemble validation loss ({:.4})", b.ensemble_val_loss),
        };
        self.set_weights(&state.best)?;
        let named = self
            .members
            .into_iter()
            .enumerate()
            .map(|(i, m)| (member_name(&g.name, i), m))
            .collect();
        Ok(GroupOutcome {
            members: named,
            record: state.record,
        })
    }

    /// The training objective of sub-model `k` in a transfer round: its peers' term (weight
    /// β, temperature `peer_t`) and, with a teacher, the teacher's term and the labels.
    fn round_objective(
        &self,
        k: usize,
        peers: TeacherSignal<'static>,
        beta: f32,
        peer_t: f32,
    ) -> Objective<'static> {
        let g = self.g;
        let mut soft = vec![SoftTerm {
            signal: peers,
            temperature: peer_t,
            weight: beta,
            loss: SoftLoss::Kd,
        }];
        let teacher = if self.live {
            &self.teacher_out[0]
        } else {
            &self.teacher_out[k]
        };
        if let Some(t) = teacher {
            soft.push(SoftTerm {
                signal: TeacherSignal::Cached(t.clone()),
                temperature: g.temperature,
                weight: (1.0 - beta) * g.alpha,
                loss: SoftLoss::Kd,
            });
        }
        Objective {
            label_weight: (1.0 - beta) * (1.0 - g.alpha),
            soft,
            hint: None,
            val_targets: None,
            teacher_val: None,
            anneal: false,
            tasks: Vec::new(),
        }
    }

    /// One transfer round of every sub-model with peer weight `beta` and temperature `peer_t`;
    /// `tag` keeps a trial's random streams apart from the run's own rounds.
    fn transfer_round(&self, beta: f32, peer_t: f32, round: usize, tag: &str) -> Result<()> {
        let (g, s, job, comm) = (self.g, self.s, self.job, self.comm);
        let mut tcfg = g.transfer.train.clone();
        tcfg.epochs = g.transfer.epochs_per_round;
        let name = |i: usize| format!("{}-r{round}{tag}", member_name(&g.name, i));
        let mine: Vec<usize> = (0..g.k).filter(|&i| self.mine(i)).collect();
        if self.live {
            // Deep mutual learning: all members through the one training loop together, each
            // learning from its peers' current predictions on the same batch.
            let names: Vec<String> = (0..g.k).map(name).collect();
            let mut objectives = mine
                .iter()
                .map(|&k| {
                    let of: Vec<usize> = (0..g.k).filter(|&j| j != k).collect();
                    match &self.multi {
                        // Each head learns from its peers' same head.
                        Some(h) => {
                            let signals = h
                                .heads
                                .iter()
                                .map(|head| TeacherSignal::PeersHead {
                                    of: of.clone(),
                                    cols: head.cols(),
                                    values: head.kind != crate::models::HeadKind::Classes,
                                })
                                .collect();
                            self.round_objective_heads(k, signals, beta, peer_t)
                        }
                        None => Ok(self.round_objective(k, TeacherSignal::Peers(of), beta, peer_t)),
                    }
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter();
            let jobs = mine
                .iter()
                .map(|&k| TrainJob {
                    name: &names[k],
                    cfg: &tcfg,
                    train: &self.data[0],
                    val: &s.val,
                    objective: objectives.next().unwrap_or_else(Objective::supervised),
                    fill: s.normalizer.zero_value(),
                    checkpoint: None,
                    seed: job.seed,
                    progress: job.progress,
                    hooks: Vec::new(),
                })
                .collect();
            let stream = format!("dml/{}/{round}{tag}", g.name);
            if comm.size() == 1 {
                let refs: Vec<&Model> = self.members.iter().collect();
                train::fit_together(&refs, jobs, &stream)?;
            } else {
                let refs: Vec<&Model> = mine.iter().map(|&i| &self.members[i]).collect();
                train::fit_together_across(
                    &refs,
                    jobs,
                    &stream,
                    train::Share {
                        ids: mine.clone(),
                        k: g.k,
                        comm,
                    },
                    train::lockstep_steps(&tcfg, self.data[0].len()),
                )?;
                sync_members(comm, &self.members, None)?;
            }
            return Ok(());
        }
        // Peers' predictions on each sub-model's data, from the state at the round's start
        // (every rank holds every sub-model's weights; each computes its own sub-models').
        let outs_per: Vec<Vec<f32>> = (0..g.k)
            .map(|i| self.stale_peers(i, peer_t))
            .collect::<Result<_>>()?;
        for (i, m) in self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| self.mine(*i))
        {
            let objective = match &self.multi {
                Some(h) => {
                    // Each head from its peers' same head, averaged at the round's start.
                    let full = &outs_per[i];
                    let width = self.members[0].spec.outputs;
                    let signals = h
                        .heads
                        .iter()
                        .map(|head| {
                            let cols = crate::train::tasks::columns(full, width, &head.cols());
                            TeacherSignal::Cached(cols.into())
                        })
                        .collect();
                    self.round_objective_heads(i, signals, beta, peer_t)?
                }
                None => {
                    let peers = TeacherSignal::Cached(outs_per[i].clone().into());
                    self.round_objective(i, peers, beta, peer_t)
                }
            };
            let name = name(i);
            dist::local(|| {
                train::fit(
                    m,
                    TrainJob {
                        name: &name,
                        cfg: &tcfg,
                        train: self.data_of(i),
                        val: &s.val,
                        objective,
                        fill: s.normalizer.zero_value(),
                        checkpoint: None,
                        seed: job.seed,
                        progress: job.progress,
                        hooks: Vec::new(),
                    },
                )
            })?;
        }
        sync_members(comm, &self.members, None)
    }

    /// Sub-model `i`'s peers' averaged outputs on its data (empty on a rank that does not own
    /// it): softened probabilities as logits, or mean values for regression.
    fn stale_peers(&self, i: usize, peer_t: f32) -> Result<Vec<f32>> {
        if !self.mine(i) {
            return Ok(Vec::new());
        }
        let peers: Vec<Vec<f32>> = (0..self.g.k)
            .filter(|&j| j != i)
            .map(|j| self.members[j].predict(&self.data_of(i).x, 512))
            .collect::<Result<_>>()?;
        let refs: Vec<&[f32]> = peers.iter().map(|p| p.as_slice()).collect();
        if let Some(h) = &self.multi {
            // Head by head, in the heads' columns: softened class scores at the peer
            // temperature, mean values and embeddings.
            let width = self.members[0].spec.outputs;
            let rows = refs.first().map_or(0, |r| r.len() / width.max(1));
            let mut out = vec![0f32; rows * width];
            for head in h.heads {
                let cols: Vec<Vec<f32>> = refs
                    .iter()
                    .map(|r| crate::train::tasks::columns(r, width, &head.cols()))
                    .collect();
                let c: Vec<&[f32]> = cols.iter().map(|c| c.as_slice()).collect();
                let v = match head.kind {
                    crate::models::HeadKind::Classes => mutual::probs_as_logits(
                        &mutual::peer_average(&c, head.outputs, peer_t),
                        peer_t,
                    ),
                    _ => mutual::mean_outputs(&c),
                };
                for (r, row) in v.chunks_exact(head.outputs).enumerate() {
                    out[r * width + head.start..r * width + head.start + head.outputs]
                        .copy_from_slice(row);
                }
            }
            return Ok(out);
        }
        Ok(if self.regression {
            mutual::mean_outputs(&refs)
        } else {
            mutual::probs_as_logits(&mutual::peer_average(&refs, self.outputs, peer_t), peer_t)
        })
    }
}

/// A round's ensemble figures as a trial of the grid search.
fn round_trial(weight: f32, temperature: f32, r: &RoundRecord) -> Trial {
    Trial {
        weight,
        temperature,
        val_accuracy: r.ensemble_val_accuracy,
        val_loss: r.ensemble_val_loss,
    }
}

fn round_record(
    group: &str,
    round: usize,
    dis: f64,
    sc: &[Scores],
    es: &Scores,
    secs: f64,
) -> RoundRecord {
    RoundRecord {
        group: group.to_string(),
        round,
        disagreement: dis,
        val_accuracy: sc.iter().filter_map(|x| x.accuracy).collect(),
        val_loss: sc.iter().map(|x| x.loss).collect(),
        ensemble_val_accuracy: es.accuracy,
        ensemble_val_loss: es.loss,
        seconds: secs,
        bytes_sent: 0,
    }
}

fn round_line(r: &RoundRecord) -> String {
    let accs: Vec<String> = r
        .val_accuracy
        .iter()
        .map(|a| format!("{:.2}%", 100.0 * a))
        .collect();
    format!(
        "{} round {}: disagreement {:.3e}  val acc [{}]  ensemble {}",
        r.group,
        r.round,
        r.disagreement,
        accs.join(", "),
        r.ensemble_val_accuracy
            .map(|a| format!("{:.2}%", 100.0 * a))
            .unwrap_or_else(|| format!("loss {:.4}", r.ensemble_val_loss))
    )
}
