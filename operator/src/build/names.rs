//! Names of a ChatCluster's children, all prefixed with the cluster's name.

use super::ClusterRef;
use crate::api::ServiceKind;

/// Deployment, Service and PodDisruptionBudget of a chat service: `<cluster>-<service>`.
pub fn service(c: &ClusterRef, kind: ServiceKind) -> String {
    format!("{}-{kind}", c.name)
}

/// Headless Service listing a chat service's pods, for replica-to-replica fan-out.
pub fn service_peers(c: &ClusterRef, kind: ServiceKind) -> String {
    format!("{}-{kind}-peers", c.name)
}

/// Generated database credentials.
pub fn db_secret(c: &ClusterRef) -> String {
    format!("{}-db", c.name)
}

/// Headless Service governing both database StatefulSets (stable pod DNS names).
pub fn db_headless(c: &ClusterRef) -> String {
    format!("{}-db", c.name)
}

/// Database server configuration.
pub fn db_config(c: &ClusterRef) -> String {
    format!("{}-db-config", c.name)
}

/// The primary's StatefulSet, and the Service that always points at the current primary.
pub fn db_primary(c: &ClusterRef) -> String {
    format!("{}-db-primary", c.name)
}

/// The replicas' StatefulSet and PodDisruptionBudget.
pub fn db_replicas_set(c: &ClusterRef) -> String {
    format!("{}-db-replica", c.name)
}

/// The Service spreading reads over the ready replicas.
pub fn db_replicas(c: &ClusterRef) -> String {
    format!("{}-db-replicas", c.name)
}

/// The pod the primary StatefulSet starts with.
pub fn db_initial_primary_pod(c: &ClusterRef) -> String {
    format!("{}-0", db_primary(c))
}

/// Ed25519 key pair signing access tokens.
pub fn token_key_secret(c: &ClusterRef) -> String {
    format!("{}-token-key", c.name)
}

/// Self-signed certificate issued when the spec names no TLS Secret.
pub fn self_signed_tls(c: &ClusterRef) -> String {
    format!("{}-envoy-tls", c.name)
}

/// chat-xds Deployment, Service, ServiceAccount, Role, RoleBinding, ConfigMap and budget.
pub fn xds(c: &ClusterRef) -> String {
    format!("{}-xds", c.name)
}

/// Envoy Deployment, Service, bootstrap ConfigMap and budget.
pub fn envoy(c: &ClusterRef) -> String {
    format!("{}-envoy", c.name)
}

/// PodDisruptionBudget over all database servers: at most one down at a time.
pub fn db_budget(c: &ClusterRef) -> String {
    format!("{}-db", c.name)
}

/// The ConfigMap naming, per MariaDB pod, the copy its next start may swap in.
pub fn db_seed_approvals(c: &ClusterRef) -> String {
    format!("{}-db-seed", c.name)
}

/// The Job that fetches a physical copy into database pod `pod`'s volume.
pub fn db_seed_job(pod: &str) -> String {
    format!("{pod}-seed")
}
