//! Knowledge distillation with temperature-softened targets.
//!
//! Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
//! arXiv:1503.02531:
//!
//! `L = α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(y, z_s)`
//!
//! The T² factor keeps the soft-target gradients on the same scale as the hard-target ones
//! when T changes (their magnitude scales as 1/T²). The KL is averaged over the batch
//! (PyTorch's `reduction="batchmean"`). For regression the soft target is the teacher's output:
//! `L = α · MSE(z_s, z_t) + (1 − α) · MSE(z_s, y)`.

use super::supervised::{cross_entropy, mse};
use crate::error::Result;
use candle_core::{Tensor, D};

/// Softened teacher probabilities `softmax(z/T)` and their logarithms, row-major.
pub fn soft_targets(
    teacher_logits: &[f32],
    classes: usize,
    temperature: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut p = Vec::with_capacity(teacher_logits.len());
    let mut logp = Vec::with_capacity(teacher_logits.len());
    for row in teacher_logits.chunks_exact(classes) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row
            .iter()
            .map(|&z| (((z - max) / temperature) as f64).exp())
            .sum();
        let log_sum = sum.ln();
        for &z in row {
            let lp = ((z - max) / temperature) as f64 - log_sum;
            logp.push(lp as f32);
            p.push(lp.exp() as f32);
        }
    }
    (p, logp)
}

/// The soft-target term alone: `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`, averaged over the
/// batch, for student logits `[b, c]` and the teacher's logits for the same samples.
pub fn soft_target_loss(
    student_logits: &Tensor,
    teacher_logits: &[f32],
    temperature: f32,
) -> Result<Tensor> {
    let (b, c) = student_logits.dims2()?;
    let (p, logp) = soft_targets(teacher_logits, c, temperature);
    let p = Tensor::from_vec(p, (b, c), student_logits.device())?;
    let logp = Tensor::from_vec(logp, (b, c), student_logits.device())?;
    let log_q = candle_nn::ops::log_softmax(&(student_logits / temperature as f64)?, D::Minus1)?;
    // KL = Σ p (log p − log q), element-wise as PyTorch's kl_div, averaged over the batch.
    let kl = (p.mul(&logp.sub(&log_q)?)?.sum_all()? / b as f64)?;
    Ok((kl * (temperature as f64).powi(2))?)
}

/// Hinton's distillation loss for classification:
/// `α · T² · KL + (1 − α) · CE`.
///
/// `student_logits` `[b, c]`; `teacher_logits` the teacher's raw logits for the same `b`
/// samples (row-major); `labels` `[b]` u32.
pub fn kd_loss_classification(
    student_logits: &Tensor,
    teacher_logits: &[f32],
    labels: &Tensor,
    temperature: f32,
    alpha: f32,
) -> Result<Tensor> {
    let soft = (soft_target_loss(student_logits, teacher_logits, temperature)? * alpha as f64)?;
    let hard = (cross_entropy(student_logits, labels)? * (1.0 - alpha as f64))?;
    Ok((soft + hard)?)
}

/// The distillation loss for regression: `α·MSE(student, teacher) + (1−α)·MSE(student, y)`.
pub fn kd_loss_regression(
    student: &Tensor,
    teacher: &Tensor,
    target: &Tensor,
    alpha: f32,
) -> Result<Tensor> {
    let a = (mse(student, teacher)? * alpha as f64)?;
    let b = (mse(student, target)? * (1.0 - alpha as f64))?;
    Ok((a + b)?)
}
