//! The monitoring objects' side effects: apply the PodMonitor and PrometheusRule the builder
//! makes, or delete them when the spec turns monitoring off. A Kubernetes cluster without the
//! Prometheus Operator answers 404 for their kinds: that is a condition to show, not an
//! error to retry the whole reconcile on.

use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject},
};

use super::apply;
use crate::{
    Error,
    api::MonitoringSpec,
    build::{self, ClusterRef, names},
};

/// Where monitoring stands after [`ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Monitoring {
    /// `spec.monitoring.enabled` is false (and the objects are gone).
    Off,
    /// The PodMonitor and the PrometheusRule are applied.
    Applied,
    /// The Kubernetes cluster serves no `monitoring.coreos.com` kinds.
    NoPrometheusOperator,
    /// Applying or deleting failed otherwise.
    Failed(String),
}

fn not_served(e: &Error) -> bool {
    matches!(e, Error::Kube { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404))
}

/// Bring the monitoring objects of the cluster in line with `spec`.
pub async fn ensure(client: &Client, owner: &ClusterRef, spec: &MonitoringSpec) -> Monitoring {
    if !spec.enabled {
        return match remove(client, owner).await {
            Ok(()) => Monitoring::Off,
            Err(e) => Monitoring::Failed(e.to_string()),
        };
    }
    let objects = match build::monitoring::objects(owner, spec) {
        Ok(o) => o,
        Err(e) => return Monitoring::Failed(e.to_string()),
    };
    for obj in &objects {
        match apply::apply(client, &owner.namespace, obj).await {
            Ok(()) => {}
            Err(e) if not_served(&e) => return Monitoring::NoPrometheusOperator,
            Err(e) => return Monitoring::Failed(e.to_string()),
        }
    }
    Monitoring::Applied
}

/// Delete the cluster's monitoring objects, where they exist and are the cluster's.
async fn remove(client: &Client, owner: &ClusterRef) -> Result<(), Error> {
    let name = names::monitoring(owner);
    for kind in build::monitoring::kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &owner.namespace, &kind);
        let existing = match api.get_opt(&name).await {
            Ok(o) => o,
            // No such kind: nothing of it to delete.
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(Error::kube("get", &kind.kind, &name)(e)),
        };
        if existing.is_some_and(|o| owner.controls(&o.metadata)) {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", &kind.kind, &name)(e)),
            }
        }
    }
    Ok(())
}
