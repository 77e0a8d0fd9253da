//! The `[data]` table of an experiment file and the checks of its own fields (the checks
//! that involve other tables, such as unlabelled texts needing embedding students, are the
//! experiment's, in `config`).

use super::{NormalizeKind, Task};
use crate::error::{bad_field, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// IDX files (MNIST and alike).
    Idx,
    /// A CSV file with a header row.
    Csv,
    /// The UCI 8×8 digits compiled into the binary.
    Digits,
    /// Texts with labels: a CSV file with a header row, or JSON Lines (`.jsonl`).
    Text,
    /// Arrays a caller gave in memory (the Python package's `distill` and `submodels`);
    /// `[[teacher]] outputs` then names an array the caller gave, not a file.
    Arrays,
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `idx`, `csv` or `digits`.
    pub format: DataFormat,
    /// IDX: training images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<PathBuf>,
    /// IDX: training labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_labels: Option<PathBuf>,
    /// IDX: test images (used as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<PathBuf>,
    /// IDX: test labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<PathBuf>,
    /// CSV: the data file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// CSV: an optional separate test file (used as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_path: Option<PathBuf>,
    /// CSV and text: the label (target) column (text: default `label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Text: the column (or JSON field) holding the text; default `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Text: `false` when the texts have no labels (embedding distillation only: every model
    /// then distils a BERT teacher's embeddings).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub labels: bool,
    /// Text: how texts become token ids for the students (`kind = "ngrams"` or
    /// `kind = "tokenizer"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<super::text::FeaturesConfig>,
    /// Classification or regression.
    #[serde(default = "default_task")]
    pub task: Task,
    /// CSV: treat the features as images of this shape `[c, h, w]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<Vec<usize>>,
    /// Feature scaling; default `global` for images, `per-feature` for tabular data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<NormalizeKind>,
    /// Fraction of the non-test data held out for validation.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Fraction held out for testing when no test file is given.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Use at most this many training samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train: Option<usize>,
    /// Use at most this many validation and test samples each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_test: Option<usize>,
    /// Classification: keep the labels of only this many training samples per class (drawn
    /// with the run's seed); the other training samples stay, unlabelled — the label term
    /// skips them, a teacher's terms still read them. Validation and test keep their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_per_class: Option<usize>,
    /// CSV: further target columns of the same rows, not features, for the tasks of
    /// multi-task models (`[[model.task]] column = "…"`): `[{ column = "alcohol", task =
    /// "regression" }, …]`. A classification column may leave cells empty (that sample lacks
    /// the task's label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<ExtraTarget>,
}

/// One further target column (`data.targets`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraTarget {
    /// The column's name in the CSV header.
    pub column: String,
    /// Classification or regression.
    pub task: Task,
}

fn yes() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}

fn default_task() -> Task {
    Task::Classification
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_test_fraction() -> f64 {
    0.2
}

impl DataFormat {
    /// The name the experiment file uses.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Idx => "idx",
            DataFormat::Csv => "csv",
            DataFormat::Digits => "digits",
            DataFormat::Text => "text",
            DataFormat::Arrays => "arrays",
        }
    }
}

impl DataConfig {
    /// Checks the table's own fields: the files its format needs exist, fields another format
    /// uses are absent, fractions and limits are in range. Every error names its field.
    pub fn check(&self) -> Result<()> {
        let d = self;
        let check_file = |field: &str, p: &Option<PathBuf>, required: bool| -> Result<()> {
            match p {
                Some(p) if !p.exists() => Err(Error::Input(format!(
                    "data.{field}: file '{}' does not exist",
                    p.display()
                ))),
                None if required => Err(Error::Input(format!(
                    "data.{field}: required when data.format = \"{}\"",
                    self.format.name()
                ))),
                _ => Ok(()),
            }
        };
        let forbid = |field: &str, present: bool| -> Result<()> {
            if present {
                Err(Error::Input(format!(
                    "data.{field}: not used with data.format = \"{}\"",
                    self.format.name()
                )))
            } else {
                Ok(())
            }
        };
        match d.format {
            DataFormat::Idx => {
                check_file("train_images", &d.train_images, true)?;
                check_file("train_labels", &d.train_labels, true)?;
                check_file("test_images", &d.test_images, false)?;
                check_file("test_labels", &d.test_labels, false)?;
                if d.test_images.is_some() != d.test_labels.is_some() {
                    bad_field(
                        "data.test_images",
                        "test_images and test_labels must be given together",
                    )?;
                }
                forbid("path", d.path.is_some())?;
                forbid("test_path", d.test_path.is_some())?;
                forbid("label", d.label.is_some())?;
                if d.task == Task::Regression {
                    bad_field(
                        "data.task",
                        "IDX data is read as classification (labels file); use CSV for regression",
                    )?;
                }
            }
            DataFormat::Csv => {
                check_file("path", &d.path, true)?;
                check_file("test_path", &d.test_path, false)?;
                if d.label.as_deref().map(str::is_empty).unwrap_or(true) {
                    bad_field(
                        "data.label",
                        "required with data.format = \"csv\": the name of the label column",
                    )?;
                }
                for f in ["train_images", "train_labels", "test_images", "test_labels"] {
                    let present = match f {
                        "train_images" => d.train_images.is_some(),
                        "train_labels" => d.train_labels.is_some(),
                        "test_images" => d.test_images.is_some(),
                        _ => d.test_labels.is_some(),
                    };
                    forbid(f, present)?;
                }
            }
            DataFormat::Text => {
                check_file("path", &d.path, true)?;
                check_file("test_path", &d.test_path, false)?;
                match &d.features {
                    None => bad_field(
                        "data.features",
                        "required with data.format = \"text\": how texts become token ids, e.g. { kind = \"ngrams\" } or { kind = \"tokenizer\", path = \"tokenizer.json\" }",
                    )?,
                    Some(f) => {
                        f.check("data.features")?;
                        if let crate::data::text::FeaturesConfig::Tokenizer { path, .. } = f {
                            if !path.exists() {
                                bad_field(
                                    "data.features.path",
                                    &format!("file '{}' does not exist", path.display()),
                                )?;
                            }
                        }
                    }
                }
                if d.task == Task::Regression {
                    bad_field("data.task", "text data are read as classification")?;
                }
                for (f, present) in [
                    ("train_images", d.train_images.is_some()),
                    ("train_labels", d.train_labels.is_some()),
                    ("test_images", d.test_images.is_some()),
                    ("test_labels", d.test_labels.is_some()),
                    ("image_shape", d.image_shape.is_some()),
                    ("normalize", d.normalize.is_some()),
                ] {
                    forbid(f, present)?;
                }
            }
            DataFormat::Arrays | DataFormat::Digits => {
                // No files: the digits are compiled in, arrays come from the caller. Arrays may
                // be images (`image_shape`, set from the arrays' shape).
                for (f, present) in [
                    ("path", d.path.is_some()),
                    ("test_path", d.test_path.is_some()),
                    ("train_images", d.train_images.is_some()),
                    ("train_labels", d.train_labels.is_some()),
                    ("test_images", d.test_images.is_some()),
                    ("test_labels", d.test_labels.is_some()),
                    ("label", d.label.is_some()),
                    (
                        "image_shape",
                        d.format == DataFormat::Digits && d.image_shape.is_some(),
                    ),
                ] {
                    forbid(f, present)?;
                }
                if d.format == DataFormat::Digits && d.task == Task::Regression {
                    bad_field("data.task", "the embedded digits are a classification set")?;
                }
            }
        }
        if !d.labels && d.format != DataFormat::Text {
            bad_field("data.labels", "only text data may come without labels")?;
        }
        if let Some(s) = &d.image_shape {
            if s.len() != 3 || s.contains(&0) {
                bad_field(
                    "data.image_shape",
                    &format!("expected [channels, height, width], all > 0; got {s:?}"),
                )?;
            }
        }
        if !(0.0..1.0).contains(&d.val_fraction) || d.val_fraction == 0.0 {
            bad_field(
                "data.val_fraction",
                &format!("expected a number in (0, 1), got {}", d.val_fraction),
            )?;
        }
        if !(0.0..1.0).contains(&d.test_fraction) {
            bad_field(
                "data.test_fraction",
                &format!("expected a number in [0, 1), got {}", d.test_fraction),
            )?;
        }
        if d.max_train == Some(0) {
            bad_field("data.max_train", "must be at least 1")?;
        }
        if d.max_test == Some(0) {
            bad_field("data.max_test", "must be at least 1")?;
        }
        for (i, t) in d.targets.iter().enumerate() {
            let f = format!("data.targets[{i}].column");
            if d.format != DataFormat::Csv {
                bad_field(&f, "further target columns are read from CSV files only")?;
            }
            if t.column.is_empty() || d.label.as_deref() == Some(t.column.as_str()) {
                bad_field(&f, "expected a column other than data.label")?;
            }
            if d.targets[..i].iter().any(|u| u.column == t.column) {
                bad_field(&f, &format!("'{}' is given twice", t.column))?;
            }
        }
        if let Some(n) = d.labels_per_class {
            if n == 0 {
                bad_field("data.labels_per_class", "must be at least 1")?;
            }
            if d.task == Task::Regression {
                bad_field(
                    "data.labels_per_class",
                    "only for classification (labels per class)",
                )?;
            }
            if d.format == DataFormat::Text && !d.labels {
                bad_field("data.labels_per_class", "the texts have no labels")?;
            }
        }
        Ok(())
    }
}
