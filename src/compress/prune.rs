//! Pruning.
//!
//! **Magnitude** (unstructured): the smallest-magnitude weights are set to zero, across all
//! weight matrices at once (`global`) or to the same fraction in each (`layer`); gradually,
//! following the cubic schedule of Zhu & Gupta (2017), `s_t = s_f · (1 − (1 − t/n)³)`, over
//! `n` fine-tuning epochs, with the masks re-applied after every optimizer step so that
//! pruned weights stay zero.
//!
//! **Structured**: whole hidden units of dense layers and whole channels of conv layers are
//! removed, ranked by the L2 norm of their incoming weights or by their mean activation on
//! training data. The result is a genuinely smaller dense model with fewer parameters and
//! smaller matrix products.

use crate::error::{Error, Result};
use crate::models::{Model, ModelSpec, ParamKind};
use crate::train::StepHook;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Where the magnitude threshold is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One threshold over all weight matrices.
    Global,
    /// The same sparsity in every weight matrix.
    Layer,
}

/// How structured pruning ranks units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rank {
    /// L2 norm of the unit's incoming weights.
    WeightNorm,
    /// Mean activation (after ReLU) on training samples.
    Activation,
}

/// Sparsity after `epoch` (0-based, counted as finished epochs) of `ramp` epochs of the cubic
/// schedule ending at `final_sparsity`.
pub fn cubic_sparsity(final_sparsity: f64, epoch: usize, ramp: usize) -> f64 {
    if ramp == 0 || epoch >= ramp {
        return final_sparsity;
    }
    let t = epoch as f64 / ramp as f64;
    final_sparsity * (1.0 - (1.0 - t).powi(3))
}

/// Pruning state during fine-tuning: per-parameter masks (1 keep, 0 pruned; `None` for
/// biases).
#[derive(Debug, Clone)]
pub struct Masks {
    /// One entry per model parameter.
    pub masks: Vec<Option<Vec<f32>>>,
}

impl Masks {
    /// Masks that zero the `sparsity` fraction of smallest-magnitude weights.
    pub fn magnitude(model: &Model, sparsity: f64, scope: Scope) -> Result<Masks> {
        let w = model.weights()?;
        let prunable: Vec<bool> = model.param_kinds().iter().map(|k| k.is_weight()).collect();
        let mut masks: Vec<Option<Vec<f32>>> = vec![None; w.len()];
        let threshold = |vals: &mut Vec<f32>, s: f64| -> (f32, usize) {
            // The k-th smallest magnitude; ties at the threshold are broken by order below.
            let k = ((vals.len() as f64) * s).floor() as usize;
            if k == 0 {
                return (f32::NEG_INFINITY, 0);
            }
            let (_, t, _) = vals.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            (*t, k)
        };
        let mut apply = |i: usize, thr: f32, budget: &mut usize| {
            let m: Vec<f32> = w[i]
                .iter()
                .map(|v| {
                    if v.abs() < thr || (v.abs() == thr && *budget > 0) {
                        if v.abs() == thr {
                            *budget -= 1;
                        }
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            masks[i] = Some(m);
        };
        match scope {
            Scope::Global => {
                let mut all: Vec<f32> = w
                    .iter()
                    .zip(&prunable)
                    .filter(|(_, &p)| p)
                    .flat_map(|(v, _)| v.iter().map(|x| x.abs()))
                    .collect();
                let (thr, k) = threshold(&mut all, sparsity);
                let below = all.iter().filter(|&&a| a < thr).count();
                let mut budget = k.saturating_sub(below);
                for (i, &p) in prunable.iter().enumerate() {
                    if p {
                        apply(i, thr, &mut budget);
                    }
                }
            }
            Scope::Layer => {
                for i in 0..w.len() {
                    if prunable[i] {
                        let mut a: Vec<f32> = w[i].iter().map(|x| x.abs()).collect();
                        let (thr, k) = threshold(&mut a, sparsity);
                        let below = a.iter().filter(|&&x| x < thr).count();
                        let mut budget = k.saturating_sub(below);
                        apply(i, thr, &mut budget);
                    }
                }
            }
        }
        Ok(Masks { masks })
    }

    /// Zeroes the pruned weights of `model`.
    pub fn apply(&self, model: &Model) -> Result<()> {
        for ((_, var), m) in model.params.iter().zip(&self.masks) {
            if let Some(m) = m {
                let mt = Tensor::from_slice(m, var.shape(), &Device::Cpu)?;
                var.set(&var.as_tensor().mul(&mt)?)?;
            }
        }
        Ok(())
    }
}

/// Fraction of weight-matrix entries that are exactly zero, and the count of non-zero
/// parameters (weights and biases).
pub fn sparsity(model: &Model) -> Result<(f64, usize)> {
    let mut zeros = 0usize;
    let mut total = 0usize;
    let mut nonzero = 0usize;
    for (kind, v) in model.param_kinds().into_iter().zip(model.weights()?) {
        let z = v.iter().filter(|x| **x == 0.0).count();
        nonzero += v.len() - z;
        if kind.is_weight() {
            zeros += z;
            total += v.len();
        }
    }
    Ok((zeros as f64 / total.max(1) as f64, nonzero))
}

/// Mean activation (after ReLU) of every prunable unit: per conv block (mean over positions)
/// and per dense hidden layer, on `x`.
/// Per layer, one mean per unit.
type UnitMeans = Vec<Vec<f64>>;

fn mean_activations(model: &Model, x: &[f32]) -> Result<(UnitMeans, UnitMeans)> {
    let spec = &model.spec;
    let d = spec.input_dim();
    let (channels, kernel) = stack(model)?;
    let mut conv_sum: Vec<Vec<f64>> = channels.iter().map(|&c| vec![0.0; c]).collect();
    let mut dense_sum: Vec<Vec<f64>> = spec.arch.hidden().iter().map(|&h| vec![0.0; h]).collect();
    let blocks = channels.len();
    let n = x.len() / d;
    for chunk in x.chunks(256 * d) {
        let b = chunk.len() / d;
        let mut t = Tensor::from_slice(chunk, (b, d), &Device::Cpu)?;
        if blocks > 0 {
            let s = &spec.input_shape;
            t = t.reshape((b, s[0], s[1], s[2]))?;
            let pad = kernel / 2;
            for (i, sums) in conv_sum.iter_mut().enumerate() {
                let w = model.params[2 * i].1.as_tensor();
                let bias = model.params[2 * i + 1].1.as_tensor();
                t = t
                    .conv2d(w, pad, 1, 1, 1)?
                    .broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?
                    .relu()?;
                let m = t.mean(3)?.mean(2)?.sum(0)?.to_vec1::<f32>()?;
                for (s, v) in sums.iter_mut().zip(m) {
                    *s += v as f64;
                }
                t = t.max_pool2d(2)?;
            }
            t = t.flatten_from(1)?;
        }
        let dense = model.dense_layers();
        for (sums, (w, bias)) in dense_sum.iter_mut().zip(dense) {
            t = t.matmul(w)?.broadcast_add(bias)?.relu()?;
            let m = t.sum(0)?.to_vec1::<f32>()?;
            for (s, v) in sums.iter_mut().zip(m) {
                *s += v as f64;
            }
        }
    }
    let scale = |v: &mut Vec<Vec<f64>>| {
        for l in v.iter_mut() {
            for s in l.iter_mut() {
                *s /= n.max(1) as f64;
            }
        }
    };
    scale(&mut conv_sum);
    scale(&mut dense_sum);
    Ok((conv_sum, dense_sum))
}

/// The conv blocks (their widths, empty for none) and kernel of a model that structured
/// pruning can cut: a stack of same-padded conv + ReLU + 2×2 max-pool blocks, then dense layers
/// (the families whose [`crate::models::Supports::prune`] is set; they have a fused plan).
fn stack(model: &Model) -> Result<(Vec<usize>, usize)> {
    if !model.spec.supports().prune {
        return Err(Error::Input(format!(
            "structured pruning cuts MLPs and LeNet-style CNNs, not {}",
            model.spec.describe()
        )));
    }
    let plan = crate::models::fused::plan(model)
        .ok_or_else(|| Error::Other(format!("{} has no layer plan", model.spec.describe())))?;
    Ok(plan
        .conv
        .map(|c| (c.channels, c.kernel))
        .unwrap_or((Vec::new(), 1)))
}

/// The indices of the `keep` highest-scoring units, in their original order.
fn top_units(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = idx.into_iter().take(keep).collect();
    kept.sort_unstable();
    kept
}

/// Removes the `fraction` lowest-ranked hidden units of every dense hidden layer and channels
/// of every conv block (at least one survives in each). `x` (normalised training samples) is
/// needed for [`Rank::Activation`]. Returns the smaller model.
pub fn structured(model: &Model, fraction: f64, rank: Rank, x: Option<&[f32]>) -> Result<Model> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Input(format!(
            "sparsity: expected a fraction in [0, 1), got {fraction}"
        )));
    }
    let spec = &model.spec;
    let w = model.weights()?;
    let shapes: Vec<Vec<usize>> = model
        .params
        .iter()
        .map(|(_, v)| v.dims().to_vec())
        .collect();
    // The layers' parameter positions, from the architecture.
    let layers = spec.layers();
    let conv: Vec<_> = layers
        .iter()
        .filter(|l| l.kind == ParamKind::ConvWeight)
        .collect();
    let dense: Vec<_> = layers
        .iter()
        .filter(|l| l.kind == ParamKind::DenseWeight)
        .collect();
    let blocks = conv.len();
    let acts = match rank {
        Rank::Activation => {
            let x = x.ok_or_else(|| {
                Error::Input("rank = \"activation\" needs training samples".into())
            })?;
            if x.is_empty() {
                return Err(Error::Input(
                    "rank = \"activation\": zero training samples to measure activations on".into(),
                ));
            }
            Some(mean_activations(model, x)?)
        }
        Rank::WeightNorm => None,
    };
    let keep_n = |n: usize| (((n as f64) * (1.0 - fraction)).round() as usize).clamp(1, n);
    // Conv channels.
    let mut conv_keep: Vec<Vec<usize>> = Vec::new();
    for i in 0..blocks {
        let c = shapes[conv[i].weight][0];
        let per = w[conv[i].weight].len() / c;
        let scores: Vec<f64> = match &acts {
            Some((ca, _)) => ca[i].clone(),
            None => (0..c)
                .map(|o| {
                    w[conv[i].weight][o * per..(o + 1) * per]
                        .iter()
                        .map(|v| (*v as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect(),
        };
        conv_keep.push(top_units(&scores, keep_n(c)));
    }
    // Dense hidden units; dense weights are [in, out].
    let mut dense_keep: Vec<Vec<usize>> = Vec::new();
    for l in 0..spec.arch.hidden().len() {
        let (i_dim, o_dim) = (shapes[dense[l].weight][0], shapes[dense[l].weight][1]);
        let wl = &w[dense[l].weight];
        let scores: Vec<f64> = match &acts {
            Some((_, da)) => da[l].clone(),
            None => (0..o_dim)
                .map(|o| {
                    (0..i_dim)
                        .map(|i| (wl[i * o_dim + o] as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect(),
        };
        dense_keep.push(top_units(&scores, keep_n(o_dim)));
    }
    // The new spec.
    let new_channels: Vec<usize> = conv_keep.iter().map(|k| k.len()).collect();
    let new_hidden: Vec<usize> = dense_keep.iter().map(|k| k.len()).collect();
    let arch = spec
        .arch
        .family()
        .resized(&new_channels, &new_hidden)
        .ok_or_else(|| Error::Other(format!("{} cannot be resized", spec.describe())))?;
    let new_spec = ModelSpec {
        arch,
        input_shape: spec.input_shape.clone(),
        outputs: spec.outputs,
    };
    let new_shapes = new_spec.param_shapes()?;
    let mut new_w: Vec<Vec<f32>> = Vec::new();
    // Conv blocks: rows (output channels) kept by this block, input channels by the previous.
    for i in 0..blocks {
        let s = &shapes[conv[i].weight];
        let (c_in, kk) = (s[1], s[2] * s[3]);
        let in_keep: Vec<usize> = if i == 0 {
            (0..c_in).collect()
        } else {
            conv_keep[i - 1].clone()
        };
        let mut v = Vec::new();
        for &o in &conv_keep[i] {
            for &ci in &in_keep {
                let base = (o * c_in + ci) * kk;
                v.extend_from_slice(&w[conv[i].weight][base..base + kk]);
            }
        }
        new_w.push(v);
        new_w.push(conv_keep[i].iter().map(|&o| w[conv[i].bias][o]).collect());
    }
    // Dense layers: rows kept by the previous layer (for the first, the flattened conv
    // features of kept channels), columns kept by this layer (all for the output layer).
    let layers = spec.arch.hidden().len() + 1;
    for l in 0..layers {
        let s = &shapes[dense[l].weight];
        let (i_dim, o_dim) = (s[0], s[1]);
        let rows: Vec<usize> = if l == 0 {
            if blocks > 0 {
                // Each block halves the height and width (2×2 max-pooling, floor).
                let s = &spec.input_shape;
                let hw = (s[1] >> blocks) * (s[2] >> blocks);
                conv_keep[blocks - 1]
                    .iter()
                    .flat_map(|&c| (c * hw..(c + 1) * hw).collect::<Vec<_>>())
                    .collect()
            } else {
                (0..i_dim).collect()
            }
        } else {
            dense_keep[l - 1].clone()
        };
        let cols: Vec<usize> = if l + 1 < layers {
            dense_keep[l].clone()
        } else {
            (0..o_dim).collect()
        };
        let wl = &w[dense[l].weight];
        let mut v = Vec::with_capacity(rows.len() * cols.len());
        for &r in &rows {
            for &c in &cols {
                v.push(wl[r * o_dim + c]);
            }
        }
        new_w.push(v);
        new_w.push(cols.iter().map(|&c| w[dense[l].bias][c]).collect());
    }
    let mut params = Vec::new();
    for ((name, shape), v) in new_shapes.into_iter().zip(new_w) {
        let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
        params.push((name, Var::from_tensor(&t)?));
    }
    Ok(Model {
        spec: new_spec,
        params,
    })
}

/// Gradual magnitude pruning as a hook on the training loop (Zhu & Gupta 2017): at the start of
/// each epoch the masks are recomputed at the cubic schedule's sparsity and applied, after every
/// optimizer step they are re-applied, and at the end the final sparsity is enforced on the kept
/// weights (the kept epoch may precede the end of the ramp).
pub struct GradualPruning {
    /// Sparsity reached at the end of the ramp.
    pub sparsity: f64,
    /// Global or per-layer threshold.
    pub scope: Scope,
    /// Epochs over which sparsity rises along the cubic schedule (then held).
    pub ramp_epochs: usize,
    /// The current epoch's masks.
    pub masks: Option<Masks>,
}

impl StepHook for GradualPruning {
    fn start_epoch(&mut self, model: &Model, epoch: usize) -> Result<()> {
        let ramp = self.ramp_epochs.max(1);
        let s = cubic_sparsity(self.sparsity, (epoch + 1).min(ramp), ramp);
        let m = Masks::magnitude(model, s, self.scope)?;
        m.apply(model)?;
        self.masks = Some(m);
        Ok(())
    }

    fn after_step(&mut self, model: &Model) -> Result<()> {
        match &self.masks {
            Some(m) => m.apply(model),
            None => Ok(()),
        }
    }

    fn finish(&mut self, model: &Model) -> Result<()> {
        Masks::magnitude(model, self.sparsity, self.scope)?.apply(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_schedule_reaches_the_target() {
        assert_eq!(cubic_sparsity(0.8, 0, 4), 0.0);
        assert!((cubic_sparsity(0.8, 2, 4) - 0.7).abs() < 1e-12);
        assert_eq!(cubic_sparsity(0.8, 4, 4), 0.8);
        assert_eq!(cubic_sparsity(0.8, 9, 4), 0.8);
        let s: Vec<f64> = (0..=5).map(|e| cubic_sparsity(0.9, e, 5)).collect();
        assert!(s.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn top_units_keeps_order() {
        assert_eq!(top_units(&[0.1, 3.0, 2.0, 0.5], 2), vec![1, 2]);
        assert_eq!(top_units(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }
}
