//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use crate::NodeId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in kvapp-c, with enough context for a user to
/// act on it.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed; `context` says what was being done.
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A file holds data that cannot be trusted. Nothing was rewritten.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Invalid configuration (flags, timing values, cluster lists).
    Config(String),
    /// Invalid input from a user or a client (bad key, oversized value, ...).
    InvalidInput(String),
    /// A peer or client sent something that does not follow the protocol.
    Protocol(String),
    /// The data directory is used by another process.
    Locked(PathBuf),
    /// The request must go to the leader; `leader` is the best known hint.
    NotLeader { leader: Option<NodeId> },
    /// The request was definitely not applied.
    Failed(String),
    /// The request may or may not have been applied.
    Unknown(String),
    /// The component has been shut down.
    Shutdown,
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "corrupt data in {} at byte offset {offset}: {reason}",
                path.display()
            ),
            Error::Config(msg) => write!(f, "invalid configuration: {msg}"),
            Error::InvalidInput(msg) => write!(f, "invalid input: {msg}"),
            Error::Protocol(msg) => write!(f, "protocol error: {msg}"),
            Error::Locked(path) => write!(
                f,
                "data directory {} is in use by another kvapp-c process",
                path.display()
            ),
            Error::NotLeader { leader: Some(id) } => {
                write!(f, "not the leader; the leader is node {id}")
            }
            Error::NotLeader { leader: None } => write!(f, "not the leader; leader unknown"),
            Error::Failed(msg) => write!(f, "{msg}"),
            Error::Unknown(msg) => write!(f, "{msg}"),
            Error::Shutdown => write!(f, "shut down"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("I/O error", e)
    }
}
