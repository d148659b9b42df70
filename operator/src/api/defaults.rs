//! Default values of the `ChatCluster` spec, in one place so the CRD schema, the builders and
//! the docs agree.

/// The release these defaults belong to; workload images are tagged with it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// chatd image used when a service names none.
pub fn chatd_image() -> String {
    format!("chatcluster/chatd:{VERSION}")
}

/// chat-xds image used when `spec.xds.image` is absent.
pub fn xds_image() -> String {
    format!("chatcluster/chat-xds:{VERSION}")
}

/// The operator's own image: MariaDB pods and re-seed Jobs copy the binary from it (the
/// physical re-seed's programs run in the database's image, where mariadb-backup is).
pub fn operator_image() -> String {
    format!("chatcluster/chat-operator:{VERSION}")
}

/// Upstream Envoy image, pinned.
pub const ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";
/// Upstream MySQL image, pinned (8.4 LTS).
pub const MYSQL_IMAGE: &str = "mysql:8.4.6";
/// Upstream MariaDB image, pinned (10.11 LTS).
pub const MARIADB_IMAGE: &str = "mariadb:10.11.14";
/// Upstream NATS image, pinned: the broker.
pub const NATS_IMAGE: &str = "nats:2.10.24-alpine";

/// Replicas per chat service when neither `replicas` nor `autoscaling` is set: two, so one can die.
pub const SERVICE_REPLICAS: i32 = 2;
/// Header hashed by `ringHash`/`maglev` load balancing when the spec names none.
pub const HASH_HEADER: &str = "x-chat-affinity";
/// Request rate per replica the autoscaler aims for when the spec gives no target.
pub const TARGET_REQUESTS_PER_SECOND: i32 = 400;

/// Requests per second each Envoy lets one client address make, sustained.
pub const CLIENT_REQUESTS_PER_SECOND: i32 = 100;
/// Requests one client address may make at once.
pub const CLIENT_BURST: i32 = 200;

/// The pods (in any namespace) allowed to scrape metrics ports when the spec names none:
/// Prometheus as its Helm chart and operator label it.
pub const METRICS_SCRAPER_LABEL: &str = "app.kubernetes.io/name=prometheus";

pub(crate) fn metrics_scraper_label() -> String {
    METRICS_SCRAPER_LABEL.into()
}
pub(crate) fn client_requests_per_second() -> i32 {
    CLIENT_REQUESTS_PER_SECOND
}
pub(crate) fn client_burst() -> i32 {
    CLIENT_BURST
}
pub(crate) fn two() -> i32 {
    2
}
pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn storage_size() -> String {
    "10Gi".into()
}
pub(crate) fn failover_timeout_seconds() -> i32 {
    10
}
pub(crate) fn ingress_port() -> i32 {
    443
}
pub(crate) fn scale_down_stabilization_seconds() -> i32 {
    300
}

/// A component certificate's lifetime: 30 days, renewed after 20.
pub fn certificate_lifetime_minutes() -> i32 {
    30 * 24 * 60
}
