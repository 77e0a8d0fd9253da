//! The objective's gradient with respect to the logits for the autograd-free training step:
//! the label loss (cross-entropy or MSE) and every soft-target term, in one pass over the logits.
//! It computes exactly what the autograd path's loss tensors give (tested in
//! `models::fused::tests`).

use crate::error::Result;
use crate::models::fused::Workspace;

/// A soft-target term of the objective for one batch.
pub struct SoftBatch<'a> {
    /// Targets for the batch rows: teacher logits (classification) or values (regression).
    pub targets: &'a [f32],
    /// Temperature T (classification).
    pub temperature: f32,
    /// Weight of the term.
    pub weight: f32,
}

/// Labels of one batch.
pub enum BatchLabels<'a> {
    /// Class indices.
    Classes(&'a [u32]),
    /// Regression targets (standardised).
    Values(&'a [f32]),
}

impl Workspace {
    /// The objective's value and its gradient with respect to the logits (into `self.dz`).
    pub fn loss_and_grad(
        &mut self,
        labels: &BatchLabels,
        label_weight: f32,
        soft: &[SoftBatch],
        classes: usize,
    ) -> Result<f64> {
        let z = &self.logits;
        let rows = z.len() / classes.max(1);
        self.dz.clear();
        self.dz.resize(z.len(), 0.0);
        let inv_b = 1.0 / rows.max(1) as f32;
        let mut loss = 0f64;
        match labels {
            BatchLabels::Classes(y) => {
                let mut q = vec![0f32; classes];
                for (r, (zr, dr)) in z
                    .chunks_exact(classes)
                    .zip(self.dz.chunks_exact_mut(classes))
                    .enumerate()
                {
                    let max = zr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    if label_weight != 0.0 {
                        let sum: f32 = zr.iter().map(|&v| (v - max).exp()).sum();
                        let lse = sum.ln();
                        let yi = y[r] as usize;
                        loss += label_weight as f64 * (lse - (zr[yi] - max)) as f64;
                        for c in 0..classes {
                            let p = (zr[c] - max - lse).exp();
                            let t = if c == yi { 1.0 } else { 0.0 };
                            dr[c] += label_weight * (p - t) * inv_b;
                        }
                    }
                    for s in soft {
                        if s.weight == 0.0 {
                            continue;
                        }
                        let t = s.temperature;
                        let tr = &s.targets[r * classes..(r + 1) * classes];
                        // Teacher: p = softmax(t/T) (in f64, as the generic path).
                        let tmax = tr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        let tsum: f64 = tr.iter().map(|&v| (((v - tmax) / t) as f64).exp()).sum();
                        let tlse = tsum.ln();
                        // Student: log q = z/T − logsumexp(z/T).
                        let ssum: f32 = zr.iter().map(|&v| ((v - max) / t).exp()).sum();
                        let slse = ssum.ln();
                        let mut kl = 0f64;
                        for c in 0..classes {
                            let logp = (((tr[c] - tmax) / t) as f64 - tlse) as f32;
                            let p = logp.exp();
                            let logq = (zr[c] - max) / t - slse;
                            q[c] = logq.exp();
                            kl += (p * (logp - logq)) as f64;
                            dr[c] += s.weight * t * (q[c] - p) * inv_b;
                        }
                        loss += (s.weight * t * t) as f64 * kl;
                    }
                }
            }
            BatchLabels::Values(y) => {
                for (r, (&zr, dr)) in z.iter().zip(self.dz.iter_mut()).enumerate() {
                    if label_weight != 0.0 {
                        let d = zr - y[r];
                        loss += label_weight as f64 * (d * d) as f64;
                        *dr += label_weight * 2.0 * d * inv_b;
                    }
                    for s in soft {
                        let d = zr - s.targets[r];
                        loss += s.weight as f64 * (d * d) as f64;
                        *dr += s.weight * 2.0 * d * inv_b;
                    }
                }
            }
        }
        Ok(loss / rows.max(1) as f64)
    }
}
