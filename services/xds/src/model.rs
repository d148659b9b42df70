//! What chat-xds knows of the cluster: the operator's configuration and the discovered
//! endpoints of each service. Resources are pure functions of this.

use std::collections::BTreeMap;

use chatcluster_types::xds::XdsConfig;
use serde::{Deserialize, Serialize};

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP address (or host name).
    pub address: String,
    /// gRPC port.
    pub port: u16,
    /// Passing its readiness probe.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Being shut down: keep serving the connections it has, take no new ones.
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

/// The certificate Envoy serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Certificate {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

/// Everything the resources are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The operator's configuration.
    pub config: XdsConfig,
    /// Endpoints by service name.
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// The serving certificate, once known.
    pub certificate: Option<Certificate>,
}
