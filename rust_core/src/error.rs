//! Errors of the pure core. Plain enum, no PyO3: only `python.rs` maps these to exceptions.

use std::fmt;

/// Every way a core call can refuse its input or fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// An argument has an invalid value (wrong width, k out of range, duplicated id, ...).
    /// `arg` names the argument as the Python caller spelled it.
    InvalidArgument { arg: &'static str, msg: String },
    /// A saved index file is truncated, corrupted, of a newer version or not an index at all.
    CorruptFile(String),
    /// Reading or writing a file failed.
    Io {
        kind: std::io::ErrorKind,
        msg: String,
    },
}

impl CoreError {
    pub fn invalid(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            arg,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument { arg, msg } => write!(f, "{arg}: {msg}"),
            CoreError::CorruptFile(msg) => write!(f, "{msg}"),
            CoreError::Io { msg, .. } => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<std::io::Error> for CoreError {
    fn from(e: std::io::Error) -> Self {
        CoreError::Io {
            kind: e.kind(),
            msg: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;
