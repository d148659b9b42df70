//! Envoy resources as pure functions of the [`State`]: one cluster and one endpoint assignment
//! per chat service, the ingress listener(s), the route table and the certificate.
//!
//! Each resource is encoded once, here, and shared by every stream. Its version is a hash of
//! the *inputs* it was built from (plain data in ordered maps), not of the encoded bytes (map
//! fields of the generated types encode in no fixed order): the same inputs give the same
//! version in every process, so a restarted chat-xds does not make Envoy re-apply anything.

mod cluster;
mod listener;

use std::{collections::BTreeMap, sync::Arc};

use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::State;

pub use cluster::{cluster, load_assignment};
pub use listener::{INGRESS_ROUTE, TLS_SECRET, listeners, route_configuration, secret};

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
        let mut h = Sha256::new();
        for r in self.of(kind) {
            h.update(r.name.as_bytes());
            h.update([0]);
            h.update(r.version.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize()[..8])
    }

    fn insert(&mut self, kind: Kind, name: String, version: String, body: Any) {
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

/// Build every resource of `state`. Resources whose inputs did not change keep their version;
/// `previous` lets unchanged ones be reused without encoding them again.
pub fn snapshot(state: &State, previous: Option<&Snapshot>) -> Snapshot {
    let mut out = Snapshot::default();
    let mut add =
        |kind: Kind, name: String, version: String, build: &dyn Fn() -> Any| match previous
            .and_then(|p| p.get(kind, &name))
            .filter(|r| r.version == version)
        {
            Some(reused) => {
                out.resources
                    .entry(kind)
                    .or_default()
                    .insert(name, reused.clone());
            }
            None => out.insert(kind, name, version, build()),
        };
    let config = &state.config;
    for svc in &config.services {
        add(Kind::Cluster, svc.name.clone(), version_of(svc), &|| {
            envoy_types::util::pack_any(cluster(svc))
        });
        let mut endpoints = state.endpoints.get(&svc.name).cloned().unwrap_or_default();
        endpoints.sort();
        add(
            Kind::Endpoint,
            svc.name.clone(),
            version_of(&(&svc.name, &endpoints)),
            &|| envoy_types::util::pack_any(load_assignment(&svc.name, &endpoints)),
        );
    }
    for l in listeners(config, state.certificate.is_some()) {
        let name = l.name.clone();
        let version = version_of(&(
            &name,
            config.listener_port,
            config.plaintext_port,
            config.grpc_web,
            config.rate_limit,
            state.certificate.is_some(),
        ));
        add(Kind::Listener, name, version, &|| {
            envoy_types::util::pack_any(l.clone())
        });
    }
    add(
        Kind::Route,
        INGRESS_ROUTE.to_string(),
        version_of(&config.services),
        &|| envoy_types::util::pack_any(route_configuration(config)),
    );
    if let Some(cert) = &state.certificate {
        add(
            Kind::Secret,
            TLS_SECRET.to_string(),
            version_of(cert),
            &|| envoy_types::util::pack_any(secret(cert)),
        );
    }
    out
}
