//! The chat services: one Deployment and one Service per service, all running chatd.
//!
//! chatd is configured through its environment ([`chatcluster_types::chatd`], the settings
//! the local runner produces too); the Service is what chat-xds discovers through its
//! EndpointSlices.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Container, EnvVar, KeyToPath, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource,
            Service, Volume,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use chatcluster_types::chatd::{Settings, Value};

use super::{ClusterRef, database, names, pod, ports};
use crate::api::{ChatClusterSpec, ChatServiceSpec, ServiceKind, defaults};

/// uid/gid chatd runs as (the distroless "nonroot" convention).
const CHATD_UID: i64 = 65532;
const TOKEN_MOUNT: &str = "/etc/chatd/token";
/// Where a chatd pod mounts its internal certificate.
const TLS_MOUNT: &str = "/etc/chatd/tls";

/// Replicas a service's Deployment should have: the fixed count, or for an autoscaled service
/// the autoscaler's current choice kept within the spec's bounds (`minReplicas` at first).
pub fn replicas(svc: &ChatServiceSpec, current: Option<i32>) -> i32 {
    match &svc.autoscaling {
        Some(auto) => current
            .unwrap_or(auto.min_replicas)
            .clamp(auto.min_replicas, auto.max_replicas.max(auto.min_replicas)),
        None => svc.replicas.unwrap_or(defaults::SERVICE_REPLICAS),
    }
}

/// The Deployment of one chat service.
pub fn deployment(
    owner: &ClusterRef,
    spec: &ChatClusterSpec,
    kind: ServiceKind,
    svc: &ChatServiceSpec,
    replicas: i32,
) -> Deployment {
    let component = kind.as_str();
    let internal_tls = spec.internal_tls.enabled;
    let selector = owner.selector(component);
    let labels = owner.labels(component, "chatd");
    // `/healthz` answers 200 while serving and 503 once draining, as the gRPC health status
    // does.
    let probe = |period: i32, failures: i32| Probe {
        timeout_seconds: Some(2),
        ..pod::healthz_probe(period, failures)
    };
    // Only auth signs tokens, so only auth pods see the private key.
    let token_items = if kind == ServiceKind::Auth {
        vec!["public.pem", "private.pem"]
    } else {
        vec!["public.pem"]
    };

    let container = Container {
        name: "chatd".into(),
        image: Some(svc.image.clone().unwrap_or_else(defaults::chatd_image)),
        env: Some(chatd_env(owner, spec, kind)),
        ports: Some(pod::container_ports(&[
            ("grpc", ports::CHATD_GRPC),
            ("metrics", ports::METRICS),
        ])),
        // A draining replica leaves the Service's endpoints, so Envoy stops sending it
        // traffic; the endpoint only answers once the database is reached and migrated.
        readiness_probe: Some(probe(5, 2)),
        liveness_probe: Some(probe(10, 3)),
        startup_probe: Some(probe(2, 60)),
        resources: Some(pod::resources(
            svc.resources.as_ref(),
            "100m",
            "128Mi",
            "512Mi",
        )),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(pod::present([
            Some(pod::read_only_mount("token-key", TOKEN_MOUNT)),
            Some(pod::tmp_mount()),
            internal_tls.then(|| pod::internal_tls_mount(TLS_MOUNT)),
        ])),
        ..Container::default()
    };

    Deployment {
        metadata: owner.meta(names::service(owner, kind), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: pod::label_selector(selector.clone()),
            // Surge before removing, so capacity never drops during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".to_string(), "true".to_string()),
                        ("prometheus.io/port".to_string(), ports::METRICS.to_string()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod::pod_security(CHATD_UID)),
                    topology_spread_constraints: Some(pod::topology_spread(&selector)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    // chatd drains streams on SIGTERM; give it time to finish.
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(
                        vec![
                            Volume {
                                name: "token-key".into(),
                                secret: Some(SecretVolumeSource {
                                    secret_name: Some(names::token_key_secret(owner)),
                                    items: Some(
                                        token_items
                                            .into_iter()
                                            .map(|k| KeyToPath {
                                                key: k.into(),
                                                path: k.into(),
                                                ..KeyToPath::default()
                                            })
                                            .collect(),
                                    ),
                                    ..SecretVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                            pod::tmp_volume(),
                        ]
                        .into_iter()
                        .chain(internal_tls.then(|| pod::internal_tls_volume(owner, component)))
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// chatd's settings in a pod of service `kind`.
fn chatd_settings(owner: &ClusterRef, spec: &ChatClusterSpec, kind: ServiceKind) -> Settings {
    let db = |service: String| format!("{}:{}", owner.service_host(&service), ports::DATABASE);
    let secret = |key: &str| Value::Secret {
        name: names::db_secret(owner),
        key: key.into(),
    };
    Settings {
        services: vec![kind.as_str().into()],
        listen: format!("0.0.0.0:{}", ports::CHATD_GRPC),
        metrics_listen: Some(format!("0.0.0.0:{}", ports::METRICS)),
        db_primary: db(names::db_primary(owner)),
        db_primary_file: None,
        // Without replicas, reads go to the primary too.
        db_replicas: Some(if spec.database.replicas > 0 {
            db(names::db_replicas(owner))
        } else {
            db(names::db_primary(owner))
        }),
        db_name: database::DB_NAME.into(),
        db_user: secret(super::secrets::DB_APP_USER_KEY),
        db_password: secret(super::secrets::DB_APP_PASSWORD_KEY),
        db_pool: None,
        token_public_key_file: format!("{TOKEN_MOUNT}/public.pem"),
        token_private_key_file: (kind == ServiceKind::Auth)
            .then(|| format!("{TOKEN_MOUNT}/private.pem")),
        // Replicas exchange new-message hints through the broker.
        broker: Some(format!(
            "{}:{}",
            owner.service_host(&names::broker(owner)),
            super::broker::PORT
        )),
        pod_name: Value::PodField("metadata.name".into()),
        drain_seconds: None,
        tls_dir: spec.internal_tls.enabled.then(|| TLS_MOUNT.to_string()),
    }
}

fn chatd_env(owner: &ClusterRef, spec: &ChatClusterSpec, kind: ServiceKind) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = chatd_settings(owner, spec, kind)
        .env()
        .into_iter()
        .map(|(name, value)| match value {
            Value::Text(v) => pod::env(name, v),
            Value::Secret { name: secret, key } => pod::env_from_secret(name, &secret, &key),
            Value::PodField(path) => pod::env_from_field(name, &path),
        })
        .collect();
    env.push(pod::env("RUST_LOG", "info"));
    env
}

/// The Service of one chat service. chat-xds discovers its EndpointSlices (which inherit these
/// labels); `appProtocol` tells meshes and Envoy the port speaks cleartext HTTP/2.
pub fn service(owner: &ClusterRef, kind: ServiceKind) -> Service {
    let ports = vec![
        pod::service_port("grpc", ports::CHATD_GRPC, Some("kubernetes.io/h2c")),
        pod::service_port("metrics", ports::METRICS, None),
    ];
    pod::internal_service(
        owner,
        names::service(owner, kind),
        kind.as_str(),
        "chatd",
        ports,
    )
}
