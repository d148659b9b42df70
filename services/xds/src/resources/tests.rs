//! Versions against content: every input field is changed in turn, and each resource whose
//! content changed must have changed version (else Envoy would never get it), and only the
//! resources that field feeds may change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use chatcluster_types::xds::{
    KubernetesDiscovery, LoadBalancing, RateLimit, UpstreamTls, XdsConfig, XdsService,
};
use envoy_types::pb::envoy::{
    config::core::v3::transport_socket::ConfigType as SocketConfig,
    config::{
        cluster::v3::Cluster,
        core::v3::address,
        endpoint::v3::ClusterLoadAssignment,
        listener::v3::Listener,
        route::v3::{RouteConfiguration, route::Action},
    },
    extensions::transport_sockets::tls::v3::{
        Secret, UpstreamTlsContext, common_tls_context::ValidationContextType,
    },
    r#type::matcher::v3::string_matcher::MatchPattern,
};
use prost::Message;

use super::*;
use crate::model::{Certificate, Endpoint};

fn service(name: &str) -> XdsService {
    XdsService {
        name: name.into(),
        grpc_package: format!("chatcluster.{name}.v1"),
        health_service: format!("chatcluster.{name}.v1.Service"),
        port: 50051,
        load_balancing: LoadBalancing::RingHash,
        hash_header: Some("x-chat-affinity".into()),
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        address: "10.0.0.1".into(),
        port,
        ready: true,
        terminating: false,
    }
}

fn base() -> State {
    State {
        config: XdsConfig {
            cluster: "demo".into(),
            listener_port: 8443,
            plaintext_port: Some(8080),
            listen_address: None,
            grpc_web: true,
            rate_limit: Some(RateLimit {
                requests_per_second: 100,
                burst: 200,
            }),
            services: vec![
                service("auth"),
                XdsService {
                    load_balancing: LoadBalancing::LeastRequest,
                    hash_header: None,
                    ..service("groups")
                },
            ],
            upstream_tls: None,
            kubernetes: None,
        },
        endpoints: BTreeMap::from([
            ("auth".into(), vec![endpoint(1), endpoint(2)]),
            ("groups".into(), vec![endpoint(3)]),
        ]),
        certificate: Some(Certificate {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        }),
    }
}

/// A resource's content, decoded: encodings of map fields have no fixed order, so bytes
/// cannot be compared.
#[derive(Debug, PartialEq)]
enum Decoded {
    Cluster(Box<Cluster>),
    Endpoint(ClusterLoadAssignment),
    Secret(Secret),
    Listener(Box<Listener>),
    Route(RouteConfiguration),
}

fn decode(kind: Kind, r: &Resource) -> Decoded {
    let bytes = r.body.value.as_slice();
    match kind {
        Kind::Cluster => Decoded::Cluster(Box::new(Cluster::decode(bytes).unwrap())),
        Kind::Endpoint => Decoded::Endpoint(ClusterLoadAssignment::decode(bytes).unwrap()),
        Kind::Secret => Decoded::Secret(Secret::decode(bytes).unwrap()),
        Kind::Listener => Decoded::Listener(Box::new(Listener::decode(bytes).unwrap())),
        Kind::Route => Decoded::Route(RouteConfiguration::decode(bytes).unwrap()),
    }
}

/// The resources (kind, name) whose content differs between `a` and `b`, checking that every
/// one of them also differs in version (or is added or removed).
fn changed(a: &Snapshot, b: &Snapshot, what: &str) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    for kind in Kind::ALL {
        let names: BTreeSet<&String> = a.of(kind).chain(b.of(kind)).map(|r| &r.name).collect();
        for name in names {
            match (a.get(kind, name), b.get(kind, name)) {
                (Some(x), Some(y)) => {
                    if decode(kind, x) != decode(kind, y) {
                        assert_ne!(
                            x.version, y.version,
                            "{what}: {kind:?} {name} changed but kept its version"
                        );
                        out.insert((kind, name.clone()));
                    }
                }
                _ => {
                    out.insert((kind, name.clone()));
                }
            }
        }
    }
    out
}

type Change = (
    &'static str,
    fn(&mut State),
    &'static [(Kind, &'static str)],
);

const ALL_LISTENERS: &[(Kind, &str)] = &[
    (Kind::Listener, "ingress-tls"),
    (Kind::Listener, "ingress-plaintext"),
];

fn upstream_tls() -> UpstreamTls {
    UpstreamTls {
        namespace: "chat".into(),
        sds_file: "/etc/envoy/internal-tls-sds.yaml".into(),
        ca_file: "/etc/envoy/internal-tls/ca.crt".into(),
    }
}

#[test]
fn with_internal_tls_each_cluster_verifies_its_own_services_identity() {
    let mut state = base();
    state.config.upstream_tls = Some(upstream_tls());
    let with_tls = snapshot(&state, None);
    for service in ["auth", "groups"] {
        let Decoded::Cluster(cluster) =
            decode(Kind::Cluster, with_tls.get(Kind::Cluster, service).unwrap())
        else {
            panic!("not a cluster");
        };
        let socket = cluster.transport_socket.expect("a TLS transport socket");
        let Some(SocketConfig::TypedConfig(any)) = socket.config_type else {
            panic!("no typed config");
        };
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(tls.sni, format!("{service}.demo.chat.chatcluster.internal"));
        let common = tls.common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            chatcluster_types::xds::ENVOY_INTERNAL_SECRET
        );
        let Some(ValidationContextType::ValidationContext(validation)) =
            common.validation_context_type
        else {
            panic!("no validation context");
        };
        let matcher = validation.match_typed_subject_alt_names[0]
            .matcher
            .clone()
            .unwrap();
        assert_eq!(
            matcher.match_pattern,
            Some(MatchPattern::Exact(format!(
                "spiffe://chatcluster.io/ns/chat/cluster/demo/{service}"
            )))
        );
    }
    // Off: plain text.
    let plain = snapshot(&base(), None);
    let Decoded::Cluster(cluster) =
        decode(Kind::Cluster, plain.get(Kind::Cluster, "auth").unwrap())
    else {
        panic!("not a cluster");
    };
    assert!(cluster.transport_socket.is_none());
}

#[test]
fn every_chat_route_retries_on_another_replica() {
    let snap = snapshot(&base(), None);
    let Decoded::Route(config) = decode(Kind::Route, snap.get(Kind::Route, INGRESS_ROUTE).unwrap())
    else {
        panic!("not a route configuration");
    };
    let routes: Vec<_> = config
        .virtual_hosts
        .iter()
        .flat_map(|host| &host.routes)
        .filter_map(|route| match &route.action {
            Some(Action::Route(action)) => Some(action),
            _ => None,
        })
        .collect();
    assert_eq!(routes.len(), base().config.services.len());
    for action in routes {
        let retry = action.retry_policy.as_ref().expect("a retry policy");
        let retries = retry.num_retries.map_or(1, |n| i64::from(n.value));
        assert!(retries >= 1);
        let names: Vec<&str> = retry
            .retry_host_predicate
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["envoy.retry_host_predicates.previous_hosts"]);
        assert!(retry.host_selection_retry_max_attempts >= retries);
    }
}

#[test]
fn every_input_changes_the_version_of_exactly_what_it_feeds() {
    let changes: &[Change] = &[
        (
            "listenerPort",
            |s| s.config.listener_port = 9443,
            &[(Kind::Listener, "ingress-tls")],
        ),
        (
            "plaintextPort",
            |s| s.config.plaintext_port = Some(9080),
            &[(Kind::Listener, "ingress-plaintext")],
        ),
        (
            "plaintextPort off",
            |s| s.config.plaintext_port = None,
            &[(Kind::Listener, "ingress-plaintext")],
        ),
        (
            "listenAddress",
            |s| s.config.listen_address = Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ALL_LISTENERS,
        ),
        (
            "grpcWeb",
            |s| s.config.grpc_web = false,
            &[
                (Kind::Listener, "ingress-tls"),
                (Kind::Listener, "ingress-plaintext"),
                (Kind::Route, INGRESS_ROUTE),
            ],
        ),
        (
            "rateLimit",
            |s| {
                s.config.rate_limit = Some(RateLimit {
                    requests_per_second: 5,
                    burst: 200,
                })
            },
            ALL_LISTENERS,
        ),
        (
            "rateLimit burst",
            |s| {
                s.config.rate_limit = Some(RateLimit {
                    requests_per_second: 100,
                    burst: 7,
                })
            },
            ALL_LISTENERS,
        ),
        (
            "rateLimit off",
            |s| s.config.rate_limit = None,
            ALL_LISTENERS,
        ),
        (
            "upstreamTls",
            |s| s.config.upstream_tls = Some(upstream_tls()),
            &[(Kind::Cluster, "auth"), (Kind::Cluster, "groups")],
        ),
        (
            "service added",
            |s| s.config.services.push(service("dms")),
            &[
                (Kind::Cluster, "dms"),
                (Kind::Endpoint, "dms"),
                (Kind::Route, INGRESS_ROUTE),
            ],
        ),
        (
            "grpcPackage",
            |s| s.config.services[0].grpc_package = "other.v1".into(),
            &[(Kind::Route, INGRESS_ROUTE)],
        ),
        (
            "healthService",
            |s| s.config.services[0].health_service = "other".into(),
            &[(Kind::Cluster, "auth")],
        ),
        ("port", |s| s.config.services[0].port = 50052, &[]),
        (
            "loadBalancing",
            |s| s.config.services[0].load_balancing = LoadBalancing::LeastRequest,
            &[(Kind::Cluster, "auth"), (Kind::Route, INGRESS_ROUTE)],
        ),
        (
            "hashHeader",
            |s| s.config.services[0].hash_header = Some("x-other".into()),
            &[(Kind::Route, INGRESS_ROUTE)],
        ),
        (
            "endpoint added",
            |s| s.endpoints.get_mut("auth").unwrap().push(endpoint(9)),
            &[(Kind::Endpoint, "auth")],
        ),
        (
            "endpoint not ready",
            |s| s.endpoints.get_mut("groups").unwrap()[0].ready = false,
            &[(Kind::Endpoint, "groups")],
        ),
        (
            "endpoint terminating",
            |s| s.endpoints.get_mut("groups").unwrap()[0].terminating = true,
            &[(Kind::Endpoint, "groups")],
        ),
        (
            "certificate rotated",
            |s| s.certificate.as_mut().unwrap().key_pem = "key2".into(),
            &[(Kind::Secret, TLS_SECRET)],
        ),
        (
            "certificate gone",
            |s| s.certificate = None,
            &[(Kind::Secret, TLS_SECRET), (Kind::Listener, "ingress-tls")],
        ),
        // Read by discovery (the port: from EndpointSlices), not by any resource.
        ("cluster", |s| s.config.cluster = "other".into(), &[]),
        (
            "kubernetes",
            |s| {
                s.config.kubernetes = Some(KubernetesDiscovery {
                    namespace: "other".into(),
                    endpoint_selector: "a=b".into(),
                    tls_secret: "other".into(),
                    services: BTreeMap::from([("auth".into(), "other".into())]),
                })
            },
            &[],
        ),
        // A header only the hashing policies use.
        (
            "hashHeader, least request",
            |s| s.config.services[1].hash_header = Some("x-unused".into()),
            &[],
        ),
        (
            "endpoint order",
            |s| s.endpoints.get_mut("auth").unwrap().reverse(),
            &[],
        ),
    ];
    let before = snapshot(&base(), None);
    for (what, change, expected) in changes {
        let mut state = base();
        change(&mut state);
        let after = snapshot(&state, None);
        let expected: BTreeSet<(Kind, String)> =
            expected.iter().map(|(k, n)| (*k, n.to_string())).collect();
        assert_eq!(changed(&before, &after, what), expected, "{what}");
        // Built on the previous snapshot, the unchanged resources are the very same ones.
        let incremental = snapshot(&state, Some(&before));
        assert_eq!(incremental, after, "{what}: incremental build");
        for kind in Kind::ALL {
            for r in incremental.of(kind) {
                if !expected.contains(&(kind, r.name.clone())) {
                    assert!(
                        Arc::ptr_eq(r, before.get(kind, &r.name).unwrap()),
                        "{what}: {kind:?} {} rebuilt though unchanged",
                        r.name
                    );
                }
            }
        }
    }
}

/// The address each listener of `state` binds, and whether IPv4 comes with it.
fn bound(state: &State) -> Vec<(String, bool)> {
    let snapshot = snapshot(state, None);
    snapshot
        .of(Kind::Listener)
        .map(|r| match decode(Kind::Listener, r) {
            Decoded::Listener(l) => match l.address.and_then(|a| a.address) {
                Some(address::Address::SocketAddress(s)) => (s.address, s.ipv4_compat),
                other => panic!("listener {} binds {other:?}", r.name),
            },
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn listeners_bind_every_interface_unless_given_an_address() {
    let mut state = base();
    let both = |a: &str, v4: bool| vec![(a.to_string(), v4); 2];
    assert_eq!(bound(&state), both("0.0.0.0", false));
    state.config.listen_address = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(bound(&state), both("127.0.0.1", false));
    state.config.listen_address = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(bound(&state), both("::1", false));
    // Every IPv6 interface means every IPv4 one too.
    state.config.listen_address = Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!(bound(&state), both("::", true));
}

#[test]
fn the_same_inputs_give_the_same_versions() {
    let a = snapshot(&base(), None);
    let b = snapshot(&base(), None);
    for kind in Kind::ALL {
        assert_eq!(a.kind_version(kind), b.kind_version(kind), "{kind:?}");
    }
}

#[test]
fn built_snapshots_are_consistent_and_broken_ones_name_what_is_missing() {
    let mut states = vec![base()];
    let mut s = base();
    s.certificate = None;
    states.push(s);
    let mut s = base();
    s.config.plaintext_port = None;
    s.config.services.clear();
    states.push(s);
    let mut s = base();
    s.endpoints.clear();
    states.push(s);
    for state in &states {
        assert_eq!(snapshot(state, None).inconsistencies(), vec![], "{state:?}");
    }

    let good = snapshot(&base(), None);
    let without = |kind: Kind, name: &str| {
        let mut s = good.clone();
        s.resources.entry(kind).or_default().remove(name);
        s.inconsistencies()
    };
    let missing = |from_kind, from: &str, kind, name: &str| Inconsistent::Missing {
        from_kind,
        from: from.into(),
        kind,
        name: name.into(),
    };
    assert_eq!(
        without(Kind::Endpoint, "auth"),
        [missing(Kind::Cluster, "auth", Kind::Endpoint, "auth")]
    );
    assert_eq!(
        without(Kind::Route, INGRESS_ROUTE),
        [
            missing(
                Kind::Listener,
                "ingress-plaintext",
                Kind::Route,
                INGRESS_ROUTE
            ),
            missing(Kind::Listener, "ingress-tls", Kind::Route, INGRESS_ROUTE),
        ]
    );
    assert_eq!(
        without(Kind::Secret, TLS_SECRET),
        [missing(
            Kind::Listener,
            "ingress-tls",
            Kind::Secret,
            TLS_SECRET
        )]
    );
    assert_eq!(
        without(Kind::Cluster, "groups"),
        [missing(Kind::Route, INGRESS_ROUTE, Kind::Cluster, "groups")]
    );
    let mut garbled = good.clone();
    garbled.insert(
        Kind::Cluster,
        "auth".into(),
        "x".into(),
        envoy_types::util::pack_any(Secret::default()),
    );
    assert!(matches!(
        &garbled.inconsistencies()[..],
        [Inconsistent::Undecodable { kind: Kind::Cluster, name, .. }] if name == "auth"
    ));
}
