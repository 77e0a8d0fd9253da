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
use crate::kernels::softmax::log_sum_exp;
use candle_core::{Tensor, D};

/// Softened teacher probabilities `softmax(z/T)` and their logarithms, row-major.
pub fn soft_targets(
    teacher_logits: &[f32],
    classes: usize,
    temperature: f32,
) -> (Vec<f32>, Vec<f32>) {
    crate::kernels::softmax::softmax_and_log_rows(teacher_logits, classes, temperature)
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

/// The soft-target term for one row, the fast path's form of [`soft_target_loss`]: returns
/// `weight · T² · KL(softmax(t/T) ‖ softmax(z/T))` and adds its gradient
/// `weight · T · (softmax(z/T) − softmax(t/T)) · scale` to `grad`. The teacher's distribution is
/// computed in f64 (as [`soft_targets`]), the student's in f32.
#[inline]
pub fn kd_row(
    z: &[f32],
    teacher: &[f32],
    temperature: f32,
    weight: f32,
    scale: f32,
    grad: &mut [f32],
) -> f64 {
    let t = temperature;
    let (tmax, tlse) = log_sum_exp::<f64>(teacher, t, None);
    let (max, slse) = log_sum_exp::<f32>(z, t, None);
    let mut kl = 0f64;
    for c in 0..z.len() {
        let logp = (((teacher[c] - tmax) / t) as f64 - tlse) as f32;
        let p = logp.exp();
        let logq = (z[c] - max) / t - slse;
        let q = logq.exp();
        kl += (p * (logp - logq)) as f64;
        grad[c] += weight * t * (q - p) * scale;
    }
    (weight * t * t) as f64 * kl
}

/// The teacher's side of one row for [`newton_row`]: its probabilities at T, α and T.
#[derive(Debug, Clone, Copy)]
pub struct SoftRow<'a> {
    /// `softmax(t / T)` of the teacher's logits for this row.
    pub q: &'a [f32],
    /// α, the weight of the soft term.
    pub alpha: f32,
    /// T.
    pub temperature: f32,
}

/// Hinton's objective of one row in the form Newton boosting takes it (trees fit the
/// gradient over the Hessian): `(1 − α)·CE(y, z) + α·T²·KL(q ‖ softmax(z/T))` with the label
/// term weighted by `label_weight`. Fills `p = softmax(z)` and, with a soft term,
/// `pt = softmax(z/T)`, and returns the row's value; [`newton_grad_hess`] then gives each
/// class's gradient and Hessian from them.
pub fn newton_row(
    z: &[f32],
    y: usize,
    label_weight: f32,
    soft: Option<SoftRow>,
    p: &mut [f32],
    pt: &mut [f32],
) -> f64 {
    crate::kernels::softmax::softmax_into(z, 1.0, p);
    let mut value = label_weight as f64 * super::supervised::row_cross_entropy(z, y);
    if let Some(s) = soft {
        crate::kernels::softmax::softmax_into(z, s.temperature, pt);
        let kl: f64 =
            s.q.iter()
                .zip(pt.iter())
                .filter(|(&qv, _)| qv > 0.0)
                .map(|(&qv, &pv)| qv as f64 * ((qv as f64).ln() - (pv.max(1e-30) as f64).ln()))
                .sum();
        value += (s.alpha * s.temperature * s.temperature) as f64 * kl;
    }
    value
}

/// The gradient and diagonal Hessian of [`newton_row`]'s objective with respect to logit `c`:
/// `g = w·(p_c − [c = y]) + α·T·(pt_c − q_c)`, `h = w·p_c(1 − p_c) + α·pt_c(1 − pt_c)` (the
/// soft term's T² cancels one 1/T of each derivative of `softmax(z/T)`).
#[inline]
pub fn newton_grad_hess(
    c: usize,
    y: usize,
    label_weight: f32,
    p: &[f32],
    soft: Option<SoftRow>,
    pt: &[f32],
) -> (f32, f32) {
    let yc = if c == y { 1.0 } else { 0.0 };
    let mut g = label_weight * (p[c] - yc);
    let mut h = label_weight * p[c] * (1.0 - p[c]);
    if let Some(s) = soft {
        g += s.alpha * s.temperature * (pt[c] - s.q[c]);
        h += s.alpha * pt[c] * (1.0 - pt[c]);
    }
    (g, h)
}
