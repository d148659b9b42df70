//! Each cluster's database, certificates and autoscalers as metrics, rendered from the last view of them
//! at every scrape. A fresh registry per scrape means a server, a finding or a whole cluster
//! that is gone leaves no stale series behind (the alerts would keep firing on them).

use std::{collections::BTreeMap, sync::atomic::AtomicU64, time::SystemTime};

use tokio::sync::watch;

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    api::AutoscalingStatus,
    pki::Dates,
    topology::status::{Role, SemiSyncState, TopologyStatus},
};

/// What a cluster's autoscalers say now, by service: the Kubernetes sampling loop and the local
/// runner publish it; closed once its publisher is gone.
pub type AutoscalingFeed = watch::Receiver<BTreeMap<String, AutoscalingStatus>>;

/// What is known of one cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The topology loop's status, read at each scrape.
    pub database: Option<watch::Receiver<TopologyStatus>>,
    /// The internal certificates, with internal TLS on.
    pub certificates: Vec<Dates>,
    /// The autoscalers' view, by service, read at each scrape.
    pub autoscaling: Option<AutoscalingFeed>,
}

/// `(namespace, name)` of a cluster.
pub type ClusterKey = (String, String);

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What `source` says now, unless what fed it is gone (a loop that ended and was not
/// replaced): its last word would be a series that never changes again, such as a primary
/// ready long after anyone looked.
fn live<T: Clone>(source: Option<&watch::Receiver<T>>) -> Option<T> {
    let source = source?;
    source.has_changed().ok()?;
    Some(source.borrow().clone())
}

/// Register every cluster's series in `registry` (whose prefix is the operator's).
pub fn register(registry: &mut Registry, views: &BTreeMap<ClusterKey, ClusterView>) {
    register_database(registry, views);
    register_autoscaling(registry, views);
}

/// A whole-number series of the autoscaler: name, help, and the status field it shows.
type AutoscalerGauge = (&'static str, &'static str, fn(&AutoscalingStatus) -> i64);

/// The autoscaler's whole-number series.
const AUTOSCALER_GAUGES: [AutoscalerGauge; 5] = [
    (
        "autoscaler_current_replicas",
        "Replicas an autoscaled service's Deployment has",
        |a| i64::from(a.current_replicas),
    ),
    (
        "autoscaler_desired_replicas",
        "Replicas the autoscaler wants for the service",
        |a| i64::from(a.desired_replicas),
    ),
    (
        "autoscaler_recommended_replicas",
        "The last sample's recommendation, before the windows and the bounds",
        |a| i64::from(a.recommended_replicas),
    ),
    (
        "autoscaler_max_replicas",
        "The most replicas the autoscaler may want for the service",
        |a| i64::from(a.max_replicas),
    ),
    (
        "autoscaler_in_flight",
        "Requests in progress Envoy reports for the service",
        |a| a.in_flight,
    ),
];

fn register_autoscaling(registry: &mut Registry, views: &BTreeMap<ClusterKey, ClusterView>) {
    let gauges = AUTOSCALER_GAUGES.map(|_| Family::<Labels, Gauge>::default());
    let requests = Family::<Labels, FloatGauge>::default();
    for ((namespace, cluster), view) in views {
        for (service, a) in &live(view.autoscaling.as_ref()).unwrap_or_default() {
            let labels = vec![
                ("namespace", namespace.clone()),
                ("cluster", cluster.clone()),
                ("service", service.clone()),
            ];
            for (family, (_, _, value)) in gauges.iter().zip(AUTOSCALER_GAUGES) {
                family.get_or_create(&labels).set(value(a));
            }
            requests
                .get_or_create(&labels)
                .set(a.requests_per_second.parse().unwrap_or(0.0));
        }
    }
    for (family, (name, help, _)) in gauges.into_iter().zip(AUTOSCALER_GAUGES) {
        registry.register(name, help, family);
    }
    registry.register(
        "autoscaler_requests_per_second",
        "Request rate Envoy reports for the service (the autoscaler's signal)",
        requests,
    );
}

fn register_database(registry: &mut Registry, views: &BTreeMap<ClusterKey, ClusterView>) {
    let primary_ready = Family::<Labels, Gauge>::default();
    let servers = Family::<Labels, Gauge>::default();
    let behind = Family::<Labels, Gauge>::default();
    let semi_sync_waiting = Family::<Labels, Gauge>::default();
    let semi_sync_degraded = Family::<Labels, Gauge>::default();
    let failover_held = Family::<Labels, Gauge>::default();
    let findings = Family::<Labels, Gauge>::default();
    let promoted = Family::<Labels, FloatGauge>::default();
    let expiry = Family::<Labels, FloatGauge>::default();
    let renewal = Family::<Labels, FloatGauge>::default();
    for ((namespace, cluster), view) in views {
        let labels = |extra: &[(&'static str, &str)]| -> Labels {
            let mut l = vec![
                ("namespace", namespace.clone()),
                ("cluster", cluster.clone()),
            ];
            l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            l
        };
        if let Some(db) = live(view.database.as_ref()) {
            primary_ready
                .get_or_create(&labels(&[]))
                .set(i64::from(db.primary_ready));
            // Every role, those with no server too: an alert on `role="broken" > 0` needs a 0
            // to resolve on, not a series that vanishes.
            for role in Role::ALL {
                let n = db.servers.iter().filter(|s| s.role == role).count();
                servers
                    .get_or_create(&labels(&[("role", role.as_str())]))
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            for s in db.servers.iter().filter(|s| s.role == Role::Replica) {
                behind
                    .get_or_create(&labels(&[("server", &s.name)]))
                    .set(i64::try_from(s.behind).unwrap_or(i64::MAX));
            }
            let (waiting, degraded) = match db.semi_sync {
                SemiSyncState::Off => (0, 0),
                SemiSyncState::Waiting(n) => (i64::from(n), 0),
                SemiSyncState::Degraded => (0, 1),
            };
            semi_sync_waiting.get_or_create(&labels(&[])).set(waiting);
            semi_sync_degraded.get_or_create(&labels(&[])).set(degraded);
            failover_held
                .get_or_create(&labels(&[]))
                .set(i64::from(db.failover_held().is_some()));
            for f in &db.findings {
                let server = f.server.as_deref().unwrap_or_default();
                findings
                    .get_or_create(&labels(&[("kind", f.kind.as_str()), ("server", server)]))
                    .inc();
            }
            if let Some(p) = &db.last_promotion {
                let kind = if p.reason == "switchover" {
                    "switchover"
                } else {
                    "failover"
                };
                #[allow(clippy::cast_precision_loss)] // milliseconds since 1970 fit in 53 bits
                promoted
                    .get_or_create(&labels(&[("kind", kind)]))
                    .set(p.at_unix_ms as f64 / 1000.0);
            }
        }
        for c in &view.certificates {
            let l = labels(&[("certificate", &c.name)]);
            expiry.get_or_create(&l).set(seconds(c.not_after));
            if let Some(at) = c.renew_at {
                renewal.get_or_create(&l).set(seconds(at));
            }
        }
    }
    registry.register(
        "database_primary_ready",
        "1 while the cluster's primary answers and takes writes",
        primary_ready,
    );
    registry.register(
        "database_servers",
        "Database servers in each role (primary, replica, errant, broken, seeding, unreachable)",
        servers,
    );
    registry.register(
        "database_replica_behind_transactions",
        "Transactions a serving replica has yet to apply from the primary",
        behind,
    );
    registry.register(
        "database_semi_sync_waiting_replicas",
        "Replicas each commit waits for (0: semi-sync off or degraded)",
        semi_sync_waiting,
    );
    registry.register(
        "database_semi_sync_degraded",
        "1 while semi-sync is on but no replica is caught up: commits are acknowledged without one",
        semi_sync_degraded,
    );
    registry.register(
        "database_failover_held",
        "1 while a failover is due but held (status.database.failover says why)",
        failover_held,
    );
    registry.register(
        "database_findings",
        "What the topology loop finds wrong, by kind and server",
        findings,
    );
    registry.register(
        "database_last_promotion_timestamp_seconds",
        "When the last failover, or switchover, finished",
        promoted,
    );
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "When each internal certificate expires",
        expiry,
    );
    registry.register(
        "certificate_renewal_timestamp_seconds",
        "When each internal certificate falls due for renewal",
        renewal,
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::topology::status::{Finding, FindingKind, Promotion, ServerStatus};

    fn server(name: &str, role: Role, behind: u64) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            address: format!("{name}:3306"),
            role,
            gtids: String::new(),
            behind,
            error: None,
        }
    }

    fn rendered(views: &BTreeMap<ClusterKey, ClusterView>) -> String {
        let mut registry = Registry::with_prefix("chat_operator");
        register(&mut registry, views);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap_or_default();
        out
    }

    fn key(name: &str) -> ClusterKey {
        ("shop".into(), name.into())
    }

    #[test]
    fn a_held_failover_with_a_lagging_and_a_broken_replica() {
        let db = TopologyStatus {
            primary: "chat-db-0".into(),
            primary_address: "chat-db-0:3306".into(),
            primary_ready: false,
            servers: vec![
                server("chat-db-0", Role::Unreachable, 0),
                server("chat-db-1", Role::Replica, 42),
                server("chat-db-2", Role::Broken, 0),
            ],
            semi_sync: SemiSyncState::Degraded,
            last_promotion: Some(Promotion {
                at_unix_ms: 1_500,
                from: "chat-db-1".into(),
                to: "chat-db-0".into(),
                reason: "switchover".into(),
                duration_ms: 30,
            }),
            failover_pending: Some(
                "primary lost; failover held: promoting would lose acknowledged writes".into(),
            ),
            findings: vec![
                Finding::about(FindingKind::ReseedFailing, "chat-db-2", "no space"),
                Finding::about(FindingKind::ReplicaBroken, "chat-db-2", "1062"),
            ],
        };
        let (_loop_status, watched) = watch::channel(db);
        let groups = AutoscalingStatus {
            current_replicas: 3,
            desired_replicas: 4,
            recommended_replicas: 7,
            max_replicas: 4,
            requests_per_second: "612.5".into(),
            ..AutoscalingStatus::default()
        };
        let (_autoscalers, scaling) =
            watch::channel(BTreeMap::from([("groups".to_string(), groups)]));
        let views = BTreeMap::from([(
            key("chat"),
            ClusterView {
                database: Some(watched),
                certificates: vec![Dates {
                    name: "xds".into(),
                    renew_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(200)),
                    not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(300),
                }],
                autoscaling: Some(scaling),
            },
        )]);
        let text = rendered(&views);
        let series = |line: &str| text.lines().any(|l| l == line);
        for line in [
            r#"chat_operator_database_primary_ready{namespace="shop",cluster="chat"} 0"#,
            r#"chat_operator_database_servers{namespace="shop",cluster="chat",role="broken"} 1"#,
            r#"chat_operator_database_servers{namespace="shop",cluster="chat",role="errant"} 0"#,
            r#"chat_operator_database_replica_behind_transactions{namespace="shop",cluster="chat",server="chat-db-1"} 42"#,
            r#"chat_operator_database_semi_sync_degraded{namespace="shop",cluster="chat"} 1"#,
            r#"chat_operator_database_semi_sync_waiting_replicas{namespace="shop",cluster="chat"} 0"#,
            r#"chat_operator_database_failover_held{namespace="shop",cluster="chat"} 1"#,
            r#"chat_operator_database_findings{namespace="shop",cluster="chat",kind="reseedFailing",server="chat-db-2"} 1"#,
            r#"chat_operator_database_last_promotion_timestamp_seconds{namespace="shop",cluster="chat",kind="switchover"} 1.5"#,
            r#"chat_operator_certificate_renewal_timestamp_seconds{namespace="shop",cluster="chat",certificate="xds"} 200.0"#,
            r#"chat_operator_certificate_expiry_timestamp_seconds{namespace="shop",cluster="chat",certificate="xds"} 300.0"#,
            r#"chat_operator_autoscaler_current_replicas{namespace="shop",cluster="chat",service="groups"} 3"#,
            r#"chat_operator_autoscaler_desired_replicas{namespace="shop",cluster="chat",service="groups"} 4"#,
            r#"chat_operator_autoscaler_recommended_replicas{namespace="shop",cluster="chat",service="groups"} 7"#,
            r#"chat_operator_autoscaler_max_replicas{namespace="shop",cluster="chat",service="groups"} 4"#,
            r#"chat_operator_autoscaler_requests_per_second{namespace="shop",cluster="chat",service="groups"} 612.5"#,
        ] {
            assert!(series(line), "missing {line} in\n{text}");
        }
        // Only serving replicas have a lag; the broken one's is not a number anyone waits on.
        assert!(!text.contains(r#"server="chat-db-2"} 0"#), "{text}");
    }

    #[test]
    fn a_forgotten_cluster_and_a_healed_server_leave_no_series() {
        let db = TopologyStatus {
            primary: "chat-db-0".into(),
            primary_address: "chat-db-0:3306".into(),
            primary_ready: true,
            servers: vec![
                server("chat-db-0", Role::Primary, 0),
                server("chat-db-1", Role::Replica, 0),
            ],
            semi_sync: SemiSyncState::Waiting(1),
            last_promotion: None,
            failover_pending: Some("primary lost; failover in 3000 ms unless it returns".into()),
            findings: vec![Finding::about(
                FindingKind::ActionFailing,
                "chat-db-1",
                "cannot follow",
            )],
        };
        let (loop_status, watched) = watch::channel(db);
        let mut views = BTreeMap::from([(
            key("chat"),
            ClusterView {
                database: Some(watched),
                certificates: Vec::new(),
                autoscaling: None,
            },
        )]);
        let text = rendered(&views);
        assert!(text.contains(r#"kind="actionFailing",server="chat-db-1"} 1"#));
        // Counting down is not held.
        assert!(text.contains(r#"database_failover_held{namespace="shop",cluster="chat"} 0"#));
        assert!(text.contains(r#"waiting_replicas{namespace="shop",cluster="chat"} 1"#));
        // The loop's next status is the next scrape's, with no one copying it over.
        loop_status.send_modify(|s| s.findings.clear());
        assert!(!rendered(&views).contains("actionFailing"));
        // A loop that ended, not replaced, says nothing: its last word would stand forever.
        drop(loop_status);
        assert!(!rendered(&views).contains("primary_ready"));
        views.clear();
        assert!(!rendered(&views).contains(r#"cluster="chat""#));
    }
}
