//! Physical copies of a MariaDB server's files, for re-seeding a replica.
//!
//! Local mode pipes mariadb-backup straight into mbstream (both data directories are on the
//! machine; see [`local`]). In Kubernetes the two data directories are
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
pub mod local;
pub mod mariabackup;
pub mod swap;
pub mod wire;

use std::path::{Path, PathBuf};

/// The directory inside a data directory where a copy is staged (after a swap it keeps the
/// phase file). MariaDB is told it is no schema (`ignore_db_dirs`, in the server configuration
/// the operator writes), and that is also what keeps it out of a backup of the server:
/// mariadb-backup takes the list from the running server. Without it, mariadb-backup streams
/// `.chatcluster-seed/db.opt` and mbstream refuses the name, failing the copy (seen by hand
/// against a server started without the setting; the re-seed test's donor has it).
pub const STAGING_DIR: &str = ".chatcluster-seed";
/// The lock a fetch and a swap take on a data directory, so they never work in it at once.
const LOCK_FILE: &str = ".chatcluster-seed.lock";
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

/// The lock of `data_dir`, if nobody holds it: a fetch and a swap never run in the same
/// data directory at once (a Job beside a pod that restarts share the node, and so the lock).
pub fn try_lock(data_dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, Error> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::Io {
            what: "lock",
            path,
            source: errno.into(),
        }),
    }
}

/// Flush everything written to the file system holding `dir`: mbstream never syncs, and
/// preparing a copy syncs only InnoDB's files, so before a copy is marked ready, all of it
/// must be on disk.
pub fn sync_file_system(dir: &Path) -> Result<(), Error> {
    let d = std::fs::File::open(dir).map_err(io("open", dir))?;
    nix::unistd::syncfs(&d).map_err(|e| Error::Io {
        what: "sync the file system of",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// The error for a failed file operation on `path`.
pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}
