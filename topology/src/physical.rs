//! Physical re-seeding of a MariaDB replica: a hot copy of the primary's files
//! (mariadb-backup) is prepared beside the replica's data while the replica runs on its own,
//! then put in place and the replica restarted on it; it replicates from the copy's GTID
//! position. The replica's own data stays until the copy is complete and prepared.
//!
//! Where the files are, and how a server restarts, differ: a [`Seeder`] says. Local mode's
//! (the operator's `seed::local::LocalSeeder`) pipes mariadb-backup into mbstream on this machine and renames data
//! directories; Kubernetes' (in `reconcile::seed`) runs a Job and restarts the pod. What
//! both share — waiting for the new process and setting its position — is [`reseed`].
//!
//! Only MariaDB: MySQL copies itself with `CLONE INSTANCE` (see [`super::dialect::Seed`]).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::info;

use super::server::{Error as ServerError, Member, Server};

/// Errors of a physical re-seed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Making the copy failed (the platform's copy mechanism says why).
    #[error(transparent)]
    Copy(Box<dyn std::error::Error + Send + Sync>),
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
