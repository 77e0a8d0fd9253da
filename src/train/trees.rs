//! Tree models as learners: boosted trees and decision trees are fitted in one go
//! ([`crate::models::boost`]) to the same objective the loop trains networks on — the labels
//! weighted by the objective's label weight (1 − α) and one teacher's soft targets at
//! temperature T weighted by α — so the store, the stages and "auto" treat them like any
//! model. A killed fit is started again: it is deterministic, so the result is the same.

use super::{Curves, Learner, Objective, TeacherSignal, TrainJob, TrainRecord};
use crate::data::Targets;
use crate::error::{Error, Result};
use crate::losses::SoftLoss;
use crate::models::boost::{self, FitData, Labels, SoftTargets};
use crate::models::trees::TreeEnsemble;
use crate::models::{ModelMeta, ModelSpec};
use candle_core::Tensor;
use std::path::Path;
use std::sync::Mutex;

/// A tree model to fit: its spec (every tree default written out) and, once fitted, its trees.
pub struct TreeLearner {
    spec: ModelSpec,
    fitted: Mutex<Option<TreeEnsemble>>,
}

impl TreeLearner {
    /// An unfitted tree model of `spec`.
    pub fn new(spec: &ModelSpec) -> TreeLearner {
        TreeLearner {
            spec: ModelSpec {
                arch: spec.arch.resolved(),
                ..spec.clone()
            },
            fitted: Mutex::new(None),
        }
    }

    /// The fitted trees.
    pub fn ensemble(&self) -> Result<TreeEnsemble> {
        self.fitted
            .lock()
            .map_err(|_| Error::Other("tree learner lock poisoned".into()))?
            .clone()
            .ok_or_else(|| Error::Other("the tree model has not been fitted".into()))
    }
}

impl crate::teachers::Teacher for TreeLearner {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.ensemble()?.predict(&v, rows))
    }
}

/// The objective's soft term as soft targets on the training rows: (outputs, α, T).
fn soft_targets(job: &TrainJob) -> Result<Option<(Vec<f32>, f32, f32)>> {
    let o: &Objective = &job.objective;
    if o.hint.is_some() || o.val_targets.is_some() {
        return Err(Error::Input(format!(
            "{}: a tree model learns from labels and a teacher's outputs, not from hints or embeddings",
            job.name
        )));
    }
    let terms: Vec<_> = o.soft.iter().filter(|s| s.weight != 0.0).collect();
    if terms.len() > 1 {
        return Err(Error::Input(format!(
            "{}: a tree model learns from one teacher at a time",
            job.name
        )));
    }
    let Some(term) = terms.first() else {
        return Ok(None);
    };
    if term.loss != SoftLoss::Kd {
        return Err(Error::Input(format!(
            "{}: a tree model is distilled with Hinton's loss (remove distill.loss)",
            job.name
        )));
    }
    let outputs = match &term.signal {
        TeacherSignal::Cached(rows) => rows.to_vec(),
        TeacherSignal::Live(t) => crate::eval::predict_all(*t, &job.train.x, job.train.dim(), 512)?,
        TeacherSignal::Views { .. } => {
            return Err(Error::Input(format!(
                "{}: tree models learn from the samples as they are; remove train.views",
                job.name
            )))
        }
        TeacherSignal::Peers(_) | TeacherSignal::PeersHead { .. } => {
            return Err(Error::Input(format!(
            "{}: tree models do not train in lockstep with peers (sub-model groups are networks)",
            job.name
        )))
        }
    };
    Ok(Some((outputs, term.weight, term.temperature)))
}

fn labels(t: &Targets) -> Labels<'_> {
    match t {
        Targets::Classes { labels, names } => Labels::Classes {
            labels: labels.as_slice(),
            classes: names.len(),
        },
        Targets::Values(v) => Labels::Values(v.as_slice()),
    }
}

impl Learner for TreeLearner {
    fn fit(&self, job: TrainJob) -> Result<TrainRecord> {
        let start = std::time::Instant::now();
        let settings = self.spec.arch.tree_settings().ok_or_else(|| {
            crate::error::Error::Other(format!("{} is not a tree model", self.spec.describe()))
        })?;
        let soft = soft_targets(&job)?;
        let train = FitData {
            x: &job.train.x,
            rows: job.train.len(),
            inputs: job.train.dim(),
            labels: labels(&job.train.targets),
            label_weight: job.objective.label_weight,
            soft: soft.as_ref().map(|(o, w, t)| SoftTargets {
                outputs: o,
                weight: *w,
                temperature: *t,
            }),
        };
        let val = (!job.val.is_empty()).then(|| FitData {
            x: &job.val.x,
            rows: job.val.len(),
            inputs: job.val.dim(),
            labels: labels(&job.val.targets),
            label_weight: 1.0,
            soft: None,
        });
        let bar = job.progress.epoch(job.name, 0, 1, settings.trees);
        let outcome = boost::fit(
            &settings,
            &train,
            val.as_ref(),
            job.cfg.patience,
            &mut |r| bar.step(r.train_loss, r.train_accuracy),
        )?;
        let kept = outcome.ensemble.trees.len();
        // Round 1 kept of several: every later round made the validation loss worse, and
        // the model is one shrunken tree per output over a constant; never kept silently.
        let warning = (outcome.best_round == 1 && outcome.rounds.len() > 1).then(|| {
            format!(
                "the validation loss was lowest after the first of {} rounds, so only round 1 \
                 is kept (a model close to a constant); the training loss went {:.4} -> {:.4}",
                outcome.rounds.len(),
                outcome.rounds[0].train_loss,
                outcome.rounds[outcome.rounds.len() - 1].train_loss,
            )
        });
        bar.finish(&format!(
            "{}: {} trees, {} leaves, best round {} of {}{}",
            job.name,
            kept,
            outcome.ensemble.leaves(),
            outcome.best_round,
            outcome.rounds.len(),
            warning
                .as_ref()
                .map_or(String::new(), |w| format!(" (warning: {w})"))
        ));
        let mut curves = Curves::default();
        for (i, r) in outcome.rounds.iter().enumerate() {
            curves.epoch.push(i + 1);
            curves.train_loss.push(r.train_loss);
            if let Some(a) = r.train_accuracy {
                curves.train_accuracy.push(a);
            }
            curves.val_loss.push(r.val_loss);
            if let Some(a) = r.val_accuracy {
                curves.val_accuracy.push(a);
            }
            curves.lr.push(settings.learning_rate as f64);
            curves.seconds.push(r.seconds);
        }
        // Validation figures of the kept model, for "auto" and the report.
        if let (Some(v), true) = (&val, outcome.rounds.len() <= 1) {
            let out = outcome.ensemble.predict(v.x, v.rows);
            let s = crate::eval::score_outputs(&out, job.val, None);
            curves.val_loss = vec![s.loss];
            if let Some(a) = s.accuracy {
                curves.val_accuracy = vec![a];
            }
        }
        if let Targets::Values(_) = job.train.targets {
            curves.val_mse = curves.val_loss.clone();
        }
        let record = TrainRecord {
            curves,
            epochs_run: outcome.rounds.len(),
            best_epoch: outcome.best_round,
            stopped_early: outcome.stopped_early,
            seconds: start.elapsed().as_secs_f64(),
            resumed_from_epoch: None,
            data_parallel: None,
            warning,
            task_weights: Vec::new(),
        };
        *self
            .fitted
            .lock()
            .map_err(|_| Error::Other("tree learner lock poisoned".into()))? =
            Some(outcome.ensemble);
        Ok(record)
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn save(&self, path: &Path, meta: &ModelMeta) -> Result<()> {
        crate::models::trees::save(path, &self.ensemble()?, meta)
    }
}
