//! # distillery
//!
//! Turn a large neural network into small, fast models that keep its accuracy: train a
//! teacher, distil students from it with temperature-softened targets (Hinton et al. 2015),
//! and compare every model's accuracy, size and latency side by side.
//!
//! The pipeline reads top to bottom: **data** ([`data`]) → **models** ([`models`]) trained by
//! the **training loop** ([`train`]) with **losses** ([`losses`]) → **evaluation** ([`eval`]) →
//! **report** ([`report`]). One TOML file ([`config`]) describes a whole experiment, and
//! [`pipeline::run_experiment`] runs it into an output folder, resuming after a kill.
//!
//! ```no_run
//! use distillery::{config, pipeline};
//! let cfg = config::load(std::path::Path::new("configs/demo.toml"), &[]).unwrap();
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
