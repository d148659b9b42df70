//! What the Prometheus Operator needs to watch a cluster: one PodMonitor for every metrics
//! port (chatd and chat-xds on `metrics`, Envoy's `/stats/prometheus` on `ready`), each series
//! labelled with the cluster and component, and one PrometheusRule with the cluster's alerts.
//! The alerts are written once, in the chart (`charts/chat-operator/monitoring/`), and
//! rendered here for one cluster; local mode renders the same file for its Prometheus.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::{BuildError, ClusterRef, labels, names};
use crate::api::MonitoringSpec;

/// One cluster's alerts, with `CLUSTER_SELECTOR` where its matchers go.
const CLUSTER_RULES: &str =
    include_str!("../../../charts/chat-operator/monitoring/cluster-rules.yaml");
/// The operator's own alerts (the chart's PrometheusRule; the local Prometheus's too).
pub const OPERATOR_RULES: &str =
    include_str!("../../../charts/chat-operator/monitoring/operator-rules.yaml");
/// Where the cluster's matchers go in [`CLUSTER_RULES`].
const SELECTOR_PLACEHOLDER: &str = "CLUSTER_SELECTOR";
/// The component a monitor stands for in its labels.
const COMPONENT: &str = "monitoring";

/// The Prometheus Operator's kinds the operator makes.
pub fn kinds() -> [ApiResource; 2] {
    let kind = |k: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", k),
            plural,
        )
    };
    [
        kind("PodMonitor", "podmonitors"),
        kind("PrometheusRule", "prometheusrules"),
    ]
}

/// The alerts of the cluster `name` in `namespace`, as a Prometheus rule file: every
/// selector narrowed to its series, so one Prometheus can watch many clusters.
pub fn cluster_rules(namespace: &str, name: &str) -> String {
    CLUSTER_RULES.replace(
        SELECTOR_PLACEHOLDER,
        &format!("namespace=\"{namespace}\",cluster=\"{name}\""),
    )
}

fn meta(owner: &ClusterRef, spec: &MonitoringSpec) -> Value {
    let mut labels = owner.labels(COMPONENT, "chatcluster");
    // The operator's own labels win: pruning and the watch select by them.
    for (k, v) in &spec.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let mut meta = serde_json::to_value(owner.meta(names::monitoring(owner), labels))
        .unwrap_or_else(|_| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    meta
}

/// The PodMonitor and PrometheusRule of the cluster, in apply order.
pub fn objects(
    owner: &ClusterRef,
    spec: &MonitoringSpec,
) -> Result<Vec<DynamicObject>, BuildError> {
    // Prometheus's own labels for a target are its address; these say what it is.
    let relabelings = json!([
        {
            "sourceLabels": [format!("__meta_kubernetes_pod_label_{}", sanitize(labels::CLUSTER))],
            "targetLabel": "cluster",
        },
        {
            "sourceLabels": [format!("__meta_kubernetes_pod_label_{}", sanitize(labels::COMPONENT))],
            "targetLabel": "component",
        },
        { "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance" },
    ]);
    let endpoint = |port: &str, path: &str| json!({ "port": port, "path": path, "interval": "30s", "relabelings": relabelings });
    let pod_monitor = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta(owner, spec),
        "spec": {
            "selector": { "matchLabels": { labels::CLUSTER: owner.name } },
            "podMetricsEndpoints": [
                endpoint("metrics", "/metrics"),
                endpoint("ready", "/stats/prometheus"),
            ],
        },
    });
    let rules: Value = serde_yaml::from_str(&cluster_rules(&owner.namespace, &owner.name))
        .map_err(|e| BuildError::Encode {
            what: "cluster alerts",
            message: e.to_string(),
        })?;
    let rule = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta(owner, spec),
        "spec": { "groups": rules["groups"] },
    });
    [("PodMonitor", pod_monitor), ("PrometheusRule", rule)]
        .into_iter()
        .map(|(kind, v)| {
            serde_json::from_value(v).map_err(|source| BuildError::Serialize {
                kind: kind.into(),
                name: names::monitoring(owner),
                source,
            })
        })
        .collect()
}

/// A label name as Kubernetes service discovery spells it in `__meta_…` labels.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::build::tests::cluster_ref;

    #[test]
    fn the_pod_monitor_scrapes_every_metrics_port_of_the_cluster_with_its_labels() {
        let owner = cluster_ref("chat", "shop");
        let spec = MonitoringSpec {
            enabled: true,
            labels: BTreeMap::from([
                ("release".to_string(), "kube-prometheus-stack".to_string()),
                (labels::CLUSTER.to_string(), "someone-else".to_string()),
            ]),
        };
        let objects = objects(&owner, &spec).unwrap();
        let monitor = serde_json::to_value(&objects[0]).unwrap();
        assert_eq!(monitor["kind"], "PodMonitor");
        assert_eq!(monitor["metadata"]["name"], "chat-chatcluster");
        assert_eq!(
            monitor["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        // A user's label cannot take the operator's.
        assert_eq!(monitor["metadata"]["labels"][labels::CLUSTER], "chat");
        assert_eq!(
            monitor["metadata"]["ownerReferences"][0]["kind"],
            "ChatCluster"
        );
        assert_eq!(
            monitor["spec"]["selector"]["matchLabels"][labels::CLUSTER],
            "chat"
        );
        let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
        let ports: Vec<(&str, &str)> = endpoints
            .iter()
            .map(|e| (e["port"].as_str().unwrap(), e["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [("metrics", "/metrics"), ("ready", "/stats/prometheus")]
        );
        let targets: Vec<&str> = endpoints[0]["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["targetLabel"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["cluster", "component", "instance"]);
        assert_eq!(
            endpoints[0]["relabelings"][0]["sourceLabels"][0],
            "__meta_kubernetes_pod_label_chatcluster_io_cluster"
        );
    }

    #[test]
    fn the_rule_holds_every_alert_narrowed_to_this_cluster() {
        let owner = cluster_ref("chat", "shop");
        let objects = objects(&owner, &MonitoringSpec::default()).unwrap();
        let rule = serde_json::to_value(&objects[1]).unwrap();
        assert_eq!(rule["kind"], "PrometheusRule");
        let alerts: Vec<&Value> = rule["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert!(alerts.len() >= 15, "{}", alerts.len());
        for alert in alerts {
            let expr = alert["expr"].as_str().unwrap();
            assert!(!expr.contains(SELECTOR_PLACEHOLDER), "{expr}");
            assert!(
                expr.contains(r#"namespace="shop",cluster="chat""#),
                "{}: {expr}",
                alert["alert"]
            );
            assert!(
                alert["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("docs/runbooks.md#")),
                "{alert}"
            );
        }
    }
}
