//! Loss functions, one method per file, each citing its source.

pub mod kd;
pub mod supervised;

pub use kd::{kd_loss_classification, kd_loss_regression, soft_targets};
pub use supervised::{cross_entropy, mse};
