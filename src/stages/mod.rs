//! The stages of an experiment, one file each with its settings beside its code: a
//! `[[teacher]]` ([`teacher`]; a BERT teacher fine-tuned end to end in [`finetune`]), training or
//! distilling a `[[model]]` ([`model`]; a multi-task one in [`tasks`]), a `[[submodels]]` group
//! ([`group`]), `[[prune]]` ([`prune`]), `[[quantize]]` ([`quantize`]) and `[[export]]`
//! ([`export`]). A stage reads the models it starts from by
//! name from the [`RunStore`] and hands it what it finishes; it never calls another stage.

pub mod export;
pub mod finetune;
pub mod group;
pub mod model;
pub mod prune;
pub mod quantize;
pub mod tasks;
pub mod teacher;
pub mod text;
pub mod tune;

use crate::error::Result;
use crate::store::RunStore;

/// One step of an experiment.
pub trait Stage {
    /// The name of what the stage makes (a model, a group).
    fn name(&self) -> &str;
    /// Runs the stage, or reads back what an earlier session finished, into `store`.
    fn run(&self, store: &mut RunStore) -> Result<()>;
}
