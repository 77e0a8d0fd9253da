//! Decoupled knowledge distillation — Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge
//! Distillation", CVPR (arXiv:2203.08679).
//!
//! Hinton's KL term splits into a target-class part (TCKD: the binary distribution
//! `[p_gt, 1 − p_gt]`) and a non-target part (NCKD: the distribution over the other classes,
//! renormalised), which the classic loss couples by the factor `1 − p_gt`. DKD weighs them
//! apart:
//!
//! `DKD = T² · (α · KL(b_t ‖ b_s) + β · KL(p̂_t ‖ p̂_s))`, averaged over the batch,
//!
//! with `b = [p_gt, 1 − p_gt]` and `p̂` the softmax at temperature T over the non-target classes.
//! The paper's settings: α = 1, β = 8, T = 4 (CIFAR-100), β = 0.5 (ImageNet). The form below is
//! the authors' `dkd_loss` (mdistiller), whose `−1000 · gt_mask` trick we replace by leaving the
//! target class out of the log-sum-exp, which is the same up to `e^−1000`.

use crate::error::Result;
use crate::kernels::softmax::log_sum_exp;
use candle_core::{DType, Tensor, D};

/// Default weight of the target-class term (α in the paper).
pub const DEFAULT_TARGET_WEIGHT: f32 = 1.0;
/// Default weight of the non-target term (β in the paper, CIFAR-100 setting).
pub const DEFAULT_NON_TARGET_WEIGHT: f32 = 8.0;

/// DKD for one row (the fast path): returns `weight · DKD_row` and adds its gradient with
/// respect to the student's logits `z`, times `scale` (1/batch), to `grad`.
///
/// With `s = z/T`, `q = softmax(s)`, `q̂` the non-target renormalisation and `g` the target:
/// `∂TCKD/∂s_g = T² (q_g − p_g)`, `∂TCKD/∂s_k = T² q̂_k (p_g − q_g)` and
/// `∂NCKD/∂s_k = T² (q̂_k − p̂_k)` for `k ≠ g`; `∂/∂z = ∂/∂s / T`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dkd_row(
    z: &[f32],
    teacher: &[f32],
    target: usize,
    temperature: f32,
    target_weight: f32,
    non_target_weight: f32,
    weight: f32,
    scale: f32,
    grad: &mut [f32],
) -> f64 {
    let t = temperature as f64;
    let g = target;
    // Log-probabilities of the target class, of "any other class" and, per class, within the
    // non-target classes — teacher (p) and student (q), all in f64.
    let (tmax, tl) = log_sum_exp::<f64>(teacher, temperature, None);
    let (_, tl_nt) = log_sum_exp::<f64>(teacher, temperature, Some(g));
    let (smax, sl) = log_sum_exp::<f64>(z, temperature, None);
    let (_, sl_nt) = log_sum_exp::<f64>(z, temperature, Some(g));
    let s = |v: f32, m: f32| ((v - m) / temperature) as f64;
    let (lp_g, lq_g) = (s(teacher[g], tmax) - tl, s(z[g], smax) - sl);
    let (lp_o, lq_o) = (tl_nt - tl, sl_nt - sl);
    let (p_g, q_g) = (lp_g.exp(), lq_g.exp());
    let tckd = p_g * (lp_g - lq_g) + lp_o.exp() * (lp_o - lq_o);
    let mut nckd = 0f64;
    let a = target_weight as f64;
    let b = non_target_weight as f64;
    // d(weight · T² · (α TCKD + β NCKD)) / dz = weight · T · (α ∂TCKD/∂s + β ∂NCKD/∂s) / T².
    let k = weight as f64 * t * scale as f64;
    for c in 0..z.len() {
        if c == g {
            grad[c] += (k * a * (q_g - p_g)) as f32;
            continue;
        }
        let lp_hat = s(teacher[c], tmax) - tl_nt;
        let lq_hat = s(z[c], smax) - sl_nt;
        let (p_hat, q_hat) = (lp_hat.exp(), lq_hat.exp());
        nckd += p_hat * (lp_hat - lq_hat);
        grad[c] += (k * (a * q_hat * (p_g - q_g) + b * (q_hat - p_hat))) as f32;
    }
    weight as f64 * t * t * (a * tckd + b * nckd)
}

/// DKD with candle autograd, the reference the fast path is tested against: the authors'
/// `dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature)`.
pub fn dkd_loss(
    student_logits: &Tensor,
    teacher_logits: &[f32],
    labels: &Tensor,
    temperature: f32,
    target_weight: f32,
    non_target_weight: f32,
) -> Result<Tensor> {
    let (b, c) = student_logits.dims2()?;
    let dev = student_logits.device();
    let t = temperature as f64;
    let gt = labels
        .unsqueeze(1)?
        .broadcast_as((b, c))?
        .eq(&Tensor::arange(0u32, c as u32, dev)?.broadcast_as((b, c))?)?
        .to_dtype(DType::F32)?;
    let other = (1.0 - &gt)?;
    let teacher = Tensor::from_slice(teacher_logits, (b, c), dev)?;
    let ps = candle_nn::ops::softmax(&(student_logits / t)?, D::Minus1)?;
    let pt = candle_nn::ops::softmax(&(&teacher / t)?, D::Minus1)?;
    let cat = |p: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(
            &[p.mul(&gt)?.sum_keepdim(1)?, p.mul(&other)?.sum_keepdim(1)?],
            1,
        )?)
    };
    let (bs, bt) = (cat(&ps)?, cat(&pt)?);
    let kl = |p: &Tensor, log_p: &Tensor, log_q: &Tensor| -> Result<Tensor> {
        Ok((p.mul(&log_p.sub(log_q)?)?.sum_all()? * (t * t / b as f64))?)
    };
    let tckd = kl(&bt, &bt.log()?, &bs.log()?)?;
    let masked = |x: &Tensor| -> Result<Tensor> { Ok(((x / t)? - (&gt * 1000.0)?)?) };
    let pt2 = candle_nn::ops::softmax(&masked(&teacher)?, D::Minus1)?;
    let log_pt2 = candle_nn::ops::log_softmax(&masked(&teacher)?, D::Minus1)?;
    let log_ps2 = candle_nn::ops::log_softmax(&masked(student_logits)?, D::Minus1)?;
    let nckd = kl(&pt2, &log_pt2, &log_ps2)?;
    Ok(((tckd * target_weight as f64)? + (nckd * non_target_weight as f64)?)?)
}
