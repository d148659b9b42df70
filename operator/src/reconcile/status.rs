//! Status: read the children's own status, then compute the ChatCluster's status with a pure
//! function (no client, the clock passed in) so every transition is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::Service,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt};

use crate::api::{
    ChatCluster, ChatClusterStatus, DatabaseStatus, Phase, ReplicaStatus, ServiceKind, SpecError,
    condition,
};
use crate::build::{ClusterRef, names};

/// The children whose status makes up the ChatCluster's; `None` where the object is missing.
#[derive(Debug, Clone, Default)]
pub struct Children {
    /// Deployment of each chat service.
    pub services: BTreeMap<ServiceKind, Option<Deployment>>,
    /// chat-xds.
    pub xds: Option<Deployment>,
    /// Envoy.
    pub envoy: Option<Deployment>,
    /// The Service in front of Envoy.
    pub envoy_service: Option<Service>,
    /// Database primary StatefulSet.
    pub db_primary: Option<StatefulSet>,
    /// Database replica StatefulSet.
    pub db_replicas: Option<StatefulSet>,
}

impl Children {
    /// Read the children of `c`.
    pub async fn fetch(client: &Client, c: &ClusterRef) -> Result<Self, kube::Error> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &c.namespace);
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &c.namespace);
        let services: Api<Service> = Api::namespaced(client.clone(), &c.namespace);
        let mut out = Self::default();
        for kind in ServiceKind::ALL {
            out.services
                .insert(kind, deployments.get_opt(&names::service(c, kind)).await?);
        }
        out.xds = deployments.get_opt(&names::xds(c)).await?;
        out.envoy = deployments.get_opt(&names::envoy(c)).await?;
        out.envoy_service = services.get_opt(&names::envoy(c)).await?;
        out.db_primary = sets.get_opt(&names::db_primary(c)).await?;
        out.db_replicas = sets.get_opt(&names::db_replicas_set(c)).await?;
        Ok(out)
    }
}

/// Ready over desired replicas of a Deployment, and whether it has fully rolled out: the
/// controller saw the latest spec, every replica runs it, and all are ready.
fn deployment_state(d: Option<&Deployment>) -> (ReplicaStatus, bool) {
    let Some(d) = d else {
        return (ReplicaStatus::default(), false);
    };
    let desired = d.spec.replicas.unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0) >= desired;
    let stale = status.replicas.unwrap_or(0) > desired;
    (
        ReplicaStatus { ready, desired },
        observed && updated && !stale && ready >= desired,
    )
}

fn stateful_set_state(s: Option<&StatefulSet>) -> (ReplicaStatus, bool) {
    let Some(s) = s else {
        return (ReplicaStatus::default(), false);
    };
    let desired = s.spec.replicas.unwrap_or(1);
    let status = s.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0);
    (
        ReplicaStatus { ready, desired },
        observed && ready >= desired,
    )
}

/// Where clients connect: the load balancer's address when it has one, else the Service's
/// cluster DNS name.
fn endpoint(c: &ClusterRef, svc: Option<&Service>) -> Option<String> {
    let svc = svc?;
    let port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.port)?;
    let external = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    let host = external.unwrap_or_else(|| c.service_host(&svc.name_any()));
    Some(format!("{host}:{port}"))
}

/// A condition, keeping the previous transition time when its status did not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Why the cluster is degraded, when it is.
#[derive(Debug, Clone)]
pub enum Degradation {
    /// The spec is invalid; nothing was applied.
    InvalidSpec(Vec<SpecError>),
    /// Applying the children failed.
    ApplyFailed(String),
}

/// The status of `cc` given its children, at `now`.
pub fn compute(
    cc: &ChatCluster,
    c: &ClusterRef,
    children: &Children,
    degraded: Option<&Degradation>,
    now: Timestamp,
) -> ChatClusterStatus {
    let previous = cc.status.clone().unwrap_or_default();
    let generation = cc.metadata.generation;
    let mut waiting: Vec<String> = Vec::new();

    let mut services = BTreeMap::new();
    for kind in ServiceKind::ALL {
        let (replicas, done) =
            deployment_state(children.services.get(&kind).and_then(Option::as_ref));
        if !done {
            waiting.push(format!(
                "service {kind} {}/{}",
                replicas.ready, replicas.desired
            ));
        }
        services.insert(kind.as_str().to_string(), replicas);
    }
    let services_done = services.len() - waiting.len();
    let services_ready = format!("{services_done}/{}", services.len());

    let (primary, primary_done) = stateful_set_state(children.db_primary.as_ref());
    let (replicas, replicas_done) = stateful_set_state(children.db_replicas.as_ref());
    let db_ready = primary_done && replicas_done;
    let db_message = format!(
        "primary {}/{} ready, replicas {}/{} ready",
        primary.ready, primary.desired, replicas.ready, replicas.desired
    );
    if !db_ready {
        waiting.push(format!("database ({db_message})"));
    }

    let (xds, xds_done) = deployment_state(children.xds.as_ref());
    if !xds_done {
        waiting.push(format!("chat-xds {}/{}", xds.ready, xds.desired));
    }
    let (envoy, envoy_done) = deployment_state(children.envoy.as_ref());
    if !envoy_done {
        waiting.push(format!("envoy {}/{}", envoy.ready, envoy.desired));
    }

    let ready = waiting.is_empty() && degraded.is_none();
    let (degraded_reason, degraded_message) = match degraded {
        None => ("AsExpected", String::new()),
        Some(Degradation::InvalidSpec(errors)) => (
            "InvalidSpec",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(Degradation::ApplyFailed(message)) => ("ApplyFailed", message.clone()),
    };
    let waiting_message = if waiting.is_empty() {
        "all components ready".to_string()
    } else {
        format!("waiting for {}", waiting.join(", "))
    };
    let conditions = vec![
        condition(
            &previous.conditions,
            condition::READY,
            ready,
            if ready {
                "AllComponentsReady"
            } else {
                "ComponentsNotReady"
            },
            waiting_message.clone(),
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            condition::PROGRESSING,
            !ready && degraded.is_none(),
            if ready { "Converged" } else { "Converging" },
            waiting_message,
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            condition::DEGRADED,
            degraded.is_some(),
            degraded_reason,
            degraded_message,
            generation,
            now,
        ),
        condition(
            &previous.conditions,
            condition::DATABASE_READY,
            db_ready,
            if db_ready {
                "AllServersReady"
            } else {
                "ServersNotReady"
            },
            db_message,
            generation,
            now,
        ),
    ];
    let phase = match (degraded, ready) {
        (Some(_), _) => Phase::Degraded,
        (None, true) => Phase::Ready,
        (None, false) => Phase::Progressing,
    };
    // The topology loop records failovers in status; until it has, the primary is the pod the
    // primary StatefulSet starts with.
    let current_primary = previous
        .database
        .as_ref()
        .and_then(|d| d.primary.clone())
        .unwrap_or_else(|| names::db_initial_primary_pod(c));

    ChatClusterStatus {
        observed_generation: generation,
        phase,
        conditions,
        services,
        services_ready: Some(services_ready),
        database: Some(DatabaseStatus {
            primary: Some(current_primary),
            primary_ready: primary_done,
            replicas_ready: format!("{}/{}", replicas.ready, replicas.desired),
        }),
        ingress: Some(envoy),
        endpoint: endpoint(c, children.envoy_service.as_ref()),
    }
}
