//! Physical re-seeding of a MariaDB replica: a hot copy of the primary's files
//! (mariadb-backup) is prepared beside the replica's data while the replica runs on its own,
//! then put in place and the replica restarted on it; it replicates from the copy's GTID
//! position. The replica's own data stays until the copy is complete and prepared.
//!
//! Where the files are, and how a server restarts, differ: a [`Seeder`] says. Local mode's
//! ([`LocalSeeder`]) pipes mariadb-backup into mbstream on this machine and renames data
//! directories; Kubernetes' (in `reconcile::seed`) runs a Job and restarts the pod. What
//! both share — waiting for the new process and setting its position — is [`reseed`].
//!
//! Only MariaDB: MySQL copies itself with `CLONE INSTANCE` (see [`super::dialect::Seed`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tracing::info;

use super::server::{Credentials, Error as ServerError, Member, Server};
use crate::seed::{self, io, mariabackup};

/// Errors of a physical re-seed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Making the copy failed.
    #[error(transparent)]
    Copy(#[from] seed::Error),
    /// Talking to the replica failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The platform (Kubernetes) refused or failed a step.
    #[error("{0}")]
    Platform(String),
    /// The replica did not come back on its new data.
    #[error("{0} did not come back on its new data within {1:?}")]
    NotBack(String, Duration),
}

/// A complete, prepared copy waiting beside a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Which attempt made it.
    pub id: String,
    /// The GTID position it is consistent with.
    pub gtids: String,
}

/// Where a physical copy comes from and goes to, and how a replica restarts on it.
pub trait Seeder: Send + Sync + std::fmt::Debug {
    /// Make a complete, prepared copy of `donor`'s files where `replica` can be restarted on
    /// it, leaving the replica running on its own data.
    fn copy<'a>(
        &'a self,
        donor: &'a Member,
        replica: &'a Member,
    ) -> BoxFuture<'a, Result<Prepared, Error>>;

    /// Put the copy in place and have the replica restart on it.
    fn restart_on_copy<'a>(
        &'a self,
        replica: &'a mut Server,
        copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Whether the restarted replica runs on `copy` (not on its old data, nor another copy):
    /// only then may its position be set to the copy's. `Ok(false)`: not known yet (ask
    /// again); an error: it did not take the copy.
    fn confirm<'a>(
        &'a self,
        replica: &'a Member,
        copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// The replica did not come back on the copy in time; `old_still_runs` when the old
    /// process answers.
    fn abandon<'a>(
        &'a self,
        replica: &'a Member,
        copy: &'a Prepared,
        old_still_runs: bool,
    ) -> BoxFuture<'a, ()>;

    /// The replica runs on the copy: remove what is left of its old data.
    fn finish<'a>(&'a self, replica: &'a Member, copy: &'a Prepared) -> BoxFuture<'a, ()>;

    /// How long the replica may take to come back on the copy.
    fn restart_timeout(&self) -> Duration;
}

/// Replace `replica`'s data with a physical copy of `donor`'s, restart it on the copy, and
/// leave it ready to replicate from the copy's position (the caller points it at the primary).
pub async fn reseed(
    seeder: &dyn Seeder,
    donor: &Member,
    replica: &mut Server,
) -> Result<(), Error> {
    let started = Instant::now();
    let member = replica.member.clone();
    let copy = seeder.copy(donor, &member).await?;
    // It goes into a statement: whatever made the copy, nothing but a position passes.
    if !is_position(&copy.gtids) {
        return Err(Error::Platform(format!(
            "the copy for {} names no GTID position: {:?}",
            member.name, copy.gtids
        )));
    }
    info!(replica = %member.name, id = %copy.id, gtids = %copy.gtids, copy_ms = started.elapsed().as_millis(), "physical copy prepared");
    // The connection ends with the server: the restart's own outcome says little. What tells
    // the new process from the old is its uptime: it must have started after this.
    let restart = Instant::now();
    if let Err(e) = seeder.restart_on_copy(replica, &copy).await {
        seeder.abandon(&member, &copy, true).await;
        return Err(e);
    }
    let timeout = seeder.restart_timeout();
    let set_position = replica.dialect().set_applied(&copy.gtids);
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
                < u64::try_from(restart.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        // A server that came back without the copy must not take its position: it would
        // skip or repeat transactions.
        let confirmed = if restarted {
            match seeder.confirm(&member, &copy).await {
                Ok(c) => c,
                Err(e) => {
                    seeder.abandon(&member, &copy, false).await;
                    return Err(e);
                }
            }
        } else {
            false
        };
        if confirmed
            && replica
                .exec(std::slice::from_ref(&set_position))
                .await
                .is_ok()
        {
            break;
        }
        if restart.elapsed() > timeout {
            seeder
                .abandon(&member, &copy, uptime.is_some() && !restarted)
                .await;
            return Err(Error::NotBack(member.name, timeout));
        }
    }
    seeder.finish(&member, &copy).await;
    info!(replica = %member.name, total_ms = started.elapsed().as_millis(), "re-seeded physically");
    Ok(())
}

/// Whether `text` reads as a GTID position ("0-1-42,1-2-7", or empty for none).
fn is_position(text: &str) -> bool {
    text.split(',').filter(|p| !p.is_empty()).all(|p| {
        let parts: Vec<&str> = p.trim().split('-').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
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
    ) -> Result<String, seed::Error> {
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
        let stderr = |log: &std::fs::File| -> Result<Stdio, seed::Error> {
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
                .ok_or_else(|| seed::Error::Tool {
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

#[cfg(test)]
mod tests {
    use super::is_position;

    #[test]
    fn only_gtid_positions_pass_as_a_copy_position() {
        assert!(is_position("0-1-42"));
        assert!(is_position("0-1-42,1-200-7"));
        assert!(is_position(""));
        assert!(!is_position("re-seed copy failed: no space left"));
        assert!(!is_position("0-1-42'; DROP TABLE x; --"));
        assert!(!is_position("0-1"));
    }
}
