//! The experiment file: one TOML file describes a whole run. It is parsed strictly (unknown
//! keys and wrong types are errors that name the field and line), then validated completely
//! ([`ExperimentConfig::validate`]) before any work starts.
//!
//! ```toml
//! name = "digits"
//! seed = 42
//! [data]
//! format = "digits"            # or "idx", "csv"
//! [[model]]
//! name = "teacher"
//! arch = { kind = "mlp", hidden = [256, 256], dropout = 0.2 }
//! train = { epochs = 20, lr = 1e-3 }
//! [[model]]
//! name = "student"
//! arch = { kind = "mlp", hidden = [32] }
//! train = { epochs = 30 }
//! distill = { teacher = "teacher", temperature = 4.0, alpha = 0.9 }
//! ```

pub use crate::data::{DataConfig, DataFormat};
use crate::error::{bad_field, Error, Result};
pub use crate::eval::EvalConfig;
pub use crate::models::Arch;
use crate::stages::export::ExportStage;
pub use crate::stages::export::{ExportConfig, ExportFormat};
use crate::stages::group::GroupStage;
use crate::stages::model::ModelStage;
pub use crate::stages::model::{BornAgainConfig, DistillConfig, HintConfig, ModelConfig, Role};
use crate::stages::prune::PruneStage;
pub use crate::stages::prune::{PruneConfig, PruneMethod, RecoverConfig};
pub use crate::stages::quantize::QuantizeConfig;
use crate::stages::quantize::QuantizeStage;
pub use crate::stages::teacher::TeacherConfig;
use crate::stages::teacher::TeacherStage;
use crate::stages::Stage;
pub use crate::submodels::{
    FinalStudentConfig, PeerMode, SubmodelInit, SubmodelsConfig, TransferConfig,
};
pub use crate::train::{OptimizerKind, ScheduleKind, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Experiment name (used in reports).
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed for every random draw (splits, initialisation, shuffles, dropout, jitter).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Data source and splits.
    pub data: DataConfig,
    /// Evaluation settings.
    #[serde(default)]
    pub eval: EvalConfig,
    /// The models, trained in file order; a student names its teacher.
    #[serde(rename = "model", default)]
    pub models: Vec<ModelConfig>,
    /// Groups of K sub-models with knowledge transfer between them (run after the models).
    #[serde(rename = "submodels", default, skip_serializing_if = "Vec::is_empty")]
    pub submodels: Vec<SubmodelsConfig>,
    /// Pruning stages, run in file order after the models and sub-model groups.
    #[serde(rename = "prune", default, skip_serializing_if = "Vec::is_empty")]
    pub prune: Vec<PruneConfig>,
    /// Quantization stages, run in file order after the pruning stages.
    #[serde(rename = "quantize", default, skip_serializing_if = "Vec::is_empty")]
    pub quantize: Vec<QuantizeConfig>,
    /// Teachers distillery did not train (ONNX files), loaded before the models.
    #[serde(rename = "teacher", default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<TeacherConfig>,
    /// Exports of finished models (ONNX checked in tract, or safetensors), run last.
    #[serde(rename = "export", default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<ExportConfig>,
}

fn default_name() -> String {
    "experiment".into()
}
fn default_seed() -> u64 {
    42
}

/// Parses TOML text into a config. Errors name the file, the line and the field.
pub fn parse_toml(text: &str, file: &str) -> Result<ExperimentConfig> {
    toml::from_str::<ExperimentConfig>(text)
        .map_err(|e| Error::Input(format_toml_error(file, text, &e)))
}

fn format_toml_error(file: &str, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{file}:{line}: {msg} (in `{src}`)")
        }
        None => format!("{file}: {msg}"),
    }
}

/// Reads a config file, applies `--set key=value` overrides, and parses it.
pub fn load(path: &Path, overrides: &[String]) -> Result<ExperimentConfig> {
    let bytes = crate::io::read_file(path)?;
    let file = path.display().to_string();
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Input(format!("{file}: not valid UTF-8 text")))?;
    load_str(&text, &file, overrides)
}

/// Like [`load`], from a string.
pub fn load_str(text: &str, file: &str, overrides: &[String]) -> Result<ExperimentConfig> {
    if overrides.is_empty() {
        return parse_toml(text, file);
    }
    let mut value: toml::Table =
        toml::from_str(text).map_err(|e| Error::Input(format_toml_error(file, text, &e)))?;
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    let merged = toml::to_string(&value).map_err(|e| Error::Other(e.to_string()))?;
    parse_toml(&merged, &format!("{file} (with --set overrides)"))
}

/// Applies one `a.b.c=value` override. A path segment that meets an array of tables selects
/// the element whose `name` equals the segment (or a numeric index).
pub fn apply_override(root: &mut toml::Table, spec: &str) -> Result<()> {
    let mut v = toml::Value::Table(std::mem::take(root));
    let r = apply_override_value(&mut v, spec);
    if let toml::Value::Table(t) = v {
        *root = t;
    }
    r
}

fn apply_override_value(root: &mut toml::Value, spec: &str) -> Result<()> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        Error::Input(format!(
            "--set {spec}: expected KEY=VALUE, e.g. model.teacher.train.epochs=5"
        ))
    })?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if last {
                    t.insert(part.to_string(), value);
                    return Ok(());
                }
                t.entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => {
                let idx = a
                    .iter()
                    .position(|el| el.get("name").and_then(|n| n.as_str()) == Some(part))
                    .or_else(|| part.parse::<usize>().ok().filter(|&k| k < a.len()))
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "--set {spec}: no entry named '{part}' in {}",
                            parts[..i].join(".")
                        ))
                    })?;
                if last {
                    a[idx] = value;
                    return Ok(());
                }
                &mut a[idx]
            }
            _ => {
                return Err(Error::Input(format!(
                    "--set {spec}: '{}' is not a table",
                    parts[..i].join(".")
                )))
            }
        };
    }
    Ok(())
}

/// An experiment file that passed every check, with its schemes (born-again generations,
/// teacher-assistant chains) written out as plain `[[model]]` entries. Only
/// [`ExperimentConfig::validate`] makes one, and running an experiment requires one, so the
/// checks can be neither skipped nor repeated. Dereferences to the expanded experiment.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    run: ExperimentConfig,
    resolved: String,
}

impl CheckedConfig {
    /// The experiment as stages, in order: the `[[model]]`s (those selected by `only`, all
    /// when it is `None`, and the teachers they need), the `[[submodels]]` groups (when `groups`),
    /// then `[[prune]]` and `[[quantize]]`.
    pub fn stages(&self, only: Option<&[String]>, groups: bool) -> Vec<Box<dyn Stage>> {
        let cfg = &self.run;
        let needed: Vec<&str> = cfg
            .models
            .iter()
            .filter(|m| Self::selects(only, m))
            .filter_map(|m| m.distill.as_ref().map(|d| d.teacher.as_str()))
            .collect();
        // A mix's members are teachers too.
        let mut needed = needed;
        for t in cfg.teachers.iter().rev() {
            if needed.contains(&t.name.as_str()) {
                needed.extend(t.mix.iter().map(|m| m.teacher.as_str()));
            }
        }
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        // Mixes run as soon as all their members are available: after the plain teachers, or
        // right after the last [[model]] among their members.
        let mut available: Vec<&str> = Vec::new();
        let mut pending: Vec<&TeacherConfig> = Vec::new();
        let flush = |available: &mut Vec<&'_ str>,
                     pending: &mut Vec<&TeacherConfig>,
                     stages: &mut Vec<Box<dyn Stage>>| {
            while let Some(i) = pending.iter().position(|t| {
                t.mix
                    .iter()
                    .all(|m| available.contains(&m.teacher.as_str()))
            }) {
                let t = pending.remove(i);
                stages.push(Box::new(TeacherStage { cfg: t.clone() }));
            }
        };
        for t in &cfg.teachers {
            if only.is_none() || needed.contains(&t.name.as_str()) {
                if t.mix.is_empty() {
                    stages.push(Box::new(TeacherStage { cfg: t.clone() }));
                } else {
                    pending.push(t);
                }
            }
            available.push(&t.name);
        }
        flush(&mut available, &mut pending, &mut stages);
        for m in &cfg.models {
            let selected = Self::selects(only, m);
            if selected || needed.contains(&m.name.as_str()) {
                stages.push(Box::new(ModelStage {
                    cfg: m.clone(),
                    train: selected,
                    report: selected,
                }));
            }
            available.push(&m.name);
            flush(&mut available, &mut pending, &mut stages);
        }
        if groups {
            for g in &cfg.submodels {
                stages.push(Box::new(GroupStage { cfg: g.clone() }));
            }
        }
        for p in &cfg.prune {
            stages.push(Box::new(PruneStage {
                cfg: p.clone(),
                tasks: cfg.multi_task_source(&p.from).cloned(),
            }));
        }
        for q in &cfg.quantize {
            stages.push(Box::new(QuantizeStage {
                cfg: q.clone(),
                tasks: cfg.multi_task_source(&q.from).cloned(),
            }));
        }
        for e in &cfg.exports {
            stages.push(Box::new(ExportStage { cfg: e.clone() }));
        }
        stages
    }

    /// Whether `only` selects the model `m` (every model when `only` is `None`). Models
    /// generated from a selected entry (assistants, born-again generations) are selected with
    /// it.
    pub fn selects(only: Option<&[String]>, m: &ModelConfig) -> bool {
        only.map(|o| {
            o.iter().any(|n| {
                m.name == *n
                    || m.name.starts_with(&format!("{n}-ta"))
                    || m.name.starts_with(&format!("{n}-gen"))
            })
        })
        .unwrap_or(true)
    }

    /// The config as the user wrote it (defaults filled in), as TOML: what is saved with every
    /// run and compared on resume.
    pub fn resolved_toml(&self) -> &str {
        &self.resolved
    }
}

impl std::ops::Deref for CheckedConfig {
    type Target = ExperimentConfig;

    fn deref(&self) -> &ExperimentConfig {
        &self.run
    }
}

impl ExperimentConfig {
    /// Whether teacher or model `name` runs on any input (a [[model]], an ONNX teacher, or a
    /// mix of such), rather than giving outputs for the data set's own samples only.
    /// The `[[model]]` table of the multi-task model that `name` is, or that the pruning and
    /// quantization stages named `name` start from.
    fn multi_task_source(&self, name: &str) -> Option<&ModelConfig> {
        if let Some(m) = self.models.iter().find(|m| m.name == name) {
            return (!m.tasks.is_empty()).then_some(m);
        }
        let from = self
            .prune
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.from)
            .or_else(|| {
                self.quantize
                    .iter()
                    .find(|q| q.name == name)
                    .map(|q| &q.from)
            })?;
        // Stages name earlier outputs only (checked), so the chain ends.
        (from != name)
            .then(|| self.multi_task_source(from))
            .flatten()
    }

    fn runs_on_features(&self, name: &str) -> bool {
        if self.models.iter().any(|m| m.name == name) {
            return true;
        }
        match self.teachers.iter().find(|t| t.name == name) {
            Some(t) if t.onnx.is_some() => true,
            // A BERT teacher with a head runs on the run's token ids when they are its
            // tokenizer's (checked again when it loads: the same tokenizer.json).
            Some(t) if t.bert.is_some() => {
                (t.head.is_some() || t.finetune.is_some())
                    && matches!(
                        self.data.features,
                        Some(crate::data::text::FeaturesConfig::Tokenizer { .. })
                    )
            }
            // Members come earlier in the file, so the recursion ends.
            Some(t) if !t.mix.is_empty() => t
                .mix
                .iter()
                .all(|m| m.teacher != name && self.runs_on_features(&m.teacher)),
            _ => false,
        }
    }

    /// Checks everything that can be checked without reading the data — value ranges, names,
    /// references between models, files that must exist; every error names its field — then
    /// writes the schemes out as plain models and checks the result.
    pub fn validate(&self) -> Result<CheckedConfig> {
        self.check()?;
        let mut run = self.clone();
        run.models = crate::methods::expand(&self.models);
        run.check()?;
        Ok(CheckedConfig {
            resolved: self.to_toml()?,
            run,
        })
    }

    fn check(&self) -> Result<()> {
        let d = &self.data;
        d.check()?;
        if d.labels_per_class.is_some() {
            for m in &self.models {
                if let Some(crate::losses::SoftLoss::Dkd { .. }) =
                    m.distill.as_ref().map(|x| x.loss)
                {
                    bad_field(
                        &format!("model.{}.distill.loss", m.name),
                        "decoupled KD reads every sample's label, and data.labels_per_class leaves most training samples without one: use kd or dist",
                    )?;
                }
            }
        }
        if !d.labels && d.format == DataFormat::Text {
            if d.label.is_some() {
                bad_field("data.label", "not used with labels = false")?;
            }
            // (A multi-task model's tasks check that none learns labels.)
            for m in self.models.iter().filter(|m| m.tasks.is_empty()) {
                if !m
                    .distill
                    .as_ref()
                    .map(|x| x.loss.is_embedding())
                    .unwrap_or(false)
                {
                    bad_field(
                        &format!("model.{}.distill", m.name),
                        "the texts have no labels (data.labels = false): distil a bert teacher's embeddings, with loss = { kind = \"cosine\" } or { kind = \"mse\" }",
                    )?;
                }
            }
            for t in &self.teachers {
                if t.head.is_some() || t.finetune.is_some() || t.bert.is_none() {
                    bad_field(
                        &format!("teacher.{}", t.name),
                        "the texts have no labels (data.labels = false): only a bert teacher without a head",
                    )?;
                }
            }
            if !self.submodels.is_empty() || !self.prune.is_empty() || !self.quantize.is_empty() {
                bad_field(
                    "data.labels",
                    "unlabelled texts train embedding students only ([[model]] with an embedding loss)",
                )?;
            }
        }
        if self.eval.latency_runs == 0 {
            bad_field("eval.latency_runs", "must be at least 1")?;
        }
        if self.models.is_empty() && self.submodels.is_empty() {
            bad_field(
                "model",
                "the experiment declares no [[model]] and no [[submodels]]",
            )?;
        }
        let text = d.format == DataFormat::Text;
        let images = !text
            && (!matches!(d.format, DataFormat::Csv | DataFormat::Arrays)
                || d.image_shape.is_some());
        let mut seen: Vec<&str> = Vec::new();
        for (i, t) in self.teachers.iter().enumerate() {
            let p = format!("teacher[{i}]");
            crate::io::check_name(&format!("{p}.name"), &t.name)?;
            if seen.contains(&t.name.as_str()) || self.models.iter().any(|m| m.name == t.name) {
                bad_field(&format!("{p}.name"), &format!("'{}' is used twice", t.name))?;
            }
            let mut members: Vec<&str> = seen.clone();
            members.extend(self.models.iter().map(|m| m.name.as_str()));
            t.check(&p, text, d.format == DataFormat::Arrays, &members)?;
            if t.finetune.is_some() && self.data.task == crate::data::Task::Regression {
                bad_field(
                    &format!("{p}.finetune"),
                    "fine-tuning trains a classification head on the labels; data.task is regression",
                )?;
            }
            seen.push(&t.name);
        }
        for m in &self.models {
            m.check(&seen, self.data.task, images, text, d)?;
            if let Some(from) = &m.train.augment.replace_from {
                let field = format!("model.{}.train.augment.replace_from", m.name);
                if !seen.contains(&from.as_str()) {
                    bad_field(
                        &field,
                        &format!("'{from}' is not an earlier [[model]] or [[teacher]]"),
                    )?;
                }
                let table = self.models.iter().any(|x| {
                    x.name == *from && matches!(x.arch, Some(crate::models::Arch::EmbeddingBag(_)))
                }) || self
                    .teachers
                    .iter()
                    .any(|t| t.name == *from && t.bert.is_some());
                if !table {
                    bad_field(
                        &field,
                        &format!("'{from}' has no token table; name an embedding-bag [[model]] or a bert [[teacher]]"),
                    )?;
                }
            }
            if let Some(ds) = &m.distill {
                if ds.hint.is_some() && self.teachers.iter().any(|t| t.name == ds.teacher) {
                    bad_field(
                        &format!("model.{}.distill.hint", m.name),
                        &format!(
                            "'{}' is an ONNX teacher, whose hidden layers distillery cannot read; a hint needs a distillery [[model]] teacher",
                            ds.teacher
                        ),
                    )?;
                }
                // Synthetic and transfer samples are new inputs: their teacher must run on
                // features, which precomputed outputs, mixes of teachers and a BERT teacher's
                // split embeddings do not.
                let precomputed = self
                    .teachers
                    .iter()
                    .find(|t| t.name == ds.teacher && !self.runs_on_features(&t.name));
                if let Some(t) = precomputed {
                    for (key, on) in [
                        ("synthetic", ds.synthetic.is_some()),
                        ("transfer", ds.transfer.is_some()),
                    ] {
                        if on {
                            bad_field(
                                &format!("model.{}.distill.{key}", m.name),
                                &format!(
                                    "teacher '{}' gives outputs for the data set's own samples only ({}); {key} samples need a teacher that runs on features (a [[model]] or an ONNX file)",
                                    t.name,
                                    if t.outputs.is_some() { "precomputed outputs" } else if t.bert.is_some() { "a BERT teacher's splits" } else { "a mix with such a member" }
                                ),
                            )?;
                        }
                    }
                }
            }
            seen.push(&m.name);
        }
        for g in &self.submodels {
            self.validate_group(g, &seen, images, text)?;
        }
        // A multi-task model is pruned and quantized with its heads carried over; fine-tuning
        // and quantization-aware training train it on its own tasks again (each head's labels
        // and teacher), so a recovery table names no teacher of its own.
        for (i, p) in self.prune.iter().enumerate() {
            let own = p.recover.as_ref().is_some_and(|r| r.teacher.is_some());
            if own && self.multi_task_source(&p.from).is_some() {
                bad_field(&format!("prune[{i}].recover.teacher"), &format!("'{}' is a multi-task model: it is fine-tuned on its own tasks (each head's labels and teacher); remove teacher", p.from))?;
            }
        }
        for (i, q) in self.quantize.iter().enumerate() {
            let own = q.qat.as_ref().is_some_and(|r| r.teacher.is_some());
            if own && self.multi_task_source(&q.from).is_some() {
                bad_field(&format!("quantize[{i}].qat.teacher"), &format!("'{}' is a multi-task model: it trains quantization-aware on its own tasks (each head's labels and teacher); remove teacher", q.from))?;
            }
        }
        // Mixed batches do not mix the further target columns.
        if !self.data.targets.is_empty() {
            for m in &self.models {
                let a = &m.train.augment;
                if a.mixup > 0.0 || a.cutmix > 0.0 {
                    bad_field(
                        &format!("model.{}.train.augment", m.name),
                        "mixup and CutMix do not mix the further target columns (data.targets); remove them",
                    )?;
                }
            }
        }
        // A model of several heads teaches no single-task student or group: its outputs are
        // its heads side by side (a head of a multi-task student names it as its teacher and
        // is refused later; a one-head model teaches as any model).
        let heads = |name: &str| {
            self.models
                .iter()
                .any(|m| m.name == name && m.tasks.len() > 1)
        };
        for m in &self.models {
            if let Some(d) = m.distill.as_ref().filter(|d| heads(&d.teacher)) {
                bad_field(
                    &format!("model.{}.distill.teacher", m.name),
                    &format!(
                        "'{}' is a multi-task model; a teacher of one task is needed",
                        d.teacher
                    ),
                )?;
            }
        }
        for g in &self.submodels {
            if let Some(t) = g.teacher.as_ref().filter(|t| heads(t)) {
                bad_field(
                    &format!("submodels.{}.teacher", g.name),
                    &format!("'{t}' is a multi-task model; a teacher of one task is needed"),
                )?;
            }
        }
        self.validate_compression(&seen, images)
    }

    /// The checks of `[[prune]]`, `[[quantize]]` and `[[export]]` that involve other tables
    /// (each table's own fields are its `check`): names unused, `from` an earlier model or
    /// stage, the family of the model at the start of the chain able to take the stage.
    fn validate_compression(&self, models: &[&str], images: bool) -> Result<()> {
        // Models a stage may start from: [[model]]s, final students, sub-models, earlier stages.
        let mut known: Vec<String> = models.iter().map(|s| s.to_string()).collect();
        for g in &self.submodels {
            known.extend((1..=g.k).map(|i| format!("{}-{i}", g.name)));
            if let Some(f) = &g.final_student {
                known.push(f.name.clone());
            }
        }
        let unused = |field: &str, name: &str, known: &[String]| -> Result<()> {
            if known.iter().any(|k| k == name) {
                bad_field(
                    field,
                    &format!("'{name}' is already the name of another model"),
                )?;
            }
            Ok(())
        };
        let check_from = |field: &str, from: &str, known: &[String]| -> Result<()> {
            if !known.iter().any(|k| k == from) {
                bad_field(
                    field,
                    &format!(
                        "'{from}' is not an earlier model or stage (known: {})",
                        known.join(", ")
                    ),
                )?;
            }
            Ok(())
        };
        let check_teacher = |p: &str, r: &RecoverConfig, known: &[String]| -> Result<()> {
            match &r.teacher {
                Some(t) if !known.iter().any(|k| k == t) => bad_field(
                    &format!("{p}.teacher"),
                    &format!(
                        "'{t}' is not an earlier model (known: {})",
                        known.join(", ")
                    ),
                ),
                _ => Ok(()),
            }
        };
        // The [[model]] a chain of stages starts from, for its family.
        let origin_arch = |from: &str| {
            let mut origin = from;
            while let Some(pr) = self.prune.iter().find(|x| x.name == origin) {
                origin = pr.from.as_str();
            }
            self.models
                .iter()
                .find(|m| m.name == origin)
                .and_then(|m| m.arch.as_ref())
        };
        for st in &self.prune {
            let p = format!("prune.{}", st.name);
            st.check(images)?;
            unused("prune.name", &st.name, &known)?;
            check_from(&format!("{p}.from"), &st.from, &known)?;
            if let Some(r) = &st.recover {
                check_teacher(&format!("{p}.recover"), r, &known)?;
            }
            if st.method == PruneMethod::Structured {
                let arch = self
                    .models
                    .iter()
                    .find(|m| m.name == st.from)
                    .and_then(|m| m.arch.as_ref());
                if let Some(a) = arch.filter(|a| !a.family().supports().prune) {
                    bad_field(
                        &format!("{p}.method"),
                        &format!(
                            "structured pruning cuts MLPs and LeNet-style CNNs; '{}' is a {} (use method = \"magnitude\")",
                            st.from,
                            a.kind()
                        ),
                    )?;
                }
            }
            known.push(st.name.clone());
        }
        let floats = known.clone();
        for st in &self.quantize {
            use crate::compress::quant::Precision;
            let p = format!("quantize.{}", st.name);
            st.check(images)?;
            unused("quantize.name", &st.name, &known)?;
            check_from(&format!("{p}.from"), &st.from, &floats)?;
            if let Some(a) = origin_arch(&st.from) {
                let can = a.family().supports();
                if st.precision == Precision::Int8 && !can.int8 && can.weight_formats {
                    bad_field(
                        &format!("{p}.precision"),
                        &format!("\"int8\" (integer inference) supports MLPs; '{}' is a {} — use \"int8-weights\" or \"int4-weights\"", st.from, a.kind()),
                    )?;
                }
                if st.precision != Precision::F32 && !can.weight_formats {
                    bad_field(
                        &format!("{p}.precision"),
                        &format!("'{}' is a {}, which is kept in f32 (quantization supports mlp and cnn)", st.from, a.kind()),
                    )?;
                }
            }
            if let Some(q) = &st.qat {
                check_teacher(&format!("{p}.qat"), q, &floats)?;
            }
            known.push(st.name.clone());
        }
        // An export has no field of its own to check: `from` and the format are references.
        for (i, e) in self.exports.iter().enumerate() {
            check_from(&format!("export[{i}].from"), &e.from, &known)?;
            if self.exports[..i]
                .iter()
                .any(|o| o.from == e.from && o.format == e.format)
            {
                bad_field(
                    &format!("export[{i}]"),
                    &format!("'{}' is already exported in this format", e.from),
                )?;
            }
        }
        Ok(())
    }

    /// The checks of a `[[submodels]]` group that involve other tables (its own fields are
    /// `SubmodelsConfig::check`): names no model or other group uses, a teacher that exists
    /// and, for a split, is a [[model]] whose family can be cut into K.
    fn validate_group(
        &self,
        g: &SubmodelsConfig,
        models: &[&str],
        images: bool,
        text: bool,
    ) -> Result<()> {
        let p = format!("submodels.{}", g.name);
        g.check(images, text)?;
        let clash = models
            .iter()
            .any(|m| *m == g.name || m.starts_with(&format!("{}-", g.name)))
            || self.submodels.iter().filter(|o| o.name == g.name).count() > 1;
        if clash {
            bad_field(
                &format!("{p}.name"),
                "clashes with another model or group name",
            )?;
        }
        // A multi-task group: each task names its teacher; a group-level teacher only names
        // the [[model]] that init = "split" cuts (its soft targets are a task's, not `alpha`'s).
        crate::train::tasks::check(
            &g.multi_task(),
            &[
                (
                    "teacher",
                    g.teacher.is_some() && g.init != SubmodelInit::Split,
                ),
                ("alpha", g.alpha > 0.0),
            ],
            models,
            &self.data,
        )?;
        if !g.tasks.is_empty() {
            use crate::train::tasks::check_trunk;
            for (i, a) in g.archs.iter().enumerate() {
                check_trunk(&format!("{p}.archs[{i}].kind"), a, "a multi-task sub-model")?;
            }
            if let Some(f) = &g.final_student {
                check_trunk(
                    &format!("{p}.final_student.arch.kind"),
                    &f.arch,
                    "the group's multi-task final student",
                )?;
            }
        }
        if !g.tasks.is_empty() && g.phase1.augments() {
            bad_field(
                &format!("{p}.phase1"),
                "a multi-task group's members learn from teacher outputs computed once: remove jitter and augment",
            )?;
        }
        // Any teacher teaches (alpha > 0); only a [[model]] can be cut (init = "split").
        if let Some(t) = &g.teacher {
            if !models.contains(&t.as_str()) {
                bad_field(
                    &format!("{p}.teacher"),
                    &format!(
                        "'{t}' is not the name of a [[model]] or [[teacher]] (known: {})",
                        models.join(", ")
                    ),
                )?;
            }
        }
        if let (SubmodelInit::Split, Some(name)) = (g.init, &g.teacher) {
            let Some(t) = self.models.iter().find(|m| &m.name == name) else {
                return bad_field(
                    &format!("{p}.teacher"),
                    &format!(
                        "init = \"split\" cuts a [[model]] MLP; '{name}' is an outside teacher (use init = \"fresh\")"
                    ),
                );
            };
            if let Some(ta) = &t.arch {
                if !ta.family().supports().split {
                    bad_field(
                        &format!("{p}.init"),
                        &format!(
                            "splitting needs an MLP teacher, not a {}; use init = \"fresh\"",
                            ta.kind()
                        ),
                    )?;
                }
                if let Some(&min) = ta.hidden().iter().min() {
                    if g.k > min {
                        bad_field(&format!("{p}.k"), &format!("cannot split a hidden layer of {min} units of '{}' into {} sub-models", t.name, g.k))?;
                    }
                } else {
                    bad_field(
                        &format!("{p}.init"),
                        &format!("teacher '{}' has no hidden units to split", t.name),
                    )?;
                }
            }
        }
        if let Some(f) = &g.final_student {
            if models.contains(&f.name.as_str()) || f.name.starts_with(&format!("{}-", g.name)) {
                bad_field(
                    &format!("{p}.final_student.name"),
                    &format!("'{}' is not a valid, unused model name", f.name),
                )?;
            }
        }
        Ok(())
    }

    /// The config as TOML (what is saved with every run).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("cannot serialise config: {e}")))
    }

    /// Shrinks the experiment to a quick end-to-end check: at most 2 epochs per model and a
    /// few hundred samples, fast latency timing.
    pub fn make_quick(&mut self) {
        self.data.max_train = Some(self.data.max_train.unwrap_or(usize::MAX).min(300));
        self.data.max_test = Some(self.data.max_test.unwrap_or(usize::MAX).min(200));
        self.eval.latency_runs = self.eval.latency_runs.min(3);
        self.eval.latency_budget_ms = self.eval.latency_budget_ms.min(20);
        for m in &mut self.models {
            m.train.epochs = m.train.epochs.min(2);
            m.train.warmup_epochs = m.train.warmup_epochs.min(m.train.epochs.saturating_sub(1));
            if let Some(a) = m.arch.as_mut() {
                a.make_quick();
            }
            if let Some(sc) = m.distill.as_mut().and_then(|d| d.synthetic.as_mut()) {
                sc.samples = sc.samples.min(300);
            }
        }
        for t in &mut self.teachers {
            if let Some(h) = &mut t.head {
                h.train.epochs = h.train.epochs.min(2);
            }
            if let Some(f) = &mut t.finetune {
                f.epochs = f.epochs.min(2);
            }
        }
        for p in &mut self.prune {
            p.rank_samples = p.rank_samples.min(200);
            if let Some(r) = &mut p.recover {
                r.train.epochs = r.train.epochs.min(2);
            }
            p.ramp_epochs = p.ramp_epochs.map(|e| e.min(2));
        }
        for q in &mut self.quantize {
            q.calibration_samples = q.calibration_samples.min(200);
            if let Some(r) = &mut q.qat {
                r.train.epochs = r.train.epochs.min(1);
            }
        }
        for g in &mut self.submodels {
            g.phase1.epochs = g.phase1.epochs.min(1);
            g.transfer.rounds = g.transfer.rounds.min(2);
            g.transfer.epochs_per_round = 1;
            if let Some(f) = &mut g.final_student {
                f.train.epochs = f.train.epochs.min(1);
            }
        }
    }
}
