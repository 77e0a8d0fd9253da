//! DIST — Huang, You, Wang, Qian & Xu (2022), "Knowledge Distillation from A Stronger Teacher",
//! NeurIPS (arXiv:2205.10536).
//!
//! Instead of matching probabilities exactly (KL), the student matches the teacher's *relations*:
//! the Pearson correlation between student and teacher probabilities, per sample across classes
//! (inter-class relation) and per class across the batch (intra-class relation):
//!
//! `DIST = τ² · (β · (1 − mean_i ρ(Y_i, P_i)) + γ · (1 − mean_j ρ(Y_{:,j}, P_{:,j})))`
//!
//! with `Y = softmax(z_s/τ)`, `P = softmax(z_t/τ)` and `ρ(a, b) = cos(a − ā, b − b̄)` with the
//! authors' ε = 1e-8 in the denominator. Their settings: β = γ = 1, τ = 1 (ImageNet);
//! β = γ = 2, τ = 4 (CIFAR-100). The intra-class term depends on the whole batch, so the loss is
//! computed per batch, not per row.

use crate::error::Result;
use crate::kernels::softmax::softmax_into;
use candle_core::{Tensor, D};

/// Default weight of the inter-class relation (β in the paper).
pub const DEFAULT_INTER_WEIGHT: f32 = 1.0;
/// Default weight of the intra-class relation (γ in the paper).
pub const DEFAULT_INTRA_WEIGHT: f32 = 1.0;
const EPS: f64 = 1e-8;

/// `1 − ρ(a, b)` over the vectors `a[i·stride]`, `b[i·stride]` (i < n), and `∂(1 − ρ)/∂a` into
/// `ga` (same layout), times `scale`.
fn one_minus_pearson(
    a: &[f64],
    b: &[f64],
    n: usize,
    stride: usize,
    scale: f64,
    ga: &mut [f64],
) -> f64 {
    let at = |i: usize| a[i * stride];
    let bt = |i: usize| b[i * stride];
    let (ma, mb) = (
        (0..n).map(at).sum::<f64>() / n as f64,
        (0..n).map(bt).sum::<f64>() / n as f64,
    );
    let (mut uv, mut uu, mut vv) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let (u, v) = (at(i) - ma, bt(i) - mb);
        uv += u * v;
        uu += u * u;
        vv += v * v;
    }
    let (nu, nv) = (uu.sqrt(), vv.sqrt());
    let den = nu * nv + EPS;
    let rho = uv / den;
    // ∂ρ/∂u_i = v_i/den − uv · nv · u_i / (nu · den²); then through the centring (subtract the
    // mean of the derivative), negated for 1 − ρ.
    let mut du = vec![0f64; n];
    for (i, d) in du.iter_mut().enumerate() {
        let (u, v) = (at(i) - ma, bt(i) - mb);
        *d = v / den
            - if nu > 0.0 {
                uv * nv * u / (nu * den * den)
            } else {
                0.0
            };
    }
    let mean = du.iter().sum::<f64>() / n as f64;
    for (i, d) in du.iter().enumerate() {
        ga[i * stride] -= scale * (d - mean);
    }
    1.0 - rho
}

/// DIST for a batch (the fast path): `z` the student's logits `[rows, classes]`, `teacher` the
/// teacher's logits for the same rows. Returns `weight · DIST` and adds its gradient with respect
/// to `z` to `grad`.
#[allow(clippy::too_many_arguments)]
pub fn dist_batch(
    z: &[f32],
    teacher: &[f32],
    classes: usize,
    temperature: f32,
    inter_weight: f32,
    intra_weight: f32,
    weight: f32,
    grad: &mut [f32],
) -> f64 {
    let c = classes;
    let rows = z.len() / c.max(1);
    if rows == 0 {
        return 0.0;
    }
    let tau2 = (temperature as f64).powi(2);
    let probs = |x: &[f32]| -> Vec<f64> {
        let mut row = vec![0f32; c];
        let mut out = Vec::with_capacity(x.len());
        for r in x.chunks_exact(c) {
            softmax_into(r, temperature, &mut row);
            out.extend(row.iter().map(|&v| v as f64));
        }
        out
    };
    let (y, p) = (probs(z), probs(teacher));
    let mut gy = vec![0f64; y.len()];
    let (wi, wc) = (
        weight as f64 * inter_weight as f64 * tau2,
        weight as f64 * intra_weight as f64 * tau2,
    );
    let mut inter = 0f64;
    if wi != 0.0 {
        for r in 0..rows {
            let s = r * c..(r + 1) * c;
            inter += one_minus_pearson(
                &y[s.clone()],
                &p[s.clone()],
                c,
                1,
                wi / rows as f64,
                &mut gy[s],
            );
        }
    }
    let mut intra = 0f64;
    if wc != 0.0 {
        for j in 0..c {
            intra += one_minus_pearson(&y[j..], &p[j..], rows, c, wc / c as f64, &mut gy[j..]);
        }
    }
    // Through the softmax: ∂/∂z_k = (1/τ) · y_k · (g_k − Σ_m g_m y_m).
    for ((g, yr), gr) in grad
        .chunks_exact_mut(c)
        .zip(y.chunks_exact(c))
        .zip(gy.chunks_exact(c))
    {
        let dot: f64 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for k in 0..c {
            g[k] += (yr[k] * (gr[k] - dot) / temperature as f64) as f32;
        }
    }
    wi * inter / rows as f64 + wc * intra / c as f64
}

/// DIST with candle autograd, the reference the fast path is tested against: the authors'
/// `DIST(beta, gamma, tau)(z_s, z_t)`.
pub fn dist_loss(
    student_logits: &Tensor,
    teacher_logits: &[f32],
    temperature: f32,
    inter_weight: f32,
    intra_weight: f32,
) -> Result<Tensor> {
    let (b, c) = student_logits.dims2()?;
    let t = temperature as f64;
    let teacher = Tensor::from_slice(teacher_logits, (b, c), student_logits.device())?;
    let ys = candle_nn::ops::softmax(&(student_logits / t)?, D::Minus1)?;
    let yt = candle_nn::ops::softmax(&(&teacher / t)?, D::Minus1)?;
    // 1 − mean over rows of the Pearson correlation along each row.
    fn relation(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let u = a.broadcast_sub(&a.mean_keepdim(1)?)?;
        let v = b.broadcast_sub(&b.mean_keepdim(1)?)?;
        let num = u.mul(&v)?.sum(1)?;
        let den = ((u.sqr()?.sum(1)?.sqrt()? * v.sqr()?.sum(1)?.sqrt()?)? + EPS)?;
        Ok((1.0 - num.div(&den)?.mean_all()?)?)
    }
    let inter = relation(&ys, &yt)?;
    let intra = relation(&ys.t()?.contiguous()?, &yt.t()?.contiguous()?)?;
    Ok(((inter * (inter_weight as f64 * t * t))? + (intra * (intra_weight as f64 * t * t))?)?)
}
