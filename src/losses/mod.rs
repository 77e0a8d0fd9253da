//! Loss functions, one method per file, each citing its source.

pub mod hint;
pub mod kd;
pub mod mutual;
pub mod supervised;

pub use hint::hint_loss;
pub use kd::{kd_loss_classification, kd_loss_regression, soft_target_loss, soft_targets};
pub use supervised::{cross_entropy, mse};
