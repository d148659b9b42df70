//! The Envoy tier: bootstrap configuration (everything else arrives over ADS from chat-xds),
//! Deployment and the Service clients connect to.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, Lifecycle,
            LifecycleHandler, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
            SleepAction, TCPSocketAction, Volume,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde_json::json;

use super::{BuildError, CONFIG_HASH_ANNOTATION, ClusterRef, names, pod, ports};
use crate::api::{IngressSpec, defaults};

/// Component label of the Envoy objects.
pub const COMPONENT: &str = "ingress";
const BOOTSTRAP_KEY: &str = "envoy.yaml";
const BOOTSTRAP_DIR: &str = "/etc/envoy";
/// How long Envoy waits for its first configuration before opening its listeners anyway.
const INITIAL_FETCH_TIMEOUT: &str = "10s";
/// uid/gid of the `envoy` user in the upstream image.
const ENVOY_UID: i64 = 101;

/// Where an Envoy finds its control plane and keeps its own endpoints: what differs between a
/// pod and a local process.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyPlace {
    /// Envoy node cluster (the same for every replica).
    pub node_cluster: String,
    /// chat-xds `host:port`s (DNS names are resolved and followed).
    pub xds: Vec<(String, i32)>,
    /// Admin API port, on loopback only.
    pub admin_port: i32,
    /// Port of the listener exposing `/ready` and `/stats/prometheus` to probes and scrapers.
    pub ready_port: Option<i32>,
}

/// Envoy's bootstrap in a pod: chat-xds through its Service, the readiness listener on.
pub fn bootstrap(owner: &ClusterRef) -> serde_json::Value {
    envoy_bootstrap(&EnvoyPlace {
        node_cluster: names::envoy(owner),
        xds: vec![(owner.service_host(&names::xds(owner)), ports::XDS)],
        admin_port: ports::ENVOY_ADMIN,
        ready_port: Some(ports::ENVOY_READY),
    })
}

/// The heap Envoy's overload manager guards: below the default 512Mi memory limit of an
/// Envoy pod, leaving room for what the heap does not count.
pub const MAX_HEAP_BYTES: u64 = 384 * 1024 * 1024;
/// Client connections one Envoy holds at most.
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

/// Envoy's bootstrap: a node identity, the admin API on loopback only, ADS (Delta) to chat-xds
/// for listeners and clusters, load reports to chat-xds, and optionally one static listener
/// that exposes just `/ready` and `/stats/prometheus` from the admin API.
pub fn envoy_bootstrap(place: &EnvoyPlace) -> serde_json::Value {
    let socket = |address: &str, port: i32| json!({ "socket_address": { "address": address, "port_value": port } });
    let admin_route =
        |path: &str| json!({ "match": { "path": path }, "route": { "cluster": "admin" } });
    let xds_endpoints: Vec<_> = place
        .xds
        .iter()
        .map(|(host, port)| json!({ "endpoint": { "address": socket(host, *port) } }))
        .collect();
    let listeners: Vec<_> = place.ready_port.iter().map(|&port| json!({
                "name": "ready",
                "address": socket("0.0.0.0", port),
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ready",
                        "route_config": {
                            "name": "ready",
                            "virtual_hosts": [{
                                "name": "ready",
                                "domains": ["*"],
                                "routes": [
                                    admin_route("/ready"),
                                    admin_route("/stats/prometheus"),
                                    { "match": { "prefix": "/" }, "direct_response": { "status": 404 } }
                                ]
                            }]
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }
                        }]
                    }
                }]}]
            })).collect();
    json!({
        "node": { "cluster": place.node_cluster },
        "admin": { "address": socket("127.0.0.1", place.admin_port) },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }]
            },
            // Envoy opens no listener, not even the static readiness one, until its first
            // configuration arrives or this times out, once for CDS and then for LDS: 2 × 10 s
            // stays well inside the liveness budget (6 × 10 s), so an Envoy started while
            // chat-xds is down is not restarted in a loop.
            "cds_config": { "ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT },
            "lds_config": { "ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT }
        },
        // At the edge, Envoy sheds load before it falls over: past 95% of its heap it returns
        // memory, past 98% it refuses new requests, and it holds at most MAX_DOWNSTREAM
        // connections (each costs buffers and a slot in the kernel).
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.fixed_heap",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                        "max_heap_size_bytes": MAX_HEAP_BYTES
                    }
                },
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS
                    }
                }
            ],
            "actions": [
                {
                    "name": "envoy.overload_actions.shrink_heap",
                    "triggers": [{ "name": "envoy.resource_monitors.fixed_heap", "threshold": { "value": 0.95 } }]
                },
                {
                    "name": "envoy.overload_actions.stop_accepting_requests",
                    "triggers": [{ "name": "envoy.resource_monitors.fixed_heap", "threshold": { "value": 0.98 } }]
                }
            ]
        },
        // Load reports (requests per cluster, every second) feed the autoscaler via chat-xds.
        "cluster_manager": {
            "load_stats_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }]
            }
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STRICT_DNS",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": { "interval": "30s", "timeout": "5s" }
                                }
                            }
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [{ "lb_endpoints": xds_endpoints }]
                    }
                },
                {
                    "name": "admin",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "admin",
                        "endpoints": [{ "lb_endpoints": [
                            { "endpoint": { "address": socket("127.0.0.1", place.admin_port) } }
                        ]}]
                    }
                }
            ],
            "listeners": listeners
        }
    })
}

/// The ConfigMap holding [`bootstrap`] as YAML.
pub fn bootstrap_config_map(owner: &ClusterRef) -> Result<ConfigMap, BuildError> {
    let yaml = serde_yaml::to_string(&bootstrap(owner)).map_err(|e| BuildError::Encode {
        what: "Envoy bootstrap",
        message: e.to_string(),
    })?;
    Ok(ConfigMap {
        metadata: owner.meta(names::envoy(owner), owner.labels(COMPONENT, "envoy")),
        data: Some(BTreeMap::from([(BOOTSTRAP_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// The Envoy replicas. `config_hash` rolls them when the bootstrap changes.
pub fn deployment(owner: &ClusterRef, ingress: &IngressSpec, config_hash: &str) -> Deployment {
    let selector = owner.selector(COMPONENT);
    let labels = owner.labels(COMPONENT, "envoy");
    let container = Container {
        name: "envoy".into(),
        image: Some(
            ingress
                .image
                .clone()
                .unwrap_or_else(|| defaults::ENVOY_IMAGE.into()),
        ),
        args: Some(vec![
            "--config-path".into(),
            format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}"),
            "--service-node".into(),
            "$(POD_NAME)".into(),
            "--drain-time-s".into(),
            "15".into(),
            "--log-level".into(),
            "info".into(),
        ]),
        env: Some(vec![pod::env_from_field("POD_NAME", "metadata.name")]),
        ports: Some(vec![
            ContainerPort {
                name: Some("https".into()),
                container_port: ports::ENVOY_HTTPS,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("ready".into()),
                container_port: ports::ENVOY_READY,
                ..ContainerPort::default()
            },
        ]),
        // Envoy answers nothing until its first configuration arrives from chat-xds or the
        // initial fetch times out, so a new pod takes no traffic before it has routes.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("ready".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // Liveness must not depend on chat-xds: Envoy keeps serving its last config without it.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("ready".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        // Stay up while the load balancer and kube-proxy stop sending new connections here.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 10 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(pod::resources(
            ingress.resources.as_ref(),
            "100m",
            "128Mi",
            "512Mi",
        )),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(vec![
            pod::read_only_mount("bootstrap", BOOTSTRAP_DIR),
            pod::tmp_mount(),
        ]),
        ..Container::default()
    };
    Deployment {
        metadata: owner.meta(names::envoy(owner), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(ingress.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        (CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string()),
                        ("prometheus.io/scrape".to_string(), "true".to_string()),
                        (
                            "prometheus.io/port".to_string(),
                            ports::ENVOY_READY.to_string(),
                        ),
                        (
                            "prometheus.io/path".to_string(),
                            "/stats/prometheus".to_string(),
                        ),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod::pod_security(ENVOY_UID)),
                    topology_spread_constraints: Some(pod::topology_spread(&selector)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(vec![
                        Volume {
                            name: "bootstrap".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: names::envoy(owner),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        pod::tmp_volume(),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Service clients connect to: the user's type and port onto Envoy's TLS listener.
pub fn service(owner: &ClusterRef, ingress: &IngressSpec) -> Service {
    let mut metadata = owner.meta(names::envoy(owner), owner.labels(COMPONENT, "envoy"));
    if !ingress.service.annotations.is_empty() {
        metadata.annotations = Some(ingress.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(ingress.service.type_.as_str().into()),
            selector: Some(owner.selector(COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: ingress.service.port,
                target_port: Some(IntOrString::String("https".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
