//! What the operator observed: `ChatCluster.status`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a ChatCluster, computed from its children's own status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary: `Progressing`, `Ready` or `Degraded`.
    #[serde(default)]
    pub phase: Phase,
    /// `Ready`, `Progressing`, `Degraded` and `DatabaseReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Ready and desired replicas per chat service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ReplicaStatus>,
    /// Services with all replicas ready, over all services, e.g. `4/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_ready: Option<String>,
    /// The database servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// The Envoy tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ReplicaStatus>,
    /// Where clients connect (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Autoscaled services: the autoscaler's decision and the signal behind it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub autoscaling: BTreeMap<String, AutoscalingStatus>,
}

/// The autoscaler's view of one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Replicas the Deployment has.
    pub current_replicas: i32,
    /// Replicas the autoscaler wants.
    pub desired_replicas: i32,
    /// The last sample's recommendation, before the windows and bounds.
    #[serde(default)]
    pub recommended_replicas: i32,
    /// The most replicas it may want (`autoscaling.maxReplicas`): wanting them for long means
    /// the load may need more.
    #[serde(default)]
    pub max_replicas: i32,
    /// Requests per second Envoy sends the service, whole service (decimal string).
    #[serde(default)]
    pub requests_per_second: String,
    /// Requests in progress, whole service.
    #[serde(default)]
    pub in_flight: i64,
    /// Average CPU of its pods, percent of their request (with the metrics API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_utilization_percent: Option<i32>,
    /// Why the last sample could not be taken (no decision is made without a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_error: Option<String>,
}

/// Ready against desired replicas of one workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas passing their readiness probe.
    pub ready: i32,
    /// Replicas asked for.
    pub desired: i32,
}

/// Database servers as observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// Pod name of the current primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Whether the primary is ready.
    pub primary_ready: bool,
    /// Read replicas ready, over desired, e.g. `2/2`.
    pub replicas_ready: String,
    /// Every server as the topology loop sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<DatabaseServerStatus>,
    /// Replicas holding transactions the primary lacks: out of the read Service, never
    /// promoted (re-seeded when allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errant: Vec<String>,
    /// Semi-sync on the primary: `off`, `waiting for N`, or `degraded` (no caught-up replica:
    /// commits are acknowledged without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi_sync: Option<String>,
    /// The last failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverStatus>,
    /// Why a needed failover has not happened (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_pending: Option<String>,
    /// What the topology loop finds wrong, most serious first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<DatabaseFinding>,
}

/// Something the topology loop finds wrong with the database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseFinding {
    /// What: primaryLost, primaryIsolated, failoverHeld, semiSyncDegraded, replicaLagging,
    /// replicaDiverged, replicaBroken, replicaUnreachable, replicaSeeding, secondWritable,
    /// reseedFailing or actionFailing.
    pub kind: String,
    /// The server it concerns (none: the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// One database server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerStatus {
    /// Pod name.
    pub name: String,
    /// primary, replica, errant, broken, seeding or unreachable.
    pub role: String,
    /// Executed GTIDs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gtids: String,
    /// Transactions behind the primary.
    #[serde(default)]
    pub behind: u64,
    /// Last replication error, or why it is not serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A failover or switchover.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// When it finished (RFC 3339).
    pub time: String,
    /// Old primary.
    pub from: String,
    /// New primary.
    pub to: String,
    /// The cause, or `switchover`.
    pub reason: String,
    /// Failover: primary first seen gone → new primary writable. Switchover: the write pause.
    pub duration_ms: u64,
}

/// One-word summary of a ChatCluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children are being created or are not all ready yet.
    #[default]
    Progressing,
    /// Every child is ready.
    Ready,
    /// The spec cannot be carried out, or applying it failed.
    Degraded,
}

impl Phase {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "Progressing",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
        }
    }
}

/// Condition types the operator maintains.
pub mod condition {
    /// Every child is ready.
    pub const READY: &str = "Ready";
    /// Children are still converging on the spec.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec cannot be carried out, or applying it failed.
    pub const DEGRADED: &str = "Degraded";
    /// The primary and every read replica are ready.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// Semi-sync runs degraded: no replica is caught up, commits are acknowledged without one.
    pub const SEMI_SYNC_DEGRADED: &str = "SemiSyncDegraded";
    /// The PodMonitor and PrometheusRule are in place (False: off, no Prometheus Operator,
    /// or applying them failed; the reason says which).
    pub const MONITORING: &str = "Monitoring";
}
