//! Anything that can teach: given a batch of inputs, produce outputs (logits, or values for
//! regression). Distillery's own models, an ensemble of them and models of any precision
//! implement [`Teacher`]; the training loop takes its live soft targets from one, evaluation
//! measures one, and outside teachers (an ONNX file, a transformer, precomputed outputs) plug in
//! by implementing it.

use crate::error::Result;
use crate::models::{Mode, Model};
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
        if crate::models::fused::eligible(self) {
            let rows = x.dim(0)?;
            return crate::models::mlp::with_slice(x, |v| {
                crate::models::mlp::forward_eval_fused(self, v, rows)
            })?;
        }
        Ok(self
            .forward(x, Mode::Eval)?
            .flatten_all()?
            .to_vec1::<f32>()?)
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
        let refs: Vec<&[f32]> = outs.iter().map(|o| o.as_slice()).collect();
        if self.regression {
            return Ok(crate::losses::mutual::mean_outputs(&refs));
        }
        let classes = self.members.first().map(|m| m.spec.outputs).unwrap_or(1);
        let p = crate::losses::mutual::peer_average(&refs, classes, 1.0);
        Ok(p.iter().map(|&v| v.max(1e-30).ln()).collect())
    }
}
