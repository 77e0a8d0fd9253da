//! Supervised losses: cross-entropy on class labels and mean squared error on targets.

use crate::error::Result;
use candle_core::{Tensor, D};

/// Mean cross-entropy of `logits` `[b, c]` against class indices `labels` `[b]` (u32),
/// i.e. PyTorch's `F.cross_entropy(logits, labels)`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Mean squared error between `pred` and `target` of the same shape (`F.mse_loss`).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(pred.sub(target)?.sqr()?.mean_all()?)
}
