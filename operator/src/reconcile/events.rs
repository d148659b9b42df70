//! The Kubernetes events a reconcile publishes on its ChatCluster: phase changes, failovers,
//! scaling. Informative only: failing to publish one is logged, never a reconcile error.

use kube::{
    Resource,
    runtime::events::{Event, EventType},
};
use tracing::warn;

use super::Context;
use crate::api::{ChatCluster, ChatClusterStatus};

/// Publish an event on `resource`. Events are informative: failing to publish one only logs.
pub(super) async fn record(
    ctx: &Context,
    resource: &ChatCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &resource.object_ref(&()))
        .await
    {
        warn!(error = %e, reason, "cannot publish event");
    }
}

/// An event for each autoscaled service whose desired replicas changed.
pub(super) async fn record_scaling(
    ctx: &Context,
    resource: &ChatCluster,
    status: &ChatClusterStatus,
) {
    for (service, now) in &status.autoscaling {
        let before = resource
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.get(service))
            .map(|s| s.desired_replicas);
        if before.is_some_and(|b| b != now.desired_replicas) {
            record(
                ctx,
                resource,
                EventType::Normal,
                "Scaled",
                format!(
                    "{service}: {} → {} replicas ({} requests/s)",
                    before.unwrap_or_default(),
                    now.desired_replicas,
                    now.requests_per_second
                ),
            )
            .await;
        }
    }
}
