//! The broker (NATS) the chatd replicas exchange delivery hints through: its configuration,
//! the same text in Kubernetes and in local mode, and its Deployment and Service. It holds
//! nothing durable (the database is the source of truth, and each chatd replica polls while
//! the broker is away), so one pod with no volume serves: a restart costs a few seconds of
//! slower delivery, never a message.

use std::collections::BTreeMap;

use chatcluster_types::identity::component;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{CONFIG_HASH_ANNOTATION, ClusterRef, names, pod};
use crate::api::{BrokerSpec, defaults};

/// Component label of the broker's objects.
pub const COMPONENT: &str = component::BROKER;
/// Client port.
pub const PORT: i32 = 4222;
/// Monitoring port (`/healthz`), for the kubelet's probes.
pub const MONITOR_PORT: i32 = 8222;
const CONFIG_KEY: &str = "nats.conf";
const CONFIG_DIR: &str = "/etc/nats";
const TLS_DIR: &str = "/etc/nats/tls";
const BROKER_UID: i64 = 65532;
/// Pod-template annotation carrying the expiry of the broker's certificate: nats-server reads
/// its certificate only at start, so a renewal rolls the pod.
pub const CERTIFICATE_ANNOTATION: &str = "chatcluster.io/broker-certificate";

/// nats-server's configuration: listening on `host:port`, the monitoring port if given, and
/// with `tls_dir` (`tls.crt`, `tls.key`, `ca.crt`) mutual TLS: every client must present a
/// certificate of the cluster's CA. A hint is tens of bytes, so payloads are capped small,
/// and a client that cannot take its hints within 2 s is cut rather than buffered for.
pub fn config(host: &str, port: i32, monitor_port: Option<i32>, tls_dir: Option<&str>) -> String {
    let mut out = format!(
        "listen: \"{host}:{port}\"\nmax_payload: 4096\nmax_pending: 8388608\nwrite_deadline: \"2s\"\n"
    );
    if let Some(m) = monitor_port {
        out.push_str(&format!("http: \"0.0.0.0:{m}\"\n"));
    }
    if let Some(dir) = tls_dir {
        out.push_str(&format!(
            "tls {{\n  cert_file: \"{dir}/tls.crt\"\n  key_file: \"{dir}/tls.key\"\n  ca_file: \"{dir}/ca.crt\"\n  verify: true\n  timeout: 2\n}}\n"
        ));
    }
    out
}

/// The ConfigMap holding [`config`].
pub fn config_map(owner: &ClusterRef, internal_tls: bool) -> ConfigMap {
    let text = config(
        "0.0.0.0",
        PORT,
        Some(MONITOR_PORT),
        internal_tls.then_some(TLS_DIR),
    );
    ConfigMap {
        metadata: owner.meta(names::broker(owner), owner.labels(COMPONENT, "nats")),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), text)])),
        ..ConfigMap::default()
    }
}

/// The broker's one pod. `config_hash` rolls it when the configuration changes, and
/// `certificate` (the expiry of its certificate) when that is renewed.
pub fn deployment(
    owner: &ClusterRef,
    spec: &BrokerSpec,
    config_hash: &str,
    certificate: Option<&str>,
) -> Deployment {
    let selector = owner.selector(COMPONENT);
    let labels = owner.labels(COMPONENT, "nats");
    let internal_tls = certificate.is_some();
    let container = Container {
        name: "nats".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| defaults::NATS_IMAGE.into()),
        ),
        command: Some(vec!["nats-server".into()]),
        args: Some(vec!["-c".into(), format!("{CONFIG_DIR}/{CONFIG_KEY}")]),
        ports: Some(pod::container_ports(&[
            ("client", PORT),
            ("monitor", MONITOR_PORT),
        ])),
        readiness_probe: Some(pod::healthz_probe_on(MONITOR_PORT, 5, 2)),
        liveness_probe: Some(pod::healthz_probe_on(MONITOR_PORT, 10, 3)),
        resources: Some(pod::resources(
            spec.resources.as_ref(),
            "50m",
            "32Mi",
            "256Mi",
        )),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(pod::present([
            Some(pod::read_only_mount("config", CONFIG_DIR)),
            internal_tls.then(|| pod::internal_tls_mount(TLS_DIR)),
        ])),
        ..Container::default()
    };
    let annotations = [(CONFIG_HASH_ANNOTATION, config_hash)]
        .into_iter()
        .chain(certificate.map(|c| (CERTIFICATE_ANNOTATION, c)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Deployment {
        metadata: owner.meta(names::broker(owner), labels.clone()),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: pod::label_selector(selector),
            // A second broker beside the first would split the replicas between two: the
            // old one goes first (chatd polls meanwhile).
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod::pod_security(BROKER_UID)),
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    volumes: Some(pod::present([
                        Some(pod::config_map_volume("config", names::broker(owner))),
                        internal_tls.then(|| pod::internal_tls_volume(owner, COMPONENT)),
                    ])),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Service chatd reaches the broker at.
pub fn service(owner: &ClusterRef) -> Service {
    let ports = vec![pod::service_port("client", PORT, None)];
    pod::internal_service(owner, names::broker(owner), COMPONENT, "nats", ports)
}

/// Every name the broker is reached by (its certificate's).
pub fn dns_names(owner: &ClusterRef) -> Vec<String> {
    let host = owner.service_host(&names::broker(owner));
    vec![format!("{host}.cluster.local"), host]
}

#[cfg(test)]
mod tests {
    use super::config;

    #[test]
    fn the_configuration_listens_and_with_tls_verifies_every_client() {
        let plain = config("127.0.0.1", 20052, None, None);
        assert!(
            plain.starts_with("listen: \"127.0.0.1:20052\"\n"),
            "{plain}"
        );
        assert!(
            !plain.contains("tls") && !plain.contains("http:"),
            "{plain}"
        );
        let tls = config("0.0.0.0", 4222, Some(8222), Some("/etc/nats/tls"));
        for line in [
            "http: \"0.0.0.0:8222\"",
            "cert_file: \"/etc/nats/tls/tls.crt\"",
            "ca_file: \"/etc/nats/tls/ca.crt\"",
            "verify: true",
        ] {
            assert!(tls.contains(line), "{line} in {tls}");
        }
    }
}
