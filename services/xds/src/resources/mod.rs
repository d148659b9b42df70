//! Envoy resources as pure functions of the [`State`]: one cluster and one endpoint assignment
//! per chat service, the ingress listener(s), the route table and the certificate.
//!
//! Each resource is encoded once, here, and shared by every stream. Its version is a hash of
//! the *inputs* it was built from (plain data in ordered maps), not of the encoded bytes (map
//! fields of the generated types encode in no fixed order): the same inputs give the same
//! version in every process, so a restarted chat-xds does not make Envoy re-apply anything.

mod cluster;
mod consistency;
mod listener;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use sha2::{Digest, Sha256};

use chatcluster_types::{
    identity::Identity,
    xds::{LoadBalancing, RateLimit, XdsService},
};

use crate::model::{Endpoint, State};

pub use cluster::{cluster, load_assignment};
pub use consistency::Inconsistent;
pub use listener::{
    INGRESS_ROUTE, TLS_SECRET, WEB_PAGE, content_security_policy, listener, listener_name,
    route_configuration, secret,
};

/// The xDS resource types, in the order a make-before-break push sends them: clusters and
/// their endpoints, and the certificate, before the listeners and routes that use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// SDS.
    Secret,
    /// LDS.
    Listener,
    /// RDS.
    Route,
}

impl Kind {
    /// Every kind, in push order.
    pub const ALL: [Kind; 5] = [
        Self::Cluster,
        Self::Endpoint,
        Self::Secret,
        Self::Listener,
        Self::Route,
    ];

    /// The type URL Envoy asks for.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Whether Envoy subscribes to all of this kind (CDS, LDS) rather than by name.
    pub fn wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }
}

/// One encoded resource and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its name.
    pub name: String,
    /// Hash of the inputs it was built from.
    pub version: String,
    /// The encoded message.
    pub body: Any,
}

/// Every resource of one state, by kind and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Resources by kind, then name.
    pub resources: BTreeMap<Kind, BTreeMap<String, Arc<Resource>>>,
}

impl Snapshot {
    /// The resources of `kind`.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// One resource.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(&kind).and_then(|m| m.get(name))
    }

    /// A version for a whole kind (State-of-the-World): the hash of its resources' versions.
    pub fn kind_version(&self, kind: Kind) -> String {
        versions_hash(self.of(kind))
    }

    /// A version for the resources of `kind` among `names` (a State-of-the-World subscription
    /// by name); names the snapshot lacks do not count.
    pub fn subset_version<'a>(
        &self,
        kind: Kind,
        names: impl IntoIterator<Item = &'a String>,
    ) -> String {
        versions_hash(names.into_iter().filter_map(|n| self.get(kind, n)))
    }

    /// Add a resource (or replace the one of that kind and name).
    pub(crate) fn insert(&mut self, kind: Kind, name: String, version: String, body: Any) {
        self.resources.entry(kind).or_default().insert(
            name.clone(),
            Arc::new(Resource {
                name,
                version,
                body,
            }),
        );
    }
}

fn versions_hash<'a>(resources: impl Iterator<Item = &'a Arc<Resource>>) -> String {
    let mut h = Sha256::new();
    for r in resources {
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update(r.version.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Version of a resource: a hash of the inputs (and the code version, so an upgrade that
/// changes how resources are built also changes their versions).
pub fn version_of<T: Serialize>(inputs: &T) -> String {
    let bytes = serde_json::to_vec(inputs).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(&bytes);
    hex(&h.finalize()[..8])
}

/// Everything one service's Envoy cluster is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterInput {
    /// The service (and Envoy cluster) name.
    pub name: String,
    /// gRPC service name its backends report health under.
    pub health_service: String,
    /// Load-balancing policy.
    pub load_balancing: LoadBalancing,
    /// Mutual TLS to the backends; none: plain text.
    pub tls: Option<UpstreamTlsInput>,
}

/// How Envoy verifies one service's backends and presents itself to them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTlsInput {
    /// The service's identity: its URI SAN, which the backend's certificate must carry.
    pub identity_uri: String,
    /// Its DNS name (SNI and name check).
    pub server_name: String,
    /// Envoy's file-based SDS resource naming its certificate.
    pub sds_file: String,
    /// The cluster's CA certificate.
    pub ca_file: String,
}

/// One service's endpoints: everything its load assignment is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointsInput {
    /// The service (and Envoy cluster) name.
    pub service: String,
    /// Its endpoints, sorted, so the order discovery found them in does not matter.
    pub endpoints: Vec<Endpoint>,
}

/// The two ingress listeners.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum ListenerKind {
    /// TLS, with the certificate over SDS.
    Tls,
    /// Plain text (laptop modes and tests).
    Plaintext,
}

/// Everything one ingress listener is built from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ListenerInput {
    /// Which listener.
    pub kind: ListenerKind,
    /// The address it binds.
    pub address: IpAddr,
    /// Its port.
    pub port: i32,
    /// Accept gRPC-Web (and CORS) beside gRPC.
    pub grpc_web: bool,
    /// Envoy's local token bucket, if any.
    pub rate_limit: Option<RateLimit>,
}

/// One service's route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteEntry {
    /// The Envoy cluster it sends to.
    pub cluster: String,
    /// Protobuf package routed: requests to `/<package>.*`.
    pub grpc_package: String,
    /// Header to hash on, for the policies that hash (ring hash, maglev).
    pub hash_header: Option<String>,
}

/// Everything the route table is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteInput {
    /// One route per service.
    pub services: Vec<RouteEntry>,
    /// The web page served at `/` (with gRPC-Web on), hashed too: a new page is a new version.
    pub web_page: Option<&'static str>,
}

fn route_entry(svc: &XdsService) -> RouteEntry {
    let hashes = matches!(
        svc.load_balancing,
        LoadBalancing::RingHash | LoadBalancing::Maglev
    );
    RouteEntry {
        cluster: svc.name.clone(),
        grpc_package: svc.grpc_package.clone(),
        hash_header: svc.hash_header.clone().filter(|_| hashes),
    }
}

/// Collects a snapshot, reusing what `previous` built from the same inputs.
struct Builder<'a> {
    out: Snapshot,
    previous: Option<&'a Snapshot>,
}

impl Builder<'_> {
    /// Add the resource `build` makes of `input`, versioned by `input`. `build` is a plain
    /// function, not a closure: it cannot read anything but `input`, so nothing it depends on
    /// can be left out of the version.
    fn add<I: Serialize, M: prost::Name>(
        &mut self,
        kind: Kind,
        name: &str,
        input: &I,
        build: fn(&I) -> M,
    ) {
        let version = version_of(input);
        let reused = self
            .previous
            .and_then(|p| p.get(kind, name))
            .filter(|r| r.version == version);
        match reused {
            Some(r) => {
                self.out
                    .resources
                    .entry(kind)
                    .or_default()
                    .insert(name.to_string(), r.clone());
            }
            None => self.out.insert(
                kind,
                name.to_string(),
                version,
                envoy_types::util::pack_any(build(input)),
            ),
        }
    }
}

/// The inputs of every resource of `state`: the only place that reads [`State`].
fn inputs(
    state: &State,
) -> (
    Vec<ClusterInput>,
    Vec<EndpointsInput>,
    Vec<ListenerInput>,
    RouteInput,
) {
    let config = &state.config;
    let clusters = config
        .services
        .iter()
        .map(|svc| ClusterInput {
            name: svc.name.clone(),
            health_service: svc.health_service.clone(),
            load_balancing: svc.load_balancing,
            tls: config.upstream_tls.as_ref().map(|tls| {
                let identity = Identity::new(&tls.namespace, &config.cluster, &svc.name);
                UpstreamTlsInput {
                    identity_uri: identity.uri(),
                    server_name: identity.server_name(),
                    sds_file: tls.sds_file.clone(),
                    ca_file: tls.ca_file.clone(),
                }
            }),
        })
        .collect();
    let endpoints = config
        .services
        .iter()
        .map(|svc| {
            let mut endpoints = state.endpoints.get(&svc.name).cloned().unwrap_or_default();
            endpoints.sort();
            EndpointsInput {
                service: svc.name.clone(),
                endpoints,
            }
        })
        .collect();
    let listener = |kind, port| ListenerInput {
        kind,
        address: config
            .listen_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        port,
        grpc_web: config.grpc_web,
        rate_limit: config.rate_limit,
    };
    let listeners = state
        .certificate
        .is_some()
        .then(|| listener(ListenerKind::Tls, config.listener_port))
        .into_iter()
        .chain(
            config
                .plaintext_port
                .map(|port| listener(ListenerKind::Plaintext, port)),
        )
        .collect();
    let route = RouteInput {
        services: config.services.iter().map(route_entry).collect(),
        web_page: config.grpc_web.then_some(WEB_PAGE),
    };
    (clusters, endpoints, listeners, route)
}

/// Build every resource of `state`. Resources whose inputs did not change keep their version;
/// `previous` lets unchanged ones be reused without encoding them again.
pub fn snapshot(state: &State, previous: Option<&Snapshot>) -> Snapshot {
    let mut b = Builder {
        out: Snapshot::default(),
        previous,
    };
    let (clusters, endpoints, listeners, route) = inputs(state);
    for c in &clusters {
        b.add(Kind::Cluster, &c.name, c, cluster);
    }
    for e in &endpoints {
        b.add(Kind::Endpoint, &e.service, e, load_assignment);
    }
    for l in &listeners {
        b.add(Kind::Listener, listener_name(l.kind), l, listener);
    }
    b.add(Kind::Route, INGRESS_ROUTE, &route, route_configuration);
    if let Some(cert) = &state.certificate {
        b.add(Kind::Secret, TLS_SECRET, cert, secret);
    }
    b.out
}

#[cfg(test)]
mod tests;
