//! chat-xds's configuration: what it needs to know of a ChatCluster, written by the operator
//! into a ConfigMap (or a file, in local mode), so chat-xds needs no access to ChatCluster
//! objects.

use std::{collections::BTreeMap, net::IpAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What chat-xds serves Envoy for one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct XdsConfig {
    /// The ChatCluster's name.
    pub cluster: String,
    /// Port of Envoy's TLS listener.
    pub listener_port: i32,
    /// A second, plain-text listener (laptop modes and tests); none in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_port: Option<i32>,
    /// The address Envoy's client listeners bind: every interface when absent (a pod, behind
    /// its Service); loopback in local mode unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<IpAddr>,
    /// Accept gRPC-Web beside gRPC.
    pub grpc_web: bool,
    /// Requests each Envoy lets one client address make (a local token bucket per address);
    /// none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// One upstream cluster per chat service.
    pub services: Vec<XdsService>,
    /// Internal TLS from Envoy to chatd; none: plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// Where endpoints and the certificate are found in Kubernetes; none in local mode, where
    /// they come from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesDiscovery>,
}

/// The name of Envoy's internal certificate in its file-based SDS resource, which the
/// operator writes and chat-xds's clusters refer to.
pub const ENVOY_INTERNAL_SECRET: &str = "internal";

/// How Envoy reaches chatd over mutual TLS: its certificate and the CA, as files on Envoy's
/// side (its own Secret volume, or the local runner's files), and the namespace the
/// services' identities name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// The namespace of the identities (`local` in local mode).
    pub namespace: String,
    /// Envoy's file-based SDS resource naming its certificate.
    pub sds_file: String,
    /// The cluster's CA certificate.
    pub ca_file: String,
}

/// What chat-xds watches in Kubernetes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesDiscovery {
    /// Namespace to discover endpoints and Secrets in.
    pub namespace: String,
    /// Label selector of the chat services' EndpointSlices.
    pub endpoint_selector: String,
    /// Secret holding the certificate Envoy serves (sent to Envoy over SDS).
    pub tls_secret: String,
    /// Each chat service's name → the Service whose EndpointSlices hold its endpoints.
    pub services: BTreeMap<String, String>,
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// One chat service as Envoy sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct XdsService {
    /// Service name (`auth`, …); also the Envoy cluster name.
    pub name: String,
    /// Protobuf package routed to it: requests to `/<package>.*`.
    pub grpc_package: String,
    /// gRPC service name its backends report health under (active health checks).
    pub health_service: String,
    /// Upstream gRPC port.
    pub port: i32,
    /// Load-balancing policy.
    pub load_balancing: LoadBalancing,
    /// Header hashed by ring hash and maglev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

/// Envoy load-balancing policy for a service (also a field of the ChatCluster spec).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancing {
    /// Pick the less loaded of two random replicas (good for long and short calls alike).
    #[default]
    LeastRequest,
    /// Rotate over the replicas.
    RoundRobin,
    /// Consistent hashing on `hashHeader`: the same key sticks to the same replica.
    RingHash,
    /// Maglev consistent hashing on `hashHeader`: like ring hash, faster, less even on change.
    Maglev,
}
