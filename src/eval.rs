//! Evaluation: accuracy and error count (or MSE and MAE), and inference latency.

use crate::data::{Dataset, TargetScale, Targets};
use crate::error::Result;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Quality figures of a model on a data set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Mean loss (cross-entropy, or MSE on the standardised target).
    pub loss: f64,
    /// Fraction correct (classification).
    pub accuracy: Option<f64>,
    /// Misclassified samples (classification).
    pub errors: Option<usize>,
    /// Mean squared error in the target's own units (regression).
    pub mse: Option<f64>,
    /// Mean absolute error in the target's own units (regression).
    pub mae: Option<f64>,
}

/// Scores from model outputs (`n * outputs` values) against the data's targets.
pub fn score_outputs(out: &[f32], data: &Dataset, scale: Option<&TargetScale>) -> Scores {
    let n = data.len().max(1);
    match &data.targets {
        Targets::Classes { labels, names } => {
            let c = names.len();
            let mut loss = 0f64;
            let mut correct = 0usize;
            for (row, &y) in out.chunks_exact(c).zip(labels) {
                let (max, lse) = crate::losses::softmax::log_sum_exp::<f64>(row, 1.0, None);
                let lse = lse + max as f64;
                loss += lse - row[y as usize] as f64;
                let arg = argmax(row);
                if arg == y as usize {
                    correct += 1;
                }
            }
            Scores {
                loss: loss / n as f64,
                accuracy: Some(correct as f64 / n as f64),
                errors: Some(data.len() - correct),
                mse: None,
                mae: None,
            }
        }
        Targets::Values(v) => {
            let (mut l, mut se, mut ae) = (0f64, 0f64, 0f64);
            for (&p, &t) in out.iter().zip(v) {
                let d = (p - t) as f64;
                l += d * d;
                let (pr, tr) = match scale {
                    Some(s) => (s.inverse(p), s.inverse(t)),
                    None => (p, t),
                };
                let dr = (pr - tr) as f64;
                se += dr * dr;
                ae += dr.abs();
            }
            Scores {
                loss: l / n as f64,
                accuracy: None,
                errors: None,
                mse: Some(se / n as f64),
                mae: Some(ae / n as f64),
            }
        }
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

pub use crate::teachers::Ensemble;
/// Anything that maps a batch of inputs to outputs is evaluated the same way: a model of any
/// precision, an ensemble, an outside teacher ([`crate::teachers::Teacher`]).
pub use crate::teachers::Teacher as Predictor;

/// Runs a predictor over `x` (`n * dim` values) in batches.
pub fn predict_all(p: &dyn Predictor, x: &[f32], dim: usize, batch: usize) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in x.chunks(batch.max(1) * dim) {
        let t = Tensor::from_slice(chunk, (chunk.len() / dim, dim), &Device::Cpu)?;
        out.extend(p.predict_batch(&t)?);
    }
    Ok(out)
}

/// Evaluates a model or ensemble on `data`.
pub fn evaluate(p: &dyn Predictor, data: &Dataset, scale: Option<&TargetScale>) -> Result<Scores> {
    let out = predict_all(p, &data.x, data.dim(), 512)?;
    Ok(score_outputs(&out, data, scale))
}

/// Median wall time in microseconds of one forward pass at batch size `batch` (inputs taken
/// from `data`, cycled if it holds fewer samples), after warm-up runs; runs repeat until both
/// `cfg.latency_runs` runs and `cfg.latency_budget_ms` have passed (at most 10,000 runs).
pub fn latency_us(
    model: &dyn Predictor,
    data: &Dataset,
    batch: usize,
    cfg: &EvalConfig,
) -> Result<f64> {
    let d = data.dim();
    let mut x = Vec::with_capacity(batch * d);
    for i in 0..batch {
        let j = i % data.len().max(1);
        x.extend_from_slice(&data.x[j * d..(j + 1) * d]);
    }
    let t = Tensor::from_vec(x, (batch, d), &Device::Cpu)?;
    let run = || -> Result<()> {
        let _ = model.predict_batch(&t)?;
        Ok(())
    };
    for _ in 0..3 {
        run()?;
    }
    let budget = std::time::Duration::from_millis(cfg.latency_budget_ms);
    let start = Instant::now();
    let mut times = Vec::new();
    while (times.len() < cfg.latency_runs || start.elapsed() < budget) && times.len() < 10_000 {
        let t0 = Instant::now();
        run()?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&mut times))
}

/// Median of a slice (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The `[eval]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Minimum timed runs per latency figure (the median is reported).
    #[serde(default = "default_latency_runs")]
    pub latency_runs: usize,
    /// Time budget per latency figure, in milliseconds (runs stop when both limits are met).
    #[serde(default = "default_latency_budget_ms")]
    pub latency_budget_ms: u64,
}

fn default_latency_runs() -> usize {
    20
}
fn default_latency_budget_ms() -> u64 {
    300
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            latency_runs: default_latency_runs(),
            latency_budget_ms: default_latency_budget_ms(),
        }
    }
}
