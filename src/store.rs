//! The run store: owns a run's output folder. Stages read the models they start from by name
//! and hand what they finish to the store, which saves it atomically (the saved file marks it
//! finished), evaluates it once on the test split (quality, latency) and keeps its record. A
//! killed run is resumed by the store for every stage alike: [`RunStore::finished`] reads back a
//! model an earlier session finished, and [`RunStore::fit_and_save`] resumes a model's training
//! from its last epoch checkpoint. The report is built from the records alone.
//!
//! Folder layout: `models/<name>.safetensors` (f32) or `models/<name>.safetensors.gz`
//! (quantized), `checkpoints/` (epoch and round checkpoints, removed once a model is finished),
//! `plots/`, `records.json` (the record of every finished model so far, so that a resumed session
//! measures nothing twice), `metrics.json`, `report.md`, `config.toml`.

use crate::compress::quant::Precision;
use crate::compress::{self, AnyModel, Body};
use crate::data::{Splits, Task};
use crate::error::{Error, Result};
use crate::eval::{self, EvalConfig, Predictor, Scores};
use crate::models::{Model, ModelMeta, ModelSpec};
use crate::progress::Progress;
use crate::submodels::GroupRecord;
use crate::teachers::Teacher;
use crate::train::{Learner, Objective, StepHook, TrainConfig, TrainJob, TrainRecord};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Summary of the data used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Source description.
    pub source: String,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Training samples.
    pub train: usize,
    /// Validation samples.
    pub val: usize,
    /// Test samples.
    pub test: usize,
    /// Class names (classification).
    pub classes: Option<Vec<String>>,
}

/// Ratios of a model's figures to the reference teacher's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// Name of the reference model.
    pub reference: String,
    /// params / teacher params.
    pub params: f64,
    /// bytes / teacher bytes.
    pub bytes: f64,
    /// accuracy / teacher accuracy (classification).
    pub accuracy: Option<f64>,
    /// test errors / teacher test errors (classification).
    pub test_errors: Option<f64>,
    /// mse / teacher mse (regression).
    pub mse: Option<f64>,
    /// latency at batch 1 / teacher's.
    pub latency_b1: f64,
    /// latency at batch 256 / teacher's.
    pub latency_b256: f64,
}

/// Distillation settings used for a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillSummary {
    /// Teacher name.
    pub teacher: String,
    /// Temperature.
    pub temperature: f32,
    /// Soft-target weight.
    pub alpha: f32,
    /// The soft-target loss when it is not Hinton's (`dkd(1,8)`, `dist(2,2)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// When α or T was `"auto"`: the grid tried on the validation split and the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<crate::train::AutoChoice>,
    /// A classifier's agreement with its teacher (top-1 and mean KL) on the validation and
    /// test splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreements>,
}

/// Agreement with the teacher on the validation and test splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreements {
    /// On the validation split.
    pub val: crate::losses::agreement::Agreement,
    /// On the test split.
    pub test: crate::losses::agreement::Agreement,
}

/// All figures for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// Model name.
    pub name: String,
    /// Role: teacher, student, ...
    pub role: String,
    /// Architecture description.
    pub architecture: String,
    /// Trainable parameters.
    pub params: usize,
    /// Weight bytes (f32).
    pub bytes: usize,
    /// Size of the saved model file.
    pub file_bytes: u64,
    /// Numeric precision of the weights.
    pub precision: String,
    /// Test accuracy in [0, 1] (classification).
    pub accuracy: Option<f64>,
    /// Misclassified test samples (classification).
    pub test_errors: Option<usize>,
    /// Test MSE in target units (regression).
    pub mse: Option<f64>,
    /// Test MAE in target units (regression).
    pub mae: Option<f64>,
    /// Mean test loss (cross-entropy, or MSE on the standardised target).
    pub test_loss: f64,
    /// Median latency of one forward pass at batch 1, microseconds.
    pub latency_us_b1: f64,
    /// Median latency of one forward pass at batch 256, microseconds.
    pub latency_us_b256: f64,
    /// Ratios to the teacher.
    pub vs_teacher: Option<Ratios>,
    /// Distillation settings, for distilled students.
    pub distill: Option<DistillSummary>,
    /// How it was obtained: trained, resumed, loaded.
    pub source: String,
    /// Training record with per-epoch curves.
    pub training: Option<TrainRecord>,
    /// Non-zero parameters (below `params` for magnitude-pruned models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonzero_params: Option<usize>,
    /// What a pruning or quantization stage did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<compress::StageRecord>,
    /// The integer GEMM kernel that ran (int8 models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Macro-averaged test F1 (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// Embedding students: mean cosine similarity to the teacher's embeddings of the test texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_to_teacher: Option<f64>,
    /// Embedding students: the fraction of test texts whose nearest other test text (by cosine)
    /// is the same for the student as for the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nn_agreement: Option<f64>,
    /// A decision tree, as readable rules (thresholds in the data's own units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// A multi-task model: each head's test score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskScore>,
}

/// One head of a multi-task model on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// The task.
    pub name: String,
    /// What `value` is: `accuracy`, `mse` (the target's units), `cosine` (mean cosine to the
    /// teacher's embeddings), `agreement` (top-1 with the teacher) or `teacher-mse`.
    pub metric: String,
    /// Its value.
    pub value: f64,
    /// The task's teacher, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// The single-task student it is compared with in the report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Its weight at the end of training (fixed, or learned).
    pub weight: f32,
}

/// What an `[[export]]` stage wrote, and how its ONNX export compared with the model in tract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The exported model.
    pub from: String,
    /// `onnx` or `safetensors`.
    pub format: String,
    /// The file, relative to the run folder.
    pub file: String,
    /// Its size.
    pub bytes: usize,
    /// Test samples the ONNX export was run on in tract (0: not checked).
    pub checked_samples: usize,
    /// Largest difference between the export's outputs in tract and the model's own.
    pub max_abs_diff: Option<f64>,
    /// Fraction of those samples whose predicted class agrees (classification).
    pub class_agreement: Option<f64>,
}

/// The run folder's file of model records, saved after every finished model.
const RECORDS: &str = "records.json";

/// A finished model in the store.
pub struct Finished {
    /// Its name in the experiment.
    pub name: String,
    /// teacher, student, submodel, pruned, quantized, …
    pub role: String,
    /// The model, of any precision.
    pub model: AnyModel,
    /// The file it lives in.
    pub file: PathBuf,
}

impl Finished {
    /// The f32 model (dequantized for weight-only formats); an error for int8 models.
    pub fn float(&self) -> Result<&Model> {
        self.model.float_model().ok_or_else(|| {
            Error::Input(format!(
                "model '{}' is int8-quantized; name an f32 model instead",
                self.name
            ))
        })
    }
}

/// How a finished model was obtained and how it learned, for its record.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// trained, trained (earlier session), loaded from …
    pub source: String,
    /// Distillation settings, for a distilled student.
    pub distill: Option<DistillSummary>,
    /// An embedding student: the teacher whose test embeddings it is scored against.
    pub embedding_teacher: Option<String>,
    /// A multi-task model: each task's single-task student to compare with (task, model).
    pub baselines: Vec<(String, String)>,
}

/// The run folder and everything finished in it.
pub struct RunStore {
    out: PathBuf,
    /// The data: train / validation / test splits, normalised.
    pub splits: Splits,
    /// The experiment's seed.
    pub seed: u64,
    /// Progress display.
    pub progress: Progress,
    eval: EvalConfig,
    models: Vec<Finished>,
    records: Vec<ModelMetrics>,
    groups: Vec<GroupRecord>,
    /// Records an earlier session of this run saved (`records.json`).
    saved: Vec<ModelMetrics>,
    exports: Vec<ExportRecord>,
    /// Model files this session read back instead of making them.
    read_back: Vec<PathBuf>,
    /// Teachers distillery did not train (ONNX files), by name.
    teachers: Vec<(String, std::sync::Arc<dyn Teacher>)>,
    /// Outputs known per sample (text encoders, precomputed outputs, mixes), by name.
    known: Vec<(String, crate::teachers::KnownTeacher)>,
    /// The arrays of `data.format = "arrays"` (teacher outputs among them), when given.
    pub arrays: Option<std::sync::Arc<crate::data::Arrays>>,
}

impl RunStore {
    /// Opens (or creates) the run folder `out` and removes temporary files a killed session left.
    pub fn open(
        out: &Path,
        splits: Splits,
        seed: u64,
        eval: EvalConfig,
        progress: Progress,
    ) -> Result<RunStore> {
        for sub in ["", "models", "checkpoints", "plots"] {
            let d = out.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            crate::io::clean_temp_files(&d);
        }
        let records_file = out.join(RECORDS);
        let saved = if records_file.exists() {
            let text =
                std::fs::read_to_string(&records_file).map_err(|e| Error::io(&records_file, e))?;
            serde_json::from_str(&text).map_err(|e| {
                Error::Input(format!(
                    "{}: malformed records file: {e}",
                    records_file.display()
                ))
            })?
        } else {
            Vec::new()
        };
        Ok(RunStore {
            out: out.to_path_buf(),
            splits,
            seed,
            progress,
            eval,
            models: Vec::new(),
            records: Vec::new(),
            groups: Vec::new(),
            saved,
            read_back: Vec::new(),
            exports: Vec::new(),
            teachers: Vec::new(),
            known: Vec::new(),
            arrays: None,
        })
    }

    /// The run folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Where the f32 model `name` is saved.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.out.join("models").join(format!("{name}.safetensors"))
    }

    /// Where the quantized model `name` is saved.
    pub fn quantized_path(&self, name: &str) -> PathBuf {
        self.out
            .join("models")
            .join(format!("{name}.safetensors.gz"))
    }

    /// A checkpoint file of `name` (`what`: `ckpt`, `phase1.ckpt`, `rounds`, `qat.ckpt`, …).
    pub fn checkpoint_path(&self, name: &str, what: &str) -> PathBuf {
        self.out
            .join("checkpoints")
            .join(format!("{name}.{what}.safetensors"))
    }

    /// A side file of the run folder's `models/` (group records).
    pub fn models_dir(&self) -> PathBuf {
        self.out.join("models")
    }

    /// The finished model `name`.
    pub fn get(&self, name: &str) -> Result<&Finished> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            Error::Input(format!(
                "model '{name}' is not available in this run (was it trained?)"
            ))
        })
    }

    /// Adds a teacher distillery did not train.
    pub fn add_teacher(&mut self, name: &str, t: Box<dyn Teacher>) {
        self.teachers.push((name.to_string(), t.into()));
    }

    /// A handle on teacher `name` that a mix of teachers can keep: the outside teacher itself,
    /// or a finished model read again from its file; `None` when it only has per-sample
    /// outputs (precomputed, a BERT teacher's splits, a mix of such).
    pub fn shared_teacher(&self, name: &str) -> Result<Option<std::sync::Arc<dyn Teacher>>> {
        if let Some((_, t)) = self.teachers.iter().find(|(n, _)| n == name) {
            return Ok(Some(t.clone()));
        }
        if self.known(name).is_some() {
            return Ok(None);
        }
        let f = self.get(name)?;
        Ok(Some(std::sync::Arc::new(compress::load_any(&f.file)?)))
    }

    /// Adds a teacher whose outputs are known per sample.
    pub fn add_known(&mut self, name: &str, k: crate::teachers::KnownTeacher) {
        self.known.retain(|(n, _)| n != name);
        self.known.push((name.to_string(), k));
    }

    /// The per-sample outputs of teacher `name`, if it is such a teacher.
    pub fn known(&self, name: &str) -> Option<&crate::teachers::KnownTeacher> {
        self.known.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }

    /// Where teacher outputs are cached (`cache/` in the run folder).
    pub fn cache_dir(&self) -> PathBuf {
        self.out.join("cache")
    }

    /// The logits (or values) of teacher `name` on `split` (`train`, `val`, `test`): read
    /// from its known outputs, or computed by running it over the split.
    pub fn teacher_outputs(&self, name: &str, split: &str) -> Result<crate::teachers::Rows> {
        let data = match split {
            "train" => &self.splits.train,
            "val" => &self.splits.val,
            _ => &self.splits.test,
        };
        if let Some(k) = self.known(name) {
            let l = k.logits.as_ref().ok_or_else(|| {
                Error::Input(format!(
                    "teacher '{name}' gives embeddings, not class scores; distil from it with loss = {{ kind = \"cosine\" }} or give it a head"
                ))
            })?;
            return match split {
                "train" => Ok(l.train.clone()),
                "val" => Ok(l.val.clone()),
                _ => l.test.clone().ok_or_else(|| {
                    Error::Input(format!(
                        "teacher '{name}' has no outputs for the test split"
                    ))
                }),
            };
        }
        if let Some(m) = self.get(name).ok().and_then(|f| f.float().ok()) {
            return Ok(m.predict(&data.x, 512)?.into());
        }
        Ok(crate::eval::predict_all(self.teacher(name)?, &data.x, data.dim(), 512)?.into())
    }

    /// Anything named `name` that can teach: an outside teacher, or a finished model.
    pub fn teacher(&self, name: &str) -> Result<&dyn Teacher> {
        if let Some((_, t)) = self.teachers.iter().find(|(n, _)| n == name) {
            return Ok(t.as_ref());
        }
        Ok(&self.get(name)?.model)
    }

    /// The f32 model `name` and its metadata.
    pub fn float(&self, name: &str) -> Result<(&Model, &ModelMeta)> {
        let f = self.get(name)?;
        Ok((f.float()?, &f.model.meta))
    }

    /// A model an earlier session finished under `file`, if there is one.
    pub fn finished(&mut self, file: &Path) -> Result<Option<AnyModel>> {
        if file.exists() {
            let m = compress::load_any(file)?;
            self.read_back.push(file.to_path_buf());
            Ok(Some(m))
        } else {
            Ok(None)
        }
    }

    /// The record an earlier session of this run saved for `name`, if any.
    pub fn saved_record(&self, name: &str) -> Option<&ModelMetrics> {
        self.saved.iter().find(|r| r.name == name)
    }

    /// Metadata for a model trained on this run's data.
    pub fn meta(
        &self,
        name: &str,
        role: &str,
        spec: &ModelSpec,
        training: serde_json::Value,
    ) -> ModelMeta {
        let splits = &self.splits;
        ModelMeta {
            name: name.to_string(),
            role: role.to_string(),
            spec: spec.clone(),
            task: splits.train.targets.task(),
            class_names: splits.train.class_names().map(|c| c.to_vec()),
            normalizer: splits.normalizer.clone(),
            target_scale: splits.target_scale,
            training,
            quantization: None,
            compression: None,
            text: splits.featurizer.clone(),
            heads: Vec::new(),
        }
    }

    /// Trains `learner` on `train` (the training split, or the training split with synthetic
    /// samples) with a per-epoch checkpoint (resumed from when a killed session left one), saves
    /// it atomically as `models/<name>.safetensors` with its training record, then drops the
    /// checkpoint: the model file now marks it finished.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_and_save(
        &self,
        train: &crate::data::Dataset,
        name: &str,
        role: &str,
        learner: &dyn Learner,
        train_cfg: &TrainConfig,
        objective: Objective,
        hooks: Vec<Box<dyn StepHook + '_>>,
        compression: Option<compress::StageRecord>,
    ) -> Result<ModelMeta> {
        let ckpt = self.checkpoint_path(name, "ckpt");
        let record = self.fit(train, name, &ckpt, learner, train_cfg, objective, hooks)?;
        let meta = self.save_fitted(name, role, learner, &record, compression)?;
        let _ = std::fs::remove_file(&ckpt);
        Ok(meta)
    }

    /// Trains `learner` on `train` as the job `job` (its random stream), with a per-epoch
    /// checkpoint at `checkpoint` (resumed from when a killed session left one).
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        &self,
        train: &crate::data::Dataset,
        job: &str,
        checkpoint: &Path,
        learner: &dyn Learner,
        train_cfg: &TrainConfig,
        objective: Objective,
        hooks: Vec<Box<dyn StepHook + '_>>,
    ) -> Result<TrainRecord> {
        learner.fit(TrainJob {
            name: job,
            cfg: train_cfg,
            train,
            val: &self.splits.val,
            objective,
            fill: self.splits.normalizer.zero_value(),
            checkpoint: Some(checkpoint.to_path_buf()),
            seed: self.seed,
            progress: self.progress,
            hooks,
        })
    }

    /// Saves a fitted `learner` atomically as `models/<name>.safetensors` with its training
    /// record.
    pub fn save_fitted(
        &self,
        name: &str,
        role: &str,
        learner: &dyn Learner,
        record: &TrainRecord,
        compression: Option<compress::StageRecord>,
    ) -> Result<ModelMeta> {
        let training = serde_json::to_value(record).map_err(|e| Error::Other(e.to_string()))?;
        let mut meta = self.meta(name, role, learner.spec(), training);
        meta.compression = compression;
        learner.save(&self.model_path(name), &meta)?;
        Ok(meta)
    }

    /// Test scores and latency at batch 1 and 256 of anything that predicts.
    pub fn measure(&self, p: &dyn Predictor) -> Result<(Scores, f64, f64)> {
        let s = &self.splits;
        let scores = eval::evaluate(p, &s.test, s.target_scale.as_ref())?;
        let (b1, b256) = self.latencies(p)?;
        Ok((scores, b1, b256))
    }

    /// A classifier's agreement with `teacher` on the validation and test splits (`None` for
    /// regression, embeddings, or a teacher whose outputs are not class scores).
    fn agreements(&self, p: &dyn Predictor, teacher: &str) -> Result<Option<Agreements>> {
        let s = &self.splits;
        let classes = s.test.outputs();
        if classes < 2
            || s.val.is_empty()
            || s.test.is_empty()
            || !matches!(s.test.targets, crate::data::Targets::Classes { .. })
            || !s.test.text.is_empty() && s.featurizer.is_none()
        {
            return Ok(None);
        }
        // A teacher known only by outputs given for some splits (precomputed outputs without
        // test outputs) has no agreement to measure.
        let (Ok(t_val), Ok(t_test)) = (
            self.teacher_outputs(teacher, "val"),
            self.teacher_outputs(teacher, "test"),
        ) else {
            return Ok(None);
        };
        let d = s.test.dim();
        let own_val = eval::predict_all(p, &s.val.x, d, 512)?;
        let own_test = eval::predict_all(p, &s.test.x, d, 512)?;
        use crate::losses::agreement::agreement;
        Ok(
            match (
                agreement(&own_val, &t_val, classes),
                agreement(&own_test, &t_test, classes),
            ) {
                (Some(val), Some(test)) => Some(Agreements { val, test }),
                _ => None,
            },
        )
    }

    /// Latency at batch 1 and 256 on test inputs; for text, from the raw texts (featurizing
    /// included), as a user calling the model pays it.
    pub fn latencies(&self, p: &dyn Predictor) -> Result<(f64, f64)> {
        // Under MPI rank 0 measures (and reports); timing on every rank at once would only
        // measure the ranks competing for the machine.
        if !crate::dist::writes_shared() {
            return Ok((0.0, 0.0));
        }
        let s = &self.splits;
        Ok(match &s.featurizer {
            Some(f) if !s.test.text.is_empty() => (
                eval::text_latency_us(p, f, &s.test.text, 1, &self.eval)?,
                eval::text_latency_us(p, f, &s.test.text, 256, &self.eval)?,
            ),
            _ => (
                eval::latency_us(p, &s.test, 1, &self.eval)?,
                eval::latency_us(p, &s.test, 256, &self.eval)?,
            ),
        })
    }

    /// The eval settings (latency runs and budget).
    pub fn eval_config(&self) -> &EvalConfig {
        &self.eval
    }

    /// The record of an embedding student: its test outputs compared with teacher `t`'s
    /// test embeddings (mean cosine, nearest-neighbour agreement), and its latencies.
    fn embedding_record(&self, f: &Finished, t: &str, how: Provenance) -> Result<ModelMetrics> {
        let teacher = self
            .known(t)
            .and_then(|k| k.embeddings.as_ref())
            .and_then(|e| e.test.as_ref())
            .ok_or_else(|| Error::Input(format!("teacher '{t}' has no test embeddings")))?;
        let s = &self.splits;
        let out = eval::predict_all(&f.model, &s.test.x, s.test.dim(), 512)?;
        let dim = out.len() / s.test.len().max(1);
        if dim * s.test.len() != teacher.len() {
            return Err(Error::Input(format!(
                "model '{}' gives {dim} values per text but teacher '{t}' embeddings of {}",
                f.name,
                teacher.len() / s.test.len().max(1)
            )));
        }
        let cos = eval::mean_cosine(&out, teacher, dim);
        let nn = eval::nn_agreement(&out, teacher, dim);
        let (b1, b256) = self.latencies(&f.model)?;
        let scores = Scores {
            loss: 1.0 - cos,
            ..Default::default()
        };
        let mut r = record_of(f, scores, b1, b256, how)?;
        r.cosine_to_teacher = Some(cos);
        r.nn_agreement = Some(nn);
        Ok(r)
    }

    /// The record of a multi-task model: each head scored on the test split — against the
    /// labels where it learned them, else against its teacher (mean cosine for an embedding
    /// head, top-1 agreement for a class head, MSE for values) — its first labelled class
    /// head's accuracy (or its first embedding head's cosine) as the model's own figures, and
    /// its latencies (every head at once).
    fn multi_task_record(&self, f: &Finished, how: Provenance) -> Result<ModelMetrics> {
        let m = &f.model;
        let weights: Vec<f32> = serde_json::from_value::<TrainRecord>(m.meta.training.clone())
            .map(|r| r.task_weights)
            .unwrap_or_default();
        let (tasks, scores, cosine) =
            self.head_scores(m, &m.meta.heads, &weights, &how.baselines)?;
        let (b1, b256) = self.latencies(m)?;
        let mut r = record_of(f, scores, b1, b256, how)?;
        r.cosine_to_teacher = cosine;
        r.tasks = tasks;
        Ok(r)
    }

    /// Each head of `p`'s outputs (heads `heads`) scored on the test split, with the task
    /// weights and baselines to record beside them; the model's own scores (its head on the
    /// data's label, else its first labelled head's) and its first embedding head's cosine.
    pub fn head_scores(
        &self,
        p: &dyn Predictor,
        heads: &[crate::models::TaskHead],
        weights: &[f32],
        baselines: &[(String, String)],
    ) -> Result<(Vec<TaskScore>, Scores, Option<f64>)> {
        use crate::models::HeadKind;
        let s = &self.splits;
        let out = eval::predict_all(p, &s.test.x, s.test.dim(), 512)?;
        let width = heads.iter().map(|h| h.start + h.outputs).max().unwrap_or(0);
        let mut tasks = Vec::new();
        let mut own: Option<Scores> = None;
        let mut own_main: Option<()> = None;
        let mut cosine = None;
        for (i, h) in heads.iter().enumerate() {
            let z = crate::train::tasks::columns(&out, width, &h.cols());
            let (metric, value) = if h.labels {
                // Its labels: a further target column's, or the data's.
                let k = h
                    .column
                    .as_ref()
                    .and_then(|c| s.test.extra.iter().position(|e| &e.name == c));
                let sc = match k {
                    Some(k) => eval::score_targets(
                        &z,
                        &s.test.extra[k].targets,
                        s.extra_scales.get(k).copied().flatten().as_ref(),
                    ),
                    None => eval::score_outputs(&z, &s.test, s.target_scale.as_ref()),
                };
                let r = match (h.kind, sc.accuracy, sc.mse) {
                    (HeadKind::Classes, Some(a), _) => ("accuracy", a),
                    (_, _, Some(mse)) => ("mse", mse),
                    _ => ("loss", sc.loss),
                };
                // The model's own figures: its head on the data's label, else its first
                // labelled head's.
                if h.column.is_none() || own.is_none() {
                    if own_main.is_none() {
                        own = Some(sc);
                    }
                    if h.column.is_none() {
                        own_main = Some(());
                    }
                }
                r
            } else {
                let t = h.teacher.as_deref().unwrap_or_default();
                match h.kind {
                    HeadKind::Embedding => {
                        let te = self
                            .known(t)
                            .and_then(|k| k.embeddings.as_ref())
                            .and_then(|e| e.test.as_ref())
                            .ok_or_else(|| {
                                Error::Input(format!("teacher '{t}' has no test embeddings"))
                            })?;
                        let c = eval::mean_cosine(&z, te, h.outputs);
                        cosine.get_or_insert(c);
                        ("cosine", c)
                    }
                    HeadKind::Classes => {
                        let te = self.teacher_outputs(t, "test")?;
                        let a = crate::losses::agreement::agreement(&z, &te, h.outputs)
                            .map(|a| a.top1)
                            .unwrap_or(f64::NAN);
                        ("agreement", a)
                    }
                    HeadKind::Values => {
                        let te = self.teacher_outputs(t, "test")?;
                        let mse = z
                            .iter()
                            .zip(te.iter())
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                            / z.len().max(1) as f64;
                        ("teacher-mse", mse)
                    }
                }
            };
            tasks.push(TaskScore {
                name: h.name.clone(),
                metric: metric.into(),
                value,
                teacher: h.teacher.clone(),
                baseline: baselines
                    .iter()
                    .find(|(t, _)| *t == h.name)
                    .map(|(_, b)| b.clone()),
                weight: weights.get(i).copied().unwrap_or(1.0),
            });
        }
        let scores = own.unwrap_or(Scores {
            loss: cosine.map_or(f64::NAN, |c| 1.0 - c),
            ..Default::default()
        });
        Ok((tasks, scores, cosine))
    }

    /// A decision tree's rules, with the data's feature names and units.
    fn tree_rules(&self, m: &AnyModel) -> Option<String> {
        let Body::Trees(t) = &m.body else {
            return None;
        };
        let single = m.meta.spec.arch.tree_settings().map(|s| s.kind);
        if single != Some(crate::models::boost::TreeKind::Single) {
            return None;
        }
        let names = &self.splits.train.features;
        let unscale = |f: usize, v: f32| m.meta.normalizer.invert_feature(f, v);
        let ts = m.meta.target_scale;
        let unscale_target = |v: f32| ts.map_or(v, |t| t.inverse(v));
        Some(t.rules(
            (!names.is_empty()).then_some(names.as_slice()),
            &unscale,
            m.meta.class_names.as_deref(),
            &unscale_target,
        ))
    }

    /// Hands a finished model to the store. When `report` is set it is measured once, now, and
    /// its record joins the report.
    /// A model that an earlier session finished and measured keeps that session's record.
    pub fn finish(&mut self, f: Finished, how: Provenance, report: bool) -> Result<()> {
        if report {
            let earlier = self
                .read_back
                .contains(&f.file)
                .then(|| self.saved_record(&f.name).cloned())
                .flatten();
            let rec = match earlier {
                Some(mut r) => {
                    // Measured by the earlier session: its agreement with the teacher stays.
                    let agreement = r.distill.as_ref().and_then(|d| d.agreement.clone());
                    r.source = how.source;
                    r.distill = how.distill;
                    if let Some(d) = r.distill.as_mut() {
                        d.agreement = agreement;
                    }
                    r
                }
                None if !f.model.meta.heads.is_empty() => self.multi_task_record(&f, how)?,
                None => match how.embedding_teacher.clone() {
                    Some(t) => self.embedding_record(&f, &t, how)?,
                    None => {
                        let (scores, b1, b256) = self.measure(&f.model)?;
                        let mut r = record_of(&f, scores, b1, b256, how)?;
                        r.rules = self.tree_rules(&f.model);
                        if let Some(d) = r.distill.as_mut() {
                            d.agreement = self.agreements(&f.model, &d.teacher)?;
                        }
                        r
                    }
                },
            };
            self.records.push(rec);
            self.save_records()?;
        }
        self.models.retain(|m| m.name != f.name);
        self.models.push(f);
        Ok(())
    }

    /// Finishes the stage output `name`: read back from `file` when an earlier session finished
    /// it, else made by `make` (which saves it to `file`); `done` says what the stage did
    /// (`pruned`, `quantized`), for messages and the record's source.
    pub fn finish_or_make(
        &mut self,
        name: &str,
        role: &str,
        file: PathBuf,
        done: &str,
        make: impl FnOnce(&RunStore) -> Result<AnyModel>,
    ) -> Result<()> {
        let (model, source) = match self.finished(&file)? {
            Some(any) => {
                self.progress.say(&format!(
                    "{name}: already {done} ({}); skipping",
                    file.display()
                ));
                (any, format!("{done} (earlier session)"))
            }
            None => (make(self)?, done.to_string()),
        };
        self.finish(
            Finished {
                name: name.to_string(),
                role: role.to_string(),
                model,
                file,
            },
            Provenance {
                source,
                distill: None,
                embedding_teacher: None,
                baselines: Vec::new(),
            },
            true,
        )
    }

    /// Adds a record that belongs to no single model file (an ensemble).
    pub fn record(&mut self, r: ModelMetrics) -> Result<()> {
        self.records.push(r);
        self.save_records()
    }

    /// Writes every record so far to `records.json`, atomically, so that a resumed session
    /// reuses what this one measured.
    fn save_records(&self) -> Result<()> {
        let json = serde_json::to_string(&self.records).map_err(|e| Error::Other(e.to_string()))?;
        crate::io::write_atomic_str(&self.out.join(RECORDS), &json)
    }

    /// Adds what a sub-model group recorded (its rounds, the chosen round).
    pub fn record_group(&mut self, g: GroupRecord) {
        self.groups.push(g);
    }

    /// Every model record, in the order the stages finished them.
    pub fn records(&self) -> &[ModelMetrics] {
        &self.records
    }

    /// Adds what an export stage wrote.
    pub fn record_export(&mut self, r: ExportRecord) {
        self.exports.push(r);
    }

    /// Every export's record.
    pub fn exports(&self) -> &[ExportRecord] {
        &self.exports
    }

    /// Every sub-model group's record.
    pub fn groups(&self) -> &[GroupRecord] {
        &self.groups
    }

    /// The task of the run's data.
    pub fn task(&self) -> Task {
        self.splits.train.targets.task()
    }
}

/// The record of a finished model of any precision.
pub fn record_of(
    f: &Finished,
    scores: Scores,
    b1: f64,
    b256: f64,
    how: Provenance,
) -> Result<ModelMetrics> {
    let m = &f.model;
    let mut architecture = m.meta.spec.describe();
    if let Some(q) = &m.meta.quantization {
        architecture = format!("{architecture} ({})", q.precision.as_str());
    }
    let nonzero_params = match m.float_model() {
        Some(fm) if m.meta.compression.is_some() && m.precision() == Precision::F32 => {
            Some(compress::prune::sparsity(fm)?.1)
        }
        _ => None,
    };
    let training: Option<TrainRecord> = serde_json::from_value(m.meta.training.clone()).ok();
    let mut r = ModelMetrics::measured(&f.name, &f.role, &scores, b1, b256, how.source);
    r.architecture = architecture;
    r.params = m.num_params();
    r.bytes = m.bytes();
    r.file_bytes = std::fs::metadata(&f.file).map(|x| x.len()).unwrap_or(0);
    r.precision = m.precision().short().into();
    r.distill = how.distill;
    r.training = training;
    r.nonzero_params = nonzero_params;
    r.compression = m.meta.compression.clone();
    r.kernel = match &m.body {
        Body::Int8(q) => Some(q.kernel.name().into()),
        _ => None,
    };
    Ok(r)
}

impl ModelMetrics {
    /// A record with a model's test figures and latencies; size, architecture and training are
    /// filled in by the caller.
    pub fn measured(
        name: &str,
        role: &str,
        scores: &Scores,
        b1: f64,
        b256: f64,
        source: String,
    ) -> ModelMetrics {
        ModelMetrics {
            name: name.to_string(),
            role: role.to_string(),
            architecture: String::new(),
            params: 0,
            bytes: 0,
            file_bytes: 0,
            precision: "f32".into(),
            accuracy: scores.accuracy,
            test_errors: scores.errors,
            mse: scores.mse,
            mae: scores.mae,
            test_loss: scores.loss,
            latency_us_b1: b1,
            latency_us_b256: b256,
            vs_teacher: None,
            distill: None,
            source,
            training: None,
            nonzero_params: None,
            compression: None,
            kernel: None,
            f1: scores.f1,
            cosine_to_teacher: None,
            nn_agreement: None,
            rules: None,
            tasks: Vec::new(),
        }
    }
}
