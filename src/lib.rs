//! # distillery
//!
//! Turn a large neural network into small, fast models that keep its accuracy: train a
//! teacher, distil students from it with temperature-softened targets (Hinton et al. 2015),
//! and compare every model's accuracy, size and latency side by side.
//!
//! One TOML file ([`config`]) describes a whole experiment; validated, it is a list of
//! [`stages`] (train or distil a model, a sub-model group, pruning, quantization) that
//! [`pipeline::run_experiment`] runs over a [`store::RunStore`], which owns the output folder
//! (atomic saves, resume after a kill, one record per finished model); the [`report`] is built
//! from those records. Underneath: [`data`], [`models`], [`losses`], [`teachers`] (anything that
//! produces outputs) and the one training loop ([`train`]). `docs/ARCHITECTURE.md` gives the
//! layers and the recipes for adding a loss, a model family or a stage.
//!
//! ```no_run
//! use distillery::{config, pipeline};
//! let cfg = config::load(std::path::Path::new("configs/demo.toml"), &[]).unwrap();
//! let cfg = cfg.validate().unwrap(); // the pipeline takes only a checked config
//! let opts = pipeline::RunOptions::new("runs/demo");
//! let summary = pipeline::run_experiment(&cfg, &opts).unwrap();
//! println!("{}", summary.report_markdown);
//! ```

pub mod bench;
pub mod compress;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod losses;
pub mod methods;
pub mod models;
pub mod pipeline;
pub mod predict;
pub mod progress;
pub mod report;
pub mod rng;
pub mod stages;
pub mod store;
pub mod submodels;
pub mod teachers;
pub mod train;

pub use error::{Error, Result};
