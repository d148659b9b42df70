//! Physical re-seeding, where the primary's and the replica's data directories are on this
//! machine (local mode): mariadb-backup takes a hot copy of the primary's files and streams it
//! (mbstream) straight into a staging directory beside the replica's, never through memory;
//! the copy is prepared there, swapped in for the replica's data, and the replica restarted on
//! it (its supervisor starts it again). The replica's own data stays until the copy is
//! complete and prepared, and is removed only once the server runs on the new one.
//!
//! Only MariaDB: MySQL copies itself with `CLONE INSTANCE` (see [`super::dialect::Seed`]).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::Command;
use tracing::info;

use super::server::{Credentials, Error as ServerError, Server};

/// Where a server's files are, for a physical copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFiles {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its Unix socket (mariadb-backup talks to the server there while copying).
    pub socket: PathBuf,
    /// Its configuration file (mariadb-backup reads the storage engine's settings there).
    pub config: PathBuf,
}

/// How long the replica may take to come back on its new data.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of a physical re-seed.
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
    /// Talking to the replica failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The replica did not come back on its new data.
    #[error("{0} did not come back on its new data within {RESTART_TIMEOUT:?}")]
    NotBack(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Beside `data_dir`: `data_dir` with its last component replaced by `name`.
fn beside(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.with_file_name(name)
}

/// The options mariadb-backup runs with: the primary's configuration (the storage engine's
/// settings must match the server's) and the administrative user, in a file readable by its
/// owner only — a password on the command line would show in every process listing.
async fn options_file(
    dir: &Path,
    primary: &LocalFiles,
    credentials: &Credentials,
) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("seed.cnf");
    let config = tokio::fs::read_to_string(&primary.config)
        .await
        .map_err(io("read", &primary.config))?;
    let text = format!(
        "{config}\n[mariadb-backup]\nuser={}\npassword={}\n",
        credentials.admin_user, credentials.admin_password
    );
    let file = path.clone();
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(&file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        std::io::Write::write_all(&mut f, text.as_bytes())
    })
    .await
    .map_err(|e| Error::Io {
        what: "write",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(io("write", &path))?;
    Ok(path)
}

/// Copy `primary`'s files into a prepared directory beside `replica`'s data; the copy's
/// GTID position.
async fn copy(
    primary: &LocalFiles,
    replica: &LocalFiles,
    credentials: &Credentials,
    staging: &Path,
) -> Result<String, Error> {
    let dir = replica.data_dir.parent().unwrap_or(Path::new("/"));
    let log_path = dir.join("seed.log");
    let log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
    let options = options_file(dir, primary, credentials).await?;
    let backup_tmp = beside(&replica.data_dir, "seed.tmp");
    for d in [staging, backup_tmp.as_path()] {
        let _ = tokio::fs::remove_dir_all(d).await;
        tokio::fs::create_dir_all(d)
            .await
            .map_err(io("create", d))?;
    }
    let stderr = |log: &std::fs::File| -> Result<Stdio, Error> {
        Ok(log.try_clone().map_err(io("open", &log_path))?.into())
    };
    let mut backup = Command::new("mariadb-backup")
        .arg(format!("--defaults-file={}", options.display()))
        .arg("--backup")
        .arg("--stream=mbstream")
        .arg(format!("--datadir={}", primary.data_dir.display()))
        .arg(format!("--socket={}", primary.socket.display()))
        .arg(format!("--target-dir={}", backup_tmp.display()))
        .stdout(Stdio::piped())
        .stderr(stderr(&log)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("run mariadb-backup for", &primary.data_dir))?;
    let stream: Stdio = backup
        .stdout
        .take()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Tool {
            step: "mariadb-backup --backup",
            status: "no output".into(),
            log: log_path.clone(),
        })?;
    let mut extract = Command::new("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(staging)
        .stdin(stream)
        .stderr(stderr(&log)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("run mbstream into", staging))?;
    let (backed_up, extracted) = tokio::join!(backup.wait(), extract.wait());
    let _ = tokio::fs::remove_file(&options).await;
    let _ = tokio::fs::remove_dir_all(&backup_tmp).await;
    for (step, status) in [
        ("mariadb-backup --backup", backed_up),
        ("mbstream -x", extracted),
    ] {
        let status = status.map_err(io("wait for", staging))?;
        if !status.success() {
            return Err(Error::Tool {
                step,
                status: status.to_string(),
                log: log_path,
            });
        }
    }
    let prepared = Command::new("mariadb-backup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", staging.display()))
        .stdout(stderr(&log)?)
        .stderr(stderr(&log)?)
        .status()
        .await
        .map_err(io("prepare", staging))?;
    if !prepared.success() {
        return Err(Error::Tool {
            step: "mariadb-backup --prepare",
            status: prepared.to_string(),
            log: log_path,
        });
    }
    // "binlog.000003\t1234\t0-1-42": the GTID position the copy is consistent with (named
    // xtrabackup_binlog_info before MariaDB 11).
    let mut info = staging.join("mariadb_backup_binlog_info");
    if !info.exists() {
        info = staging.join("xtrabackup_binlog_info");
    }
    let text = tokio::fs::read_to_string(&info)
        .await
        .map_err(io("read", &info))?;
    text.split_whitespace()
        .nth(2)
        .map(String::from)
        .ok_or_else(|| Error::NoPosition(staging.to_path_buf()))
}

/// Replace `replica`'s data with a physical copy of `primary`'s, restart it on the copy, and
/// leave it ready to replicate from the copy's position (the caller points it at the primary).
pub async fn reseed(
    primary: &LocalFiles,
    replica: &mut Server,
    files: &LocalFiles,
    credentials: &Credentials,
) -> Result<(), Error> {
    let staging = beside(&files.data_dir, "seed.new");
    let started = Instant::now();
    let gtids = match copy(primary, files, credentials, &staging).await {
        Ok(g) => g,
        Err(e) => {
            // The replica's data was never touched.
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };
    info!(replica = %replica.member.name, gtids = %gtids, copy_ms = started.elapsed().as_millis(), "physical copy prepared");
    // The running server keeps its files open (and its working directory) across the
    // renames; it is restarted on the new directory.
    let old = beside(&files.data_dir, "data.old");
    let _ = tokio::fs::remove_dir_all(&old).await;
    tokio::fs::rename(&files.data_dir, &old)
        .await
        .map_err(io("move aside", &files.data_dir))?;
    tokio::fs::rename(&staging, &files.data_dir)
        .await
        .map_err(io("move into place", &staging))?;
    // The connection ends with the server: the statement's own outcome says nothing. What
    // tells the new process from the old is its uptime: it must have started after this.
    let shutdown = Instant::now();
    let _ = replica.exec(&["SHUTDOWN"]).await;
    let deadline = shutdown + RESTART_TIMEOUT;
    loop {
        replica.disconnect();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let uptime: Option<u64> = replica
            .scalar("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'")
            .await
            .ok()
            .and_then(|v| v.parse().ok());
        let restarted = uptime.is_some_and(|secs| {
            secs.saturating_mul(1000)
                < u64::try_from(shutdown.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        if restarted
            && replica
                .exec(&[format!("SET GLOBAL gtid_slave_pos = '{gtids}'")])
                .await
                .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            if uptime.is_some() && !restarted {
                // The old process never stopped: give it back its own data.
                let discard = beside(&files.data_dir, "seed.discard");
                let _ = tokio::fs::rename(&files.data_dir, &discard).await;
                let _ = tokio::fs::rename(&old, &files.data_dir).await;
                let _ = tokio::fs::remove_dir_all(&discard).await;
            }
            return Err(Error::NotBack(replica.member.name.clone()));
        }
    }
    let _ = tokio::fs::remove_dir_all(&old).await;
    info!(replica = %replica.member.name, total_ms = started.elapsed().as_millis(), "re-seeded physically");
    Ok(())
}
