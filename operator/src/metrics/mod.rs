//! Prometheus metrics of the operator: reconciles, failures by kind, durations, leadership,
//! the autoscalers' view, and each cluster's database and certificates ([`clusters`]).

mod clusters;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    cluster: String,
    service: String,
}

/// The autoscaler's gauges, per autoscaled service.
#[derive(Default)]
struct Autoscaling {
    current: Family<ServiceLabels, Gauge>,
    desired: Family<ServiceLabels, Gauge>,
    max: Family<ServiceLabels, Gauge>,
    requests: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    in_flight: Family<ServiceLabels, Gauge>,
}

use clusters::{ClusterKey, ClusterView};

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    autoscaling: Autoscaling,
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
        let autoscaling = Autoscaling::default();
        registry.register(
            "autoscaler_current_replicas",
            "Replicas an autoscaled service's Deployment has",
            autoscaling.current.clone(),
        );
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler wants for the service",
            autoscaling.desired.clone(),
        );
        registry.register(
            "autoscaler_max_replicas",
            "The most replicas the autoscaler may want for the service",
            autoscaling.max.clone(),
        );
        registry.register(
            "autoscaler_requests_per_second",
            "Request rate Envoy reports for the service (the autoscaler's signal)",
            autoscaling.requests.clone(),
        );
        registry.register(
            "autoscaler_in_flight",
            "Requests in progress Envoy reports for the service",
            autoscaling.in_flight.clone(),
        );
        Self {
            registry,
            autoscaling,
            reconciles,
            failures,
            duration,
            leader,
            clusters: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Record the autoscaler's view of one service.
    pub fn observe_autoscaling(
        &self,
        namespace: &str,
        cluster: &str,
        service: &str,
        status: &crate::api::AutoscalingStatus,
    ) {
        let labels = ServiceLabels {
            namespace: namespace.into(),
            cluster: cluster.into(),
            service: service.into(),
        };
        let a = &self.autoscaling;
        a.current
            .get_or_create(&labels)
            .set(i64::from(status.current_replicas));
        a.desired
            .get_or_create(&labels)
            .set(i64::from(status.desired_replicas));
        a.max
            .get_or_create(&labels)
            .set(i64::from(status.max_replicas));
        a.requests
            .get_or_create(&labels)
            .set(status.requests_per_second.parse().unwrap_or(0.0));
        a.in_flight.get_or_create(&labels).set(status.in_flight);
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

    /// Record the topology loop's latest status of a cluster's database.
    pub fn observe_database(&self, namespace: &str, cluster: &str, status: &TopologyStatus) {
        self.clusters()
            .entry((namespace.into(), cluster.into()))
            .or_default()
            .database = Some(status.clone());
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
