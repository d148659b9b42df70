//! What the topology loop concludes and publishes: each server's role, semi-sync, the last
//! promotion, and what it found wrong. Plain data, shared by the loop, both drivers (the
//! Kubernetes reconciler and the laptop runner) and the status they write.

use serde::Serialize;

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
    /// Every role, in the order above.
    pub const ALL: [Role; 6] = [
        Self::Primary,
        Self::Replica,
        Self::Errant,
        Self::Broken,
        Self::Seeding,
        Self::Unreachable,
    ];

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
    /// What is wrong, most serious first (empty: nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
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

    /// Why a failover that is due is held (it would break a promise, or no replica can take
    /// over): what needs a person, as against one still counting down.
    pub fn failover_held(&self) -> Option<&str> {
        self.failover_pending
            .as_deref()
            .filter(|p| p.contains(super::plan::FAILOVER_HELD))
    }

    /// The loop's notion of done: the primary takes writes, every other server replicates
    /// from it without an error, and semi-sync is sized to them (or off by policy).
    pub fn ready(&self) -> bool {
        self.primary_ready
            && self.semi_sync != SemiSyncState::Degraded
            && self
                .servers
                .iter()
                .all(|s| s.role == Role::Primary || (s.role == Role::Replica && s.error.is_none()))
    }
}

/// Something the loop found wrong, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FindingKind {
    /// The primary does not answer.
    PrimaryLost,
    /// The primary answers, but no replica reaches it.
    PrimaryIsolated,
    /// A failover is due but not done (not yet, blocked, or held by policy).
    FailoverHeld,
    /// No replica is caught up: commits are acknowledged without one.
    SemiSyncDegraded,
    /// A replica is connected but more than [`super::semisync::CAUGHT_UP`] behind.
    ReplicaLagging,
    /// A replica holds transactions the primary does not have.
    ReplicaDiverged,
    /// A replica's replication stopped with an error it cannot recover from.
    ReplicaBroken,
    /// A replica does not answer.
    ReplicaUnreachable,
    /// A replica is being re-seeded.
    ReplicaSeeding,
    /// A server other than the primary accepted writes (it is fenced).
    SecondWritable,
    /// Re-seeding a replica failed several times in a row.
    ReseedFailing,
    /// Another action failed several ticks in a row.
    ActionFailing,
}

impl FindingKind {
    /// Its name as status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrimaryLost => "primaryLost",
            Self::PrimaryIsolated => "primaryIsolated",
            Self::FailoverHeld => "failoverHeld",
            Self::SemiSyncDegraded => "semiSyncDegraded",
            Self::ReplicaLagging => "replicaLagging",
            Self::ReplicaDiverged => "replicaDiverged",
            Self::ReplicaBroken => "replicaBroken",
            Self::ReplicaUnreachable => "replicaUnreachable",
            Self::ReplicaSeeding => "replicaSeeding",
            Self::SecondWritable => "secondWritable",
            Self::ReseedFailing => "reseedFailing",
            Self::ActionFailing => "actionFailing",
        }
    }
}

/// One finding: what, about which server, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// The server it concerns (none: the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Why, in words.
    pub reason: String,
}

impl Finding {
    /// A finding about `server`.
    pub fn about(kind: FindingKind, server: &str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            server: Some(server.to_string()),
            reason: reason.into(),
        }
    }

    /// A finding about the whole cluster.
    pub fn cluster(kind: FindingKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            server: None,
            reason: reason.into(),
        }
    }
}
