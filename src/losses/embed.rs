//! Embedding distillation: the student's output vector is pulled onto the teacher's sentence
//! embedding, as Model2Vec's and DistilBERT's cosine term and Sentence-BERT's multilingual
//! distillation (Reimers & Gurevych 2020, MSE) do. No labels and no temperature.
//!
//! - cosine: `mean_i (1 − cos(z_i, t_i))` (PyTorch:
//!   `F.cosine_embedding_loss(z, t, torch.ones(b))`, or `(1 - F.cosine_similarity(z, t)).mean()`);
//! - MSE: `mean_{i,k} (z_ik − t_ik)²` (PyTorch: `F.mse_loss(z, t)`).

use crate::error::Result;
use candle_core::{Tensor, D};

/// Smallest norm used in the cosine's denominator (PyTorch's `eps = 1e-8`).
const EPS: f32 = 1e-8;

/// `weight · (1 − cos(z, t))` for one row, with its gradient (times `scale`) added to `grad`.
pub fn cosine_row(z: &[f32], t: &[f32], weight: f32, scale: f32, grad: &mut [f32]) -> f64 {
    let (mut zz, mut tt, mut zt) = (0f64, 0f64, 0f64);
    for (&a, &b) in z.iter().zip(t) {
        zz += (a as f64) * (a as f64);
        tt += (b as f64) * (b as f64);
        zt += (a as f64) * (b as f64);
    }
    let nz = zz.sqrt().max(EPS as f64);
    let nt = tt.sqrt().max(EPS as f64);
    let cos = zt / (nz * nt);
    // d cos / d z = t / (|z||t|) − cos · z / |z|²
    let w = (weight * scale) as f64;
    for ((g, &a), &b) in grad.iter_mut().zip(z).zip(t) {
        *g += (-w * (b as f64 / (nz * nt) - cos * a as f64 / (nz * nz))) as f32;
    }
    weight as f64 * (1.0 - cos)
}

/// `weight · mean_k (z_k − t_k)²` for one row, with its gradient (times `scale`) added.
pub fn mse_row(z: &[f32], t: &[f32], weight: f32, scale: f32, grad: &mut [f32]) -> f64 {
    let d = z.len().max(1) as f64;
    let mut s = 0f64;
    for ((g, &a), &b) in grad.iter_mut().zip(z).zip(t) {
        let r = (a - b) as f64;
        s += r * r;
        *g += (2.0 * r / d * (weight * scale) as f64) as f32;
    }
    weight as f64 * s / d
}

/// The cosine term in candle autograd, mean over the batch.
pub fn cosine_loss(z: &Tensor, teacher: &[f32]) -> Result<Tensor> {
    let t = Tensor::from_slice(teacher, z.dims2()?, z.device())?;
    let dot = z.mul(&t)?.sum(D::Minus1)?;
    let nz = z.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(EPS, f32::MAX)?;
    let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(EPS, f32::MAX)?;
    let cos = dot.div(&nz.mul(&nt)?)?;
    Ok(cos.affine(-1.0, 1.0)?.mean_all()?)
}

/// The MSE term in candle autograd, mean over all elements.
pub fn mse_loss(z: &Tensor, teacher: &[f32]) -> Result<Tensor> {
    let t = Tensor::from_slice(teacher, z.dims2()?, z.device())?;
    Ok(z.sub(&t)?.sqr()?.mean_all()?)
}
