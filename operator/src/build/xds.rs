//! chat-xds, the Envoy control plane: its configuration, identity, least-privilege RBAC,
//! Deployment and Service.

use std::collections::BTreeMap;

use chatcluster_types::identity::component;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Service, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{BuildError, CONFIG_HASH_ANNOTATION, ClusterRef, ingress, labels, names, pod, ports};
use crate::api::{
    ChatClusterSpec, ClientRateLimitSpec, LoadBalancing, ValidatedCluster, XdsSpec, defaults,
};

/// Component label of chat-xds objects.
pub const COMPONENT: &str = "xds";
const CONFIG_KEY: &str = "xds.yaml";
const CONFIG_DIR: &str = "/etc/chat-xds";
const XDS_UID: i64 = 65532;

pub use chatcluster_types::xds::{KubernetesDiscovery, RateLimit, XdsConfig, XdsService};

/// The Secret Envoy's certificate comes from: the user's, or the self-signed one.
pub fn tls_secret_name(owner: &ClusterRef, spec: &ChatClusterSpec) -> String {
    spec.ingress
        .tls
        .as_ref()
        .map(|t| t.secret_name.clone())
        .unwrap_or_else(|| names::self_signed_tls(owner))
}

fn client_rate_limit(spec: &ClientRateLimitSpec) -> Option<RateLimit> {
    let positive = |n: i32| u32::try_from(n).unwrap_or(1).max(1);
    spec.enabled.then(|| RateLimit {
        requests_per_second: positive(spec.requests_per_second),
        burst: positive(spec.burst),
    })
}

/// chat-xds's view of the cluster: a workload configuration, the same in Kubernetes and in
/// local mode (which sets its own ports and adds an endpoints file).
pub fn config(validated: &ValidatedCluster) -> XdsConfig {
    let spec = validated.spec();
    XdsConfig {
        cluster: validated.name().into(),
        listener_port: ports::ENVOY_HTTPS,
        plaintext_port: None,
        listen_address: None,
        grpc_web: spec.ingress.grpc_web,
        rate_limit: client_rate_limit(&spec.ingress.rate_limit),
        services: spec
            .services
            .iter()
            .map(|(kind, svc)| XdsService {
                name: kind.as_str().into(),
                grpc_package: kind.grpc_package().into(),
                health_service: kind.grpc_service().into(),
                port: ports::CHATD_GRPC,
                load_balancing: svc.load_balancing,
                hash_header: match svc.load_balancing {
                    LoadBalancing::RingHash | LoadBalancing::Maglev => Some(
                        svc.hash_header
                            .clone()
                            .unwrap_or_else(|| defaults::HASH_HEADER.into()),
                    ),
                    LoadBalancing::LeastRequest | LoadBalancing::RoundRobin => None,
                },
            })
            .collect(),
        upstream_tls: None,
        kubernetes: None,
    }
}

/// Where chat-xds finds the cluster's endpoints and certificate in Kubernetes.
pub fn discovery(owner: &ClusterRef, spec: &ChatClusterSpec) -> KubernetesDiscovery {
    KubernetesDiscovery {
        namespace: owner.namespace.clone(),
        endpoint_selector: format!("{}={}", labels::CLUSTER, owner.name),
        tls_secret: tls_secret_name(owner, spec),
        services: spec
            .services
            .iter()
            .map(|(kind, _)| (kind.as_str().to_string(), names::service(owner, kind)))
            .collect(),
    }
}

/// The ConfigMap chat-xds reads its [`XdsConfig`] from.
pub fn config_map(
    owner: &ClusterRef,
    validated: &ValidatedCluster,
) -> Result<ConfigMap, BuildError> {
    let config = XdsConfig {
        kubernetes: Some(discovery(owner, validated.spec())),
        upstream_tls: validated
            .spec()
            .internal_tls
            .enabled
            .then(|| ingress::upstream_tls(owner)),
        ..config(validated)
    };
    let yaml = serde_yaml::to_string(&config).map_err(|e| BuildError::Encode {
        what: "chat-xds configuration",
        message: e.to_string(),
    })?;
    Ok(ConfigMap {
        metadata: owner.meta(names::xds(owner), owner.labels(COMPONENT, "chat-xds")),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// chat-xds's own identity.
pub fn service_account(owner: &ClusterRef) -> ServiceAccount {
    ServiceAccount {
        metadata: owner.meta(names::xds(owner), owner.labels(COMPONENT, "chat-xds")),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// The least chat-xds needs, in its namespace only: read EndpointSlices and, with
/// `tls_secret`, the one TLS Secret. Every chat-xds replica serves (Envoys connect to any), so
/// none elects a leader.
pub fn role(owner: &ClusterRef, spec: &ChatClusterSpec, tls_secret: bool) -> Role {
    let rule =
        |group: &str, resource: &str, verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
            api_groups: Some(vec![group.into()]),
            resources: Some(vec![resource.into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            resource_names: names,
            ..PolicyRule::default()
        };
    Role {
        metadata: owner.meta(names::xds(owner), owner.labels(COMPONENT, "chat-xds")),
        rules: Some(
            [
                Some(rule(
                    "discovery.k8s.io",
                    "endpointslices",
                    &["get", "list", "watch"],
                    None,
                )),
                tls_secret.then(|| {
                    rule(
                        "",
                        "secrets",
                        &["get", "list", "watch"],
                        Some(vec![tls_secret_name(owner, spec)]),
                    )
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(owner: &ClusterRef) -> RoleBinding {
    RoleBinding {
        metadata: owner.meta(names::xds(owner), owner.labels(COMPONENT, "chat-xds")),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: names::xds(owner),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names::xds(owner),
            namespace: Some(owner.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

/// Where a chat-xds pod mounts its internal certificate.
const INTERNAL_TLS_DIR: &str = "/etc/chat-xds/tls";

/// chat-xds replicas. `config_hash` rolls them when the configuration changes; with
/// `internal_tls` each serves mutual TLS with the certificate from its Secret volume.
pub fn deployment(
    owner: &ClusterRef,
    xds: &XdsSpec,
    config_hash: &str,
    internal_tls: bool,
) -> Deployment {
    let selector = owner.selector(COMPONENT);
    let labels = owner.labels(COMPONENT, "chat-xds");
    let container = Container {
        name: "chat-xds".into(),
        image: Some(xds.image.clone().unwrap_or_else(defaults::xds_image)),
        env: Some(
            vec![
                pod::env("CHAT_XDS_CONFIG", format!("{CONFIG_DIR}/{CONFIG_KEY}")),
                pod::env("CHAT_XDS_LISTEN", format!("0.0.0.0:{}", ports::XDS)),
                pod::env(
                    "CHAT_XDS_METRICS_LISTEN",
                    format!("0.0.0.0:{}", ports::METRICS),
                ),
                pod::env_from_field("POD_NAME", "metadata.name"),
                pod::env("RUST_LOG", "info"),
            ]
            .into_iter()
            .chain(internal_tls.then(|| pod::env("CHAT_XDS_TLS_DIR", INTERNAL_TLS_DIR)))
            .collect(),
        ),
        ports: Some(pod::container_ports(&[
            ("xds", ports::XDS),
            ("metrics", ports::METRICS),
        ])),
        readiness_probe: Some(pod::healthz_probe(5, 2)),
        liveness_probe: Some(pod::healthz_probe(10, 3)),
        resources: Some(pod::resources(
            xds.resources.as_ref(),
            "50m",
            "64Mi",
            "256Mi",
        )),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(pod::present([
            Some(pod::read_only_mount("config", CONFIG_DIR)),
            internal_tls.then(|| pod::internal_tls_mount(INTERNAL_TLS_DIR)),
        ])),
        ..Container::default()
    };
    Deployment {
        metadata: owner.meta(names::xds(owner), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(xds.replicas),
            selector: pod::label_selector(selector.clone()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: Some(names::xds(owner)),
                    security_context: Some(pod::pod_security(XDS_UID)),
                    topology_spread_constraints: Some(pod::topology_spread(&selector)),
                    enable_service_links: Some(false),
                    volumes: Some(pod::present([
                        Some(pod::config_map_volume("config", names::xds(owner))),
                        internal_tls.then(|| pod::internal_tls_volume(owner, component::XDS)),
                    ])),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Service Envoy's bootstrap points its ADS stream at.
pub fn service(owner: &ClusterRef) -> Service {
    let ports = vec![
        pod::service_port("xds", ports::XDS, Some("kubernetes.io/h2c")),
        pod::service_port("metrics", ports::METRICS, None),
    ];
    pod::internal_service(owner, names::xds(owner), COMPONENT, "chat-xds", ports)
}
