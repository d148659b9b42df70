//! The cluster's state → what to do about it, as a list of [`Action`]s and the status to
//! publish. Pure: the executor ([`super::execute`]) carries the actions out, and the test
//! suite's simulator checks the plans against thousands of fault sequences.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    classify::{
        Classified, Observed, PrimaryHealth, ReplicaHealth, ReplicaView, holds_own_writes_alone,
        promotable,
    },
    failover::{self, Decision},
    gtid::GtidSet,
    semisync::{self, ReplicaState, SemiSync},
    server::Member,
    status::{Finding, FindingKind, Role, SemiSyncState, ServerStatus},
};

/// What the loop may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Promote a replica when the primary is gone.
    pub failover: bool,
    /// How long the primary must be gone first.
    pub failover_timeout: Duration,
    /// Promote even when the replica may lack writes acknowledged while semi-sync was
    /// degraded or off. Off: such a failover is held and status says why. Writes a replica
    /// acknowledged are never given up.
    pub allow_data_loss: bool,
    /// Lossless semi-synchronous replication.
    pub semi_sync: bool,
    /// Most acknowledgements the engine's semi-sync can wait for: MariaDB waits for one,
    /// whatever the number of replicas; MySQL for any number.
    pub max_semi_sync_acks: u32,
    /// Re-seed errant and broken replicas from the primary automatically.
    pub reseed: bool,
    /// The servers serve TLS, and this is the CA's path on every server: replication verifies
    /// its source with it (the loop verifies with its credentials' copy). `None`: plain text.
    pub tls_ca: Option<String>,
    /// Bound on every statement the loop sends (and on connecting).
    pub query_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            failover: true,
            failover_timeout: Duration::from_secs(10),
            allow_data_loss: false,
            semi_sync: true,
            max_semi_sync_acks: 1,
            reseed: true,
            tls_ca: None,
            query_timeout: Duration::from_secs(1),
        }
    }
}

/// Which acknowledged writes may be on no replica: what a failover could lose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Exposure {
    /// Any: semi-sync is not waiting, or has not been set since the loop started.
    #[default]
    Unbounded,
    /// Semi-sync has just started to wait: the next look at the primary bounds what it
    /// acknowledged before.
    Unmeasured,
    /// Every write acknowledged without a replica is within this set of the primary's.
    Within(GtidSet),
}

impl Exposure {
    /// After the primary's semi-sync went from `before` to `after`.
    pub fn after_switch(self, before: Option<SemiSyncState>, after: SemiSyncState) -> Self {
        match (before, after) {
            (Some(SemiSyncState::Waiting(_)), SemiSyncState::Waiting(_)) => self,
            (_, SemiSyncState::Waiting(_)) => Self::Unmeasured,
            _ => Self::Unbounded,
        }
    }
}

/// How long before a failover falls due its candidates' receivers are stopped.
/// Stopping takes MariaDB up to 2 s against a frozen source, and the tick doing it spends up
/// to a statement timeout looking at the primary first.
const PREPARE_MS: u64 = 4_500;
/// What `failover_pending` says when a failover is held, not just not due yet.
pub(crate) const FAILOVER_HELD: &str = "failover held";

/// Longest time before the first failed look at the primary counted as down time.
const DETECTION_CREDIT_MS: u64 = 2_000;

/// What the loop remembers between ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// When (loop milliseconds) the primary was first seen lost or isolated.
    pub down_since_ms: Option<u64>,
    /// Semi-sync as last set on the primary (`None`: not set since the loop started).
    pub semi_sync: Option<SemiSyncState>,
    /// What a failover could lose.
    pub exposure: Exposure,
    /// Everything the primary had when last seen serving.
    pub primary_seen: GtidSet,
    /// When (loop milliseconds) it was last seen serving.
    pub primary_seen_ms: Option<u64>,
    /// Replicas seen receiving from the current primary since it became primary (`None`:
    /// none promoted since the loop started).
    pub received_once: Option<BTreeSet<String>>,
    /// Each server's role when it last answered: a replica that was unreachable for a while
    /// is judged by what it was before.
    pub known_roles: BTreeMap<String, Role>,
}

/// One step for the executor, naming servers by member index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Refuse writes on a server that is not the primary.
    Fence(usize),
    /// Stop an errant or broken replica's replication: it must acknowledge nothing.
    StopReplication(usize),
    /// Point a server at the primary and start replicating.
    Follow(usize),
    /// Start re-seeding a server from the primary (runs beside the loop).
    Reseed(usize),
    /// Set the primary's semi-sync.
    SetSemiSync(SemiSyncState),
    /// Make the primary writable (last: every other server is fenced by then).
    MakeWritable,
    /// Stop these replicas' receivers, keeping what they received: a failover is about to
    /// fall due, and stopping takes seconds against a frozen source.
    StopReceivers(Vec<usize>),
    /// Fail over: fence the old primary, stop the candidates' receivers, promote the one
    /// holding the most, repoint the others.
    Failover {
        /// Replica to promote (the executor re-checks it against what the others hold once
        /// their receivers stopped).
        promote: usize,
        /// Replicas to follow it.
        repoint: Vec<usize>,
        /// Why the primary is being replaced.
        cause: String,
        /// The old primary answers the loop (it is cut off from its replicas only): it must
        /// be fenced before another server takes writes.
        primary_answers: bool,
    },
}

/// What one tick should do and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// In order.
    pub actions: Vec<Action>,
    /// What the loop remembers once this tick is planned (the executor updates semi-sync,
    /// which holds only once its statement succeeded).
    pub memory: Memory,
    /// Every server's status, in member order (the executor notes failures).
    pub servers: Vec<ServerStatus>,
    /// The primary takes writes (once [`Action::MakeWritable`] succeeds, when planned).
    pub primary_ready: bool,
    /// Semi-sync as it should be.
    pub semi_sync: SemiSyncState,
    /// Why a needed failover is not happening.
    pub failover_pending: Option<String>,
    /// What is wrong.
    pub findings: Vec<Finding>,
    /// Look again this soon rather than at the next regular tick: a failover falls due.
    pub wake_after_ms: Option<u64>,
}

fn address(m: &Member) -> String {
    format!("{}:{}", m.host, m.port)
}

fn previous<'a>(o: &'a Observed<'_>, i: usize) -> Option<&'a ServerStatus> {
    o.previous.iter().find(|s| s.name == o.members[i].name)
}

fn server_status(
    o: &Observed<'_>,
    i: usize,
    role: Role,
    gtids: Option<&String>,
    behind: u64,
    error: Option<String>,
) -> ServerStatus {
    let m = &o.members[i];
    ServerStatus {
        name: m.name.clone(),
        address: address(m),
        role,
        gtids: gtids
            .cloned()
            .or_else(|| previous(o, i).map(|s| s.gtids.clone()))
            .unwrap_or_default(),
        behind,
        error,
    }
}

/// Roles as last seen answering while the primary served (only then are they judged
/// against it), after this tick.
fn known_roles(memory: &Memory, servers: &[ServerStatus]) -> BTreeMap<String, Role> {
    let mut known = memory.known_roles.clone();
    for s in servers.iter().filter(|s| s.role != Role::Unreachable) {
        known.insert(s.name.clone(), s.role);
    }
    known
}

/// What the primary's semi-sync should be for these replicas.
pub fn semi_sync_for(policy: &Policy, members: usize, replicas: &[ReplicaState]) -> SemiSyncState {
    if !policy.semi_sync || members < 2 {
        return SemiSyncState::Off;
    }
    match semisync::wait_count(replicas) {
        SemiSync::Wait(n) => SemiSyncState::Waiting(n.min(policy.max_semi_sync_acks.max(1))),
        SemiSync::Degraded => SemiSyncState::Degraded,
    }
}

/// Plan one tick.
pub fn plan(
    o: &Observed<'_>,
    c: &Classified,
    policy: &Policy,
    memory: &Memory,
    now_ms: u64,
) -> Plan {
    match c.primary {
        PrimaryHealth::Serving {
            read_only,
            semi_sync,
        } => {
            // A primary that restarted lost its semi-sync setting: whatever the loop set
            // before no longer holds, and it acknowledged alone since.
            let waits = matches!(memory.semi_sync, Some(SemiSyncState::Waiting(_)));
            if waits && !semi_sync {
                let forgot = Memory {
                    semi_sync: None,
                    exposure: Exposure::Unbounded,
                    ..memory.clone()
                };
                maintain(o, c, policy, &forgot, read_only, now_ms)
            } else {
                maintain(o, c, policy, memory, read_only, now_ms)
            }
        }
        PrimaryHealth::Lost | PrimaryHealth::Isolated => primary_down(o, c, policy, memory, now_ms),
    }
}

/// The primary serves: keep every other server fenced and following it, mend or re-seed the
/// ones that cannot, size semi-sync, and make the primary writable last.
fn maintain(
    o: &Observed<'_>,
    c: &Classified,
    policy: &Policy,
    memory: &Memory,
    read_only: bool,
    now_ms: u64,
) -> Plan {
    let mut fences = Vec::new();
    let mut actions = Vec::new();
    let mut servers = Vec::new();
    let mut sizing = Vec::new();
    for r in &c.replicas {
        let i = r.index;
        if r.writable {
            fences.push(Action::Fence(i));
        }
        let gtids = r.gtids.as_ref();
        let status = match &r.health {
            ReplicaHealth::Unreachable => server_status(o, i, Role::Unreachable, None, 0, None),
            ReplicaHealth::Seeding => server_status(o, i, Role::Seeding, gtids, 0, None),
            ReplicaHealth::Diverged(why) | ReplicaHealth::Broken(why) => {
                let role = if matches!(r.health, ReplicaHealth::Diverged(_)) {
                    Role::Errant
                } else {
                    Role::Broken
                };
                actions.push(Action::StopReplication(i));
                let why = if policy.reseed {
                    actions.push(Action::Reseed(i));
                    format!("{why}; re-seeding from the primary")
                } else {
                    why.clone()
                };
                server_status(o, i, role, gtids, 0, Some(why))
            }
            ReplicaHealth::Following {
                connected,
                behind,
                error,
            } => {
                sizing.push(ReplicaState {
                    connected: *connected,
                    behind: *behind,
                });
                server_status(o, i, Role::Replica, gtids, *behind, error.clone())
            }
            ReplicaHealth::Astray => {
                actions.push(Action::Follow(i));
                // Counted as caught up once pointed at the primary: a larger wait count only
                // makes commits wait for it, never acknowledges one too early.
                let behind = c
                    .primary_has
                    .as_ref()
                    .map_or(0, |p| p.count().saturating_sub(r.has.count()));
                sizing.push(ReplicaState {
                    connected: true,
                    behind,
                });
                server_status(
                    o,
                    i,
                    Role::Replica,
                    gtids,
                    behind,
                    Some("replication starting".into()),
                )
            }
        };
        servers.push(status);
    }
    let semi_sync = semi_sync_for(policy, o.members.len(), &sizing);
    let mut findings = c.findings.clone();
    if semi_sync == SemiSyncState::Degraded {
        findings.push(Finding::cluster(
            FindingKind::SemiSyncDegraded,
            "no replica is caught up: commits are acknowledged without one",
        ));
    }
    if memory.semi_sync != Some(semi_sync) {
        actions.push(Action::SetSemiSync(semi_sync));
    }
    // The primary last: writable only once every other server is fenced.
    if read_only {
        actions.push(Action::MakeWritable);
    }
    fences.extend(actions);
    // Semi-sync waits since an earlier tick: whatever was acknowledged without a replica
    // before is within what the primary has now.
    let exposure = match (&memory.exposure, memory.semi_sync) {
        (Exposure::Unmeasured, Some(SemiSyncState::Waiting(_))) => {
            Exposure::Within(c.primary_has.clone().unwrap_or_default())
        }
        (e, _) => e.clone(),
    };
    servers.push(server_status(
        o,
        o.primary,
        Role::Primary,
        c.primary_gtids.as_ref(),
        0,
        None,
    ));
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    Plan {
        actions: fences,
        memory: Memory {
            down_since_ms: None,
            semi_sync: memory.semi_sync,
            exposure,
            known_roles: known_roles(memory, &servers),
            primary_seen: c.primary_has.clone().unwrap_or_default(),
            primary_seen_ms: Some(now_ms),
            received_once: memory.received_once.as_ref().map(|seen| {
                let mut seen = seen.clone();
                seen.extend(
                    c.replicas
                        .iter()
                        .filter(|r| r.receiving)
                        .map(|r| o.members[r.index].name.clone()),
                );
                seen
            }),
        },
        servers,
        primary_ready: !read_only,
        semi_sync,
        failover_pending: None,
        findings,
        wake_after_ms: None,
    }
}

/// The primary is lost or cut off: wait out the timeout, then fail over if that is safe (or
/// allowed), else say why not.
fn primary_down(
    o: &Observed<'_>,
    c: &Classified,
    policy: &Policy,
    memory: &Memory,
    now_ms: u64,
) -> Plan {
    // Down since it was last seen serving, not since this tick failed to reach it: the tick
    // interval and the statement timeout are no part of the failover timeout. At most
    // DETECTION_CREDIT_MS is credited, so a loop that itself stalled does not fail over on
    // its first look.
    let since = memory.down_since_ms.unwrap_or_else(|| {
        memory.primary_seen_ms.map_or(now_ms, |seen| {
            seen.max(now_ms.saturating_sub(DETECTION_CREDIT_MS))
        })
    });
    let lost = c.primary == PrimaryHealth::Lost;
    let cause = if lost {
        "primary unreachable"
    } else {
        "primary cut off from every replica"
    };
    let mut servers: Vec<ServerStatus> = c
        .replicas
        .iter()
        .map(|r| {
            let role = match r.health {
                ReplicaHealth::Unreachable => Role::Unreachable,
                ReplicaHealth::Seeding => Role::Seeding,
                ReplicaHealth::Diverged(_) => Role::Errant,
                ReplicaHealth::Broken(_) => Role::Broken,
                ReplicaHealth::Following { .. } | ReplicaHealth::Astray => Role::Replica,
            };
            let error = match &r.health {
                ReplicaHealth::Diverged(why) | ReplicaHealth::Broken(why) => Some(why.clone()),
                ReplicaHealth::Following { error, .. } => error.clone(),
                _ => None,
            };
            server_status(o, r.index, role, r.gtids.as_ref(), 0, error)
        })
        .collect();
    let primary_role = if lost {
        Role::Unreachable
    } else {
        Role::Primary
    };
    servers.push(server_status(
        o,
        o.primary,
        primary_role,
        c.primary_gtids.as_ref(),
        0,
        None,
    ));
    servers.sort_by(|a, b| a.name.cmp(&b.name));

    let known = |r: &ReplicaView| memory.known_roles.get(&o.members[r.index].name).copied();
    let observation = failover::Observation {
        primary: failover::Server {
            name: o.members[o.primary].name.clone(),
            reachable: false,
            executed: Default::default(),
            errant: false,
            diverged: false,
        },
        replicas: c
            .replicas
            .iter()
            .map(|r| failover::Server {
                name: o.members[r.index].name.clone(),
                reachable: r.health != ReplicaHealth::Unreachable,
                executed: r.has.clone(),
                errant: !promotable(r, known(r))
                    || holds_own_writes_alone(r, &c.replicas, &memory.primary_seen),
                // Found errant while the primary served (and stopped then), or being
                // re-seeded: what it holds says nothing of acknowledged writes. One found
                // diverged only now may still hold some.
                diverged: matches!(known(r), Some(Role::Errant | Role::Seeding))
                    || r.health == ReplicaHealth::Seeding,
            })
            .collect(),
        primary_down_for_ms: now_ms.saturating_sub(since).max(1),
        timeout_ms: u64::try_from(policy.failover_timeout.as_millis()).unwrap_or(u64::MAX),
        semi_sync_wait_count: match (memory.semi_sync, &memory.exposure) {
            (Some(SemiSyncState::Waiting(n)), Exposure::Within(_)) if policy.semi_sync => n,
            _ => 0,
        },
        must_have: match &memory.exposure {
            Exposure::Within(e) => Some(e.clone()),
            _ => None,
        },
        allow_data_loss: policy.allow_data_loss,
    };
    // A former primary that comes back while the current one is down must not take writes.
    let mut actions: Vec<Action> = c
        .replicas
        .iter()
        .filter(|r| r.writable)
        .map(|r| Action::Fence(r.index))
        .collect();
    let mut findings = c.findings.clone();
    let mut wake_after_ms = None;
    let pending = if !policy.failover {
        Some(format!("{cause}; automatic failover is disabled"))
    } else {
        match failover::decide(&observation) {
            Decision::Healthy => Some(cause.to_string()),
            Decision::Wait { remaining_ms } => {
                // Early by a statement timeout: the next tick spends that looking at the
                // primary before it decides.
                let look = u64::try_from(policy.query_timeout.as_millis()).unwrap_or(u64::MAX);
                wake_after_ms = Some(if remaining_ms > look {
                    remaining_ms - look
                } else {
                    remaining_ms
                });
                // Stopping a receiver hung on a frozen source takes MariaDB 2 s: do it just
                // before the failover falls due, when it would be carried out then. Should
                // the primary come back instead, the replicas are simply pointed at it again.
                let due = failover::Observation {
                    primary_down_for_ms: observation.timeout_ms,
                    ..observation.clone()
                };
                // Only for a primary that does not answer: an isolated one's replicas are
                // not hung on it, and their stopped receivers would hide the cut.
                if remaining_ms <= PREPARE_MS
                    && lost
                    && let Decision::Failover {
                        promote, repoint, ..
                    } = failover::decide(&due)
                {
                    let index = |name: &str| o.members.iter().position(|m| m.name == name);
                    let candidates: Vec<usize> = std::iter::once(&promote)
                        .chain(&repoint)
                        .filter_map(|n| index(n))
                        .collect();
                    actions.push(Action::StopReceivers(candidates));
                }
                Some(format!(
                    "{cause}; failover in {remaining_ms} ms unless it returns"
                ))
            }
            Decision::Blocked(why) => Some(format!("{cause}; {FAILOVER_HELD}: {why}")),
            Decision::Failover {
                promote, repoint, ..
            } => {
                let index = |name: &str| o.members.iter().position(|m| m.name == name);
                match index(&promote) {
                    Some(promote) => {
                        actions.push(Action::Failover {
                            promote,
                            repoint: repoint.iter().filter_map(|n| index(n)).collect(),
                            cause: cause.to_string(),
                            primary_answers: !lost,
                        });
                        None
                    }
                    None => Some(format!("{cause}; {promote} is not a member")),
                }
            }
        }
    };
    if let Some(why) = &pending {
        findings.push(Finding::cluster(FindingKind::FailoverHeld, why.clone()));
    }
    Plan {
        actions,
        memory: Memory {
            down_since_ms: Some(since),
            ..memory.clone()
        },
        servers,
        primary_ready: false,
        semi_sync: memory.semi_sync.unwrap_or(SemiSyncState::Off),
        failover_pending: pending,
        findings,
        wake_after_ms,
    }
}
