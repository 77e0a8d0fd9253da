//! Supervised losses: cross-entropy on class labels and mean squared error on targets.

use crate::error::Result;
use candle_core::{Tensor, D};

/// The class index of a sample whose label is missing (`data::MISSING` re-exports it): the
/// label term skips it, soft-target terms still read the sample, scores leave it out.
pub const MISSING: u32 = u32::MAX;

/// Mean cross-entropy of `logits` `[b, c]` against class indices `labels` `[b]` (u32),
/// i.e. PyTorch's `F.cross_entropy(logits, labels)`.
///
/// Rows whose label is [`MISSING`] are skipped: the mean is over the labelled
/// rows (0 when none is), as `F.cross_entropy(logits, labels, ignore_index=-100)`:
/// ```python
/// z = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.0, 0.0, -1.0]])
/// F.cross_entropy(z, torch.tensor([1, -100, 0]), ignore_index=-100)  # 0.317107
/// ```
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let y = labels.to_vec1::<u32>()?;
    if !y.contains(&MISSING) {
        let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
        return Ok(picked.mean_all()?.neg()?);
    }
    let n = y.iter().filter(|&&l| l != MISSING).count();
    cross_entropy_sum(logits, labels, 1.0 / n.max(1) as f32)
}

/// `scale ·` the sum of the cross-entropies of the labelled rows (those not [`MISSING`]): a
/// slice of a batch whose mean is taken over the labelled rows of the whole batch.
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor, scale: f32) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let y = labels.to_vec1::<u32>()?;
    let idx: Vec<u32> = y
        .iter()
        .map(|&l| if l == MISSING { 0 } else { l })
        .collect();
    let w: Vec<f32> = y
        .iter()
        .map(|&l| if l == MISSING { 0.0 } else { scale })
        .collect();
    let dev = logits.device();
    let idx = Tensor::from_vec(idx, (y.len(), 1), dev)?;
    let w = Tensor::from_vec(w, (y.len(), 1), dev)?;
    let picked = logp.gather(&idx, 1)?;
    Ok((picked * w)?.sum_all()?.neg()?)
}

/// Mean squared error between `pred` and `target` of the same shape (`F.mse_loss`).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(pred.sub(target)?.sqr()?.mean_all()?)
}

/// Cross-entropy of one row of logits `z` against class `y`, weighted by `weight`: returns the
/// row's loss and adds `weight · (softmax(z) − onehot(y)) · scale` to `grad` (`scale` = 1/batch,
/// for the batch mean). The fast path's form of [`cross_entropy`].
#[inline]
pub fn cross_entropy_row(z: &[f32], y: usize, weight: f32, scale: f32, grad: &mut [f32]) -> f64 {
    let (max, lse) = crate::kernels::softmax::log_sum_exp::<f32>(z, 1.0, None);
    for (c, (g, &v)) in grad.iter_mut().zip(z).enumerate() {
        let p = (v - max - lse).exp();
        let t = if c == y { 1.0 } else { 0.0 };
        *g += weight * (p - t) * scale;
    }
    weight as f64 * (lse - (z[y] - max)) as f64
}

/// Squared error of one output against `target`, weighted: returns the loss and adds its
/// gradient `weight · 2 (z − target) · scale`. The fast path's form of [`mse`].
#[inline]
pub fn squared_error(z: f32, target: f32, weight: f32, scale: f32, grad: &mut f32) -> f64 {
    let d = z - target;
    *grad += weight * 2.0 * d * scale;
    weight as f64 * (d * d) as f64
}

/// Cross-entropy of one row of logits against class `y`, in f64: `log Σ e^z − z_y` (the
/// crate's one such value: evaluation, boosting and its validation use it).
#[inline]
pub fn row_cross_entropy(z: &[f32], y: usize) -> f64 {
    let (max, lse) = crate::kernels::softmax::log_sum_exp::<f64>(z, 1.0, None);
    lse + max as f64 - z[y] as f64
}
