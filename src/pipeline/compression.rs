//! The compression stages of an experiment: `[[prune]]` then `[[quantize]]`, in file order,
//! each starting from a finished f32 model. A stage is finished when its model file exists
//! (written atomically), so a killed run resumes at the first unfinished stage, and a stage
//! with fine-tuning resumes from its last epoch checkpoint.

use crate::compress::prune::{self, Masks};
use crate::compress::quant::{self, Precision};
use crate::compress::{self, AnyModel, Body, StageRecord, StageScores};
use crate::config::{ExperimentConfig, PruneMethod, RecoverConfig};
use crate::data::Splits;
use crate::error::{Error, Result};
use crate::eval;
use crate::models::{Model, ModelMeta};
use crate::pipeline::{fit_and_save, model_meta};
use crate::progress::Progress;
use crate::train::{self, Objective, StepHook, TeacherSignal, TrainJob};
use std::path::{Path, PathBuf};

/// A finished stage.
pub struct StageDone {
    /// Stage name.
    pub name: String,
    /// `pruned` or `quantized`.
    pub role: String,
    /// The model.
    pub model: AnyModel,
    /// Its file.
    pub file: PathBuf,
    /// trained / earlier session.
    pub source: String,
}

/// An f32 model a stage can start from (or learn from).
pub struct Available<'a> {
    /// Name.
    pub name: String,
    /// The model.
    pub model: &'a Model,
    /// Its metadata.
    pub meta: ModelMeta,
}

fn scores_of(s: &eval::Scores) -> StageScores {
    StageScores {
        accuracy: s.accuracy,
        errors: s.errors,
        mse: s.mse,
    }
}

fn test_scores(p: &dyn eval::Predictor, splits: &Splits) -> Result<StageScores> {
    Ok(scores_of(&eval::evaluate(
        p,
        &splits.test,
        splits.target_scale.as_ref(),
    )?))
}

/// The first `n` training samples (the training split is already in seeded random order).
fn sample_rows(splits: &Splits, n: usize) -> &[f32] {
    let d = splits.train.dim();
    let n = n.min(splits.train.len());
    &splits.train.x[..n * d]
}

/// The objective of a fine-tuning table: KD from its teacher, or labels.
fn recover_objective<'a>(
    r: &RecoverConfig,
    teacher: Option<&'a Model>,
    splits: &Splits,
) -> Result<Objective<'a>> {
    Ok(match teacher {
        Some(t) => {
            let signal = if r.train.jitter == 0 {
                TeacherSignal::Cached(t.predict(&splits.train.x, 512)?)
            } else {
                TeacherSignal::Live(t)
            };
            Objective::hinton(signal, r.temperature, r.alpha)
        }
        None => Objective::supervised(),
    })
}

/// Runs (or loads) every compression stage of `cfg`.
pub fn run_stages(
    cfg: &ExperimentConfig,
    splits: &Splits,
    base: Vec<Available>,
    out: &Path,
    progress: Progress,
) -> Result<Vec<StageDone>> {
    let mdir = out.join("models");
    let mut pruned: Vec<(String, Model, ModelMeta)> = Vec::new();
    let mut done: Vec<StageDone> = Vec::new();
    // Looks a float model up among the base models and the finished pruning stages.
    fn find<'b>(
        base: &'b [Available],
        pruned: &'b [(String, Model, ModelMeta)],
        name: &str,
    ) -> Result<(&'b Model, &'b ModelMeta)> {
        base.iter()
            .find(|a| a.name == name)
            .map(|a| (a.model, &a.meta))
            .or_else(|| pruned.iter().find(|p| p.0 == name).map(|p| (&p.1, &p.2)))
            .ok_or_else(|| {
                Error::Input(format!(
                    "model '{name}' is not available in this run (was it trained?)"
                ))
            })
    }
    for st in &cfg.prune {
        let file = mdir.join(format!("{}.safetensors", st.name));
        if file.exists() {
            let (m, meta) = crate::models::load_model(&file)?;
            progress.say(&format!(
                "{}: already pruned ({}); skipping",
                st.name,
                file.display()
            ));
            done.push(StageDone {
                name: st.name.clone(),
                role: "pruned".into(),
                model: AnyModel::float(m.duplicate()?, meta.clone()),
                file,
                source: "pruned (earlier session)".into(),
            });
            pruned.push((st.name.clone(), m, meta));
            continue;
        }
        let (src, _) = find(&base, &pruned, &st.from)?;
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
            test_scores(&probe, splits)?
        } else {
            test_scores(&model, splits)?
        };
        progress.say(&format!("{}: {method}", st.name));
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
                let teacher = match &r.teacher {
                    Some(t) => Some(find(&base, &pruned, t)?.0),
                    None => None,
                };
                let objective = recover_objective(r, teacher, splits)?;
                let hooks: Vec<Box<dyn StepHook>> = match ramp {
                    Some(e) => vec![Box::new(prune::GradualPruning {
                        sparsity: st.sparsity,
                        scope: st.scope,
                        ramp_epochs: e,
                        masks: None,
                    })],
                    None => Vec::new(),
                };
                progress.say(&format!(
                    "{}: fine-tuning {} for {} epochs with {}",
                    st.name,
                    model.spec.describe(),
                    r.train.epochs,
                    match &r.teacher {
                        Some(t) =>
                            format!("{t}'s soft targets (T={}, α={})", r.temperature, r.alpha),
                        None => "labels".into(),
                    }
                ));
                if st.method == PruneMethod::Magnitude {
                    record.weight_sparsity = Some(st.sparsity);
                }
                let mut meta = fit_and_save(
                    cfg.seed,
                    &st.name,
                    "pruned",
                    &model,
                    &r.train,
                    objective,
                    splits,
                    out,
                    progress,
                    hooks,
                    Some(record.clone()),
                )?;
                record.weight_sparsity = Some(prune::sparsity(&model)?.0);
                meta.compression = Some(record);
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
                    model_meta(&st.name, "pruned", &model, splits, serde_json::Value::Null);
                meta.compression = Some(record);
                crate::models::save_model(&file, &model, &meta)?;
                meta
            }
        };
        done.push(StageDone {
            name: st.name.clone(),
            role: "pruned".into(),
            model: AnyModel::float(model.duplicate()?, meta.clone()),
            file,
            source: "pruned".into(),
        });
        pruned.push((st.name.clone(), model, meta));
    }

    for st in &cfg.quantize {
        let file = mdir.join(format!("{}.safetensors.gz", st.name));
        if file.exists() {
            progress.say(&format!(
                "{}: already quantized ({}); skipping",
                st.name,
                file.display()
            ));
            done.push(StageDone {
                name: st.name.clone(),
                role: "quantized".into(),
                model: compress::load_any(&file)?,
                file,
                source: "quantized (earlier session)".into(),
            });
            continue;
        }
        let (src, src_meta) = find(&base, &pruned, &st.from)?;
        let calib = sample_rows(splits, st.calibration_samples);
        let calib_arg = Some((calib, st.calibration, st.percentile));
        let mut src_meta = src_meta.clone();
        src_meta.name = st.name.clone();
        src_meta.role = "quantized".into();
        src_meta.compression = None;
        src_meta.training = serde_json::Value::Null;
        let ptq = compress::quantize(src, &src_meta, st.precision, calib_arg, st.group_size)?;
        let mut method = match st.precision {
            Precision::Int8 => format!(
                "int8 post-training ({} calibration, {} samples; per-channel weights, per-tensor u8 activations)",
                match st.calibration {
                    quant::Calibration::Minmax => "min/max".to_string(),
                    quant::Calibration::Percentile => format!("{}th-percentile", st.percentile),
                },
                calib.len() / splits.train.dim().max(1)
            ),
            Precision::Int8Weights => "int8 weight-only (per-channel), f32 compute".into(),
            Precision::Int4Weights => format!(
                "int4 weight-only (groups of {}), f32 compute",
                st.group_size
            ),
            Precision::F32 => "f32".into(),
        };
        let mut record = StageRecord {
            from: st.from.clone(),
            method: String::new(),
            params_before: src.num_params(),
            weight_sparsity: None,
            before: None,
            teacher: None,
        };
        let any = match &st.qat {
            None => ptq,
            Some(r) => {
                // Quantization-aware training from the PTQ ranges, then conversion with the
                // same activation quantizers the training saw.
                record.before = Some(test_scores(&ptq, splits)?);
                record.teacher = r.teacher.clone();
                let acts = ptq
                    .meta
                    .quantization
                    .as_ref()
                    .map(|q| q.activations.clone())
                    .unwrap_or_default();
                let model = src.duplicate()?;
                let teacher = match &r.teacher {
                    Some(t) => Some(find(&base, &pruned, t)?.0),
                    None => None,
                };
                let objective = recover_objective(r, teacher, splits)?;
                progress.say(&format!(
                    "{}: quantization-aware training for {} epochs{}",
                    st.name,
                    r.train.epochs,
                    r.teacher
                        .as_ref()
                        .map(|t| format!(" with {t}'s soft targets"))
                        .unwrap_or_default()
                ));
                let ckpt = out
                    .join("checkpoints")
                    .join(format!("{}.qat.ckpt.safetensors", st.name));
                let rec = train::fit(
                    &model,
                    TrainJob {
                        name: &st.name,
                        cfg: &r.train,
                        train: &splits.train,
                        val: &splits.val,
                        objective,
                        fill: splits.normalizer.zero_value(),
                        checkpoint: Some(ckpt.clone()),
                        seed: cfg.seed,
                        progress,
                        hooks: vec![Box::new(quant::FakeQuantization { acts: acts.clone() })],
                    },
                )?;
                let _ = std::fs::remove_file(&ckpt);
                let q = quant::to_int8(&model, &acts)?;
                let mut meta = ptq.meta.clone();
                meta.training =
                    serde_json::to_value(&rec).map_err(|e| Error::Other(e.to_string()))?;
                method = format!("{method}, then quantization-aware training");
                AnyModel {
                    body: Body::Int8(q),
                    meta,
                }
            }
        };
        record.method = method;
        let mut any = any;
        any.meta.compression = Some(record);
        progress.say(&format!(
            "{}: {}",
            st.name,
            any.meta
                .compression
                .as_ref()
                .map(|c| c.method.as_str())
                .unwrap_or("")
        ));
        any.save(&file)?;
        done.push(StageDone {
            name: st.name.clone(),
            role: "quantized".into(),
            model: any,
            file,
            source: "quantized".into(),
        });
    }
    Ok(done)
}

/// Metrics row of a finished stage.
pub fn stage_row(
    s: &StageDone,
    scores: eval::Scores,
    b1: f64,
    b256: f64,
) -> Result<crate::report::ModelMetrics> {
    let m = &s.model;
    let mut arch = m.meta.spec.describe();
    if let Some(q) = &m.meta.quantization {
        arch = format!("{arch} ({})", q.precision.as_str());
    }
    let nonzero = match m.float_model() {
        Some(f) if m.precision() == Precision::F32 => Some(prune::sparsity(f)?.1),
        _ => None,
    };
    let training: Option<train::TrainRecord> = serde_json::from_value(m.meta.training.clone()).ok();
    let mut row = crate::pipeline::row(
        &s.name,
        &s.role,
        m.float_model().unwrap_or(&Model {
            spec: m.meta.spec.clone(),
            params: Vec::new(),
        }),
        &s.file,
        scores,
        b1,
        b256,
        None,
        &s.source,
        training,
    );
    row.architecture = arch;
    row.params = m.num_params();
    row.bytes = m.bytes();
    row.precision = m.precision().short().into();
    row.nonzero_params = nonzero;
    row.compression = m.meta.compression.clone();
    row.kernel = match &m.body {
        Body::Int8(q) => Some(q.kernel.name().into()),
        _ => None,
    };
    Ok(row)
}
