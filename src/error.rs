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
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Exit code for the CLI: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
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
