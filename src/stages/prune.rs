//! `[[prune]]`: structured pruning (whole hidden units and conv channels → a smaller dense
//! model) or magnitude pruning (individual weights, one shot or along a cubic schedule), then
//! optional fine-tuning from labels or a teacher's soft targets.

use super::Stage;
use crate::compress::prune::{self, GradualPruning, Masks};
use crate::compress::{AnyModel, StageRecord, StageScores};
use crate::data::Splits;
use crate::error::{bad_field, Error, Result};
use crate::eval;

use crate::store::RunStore;
use crate::train::{Objective, StepHook, TeacherSignal, TrainConfig};
use serde::{Deserialize, Serialize};

/// Pruning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMethod {
    /// Zero the smallest-magnitude weights (unstructured; same shapes, sparse weights).
    Magnitude,
    /// Remove whole hidden units and conv channels (a smaller dense model).
    Structured,
}

/// Fine-tuning after pruning, or quantization-aware training: from labels, or from a teacher's
/// soft targets (the KD loss) when `teacher` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverConfig {
    /// The model whose soft targets guide fine-tuning (omit for labels only).
    #[serde(default)]
    pub teacher: Option<String>,
    /// Distillation temperature T.
    #[serde(default = "default_recover_temperature")]
    pub temperature: f32,
    /// Weight α of the soft-target term.
    #[serde(default = "default_recover_alpha")]
    pub alpha: f32,
    /// Optimisation settings.
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_recover_temperature() -> f32 {
    4.0
}
fn default_recover_alpha() -> f32 {
    0.9
}

/// One pruning stage: `from` is pruned to `sparsity`, then (optionally) fine-tuned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// Name of the pruned model.
    pub name: String,
    /// The model to prune (a `[[model]]`, a final student, or an earlier stage).
    pub from: String,
    /// Magnitude (unstructured) or structured.
    pub method: PruneMethod,
    /// Fraction removed in [0, 1): of weights (magnitude) or of the hidden units and channels
    /// of every layer (structured).
    pub sparsity: f64,
    /// Magnitude pruning: one threshold over all layers, or the same sparsity per layer.
    #[serde(default = "default_scope")]
    pub scope: crate::compress::prune::Scope,
    /// Structured pruning: rank units by incoming weight norm or by mean activation.
    #[serde(default = "default_rank")]
    pub rank: crate::compress::prune::Rank,
    /// Magnitude pruning with recovery: epochs over which sparsity ramps up along the cubic
    /// schedule (default: two thirds of the recovery epochs).
    #[serde(default)]
    pub ramp_epochs: Option<usize>,
    /// Training samples used to rank units by activation.
    #[serde(default = "default_calibration_samples")]
    pub rank_samples: usize,
    /// Fine-tuning after pruning (distillation-aware when it names a teacher).
    #[serde(default)]
    pub recover: Option<RecoverConfig>,
}

impl RecoverConfig {
    /// Checks the table's own fields (that its teacher is an earlier model is the
    /// experiment's check, in `config`).
    pub fn check(&self, p: &str, images: bool) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bad_field(&format!("{p}.temperature"), "must be positive")?;
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bad_field(&format!("{p}.alpha"), "expected [0, 1]")?;
        }
        self.train.check(&format!("{p}.train"), images)
    }
}

impl PruneConfig {
    /// Checks the table's own fields: the name, the sparsity, the ramp against the
    /// fine-tuning's epochs, the fine-tuning table. Whether `from` names an earlier model and
    /// whether that model's family can be cut are the experiment's checks, in `config`.
    pub fn check(&self, images: bool) -> Result<()> {
        let p = format!("prune.{}", self.name);
        crate::io::check_name("prune.name", &self.name)?;
        if !(self.sparsity.is_finite() && (0.0..1.0).contains(&self.sparsity)) {
            bad_field(
                &format!("{p}.sparsity"),
                &format!("expected a fraction in [0, 1), got {}", self.sparsity),
            )?;
        }
        if self.rank_samples == 0 {
            bad_field(&format!("{p}.rank_samples"), "must be at least 1")?;
        }
        if let Some(r) = &self.recover {
            r.check(&format!("{p}.recover"), images)?;
            if let Some(e) = self.ramp_epochs {
                if e == 0 || e > r.train.epochs {
                    bad_field(
                        &format!("{p}.ramp_epochs"),
                        &format!(
                            "expected 1 ≤ ramp_epochs ≤ recover.train.epochs ({}), got {e}",
                            r.train.epochs
                        ),
                    )?;
                }
            }
        } else if self.ramp_epochs.is_some() {
            bad_field(
                &format!("{p}.ramp_epochs"),
                "gradual pruning needs a [prune.recover] fine-tuning table",
            )?;
        }
        if self.method == PruneMethod::Structured && self.ramp_epochs.is_some() {
            bad_field(
                &format!("{p}.ramp_epochs"),
                "only for method = \"magnitude\" (structured pruning removes units at once)",
            )?;
        }
        Ok(())
    }
}

fn default_scope() -> crate::compress::prune::Scope {
    crate::compress::prune::Scope::Global
}
fn default_rank() -> crate::compress::prune::Rank {
    crate::compress::prune::Rank::WeightNorm
}
pub(super) fn default_calibration_samples() -> usize {
    1000
}

/// The stage of one `[[prune]]` table.
pub struct PruneStage {
    /// Its settings.
    pub cfg: PruneConfig,
    /// The `[[model]]` table of the multi-task model it prunes (directly or through earlier
    /// stages), whose tasks fine-tune it again.
    pub tasks: Option<crate::stages::model::ModelConfig>,
}

impl Stage for PruneStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let st = &self.cfg;
        let file = store.model_path(&st.name);
        store.finish_or_make(&st.name, "pruned", file.clone(), "pruned", |store| {
            let splits = &store.splits;
            let (src, src_meta) = store.float(&st.from)?;
            let heads = src_meta.heads.clone();
            let params_before = src.num_params();
            let (model, method, ramp) = match st.method {
                PruneMethod::Structured => {
                    let x = sample_rows(splits, st.rank_samples);
                    let m = prune::structured(src, st.sparsity, st.rank, Some(x))?;
                    let rank = match st.rank {
                        prune::Rank::WeightNorm => "weight norm",
                        prune::Rank::Activation => "mean activation",
                    };
                    let desc = format!(
                        "structured, {:.0}% of units removed by {rank}: {} → {}",
                        100.0 * st.sparsity,
                        src.spec.describe(),
                        m.spec.describe()
                    );
                    (m, desc, None)
                }
                PruneMethod::Magnitude => {
                    let m = src.duplicate()?;
                    let ramp = st.recover.as_ref().map(|r| {
                        st.ramp_epochs
                            .unwrap_or_else(|| (2 * r.train.epochs).div_ceil(3).max(1))
                    });
                    let scope = match st.scope {
                        prune::Scope::Global => "global",
                        prune::Scope::Layer => "per layer",
                    };
                    let desc = match ramp {
                        Some(e) => format!(
                        "magnitude ({scope}), {:.0}% of weights, cubic schedule over {e} epochs",
                        100.0 * st.sparsity
                    ),
                        None => format!(
                            "magnitude ({scope}), {:.0}% of weights, one shot",
                            100.0 * st.sparsity
                        ),
                    };
                    (m, desc, ramp)
                }
            };
            // Scores right after pruning to the final sparsity, before any fine-tuning.
            let before = if st.method == PruneMethod::Magnitude {
                let probe = model.duplicate()?;
                Masks::magnitude(&probe, st.sparsity, st.scope)?.apply(&probe)?;
                stage_scores(&probe, &heads, store)?
            } else {
                stage_scores(&model, &heads, store)?
            };
            store.progress.say(&format!("{}: {method}", st.name));
            let mut record = StageRecord {
                from: st.from.clone(),
                method,
                params_before,
                weight_sparsity: None,
                before: Some(before),
                teacher: st.recover.as_ref().and_then(|r| r.teacher.clone()),
            };
            let meta = match &st.recover {
                Some(r) => {
                    let objective = recover_objective(r, self.tasks.as_ref(), store)?;
                    let hooks: Vec<Box<dyn StepHook>> = match ramp {
                        Some(e) => vec![Box::new(GradualPruning {
                            sparsity: st.sparsity,
                            scope: st.scope,
                            ramp_epochs: e,
                            masks: None,
                        })],
                        None => Vec::new(),
                    };
                    store.progress.say(&format!(
                        "{}: fine-tuning {} for {} epochs with {}",
                        st.name,
                        model.spec.describe(),
                        r.train.epochs,
                        match (&r.teacher, &self.tasks) {
                            (_, Some(m)) => format!("its {} tasks' objective", m.tasks.len()),
                            (Some(t), None) =>
                                format!("{t}'s soft targets (T={}, α={})", r.temperature, r.alpha),
                            (None, None) => "labels".into(),
                        }
                    ));
                    if st.method == PruneMethod::Magnitude {
                        record.weight_sparsity = Some(st.sparsity);
                    }
                    let mut meta = store.fit_and_save(
                        &store.splits.train,
                        &st.name,
                        "pruned",
                        &model,
                        &r.train,
                        objective,
                        hooks,
                        Some(record.clone()),
                    )?;
                    record.weight_sparsity = Some(prune::sparsity(&model)?.0);
                    meta.compression = Some(record);
                    meta.heads = heads.clone();
                    crate::models::save_model(&file, &model, &meta)?;
                    meta
                }
                None => {
                    if st.method == PruneMethod::Magnitude {
                        Masks::magnitude(&model, st.sparsity, st.scope)?.apply(&model)?;
                    }
                    record.weight_sparsity = Some(prune::sparsity(&model)?.0);
                    record.before = None;
                    let mut meta =
                        store.meta(&st.name, "pruned", &model.spec, serde_json::Value::Null);
                    meta.compression = Some(record);
                    meta.heads = heads.clone();
                    crate::models::save_model(&file, &model, &meta)?;
                    meta
                }
            };
            Ok(AnyModel::float(model, meta))
        })
    }
}

pub(super) fn scores_of(s: &eval::Scores) -> StageScores {
    StageScores {
        accuracy: s.accuracy,
        errors: s.errors,
        mse: s.mse,
    }
}

pub(super) fn test_scores(p: &dyn eval::Predictor, splits: &Splits) -> Result<StageScores> {
    Ok(scores_of(&eval::evaluate(
        p,
        &splits.test,
        splits.target_scale.as_ref(),
    )?))
}

/// The first `n` training samples (the training split is already in seeded random order).
pub(super) fn sample_rows(splits: &Splits, n: usize) -> &[f32] {
    let d = splits.train.dim();
    let n = n.min(splits.train.len());
    &splits.train.x[..n * d]
}

/// The test scores of a model before or after a stage: its own scores, or for a multi-task
/// model (its `heads`) those of its head on the data's label (else its first labelled head).
pub(super) fn stage_scores(
    p: &dyn eval::Predictor,
    heads: &[crate::models::TaskHead],
    store: &RunStore,
) -> Result<StageScores> {
    if heads.is_empty() {
        test_scores(p, &store.splits)
    } else {
        Ok(scores_of(&store.head_scores(p, heads, &[], &[])?.1))
    }
}

/// The objective of a fine-tuning table: KD from its teacher (a distillery model or any
/// `[[teacher]]`), or labels; for a multi-task model (`tasks`: its `[[model]]` table), its own
/// tasks again — each head's labels, teacher and weight — with the table's training settings.
pub(super) fn recover_objective<'a>(
    r: &RecoverConfig,
    tasks: Option<&crate::stages::model::ModelConfig>,
    store: &'a RunStore,
) -> Result<Objective<'a>> {
    if let Some(m) = tasks {
        let mut mt = m.multi_task();
        mt.train = &r.train;
        return crate::stages::tasks::objective(&mt, store);
    }
    Ok(match &r.teacher {
        Some(t) => {
            let signal = if !r.train.augments() {
                TeacherSignal::Cached(store.teacher_outputs(t, "train")?)
            } else if store.known(t).is_some() && store.teacher(t).is_err() {
                return Err(Error::Input(format!(
                    "{t}: this teacher has outputs for the samples as they are, not for shifted or augmented ones; fine-tune without jitter or augment"
                )));
            } else {
                TeacherSignal::Live(store.teacher(t)?)
            };
            Objective::hinton(signal, r.temperature, r.alpha)
        }
        None => Objective::supervised(),
    })
}
