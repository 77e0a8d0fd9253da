//! Loss functions, one method per file, each citing its source. Each file holds the term's
//! value and gradient with respect to the student's outputs (the form the autograd-free training
//! step uses) and, beside it, the candle-autograd form the fast one is tested against.
//! The crate's one softmax and log-sum-exp are [`crate::kernels::softmax`]'s.

pub mod agreement;
pub mod dist;
pub mod dkd;
pub mod embed;
pub mod hint;
pub mod kd;
pub mod mutual;
pub mod supervised;

pub use hint::hint_loss;
pub use kd::{kd_loss_classification, kd_loss_regression, soft_target_loss, soft_targets};
pub use supervised::{cross_entropy, mse};

use crate::error::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How a student is pulled towards a teacher's logits: the soft-target term of a distillation
/// objective (`loss = { kind = "dkd" }` in an experiment file). Regression always matches the
/// teacher's outputs by MSE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SoftLoss {
    /// Hinton et al. (2015): `T² · KL(softmax(t/T) ‖ softmax(z/T))` ([`kd`]).
    #[default]
    Kd,
    /// Decoupled KD, Zhao et al. (2022): target and non-target parts weighted apart ([`dkd`]).
    Dkd {
        /// Weight of the target-class term (α in the paper).
        #[serde(default = "dkd_target")]
        target_weight: f32,
        /// Weight of the non-target-class term (β in the paper).
        #[serde(default = "dkd_non_target")]
        non_target_weight: f32,
    },
    /// DIST, Huang et al. (2022): Pearson correlation, inter- and intra-class ([`dist`]).
    Dist {
        /// Weight of the inter-class relation (β in the paper).
        #[serde(default = "dist_inter")]
        inter_weight: f32,
        /// Weight of the intra-class relation (γ in the paper).
        #[serde(default = "dist_intra")]
        intra_weight: f32,
    },
    /// Embedding distillation: `1 − cos(student, teacher)` on the output vectors ([`embed`]).
    Cosine,
    /// Embedding distillation: mean squared error on the output vectors ([`embed`]).
    Mse,
}

fn dkd_target() -> f32 {
    dkd::DEFAULT_TARGET_WEIGHT
}
fn dkd_non_target() -> f32 {
    dkd::DEFAULT_NON_TARGET_WEIGHT
}
fn dist_inter() -> f32 {
    dist::DEFAULT_INTER_WEIGHT
}
fn dist_intra() -> f32 {
    dist::DEFAULT_INTRA_WEIGHT
}

impl SoftLoss {
    /// Name for reports: `kd`, `dkd(1,8)`, `dist(1,1)`.
    pub fn describe(&self) -> String {
        match self {
            SoftLoss::Kd => "kd".into(),
            SoftLoss::Dkd {
                target_weight,
                non_target_weight,
            } => format!("dkd({target_weight},{non_target_weight})"),
            SoftLoss::Dist {
                inter_weight,
                intra_weight,
            } => format!("dist({inter_weight},{intra_weight})"),
            SoftLoss::Cosine => "cosine".into(),
            SoftLoss::Mse => "mse".into(),
        }
    }

    /// True for the embedding losses (cosine, MSE), which compare output vectors with a
    /// teacher's embeddings rather than logits with logits.
    pub fn is_embedding(&self) -> bool {
        matches!(self, SoftLoss::Cosine | SoftLoss::Mse)
    }

    /// The term's weights, for validation.
    pub fn weights(&self) -> Vec<(&'static str, f32)> {
        match *self {
            SoftLoss::Kd | SoftLoss::Cosine | SoftLoss::Mse => Vec::new(),
            SoftLoss::Dkd {
                target_weight,
                non_target_weight,
            } => vec![
                ("target_weight", target_weight),
                ("non_target_weight", non_target_weight),
            ],
            SoftLoss::Dist {
                inter_weight,
                intra_weight,
            } => vec![
                ("inter_weight", inter_weight),
                ("intra_weight", intra_weight),
            ],
        }
    }

    /// The fast path: `weight ·` the term for a batch of student logits `z` `[rows, classes]`
    /// and the teacher's logits for the same rows, *summed* over rows (the caller divides by
    /// the batch size), with its gradient with respect to `z` added to `grad` (already scaled to
    /// the batch mean by `scale` = 1/rows).
    #[allow(clippy::too_many_arguments)]
    pub fn value_and_grad(
        &self,
        z: &[f32],
        teacher: &[f32],
        labels: &[u32],
        classes: usize,
        temperature: f32,
        weight: f32,
        scale: f32,
        grad: &mut [f32],
    ) -> f64 {
        let rows = z.chunks_exact(classes);
        let per_row = rows
            .zip(teacher.chunks_exact(classes))
            .zip(grad.chunks_exact_mut(classes))
            .zip(labels);
        match *self {
            SoftLoss::Kd => per_row
                .map(|(((zr, tr), gr), _)| kd::kd_row(zr, tr, temperature, weight, scale, gr))
                .sum(),
            SoftLoss::Cosine => z
                .chunks_exact(classes)
                .zip(teacher.chunks_exact(classes))
                .zip(grad.chunks_exact_mut(classes))
                .map(|((zr, tr), gr)| embed::cosine_row(zr, tr, weight, scale, gr))
                .sum(),
            SoftLoss::Mse => z
                .chunks_exact(classes)
                .zip(teacher.chunks_exact(classes))
                .zip(grad.chunks_exact_mut(classes))
                .map(|((zr, tr), gr)| embed::mse_row(zr, tr, weight, scale, gr))
                .sum(),
            SoftLoss::Dkd {
                target_weight,
                non_target_weight,
            } => per_row
                .map(|(((zr, tr), gr), &y)| {
                    dkd::dkd_row(
                        zr,
                        tr,
                        y as usize,
                        temperature,
                        target_weight,
                        non_target_weight,
                        weight,
                        scale,
                        gr,
                    )
                })
                .sum(),
            SoftLoss::Dist {
                inter_weight,
                intra_weight,
            } => {
                let n = z.len() / classes.max(1);
                n as f64
                    * dist::dist_batch(
                        z,
                        teacher,
                        classes,
                        temperature,
                        inter_weight,
                        intra_weight,
                        weight,
                        grad,
                    )
            }
        }
    }

    /// The candle-autograd form (mean over the batch, unweighted): the reference of
    /// [`SoftLoss::value_and_grad`], and the generic training path's.
    pub fn autograd(
        &self,
        logits: &Tensor,
        teacher: &[f32],
        labels: &Tensor,
        temperature: f32,
    ) -> Result<Tensor> {
        match *self {
            SoftLoss::Kd => soft_target_loss(logits, teacher, temperature),
            SoftLoss::Dkd {
                target_weight,
                non_target_weight,
            } => dkd::dkd_loss(
                logits,
                teacher,
                labels,
                temperature,
                target_weight,
                non_target_weight,
            ),
            SoftLoss::Dist {
                inter_weight,
                intra_weight,
            } => dist::dist_loss(logits, teacher, temperature, inter_weight, intra_weight),
            SoftLoss::Cosine => embed::cosine_loss(logits, teacher),
            SoftLoss::Mse => embed::mse_loss(logits, teacher),
        }
    }
}
