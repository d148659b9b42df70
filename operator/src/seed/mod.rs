//! Physical copies of a MariaDB server's files, for re-seeding a replica.
//!
//! Local mode pipes mariadb-backup straight into mbstream (both data directories are on the
//! machine; see [`crate::topology::physical`]). In Kubernetes the two data directories are
//! volumes of two pods, so the copy is three small programs of this binary, run beside the
//! database in the upstream image (where mariadb-backup is) after an init container copied
//! the binary in ([`install`]):
//! - the **donor** agent ([`donor`]), a sidecar of every MariaDB pod, streams a hot backup of
//!   its server to a client that proves it holds the key;
//! - the **fetch** Job ([`fetch`]), on the receiving pod's node with its volume mounted,
//!   unpacks the stream into a staging directory inside that volume, prepares it and marks it
//!   ready, while the replica keeps running on its own data;
//! - the **swap** ([`swap`]), an init container of every MariaDB pod, puts a ready copy in
//!   place before the server starts, resumable at any step.
//!
//! The stream's format is in [`wire`]; the mariadb-backup invocations both modes share are in
//! [`mariabackup`].

pub mod donor;
pub mod fetch;
pub mod install;
pub mod mariabackup;
pub mod swap;
pub mod wire;

use std::path::{Path, PathBuf};

/// The directory inside a data directory where a copy is staged; MariaDB is told to ignore it
/// (`ignore_db_dirs`), and mariadb-backup skips hidden directories.
pub const STAGING_DIR: &str = ".chatcluster-seed";
/// Port of the donor agent in every MariaDB pod.
pub const DONOR_PORT: u16 = 3307;

/// Errors of a physical copy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// mariadb-backup or mbstream failed.
    #[error("{step} failed ({status}); see {log}")]
    Tool {
        /// Which step.
        step: &'static str,
        /// How it ended.
        status: String,
        /// Its output.
        log: PathBuf,
    },
    /// The copy names no GTID position.
    #[error("the copy in {0} names no GTID position")]
    NoPosition(PathBuf),
    /// The stream from the donor failed.
    #[error(transparent)]
    Wire(#[from] wire::Error),
    /// Nothing answered in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
}

/// The error for a failed file operation on `path`.
pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}
