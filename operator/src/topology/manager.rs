//! The topology loop: one per cluster, separate from the resource reconciler. Each tick it asks
//! every server about itself (replicas first, then the primary, so no replica can look ahead of
//! a primary observed earlier), then either keeps a healthy topology in shape or carries out a
//! failover that [`failover::decide`] chose. What it concluded is published on a watch channel:
//! the Kubernetes publisher moves labels and status, the laptop runner writes the address chatd
//! follows.
//!
//! Keeping a healthy topology in shape means: exactly one writable server (any other is fenced
//! read-only), every other server replicating from the primary, errant or broken replicas
//! stopped (so they acknowledge nothing) and re-seeded when the policy allows, a rejoining old
//! primary turned into a replica, and semi-sync sized from the replicas that are caught up.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::future::join_all;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, info, info_span, warn};

use super::{
    dialect::{Dialect, Source},
    failover::{self, Decision, Observation},
    gtid::GtidSet,
    seed,
    semisync::{self, ReplicaState, SemiSync},
    server::{self, Credentials, Member, Report, Server},
};

/// Replication errors after which a replica cannot resume by itself: its source no longer has
/// the binary logs it needs, or it diverged (MariaDB: [`failover::SOURCE_REFUSED`] on the
/// receiver; 1950, an out-of-order GTID, on the applier).
const CANNOT_RESUME_IO: u32 = failover::SOURCE_REFUSED;
const OUT_OF_ORDER_GTID: u32 = 1950;
/// Longest a re-seed may take before the loop gives up on it for this tick.
const SEED_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest stopping a replica's receiver may take. MariaDB waits in steps of 2 s for a
/// receiver blocked on a source that no longer answers (measured: 2.0 s with the source
/// frozen), longer than the statement timeout; a failover that gave up there failed.
const RECEIVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the new primary may take to apply its relay log during a failover or switchover.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the loop may do.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Promote a replica when the primary is gone.
    pub failover: bool,
    /// How long the primary must be gone first.
    pub failover_timeout: Duration,
    /// Lossless semi-synchronous replication.
    pub semi_sync: bool,
    /// Re-seed errant and broken replicas from the primary automatically.
    pub reseed: bool,
    /// Replicate over TLS.
    pub tls: bool,
    /// Bound on every statement the loop sends (and on connecting).
    pub query_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            failover: true,
            failover_timeout: Duration::from_secs(10),
            semi_sync: true,
            reseed: true,
            tls: false,
            query_timeout: Duration::from_secs(1),
        }
    }
}

/// A server's part in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The one writable server.
    Primary,
    /// Replicating from the primary; serves reads.
    Replica,
    /// Holds transactions the primary does not have: never promoted, never read from.
    Errant,
    /// Replication stopped with an error it cannot recover from by itself.
    Broken,
    /// Being re-seeded from the primary.
    Seeding,
    /// Did not answer.
    Unreachable,
}

impl Role {
    /// Lower-case name, as labels and status show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Errant => "errant",
            Self::Broken => "broken",
            Self::Seeding => "seeding",
            Self::Unreachable => "unreachable",
        }
    }
}

/// One server in the published status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// Member name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Its role.
    pub role: Role,
    /// Executed GTIDs as the server prints them (last known when unreachable).
    pub gtids: String,
    /// Transactions behind the primary (replicas).
    pub behind: u64,
    /// Last replication error, or why it is errant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Semi-sync as the loop set it on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SemiSyncState {
    /// Off by policy, or no replicas.
    Off,
    /// Commits wait for this many replicas.
    Waiting(u32),
    /// No replica is caught up: commits are acknowledged without one.
    Degraded,
}

/// A failover or switchover that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// Milliseconds since the Unix epoch when it finished.
    pub at_unix_ms: u64,
    /// Old primary.
    pub from: String,
    /// New primary.
    pub to: String,
    /// Why: the failover's cause, or "switchover".
    pub reason: String,
    /// Failover: from the primary first seen gone to the new one writable. Switchover: the
    /// write pause (old primary fenced → new one writable).
    pub duration_ms: u64,
}

/// What the loop concluded on its last tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyStatus {
    /// The current primary's member name.
    pub primary: String,
    /// Its `host:port`, for clients.
    pub primary_address: String,
    /// The primary answered and accepts writes.
    pub primary_ready: bool,
    /// Every server.
    pub servers: Vec<ServerStatus>,
    /// Semi-sync on the primary.
    pub semi_sync: SemiSyncState,
    /// The last failover or switchover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_promotion: Option<Promotion>,
    /// Why a needed failover is not happening (or is not due yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_pending: Option<String>,
}

impl TopologyStatus {
    /// Names of servers in `role`.
    pub fn in_role(&self, role: Role) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| s.role == role)
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// Errors of planned operations (a tick reports its problems in the status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server failed.
    #[error(transparent)]
    Server(#[from] server::Error),
    /// The request cannot be carried out.
    #[error("{0}")]
    Refused(String),
}

/// The loop's state for one cluster.
pub struct Topology {
    servers: Vec<Server>,
    primary: usize,
    policy: Policy,
    credentials: Credentials,
    down_since: Option<Instant>,
    semi_sync: Option<SemiSyncState>,
    last_promotion: Option<Promotion>,
    status: watch::Sender<TopologyStatus>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn address(m: &Member) -> String {
    format!("{}:{}", m.host, m.port)
}

impl Topology {
    /// A loop over `members`, `primary` being the current primary's name (from the cluster's
    /// status, or the first member for a new cluster).
    pub fn new(
        members: Vec<Member>,
        primary: &str,
        credentials: Credentials,
        policy: Policy,
    ) -> Result<(Self, watch::Receiver<TopologyStatus>), Error> {
        let index = members
            .iter()
            .position(|m| m.name == primary)
            .ok_or_else(|| Error::Refused(format!("primary {primary} is not a member")))?;
        let initial = TopologyStatus {
            primary: primary.to_string(),
            primary_address: address(&members[index]),
            primary_ready: false,
            servers: Vec::new(),
            semi_sync: SemiSyncState::Off,
            last_promotion: None,
            failover_pending: None,
        };
        let (status, rx) = watch::channel(initial);
        let servers = members
            .into_iter()
            .map(|m| Server::new(m, credentials.clone(), policy.query_timeout))
            .collect();
        Ok((
            Self {
                servers,
                primary: index,
                policy,
                credentials,
                down_since: None,
                semi_sync: None,
                last_promotion: None,
                status,
            },
            rx,
        ))
    }

    /// Replace the member list (replicas added or removed), keeping connections to the ones
    /// that stay. The primary must stay.
    pub fn set_members(&mut self, members: Vec<Member>) -> Result<(), Error> {
        let primary = self.servers[self.primary].member.name.clone();
        if !members.iter().any(|m| m.name == primary) {
            return Err(Error::Refused(format!(
                "the primary {primary} cannot be removed"
            )));
        }
        let mut old: BTreeMap<String, Server> = self
            .servers
            .drain(..)
            .map(|s| (s.member.name.clone(), s))
            .collect();
        for m in members {
            let server = match old.remove(&m.name) {
                Some(s) if s.member == m => s,
                _ => Server::new(m, self.credentials.clone(), self.policy.query_timeout),
            };
            self.servers.push(server);
        }
        self.primary = self
            .servers
            .iter()
            .position(|s| s.member.name == primary)
            .unwrap_or(0);
        Ok(())
    }

    /// Change what the loop may do (the spec changed).
    pub fn set_policy(&mut self, policy: Policy) {
        if policy.semi_sync != self.policy.semi_sync {
            self.semi_sync = None;
        }
        self.policy = policy;
    }

    fn source(&self, index: usize) -> (String, u16) {
        let m = &self.servers[index].member;
        (m.host.clone(), m.port)
    }

    async fn observe(&mut self) -> Vec<Option<Report>> {
        let primary = self.primary;
        let replicas = join_all(
            self.servers
                .iter_mut()
                .enumerate()
                .map(|(i, s)| async move {
                    if i == primary {
                        None
                    } else {
                        s.report().await.ok()
                    }
                }),
        )
        .await;
        let primary_report = self.servers[primary].report().await;
        if let Err(e) = &primary_report {
            warn!(error = %e, "primary did not answer");
        }
        let mut reports = replicas;
        reports[primary] = primary_report.ok();
        reports
    }

    /// One round: observe, then maintain or fail over; publishes and returns the status.
    pub async fn tick(&mut self) -> TopologyStatus {
        let reports = self.observe().await;
        let isolated = reports[self.primary].is_some() && self.primary_isolated(&reports);
        let status = match &reports[self.primary] {
            Some(p) if !isolated => {
                self.down_since = None;
                let p = p.clone();
                self.maintain(&p, &reports).await
            }
            _ => {
                let since = *self.down_since.get_or_insert_with(Instant::now);
                self.primary_down(&reports, since, isolated).await
            }
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status.clone();
            changed
        });
        status
    }

    /// The primary answers, but every replica replicating from it has lost its connection
    /// ([`failover::primary_cut_off`]).
    fn primary_isolated(&self, reports: &[Option<Report>]) -> bool {
        let (host, port) = self.source(self.primary);
        let receivers: Vec<failover::Receiver> = reports
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.primary)
            .filter_map(|(_, r)| r.as_ref()?.replication.as_ref())
            .filter(|r| r.source_host == host && r.source_port == port)
            .map(|r| failover::Receiver {
                connected: r.io_running,
                errno: r.io_errno,
            })
            .collect();
        failover::primary_cut_off(&receivers)
    }

    /// Why `report` cannot serve as a replica of a primary holding `primary`, if it cannot.
    fn unfit(&self, report: &Report, primary: &GtidSet) -> Option<(Role, String)> {
        if let Some(why) = report.has().errant_against(primary) {
            return Some((Role::Errant, why));
        }
        self.replication_unfit(report)
    }

    /// Why `report`'s replication from the primary cannot resume by itself, if it cannot.
    fn replication_unfit(&self, report: &Report) -> Option<(Role, String)> {
        let (host, port) = self.source(self.primary);
        let r = report.replication.as_ref()?;
        if r.source_host != host || r.source_port != port {
            return None;
        }
        if r.sql_errno == OUT_OF_ORDER_GTID
            || (r.io_errno == CANNOT_RESUME_IO && r.io_error.contains("diverged"))
        {
            return Some((Role::Errant, r.sql_error.clone() + &r.io_error));
        }
        if r.io_errno == CANNOT_RESUME_IO {
            return Some((Role::Broken, r.io_error.clone()));
        }
        if r.sql_errno != 0 && !r.sql_running {
            return Some((Role::Broken, r.sql_error.clone()));
        }
        None
    }

    /// Where replicas replicate from now, and as whom.
    fn replica_source(&self) -> PrimarySource {
        let (host, port) = self.source(self.primary);
        PrimarySource {
            host,
            port,
            credentials: self.credentials.clone(),
            tls: self.policy.tls,
        }
    }

    /// Point server `i` at the primary and start it.
    async fn follow_primary(&mut self, i: usize) -> Result<(), server::Error> {
        let primary = self.replica_source();
        let source = primary.source();
        let dialect = self.servers[i].dialect();
        // Fenced and without clients before its own semi-sync wait is lifted: commits that
        // were waiting complete, but nobody is left to be told they did.
        self.servers[i].fence().await?;
        let mut statements: Vec<String> = vec![
            dialect.stop_replica().into(),
            dialect.semi_sync_source_off().into(),
        ];
        statements.extend(dialect.adopt_own_position().map(String::from));
        statements.push(dialect.change_source(&source));
        if self.policy.semi_sync {
            statements.push(dialect.semi_sync_replica().into());
        }
        statements.push(dialect.start_replica().into());
        self.servers[i].exec(&statements).await
    }

    /// Re-seed server `i` from the primary and make it follow.
    async fn reseed(&mut self, i: usize) -> Result<(), seed::Error> {
        let primary = self.replica_source();
        let source = primary.source();
        let name = self.servers[i].member.name.clone();
        info!(replica = %name, "re-seeding from the primary");
        let (primary, replica) = pair(&mut self.servers, self.primary, i);
        match tokio::time::timeout(SEED_TIMEOUT, seed::reseed(primary, replica, &source)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(seed::Error::Server(server::Error::Timeout {
                    server: name,
                    timeout: SEED_TIMEOUT,
                }));
            }
        }
        self.follow_primary(i).await?;
        info!(replica = %name, "re-seeded");
        Ok(())
    }

    async fn maintain(&mut self, p: &Report, reports: &[Option<Report>]) -> TopologyStatus {
        let mut servers = Vec::with_capacity(self.servers.len());
        let mut sizing = Vec::new();
        for (i, report) in reports.iter().enumerate() {
            if i == self.primary {
                continue;
            }
            let name = self.servers[i].member.name.clone();
            let Some(r) = report else {
                servers.push(self.server_status(i, Role::Unreachable, None, 0, None));
                continue;
            };
            if !r.read_only {
                warn!(server = %name, "a second writable server: fencing it");
                if let Err(e) = self.servers[i].fence().await {
                    warn!(server = %name, error = %e, "cannot fence");
                }
            }
            let behind = p.executed.count().saturating_sub(r.has().count());
            let (role, error) = match self.unfit(r, &p.executed) {
                Some((role, why)) => {
                    warn!(server = %name, role = role.as_str(), reason = %why, "replica unfit");
                    // Stopped, it acknowledges nothing it could not be promoted with.
                    let stop = self.servers[i].dialect().stop_replica();
                    if let Err(e) = self.servers[i].exec(&[stop]).await {
                        warn!(server = %name, error = %e, "cannot stop replication");
                    }
                    if self.policy.reseed {
                        match self.reseed(i).await {
                            Ok(()) => (
                                Role::Seeding,
                                Some(format!("re-seeded: was {}: {why}", role.as_str())),
                            ),
                            Err(e) => {
                                warn!(server = %name, error = %e, "re-seed failed; the next tick retries");
                                (role, Some(format!("{why}; re-seed failed: {e}")))
                            }
                        }
                    } else {
                        (role, Some(why))
                    }
                }
                None => {
                    let (host, port) = self.source(self.primary);
                    let following = r
                        .replication
                        .as_ref()
                        .filter(|x| x.source_host == host && x.source_port == port);
                    // Connected, or still connecting without an error (just started): counts
                    // for semi-sync, so a repointed replica does not degrade the new primary.
                    let (connected, role_error) = match following {
                        Some(x) if x.io_running && x.sql_running => (true, None),
                        Some(x) if x.io_errno != 0 => (false, Some(x.io_error.clone())),
                        Some(x) if x.sql_running => (true, None),
                        // Shown as starting until a tick sees it replicate.
                        _ => match self.follow_primary(i).await {
                            Ok(()) => (true, Some("replication starting".to_string())),
                            Err(e) => (false, Some(e.to_string())),
                        },
                    };
                    sizing.push(ReplicaState { connected, behind });
                    (Role::Replica, role_error)
                }
            };
            let gtids = Some(r.executed_text.clone());
            servers.push(self.server_status(i, role, gtids, behind, error));
        }

        // The primary last: writable only once every other server is fenced.
        let primary_ready = if p.read_only {
            let dialect = self.servers[self.primary].dialect();
            match self.servers[self.primary].exec(&dialect.promote()).await {
                Ok(()) => {
                    info!(primary = %self.servers[self.primary].member.name, "primary made writable");
                    true
                }
                Err(e) => {
                    warn!(error = %e, "cannot make the primary writable");
                    false
                }
            }
        } else {
            true
        };
        let semi_sync = self.size_semi_sync(&sizing).await;
        let primary_status = self.server_status(
            self.primary,
            Role::Primary,
            Some(p.executed_text.clone()),
            0,
            None,
        );
        servers.insert(0, primary_status);
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        self.status_with(servers, primary_ready, semi_sync, None)
    }

    async fn size_semi_sync(&mut self, replicas: &[ReplicaState]) -> SemiSyncState {
        let replicas_exist = self.servers.len() > 1;
        let wanted = if !self.policy.semi_sync || !replicas_exist {
            SemiSyncState::Off
        } else {
            match semisync::wait_count(replicas) {
                SemiSync::Wait(n) => SemiSyncState::Waiting(n),
                SemiSync::Degraded => SemiSyncState::Degraded,
            }
        };
        if self.semi_sync != Some(wanted) {
            let dialect = self.servers[self.primary].dialect();
            let statements = semi_sync_statements(dialect, wanted);
            match self.servers[self.primary].exec(&statements).await {
                Ok(()) => {
                    info!(state = ?wanted, "semi-sync set");
                    self.semi_sync = Some(wanted);
                }
                Err(e) => warn!(error = %e, "cannot set semi-sync"),
            }
        }
        wanted
    }

    fn server_status(
        &self,
        i: usize,
        role: Role,
        gtids: Option<String>,
        behind: u64,
        error: Option<String>,
    ) -> ServerStatus {
        let member = &self.servers[i].member;
        let previous = self
            .status
            .borrow()
            .servers
            .iter()
            .find(|s| s.name == member.name)
            .map(|s| s.gtids.clone());
        ServerStatus {
            name: member.name.clone(),
            address: address(member),
            role,
            gtids: gtids.or(previous).unwrap_or_default(),
            behind,
            error,
        }
    }

    fn status_with(
        &self,
        servers: Vec<ServerStatus>,
        primary_ready: bool,
        semi_sync: SemiSyncState,
        failover_pending: Option<String>,
    ) -> TopologyStatus {
        let primary = &self.servers[self.primary].member;
        TopologyStatus {
            primary: primary.name.clone(),
            primary_address: address(primary),
            primary_ready,
            servers,
            semi_sync,
            last_promotion: self.last_promotion.clone(),
            failover_pending,
        }
    }

    async fn primary_down(
        &mut self,
        reports: &[Option<Report>],
        since: Instant,
        isolated: bool,
    ) -> TopologyStatus {
        let previous = self.status.borrow().clone();
        let role_of = |name: &str| {
            previous
                .servers
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.role)
        };
        let as_server = |i: usize, s: &Server| {
            let r = reports[i].as_ref();
            failover::Server {
                name: s.member.name.clone(),
                reachable: r.is_some(),
                executed: r.map(Report::has).unwrap_or_default(),
                io_running: r
                    .and_then(|r| r.replication.as_ref())
                    .is_none_or(|x| x.io_running || x.io_errno == 0),
                // Only a replica last seen serving may be promoted. (Positions are not compared
                // with the primary's last seen: replicas legitimately received more since.)
                errant: r.is_some_and(|r| self.replication_unfit(r).is_some())
                    || !matches!(role_of(&s.member.name), Some(Role::Replica) | None),
            }
        };
        let observation = Observation {
            primary: failover::Server {
                name: self.servers[self.primary].member.name.clone(),
                reachable: reports[self.primary].is_some(),
                // As last published (the decision does not need it; the record does).
                executed: previous
                    .servers
                    .iter()
                    .find(|x| x.name == previous.primary)
                    .and_then(|x| {
                        self.servers[self.primary]
                            .dialect()
                            .parse_gtids(&x.gtids)
                            .ok()
                    })
                    .unwrap_or_default(),
                io_running: true,
                errant: false,
            },
            replicas: self
                .servers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != self.primary)
                .map(|(i, s)| as_server(i, s))
                .collect(),
            primary_down_for_ms: u64::try_from(since.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            timeout_ms: u64::try_from(self.policy.failover_timeout.as_millis()).unwrap_or(u64::MAX),
            semi_sync_wait_count: match self.semi_sync {
                Some(SemiSyncState::Waiting(n)) => n,
                _ => 0,
            },
        };
        let cause = if isolated {
            "primary cut off from every replica"
        } else {
            "primary unreachable"
        };
        let mut servers: Vec<ServerStatus> = previous.servers.clone();
        for s in &mut servers {
            if let Some(i) = self.servers.iter().position(|x| x.member.name == s.name)
                && reports[i].is_none()
            {
                s.role = Role::Unreachable;
            }
        }
        let why = if !self.policy.failover {
            format!("{cause}; automatic failover is disabled")
        } else {
            match failover::decide(&observation) {
                Decision::Healthy => cause.to_string(),
                Decision::Wait { remaining_ms } => {
                    format!("{cause}; failover in {remaining_ms} ms unless it returns")
                }
                Decision::Blocked(why) => {
                    warn!(reason = %why, "failover blocked");
                    format!("{cause}; failover blocked: {why}")
                }
                Decision::Failover {
                    promote,
                    repoint,
                    excluded,
                } => {
                    match self
                        .carry_out(
                            &observation.primary.name,
                            &promote,
                            &repoint,
                            &excluded,
                            since,
                            cause,
                        )
                        .await
                    {
                        Ok(status) => return status,
                        Err(e) => format!("{cause}; failover failed: {e}"),
                    }
                }
            }
        };
        self.status_with(servers, false, previous.semi_sync, Some(why))
    }

    async fn carry_out(
        &mut self,
        from: &str,
        promote: &str,
        repoint: &[String],
        excluded: &[(String, String)],
        since: Instant,
        cause: &str,
    ) -> Result<TopologyStatus, Error> {
        for (name, why) in excluded {
            info!(server = %name, reason = %why, "left out of the failover");
        }
        let span = info_span!("failover", from = %from, to = %promote);
        match self
            .fail_over(promote, repoint, since, cause)
            .instrument(span)
            .await
        {
            // Describe the new topology at once rather than a tick later.
            Ok(()) => Ok(Box::pin(self.tick()).await),
            Err(e) => {
                warn!(error = %e, "failover failed; will retry");
                Err(e)
            }
        }
    }

    fn index(&self, name: &str) -> Result<usize, Error> {
        self.servers
            .iter()
            .position(|s| s.member.name == name)
            .ok_or_else(|| Error::Refused(format!("{name} is not a member")))
    }

    /// Promote `promote`, repoint `repoint`.
    async fn fail_over(
        &mut self,
        promote: &str,
        repoint: &[String],
        since: Instant,
        cause: &str,
    ) -> Result<(), Error> {
        let old = self.primary;
        let mut candidates = vec![self.index(promote)?];
        for name in repoint {
            candidates.push(self.index(name)?);
        }
        // All at once, as each can take seconds against a dead server: fence the old primary
        // where it can be reached (it must not take writes any more), and freeze what every
        // candidate has received. Fencing need not come first: with semi-sync, a commit the
        // old primary makes meanwhile waits for an acknowledgement (its own timeout is a day)
        // and its client is cut off by the fence; without semi-sync, a primary the replicas
        // no longer reach can lose writes whatever the order.
        let work = self
            .servers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i == old || candidates.contains(i))
            .map(|(i, s)| async move {
                if i == old {
                    if let Err(e) = s.fence().await {
                        info!(error = %e, "old primary not fenced (unreachable)");
                    }
                    return;
                }
                let stop = s.dialect().stop_io_thread();
                if let Err(e) = s.exec_within(&[stop], RECEIVER_STOP_TIMEOUT).await {
                    warn!(server = %s.member.name, error = %e, "cannot stop receiving");
                }
            });
        join_all(work).await;
        // The decision was taken on reports from before the receivers stopped: take it again
        // on what they hold now.
        let mut held = Vec::new();
        for &i in &candidates {
            let report = self.servers[i].report().await?;
            held.push((i, report));
        }
        let Some((best, report)) = held
            .iter()
            .find(|(_, r)| held.iter().all(|(_, o)| r.has().contains(&o.has())))
            .cloned()
        else {
            return Err(Error::Refused(
                "candidates diverged after stopping their receivers".into(),
            ));
        };
        if let Some(received) = report.replication.as_ref().map(|r| r.received.clone())
            && !received.is_empty()
        {
            let text = report
                .replication
                .as_ref()
                .map(|r| r.received_text.clone())
                .unwrap_or_default();
            if !self.servers[best]
                .wait_applied(&text, APPLY_TIMEOUT)
                .await?
            {
                return Err(Error::Refused(format!(
                    "{} did not apply its relay log within {APPLY_TIMEOUT:?}",
                    self.servers[best].member.name
                )));
            }
        }
        let others: Vec<usize> = candidates.iter().copied().filter(|&i| i != best).collect();
        self.promote(best, others.len()).await?;
        self.primary = best;
        self.semi_sync = None;
        self.down_since = None;
        for i in others {
            if let Err(e) = self.follow_primary(i).await {
                warn!(server = %self.servers[i].member.name, error = %e, "cannot repoint; the next tick retries");
            }
        }
        let record = Promotion {
            at_unix_ms: now_ms(),
            from: self.servers[old].member.name.clone(),
            to: self.servers[best].member.name.clone(),
            reason: cause.to_string(),
            duration_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        info!(from = %record.from, to = %record.to, duration_ms = record.duration_ms, "failover done");
        self.last_promotion = Some(record);
        Ok(())
    }

    /// Make server `i` the writable primary, with semi-sync waiting for the `followers` that are
    /// about to follow it (they hold no more than it does, so they are caught up at once).
    async fn promote(&mut self, i: usize, followers: usize) -> Result<(), Error> {
        let dialect = self.servers[i].dialect();
        let state = if !self.policy.semi_sync || followers == 0 {
            SemiSyncState::Off
        } else {
            match semisync::wait_count(&vec![
                ReplicaState {
                    connected: true,
                    behind: 0
                };
                followers
            ]) {
                SemiSync::Wait(n) => SemiSyncState::Waiting(n),
                SemiSync::Degraded => SemiSyncState::Degraded,
            }
        };
        let mut statements: Vec<String> = semi_sync_statements(dialect, state);
        statements.extend(dialect.promote().into_iter().map(String::from));
        self.servers[i].exec(&statements).await?;
        Ok(())
    }

    /// Planned switchover to replica `target`: fence the primary, let `target` apply everything,
    /// promote it, repoint every other server (the old primary included). Returns the record;
    /// its duration is the write pause.
    pub async fn switchover(&mut self, target: &str) -> Result<Promotion, Error> {
        let t = self.index(target)?;
        let old = self.primary;
        if t == old {
            return Err(Error::Refused(format!("{target} is already the primary")));
        }
        let role = self
            .status
            .borrow()
            .servers
            .iter()
            .find(|s| s.name == target)
            .map(|s| s.role);
        if role != Some(Role::Replica) {
            return Err(Error::Refused(format!(
                "{target} is not a serving replica (it is {})",
                role.map_or("unknown", Role::as_str)
            )));
        }
        let started = Instant::now();
        self.servers[old].fence().await?;
        let result = async {
            let final_gtids = self.servers[old].report().await?.executed_text;
            if !self.servers[t]
                .wait_applied(&final_gtids, APPLY_TIMEOUT)
                .await?
            {
                return Err(Error::Refused(format!(
                    "{target} did not catch up within {APPLY_TIMEOUT:?}"
                )));
            }
            let followers = self.servers.len() - 1;
            self.promote(t, followers).await
        }
        .await;
        if let Err(e) = result {
            // Nothing changed hands: give the writes back to the old primary.
            let undo = self.servers[old].dialect().promote();
            if let Err(undo_err) = self.servers[old].exec(&undo).await {
                warn!(error = %undo_err, "cannot make the old primary writable again");
            }
            return Err(e);
        }
        let pause = started.elapsed();
        self.primary = t;
        self.semi_sync = None;
        for i in 0..self.servers.len() {
            if i != t
                && let Err(e) = self.follow_primary(i).await
            {
                warn!(server = %self.servers[i].member.name, error = %e, "cannot repoint; the next tick retries");
            }
        }
        let record = Promotion {
            at_unix_ms: now_ms(),
            from: self.servers[old].member.name.clone(),
            to: target.to_string(),
            reason: "switchover".into(),
            duration_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
        };
        info!(from = %record.from, to = %record.to, pause_ms = record.duration_ms, "switchover done");
        self.last_promotion = Some(record.clone());
        self.tick().await;
        Ok(record)
    }
}

fn semi_sync_statements(dialect: &dyn Dialect, state: SemiSyncState) -> Vec<String> {
    match state {
        SemiSyncState::Waiting(n) => dialect.semi_sync_source(n),
        SemiSyncState::Off | SemiSyncState::Degraded => vec![dialect.semi_sync_source_off().into()],
    }
}

/// The primary's address and the replication user, owned (the loop's state changes while a
/// [`Source`] borrowed from it is in use).
struct PrimarySource {
    host: String,
    port: u16,
    credentials: Credentials,
    tls: bool,
}

impl PrimarySource {
    fn source(&self) -> Source<'_> {
        Source {
            host: &self.host,
            port: self.port,
            user: &self.credentials.repl_user,
            password: &self.credentials.repl_password,
            tls: self.tls,
        }
    }
}

/// Two distinct servers, mutably.
fn pair(servers: &mut [Server], a: usize, b: usize) -> (&mut Server, &mut Server) {
    if a < b {
        let (left, right) = servers.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = servers.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// Requests to a running loop.
enum Command {
    Switchover(String, oneshot::Sender<Result<Promotion, Error>>),
    Members(Vec<Member>),
    Policy(Policy),
}

/// Talks to a running loop.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    /// The loop's latest status.
    pub status: watch::Receiver<TopologyStatus>,
}

impl Handle {
    /// Planned switchover to `target`.
    pub async fn switchover(&self, target: &str) -> Result<Promotion, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Switchover(target.to_string(), tx))
            .await
            .map_err(|_| Error::Refused("the topology loop has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Refused("the topology loop has stopped".into()))?
    }

    /// New member list.
    pub async fn set_members(&self, members: Vec<Member>) {
        let _ = self.commands.send(Command::Members(members)).await;
    }

    /// New policy.
    pub async fn set_policy(&self, policy: Policy) {
        let _ = self.commands.send(Command::Policy(policy)).await;
    }
}

/// Run `topology` every `tick` (and on requests) until every [`Handle`] is dropped.
pub fn spawn(
    mut topology: Topology,
    status: watch::Receiver<TopologyStatus>,
    tick: Duration,
) -> Handle {
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    None => break,
                    Some(Command::Switchover(target, reply)) => {
                        let _ = reply.send(topology.switchover(&target).await);
                    }
                    Some(Command::Members(members)) => {
                        if let Err(e) = topology.set_members(members) {
                            warn!(error = %e, "member list refused");
                        }
                    }
                    Some(Command::Policy(policy)) => topology.set_policy(policy),
                },
                _ = interval.tick() => {
                    topology.tick().instrument(info_span!("topology_tick")).await;
                }
            }
        }
    });
    Handle {
        commands: tx,
        status,
    }
}
