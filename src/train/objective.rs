//! The objective's gradient with respect to the logits for the autograd-free training step:
//! the label loss (cross-entropy or MSE) and every soft-target term, in one pass over the logits.
//! It computes exactly what the autograd path's loss tensors give (tested in
//! `models::fused::tests`).

use crate::error::Result;
use crate::losses::{self, SoftLoss};
use crate::models::fused::Workspace;

/// A soft-target term of the objective for one batch.
pub struct SoftBatch<'a> {
    /// Targets for the batch rows: teacher logits (classification) or values (regression).
    pub targets: &'a [f32],
    /// Temperature T (classification).
    pub temperature: f32,
    /// Weight of the term.
    pub weight: f32,
    /// The soft-target loss (classification).
    pub loss: SoftLoss,
}

/// Labels of one batch.
pub enum BatchLabels<'a> {
    /// Class indices.
    Classes(&'a [u32]),
    /// Regression targets (standardised).
    Values(&'a [f32]),
    /// A mixed batch (mixup, CutMix): each row's own class and its partner's, weighted by λ
    /// and 1 − λ in the label term; soft-target terms that read labels see the own class.
    Mixed {
        /// Each row's own class.
        own: &'a [u32],
        /// Each row's partner's class.
        partner: &'a [u32],
        /// The own class's weight.
        lambda: f32,
    },
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
        let dz = &mut self.dz;
        dz.clear();
        dz.resize(z.len(), 0.0);
        let inv_b = 1.0 / rows.max(1) as f32;
        let mut loss = 0f64;
        // One pass per term; each adds its gradient into dz in term order.
        let (labels, mixed) = match labels {
            BatchLabels::Mixed {
                own,
                partner,
                lambda,
            } => (&BatchLabels::Classes(own), Some((*partner, *lambda))),
            l => (l, None),
        };
        match labels {
            BatchLabels::Classes(y) => {
                if let (Some((partner, lambda)), true) = (mixed, label_weight != 0.0) {
                    for (((zr, dr), &yi), &pi) in z
                        .chunks_exact(classes)
                        .zip(dz.chunks_exact_mut(classes))
                        .zip(y.iter())
                        .zip(partner)
                    {
                        loss += losses::supervised::cross_entropy_row(
                            zr,
                            yi as usize,
                            label_weight * lambda,
                            inv_b,
                            dr,
                        );
                        loss += losses::supervised::cross_entropy_row(
                            zr,
                            pi as usize,
                            label_weight * (1.0 - lambda),
                            inv_b,
                            dr,
                        );
                    }
                } else if label_weight != 0.0 {
                    for ((zr, dr), &yi) in z
                        .chunks_exact(classes)
                        .zip(dz.chunks_exact_mut(classes))
                        .zip(y.iter())
                    {
                        loss += losses::supervised::cross_entropy_row(
                            zr,
                            yi as usize,
                            label_weight,
                            inv_b,
                            dr,
                        );
                    }
                }
                for s in soft.iter().filter(|s| s.weight != 0.0) {
                    loss += s.loss.value_and_grad(
                        z,
                        s.targets,
                        y,
                        classes,
                        s.temperature,
                        s.weight,
                        inv_b,
                        dz,
                    );
                }
            }
            BatchLabels::Mixed { .. } => unreachable!("unpacked above"),
            BatchLabels::Values(y) => {
                if label_weight != 0.0 {
                    for ((&zr, dr), &yr) in z.iter().zip(dz.iter_mut()).zip(y.iter()) {
                        loss += losses::supervised::squared_error(zr, yr, label_weight, inv_b, dr);
                    }
                }
                for s in soft {
                    for ((&zr, dr), &tr) in z.iter().zip(dz.iter_mut()).zip(s.targets) {
                        loss += losses::supervised::squared_error(zr, tr, s.weight, inv_b, dr);
                    }
                }
            }
        }
        Ok(loss / rows.max(1) as f64)
    }
}
