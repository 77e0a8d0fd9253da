//! Training a `[[model]]`: a teacher on labels, a student distilled from a teacher (with an
//! optional FitNets hint), or a model loaded from a file.

use super::Stage;
use crate::data::Task;
use crate::error::{bad_field, Error, Result};
use crate::models::{self, Arch, Model, ModelSpec};
use crate::rng::Rng;
use crate::stages::tune::Tunable;
use crate::store::{DistillSummary, Finished, Provenance, RunStore};
use crate::train::trees::TreeLearner;
use crate::train::{fixed_views, HintTerm, Learner, Objective, TeacherSignal, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a model is for in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Trained on labels; other models learn from it.
    Teacher,
    /// An intermediate model in a teacher-assistant chain.
    Assistant,
    /// A smaller model; distilled when it has a `distill` table, else trained on labels alone.
    Student,
}

impl Role {
    /// Lower-case name as written in files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::Assistant => "assistant",
            Role::Student => "student",
        }
    }
}

/// Hinton distillation settings for a student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Name of the teacher (an earlier `[[model]]`).
    pub teacher: String,
    /// Softmax temperature T, or `"auto"`: chosen on the validation split
    /// ([`crate::stages::tune`]).
    #[serde(default = "default_temperature")]
    pub temperature: Tunable,
    /// Weight α of the soft-target term; (1 − α) weighs the label term. `"auto"`: chosen on
    /// the validation split among 0 (labels only), 0.5 and 0.9.
    #[serde(default = "default_alpha")]
    pub alpha: Tunable,
    /// Teacher-assistant chain (Mirzadeh et al. 2020): intermediate models, largest first,
    /// each distilled from the one before; the student then learns from the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assistants: Vec<Arch>,
    /// Add a FitNets hint term (Romero et al. 2015) on a hidden layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<HintConfig>,
    /// The soft-target loss: `{ kind = "kd" }` (Hinton, the default), `{ kind = "dkd",
    /// target_weight = 1.0, non_target_weight = 8.0 }` or `{ kind = "dist", inter_weight = 1.0,
    /// intra_weight = 1.0 }`.
    #[serde(default, skip_serializing_if = "is_kd")]
    pub loss: crate::losses::SoftLoss,
    /// Text students of the teacher's tokenizer: start the embedding table from the teacher's
    /// own embedding of each token, reduced by PCA to the student's width and weighted by
    /// token frequency (Model2Vec), instead of at random.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_from_teacher: bool,
    /// Add synthetic samples near the training set, labelled by the teacher (MUNGE,
    /// Bucila et al. 2006): `{ samples = 20000, swap = 0.5, spread = 1.0 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<crate::data::munge::MungeConfig>,
    /// Unlabelled transfer data: `{ path = "more.csv.gz" }`, a CSV file with the training
    /// file's columns (its label column's values are ignored: write `?`). Its samples join the
    /// training split with the teacher's outputs as targets — with α = 1 (function matching)
    /// the student learns the teacher alone on every sample; the label term of a transfer
    /// sample, where α < 1, is the teacher's arg-max, as for synthetic samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSet>,
    /// Teacher annealing (Clark et al. 2019, BAM!): the soft term's weight α falls linearly to
    /// 0 over training and the label term's rises to 1, so each sample's target moves from the
    /// teacher to its label (with α = 1: BAM!'s schedule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anneal: bool,
}

/// The `transfer = { … }` table of a student's `distill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSet {
    /// The CSV file (gzip allowed).
    pub path: std::path::PathBuf,
    /// Use at most this many of its samples (the first ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<usize>,
}

/// FitNets hint: match the student's hidden layer, through a learned linear adapter, to the
/// teacher's hidden layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintConfig {
    /// The teacher's hint layer (0-based dense hidden layer).
    pub teacher_layer: usize,
    /// The student's guided layer (0-based dense hidden layer).
    pub student_layer: usize,
    /// Weight of the hint term, added to the distillation loss.
    #[serde(default = "default_hint_weight")]
    pub weight: f32,
}

fn default_hint_weight() -> f32 {
    1.0
}

fn is_kd(l: &crate::losses::SoftLoss) -> bool {
    *l == crate::losses::SoftLoss::Kd
}

impl DistillConfig {
    /// True when α or T is chosen on the validation split.
    pub fn is_auto(&self) -> bool {
        self.alpha == Tunable::Auto || self.temperature == Tunable::Auto
    }
}

fn default_temperature() -> Tunable {
    Tunable::Fixed(4.0)
}
fn default_alpha() -> Tunable {
    Tunable::Fixed(0.9)
}

/// One `[[model]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Unique name (letters, digits, '-', '_'); also the file name of the saved model.
    pub name: String,
    /// `teacher` or `student`; default: `student` when `distill` is given, else `teacher`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Architecture (ignored when `from` loads a saved model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Training settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// Learn from a teacher's soft targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// Load this saved model instead of training one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Born-again generations (Furlanello et al. 2018) that follow this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_again: Option<BornAgainConfig>,
    /// A multi-task model: one head per `[[model.task]]` on the shared trunk `arch`
    /// ([`crate::stages::tasks`]).
    #[serde(default, rename = "task", skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<crate::stages::tasks::TaskConfig>,
}

/// Born-again networks: `generations` further models of the same architecture, each
/// distilled from the previous generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BornAgainConfig {
    /// Number of further generations (≥ 1).
    pub generations: usize,
    /// Temperature of each generation's distillation.
    #[serde(default = "default_ban_temperature")]
    pub temperature: f32,
    /// Soft-target weight α (1.0: the paper's soft targets only).
    #[serde(default = "default_ban_alpha")]
    pub alpha: f32,
}

fn default_ban_temperature() -> f32 {
    1.0
}
fn default_ban_alpha() -> f32 {
    1.0
}

impl ModelConfig {
    /// Checks the entry: its name (not among the `earlier` models), `arch` or `from`, the
    /// schemes, training settings and distillation table (its teacher must be an earlier
    /// model). `task` and `images` describe the data.
    pub fn check(
        &self,
        earlier: &[&str],
        task: Task,
        images: bool,
        text: bool,
        data: &crate::data::DataConfig,
    ) -> Result<()> {
        let m = self;
        let seen = earlier;
        let p = format!("model.{}", m.name);
        crate::io::check_name("model.name", &m.name)?;
        if seen.contains(&m.name.as_str()) {
            bad_field(&format!("{p}.name"), "duplicate model name")?;
        }
        match (&m.arch, &m.from) {
            (None, None) => bad_field(
                &format!("{p}.arch"),
                "required (or give `from` to load a saved model)",
            )?,
            (Some(_), Some(_)) => bad_field(
                &format!("{p}.from"),
                "give either `arch` (train a new model) or `from` (load one), not both",
            )?,
            (None, Some(f)) if !f.exists() => bad_field(
                &format!("{p}.from"),
                &format!("model file '{}' does not exist", f.display()),
            )?,
            _ => {}
        }
        if let Some(a) = &m.arch {
            a.check(&format!("{p}.arch"), crate::models::Input::of(images, text))?;
            if a.fit_to().is_some() && task == Task::Regression {
                bad_field(
                    &format!("{p}.arch.fit_to"),
                    "only for classification (a regression tree fits the teacher's values)",
                )?;
            }
        }
        if let Some(b) = &m.born_again {
            if b.generations == 0 {
                bad_field(&format!("{p}.born_again.generations"), "must be at least 1")?;
            }
            if !(b.temperature.is_finite() && b.temperature > 0.0) {
                bad_field(&format!("{p}.born_again.temperature"), "must be positive")?;
            }
            if !(0.0..=1.0).contains(&b.alpha) {
                bad_field(&format!("{p}.born_again.alpha"), "expected [0, 1]")?;
            }
            if m.arch.is_none() {
                bad_field(
                    &format!("{p}.born_again"),
                    "needs `arch` (each generation repeats it)",
                )?;
            }
        }
        m.train.check_for(
            &format!("{p}.train"),
            crate::data::augment::InputKind::of(images, text),
        )?;
        crate::stages::tasks::check(
            &self.multi_task(),
            &[
                ("distill", m.distill.is_some()),
                ("born_again", m.born_again.is_some()),
                ("from", m.from.is_some()),
            ],
            seen,
            data,
        )?;
        if let Some(ds) = &m.distill {
            if !seen.contains(&ds.teacher.as_str()) {
                bad_field(
                    &format!("{p}.distill.teacher"),
                    &format!(
                        "'{}' is not the name of an earlier [[model]] (known: {})",
                        ds.teacher,
                        if seen.is_empty() {
                            "none".to_string()
                        } else {
                            seen.join(", ")
                        }
                    ),
                )?;
            }
            if let Some(t) = ds.temperature.fixed() {
                if !(t.is_finite() && t > 0.0) {
                    bad_field(
                        &format!("{p}.distill.temperature"),
                        &format!("must be positive, got {t}"),
                    )?;
                }
            }
            if let Some(a) = ds.alpha.fixed() {
                if !(0.0..=1.0).contains(&a) {
                    bad_field(
                        &format!("{p}.distill.alpha"),
                        &format!("expected [0, 1], got {a}"),
                    )?;
                }
            }
            let auto = ds.is_auto();
            if auto && ds.loss.is_embedding() {
                bad_field(
                    &format!("{p}.distill"),
                    "alpha and temperature \"auto\" choose how much of the labels to mix in; an embedding loss uses no labels (give numbers)",
                )?;
            }
            if ds.anneal && ds.loss.is_embedding() {
                bad_field(
                    &format!("{p}.distill.anneal"),
                    "teacher annealing moves the target from the teacher to the labels; an embedding loss has no labels",
                )?;
            }
            if ds.anneal && m.arch.as_ref().map(|a| a.is_tree()).unwrap_or(false) {
                bad_field(
                    &format!("{p}.distill.anneal"),
                    "teacher annealing follows a network's training steps; tree models are fitted round by round on one fixed target",
                )?;
            }
            if let Some(sc) = &ds.synthetic {
                sc.check(&format!("{p}.distill.synthetic"))?;
                if auto {
                    bad_field(
                        &format!("{p}.distill.synthetic"),
                        "synthetic samples with alpha or temperature \"auto\" are not available (give numbers)",
                    )?;
                }
                if text {
                    bad_field(
                        &format!("{p}.distill.synthetic"),
                        "synthetic samples are made from feature columns; text data have none",
                    )?;
                }
            }
            if let Some(tr) = &ds.transfer {
                let f = format!("{p}.distill.transfer");
                if !tr.path.exists() {
                    bad_field(
                        &format!("{f}.path"),
                        &format!("file '{}' does not exist", tr.path.display()),
                    )?;
                }
                if tr.max_samples == Some(0) {
                    bad_field(&format!("{f}.max_samples"), "must be at least 1")?;
                }
                if auto {
                    bad_field(
                        &f,
                        "a transfer set with alpha or temperature \"auto\" is not available (give numbers)",
                    )?;
                }
                if text {
                    bad_field(
                        &f,
                        "a transfer set is read as feature columns; text students are not supported yet",
                    )?;
                }
                if ds.synthetic.is_some() {
                    bad_field(
                        &f,
                        "give either synthetic samples or a transfer set, not both",
                    )?;
                }
            }
            if auto && !ds.assistants.is_empty() {
                bad_field(
                    &format!("{p}.distill"),
                    "\"auto\" is not available with assistants (give numbers)",
                )?;
            }
            for (k, w) in ds.loss.weights() {
                if !(w.is_finite() && w >= 0.0) {
                    bad_field(
                        &format!("{p}.distill.loss.{k}"),
                        &format!("expected a finite weight >= 0, got {w}"),
                    )?;
                }
            }
            if ds.loss != crate::losses::SoftLoss::Kd && task == Task::Regression {
                bad_field(
                    &format!("{p}.distill.loss"),
                    &format!(
                        "'{}' needs class probabilities; a regression student matches its teacher by MSE (remove the loss table)",
                        ds.loss.describe()
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// The entry as a multi-task model (its `[[model.task]]` tables, if any).
    pub fn multi_task(&self) -> crate::stages::tasks::MultiTask<'_> {
        crate::stages::tasks::MultiTask {
            table: "model",
            name: &self.name,
            arch: self.arch.as_ref(),
            train: &self.train,
            role: self.role().as_str(),
            tasks: &self.tasks,
        }
    }

    /// The effective role.
    pub fn role(&self) -> Role {
        self.role
            .unwrap_or(if self.distill.is_some() || !self.tasks.is_empty() {
                Role::Student
            } else {
                Role::Teacher
            })
    }
}

/// The stage of one `[[model]]`.
pub struct ModelStage {
    /// Its settings.
    pub cfg: ModelConfig,
    /// Train it when it is not finished (false: it is only needed as a teacher, and must have
    /// been trained by an earlier invocation).
    pub train: bool,
    /// Report it.
    pub report: bool,
}

impl Stage for ModelStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let m = &self.cfg;
        let role = m.role().as_str();
        let file = store.model_path(&m.name);
        let (model, source, file) = if let Some(f) = &m.from {
            let mut model = crate::compress::load_any(f)?;
            if let Some(q) = &model.meta.quantization {
                return Err(models::quantized_refusal(
                    &f.display().to_string(),
                    q.precision.as_str(),
                ));
            }
            model.meta.name = m.name.clone();
            model.meta.role = role.into();
            (model, format!("loaded from {}", f.display()), f.clone())
        } else if let Some(any) = store.finished(&file)? {
            store.progress.say(&format!(
                "{}: already trained ({}); skipping",
                m.name,
                file.display()
            ));
            (any, "trained (earlier session)".to_string(), file)
        } else if !self.train {
            return Err(Error::Input(format!(
                "model '{}' is needed as a teacher but is not trained in {}",
                m.name,
                store.out().display()
            )));
        } else {
            train_model(m, store)?;
            let model = crate::compress::load_any(&file)?;
            (model, "trained".to_string(), file)
        };
        let chosen = m
            .distill
            .as_ref()
            .filter(|d| d.is_auto())
            .and_then(|_| crate::stages::tune::saved_choice(store, &m.name));
        let distill = m.distill.as_ref().map(|d| DistillSummary {
            teacher: d.teacher.clone(),
            // What was used: the choice when there was one (the guard may have kept labels
            // alone even with α fixed), else the given values.
            temperature: chosen
                .as_ref()
                .map(|c| c.temperature)
                .or(d.temperature.fixed())
                .unwrap_or(f32::NAN),
            alpha: chosen
                .as_ref()
                .map(|c| c.alpha)
                .or(d.alpha.fixed())
                .unwrap_or(f32::NAN),
            auto: chosen.clone(),
            loss: (d.loss != crate::losses::SoftLoss::Kd).then(|| d.loss.describe().to_uppercase()),
            agreement: None,
        });
        store.finish(
            Finished {
                name: m.name.clone(),
                role: role.into(),
                model,
                file,
            },
            Provenance {
                source,
                distill,
                embedding_teacher: m
                    .distill
                    .as_ref()
                    .filter(|d| d.loss.is_embedding())
                    .map(|d| d.teacher.clone()),
                baselines: m
                    .tasks
                    .iter()
                    .filter_map(|t| t.baseline.clone().map(|b| (t.name.clone(), b)))
                    .collect(),
            },
            self.report,
        )
    }
}

/// Trains `m` and saves it as `store.model_path(&m.name)`.
fn train_model(m: &ModelConfig, store: &RunStore) -> Result<()> {
    // Token replacement's neighbours, found once in the table it names.
    let with_nb;
    let m = if m.train.augment.replace > 0.0 {
        with_nb = ModelConfig {
            train: crate::stages::text::with_neighbours(&m.train, &m.name, store)?,
            ..m.clone()
        };
        &with_nb
    } else {
        m
    };
    if !m.tasks.is_empty() {
        return crate::stages::tasks::train(&m.multi_task(), store);
    }
    let splits = &store.splits;
    let arch = m
        .arch
        .clone()
        .ok_or_else(|| Error::Input(format!("model.{}.arch: required", m.name)))?;
    let mut arch = arch;
    if let Some(f) = &splits.featurizer {
        arch.set_vocab(f.vocab());
    }
    let embedding = m.distill.as_ref().filter(|d| d.loss.is_embedding());
    let outputs = match embedding {
        Some(ds) => {
            store
                .known(&ds.teacher)
                .and_then(|k| k.embeddings.as_ref())
                .ok_or_else(|| {
                    Error::Input(format!(
                        "model.{}.distill.loss: '{}' gives no embeddings; embedding distillation (cosine, mse) needs a bert teacher",
                        m.name, ds.teacher
                    ))
                })?
                .cols
        }
        None => splits.train.outputs(),
    };
    let spec = ModelSpec {
        arch,
        input_shape: splits.train.shape.clone(),
        outputs,
    };
    let tree = spec.arch.is_tree();
    if tree && m.train.augments() {
        let field = if m.train.jitter > 0 {
            "jitter"
        } else {
            "augment"
        };
        return Err(Error::Input(format!(
            "model.{}.train.{field}: a tree model is fitted to the samples as they are; remove {field}",
            m.name
        )));
    }
    // A newly initialised model: the same weights every call (trials of "auto" start where
    // the final run starts).
    let fresh = || -> Result<Box<dyn Learner>> {
        if tree {
            return Ok(Box::new(TreeLearner::new(&spec)));
        }
        let mut init_rng = Rng::derive(store.seed, &format!("init/{}", m.name));
        let model = Model::new(spec.clone(), &mut init_rng)?;
        if let Some(ds) = m.distill.as_ref().filter(|d| d.init_from_teacher) {
            crate::stages::text::init_from_teacher(&model, &ds.teacher, &m.name, store, None)?;
        }
        Ok(Box::new(model))
    };
    let model = fresh()?;
    let mut auto_choice = None;
    let mut augmented: Option<crate::data::Dataset> = None;
    let objective = match &m.distill {
        None => Objective::supervised(),
        Some(ds) if ds.loss.is_embedding() => {
            let e = store
                .known(&ds.teacher)
                .and_then(|k| k.embeddings.as_ref())
                .ok_or_else(|| {
                    Error::Input(format!("teacher '{}' has no embeddings", ds.teacher))
                })?;
            store.progress.say(&format!(
                "{}: embedding distillation from {} ({} loss)",
                m.name,
                ds.teacher,
                ds.loss.describe()
            ));
            Objective::embedding(e.train.clone(), e.val.clone(), ds.loss)
        }
        Some(ds) => {
            distill_objective(m, ds, store, &fresh, tree, &mut augmented, &mut auto_choice)?
        }
    };
    store.progress.say(&format!(
        "{}: {}",
        m.name,
        if tree {
            format!("fitting {}", model.spec().describe())
        } else {
            format!(
                "training {} for up to {} epochs",
                model.spec().describe(),
                m.train.epochs
            )
        }
    ));
    if let Some(choice) = auto_choice.filter(|c| c.alpha > 0.0 || c.full_runs.is_some()) {
        return keep_better_than_labels(m, store, model, objective, choice, &fresh);
    }
    // The training split, or the split with synthetic samples added.
    let train = augmented.as_ref().unwrap_or(&store.splits.train);
    store.fit_and_save(
        train,
        &m.name,
        m.role().as_str(),
        model.as_ref(),
        &m.train,
        objective,
        Vec::new(),
        None,
    )?;
    Ok(())
}

/// The objective of a student distilled from `ds.teacher` (not an embedding teacher): its
/// outputs computed once, on fixed views, or on every batch; synthetic and transfer samples added
/// to the training split (`augmented`); α and T fixed or chosen on validation (`auto_choice`).
fn distill_objective<'s>(
    m: &ModelConfig,
    ds: &DistillConfig,
    store: &'s RunStore,
    fresh: &dyn Fn() -> Result<Box<dyn Learner>>,
    tree: bool,
    augmented: &mut Option<crate::data::Dataset>,
    auto_choice: &mut Option<crate::train::AutoChoice>,
) -> Result<Objective<'s>> {
    let splits = &store.splits;
    let missing = || {
        Error::Input(format!(
            "model.{}.distill.teacher: '{}' is not available",
            m.name, ds.teacher
        ))
    };
    // A distillery model teaches through its own fast predict (and can give hints);
    // any other teacher through the Teacher trait.
    let model_teacher = store.get(&ds.teacher).ok().and_then(|f| f.float().ok());
    if model_teacher.is_none()
        && store.known(&ds.teacher).is_none()
        && store.teacher(&ds.teacher).is_err()
    {
        return Err(missing());
    }
    // Outputs known for the data set's own samples only (precomputed, a BERT teacher's
    // splits); a mix whose members all run on features runs on any input.
    let known = store.known(&ds.teacher).is_some() && store.teacher(&ds.teacher).is_err();
    if known && m.train.augments() {
        let field = if m.train.jitter > 0 {
            "jitter"
        } else {
            "augment"
        };
        return Err(Error::Input(format!(
            "model.{}.train.{field}: teacher '{}' has outputs for the samples as they are, not for shifted or augmented ones; remove {field}",
            m.name, ds.teacher
        )));
    }
    // Consistent teaching: with augmentation the teacher runs on every batch, on the
    // very view the student sees; otherwise its outputs are computed once.
    // With fixed views (`train.views`) it runs once per view, after the transfer and
    // synthetic samples have joined the training set (below).
    let fixed = m.train.fixed_views() > 0 && !known;
    let mut cached = if known || !m.train.augments() {
        if !known {
            store.progress.say(&format!(
                "{}: computing {}'s soft targets once for the whole training set",
                m.name, ds.teacher
            ));
        }
        Some(store.teacher_outputs(&ds.teacher, "train")?)
    } else {
        if !fixed {
            teacher_cost(m, &ds.teacher, store)?;
        }
        None
    };
    if let Some(sc) = &ds.synthetic {
        if known {
            return Err(Error::Input(format!(
                "model.{}.distill.synthetic: teacher '{}' has outputs for the data set's own samples only; synthetic samples need a teacher that runs on features (a [[model]] or an ONNX file)",
                m.name, ds.teacher
            )));
        }
        let teacher = store.teacher(&ds.teacher).map_err(|_| missing())?;
        let (aug, outputs) = with_synthetic(m, sc, teacher, store)?;
        if let Some(c) = cached.as_mut() {
            let mut all = c.to_vec();
            all.extend(outputs);
            *c = all.into();
        }
        *augmented = Some(aug);
    }
    if let Some(tr) = &ds.transfer {
        if known {
            return Err(Error::Input(format!(
                "model.{}.distill.transfer: teacher '{}' has outputs for the data set's own samples only; a transfer set needs a teacher that runs on features (a [[model]] or an ONNX file)",
                m.name, ds.teacher
            )));
        }
        let teacher = store.teacher(&ds.teacher).map_err(|_| missing())?;
        let (aug, outputs) = with_transfer(m, tr, teacher, store)?;
        if let Some(c) = cached.as_mut() {
            let mut all = c.to_vec();
            all.extend(outputs);
            *c = all.into();
        }
        *augmented = Some(aug);
    }
    let views = if fixed {
        let teacher = store.teacher(&ds.teacher).map_err(|_| missing())?;
        let data = augmented.as_ref().unwrap_or(&store.splits.train);
        Some(view_outputs(m, &ds.teacher, teacher, data, store)?)
    } else {
        None
    };
    // The teacher on the validation split, for the agreement curves (classifiers).
    let teacher_val = if splits.val.outputs() > 1
        && !splits.val.is_empty()
        && !ds.loss.is_embedding()
        && matches!(splits.val.targets, crate::data::Targets::Classes { .. })
    {
        store.teacher_outputs(&ds.teacher, "val").ok()
    } else {
        None
    };
    let make = |alpha: f32, temperature: f32| -> Result<Objective> {
        let signal = match (&cached, &views) {
            (Some(rows), _) => TeacherSignal::Cached(rows.clone()),
            (None, Some((rows, seed))) => TeacherSignal::Views {
                rows: rows.clone(),
                seed: *seed,
            },
            (None, None) => TeacherSignal::Live(store.teacher(&ds.teacher).map_err(|_| missing())?),
        };
        let mut obj = Objective::distill(signal, ds.loss, temperature, alpha);
        obj.teacher_val = teacher_val.clone();
        obj.anneal = ds.anneal;
        if let Some(h) = &ds.hint {
            obj.hint = Some(HintTerm {
                teacher: model_teacher.ok_or_else(missing)?,
                teacher_layer: h.teacher_layer,
                student_layer: h.student_layer,
                weight: h.weight,
            });
        }
        Ok(obj)
    };
    let (alpha, temperature) = match (ds.alpha.fixed(), ds.temperature.fixed()) {
        (Some(a), Some(t)) => (a, t),
        _ => {
            let teacher_val = if splits.val.outputs() > 1 && !splits.val.is_empty() {
                let out = store.teacher_outputs(&ds.teacher, "val")?;
                crate::eval::score_outputs(&out, &splits.val, None).accuracy
            } else {
                None
            };
            let c = crate::stages::tune::choose(
                store,
                &m.name,
                ds.alpha,
                ds.temperature,
                &m.train,
                &fresh,
                tree,
                &make,
                teacher_val,
            )?;
            let at = c.winner();
            *auto_choice = Some(c);
            at
        }
    };
    make(alpha, temperature)
}

/// The training split with `sc.samples` MUNGE samples added, labelled by `teacher` (its argmax,
/// or its value for regression), and the teacher's outputs on the added samples.
fn with_synthetic(
    m: &ModelConfig,
    sc: &crate::data::munge::MungeConfig,
    teacher: &dyn crate::teachers::Teacher,
    store: &RunStore,
) -> Result<(crate::data::Dataset, Vec<f32>)> {
    use crate::data::munge;
    let train = &store.splits.train;
    let (n, d, k) = (train.len(), train.dim(), train.outputs());
    munge::check_fits_memory(
        sc.samples,
        n,
        d,
        k,
        &format!("model.{}.distill.synthetic.samples", m.name),
    )?;
    let categorical = munge::categorical_columns(&train.x, n, d);
    let mut rng = Rng::derive(store.seed, &format!("munge/{}", m.name));
    let sx = munge::munge(&train.x, n, d, sc, &categorical, &mut rng);
    let outputs = crate::eval::predict_all(teacher, &sx, d, 512)?;
    store.progress.say(&format!(
        "{}: {} synthetic samples (MUNGE, swap {}, spread {}; {} of {d} columns categorical), labelled by the teacher",
        m.name,
        sc.samples,
        sc.swap,
        sc.spread,
        categorical.iter().filter(|&&c| c).count()
    ));
    Ok((with_teacher_labelled(train, sx, &outputs), outputs))
}

/// The training split with the samples `sx` appended, labelled by the teacher's `outputs`
/// (classes: its arg-max; regression: its values) — synthetic and transfer samples alike.
fn with_teacher_labelled(
    train: &crate::data::Dataset,
    sx: Vec<f32>,
    outputs: &[f32],
) -> crate::data::Dataset {
    use crate::data::{Dataset, Targets};
    let k = train.outputs();
    let targets = match &train.targets {
        Targets::Classes { labels, names } => {
            let mut l = labels.clone();
            l.extend(
                outputs
                    .chunks_exact(k)
                    .map(|row| crate::eval::argmax(row) as u32),
            );
            Targets::Classes {
                labels: l,
                names: names.clone(),
            }
        }
        Targets::Values(v) => {
            let mut v = v.clone();
            v.extend_from_slice(outputs);
            Targets::Values(v)
        }
    };
    let mut x = train.x.to_vec();
    x.extend(sx);
    Dataset::new(x, train.shape.clone(), targets)
}

/// The teacher's outputs on `views` fixed augmented views of every sample of `data` (the
/// training split, with any transfer or synthetic samples), one cache file per view keyed by
/// the teacher (its name and its outputs on the first samples), the data, the augmentation, the
/// seed and the view: a resumed or repeated run reads them, a changed teacher, data set or
/// augmentation computes them anew. Returns the files and the views' seed.
fn view_outputs(
    m: &ModelConfig,
    name: &str,
    teacher: &dyn crate::teachers::Teacher,
    data: &crate::data::Dataset,
    store: &RunStore,
) -> Result<(Vec<crate::teachers::Rows>, u64)> {
    use crate::teachers::cache;
    let (n, d, views) = (data.len(), data.dim(), m.train.fixed_views());
    let seed = Rng::derive(store.seed, "views").next_u64();
    let fill = store.splits.normalizer.zero_value();
    if n == 0 {
        return Ok((vec![Vec::new().into(); views], seed));
    }
    let probe_n = n.min(16);
    let probe = teacher.predict_rows(&data.x[..probe_n * d], probe_n)?;
    let cols = probe.len() / probe_n;
    let who = format!(
        "{name} {}",
        probe
            .iter()
            .map(|v| format!("{:08x}", v.to_bits()))
            .collect::<String>()
    );
    let data_key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(format!("{:?}|", data.shape));
        crate::data::hash_floats(&mut h, &data.x);
        format!("{:x}", h.finalize())
    };
    let how = serde_json::to_string(&m.train.augment).map_err(|e| Error::Other(e.to_string()))?;
    let b = m.train.batch_size.clamp(1, 512);
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    fixed_views(
        data,
        &m.train,
        seed,
        0,
        &(0..b.min(n)).collect::<Vec<_>>(),
        fill,
        &mut buf,
    )?;
    teacher.predict_rows(&buf, b.min(n))?;
    let per_row = t0.elapsed().as_secs_f64() / b.min(n) as f64;
    store.progress.say(&format!(
        "{}: the teacher runs once on each of {views} fixed augmented views of the {n} training samples (train.views), into the run's cache: about {:.0} s if none is cached yet",
        m.name,
        per_row * (n * views) as f64
    ));
    let mut all = Vec::with_capacity(views);
    for v in 0..views {
        let key = cache::key(
            &who,
            &format!(
                "view {v} seed {seed} shift {} fill {fill} augment {how} data {data_key}",
                m.train.image_shift()
            ),
            std::iter::empty(),
        );
        let (rows, _) = cache::rows(
            &store.cache_dir(),
            &key,
            n,
            cols,
            (b * 8).max(256),
            &format!("{} view {}/{views}", m.name, v + 1),
            store.progress,
            |r| {
                let idx: Vec<usize> = r.collect();
                let mut x = Vec::new();
                fixed_views(data, &m.train, seed, v, &idx, fill, &mut x)?;
                teacher.predict_rows(&x, idx.len())
            },
        )?;
        all.push(rows);
    }
    Ok((all, seed))
}

/// Says, before training, what running the teacher on every batch costs: one batch timed
/// (after a first call that builds its plan) times the steps of the schedule on the training
/// split (transfer or synthetic samples add to it).
fn teacher_cost(m: &ModelConfig, teacher: &str, store: &RunStore) -> Result<()> {
    let t = store.teacher(teacher)?;
    let train = &store.splits.train;
    let (n, d) = (train.len(), train.dim());
    let b = m.train.batch_size.min(n);
    if b == 0 {
        return Ok(());
    }
    let x = &train.x[..b * d];
    t.predict_rows(x, b)?;
    let t0 = std::time::Instant::now();
    t.predict_rows(x, b)?;
    let per = t0.elapsed().as_secs_f64();
    let total = per * (m.train.epochs * n.div_ceil(b)) as f64;
    let flops = t
        .flops_per_sample()
        .map(|f| format!(" ({} per sample, {} per step)", flop(f), flop(f * b as f64)))
        .unwrap_or_default();
    store.progress.say(&format!(
        "{}: the teacher runs on every augmented batch (consistent teaching): {:.2} ms per batch of {b}{flops}, about {} of teacher time over {} epochs",
        m.name,
        1e3 * per,
        if total < 120.0 {
            format!("{total:.0} s")
        } else {
            format!("{:.1} min", total / 60.0)
        },
        m.train.epochs
    ));
    Ok(())
}

/// The training split with a transfer set's samples appended: read with the training file's
/// columns, normalised as the training split was, targets the teacher's outputs (classes: its
/// arg-max for the label term). Returns the set and the teacher's outputs on the new samples.
fn with_transfer(
    m: &ModelConfig,
    tr: &TransferSet,
    teacher: &dyn crate::teachers::Teacher,
    store: &RunStore,
) -> Result<(crate::data::Dataset, Vec<f32>)> {
    let train = &store.splits.train;
    let d = train.dim();
    let field = format!("model.{}.distill.transfer.path", m.name);
    // The label column: the one the training data's features do not name.
    let bytes = crate::io::read_file(&tr.path)?;
    let name = tr.path.display().to_string();
    let text = crate::data::csv::maybe_gunzip(&bytes, &name, 4 << 30)?;
    let header: Vec<&str> = std::str::from_utf8(text.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .unwrap_or("")
        .trim()
        .split(',')
        .map(str::trim)
        .collect();
    let others: Vec<&str> = header
        .iter()
        .copied()
        .filter(|h| !train.features.iter().any(|f| f == h))
        .collect();
    let [label] = others.as_slice() else {
        return Err(Error::Input(format!(
            "{field}: '{name}' must have the training file's columns (its feature columns and its label column, whose values are ignored); {} of its {} columns are not features",
            others.len(),
            header.len()
        )));
    };
    let label = label.to_string();
    if !train.extra.is_empty() {
        return Err(Error::Input(format!(
            "model.{}.distill.transfer: a transfer set beside further target columns (data.targets) is not available",
            m.name
        )));
    }
    let opts = crate::data::csv::CsvOptions {
        label,
        // The label column is read as names and ignored.
        task: crate::data::Task::Classification,
        image_shape: (train.shape.len() == 3).then(|| train.shape.clone()),
        extra: Vec::new(),
    };
    // Labels are ignored: `?`, an empty cell, or one of the training data's classes.
    let mut known: Vec<String> = train
        .class_names()
        .map(<[String]>::to_vec)
        .unwrap_or_default();
    known.extend(["?".to_string(), String::new()]);
    let set = crate::data::csv::parse_csv_bytes(&text, &name, &opts, Some(&known))
        .map_err(|e| Error::Input(format!("{field}: {e}")))?;
    if set.dim() != d {
        return Err(Error::Input(format!(
            "{field}: '{}' has {} feature columns, the training data {d}",
            tr.path.display(),
            set.dim()
        )));
    }
    if !train.features.is_empty() && set.features != train.features {
        return Err(Error::Input(format!(
            "{field}: '{}' has other feature columns than the training data (expected {}…)",
            tr.path.display(),
            train
                .features
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let n = tr.max_samples.unwrap_or(usize::MAX).min(set.len());
    let mut sx = set.x.to_vec();
    sx.truncate(n * d);
    store.splits.normalizer.apply(&mut sx, d);
    let outputs = crate::eval::predict_all(teacher, &sx, d, 512)?;
    store.progress.say(&format!(
        "{}: {n} transfer samples from {}, labelled by the teacher",
        m.name,
        tr.path.display()
    ));
    Ok((with_teacher_labelled(train, sx, &outputs), outputs))
}

/// "auto" chose to distil: trains the winner in full and compares it with the same student on
/// labels alone — a labels-only student of the same size finished earlier in the run, else one
/// trained now in full (each run with its own checkpoint, so a killed run resumes either) —
/// keeps the one that validates better, and records both in the choice. The kept model is saved only when both
/// are done, so a resumed run never skips the comparison.
fn keep_better_than_labels(
    m: &ModelConfig,
    store: &RunStore,
    model: Box<dyn Learner>,
    objective: Objective,
    mut choice: crate::stages::tune::AutoChoice,
    fresh: &dyn Fn() -> Result<Box<dyn Learner>>,
) -> Result<()> {
    use crate::stages::tune::trial_of;
    let ckpt = store.checkpoint_path(&m.name, "ckpt");
    let labels_ckpt = store.checkpoint_path(&m.name, "labels.ckpt");
    let distilled = store.fit(
        &store.splits.train,
        &m.name,
        &ckpt,
        model.as_ref(),
        &m.train,
        objective,
        Vec::new(),
    )?;
    // A labels-only student of the same size finished earlier in this run is the comparison:
    // the guard then holds against that very model, and no extra run is needed. Otherwise the
    // same student is trained on labels alone.
    let sibling = store.records().iter().find(|r| {
        r.name != m.name
            && r.role == "student"
            && r.distill.is_none()
            && r.training.is_some()
            && store
                .get(&r.name)
                .map(|f| f.model.meta.spec == *model.spec())
                .unwrap_or(false)
    });
    // The labels-only model and its record; a sibling's weights are read only if it is kept.
    let (labels_model, labels, labels_from) = match sibling {
        Some(r) => {
            store.progress.say(&format!(
                "{}: comparing with '{}', the same student on labels alone",
                m.name, r.name
            ));
            let rec = r
                .training
                .clone()
                .ok_or_else(|| Error::Other(format!("{}: no training record", r.name)))?;
            (None, rec, Some(r.name.clone()))
        }
        None => {
            let labels_model = fresh()?;
            let labels_name = format!("{} (labels only)", m.name);
            store.progress.say(&format!(
                "{}: the same student on labels alone, in full, to keep the better on validation",
                m.name
            ));
            let labels = store.fit(
                &store.splits.train,
                &labels_name,
                &labels_ckpt,
                labels_model.as_ref(),
                &m.train,
                Objective::supervised(),
                Vec::new(),
            )?;
            (Some(labels_model), labels, None)
        }
    };
    let (wa, wt) = choice.winner();
    let d = trial_of(wa, wt, &distilled);
    let l = trial_of(0.0, wt, &labels);
    let kept_labels = l.key() > d.key();
    store.progress.say(&format!(
        "{}: validation: distilled {} vs labels alone {}: keeping {}",
        m.name,
        d.describe(),
        l.describe(),
        if kept_labels {
            "labels alone (α = 0)"
        } else {
            "the distilled one"
        }
    ));
    choice.full_runs = Some(crate::stages::tune::FullRuns {
        distilled: d,
        labels: l,
        kept_labels,
        labels_model: labels_from.clone(),
    });
    choice.alpha = if kept_labels { 0.0 } else { wa };
    choice.temperature = wt;
    crate::stages::tune::save_choice(store, &m.name, &choice)?;
    match (kept_labels, labels_model, &labels_from) {
        (false, _, _) => {
            store.save_fitted(&m.name, m.role().as_str(), model.as_ref(), &distilled, None)?;
        }
        (true, Some(lm), _) => {
            store.save_fitted(&m.name, m.role().as_str(), lm.as_ref(), &labels, None)?;
        }
        (true, None, Some(name)) => {
            // The sibling's own file, under this model's name and with this run's metadata.
            let mut sib = crate::compress::load_any(&store.get(name)?.file)?;
            let training =
                serde_json::to_value(&labels).map_err(|e| Error::Other(e.to_string()))?;
            sib.meta = store.meta(&m.name, m.role().as_str(), &sib.meta.spec, training);
            sib.save(&store.model_path(&m.name))?;
        }
        (true, None, None) => unreachable!("a labels-only model is trained or named"),
    }
    let _ = std::fs::remove_file(&ckpt);
    let _ = std::fs::remove_file(&labels_ckpt);
    Ok(())
}

/// A number of floating-point operations in words: `8.4 kFLOP`, `2.1 MFLOP`, `1.30 GFLOP`.
fn flop(f: f64) -> String {
    match f {
        f if f >= 1e9 => format!("{:.2} GFLOP", f / 1e9),
        f if f >= 1e6 => format!("{:.1} MFLOP", f / 1e6),
        f => format!("{:.1} kFLOP", f / 1e3),
    }
}
