//! The objective's gradient with respect to the logits for the autograd-free training step:
//! the label loss (cross-entropy or MSE) and every soft-target term, in one pass over the logits.
//! It computes exactly what the autograd path's loss tensors give (tested in
//! `models::fused::tests`).

use crate::data::MISSING;
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
    /// Some labels are missing ([`MISSING`]): each label part is the mean over the labelled
    /// rows of the *whole* batch — under data parallelism a rank holds a slice, and
    /// `share[i]` = global batch rows / labelled rows of the global batch for part i (own,
    /// partner), so that the ranks' gradients, summed with weights b / full_b, equal one
    /// process's.
    Partial {
        /// Each row's own class, or `MISSING`.
        own: &'a [u32],
        /// A mixed batch's partner classes and λ.
        partner: Option<(&'a [u32], f32)>,
        /// Global rows over labelled global rows, per part.
        share: [f32; 2],
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
        let (labels, mixed, share) = match labels {
            BatchLabels::Mixed {
                own,
                partner,
                lambda,
            } => (&BatchLabels::Classes(own), Some((*partner, *lambda)), None),
            BatchLabels::Partial {
                own,
                partner,
                share,
            } => (&BatchLabels::Classes(own), *partner, Some(*share)),
            l => (l, None, None),
        };
        match labels {
            BatchLabels::Classes(y) => {
                // The label term is the mean over the rows that have a label (all of them,
                // unless some are `MISSING`), as PyTorch's `cross_entropy(ignore_index=…)`.
                let label_term = |y: &[u32], w: f32, share: Option<f32>, dz: &mut [f32]| -> f64 {
                    let n = y.iter().filter(|&&l| l != MISSING).count();
                    if w == 0.0 || n == 0 {
                        return 0.0;
                    }
                    let scale = match share {
                        Some(s) => inv_b * s,
                        None => 1.0 / n as f32,
                    };
                    let mut sum = 0f64;
                    for ((zr, dr), &yi) in z
                        .chunks_exact(classes)
                        .zip(dz.chunks_exact_mut(classes))
                        .zip(y.iter())
                        .filter(|(_, &yi)| yi != MISSING)
                    {
                        sum += losses::supervised::cross_entropy_row(zr, yi as usize, w, scale, dr);
                    }
                    // The caller divides the total by the batch's rows.
                    match share {
                        None => sum * rows as f64 / n as f64,
                        Some(_) => sum * scale as f64 * rows as f64,
                    }
                };
                let (s0, s1) = (share.map(|s| s[0]), share.map(|s| s[1]));
                match mixed {
                    Some((partner, lambda)) => {
                        loss += label_term(y, label_weight * lambda, s0, dz);
                        loss += label_term(partner, label_weight * (1.0 - lambda), s1, dz);
                    }
                    None => loss += label_term(y, label_weight, s0, dz),
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
            BatchLabels::Mixed { .. } | BatchLabels::Partial { .. } => {
                unreachable!("unpacked above")
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    /// A batch of three rows, the second without a label, under `0.4 · CE + 0.6 · T² · KL`
    /// (T = 2): the label term is the mean over the two labelled rows, the soft term over all
    /// three. Hand-computed in float64 (plain Python, the PyTorch expressions in comments):
    ///
    /// ```python
    /// # F.cross_entropy(z, y, ignore_index=-100) with y = [1, -100, 0]
    /// ce = sum(-log(softmax(z[i])[y[i]]) for i in (0, 2)) / 2
    /// # F.kl_div(F.log_softmax(z/T,1), F.softmax(t/T,1), reduction="batchmean")
    /// kl = sum(KL(softmax(t[i]/T) ‖ softmax(z[i]/T)) for i in range(3)) / 3
    /// loss = 0.4*ce + 0.6*T*T*kl          # 0.40016768135008685, then loss.backward()
    /// ```
    #[test]
    fn missing_labels_are_skipped_by_the_label_term_only() {
        let z = [1.0f32, 2.0, 0.5, 0.3, -1.0, 2.0, 2.0, 0.0, -1.0];
        let t = [2.0f32, 1.0, 0.1, 0.0, 0.5, 3.0, 1.0, 1.0, 1.0];
        let y = [1u32, MISSING, 0];
        let want_grad = [
            -0.03772793782,
            -0.003599553367,
            0.041327491188,
            0.044459902144,
            -0.021839366465,
            -0.022620535679,
            0.086838301248,
            -0.018004734408,
            -0.06883356684,
        ];
        let want = 0.40016768135008685;
        // The fast path.
        let mut ws = Workspace::default();
        ws.logits = z.to_vec();
        let soft = [SoftBatch {
            targets: &t,
            temperature: 2.0,
            weight: 0.6,
            loss: SoftLoss::Kd,
        }];
        let v = ws
            .loss_and_grad(&BatchLabels::Classes(&y), 0.4, &soft, 3)
            .unwrap();
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        for (a, b) in ws.dz.iter().zip(want_grad) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // The autograd path.
        let var = Var::from_tensor(&Tensor::from_slice(&z, (3, 3), &Device::Cpu).unwrap()).unwrap();
        let yt = Tensor::from_slice(&y, 3, &Device::Cpu).unwrap();
        let l = ((losses::cross_entropy(var.as_tensor(), &yt).unwrap() * 0.4).unwrap()
            + (losses::soft_target_loss(var.as_tensor(), &t, 2.0).unwrap() * 0.6).unwrap())
        .unwrap();
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        let g = l.backward().unwrap();
        let g = g.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        for (a, b) in g.to_vec1::<f32>().unwrap().iter().zip(want_grad) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Mixed rows (mixup): each part skips the rows whose label of that part is missing.
        let partner = [MISSING, 2, 0];
        let mut ws2 = Workspace::default();
        ws2.logits = z.to_vec();
        let mixed = BatchLabels::Mixed {
            own: &y,
            partner: &partner,
            lambda: 1.0,
        };
        let v2 = ws2.loss_and_grad(&mixed, 0.4, &soft, 3).unwrap();
        assert!((v2 - want).abs() < 1e-6, "λ = 1: the own labels alone");
        // Data parallelism: two ranks hold rows [0] and [1, 2]; each slice's loss, weighted by
        // its share of the batch (b / 3) and summed, is one process's, as are the gradients.
        let (mut total, mut grad) = (0f64, Vec::new());
        for (lo, hi) in [(0usize, 1usize), (1, 3)] {
            let mut w = Workspace::default();
            w.logits = z[lo * 3..hi * 3].to_vec();
            let soft = [SoftBatch {
                targets: &t[lo * 3..hi * 3],
                temperature: 2.0,
                weight: 0.6,
                loss: SoftLoss::Kd,
            }];
            let labels = BatchLabels::Partial {
                own: &y[lo..hi],
                partner: None,
                share: [3.0 / 2.0, 1.0],
            };
            let share = (hi - lo) as f64 / 3.0;
            total += share * w.loss_and_grad(&labels, 0.4, &soft, 3).unwrap();
            grad.extend(w.dz.iter().map(|&g| g as f64 * share));
        }
        assert!((total - want).abs() < 1e-6, "{total} vs {want}");
        for (a, b) in grad.iter().zip(want_grad) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
