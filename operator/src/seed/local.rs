//! Local mode's physical re-seed: every server's files are on this machine, so
//! mariadb-backup pipes straight into mbstream beside the replica's data directory, and the
//! runner's supervisor starts the stopped server again on the copy.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use super::{Error as CopyError, io, mariabackup};
use crate::topology::{
    physical::{Error, Prepared, Seeder},
    server::{Credentials, Member, Server},
};
use futures::future::BoxFuture;

impl From<CopyError> for Error {
    fn from(e: CopyError) -> Self {
        Error::Copy(Box::new(e))
    }
}

/// Where a server's files are on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFiles {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its Unix socket (mariadb-backup talks to the server there while copying).
    pub socket: PathBuf,
    /// Its configuration file (mariadb-backup reads the storage engine's settings there).
    pub config: PathBuf,
}

/// Local mode's seeder: every server's files are on this machine, and its supervisor
/// starts a stopped server again.
#[derive(Debug, Clone)]
pub struct LocalSeeder {
    /// Each server's files, by member name.
    pub files: BTreeMap<String, LocalFiles>,
    /// mariadb-backup's user.
    pub credentials: Credentials,
}

/// How long a local replica may take to come back on its new data.
const LOCAL_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Beside `data_dir`: `data_dir` with its last component replaced by `name`.
fn beside(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.with_file_name(name)
}

impl LocalSeeder {
    fn files(&self, member: &Member) -> Result<&LocalFiles, Error> {
        self.files
            .get(&member.name)
            .ok_or_else(|| Error::Platform(format!("no files known for {}", member.name)))
    }

    /// Copy `donor`'s files into `staging` and prepare them there; the copy's GTID position.
    async fn copy_into(
        &self,
        donor: &LocalFiles,
        replica: &LocalFiles,
        staging: &Path,
    ) -> Result<String, CopyError> {
        let dir = replica.data_dir.parent().unwrap_or(Path::new("/"));
        let log_path = dir.join("seed.log");
        let log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
        let options = mariabackup::options_file(
            dir,
            Some(&donor.config),
            &self.credentials.admin_user,
            &self.credentials.admin_password,
        )
        .await?;
        let scratch = beside(&replica.data_dir, "seed.tmp");
        for d in [staging, scratch.as_path()] {
            let _ = tokio::fs::remove_dir_all(d).await;
            tokio::fs::create_dir_all(d)
                .await
                .map_err(io("create", d))?;
        }
        let stderr = |log: &std::fs::File| -> Result<Stdio, CopyError> {
            Ok(log.try_clone().map_err(io("open", &log_path))?.into())
        };
        let copied = async {
            let mut backup = mariabackup::start_backup(
                &mariabackup::Source {
                    options: &options,
                    options_complete: true,
                    data_dir: &donor.data_dir,
                    socket: &donor.socket,
                    scratch: &scratch,
                },
                stderr(&log)?,
            )?;
            let stream: Stdio = backup
                .stdout
                .take()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| CopyError::Tool {
                    step: "mariadb-backup --backup",
                    status: "no output".into(),
                    log: log_path.clone(),
                })?;
            let mut unpack = mariabackup::start_unpack(staging, stream, stderr(&log)?)?;
            let (backed_up, unpacked) = tokio::join!(backup.wait(), unpack.wait());
            mariabackup::check("mariadb-backup --backup", backed_up, &log_path)?;
            mariabackup::check("mbstream -x", unpacked, &log_path)
        }
        .await;
        let _ = tokio::fs::remove_file(&options).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        copied?;
        mariabackup::prepare(staging, &log_path).await
    }
}

impl Seeder for LocalSeeder {
    fn copy<'a>(
        &'a self,
        donor: &'a Member,
        replica: &'a Member,
    ) -> BoxFuture<'a, Result<Prepared, Error>> {
        Box::pin(async move {
            let (from, to) = (self.files(donor)?, self.files(replica)?);
            let staging = beside(&to.data_dir, "seed.new");
            let copied = self.copy_into(from, to, &staging).await;
            if copied.is_err() {
                // The replica's data was never touched.
                let _ = tokio::fs::remove_dir_all(&staging).await;
            }
            Ok(Prepared {
                // One copy at a time per replica, renamed into place by this process.
                id: "local".into(),
                gtids: copied?,
            })
        })
    }

    fn restart_on_copy<'a>(
        &'a self,
        replica: &'a mut Server,
        _copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let to = self.files(&replica.member)?;
            // The running server keeps its files open (and its working directory) across the
            // renames; its supervisor starts it again on the new directory.
            let old = beside(&to.data_dir, "data.old");
            let staging = beside(&to.data_dir, "seed.new");
            let _ = tokio::fs::remove_dir_all(&old).await;
            tokio::fs::rename(&to.data_dir, &old)
                .await
                .map_err(io("move aside", &to.data_dir))?;
            tokio::fs::rename(&staging, &to.data_dir)
                .await
                .map_err(io("move into place", &staging))?;
            let _ = replica.exec(&["SHUTDOWN"]).await;
            Ok(())
        })
    }

    fn confirm<'a>(
        &'a self,
        _replica: &'a Member,
        _copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        // The copy was renamed into place before the server stopped: a server that started
        // after that started on it.
        Box::pin(async { Ok(true) })
    }

    fn abandon<'a>(
        &'a self,
        replica: &'a Member,
        _copy: &'a Prepared,
        old_still_runs: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(to) = self.files(replica) else { return };
            let old = beside(&to.data_dir, "data.old");
            // The old process never stopped (or the swap did not finish): give it back its
            // own data — only where it was moved aside, and never losing either copy.
            if old_still_runs && old.is_dir() {
                let discard = beside(&to.data_dir, "seed.discard");
                let _ = tokio::fs::remove_dir_all(&discard).await;
                let had_copy = tokio::fs::rename(&to.data_dir, &discard).await.is_ok();
                if tokio::fs::rename(&old, &to.data_dir).await.is_ok() {
                    let _ = tokio::fs::remove_dir_all(&discard).await;
                } else if had_copy {
                    let _ = tokio::fs::rename(&discard, &to.data_dir).await;
                }
            }
        })
    }

    fn finish<'a>(&'a self, replica: &'a Member, _copy: &'a Prepared) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(to) = self.files(replica) {
                let _ = tokio::fs::remove_dir_all(beside(&to.data_dir, "data.old")).await;
            }
        })
    }

    fn restart_timeout(&self) -> Duration {
        LOCAL_RESTART_TIMEOUT
    }
}
