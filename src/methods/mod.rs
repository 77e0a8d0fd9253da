//! Distillation schemes that are sequences of models, expressed by expanding the experiment's
//! `[[model]]` list before it runs, so that each generated model is trained, checkpointed,
//! resumed and reported like any other.

pub mod born_again;
pub mod teacher_assistant;

use crate::config::ExperimentConfig;

/// The experiment with born-again generations and teacher-assistant chains written out as
/// plain `[[model]]` entries.
pub fn expand(cfg: &ExperimentConfig) -> ExperimentConfig {
    let mut out = cfg.clone();
    out.models = teacher_assistant::expand(&out.models);
    out.models = born_again::expand(&out.models);
    out
}
