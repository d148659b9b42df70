//! The topology loop: one per cluster, beside the resource reconciler. Each tick goes
//! observe → classify → plan → execute:
//! - observe: every server reports about itself (replicas first, then the primary, so no
//!   replica can look ahead of a primary observed earlier);
//! - classify ([`super::classify`]) and plan ([`super::plan`]), both pure: the cluster's state
//!   and the actions it calls for;
//! - execute ([`super::execute`]) through the [`DbServer`] trait.
//!
//! What it concluded is published on a watch channel: the Kubernetes publisher moves labels and
//! status, the laptop runner writes the address chatd follows.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::future::join_all;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{Instrument, info_span, warn};

use super::{
    classify::{Observed, classify},
    db::DbServer,
    plan::{self, Memory, Policy},
    server::{self, Credentials, Member, Report, Server},
    status::{Promotion, TopologyStatus},
};

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

/// Milliseconds on the loop's clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The loop's state for one cluster.
pub struct Topology<S: DbServer = Server> {
    pub(super) servers: Vec<S>,
    pub(super) primary: usize,
    pub(super) policy: Policy,
    pub(super) credentials: Credentials,
    pub(super) memory: Memory,
    pub(super) last_promotion: Option<Promotion>,
    /// Re-seeds running beside the loop, by member name; each ends with the error, if any.
    pub(super) seeding: BTreeMap<String, JoinHandle<Result<(), String>>>,
    /// When (loop milliseconds) a failed re-seed may be tried again, by member name.
    pub(super) seed_retry_at: BTreeMap<String, u64>,
    /// Consecutive failures of each action, by action and server.
    pub(super) failures: BTreeMap<(&'static str, String), super::execute::Failing>,
    pub(super) status: watch::Sender<TopologyStatus>,
    clock: Clock,
    /// When the last tick wants the next one sooner than the regular interval.
    wake_after: Option<Duration>,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since now, from a monotonic clock: the loop's clock for real servers.
pub fn monotonic_clock() -> Clock {
    let started = Instant::now();
    Arc::new(move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The loop's clock now.
pub(super) fn now_ms<S: DbServer>(t: &Topology<S>) -> u64 {
    (t.clock)()
}

fn address(m: &Member) -> String {
    format!("{}:{}", m.host, m.port)
}

impl Topology<Server> {
    /// A loop over real servers `members`, `primary` being the current primary's name (from
    /// the cluster's status, or the first member for a new cluster).
    pub fn new(
        members: Vec<Member>,
        primary: &str,
        credentials: Credentials,
        policy: Policy,
    ) -> Result<(Self, watch::Receiver<TopologyStatus>), Error> {
        let servers = members
            .into_iter()
            .map(|m| Server::new(m, credentials.clone(), policy.query_timeout))
            .collect();
        Self::with_servers(servers, primary, credentials, policy, monotonic_clock())
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
        // Every server of a cluster is copied the same way: new ones get the others' seeder.
        let seeder = self.servers.iter().find_map(Server::seeder);
        let mut old: BTreeMap<String, Server> = self
            .servers
            .drain(..)
            .map(|s| (s.member.name.clone(), s))
            .collect();
        for m in members {
            let server = match old.remove(&m.name) {
                Some(s) if s.member == m => s,
                _ => {
                    let server =
                        Server::new(m, self.credentials.clone(), self.policy.query_timeout);
                    match &seeder {
                        Some(seeder) => server.with_seeder(seeder.clone()),
                        None => server,
                    }
                }
            };
            self.servers.push(server);
        }
        for (name, task) in std::mem::take(&mut self.seeding) {
            if old.contains_key(&name) {
                task.abort();
            } else {
                self.seeding.insert(name, task);
            }
        }
        self.primary = self
            .servers
            .iter()
            .position(|s| s.member.name == primary)
            .unwrap_or(0);
        Ok(())
    }
}

impl<S: DbServer> Topology<S> {
    /// A loop over `servers` (any [`DbServer`]: the simulator's too), timed by `clock`.
    pub fn with_servers(
        servers: Vec<S>,
        primary: &str,
        credentials: Credentials,
        policy: Policy,
        clock: Clock,
    ) -> Result<(Self, watch::Receiver<TopologyStatus>), Error> {
        let index = servers
            .iter()
            .position(|s| s.member().name == primary)
            .ok_or_else(|| Error::Refused(format!("primary {primary} is not a member")))?;
        let initial = TopologyStatus {
            primary: primary.to_string(),
            primary_address: address(servers[index].member()),
            primary_ready: false,
            servers: Vec::new(),
            semi_sync: super::status::SemiSyncState::Off,
            last_promotion: None,
            failover_pending: None,
            findings: Vec::new(),
        };
        let (status, rx) = watch::channel(initial);
        Ok((
            Self {
                servers,
                primary: index,
                policy,
                credentials,
                memory: Memory::default(),
                last_promotion: None,
                seeding: BTreeMap::new(),
                seed_retry_at: BTreeMap::new(),
                failures: BTreeMap::new(),
                status,
                clock,
                wake_after: None,
            },
            rx,
        ))
    }

    /// Change what the loop may do (the spec changed).
    pub fn set_policy(&mut self, policy: Policy) {
        if policy.semi_sync != self.policy.semi_sync {
            self.memory.semi_sync = None;
        }
        self.policy = policy;
    }

    pub(super) fn index(&self, name: &str) -> Result<usize, Error> {
        self.servers
            .iter()
            .position(|s| s.member().name == name)
            .ok_or_else(|| Error::Refused(format!("{name} is not a member")))
    }

    async fn observe(&mut self) -> Vec<Option<Report>> {
        let primary = self.primary;
        let mut reports = join_all(
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
        match self.servers[primary].report().await {
            Ok(r) => reports[primary] = Some(r),
            Err(e) => warn!(error = %e, "primary did not answer"),
        }
        reports
    }

    /// One round: observe, classify, plan, execute; publishes and returns the status. After
    /// a failover, one more round describes the new topology at once.
    pub async fn tick(&mut self) -> TopologyStatus {
        let reaped = self.reap_seeds().await;
        let reports = self.observe().await;
        let members: Vec<Member> = self.servers.iter().map(|s| s.member().clone()).collect();
        let previous = self.status.borrow().servers.clone();
        let seeding: Vec<bool> = members
            .iter()
            .map(|m| self.seeding.contains_key(&m.name))
            .collect();
        let observed = Observed {
            members: &members,
            primary: self.primary,
            reports: &reports,
            previous: &previous,
            seeding,
            received_once: self.memory.received_once.as_ref(),
            tls: self.policy.tls_ca.is_some(),
        };
        let classified = classify(&observed);
        let mut plan = plan::plan(
            &observed,
            &classified,
            &self.policy,
            &self.memory,
            now_ms(self),
        );
        self.memory = plan.memory.clone();
        for (i, result) in reaped {
            self.note(&mut plan, super::execute::RESEED, i, result);
        }
        self.keep_seed_findings(&mut plan);
        self.wake_after = plan.wake_after_ms.map(Duration::from_millis);
        if self.execute(&mut plan).await {
            return Box::pin(self.tick()).await;
        }
        let primary = self.servers[self.primary].member();
        let status = TopologyStatus {
            primary: primary.name.clone(),
            primary_address: address(primary),
            primary_ready: plan.primary_ready,
            servers: plan.servers,
            semi_sync: plan.semi_sync,
            last_promotion: self.last_promotion.clone(),
            failover_pending: plan.failover_pending,
            findings: plan.findings,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status.clone();
            changed
        });
        status
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
    mut topology: Topology<Server>,
    status: watch::Receiver<TopologyStatus>,
    tick: Duration,
) -> Handle {
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut due = tokio::time::Instant::now();
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
                () = tokio::time::sleep_until(due) => {
                    let started = tokio::time::Instant::now();
                    topology.tick().instrument(info_span!("topology_tick")).await;
                    // The regular interval, or sooner when a failover falls due before it
                    // (without waiting for the next tick, the timeout would stretch by up to
                    // one interval).
                    due = started + topology.wake_after.map_or(tick, |w| w.min(tick));
                }
            }
        }
    });
    Handle {
        commands: tx,
        status,
    }
}
