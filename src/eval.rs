//! Evaluation: accuracy and error count (or MSE and MAE), and inference latency.

use crate::data::{Dataset, TargetScale, Targets, MISSING};
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
    /// Macro-averaged F1 over the classes (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
}

/// Scores from model outputs (`n * outputs` values) against the data's targets.
pub fn score_outputs(out: &[f32], data: &Dataset, scale: Option<&TargetScale>) -> Scores {
    score_targets(out, &data.targets, scale)
}

/// Scores from model outputs against `targets` (the data's, or a further target column's).
pub fn score_targets(out: &[f32], targets: &Targets, scale: Option<&TargetScale>) -> Scores {
    let n = targets.len().max(1);
    match targets {
        Targets::Classes { labels, names } => {
            let c = names.len();
            let mut loss = 0f64;
            let mut correct = 0usize;
            // Per class: true positives, predicted, actual.
            let mut tp = vec![0usize; c];
            let mut pred = vec![0usize; c];
            let mut actual = vec![0usize; c];
            // Samples without a label (`MISSING`) are left out.
            let labelled = labels.iter().filter(|&&y| y != MISSING).count();
            let n = labelled.max(1);
            for (row, &y) in out
                .chunks_exact(c)
                .zip(labels)
                .filter(|(_, &y)| y != MISSING)
            {
                loss += crate::losses::supervised::row_cross_entropy(row, y as usize);
                let arg = argmax(row);
                pred[arg] += 1;
                actual[y as usize] += 1;
                if arg == y as usize {
                    correct += 1;
                    tp[arg] += 1;
                }
            }
            // Macro F1 over the classes present in the labels or the predictions.
            let (mut f1_sum, mut f1_n) = (0f64, 0usize);
            for k in 0..c {
                if pred[k] + actual[k] == 0 {
                    continue;
                }
                f1_sum += 2.0 * tp[k] as f64 / (pred[k] + actual[k]) as f64;
                f1_n += 1;
            }
            Scores {
                loss: loss / n as f64,
                accuracy: Some(correct as f64 / n as f64),
                errors: Some(labelled - correct),
                mse: None,
                mae: None,
                f1: Some(f1_sum / f1_n.max(1) as f64),
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
                f1: None,
            }
        }
    }
}

pub use crate::kernels::softmax::argmax;

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
    time_median(cfg, 3, || {
        let _ = model.predict_batch(&t)?;
        Ok(())
    })
}

/// Median wall time in microseconds of `run`, after `warmup` calls; calls repeat until both
/// `cfg.latency_runs` calls and `cfg.latency_budget_ms` have passed (at most 10,000 calls).
/// A call slower than the whole budget counts as its own budget: then three calls suffice.
pub fn time_median(
    cfg: &EvalConfig,
    warmup: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        run()?;
    }
    let budget = std::time::Duration::from_millis(cfg.latency_budget_ms);
    let start = Instant::now();
    let mut times: Vec<f64> = Vec::new();
    loop {
        let t0 = Instant::now();
        run()?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        let slow = times.len() >= 3 && times[0] > 1e3 * cfg.latency_budget_ms as f64;
        let enough = times.len() >= cfg.latency_runs && start.elapsed() >= budget;
        if slow || enough || times.len() >= 10_000 {
            break;
        }
    }
    Ok(median(&mut times))
}

/// Median latency in microseconds of featurizing `batch` raw texts (cycled from `texts`) with
/// `f` and running `model` on them: what a text model costs per call from raw text.
pub fn text_latency_us(
    model: &dyn Predictor,
    f: &crate::data::text::Featurizer,
    texts: &[String],
    batch: usize,
    cfg: &EvalConfig,
) -> Result<f64> {
    let picked: Vec<String> = (0..batch)
        .map(|i| texts[i % texts.len().max(1)].clone())
        .collect();
    let w = f.width();
    let mut buf = Vec::with_capacity(batch * w);
    time_median(cfg, 3, || {
        if batch == 1 {
            buf.clear();
            f.featurize_into(&picked[0], &mut buf)?;
        } else {
            // A batch is featurized over all cores, as the teacher's tokenizer does.
            buf = f.featurize(&picked)?;
        }
        let _ = model.predict_rows(&buf, batch)?;
        Ok(())
    })
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

fn unit_rows(v: &[f32], dim: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    for row in out.chunks_exact_mut(dim.max(1)) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
    out
}

/// Mean cosine similarity between matching rows of `a` and `b` (`dim` values each).
pub fn mean_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (ua, ub) = (unit_rows(a, dim), unit_rows(b, dim));
    let n = a.len() / dim.max(1);
    let s: f64 = ua
        .chunks_exact(dim)
        .zip(ub.chunks_exact(dim))
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>())
        .sum();
    s / n.max(1) as f64
}

/// The fraction of rows whose nearest other row by cosine is the same in `a` as in `b`:
/// whether a student finds the same most-similar text as its teacher.
pub fn nn_agreement(a: &[f32], b: &[f32], dim: usize) -> f64 {
    use rayon::prelude::*;
    let n = a.len() / dim.max(1);
    if n < 2 {
        return 1.0;
    }
    let nearest = |v: &[f32]| -> Vec<usize> {
        let u = unit_rows(v, dim);
        (0..n)
            .into_par_iter()
            .map(|i| {
                let ri = &u[i * dim..(i + 1) * dim];
                let mut best = (f32::NEG_INFINITY, 0usize);
                for j in (0..n).filter(|&j| j != i) {
                    let d: f32 = ri
                        .iter()
                        .zip(&u[j * dim..(j + 1) * dim])
                        .map(|(p, q)| p * q)
                        .sum();
                    if d > best.0 {
                        best = (d, j);
                    }
                }
                best.1
            })
            .collect()
    };
    let (na, nb) = (nearest(a), nearest(b));
    na.iter().zip(&nb).filter(|(x, y)| x == y).count() as f64 / n as f64
}
