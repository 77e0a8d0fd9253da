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
pub mod dist;
pub mod error;
pub mod eval;
pub mod io;
pub mod kernels;
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

/// Keeps freed memory in the process for reuse, on glibc: tensors of a few MiB (an embedding
/// table's gradient, its optimizer moments) are otherwise mapped and unmapped on every step,
/// and the page faults and TLB shootdowns that follow took 70% of an embedding-bag student's
/// training time (6.0 s an epoch on the SpamAssassin n-gram student, 1.0 s with this; the same
/// numbers). Blocks below 32 MiB come from the heap, and the heap is returned to the system
/// only beyond 1 GiB free. Called by the CLI at start; a library user may call it too.
/// `DISTILLERY_DEFAULT_MALLOC=1` leaves glibc's defaults (for comparisons).
pub fn tune_allocator() {
    pin_thread_counts();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("DISTILLERY_DEFAULT_MALLOC").is_none() {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes glibc malloc's tuning parameters; it is called before
        // any thread of ours starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// candle sizes each matrix product's thread pool by asking how many physical cores there are
/// — parsing `/proc/cpuinfo` before *every* product — unless `RAYON_NUM_THREADS` is set: 13% of
/// a residual net's training time (`perf`, 2-core Zen 4). This builds rayon's global pool at
/// its default size first, then sets `RAYON_NUM_THREADS` to candle's own default, so both keep
/// the sizes they had and candle reads a variable instead. Nothing changes when the variable is
/// already set. Called by [`tune_allocator`], before any thread of ours starts.
pub fn pin_thread_counts() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // An error means the pool exists already (at whatever size its builder chose).
    let _ = rayon::ThreadPoolBuilder::new().build_global();
    let n = candle_core::utils::get_num_threads();
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}
