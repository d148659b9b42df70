//! The mariadb-backup invocations every physical copy makes: the options file its password
//! travels in, the backup stream, and preparing a copy to the point the server can start on.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

use super::{Error, io};

/// The options mariadb-backup runs with: the server's configuration when given (the storage
/// engine's settings must match the server's) and the administrative user, in a file readable
/// by its owner only — a password on the command line would show in every process listing.
/// Written into `dir`; the caller removes it.
pub async fn options_file(
    dir: &Path,
    config: Option<&Path>,
    user: &str,
    password: &str,
) -> Result<PathBuf, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("seed.cnf");
    let config = match config {
        Some(c) => tokio::fs::read_to_string(c).await.map_err(io("read", c))?,
        None => String::new(),
    };
    let text = format!("{config}\n[mariadb-backup]\nuser={user}\npassword={password}\n");
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

/// Where a server is, for a backup of it.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The options file ([`options_file`]).
    pub options: &'a Path,
    /// Whether `options` is the whole configuration (`--defaults-file`) or comes on top of
    /// the server's usual option files (`--defaults-extra-file`, in the upstream image).
    pub options_complete: bool,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// Its Unix socket (mariadb-backup talks to the server there while copying).
    pub socket: &'a Path,
    /// An empty scratch directory for mariadb-backup's own files.
    pub scratch: &'a Path,
}

/// Start a hot backup of `source` streaming mbstream on its stdout; its messages go to `log`.
pub fn start_backup(source: &Source<'_>, log: Stdio) -> Result<Child, Error> {
    let defaults = if source.options_complete {
        "--defaults-file"
    } else {
        "--defaults-extra-file"
    };
    Command::new("mariadb-backup")
        .arg(format!("{defaults}={}", source.options.display()))
        .arg("--backup")
        .arg("--stream=mbstream")
        // Wait at most a minute for statements holding LOCK TABLES to let the backup
        // start, then fail, rather than queue behind them for ever.
        .arg("--startup-wait-timeout=60")
        .arg(format!("--datadir={}", source.data_dir.display()))
        .arg(format!("--socket={}", source.socket.display()))
        .arg(format!("--target-dir={}", source.scratch.display()))
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("run mariadb-backup for", source.data_dir))
}

/// Start `mbstream -x` unpacking its stdin into `dir`.
pub fn start_unpack(dir: &Path, input: Stdio, log: Stdio) -> Result<Child, Error> {
    Command::new("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(input)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("run mbstream into", dir))
}

/// Prepare the unpacked copy in `dir` (apply its redo log), then read the GTID position it is
/// consistent with.
pub async fn prepare(dir: &Path, log: &Path) -> Result<String, Error> {
    let out = || -> Result<Stdio, Error> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io("open", log))?;
        Ok(f.into())
    };
    let prepared = Command::new("mariadb-backup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", dir.display()))
        .stdout(out()?)
        .stderr(out()?)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(io("prepare", dir))?;
    if !prepared.success() {
        return Err(Error::Tool {
            step: "mariadb-backup --prepare",
            status: prepared.to_string(),
            log: log.to_path_buf(),
        });
    }
    position(dir).await
}

/// The GTID position a prepared copy is consistent with: its binlog info file reads
/// "binlog.000003\t1234\t0-1-42" (named xtrabackup_binlog_info before MariaDB 11), or names
/// no GTID when the server has written none yet.
async fn position(dir: &Path) -> Result<String, Error> {
    let mut info = dir.join("mariadb_backup_binlog_info");
    if !info.exists() {
        info = dir.join("xtrabackup_binlog_info");
    }
    let text = tokio::fs::read_to_string(&info)
        .await
        .map_err(io("read", &info))?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        [_file, _offset] => Ok(String::new()),
        [_file, _offset, gtids, ..] => Ok((*gtids).to_string()),
        _ => Err(Error::NoPosition(dir.to_path_buf())),
    }
}

/// Check how a tool ended.
pub fn check(
    step: &'static str,
    status: std::io::Result<std::process::ExitStatus>,
    log: &Path,
) -> Result<(), Error> {
    let status = status.map_err(io("wait for", log))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            step,
            status: status.to_string(),
            log: log.to_path_buf(),
        })
    }
}
