//! Prometheus metrics of the operator: reconciles, failures by kind, durations, leadership.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::reconcile::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    leader: Gauge,
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
        }
    }
}

impl Metrics {
    /// Count one finished reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    error: e.metric_label(),
                })
                .inc();
        }
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
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
        m.observe_reconcile(
            Duration::from_millis(30),
            Some(&Error::InvalidObject("x".into())),
        );
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
