//! Progress display: bars with loss, accuracy and ETA on a terminal; plain lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A place for progress lines other than stderr (the Python package sends them to
/// `sys.stderr`, so that a notebook shows them).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Asks running work to stop: the training loop and tree boosting check at every step and
/// return [`Error::Interrupted`](crate::error::Error::Interrupted). Checkpoints already written
/// stay, so the same run resumes from them.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Clears an earlier [`interrupt`] (before starting new work).
pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

/// `Err(Interrupted)` once [`interrupt`] has been called.
pub fn check_interrupt() -> crate::error::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(crate::error::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Sends progress lines to `sink` instead of stderr (`None`: back to stderr).
pub fn set_sink(sink: Option<Sink>) {
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = sink;
}

fn line(msg: &str) {
    let sink = SINK.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match sink {
        Some(f) => f(msg),
        None => eprintln!("{msg}"),
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing at all.
    Quiet,
    /// One plain line per epoch (output is not a terminal).
    Lines,
    /// Live bars.
    Bars,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise; nothing when `quiet`.
    pub fn detect(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars
        } else {
            Progress::Lines
        }
    }

    /// Starts an epoch of `batches` steps.
    pub fn epoch(&self, model: &str, epoch: usize, epochs: usize, batches: usize) -> EpochProgress {
        let bar = match self {
            Progress::Bars => {
                let b = ProgressBar::new(batches as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>18} {bar:28.cyan/blue} {pos:>4}/{len:4} {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_prefix(format!("{model} {}/{epochs}", epoch + 1));
                Some(b)
            }
            _ => None,
        };
        EpochProgress {
            bar,
            mode: *self,
            label: format!("{model} epoch {}/{epochs}", epoch + 1),
        }
    }

    /// Prints a one-off status line (not in quiet mode).
    pub fn say(&self, msg: &str) {
        if *self != Progress::Quiet {
            line(msg);
        }
    }
}

/// Progress of one epoch.
pub struct EpochProgress {
    bar: Option<ProgressBar>,
    mode: Progress,
    label: String,
}

impl EpochProgress {
    /// One step done, with the running loss and accuracy.
    pub fn step(&self, loss: f64, acc: Option<f64>) {
        if let Some(b) = &self.bar {
            b.inc(1);
            match acc {
                Some(a) => b.set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * a)),
                None => b.set_message(format!("loss {loss:.4}")),
            }
        }
    }

    /// The epoch is over; `summary` is the line to keep.
    pub fn finish(self, summary: &str) {
        match (self.bar, self.mode) {
            (Some(b), _) => {
                b.finish_and_clear();
                line(&format!("{}: {summary}", self.label));
            }
            (None, Progress::Lines) => line(&format!("{}: {summary}", self.label)),
            _ => {}
        }
    }
}
