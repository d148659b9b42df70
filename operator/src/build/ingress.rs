//! The Envoy tier: bootstrap configuration (everything else arrives over ADS from chat-xds),
//! Deployment and the Service clients connect to.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, Container, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec,
            PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, SleepAction,
            TCPSocketAction,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde_json::json;

use chatcluster_types::identity::component;

use super::{BuildError, CONFIG_HASH_ANNOTATION, ClusterRef, internal_tls, names, pod, ports};
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
    /// Internal TLS to chat-xds; none: plain text.
    pub internal_tls: Option<EnvoyInternalTls>,
}

/// Where Envoy finds its internal certificate, and whom it expects at the other end.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyInternalTls {
    /// The directory holding `tls.crt`, `tls.key` and `ca.crt`, watched for renewals.
    pub dir: String,
    /// The file-based SDS resource naming those files ([`internal_tls_sds`]).
    pub sds_file: String,
    /// chat-xds's identity URI: a server certificate naming anything else is refused.
    pub xds_identity: String,
}

use chatcluster_types::xds::ENVOY_INTERNAL_SECRET as INTERNAL_SECRET;
/// The bootstrap ConfigMap's key of [`internal_tls_sds`].
const INTERNAL_SDS_KEY: &str = "internal-tls-sds.yaml";
/// Where a pod mounts its internal certificate Secret.
const INTERNAL_TLS_DIR: &str = "/etc/envoy/internal-tls";

/// Where a pod's Envoy finds what chat-xds's clusters to chatd refer to: its certificate's
/// SDS resource and the CA, as [`deployment`] mounts them.
pub fn upstream_tls(owner: &ClusterRef) -> chatcluster_types::xds::UpstreamTls {
    chatcluster_types::xds::UpstreamTls {
        namespace: owner.namespace.clone(),
        sds_file: format!("{BOOTSTRAP_DIR}/{INTERNAL_SDS_KEY}"),
        ca_file: format!("{INTERNAL_TLS_DIR}/{}", chatcluster_common::tls::CA_FILE),
    }
}

/// The file Envoy reads its internal certificate from: an SDS response naming the files in
/// `dir`, re-read when a file is moved into `dir` — a Secret volume's update, or the local
/// runner's — so a renewal is picked up without a restart.
pub fn internal_tls_sds(dir: &str) -> serde_json::Value {
    json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": INTERNAL_SECRET,
        "tls_certificate": {
            "certificate_chain": { "filename": format!("{dir}/{}", chatcluster_common::tls::CERT_FILE) },
            "private_key": { "filename": format!("{dir}/{}", chatcluster_common::tls::KEY_FILE) },
            "watched_directory": { "path": dir }
        }
    }]})
}

/// The xds cluster's transport socket: TLS 1.3, Envoy's certificate from [`internal_tls_sds`],
/// chat-xds verified against the cluster's CA and its identity.
fn xds_transport_socket(tls: &EnvoyInternalTls) -> serde_json::Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3"
                },
                "tls_certificate_sds_secret_configs": [{
                    "name": INTERNAL_SECRET,
                    "sds_config": {
                        "path_config_source": { "path": tls.sds_file },
                        "resource_api_version": "V3"
                    }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": format!("{}/{}", tls.dir, chatcluster_common::tls::CA_FILE) },
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": { "exact": tls.xds_identity }
                    }]
                }
            }
        }
    })
}

/// Envoy's bootstrap in a pod: chat-xds through its Service, the readiness listener on,
/// with `internal_tls` the certificate from its Secret volume.
pub fn bootstrap(owner: &ClusterRef, internal_tls: bool) -> serde_json::Value {
    envoy_bootstrap(&EnvoyPlace {
        node_cluster: names::envoy(owner),
        xds: vec![(owner.service_host(&names::xds(owner)), ports::XDS)],
        admin_port: ports::ENVOY_ADMIN,
        ready_port: Some(ports::ENVOY_READY),
        internal_tls: internal_tls.then(|| EnvoyInternalTls {
            dir: INTERNAL_TLS_DIR.into(),
            sds_file: format!("{BOOTSTRAP_DIR}/{INTERNAL_SDS_KEY}"),
            xds_identity: internal_tls::identity(owner, component::XDS).uri(),
        }),
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
    let mut xds_cluster = json!({
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
            "endpoints": [{ "lb_endpoints": place.xds.iter()
                .map(|(host, port)| json!({ "endpoint": { "address": socket(host, *port) } }))
                .collect::<Vec<_>>() }]
        }
    });
    if let Some(tls) = &place.internal_tls {
        xds_cluster["transport_socket"] = xds_transport_socket(tls);
    }
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
                xds_cluster,
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

/// The ConfigMap holding [`bootstrap`] as YAML, and with `internal_tls` the file-based SDS
/// resource of Envoy's internal certificate.
pub fn bootstrap_config_map(
    owner: &ClusterRef,
    internal_tls: bool,
) -> Result<ConfigMap, BuildError> {
    let yaml = |what, value: &serde_json::Value| {
        serde_yaml::to_string(value).map_err(|e| BuildError::Encode {
            what,
            message: e.to_string(),
        })
    };
    let mut data = BTreeMap::from([(
        BOOTSTRAP_KEY.to_string(),
        yaml("Envoy bootstrap", &bootstrap(owner, internal_tls))?,
    )]);
    if internal_tls {
        data.insert(
            INTERNAL_SDS_KEY.to_string(),
            yaml(
                "Envoy's internal certificate",
                &internal_tls_sds(INTERNAL_TLS_DIR),
            )?,
        );
    }
    Ok(ConfigMap {
        metadata: owner.meta(names::envoy(owner), owner.labels(COMPONENT, "envoy")),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The Envoy replicas. `config_hash` rolls them when the bootstrap changes; with
/// `internal_tls` each mounts its internal certificate.
pub fn deployment(
    owner: &ClusterRef,
    ingress: &IngressSpec,
    config_hash: &str,
    internal_tls: bool,
) -> Deployment {
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
        ports: Some(pod::container_ports(&[
            ("https", ports::ENVOY_HTTPS),
            ("ready", ports::ENVOY_READY),
        ])),
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
        volume_mounts: Some(pod::present([
            Some(pod::read_only_mount("bootstrap", BOOTSTRAP_DIR)),
            Some(pod::tmp_mount()),
            internal_tls.then(|| pod::internal_tls_mount(INTERNAL_TLS_DIR)),
        ])),
        ..Container::default()
    };
    Deployment {
        metadata: owner.meta(names::envoy(owner), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(ingress.replicas),
            selector: pod::label_selector(selector.clone()),
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
                    volumes: Some(pod::present([
                        Some(pod::config_map_volume("bootstrap", names::envoy(owner))),
                        Some(pod::tmp_volume()),
                        internal_tls.then(|| pod::internal_tls_volume(owner, component::INGRESS)),
                    ])),
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
