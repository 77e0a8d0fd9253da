//! Hint (feature) matching — Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015),
//! "FitNets: Hints for Thin Deep Nets", ICLR.
//!
//! The student's hidden layer is mapped by a learned linear adapter `A` (the paper's regressor)
//! to the width of the teacher's hint layer and pulled towards it:
//! `L_hint = mean((h_s · A − h_t)²)` (PyTorch: `F.mse_loss(h_s @ A, h_t)`).

use super::supervised::mse;
use crate::error::Result;
use candle_core::Tensor;

/// The hint loss for student hidden activations `[b, s]`, adapter `[s, t]` and teacher hint
/// activations `[b, t]`.
pub fn hint_loss(
    student_hidden: &Tensor,
    adapter: &Tensor,
    teacher_hidden: &Tensor,
) -> Result<Tensor> {
    mse(&student_hidden.matmul(adapter)?, teacher_hidden)
}
