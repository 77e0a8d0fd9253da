//! `[[submodels]]`: K sub-models (fresh, or split from a teacher) trained alone in phase 1, then
//! rounds of knowledge transfer between them (`crate::submodels`), their ensemble, and an
//! optional final student distilled from the ensemble. The group is finished when
//! `models/<group>.group.json` exists; it is written after every member's model file.

use super::Stage;
use crate::compress::AnyModel;
use crate::error::{Error, Result};
use crate::eval::Ensemble;
use crate::losses::mutual;
use crate::models::{self, Model, ModelSpec, TaskHead};
use crate::rng::Rng;
use crate::store::{DistillSummary, Finished, ModelMetrics, Provenance, RunStore};
use crate::submodels::{self, GroupJob, GroupRecord, SubmodelsConfig};
use crate::train::{Objective, TeacherSignal};

/// The stage of one `[[submodels]]` group.
pub struct GroupStage {
    /// Its settings.
    pub cfg: SubmodelsConfig,
}

impl Stage for GroupStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let g = &self.cfg;
        let group_file = store.models_dir().join(format!("{}.group.json", g.name));
        let names: Vec<String> = (0..g.k).map(|i| format!("{}-{}", g.name, i + 1)).collect();
        let earlier = group_file.exists();
        let (record, members, source) = if earlier {
            store.progress.say(&format!(
                "{}: sub-models already trained ({}); skipping",
                g.name,
                group_file.display()
            ));
            let text =
                std::fs::read_to_string(&group_file).map_err(|e| Error::io(&group_file, e))?;
            let record: GroupRecord = serde_json::from_str(&text).map_err(|e| {
                Error::Input(format!(
                    "{}: malformed group record: {e}",
                    group_file.display()
                ))
            })?;
            let mut members = Vec::new();
            for n in &names {
                let file = store.model_path(n);
                members.push(store.finished(&file)?.ok_or_else(|| {
                    Error::Input(format!(
                        "{}: the group is recorded as finished but {} is missing",
                        group_file.display(),
                        file.display()
                    ))
                })?);
            }
            (record, members, "trained (earlier session)".to_string())
        } else {
            let teacher = g
                .teacher
                .as_deref()
                .and_then(|t| store.float(t).ok().map(|(m, _)| m));
            if g.teacher.is_some() && teacher.is_none() && g.init == submodels::SubmodelInit::Split
            {
                return Err(Error::Input(format!(
                    "submodels.{}.teacher: init = \"split\" cuts a distillery MLP; '{}' is an outside teacher (use init = \"fresh\")",
                    g.name,
                    g.teacher.as_deref().unwrap_or("")
                )));
            }
            let teacher_outputs = match &g.teacher {
                Some(t) if g.alpha > 0.0 => Some(store.teacher_outputs(t, "train")?),
                _ => None,
            };
            // A multi-task group: every member's heads, each head's task with cached targets.
            let (heads, tasks) = if g.tasks.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                crate::stages::tasks::plan_heads(&g.multi_task(), store)?
            };
            let member_heads = heads.clone();
            let outcome = submodels::run_group(GroupJob {
                cfg: g,
                splits: &store.splits,
                teacher,
                teacher_outputs,
                seed: store.seed,
                out: store.out(),
                progress: store.progress,
                heads,
                tasks,
            })?;
            let mut members = Vec::new();
            for (i, (name, m)) in outcome.members.into_iter().enumerate() {
                let training = serde_json::to_value(&outcome.record.phase1[i])
                    .map_err(|e| Error::Other(e.to_string()))?;
                let mut meta = store.meta(&name, "submodel", &m.spec, training);
                meta.heads = member_heads.clone();
                models::save_model(&store.model_path(&name), &m, &meta)?;
                members.push(AnyModel::float(m, meta));
            }
            let json = serde_json::to_string_pretty(&outcome.record)
                .map_err(|e| Error::Other(e.to_string()))?;
            crate::io::write_atomic_str(&group_file, &json)?;
            let _ = std::fs::remove_file(store.checkpoint_path(&g.name, "rounds"));
            (outcome.record, members, "trained".to_string())
        };

        // The members, then their ensemble.
        for (name, m) in names.iter().zip(members) {
            let file = store.model_path(name);
            store.finish(
                Finished {
                    name: name.clone(),
                    role: "submodel".into(),
                    model: m,
                    file,
                },
                Provenance {
                    source: source.clone(),
                    distill: None,
                    embedding_teacher: None,
                    baselines: Vec::new(),
                },
                true,
            )?;
        }
        let floats = names
            .iter()
            .map(|n| store.get(n).and_then(|f| f.float()))
            .collect::<Result<Vec<&Model>>>()?;
        let ens_name = format!("{}-ensemble", g.name);
        let ensemble = match store.saved_record(&ens_name) {
            Some(r) if earlier => {
                let mut r = r.clone();
                r.source = source.clone();
                r
            }
            _ => {
                let heads = store.get(&names[0])?.model.meta.heads.clone();
                ensemble_record(store, g, &floats, &names, &source, &heads)?
            }
        };
        store.record(ensemble)?;
        store.record_group(record);

        // The final student distilled from the ensemble.
        if let Some(f) = &g.final_student {
            final_student(store, g, f, &names, source)?;
        }
        Ok(())
    }
}

/// The group's final student (`final_student`): read back when an earlier session finished it,
/// else distilled from the members' ensemble — one task, or head by head ([`final_multi_task`]).
fn final_student(
    store: &mut RunStore,
    g: &SubmodelsConfig,
    f: &submodels::FinalStudentConfig,
    names: &[String],
    source: String,
) -> Result<()> {
    let file = store.model_path(&f.name);
    let model = match store.finished(&file)? {
        Some(any) => any,
        None => {
            let floats = names
                .iter()
                .map(|n| store.get(n).and_then(|f| f.float()))
                .collect::<Result<Vec<&Model>>>()?;
            let heads = store.get(&names[0])?.model.meta.heads.clone();
            if !g.tasks.is_empty() {
                final_multi_task(store, g, f, &floats, &heads)?
            } else {
                final_one_task(store, g, f, &floats)?
            }
        }
    };
    store.finish(
        Finished {
            name: f.name.clone(),
            role: "student".into(),
            model,
            file,
        },
        Provenance {
            source,
            distill: Some(DistillSummary {
                teacher: format!("{}-ensemble", g.name),
                temperature: f.temperature,
                alpha: f.alpha,
                loss: None,
                auto: None,
                agreement: None,
            }),
            embedding_teacher: None,
            baselines: Vec::new(),
        },
        true,
    )?;
    Ok(())
}

/// A one-task group's final student: Hinton's objective on the ensemble's softened outputs.
fn final_one_task(
    store: &RunStore,
    g: &SubmodelsConfig,
    f: &submodels::FinalStudentConfig,
    floats: &[&Model],
) -> Result<AnyModel> {
    let soft = ensemble_targets(store, floats, f.temperature)?;
    let spec = ModelSpec {
        arch: f.arch.clone(),
        input_shape: store.splits.train.shape.clone(),
        outputs: store.splits.train.outputs(),
    };
    let model = Model::new(
        spec,
        &mut Rng::derive(store.seed, &format!("init/{}", f.name)),
    )?;
    store.progress.say(&format!(
        "{}: distilling the {}-ensemble into {}",
        f.name,
        g.name,
        model.spec.describe()
    ));
    let objective = Objective::hinton(TeacherSignal::Cached(soft.into()), f.temperature, f.alpha);
    let meta = store.fit_and_save(
        &store.splits.train,
        &f.name,
        "student",
        &model,
        &f.train,
        objective,
        Vec::new(),
        None,
    )?;
    Ok(AnyModel::float(model, meta))
}

/// A multi-task group's ensemble: its members' outputs combined head by head (class heads'
/// probabilities averaged, value and embedding heads' outputs).
struct HeadsEnsemble<'m> {
    members: Vec<&'m Model>,
    heads: Vec<TaskHead>,
    width: usize,
}

impl crate::teachers::Teacher for HeadsEnsemble<'_> {
    fn predict_batch(&self, x: &candle_core::Tensor) -> Result<Vec<f32>> {
        let outs = self
            .members
            .iter()
            .map(|m| crate::teachers::Teacher::predict_batch(*m, x))
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::train::tasks::ensemble_heads(
            &outs,
            &self.heads,
            self.width,
        ))
    }
}

/// The final student of a multi-task group: the members' heads on a trunk of its own, each head
/// distilled from the ensemble's same head (class heads: log of the members' mean probabilities
/// at T = 1, softened at the student's T; value and embedding heads: the members' mean), with
/// weight α beside the head's labels (1 − α) where it has labels and weight 1 where it has none
/// — the task weights, losses and label columns as the members learned them. Saved with its
/// heads.
fn final_multi_task(
    store: &RunStore,
    g: &SubmodelsConfig,
    f: &submodels::FinalStudentConfig,
    members: &[&Model],
    heads: &[TaskHead],
) -> Result<AnyModel> {
    let splits = &store.splits;
    let width = heads.iter().map(|h| h.start + h.outputs).max().unwrap_or(0);
    let ensemble = HeadsEnsemble {
        members: members.to_vec(),
        heads: heads.to_vec(),
        width,
    };
    let on = |d: &crate::data::Dataset| crate::eval::predict_all(&ensemble, &d.x, d.dim(), 512);
    let (train, val) = (on(&splits.train)?, on(&splits.val)?);
    let (_, mut tasks) = crate::stages::tasks::plan_heads(&g.multi_task(), store)?;
    for (task, h) in tasks.iter_mut().zip(heads) {
        let cols = h.cols();
        let t: crate::teachers::Rows = crate::train::tasks::columns(&train, width, &cols).into();
        let v: crate::teachers::Rows = crate::train::tasks::columns(&val, width, &cols).into();
        let o = &mut task.objective;
        let loss = o
            .soft
            .first()
            .map_or(crate::losses::SoftLoss::Kd, |s| s.loss);
        let (soft, label) = if task.labels {
            (f.alpha, 1.0 - f.alpha)
        } else {
            (1.0, 0.0)
        };
        o.soft = vec![crate::train::SoftTerm {
            signal: TeacherSignal::Cached(t),
            temperature: f.temperature,
            weight: soft,
            loss,
        }];
        o.label_weight = label;
        o.anneal = false;
        if h.kind == crate::models::HeadKind::Embedding {
            o.val_targets = Some(v);
        } else if h.kind == crate::models::HeadKind::Classes {
            o.teacher_val = Some(v);
        }
    }
    let spec = ModelSpec {
        arch: f.arch.clone(),
        input_shape: splits.train.shape.clone(),
        outputs: width,
    };
    let model = Model::new(
        spec,
        &mut Rng::derive(store.seed, &format!("init/{}", f.name)),
    )?;
    store.progress.say(&format!(
        "{}: distilling the {}-ensemble into {}, head by head ({})",
        f.name,
        g.name,
        model.spec.describe(),
        heads
            .iter()
            .map(|h| format!("{} ×{}", h.name, h.outputs))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let ckpt = store.checkpoint_path(&f.name, "ckpt");
    let record = store.fit(
        &splits.train,
        &f.name,
        &ckpt,
        &model,
        &f.train,
        Objective::multi_task(tasks),
        Vec::new(),
    )?;
    let training = serde_json::to_value(&record).map_err(|e| Error::Other(e.to_string()))?;
    let mut meta = store.meta(&f.name, "student", &model.spec, training);
    meta.heads = heads.to_vec();
    models::save_model(&store.model_path(&f.name), &model, &meta)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(AnyModel::float(model, meta))
}

/// The ensemble's soft targets on the training set: the members' averaged softened outputs
/// (as logits at temperature `t`), or their mean output for regression.
fn ensemble_targets(store: &RunStore, members: &[&Model], t: f32) -> Result<Vec<f32>> {
    let splits = &store.splits;
    let outs: Vec<Vec<f32>> = members
        .iter()
        .map(|m| m.predict(&splits.train.x, 512))
        .collect::<Result<_>>()?;
    let refs: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
    Ok(if store.task() == crate::data::Task::Regression {
        mutual::mean_outputs(&refs)
    } else {
        mutual::probs_as_logits(&mutual::peer_average(&refs, splits.train.outputs(), t), t)
    })
}

/// The record of the group's ensemble: measured like any model; its size is its members'.
fn ensemble_record(
    store: &RunStore,
    g: &SubmodelsConfig,
    members: &[&Model],
    names: &[String],
    source: &str,
    heads: &[TaskHead],
) -> Result<ModelMetrics> {
    let ens = Ensemble {
        members: members.to_vec(),
        regression: store.task() == crate::data::Task::Regression,
    };
    // A multi-task group's ensemble combines its members head by head.
    let by_head = HeadsEnsemble {
        members: members.to_vec(),
        heads: heads.to_vec(),
        width: members.first().map_or(0, |m| m.spec.outputs),
    };
    let (scores, b1, b256, tasks, cosine) = if heads.is_empty() {
        let (s, b1, b256) = store.measure(&ens)?;
        (s, b1, b256, Vec::new(), None)
    } else {
        let (tasks, s, cosine) = store.head_scores(&by_head, heads, &[], &[])?;
        let (b1, b256) = store.latencies(&by_head)?;
        (s, b1, b256, tasks, cosine)
    };
    let params: usize = members.iter().map(|m| m.num_params()).sum();
    let mut r = ModelMetrics::measured(
        &format!("{}-ensemble", g.name),
        "ensemble",
        &scores,
        b1,
        b256,
        source.into(),
    );
    r.architecture = format!(
        "average of {} sub-models ({})",
        members.len(),
        members
            .iter()
            .map(|m| m.spec.describe())
            .collect::<Vec<_>>()
            .join(", ")
    );
    r.params = params;
    r.bytes = params * 4;
    r.tasks = tasks;
    r.cosine_to_teacher = cosine;
    r.file_bytes = names
        .iter()
        .map(|n| {
            std::fs::metadata(store.model_path(n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    Ok(r)
}
