//! One error type for the crate. Every message carries what a user needs to act on it:
//! which file, which key, which shapes, how much memory.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("checkpoint key `{key}`: {msg}")]
    Key { key: String, msg: String },
    #[error("shape mismatch for `{key}`: file has {found:?}, model expects {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("device error: {0}")]
    Device(String),
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("numerical error: {0}")]
    Numeric(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
