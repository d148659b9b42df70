//! Names of a ChatCluster's children, all prefixed with the cluster's name.

use super::ClusterRef;
use crate::api::ServiceKind;

/// Deployment, Service and PodDisruptionBudget of a chat service: `<cluster>-<service>`.
pub fn service(owner: &ClusterRef, kind: ServiceKind) -> String {
    format!("{}-{kind}", owner.name)
}

/// The broker's Deployment, Service and ConfigMap: `<cluster>-broker`.
pub fn broker(owner: &ClusterRef) -> String {
    format!("{}-broker", owner.name)
}

/// The NetworkPolicy that selects every pod of the cluster and admits nothing by itself.
pub fn deny_all(owner: &ClusterRef) -> String {
    format!("{}-deny-all", owner.name)
}

/// The NetworkPolicy admitting what reaches `component`'s pods.
pub fn allow_to(owner: &ClusterRef, component: &str) -> String {
    format!("{}-allow-to-{component}", owner.name)
}

/// Generated database credentials.
pub fn db_secret(owner: &ClusterRef) -> String {
    format!("{}-db", owner.name)
}

/// Headless Service governing both database StatefulSets (stable pod DNS names).
pub fn db_headless(owner: &ClusterRef) -> String {
    format!("{}-db", owner.name)
}

/// Database server configuration.
pub fn db_config(owner: &ClusterRef) -> String {
    format!("{}-db-config", owner.name)
}

/// The primary's StatefulSet, and the Service that always points at the current primary.
pub fn db_primary(owner: &ClusterRef) -> String {
    format!("{}-db-primary", owner.name)
}

/// The replicas' StatefulSet and PodDisruptionBudget.
pub fn db_replicas_set(owner: &ClusterRef) -> String {
    format!("{}-db-replica", owner.name)
}

/// The Service spreading reads over the ready replicas.
pub fn db_replicas(owner: &ClusterRef) -> String {
    format!("{}-db-replicas", owner.name)
}

/// The pod the primary StatefulSet starts with.
pub fn db_initial_primary_pod(owner: &ClusterRef) -> String {
    format!("{}-0", db_primary(owner))
}

/// Ed25519 key pair signing access tokens.
pub fn token_key_secret(owner: &ClusterRef) -> String {
    format!("{}-token-key", owner.name)
}

/// Self-signed certificate issued when the spec names no TLS Secret.
pub fn self_signed_tls(owner: &ClusterRef) -> String {
    format!("{}-envoy-tls", owner.name)
}

/// The internal CA's certificate and key.
pub fn internal_ca(owner: &ClusterRef) -> String {
    format!("{}-internal-ca", owner.name)
}

/// The internal certificate of `component` (`xds`, `ingress`, …).
pub fn internal_tls(owner: &ClusterRef, component: &str) -> String {
    format!("{}-{component}-internal-tls", owner.name)
}

/// chat-xds Deployment, Service, ServiceAccount, Role, RoleBinding, ConfigMap and budget.
pub fn xds(owner: &ClusterRef) -> String {
    format!("{}-xds", owner.name)
}

/// Envoy Deployment, Service, bootstrap ConfigMap and budget.
pub fn envoy(owner: &ClusterRef) -> String {
    format!("{}-envoy", owner.name)
}

/// The PodMonitor and the PrometheusRule.
pub fn monitoring(owner: &ClusterRef) -> String {
    format!("{}-chatcluster", owner.name)
}

/// PodDisruptionBudget over all database servers: at most one down at a time.
pub fn db_budget(owner: &ClusterRef) -> String {
    format!("{}-db", owner.name)
}

/// The ConfigMap naming, per MariaDB pod, the copy its next start may swap in.
pub fn db_seed_approvals(owner: &ClusterRef) -> String {
    format!("{}-db-seed", owner.name)
}

/// The Job that fetches a physical copy into database pod `pod`'s volume.
pub fn db_seed_job(pod: &str) -> String {
    format!("{pod}-seed")
}
