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

use super::monitoring::Monitoring;
use crate::api::{
    ChatCluster, ChatClusterStatus, DatabaseFinding, DatabaseServerStatus, DatabaseStatus,
    FailoverStatus, Phase, ReplicaStatus, ServiceKind, SpecError, condition,
};
use crate::build::{ClusterRef, names};
use crate::topology::status::{Role, SemiSyncState, TopologyStatus};

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
    /// Read the children of `owner`.
    pub async fn fetch(client: &Client, owner: &ClusterRef) -> Result<Self, kube::Error> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &owner.namespace);
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &owner.namespace);
        let services: Api<Service> = Api::namespaced(client.clone(), &owner.namespace);
        let mut out = Self::default();
        for kind in ServiceKind::ALL {
            out.services.insert(
                kind,
                deployments.get_opt(&names::service(owner, kind)).await?,
            );
        }
        out.xds = deployments.get_opt(&names::xds(owner)).await?;
        out.envoy = deployments.get_opt(&names::envoy(owner)).await?;
        out.envoy_service = services.get_opt(&names::envoy(owner)).await?;
        out.db_primary = sets.get_opt(&names::db_primary(owner)).await?;
        out.db_replicas = sets.get_opt(&names::db_replicas_set(owner)).await?;
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
fn endpoint(owner: &ClusterRef, svc: Option<&Service>) -> Option<String> {
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
    let host = external.unwrap_or_else(|| owner.service_host(&svc.name_any()));
    Some(format!("{host}:{port}"))
}

/// A condition, keeping the previous transition time when its status did not change.
/// The `Monitoring` condition for where [`ensure`](super::monitoring::ensure) left it.
pub fn monitoring_condition(
    previous: &[Condition],
    monitoring: &Monitoring,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let (ok, reason, message) = match monitoring {
        Monitoring::Applied => (
            true,
            "Applied",
            "PodMonitor and PrometheusRule applied".to_string(),
        ),
        Monitoring::Off => (false, "Disabled", "spec.monitoring.enabled is false".into()),
        Monitoring::NoPrometheusOperator => (
            false,
            "NoPrometheusOperator",
            "the Kubernetes cluster serves no monitoring.coreos.com kinds: install the Prometheus Operator's CRDs, or set spec.monitoring.enabled to false".into(),
        ),
        Monitoring::Failed(e) => (false, "ApplyFailed", e.clone()),
    };
    condition(
        previous,
        condition::MONITORING,
        ok,
        reason,
        message,
        generation,
        now,
    )
}

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

/// The status of `resource` given its children, at `now`.
pub fn compute(
    resource: &ChatCluster,
    owner: &ClusterRef,
    children: &Children,
    degraded: Option<&Degradation>,
    topology: Option<&TopologyStatus>,
    now: Timestamp,
) -> ChatClusterStatus {
    let previous = resource.status.clone().unwrap_or_default();
    let generation = resource.metadata.generation;
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
    // With a topology loop, the primary must also answer and take writes.
    let loop_ready = topology.is_none_or(|t| t.primary_ready);
    let db_ready = primary_done && replicas_done && loop_ready;
    let mut db_message = format!(
        "primary {}/{} ready, replicas {}/{} ready",
        primary.ready, primary.desired, replicas.ready, replicas.desired
    );
    if let Some(pending) = topology.and_then(|t| t.failover_pending.as_ref()) {
        db_message = format!("{db_message}; {pending}");
    }
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
        condition(
            &previous.conditions,
            condition::SEMI_SYNC_DEGRADED,
            topology.is_some_and(|t| t.semi_sync == SemiSyncState::Degraded),
            match topology.map(|t| t.semi_sync) {
                Some(SemiSyncState::Degraded) => "NoCaughtUpReplica",
                Some(SemiSyncState::Off) => "Off",
                _ => "Waiting",
            },
            match topology.map(|t| t.semi_sync) {
                Some(SemiSyncState::Degraded) => {
                    "no replica is caught up: commits are acknowledged without one".to_string()
                }
                Some(SemiSyncState::Waiting(n)) => format!("commits wait for {n} replica(s)"),
                _ => String::new(),
            },
            generation,
            now,
        ),
    ];
    let phase = match (degraded, ready) {
        (Some(_), _) => Phase::Degraded,
        (None, true) => Phase::Ready,
        (None, false) => Phase::Progressing,
    };
    // The topology loop says who the primary is; until it has, the last recorded one, or the
    // pod the primary StatefulSet starts with.
    let current_primary = previous
        .database
        .as_ref()
        .and_then(|d| d.primary.clone())
        .or_else(|| topology.map(|t| t.primary.clone()))
        .unwrap_or_else(|| names::db_initial_primary_pod(owner));
    let current_primary = topology.map_or(current_primary, |t| t.primary.clone());

    ChatClusterStatus {
        observed_generation: generation,
        phase,
        conditions,
        services,
        services_ready: Some(services_ready),
        database: Some(database_status(
            topology,
            current_primary,
            primary_done,
            format!("{}/{}", replicas.ready, replicas.desired),
        )),
        ingress: Some(envoy),
        endpoint: endpoint(owner, children.envoy_service.as_ref()),
        // Filled by the reconciler from the autoscalers.
        autoscaling: BTreeMap::new(),
    }
}

/// The database part of the status: the pods' readiness, and what the topology loop saw.
fn database_status(
    topology: Option<&TopologyStatus>,
    primary: String,
    primary_pod_ready: bool,
    replicas_ready: String,
) -> DatabaseStatus {
    let Some(t) = topology else {
        return DatabaseStatus {
            primary: Some(primary),
            primary_ready: primary_pod_ready,
            replicas_ready,
            ..DatabaseStatus::default()
        };
    };
    DatabaseStatus {
        primary: Some(primary),
        primary_ready: primary_pod_ready && t.primary_ready,
        replicas_ready,
        servers: t
            .servers
            .iter()
            .map(|s| DatabaseServerStatus {
                name: s.name.clone(),
                role: s.role.as_str().to_string(),
                gtids: s.gtids.clone(),
                behind: s.behind,
                error: s.error.clone(),
            })
            .collect(),
        errant: t
            .in_role(Role::Errant)
            .into_iter()
            .map(String::from)
            .collect(),
        semi_sync: Some(match t.semi_sync {
            SemiSyncState::Off => "off".to_string(),
            SemiSyncState::Waiting(n) => format!("waiting for {n}"),
            SemiSyncState::Degraded => "degraded".to_string(),
        }),
        last_failover: t.last_promotion.as_ref().map(|p| FailoverStatus {
            time: i64::try_from(p.at_unix_ms)
                .ok()
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .map(|ts| ts.to_string())
                .unwrap_or_default(),
            from: p.from.clone(),
            to: p.to.clone(),
            reason: p.reason.clone(),
            duration_ms: p.duration_ms,
        }),
        failover_pending: t.failover_pending.clone(),
        findings: t
            .findings
            .iter()
            .map(|f| DatabaseFinding {
                kind: f.kind.as_str().to_string(),
                server: f.server.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::status::{Finding, FindingKind, Promotion, ServerStatus};

    fn cluster() -> (ChatCluster, ClusterRef) {
        let mut resource = ChatCluster::new("demo", Default::default());
        resource.metadata.namespace = Some("chat".into());
        resource.metadata.uid = Some("uid".into());
        let owner = ClusterRef::new(&resource).expect("ref");
        (resource, owner)
    }

    fn topology(semi_sync: SemiSyncState) -> TopologyStatus {
        let server = |name: &str, role| ServerStatus {
            name: name.into(),
            address: format!("{name}:3306"),
            role,
            gtids: "0-101-7".into(),
            behind: 0,
            error: None,
        };
        TopologyStatus {
            primary: "demo-db-replica-0".into(),
            primary_address: "demo-db-replica-0:3306".into(),
            primary_ready: true,
            servers: vec![
                server("demo-db-primary-0", Role::Errant),
                server("demo-db-replica-0", Role::Primary),
                server("demo-db-replica-1", Role::Replica),
            ],
            semi_sync,
            last_promotion: Some(Promotion {
                at_unix_ms: 1_700_000_000_000,
                from: "demo-db-primary-0".into(),
                to: "demo-db-replica-0".into(),
                reason: "primary unreachable".into(),
                duration_ms: 2100,
            }),
            failover_pending: None,
            findings: vec![Finding::about(
                FindingKind::ReplicaDiverged,
                "demo-db-primary-0",
                "transactions the primary lacks: 0:8",
            )],
        }
    }

    fn cond<'a>(s: &'a ChatClusterStatus, kind: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition"))
    }

    #[test]
    fn the_topology_loop_decides_the_primary_and_fills_the_database_status() {
        let (resource, owner) = cluster();
        let t = topology(SemiSyncState::Waiting(1));
        let s = compute(
            &resource,
            &owner,
            &Children::default(),
            None,
            Some(&t),
            Timestamp::UNIX_EPOCH,
        );
        let db = s.database.clone().expect("database");
        assert_eq!(db.primary.as_deref(), Some("demo-db-replica-0"));
        assert_eq!(db.errant, ["demo-db-primary-0"]);
        assert_eq!(db.semi_sync.as_deref(), Some("waiting for 1"));
        assert_eq!(db.servers.len(), 3);
        assert_eq!(db.servers[0].role, "errant");
        assert_eq!(
            db.findings,
            [DatabaseFinding {
                kind: "replicaDiverged".into(),
                server: Some("demo-db-primary-0".into()),
                reason: "transactions the primary lacks: 0:8".into(),
            }]
        );
        let f = db.last_failover.expect("failover");
        assert_eq!(
            (f.from.as_str(), f.to.as_str()),
            ("demo-db-primary-0", "demo-db-replica-0")
        );
        assert_eq!(f.time, "2023-11-14T22:13:20Z");
        assert_eq!(f.duration_ms, 2100);
        assert_eq!(cond(&s, condition::SEMI_SYNC_DEGRADED).status, "False");

        let degraded = topology(SemiSyncState::Degraded);
        let s = compute(
            &resource,
            &owner,
            &Children::default(),
            None,
            Some(&degraded),
            Timestamp::UNIX_EPOCH,
        );
        let c2 = cond(&s, condition::SEMI_SYNC_DEGRADED);
        assert_eq!(
            (c2.status.as_str(), c2.reason.as_str()),
            ("True", "NoCaughtUpReplica")
        );

        // A primary that does not take writes keeps the database from being ready.
        let mut down = topology(SemiSyncState::Waiting(1));
        down.primary_ready = false;
        down.failover_pending =
            Some("primary unreachable; failover in 3000 ms unless it returns".into());
        let s = compute(
            &resource,
            &owner,
            &Children::default(),
            None,
            Some(&down),
            Timestamp::UNIX_EPOCH,
        );
        let ready = cond(&s, condition::DATABASE_READY);
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("failover in 3000 ms"),
            "{}",
            ready.message
        );
    }
}
