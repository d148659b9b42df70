//! Why the local runner stopped.

use std::{path::PathBuf, time::Duration};

use crate::{pki::PkiError, topology};

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A key or certificate could not be generated.
    #[error(transparent)]
    Generate(#[from] PkiError),
    /// Something else already listens on a port of the plan.
    #[error(
        "port {port} ({what}) is in use: another local cluster running? Stop it, or pick other ports with --base-port / --port / --plaintext-port"
    )]
    PortBusy {
        /// The port.
        port: u16,
        /// What the plan uses it for.
        what: String,
    },
    /// An empty database directory could not be initialised.
    #[error("mariadb-install-db for {server} failed: {message}")]
    InstallDb {
        /// The server.
        server: String,
        /// Its output.
        message: String,
    },
    /// Something did not come up in time.
    #[error("{0} did not come up within {1:?} (see the logs in the data directory)")]
    Timeout(String, Duration),
    /// The topology loop refused its members.
    #[error("database topology: {0}")]
    Topology(#[from] topology::manager::Error),
    /// State files are not valid.
    #[error("{path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
