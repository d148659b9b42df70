//! The ingress: listeners (TLS with the certificate over SDS, and an optional plain-text one),
//! the route table sending each gRPC package to its service's cluster, and the certificate.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chatcluster_types::xds::RateLimit;
use envoy_types::{
    pb::{
        envoy::{
            config::{
                core::v3::{
                    Address, DataSource, RuntimeFractionalPercent, SocketAddress, TransportSocket,
                    address, data_source::Specifier, socket_address::PortSpecifier,
                    transport_socket::ConfigType as SocketConfigType,
                },
                core::v3::{
                    HeaderValue, HeaderValueOption, Http2ProtocolOptions, HttpProtocolOptions,
                    KeepaliveSettings, http_protocol_options::HeadersWithUnderscoresAction,
                },
                listener::v3::{Filter, FilterChain, Listener, filter::ConfigType},
                route::v3::{
                    DirectResponseAction, RateLimit as RouteRateLimit, RetryPolicy, Route,
                    RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
                    rate_limit::{
                        self,
                        action::{ActionSpecifier, RemoteAddress},
                    },
                    retry_policy::{RetryHostPredicate, retry_host_predicate},
                    route::Action,
                    route_action::{
                        ClusterSpecifier, HashPolicy, MaxStreamDuration,
                        hash_policy::{Header, PolicySpecifier},
                    },
                    route_match::PathSpecifier,
                },
            },
            extensions::{
                common::ratelimit::v3::{LocalRateLimitDescriptor, rate_limit_descriptor},
                filters::{
                    http::{
                        cors::v3::Cors, grpc_web::v3::GrpcWeb, local_ratelimit::v3::LocalRateLimit,
                        router::v3::Router,
                    },
                    network::http_connection_manager::v3::{
                        HttpConnectionManager, HttpFilter, Rds,
                        http_connection_manager::{CodecType, RouteSpecifier},
                        http_filter::ConfigType as HttpFilterConfig,
                    },
                },
                retry::host::previous_hosts::v3::PreviousHostsPredicate,
                transport_sockets::tls::v3::{
                    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
                    TlsCertificate, secret,
                },
            },
            r#type::v3::{FractionalPercent, TokenBucket, fractional_percent::DenominatorType},
        },
        google::protobuf::{Any, BoolValue, Duration, UInt32Value},
    },
    util::pack_any,
};

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::{ListenerInput, ListenerKind, RouteEntry, RouteInput, cluster::ads};
use crate::model::Certificate;

/// The route table every ingress listener uses.
pub const INGRESS_ROUTE: &str = "ingress";
/// The SDS secret holding the serving certificate.
pub const TLS_SECRET: &str = "ingress-cert";

fn socket(ip: IpAddr, port: i32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            // `::` alone would take IPv6 only: every interface means IPv4 too.
            ipv4_compat: ip.is_ipv6() && ip.is_unspecified(),
            port_specifier: Some(PortSpecifier::PortValue(u32::try_from(port).unwrap_or(0))),
            ..SocketAddress::default()
        })),
    }
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..HttpFilter::default()
    }
}

fn connection_manager(input: &ListenerInput, prefix: &str) -> HttpConnectionManager {
    let mut filters = Vec::new();
    if let Some(limit) = input.rate_limit {
        filters.push(http_filter(
            "envoy.filters.http.local_ratelimit",
            pack_any(local_rate_limit(prefix, limit)),
        ));
    }
    if input.grpc_web {
        filters.push(http_filter(
            "envoy.filters.http.grpc_web",
            pack_any(GrpcWeb::default()),
        ));
        filters.push(http_filter(
            "envoy.filters.http.cors",
            pack_any(Cors::default()),
        ));
    }
    filters.push(http_filter(
        "envoy.filters.http.router",
        pack_any(Router::default()),
    ));
    HttpConnectionManager {
        stat_prefix: prefix.into(),
        // HTTP/2 for gRPC, HTTP/1.1 for gRPC-Web from browsers.
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: INGRESS_ROUTE.into(),
        })),
        http_filters: filters,
        // A stream silent this long is closed (a subscription is never silent: chatd sends a
        // heartbeat every 30 s); dead clients' connections are found sooner by HTTP/2 pings.
        stream_idle_timeout: Some(seconds(STREAM_IDLE_TIMEOUT_S)),
        // A client that trickles its headers (slowloris) is cut off.
        request_headers_timeout: Some(seconds(REQUEST_HEADERS_TIMEOUT_S)),
        // The client's own address, not what it claims in x-forwarded-for.
        use_remote_address: Some(BoolValue { value: true }),
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: Some(seconds(CONNECTION_IDLE_TIMEOUT_S)),
            max_headers_count: Some(UInt32Value { value: MAX_HEADERS }),
            headers_with_underscores_action: HeadersWithUnderscoresAction::RejectRequest as i32,
            ..HttpProtocolOptions::default()
        }),
        // Envoy's edge defaults: few streams per client connection, small windows, so one
        // client cannot hold many buffers; pings find connections whose client vanished.
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value {
                value: MAX_STREAMS_PER_CLIENT,
            }),
            initial_stream_window_size: Some(UInt32Value { value: 64 * 1024 }),
            initial_connection_window_size: Some(UInt32Value { value: 1024 * 1024 }),
            connection_keepalive: Some(KeepaliveSettings {
                interval: Some(seconds(30)),
                timeout: Some(seconds(10)),
                ..KeepaliveSettings::default()
            }),
            ..Http2ProtocolOptions::default()
        }),
        ..HttpConnectionManager::default()
    }
}

/// How long a client may take to send its request headers.
pub const REQUEST_HEADERS_TIMEOUT_S: i64 = 10;
/// How long a stream may carry nothing before Envoy closes it.
pub const STREAM_IDLE_TIMEOUT_S: i64 = 300;
/// How long a client connection may carry no stream before Envoy closes it.
pub const CONNECTION_IDLE_TIMEOUT_S: i64 = 3600;
/// Headers a request may carry.
pub const MAX_HEADERS: u32 = 100;
/// Concurrent streams one client connection may open (a client needs few: the session
/// stream and its calls).
pub const MAX_STREAMS_PER_CLIENT: u32 = 100;
/// Bytes Envoy buffers per client connection.
pub const CONNECTION_BUFFER_BYTES: u32 = 32 * 1024;

fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

/// Client addresses each Envoy keeps a token bucket for (least recently used ones go).
pub const RATE_LIMITED_CLIENTS: u32 = 100_000;

/// Envoy's local token buckets, one per client address (the remote address, which
/// `use_remote_address` makes the connection's own), enforced on every request; a refused gRPC
/// call gets RESOURCE_EXHAUSTED, which clients treat as "back off", not "server down".
fn local_rate_limit(prefix: &str, limit: RateLimit) -> LocalRateLimit {
    let always = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    };
    let bucket = |tokens: u32, per_second: u32| TokenBucket {
        max_tokens: tokens.max(1),
        tokens_per_fill: Some(UInt32Value {
            value: per_second.max(1),
        }),
        fill_interval: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    const REMOTE_ADDRESS: &str = "remote_address";
    LocalRateLimit {
        stat_prefix: format!("{prefix}_rate_limit"),
        // What no descriptor matches (nothing: every request has an address) is not limited.
        token_bucket: Some(bucket(u32::MAX, u32::MAX)),
        always_consume_default_token_bucket: Some(BoolValue { value: false }),
        rate_limits: vec![RouteRateLimit {
            actions: vec![rate_limit::Action {
                action_specifier: Some(ActionSpecifier::RemoteAddress(RemoteAddress {})),
            }],
            ..RouteRateLimit::default()
        }],
        // A blank value: a bucket of its own for every address seen.
        descriptors: vec![LocalRateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry {
                key: REMOTE_ADDRESS.into(),
                value: String::new(),
            }],
            token_bucket: Some(bucket(limit.burst, limit.requests_per_second)),
            shadow_mode: false,
        }],
        max_dynamic_descriptors: Some(UInt32Value {
            value: RATE_LIMITED_CLIENTS,
        }),
        filter_enabled: Some(always()),
        filter_enforced: Some(always()),
        rate_limited_as_resource_exhausted: true,
        ..LocalRateLimit::default()
    }
}

/// The listener's resource name.
pub fn listener_name(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Tls => "ingress-tls",
        ListenerKind::Plaintext => "ingress-plaintext",
    }
}

/// One ingress listener: TLS with the certificate over SDS, or plain text.
pub fn listener(input: &ListenerInput) -> Listener {
    let (prefix, tls) = match input.kind {
        ListenerKind::Tls => {
            let context = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    // The certificate comes over SDS: rotating it needs no listener change.
                    tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                        name: TLS_SECRET.into(),
                        sds_config: Some(ads()),
                    }],
                    alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                    ..CommonTlsContext::default()
                }),
                ..DownstreamTlsContext::default()
            };
            let socket = TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfigType::TypedConfig(pack_any(context))),
            };
            ("ingress_tls", Some(socket))
        }
        ListenerKind::Plaintext => ("ingress_plaintext", None),
    };
    let hcm = connection_manager(input, prefix);
    Listener {
        name: listener_name(input.kind).into(),
        address: Some(socket(input.address, input.port)),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: CONNECTION_BUFFER_BYTES,
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
            }],
            transport_socket: tls,
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn route(entry: &RouteEntry) -> Route {
    let hash_policy = entry
        .hash_header
        .iter()
        .map(|header| HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: header.clone(),
                ..Header::default()
            })),
            ..HashPolicy::default()
        })
        .collect();
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(format!("/{}.", entry.grpc_package))),
            ..RouteMatch::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(entry.cluster.clone())),
            // No overall timeout: a subscription is one long call.
            timeout: Some(Duration::default()),
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: Some(Duration::default()),
                ..MaxStreamDuration::default()
            }),
            hash_policy,
            // Retry what a backend refused or dropped (a killed replica, a failover). A retry
            // carries the same x-request-id, which Envoy makes for every outside request, and
            // chatd keys a send without a client key by it: a retried send that had committed
            // returns the first message instead of storing a second.
            // A retry goes to another replica: without the predicate, a replica killed a
            // moment ago (before health checks or outlier detection eject it) can be
            // picked for the first try and for both retries.
            retry_policy: Some(RetryPolicy {
                retry_on: "unavailable,reset,connect-failure,refused-stream".into(),
                num_retries: Some(UInt32Value { value: 2 }),
                per_try_timeout: Some(Duration::default()),
                retry_host_predicate: vec![RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".into(),
                    config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                        PreviousHostsPredicate {},
                    ))),
                }],
                host_selection_retry_max_attempts: 3,
                ..RetryPolicy::default()
            }),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}

/// The browser client (gRPC-Web), served by Envoy itself at `/` when gRPC-Web is on.
pub const WEB_PAGE: &str = include_str!("../../web/index.html");

/// `/` answered by Envoy with the web page.
fn web_page_route(page: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Path("/".into())),
            ..RouteMatch::default()
        }),
        action: Some(Action::DirectResponse(DirectResponseAction {
            status: 200,
            body: Some(DataSource {
                specifier: Some(Specifier::InlineString(page.into())),
                ..DataSource::default()
            }),
            ..DirectResponseAction::default()
        })),
        response_headers_to_add: [
            ("content-type", "text/html; charset=utf-8".to_string()),
            ("content-security-policy", content_security_policy(page)),
            ("x-content-type-options", "nosniff".into()),
            ("referrer-policy", "no-referrer".into()),
        ]
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value,
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        })
        .collect(),
        ..Route::default()
    }
}

/// The page's Content-Security-Policy: only its own inline script and style (by hash) run,
/// it talks only to the origin it came from, and no other site may frame it. A message that
/// smuggled markup into the page could run nothing.
pub fn content_security_policy(page: &str) -> String {
    let hash = |open: &str, close: &str| {
        let body = page
            .split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map_or("", |(body, _)| body);
        format!("'sha256-{}'", B64.encode(Sha256::digest(body.as_bytes())))
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>")
    )
}

/// Routes by gRPC package: `/chatcluster.auth.v1.*` to `auth`, and so on; with gRPC-Web, the
/// web page at `/`.
pub fn route_configuration(input: &RouteInput) -> RouteConfiguration {
    let mut routes: Vec<Route> = input.services.iter().map(route).collect();
    routes.extend(input.web_page.map(web_page_route));
    RouteConfiguration {
        name: INGRESS_ROUTE.into(),
        virtual_hosts: vec![VirtualHost {
            name: "chat".into(),
            domains: vec!["*".into()],
            routes,
            ..VirtualHost::default()
        }],
        // Envoy's default cap on a direct response body (4 KiB) is below the page's size.
        max_direct_response_body_size_bytes: input.web_page.map(|page| UInt32Value {
            value: u32::try_from(page.len() * 2).unwrap_or(u32::MAX),
        }),
        ..RouteConfiguration::default()
    }
}

/// The serving certificate as an SDS secret.
pub fn secret(cert: &Certificate) -> Secret {
    let inline = |pem: &str| DataSource {
        specifier: Some(Specifier::InlineString(pem.into())),
        ..DataSource::default()
    };
    Secret {
        name: TLS_SECRET.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&cert.cert_pem)),
            private_key: Some(inline(&cert.key_pem)),
            ..TlsCertificate::default()
        })),
    }
}
