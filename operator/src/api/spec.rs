//! The desired state a user writes: `ChatCluster.spec`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults;
use super::status::ChatClusterStatus;

/// A horizontally scalable chat backend: chat services behind Envoy on a replicated database.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "chatcluster.io",
    version = "v1alpha1",
    kind = "ChatCluster",
    namespaced,
    status = "ChatClusterStatus",
    shortname = "chat",
    category = "chatcluster",
    doc = "A chat backend (accounts, groups, direct messages, servers) behind Envoy on MySQL with read replicas.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Services","type":"string","jsonPath":".status.servicesReady"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".status.database.primary"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.database.replicasReady"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// The chat services, one Deployment each.
    #[serde(default)]
    pub services: ServicesSpec,
    /// The MySQL/MariaDB primary and its read replicas.
    #[serde(default)]
    pub database: DatabaseSpec,
    /// The Envoy tier in front of the services.
    #[serde(default)]
    pub ingress: IngressSpec,
    /// The xDS control plane that configures Envoy.
    #[serde(default)]
    pub xds: XdsSpec,
    /// The broker the chat replicas exchange delivery hints through.
    #[serde(default)]
    pub broker: super::BrokerSpec,
    /// The cluster's firewall.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Mutual TLS between the cluster's components, from the cluster's own CA.
    #[serde(default)]
    pub internal_tls: InternalTlsSpec,
    /// What the Prometheus Operator scrapes and alerts on.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

/// A PodMonitor for every metrics port and a PrometheusRule with the cluster's alerts (each
/// with a runbook in `docs/runbooks.md`), made where the Prometheus Operator's CRDs exist;
/// where they do not, the `Monitoring` condition says so. Local mode runs a Prometheus with
/// the same rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.labels.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && self.labels[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'))")
    .message("monitoring.labels must be Kubernetes labels: a key of an optional DNS prefix and a name of at most 63 characters, a value of at most 63")
    .field_path(".labels"))]
pub struct MonitoringSpec {
    /// Make them (default true).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Labels the PodMonitor and PrometheusRule carry besides the operator's, for a
    /// Prometheus whose monitor and rule selectors ask for some (kube-prometheus-stack's ask
    /// for `release: <its release>`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: BTreeMap::new(),
        }
    }
}

/// A label `key=value` as Kubernetes spells them: an optional DNS-subdomain prefix and `/`,
/// a name of at most 63 characters, `=`, a value of at most 63 (possibly empty).
pub const LABEL_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?=([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// NetworkPolicies that admit only the traffic each component needs: clients to Envoy; Envoy
/// to chatd and chat-xds; chatd to the broker and the database; the database's own
/// replication and re-seeding; the operator to the database and chat-xds; scrapers to the
/// metrics ports. Everything else arriving at the cluster's pods is dropped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create them (default true). Off: any pod in the Kubernetes cluster reaches every
    /// component, the database included; turn it off only where another firewall stands.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// The label (`key=value`) of the pods that may scrape the metrics ports (default
    /// `app.kubernetes.io/name=prometheus`).
    #[serde(default = "defaults::metrics_scraper_label")]
    #[schemars(length(max = 317), regex(pattern = LABEL_PATTERN))]
    pub metrics_scraper_label: String,
    /// The namespace those pods run in; absent: any namespace (where anyone who may create a
    /// pod could wear the label and read the metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub metrics_scraper_namespace: Option<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_scraper_label: defaults::METRICS_SCRAPER_LABEL.into(),
            metrics_scraper_namespace: None,
        }
    }
}

/// The internal plane's certificates: the operator (or the local runner) keeps a CA per
/// cluster and issues each component a certificate naming its identity, renewed at two thirds
/// of its lifetime. chat-xds then serves configuration, and with it the listener's private
/// key, only to the cluster's Envoys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InternalTlsSpec {
    /// Use it (default true). Off: chat-xds serves anyone who reaches its port.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// How long a component's certificate is valid, in minutes (default 43200, 30 days).
    #[serde(default = "defaults::certificate_lifetime_minutes")]
    /// At least an hour: a renewal due at two thirds leaves a third for a failed one to be
    /// retried (and, in Kubernetes, for the kubelet to update the Secret volume).
    #[schemars(range(min = 60, max = 525600))]
    pub certificate_lifetime_minutes: i32,
}

impl Default for InternalTlsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            certificate_lifetime_minutes: defaults::certificate_lifetime_minutes(),
        }
    }
}

impl InternalTlsSpec {
    /// The certificate lifetime, when internal TLS is on.
    pub fn lifetime(&self) -> Option<std::time::Duration> {
        let minutes = u64::try_from(self.certificate_lifetime_minutes.max(60)).unwrap_or(60);
        self.enabled
            .then(|| std::time::Duration::from_secs(60 * minutes))
    }
}

impl ChatClusterSpec {
    /// Every image the spec sets instead of the default, with its field: each runs with what
    /// its component is given (chatd with the database password and, for auth, the token
    /// signing key), so an operator may refuse them.
    pub fn image_overrides(&self) -> Vec<(String, &str)> {
        let services = self.services.iter().filter_map(|(kind, s)| {
            Some((format!("spec.services.{kind}.image"), s.image.as_deref()?))
        });
        let others = [
            ("spec.database.image", self.database.image.as_deref()),
            ("spec.ingress.image", self.ingress.image.as_deref()),
            ("spec.xds.image", self.xds.image.as_deref()),
            ("spec.broker.image", self.broker.image.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, image)| Some((field.to_string(), image?)));
        services.chain(others).collect()
    }
}

impl NetworkPolicySpec {
    /// The scraper label as a key and a value (the pattern guarantees the `=`).
    pub fn scraper(&self) -> (&str, &str) {
        self.metrics_scraper_label
            .split_once('=')
            .unwrap_or((self.metrics_scraper_label.as_str(), ""))
    }
}

/// The chat services. Each runs as its own Deployment of the chatd binary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// Accounts, login and token issuance.
    #[serde(default)]
    pub auth: ChatServiceSpec,
    /// Group chats.
    #[serde(default)]
    pub groups: ChatServiceSpec,
    /// Direct messages.
    #[serde(default)]
    pub dms: ChatServiceSpec,
    /// Discord-style servers with channels.
    #[serde(default)]
    pub servers: ChatServiceSpec,
    /// Client sessions: one stream per client carrying all its conversations. It holds
    /// connections, so scale it with them.
    #[serde(default)]
    pub gateway: ChatServiceSpec,
}

/// One chat service: how many replicas, how Envoy balances across them, what they run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
    .message("replicas and autoscaling are mutually exclusive: with autoscaling, the autoscaler sets the replica count")
    .field_path(".replicas"))]
pub struct ChatServiceSpec {
    /// Fixed number of replicas (default 2). Leave unset when `autoscaling` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Scale with load between `minReplicas` and `maxReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// How Envoy spreads requests over the replicas.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Request header hashed by `ringHash` and `maglev` (default `x-chat-affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9-]+$"))]
    pub hash_header: Option<String>,
    /// CPU and memory of each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// chatd image (default `chatcluster/chatd:<operator version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Autoscaling bounds and targets of one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message(Message::Expression("'autoscaling.maxReplicas must be greater than or equal to autoscaling.minReplicas (' + string(self.minReplicas) + '), got ' + string(self.maxReplicas)".into()))
    .field_path(".maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest replicas (default 2).
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Requests per second one replica should carry (default 400 when no target is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_requests_per_second: Option<i32>,
    /// Average CPU utilisation (percent of the request) to aim for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// How long load must stay low before replicas are removed (default 300 s).
    #[serde(default = "defaults::scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

pub use chatcluster_types::xds::LoadBalancing;

/// Database engine (also the `--engine` of `chat-operator reload-tls`, spelled the same).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    /// MySQL 8.4.
    #[default]
    Mysql,
    /// MariaDB 10.11 or later.
    Mariadb,
}

/// The database: one primary and `replicas` read replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// `mysql` (8.4) or `mariadb`. Fixed once the cluster exists: each engine's files and
    /// replication are its own.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("database.engine cannot change once the cluster exists: the servers' data is the engine's own (create a new cluster and move the data)"))]
    pub engine: DatabaseEngine,
    /// Server image (default: the engine's pinned upstream image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Read replicas beside the primary (default 2).
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 0, max = 15))]
    pub replicas: i32,
    /// Volume of each server.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Semi-synchronous replication: a write is acknowledged only once a replica has it.
    /// Has no effect without replicas.
    #[serde(default = "defaults::yes")]
    pub semi_sync: bool,
    /// Automatic promotion of a replica when the primary is gone.
    #[serde(default)]
    pub failover: FailoverSpec,
    /// CPU and memory of each server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            engine: DatabaseEngine::default(),
            image: None,
            replicas: defaults::two(),
            storage: StorageSpec::default(),
            semi_sync: defaults::yes(),
            failover: FailoverSpec::default(),
            resources: None,
        }
    }
}

/// Persistent volume of each database server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each server's volume (default 10Gi).
    #[serde(default = "defaults::storage_size")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("database.storage.size must be a positive Kubernetes quantity such as 10Gi"))]
    pub size: String,
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: defaults::storage_size(),
            storage_class_name: None,
        }
    }
}

/// Automatic failover of the primary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Promote a replica when the primary is unreachable (default true). Needs replicas.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// How long the primary must be unreachable before a replica is promoted (default 10 s).
    #[serde(default = "defaults::failover_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// Promote even when the replica may lack writes acknowledged while semi-sync was
    /// degraded (no replica caught up) or off (default false). Left false, such a failover is
    /// held, and the status and an event say why: bring the primary back, or set this to
    /// trade those writes for availability. Writes a replica acknowledged are kept either way.
    #[serde(default)]
    pub allow_data_loss: bool,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            enabled: defaults::yes(),
            timeout_seconds: defaults::failover_timeout_seconds(),
            allow_data_loss: false,
        }
    }
}

/// The Envoy tier: TLS termination, gRPC and gRPC-Web, routing to the services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Envoy replicas (default 2).
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// The Service clients connect to.
    #[serde(default)]
    pub service: IngressServiceSpec,
    /// Certificate Envoy serves. Absent: the operator issues a self-signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Accept gRPC-Web (browsers) beside plain gRPC (default true).
    #[serde(default = "defaults::yes")]
    pub grpc_web: bool,
    /// How many requests each Envoy takes from one client address (default on: 100 per
    /// second, 200 at once); beyond it, RESOURCE_EXHAUSTED.
    #[serde(default)]
    pub rate_limit: ClientRateLimitSpec,
    /// Envoy image (default: the pinned upstream image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of each Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for IngressSpec {
    fn default() -> Self {
        Self {
            replicas: defaults::two(),
            service: IngressServiceSpec::default(),
            tls: None,
            grpc_web: defaults::yes(),
            rate_limit: ClientRateLimitSpec::default(),
            image: None,
            resources: None,
        }
    }
}

/// A token bucket per client address at each Envoy, before anything reaches a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientRateLimitSpec {
    /// Apply it (default true).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Sustained requests per second per client address (default 100).
    #[serde(default = "defaults::client_requests_per_second")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,
    /// Requests per client address at once (default 200).
    #[serde(default = "defaults::client_burst")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: i32,
}

impl Default for ClientRateLimitSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_second: defaults::CLIENT_REQUESTS_PER_SECOND,
            burst: defaults::CLIENT_BURST,
        }
    }
}

/// Kubernetes Service type of the ingress.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer (default).
    #[default]
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The Service in front of Envoy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressServiceSpec {
    /// `ClusterIP`, `NodePort` or `LoadBalancer` (default).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port clients connect to (default 443).
    #[serde(default = "defaults::ingress_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for IngressServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: defaults::ingress_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A certificate for the ingress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in the cluster's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
}

/// The xDS control plane.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdsSpec {
    /// chat-xds replicas, leader-elected (default 2).
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// chat-xds image (default `chatcluster/chat-xds:<operator version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of each chat-xds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for XdsSpec {
    fn default() -> Self {
        Self {
            replicas: defaults::two(),
            image: None,
            resources: None,
        }
    }
}

/// One of the chat services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    /// Accounts and tokens.
    Auth,
    /// Group chats.
    Groups,
    /// Direct messages.
    Dms,
    /// Discord-style servers.
    Servers,
    /// Client sessions.
    Gateway,
}

impl ServiceKind {
    /// All services, in the order they are built and reported.
    pub const ALL: [ServiceKind; 5] = [
        Self::Auth,
        Self::Groups,
        Self::Dms,
        Self::Servers,
        Self::Gateway,
    ];

    /// The name used in the spec, in object names and in chatd's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Groups => "groups",
            Self::Dms => "dms",
            Self::Servers => "servers",
            Self::Gateway => "gateway",
        }
    }

    /// The protobuf package of the service's API; Envoy routes `/<package>.*` to it.
    pub fn grpc_package(self) -> &'static str {
        match self {
            Self::Auth => "chatcluster.auth.v1",
            Self::Groups => "chatcluster.groups.v1",
            Self::Dms => "chatcluster.dms.v1",
            Self::Servers => "chatcluster.servers.v1",
            Self::Gateway => "chatcluster.gateway.v1",
        }
    }

    /// The fully qualified gRPC service name, also the name chatd reports health under.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Self::Auth => "chatcluster.auth.v1.Auth",
            Self::Groups => "chatcluster.groups.v1.Groups",
            Self::Dms => "chatcluster.dms.v1.Dms",
            Self::Servers => "chatcluster.servers.v1.Servers",
            Self::Gateway => "chatcluster.gateway.v1.Gateway",
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServicesSpec {
    /// The spec of one service.
    pub fn get(&self, kind: ServiceKind) -> &ChatServiceSpec {
        match kind {
            ServiceKind::Auth => &self.auth,
            ServiceKind::Groups => &self.groups,
            ServiceKind::Dms => &self.dms,
            ServiceKind::Servers => &self.servers,
            ServiceKind::Gateway => &self.gateway,
        }
    }

    /// Every service with its spec.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceKind, &ChatServiceSpec)> {
        ServiceKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}
