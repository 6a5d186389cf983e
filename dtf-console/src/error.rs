//! The console's errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use dtf_plugin_core::ManagerError;

/// What can go wrong when setting the console up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The token file could not be read.
    #[error("read the console token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file (or the environment variable) holds an empty token.
    #[error("read the console token from {from}: it is empty")]
    EmptyToken {
        /// The file or environment variable.
        from: String,
    },
    /// The operating system's random source failed.
    #[error("generate a console token: {0}")]
    Random(String),
    /// The listening socket could not be bound.
    #[error("bind the console to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The console's plugin could not be added to the manager.
    #[error("attach the console to the plugin manager: {0}")]
    Manager(#[from] ManagerError),
}
