//! Anything that can teach: given a batch of inputs, produce outputs (logits, or values for
//! regression). Distillery's own models, an ensemble of them and models of any precision
//! implement [`Teacher`]; the training loop takes its live soft targets from one, evaluation
//! measures one, and outside teachers (an ONNX file, a transformer, precomputed outputs) plug in
//! by implementing it.

pub mod bert;
pub mod cache;
pub mod native;
pub use crate::data::Rows;

use crate::error::Result;
use crate::models::Model;
use candle_core::{Device, Tensor};

/// A source of outputs for inputs (already normalised as the run's data are).
pub trait Teacher {
    /// Outputs for a `[b, input_dim]` batch, row-major `b * outputs` values (logits or
    /// log-probabilities for classification, values for regression).
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>>;

    /// The same for `rows` inputs given as a row-major slice.
    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let d = x.len() / rows.max(1);
        self.predict_batch(&Tensor::from_slice(x, (rows, d), &Device::Cpu)?)
    }
}

impl Teacher for Model {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        // The one dispatcher: the family's eval-mode path, as `Model::predict`.
        let rows = x.dim(0)?;
        crate::models::with_slice(x, |v| self.spec.arch.family().predict_rows(self, v, rows))?
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.predict(x, rows.max(1))
    }
}

/// Averages its members: probabilities for classification (output: log of the mean
/// probability, so arg-max and cross-entropy work as for logits), values for regression.
pub struct Ensemble<'a> {
    /// The members.
    pub members: Vec<&'a Model>,
    /// Regression (average outputs) or classification (average probabilities).
    pub regression: bool,
}

impl Teacher for Ensemble<'_> {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let outs = self
            .members
            .iter()
            .map(|m| m.predict_batch(x))
            .collect::<Result<Vec<_>>>()?;
        let classes = self.members.first().map(|m| m.spec.outputs).unwrap_or(1);
        Ok(ensemble_outputs(&outs, classes, self.regression))
    }
}

/// The ensemble's output from its members' outputs on the same rows: the mean (regression), or
/// the log of the mean probabilities (classification).
pub fn ensemble_outputs(outs: &[Vec<f32>], classes: usize, regression: bool) -> Vec<f32> {
    let refs: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
    if regression {
        return crate::losses::mutual::mean_outputs(&refs);
    }
    let p = crate::losses::mutual::peer_average(&refs, classes, 1.0);
    p.iter().map(|&v| v.max(1e-30).ln()).collect()
}

/// What an ONNX teacher is fed: the run's normalised inputs, or the raw values (the normaliser
/// undone), as a model trained elsewhere on the raw features expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnnxInput {
    /// The raw feature values (default).
    #[default]
    Raw,
    /// The values as normalised for this run.
    Normalized,
}

/// A teacher in an ONNX file, run in pure Rust by tract: a model trained and exported by
/// PyTorch, TensorFlow or any tool. Its first input takes `[batch, features]`; one of its
/// outputs gives the logits (or values). A plan is built per batch size and kept.
pub struct OnnxTeacher {
    bytes: Vec<u8>,
    file: String,
    input: OnnxInput,
    output: usize,
    normalizer: crate::data::Normalizer,
    /// Regression: the run's target scale, so that the teacher's values (in the target's
    /// units) become the standardised values students train on.
    target_scale: Option<crate::data::TargetScale>,
    dim: usize,
    params: usize,
    plans: std::sync::Mutex<
        std::collections::HashMap<usize, std::sync::Arc<tract_onnx::prelude::TypedSimplePlan>>,
    >,
}

impl OnnxTeacher {
    /// Reads `path` and checks that it runs on one sample of `dim` features.
    pub fn load(
        path: &std::path::Path,
        dim: usize,
        input: OnnxInput,
        output: usize,
        normalizer: crate::data::Normalizer,
    ) -> Result<OnnxTeacher> {
        let bytes = crate::io::read_file(path)?;
        Self::from_bytes(
            bytes,
            &path.display().to_string(),
            dim,
            input,
            output,
            normalizer,
        )
    }

    /// A regression teacher: its values are in the target's units, and `scale` (the run's)
    /// standardises them as the run's targets are.
    pub fn with_target_scale(mut self, scale: Option<crate::data::TargetScale>) -> OnnxTeacher {
        self.target_scale = scale;
        self
    }

    /// The same from the bytes of an ONNX file; `file` names it in errors.
    pub fn from_bytes(
        bytes: Vec<u8>,
        file: &str,
        dim: usize,
        input: OnnxInput,
        output: usize,
        normalizer: crate::data::Normalizer,
    ) -> Result<OnnxTeacher> {
        let mut t = OnnxTeacher {
            bytes,
            file: file.to_string(),
            input,
            output,
            normalizer,
            target_scale: None,
            dim,
            params: 0,
            plans: Default::default(),
        };
        let file = t.file.clone();
        t.params = crate::error::no_panic(&file, || {
            t.plan(1)?;
            t.count_params()
        })?;
        Ok(t)
    }

    /// Elements of the graph's floating-point constant tensors (its weights and biases).
    pub fn params(&self) -> usize {
        self.params
    }

    fn count_params(&self) -> Result<usize> {
        use tract_onnx::prelude::*;
        let bad =
            |e: &dyn std::fmt::Display| crate::error::Error::Input(format!("{}: {e}", self.file));
        let typed = tract_onnx::onnx()
            .model_for_read(&mut &self.bytes[..])
            .map_err(|e| bad(&e))?
            .with_input_fact(0, f32::fact([1, self.dim]).into())
            .map_err(|e| bad(&e))?
            .into_typed()
            .map_err(|e| bad(&e))?;
        Ok(typed
            .nodes()
            .iter()
            .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::konst::Const>())
            .filter(|c| c.val().datum_type().is_float())
            .map(|c| c.val().len())
            .sum())
    }

    fn plan(&self, rows: usize) -> Result<std::sync::Arc<tract_onnx::prelude::TypedSimplePlan>> {
        use tract_onnx::prelude::*;
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| crate::error::Error::Other("ONNX teacher: a thread panicked".into()))?;
        if let Some(p) = plans.get(&rows) {
            return Ok(p.clone());
        }
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            crate::error::Error::Input(format!("{}: {what}: {e}", self.file))
        };
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &self.bytes[..])
            .map_err(|e| bad("not an ONNX model tract can read", &e))?
            .with_input_fact(0, f32::fact([rows, self.dim]).into())
            .map_err(|e| bad("its first input cannot take [batch, features]", &e))?
            .into_optimized()
            .map_err(|e| {
                bad(
                    &format!(
                        "the graph does not fit inputs of {} features (or uses an operator tract lacks)",
                        self.dim
                    ),
                    &e,
                )
            })?
            .into_runnable()
            .map_err(|e| bad("cannot plan the graph", &e))?;
        plans.insert(rows, plan.clone());
        Ok(plan)
    }
}

impl Teacher for OnnxTeacher {
    fn predict_batch(&self, x: &Tensor) -> Result<Vec<f32>> {
        let rows = x.dim(0)?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        self.predict_rows(&v, rows)
    }

    fn predict_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        use tract_onnx::prelude::*;
        let mut raw = x.to_vec();
        if self.input == OnnxInput::Raw {
            self.normalizer.invert(&mut raw, self.dim);
        }
        let plan = self.plan(rows)?;
        let input: tract_onnx::prelude::Tensor =
            tract_ndarray::Array2::from_shape_vec((rows, self.dim), raw)
                .map_err(|e| crate::error::Error::Other(format!("{}: {e}", self.file)))?
                .into();
        let out = plan.run(tvec!(input.into())).map_err(|e| {
            crate::error::Error::Input(format!("{}: running it failed: {e}", self.file))
        })?;
        let o = out.get(self.output).ok_or_else(|| {
            crate::error::Error::Input(format!(
                "{}: output {} requested, but the graph has {} output(s)",
                self.file,
                self.output,
                out.len()
            ))
        })?;
        let ts = self.target_scale;
        Ok(o.to_plain_array_view::<f32>()
            .map_err(|e| {
                crate::error::Error::Input(format!("{}: output {}: {e}", self.file, self.output))
            })?
            .iter()
            .map(|&v| ts.map(|t| t.forward(v)).unwrap_or(v))
            .collect())
    }
}

/// A teacher's outputs on every sample of each split, computed once (a text encoder's, a
/// file of precomputed outputs, a weighted mix of teachers): students read them instead of
/// running the teacher. Rows follow the splits' sample order.
#[derive(Debug, Clone)]
pub struct SplitOutputs {
    /// Values per sample.
    pub cols: usize,
    /// Training split.
    pub train: Rows,
    /// Validation split.
    pub val: Rows,
    /// Test split, when the teacher has outputs for it.
    pub test: Option<Rows>,
}

/// What a teacher that is not a distillery model offers besides [`Teacher`].
#[derive(Default, Clone)]
pub struct KnownTeacher {
    /// Logits (log-probabilities for probability sources) per split: what logit
    /// distillation reads.
    pub logits: Option<SplitOutputs>,
    /// Sentence embeddings per split: what embedding distillation reads.
    pub embeddings: Option<SplitOutputs>,
    /// The encoder itself (a BERT teacher), for initialising a static-embedding student from
    /// its token embeddings.
    pub encoder: Option<std::sync::Arc<bert::BertEncoder>>,
}
