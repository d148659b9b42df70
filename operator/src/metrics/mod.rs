//! Prometheus metrics of the operator: reconciles, failures by kind, durations, leadership,
//! and each cluster's database, certificates and autoscalers ([`clusters`]).

mod clusters;

pub use clusters::AutoscalingFeed;

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use crate::topology::status::TopologyStatus;
use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode_eof, encode_registry},
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

use clusters::{ClusterKey, ClusterView};

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
    clusters: Mutex<BTreeMap<ClusterKey, ClusterView>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chat_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            clusters: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Follow a cluster's autoscalers as they decide, each scrape reading their latest (none:
    /// autoscaling is off).
    pub fn watch_autoscaling(
        &self,
        namespace: &str,
        cluster: &str,
        services: Option<AutoscalingFeed>,
    ) {
        self.clusters()
            .entry((namespace.into(), cluster.into()))
            .or_default()
            .autoscaling = services;
    }

    /// Count one finished reconcile; `failure` names the kind of error it ended with.
    pub fn observe_reconcile(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(error) = failure {
            self.failures.get_or_create(&ErrorLabels { error }).inc();
        }
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    fn clusters(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClusterKey, ClusterView>> {
        chatcluster_common::sync::lock(&self.clusters)
    }

    /// Follow the status of a cluster's topology loop: each scrape reads its latest, so the
    /// series stay live while reconciles wait or end early. A new loop replaces the old.
    pub fn watch_database(
        &self,
        namespace: &str,
        cluster: &str,
        status: watch::Receiver<TopologyStatus>,
    ) {
        self.clusters()
            .entry((namespace.into(), cluster.into()))
            .or_default()
            .database = Some(status);
    }

    /// Record the internal certificates a cluster holds now (none: internal TLS off).
    pub fn observe_certificates(
        &self,
        namespace: &str,
        cluster: &str,
        certificates: Vec<crate::pki::Dates>,
    ) {
        self.clusters()
            .entry((namespace.into(), cluster.into()))
            .or_default()
            .certificates = certificates;
    }

    /// Drop the series of clusters `keep(namespace, name)` rejects (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.clusters().retain(|(ns, name), _| keep(ns, name));
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        let mut clusters = Registry::with_prefix("chat_operator");
        clusters::register(&mut clusters, &self.clusters());
        encode_registry(&mut out, &clusters)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_and_failures() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(20), None);
        m.observe_reconcile(Duration::from_millis(30), Some("invalid_object"));
        m.set_leader(true);
        let text = m.encode().unwrap_or_default();
        assert!(text.contains("chat_operator_reconciles_total 2"), "{text}");
        assert!(
            text.contains("chat_operator_reconcile_failures_total{error=\"invalid_object\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chat_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("chat_operator_leader 1"), "{text}");
    }
}
