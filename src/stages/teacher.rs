//! `[[teacher]]`: a teacher distillery did not train — an ONNX file run in tract — loaded,
//! checked against the data, measured like any model and put in the store under its name, so
//! that a `[[model]]`'s `distill.teacher` can name it.

use super::Stage;
use crate::error::{Error, Result};
use crate::store::{ModelMetrics, RunStore};
use crate::teachers::{OnnxInput, OnnxTeacher, Teacher};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One `[[teacher]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// The name students use in `distill.teacher`.
    pub name: String,
    /// An ONNX file whose first input takes `[batch, features]`.
    pub onnx: PathBuf,
    /// Feed it `raw` feature values (default) or the run's `normalized` ones.
    #[serde(default)]
    pub input: OnnxInput,
    /// The output that holds the logits (or values), by position.
    #[serde(default)]
    pub output: usize,
}

/// The stage of one `[[teacher]]` table.
pub struct TeacherStage {
    /// Its settings.
    pub cfg: TeacherConfig,
}

impl Stage for TeacherStage {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let c = &self.cfg;
        let splits = &store.splits;
        let d = splits.train.dim();
        let outputs = splits.train.outputs();
        let t = OnnxTeacher::load(&c.onnx, d, c.input, c.output, splits.normalizer.clone())?;
        let probe = t.predict_rows(&splits.train.x[..d], 1)?;
        if probe.len() != outputs {
            return Err(Error::Input(format!(
                "teacher.{}: {} gives {} outputs per sample, but the data have {outputs} {}",
                c.name,
                c.onnx.display(),
                probe.len(),
                if outputs == 1 {
                    "target (regression)"
                } else {
                    "classes"
                }
            )));
        }
        store.progress.say(&format!(
            "{}: ONNX teacher {} ({} inputs, {} outputs)",
            c.name,
            c.onnx.display(),
            d,
            outputs
        ));
        let (scores, b1, b256) = store.measure(&t)?;
        let mut r = ModelMetrics::measured(
            &c.name,
            "teacher",
            &scores,
            b1,
            b256,
            format!("ONNX file {}", c.onnx.display()),
        );
        r.architecture = format!("onnx {}", c.onnx.display());
        r.file_bytes = std::fs::metadata(&c.onnx).map(|m| m.len()).unwrap_or(0);
        r.bytes = r.file_bytes as usize;
        r.params = t.params();
        store.record(r)?;
        store.add_teacher(&c.name, Box::new(t));
        Ok(())
    }
}
