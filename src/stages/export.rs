//! `[[export]]`: writes a finished model (of any precision) to `exports/` as ONNX (f32, or QDQ
//! for int8) or plain safetensors, and checks an ONNX export by running it in tract on test
//! inputs against the model's own outputs.

use super::Stage;
use crate::compress::onnx;
use crate::error::{Error, Result};
use crate::eval::argmax;
use crate::store::{ExportRecord, RunStore};
use serde::{Deserialize, Serialize};

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// ONNX (opset 13): f32, or QDQ int8 for int8 models; normalisation inside the graph.
    Onnx,
    /// Plain (uncompressed) safetensors with distillery's metadata.
    Safetensors,
}

impl ExportFormat {
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Onnx => "onnx",
            ExportFormat::Safetensors => "safetensors",
        }
    }
}

/// One `[[export]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The finished model to export (a `[[model]]`, a sub-model, a final student, a stage).
    pub from: String,
    /// `onnx` or `safetensors`.
    #[serde(default = "default_format")]
    pub format: ExportFormat,
    /// ONNX: test samples the export is run on in tract and compared with the model (0: no
    /// check).
    #[serde(default = "default_check_samples")]
    pub check_samples: usize,
}

fn default_format() -> ExportFormat {
    ExportFormat::Onnx
}
fn default_check_samples() -> usize {
    256
}

/// The stage of one `[[export]]` table.
pub struct ExportStage {
    /// Its settings.
    pub cfg: ExportConfig,
}

impl Stage for ExportStage {
    fn name(&self) -> &str {
        &self.cfg.from
    }

    fn run(&self, store: &mut RunStore) -> Result<()> {
        let c = &self.cfg;
        let model = &store.get(&c.from)?.model;
        let bytes = match c.format {
            ExportFormat::Onnx => onnx::export(model)?,
            ExportFormat::Safetensors => model.to_safetensors()?,
        };
        let file = store
            .out()
            .join("exports")
            .join(format!("{}.{}", c.from, c.format.extension()));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::io::write_atomic(&file, &bytes)?;
        let mut record = ExportRecord {
            from: c.from.clone(),
            format: c.format.extension().into(),
            file: format!("exports/{}.{}", c.from, c.format.extension()),
            bytes: bytes.len(),
            checked_samples: 0,
            max_abs_diff: None,
            class_agreement: None,
        };
        // tract runs TreeEnsembleClassifier but not TreeEnsembleRegressor: a regression tree
        // export is checked in onnxruntime by CI instead (tests/python/check_tree_export.py).
        let tract_runs_it = !(matches!(model.body, crate::compress::Body::Trees(_))
            && model.meta.task == crate::data::Task::Regression);
        if !tract_runs_it {
            store.progress.say(&format!(
                "{}: tract has no TreeEnsembleRegressor; the export is not checked here (onnxruntime runs it)",
                c.from
            ));
        }
        if c.format == ExportFormat::Onnx && c.check_samples > 0 && tract_runs_it {
            // The export takes raw inputs (it normalises inside the graph): feed it the test
            // split mapped back to raw values, and compare with the model on the same samples.
            let test = &store.splits.test;
            let d = test.dim();
            let n = c.check_samples.min(test.len());
            let x = &test.x[..n * d];
            let mut raw = x.to_vec();
            model.meta.normalizer.invert(&mut raw, d);
            let ours = model.predict(x, 256)?;
            let all = onnx::run_in_tract_all(&bytes, &raw, n, d).map_err(|e| {
                Error::Other(format!("export of '{}' ({}): {e}", c.from, file.display()))
            })?;
            let mut all = all.into_iter();
            let theirs = all.next().unwrap_or_default();
            // A multi-task model: each head's output against the head as predict gives it.
            let mut head_diff = 0f32;
            if !model.meta.heads.is_empty() {
                let heads = crate::predict::head_outputs(model, &raw, 256)?;
                for ((h, want), got) in heads.iter().zip(all.by_ref()) {
                    if want.len() != got.len() {
                        return Err(Error::Other(format!(
                            "export of '{}': head '{}' gave {} values in tract, {} expected",
                            c.from,
                            h.name,
                            got.len(),
                            want.len()
                        )));
                    }
                    head_diff = want
                        .iter()
                        .zip(&got)
                        .fold(head_diff, |a, (p, q)| a.max((p - q).abs()));
                }
            }
            if ours.len() != theirs.len() {
                return Err(Error::Other(format!(
                    "export of '{}': tract gave {} outputs for {} expected",
                    c.from,
                    theirs.len(),
                    ours.len()
                )));
            }
            let diff = ours
                .iter()
                .zip(&theirs)
                .fold(head_diff, |a, (p, q)| a.max((p - q).abs()));
            let outputs = model.meta.spec.outputs;
            record.checked_samples = n;
            record.max_abs_diff = Some(diff as f64);
            if outputs > 1 && model.meta.heads.is_empty() {
                let agree = ours
                    .chunks(outputs)
                    .zip(theirs.chunks(outputs))
                    .filter(|(a, b)| argmax(a) == argmax(b))
                    .count();
                record.class_agreement = Some(agree as f64 / n.max(1) as f64);
            }
        }
        store.progress.say(&format!(
            "{}: exported to {} ({} bytes){}",
            c.from,
            file.display(),
            bytes.len(),
            record
                .max_abs_diff
                .map(|d| format!(
                    "; in tract on {} test samples: max |Δoutput| = {d:.2e}",
                    record.checked_samples
                ))
                .unwrap_or_default()
        ));
        store.record_export(record);
        Ok(())
    }
}
