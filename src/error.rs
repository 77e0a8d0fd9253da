//! One error type for the whole crate. Each variant knows the exit code the CLI returns:
//! 2 for bad input (files, configs, arguments), 1 for everything else.

use std::path::Path;

/// The crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: a malformed file, a wrong shape, a bad config value.
    /// The message names the file, line or field and what was expected.
    #[error("{0}")]
    Input(String),
    /// Training diverged (NaN or a loss above the configured ceiling).
    #[error("{0}")]
    Diverged(String),
    /// An I/O failure on a named file (full disk, permissions, ...).
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The caller asked the work to stop ([`crate::progress::interrupt`]; Ctrl-C in Python).
    /// Checkpoints written so far are kept: the same run resumes from them.
    #[error("interrupted")]
    Interrupted,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Exit code for the CLI: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for returning an [`Error::Input`].
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Input(format!($($arg)*)))
    };
}

/// The error for a bad value in an experiment file: `field: what`.
pub fn bad_field(field: &str, what: &str) -> Result<()> {
    Err(Error::Input(format!("{field}: {what}")))
}

/// Runs `f`, turning a panic inside it (a third-party reader that panics on malformed input,
/// e.g. tract-onnx on a graph naming an input that does not exist) into a one-line
/// [`Error::Input`] about `file`. The panic hook is silenced meanwhile, so nothing but that
/// line reaches the user.
pub fn no_panic<T>(file: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match r {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".into());
            Err(Error::Input(format!(
                "{file}: not a valid model file (its reader failed: {what})"
            )))
        }
    }
}
