//! One upstream cluster per chat service, and its endpoints.

use std::collections::HashMap;

use chatcluster_types::xds::LoadBalancing;
use envoy_types::{
    pb::{
        envoy::{
            config::{
                cluster::v3::{
                    CircuitBreakers, Cluster, OutlierDetection,
                    circuit_breakers::{Thresholds, thresholds::RetryBudget},
                    cluster::{
                        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig,
                        LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig,
                    },
                },
                core::v3::{
                    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthCheck,
                    HealthStatus, Http2ProtocolOptions, RoutingPriority, SocketAddress, address,
                    config_source::ConfigSourceSpecifier,
                    health_check::{GrpcHealthCheck, HealthChecker},
                    socket_address::PortSpecifier,
                },
                endpoint::v3::{
                    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
                    LocalityLbEndpoints, lb_endpoint::HostIdentifier,
                },
            },
            extensions::upstreams::http::v3::{
                HttpProtocolOptions,
                http_protocol_options::{
                    ExplicitHttpConfig, UpstreamProtocolOptions,
                    explicit_http_config::ProtocolConfig,
                },
            },
            r#type::v3::Percent,
        },
        google::protobuf::{Duration, UInt32Value, UInt64Value},
    },
    util::pack_any,
};

use chatcluster_types::xds::ENVOY_INTERNAL_SECRET;
use envoy_types::pb::envoy::{
    config::core::v3::{
        DataSource, PathConfigSource, TransportSocket, data_source::Specifier,
        transport_socket::ConfigType as SocketConfigType,
    },
    extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
        TlsParameters, UpstreamTlsContext, common_tls_context::ValidationContextType,
        subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
    },
    r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
};

use super::{ClusterInput, EndpointsInput, UpstreamTlsInput};

/// Configuration delivered over the ADS stream itself.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

fn secs(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

fn millis(ms: i32) -> Duration {
    Duration {
        seconds: i64::from(ms / 1000),
        nanos: (ms % 1000) * 1_000_000,
    }
}

/// Bytes Envoy lets one upstream stream send before it has passed them on.
pub const UPSTREAM_STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes Envoy lets one upstream connection send before it has passed them on.
pub const UPSTREAM_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The transport socket of a service's cluster under internal TLS: TLS 1.3, Envoy's own
/// certificate from its file-based SDS resource (renewals picked up as the files change), the
/// backend verified against the cluster's CA and by the service's identity — a replica of
/// another service, or anything else holding a certificate of the CA, is refused.
fn upstream_tls(tls: &UpstreamTlsInput) -> TransportSocket {
    let context = UpstreamTlsContext {
        sni: tls.server_name.clone(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into()],
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..TlsParameters::default()
            }),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: ENVOY_INTERNAL_SECRET.into(),
                sds_config: Some(ConfigSource {
                    resource_api_version: ApiVersion::V3 as i32,
                    config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                        PathConfigSource {
                            path: tls.sds_file.clone(),
                            ..PathConfigSource::default()
                        },
                    )),
                    ..ConfigSource::default()
                }),
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(Specifier::Filename(tls.ca_file.clone())),
                        ..DataSource::default()
                    }),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(tls.identity_uri.clone())),
                            ..StringMatcher::default()
                        }),
                        ..SubjectAltNameMatcher::default()
                    }],
                    ..CertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfigType::TypedConfig(pack_any(context))),
    }
}

/// The cluster of one chat service: HTTP/2 to the backends, endpoints over ADS, the spec's
/// load-balancing policy, active gRPC health checks against the service's own health status,
/// outlier ejection of backends that fail, and circuit breakers sized for streaming chat.
pub fn cluster(svc: &ClusterInput) -> Cluster {
    let (lb_policy, lb_config) = match svc.load_balancing {
        LoadBalancing::LeastRequest => (LbPolicy::LeastRequest, None),
        LoadBalancing::RoundRobin => (LbPolicy::RoundRobin, None),
        LoadBalancing::RingHash => (
            LbPolicy::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: 1024 }),
                ..RingHashLbConfig::default()
            })),
        ),
        LoadBalancing::Maglev => (
            LbPolicy::Maglev,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig::default())),
        ),
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                // Envoy's edge guidance for upstreams: small windows, so what a slow client
                // does not read stays in chatd (which cuts it, with a resume point) instead of
                // piling up in Envoy (HTTP/2's default lets 256 MiB in per stream).
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions {
                    initial_stream_window_size: Some(UInt32Value {
                        value: UPSTREAM_STREAM_WINDOW,
                    }),
                    initial_connection_window_size: Some(UInt32Value {
                        value: UPSTREAM_CONNECTION_WINDOW,
                    }),
                    ..Http2ProtocolOptions::default()
                })),
            },
        )),
        ..HttpProtocolOptions::default()
    };
    let threshold = |max: u32| Some(UInt32Value { value: max });
    Cluster {
        name: svc.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(secs(1)),
        // Envoy otherwise keeps a host discovery removed for as long as it passes health
        // checks; removals must take effect (draining is signalled before, as DRAINING).
        ignore_health_on_host_removal: true,
        lb_policy: lb_policy as i32,
        lb_config,
        // A replica added by scaling out gets traffic only once its first health check has
        // passed; without this, 1 → 4 replicas puts the cluster below Envoy's panic threshold
        // (3 of 4 hosts not yet checked) and Envoy spreads requests over every host, ready or not.
        common_lb_config: Some(CommonLbConfig {
            ignore_new_hosts_until_first_hc: true,
            ..CommonLbConfig::default()
        }),
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(http2),
        )]),
        health_checks: vec![HealthCheck {
            timeout: Some(secs(1)),
            interval: Some(secs(2)),
            unhealthy_threshold: Some(UInt32Value { value: 2 }),
            healthy_threshold: Some(UInt32Value { value: 1 }),
            // A new endpoint takes traffic as soon as its first check passes.
            no_traffic_interval: Some(secs(2)),
            health_checker: Some(HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: svc.health_service.clone(),
                ..GrpcHealthCheck::default()
            })),
            ..HealthCheck::default()
        }],
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 3 }),
            consecutive_gateway_failure: Some(UInt32Value { value: 2 }),
            consecutive_local_origin_failure: Some(UInt32Value { value: 2 }),
            split_external_local_origin_errors: true,
            interval: Some(millis(500)),
            base_ejection_time: Some(secs(10)),
            max_ejection_percent: Some(UInt32Value { value: 50 }),
            ..OutlierDetection::default()
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: threshold(10_000),
                max_pending_requests: threshold(10_000),
                max_requests: threshold(100_000),
                max_retries: threshold(50),
                // Retries may add at most 20% to the load (at least 3 at once), so a failing
                // backend cannot set off a retry storm.
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: 20.0 }),
                    min_retry_concurrency: Some(UInt32Value { value: 3 }),
                    ..RetryBudget::default()
                }),
                ..Thresholds::default()
            }],
            ..CircuitBreakers::default()
        }),
        transport_socket: svc.tls.as_ref().map(upstream_tls),
        ..Cluster::default()
    }
}

/// The endpoints of one service. Not-ready endpoints are left out; terminating ones are
/// marked DRAINING, so Envoy sends them no new requests but lets running ones finish.
pub fn load_assignment(input: &EndpointsInput) -> ClusterLoadAssignment {
    let lb_endpoints = input
        .endpoints
        .iter()
        .filter(|e| e.ready || e.terminating)
        .map(|e| LbEndpoint {
            health_status: if e.terminating {
                HealthStatus::Draining as i32
            } else {
                HealthStatus::Unknown as i32
            },
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: e.address.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(e.port))),
                        ..SocketAddress::default()
                    })),
                }),
                ..EnvoyEndpoint::default()
            })),
            ..LbEndpoint::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: input.service.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}
