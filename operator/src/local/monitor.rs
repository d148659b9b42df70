//! Local mode's Prometheus (Debian's `prometheus`, when installed and `spec.monitoring` is on).
//! It scrapes every process the runner starts, with the labels a PodMonitor gives them in
//! Kubernetes (namespace `local`, the cluster, the component, the process as instance), loads
//! the same alert rules, and the runner shows what fires in its status table. What it writes is
//! a pure function of the plan; only [`firing`] and [`watch_alerts`] do I/O.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::plan::{LOCAL_NAMESPACE, Launch, Plan};
use crate::{
    api::ServiceKind,
    build::{self, monitoring},
};

/// How often it scrapes and evaluates the rules: a local cluster is small, and an alert
/// should show within seconds of its `for`.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How long an answer from Prometheus's API may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Prometheus may take to answer at all before it is said to be down (it replays its
/// write-ahead log first).
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Its files, under the data directory's `prometheus/`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorFiles {
    /// `prometheus.yml`.
    pub config: PathBuf,
    /// The cluster's alerts.
    pub cluster_rules: PathBuf,
    /// The operator's alerts.
    pub operator_rules: PathBuf,
    /// The scrape targets, rewritten as chatd replicas come and go.
    pub targets: PathBuf,
    /// Its time series.
    pub data: PathBuf,
}

impl MonitorFiles {
    fn new(root: &std::path::Path) -> Self {
        let dir = root.join("prometheus");
        Self {
            config: dir.join("prometheus.yml"),
            cluster_rules: dir.join("cluster-rules.yml"),
            operator_rules: dir.join("operator-rules.yml"),
            targets: dir.join("targets.json"),
            data: dir.join("data"),
        }
    }
}

/// The Prometheus of a plan: how to start it and what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    /// How to start it; its port serves the UI and API.
    pub launch: Launch,
    /// Its files.
    pub files: MonitorFiles,
}

/// The monitor of the cluster whose data lives in `root`, listening on `port`; `None` when
/// `spec.monitoring` is off or there is no `prometheus` to run.
pub fn monitor(
    enabled: bool,
    program: Option<&PathBuf>,
    root: &std::path::Path,
    port: u16,
) -> Option<Monitor> {
    let program = program.filter(|_| enabled)?;
    let files = MonitorFiles::new(root);
    let path = |p: &PathBuf| p.display().to_string();
    let launch = Launch {
        name: "prometheus".into(),
        program: program.clone(),
        args: vec![
            format!("--config.file={}", path(&files.config)),
            format!("--storage.tsdb.path={}", path(&files.data)),
            // A laptop's disk: two days, at most 1 GB.
            "--storage.tsdb.retention.time=2d".into(),
            "--storage.tsdb.retention.size=1GB".into(),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ],
        env: BTreeMap::new(),
        port,
    };
    Some(Monitor { launch, files })
}

impl Plan {
    /// `prometheus.yml`: every process by file discovery ([`Plan::scrape_targets`]), the
    /// runner's own metrics with their labels kept (they carry each cluster's namespace and
    /// name), and both rule files.
    pub fn prometheus_config(&self, m: &Monitor) -> Value {
        let interval = format!("{}s", INTERVAL.as_secs());
        json!({
            "global": { "scrape_interval": interval, "evaluation_interval": interval },
            "rule_files": [m.files.cluster_rules, m.files.operator_rules],
            "scrape_configs": [
                {
                    "job_name": "chatcluster",
                    "file_sd_configs": [{ "files": [m.files.targets], "refresh_interval": interval }],
                },
                {
                    "job_name": "chat-operator",
                    "honor_labels": true,
                    "static_configs": [{
                        "targets": [format!("127.0.0.1:{}", self.metrics_port)],
                        "labels": { "namespace": LOCAL_NAMESPACE, "pod": "chat-operator-local" },
                    }],
                },
            ],
        })
    }

    /// The cluster's alerts, narrowed to it as the operator narrows a PrometheusRule.
    pub fn prometheus_rules(&self) -> String {
        monitoring::cluster_rules(LOCAL_NAMESPACE, &self.name)
    }

    /// File discovery's targets: the `serving` chatd replicas, chat-xds and Envoy, labelled as
    /// the PodMonitor labels their pods.
    pub fn scrape_targets(&self, serving: &BTreeMap<ServiceKind, Vec<usize>>) -> Value {
        let target = |port: u16, component: &str, instance: String, path: &str| {
            json!({
                "targets": [format!("127.0.0.1:{port}")],
                "labels": {
                    "namespace": LOCAL_NAMESPACE,
                    "cluster": self.name,
                    "component": component,
                    "instance": instance,
                    "__metrics_path__": path,
                },
            })
        };
        let mut out = Vec::new();
        for s in &self.services {
            for &i in serving.get(&s.kind).into_iter().flatten() {
                out.push(target(
                    s.port(i) + 1,
                    s.kind.as_str(),
                    format!("{}-{i}", s.kind),
                    "/metrics",
                ));
            }
        }
        for (i, &port) in self.xds_http.iter().enumerate() {
            out.push(target(
                port,
                build::XDS_COMPONENT,
                format!("xds-{i}"),
                "/metrics",
            ));
        }
        for (i, envoy) in self.envoys.iter().enumerate() {
            out.push(target(
                envoy.port,
                build::INGRESS_COMPONENT,
                format!("envoy-{i}"),
                "/stats/prometheus",
            ));
        }
        Value::Array(out)
    }
}

/// An alert that fires, as the status table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiringAlert {
    /// `alertname`.
    pub name: String,
    /// `severity`.
    pub severity: String,
    /// The `summary` annotation.
    pub summary: String,
}

/// What the runner last heard from its Prometheus.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Alerts {
    /// Nothing yet: it is starting.
    #[default]
    Unknown,
    /// These fire (pending ones are not yet alerts).
    Firing(Vec<FiringAlert>),
    /// It does not answer, or not with alerts.
    Down(String),
}

/// Ask the Prometheus on `port` what fires every [`INTERVAL`] (it evaluates no more often), in
/// a task of its own: a slow or frozen Prometheus never holds up the runner's tick. The task
/// ends when the receiver is dropped.
pub fn watch_alerts(port: u16) -> tokio::sync::watch::Receiver<Alerts> {
    let (tx, rx) = tokio::sync::watch::channel(Alerts::Unknown);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut every = tokio::time::interval(INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = tx.closed() => return,
            }
            let now = match firing(port).await {
                Ok(alerts) => Alerts::Firing(alerts),
                Err(e) => Alerts::Down(e.to_string()),
            };
            tx.send_if_modified(|last| {
                // Down while it starts is no news; still down after the grace, it is.
                let starting = *last == Alerts::Unknown
                    && matches!(now, Alerts::Down(_))
                    && started.elapsed() < STARTUP_GRACE;
                let changed = *last != now && !starting;
                if changed {
                    *last = now;
                }
                changed
            });
        }
    });
    rx
}

/// The alerts firing in the Prometheus on `port` (pending ones are not yet alerts).
async fn firing(port: u16) -> Result<Vec<FiringAlert>, crate::http::FetchError> {
    let address = format!("127.0.0.1:{port}");
    let body = crate::http::fetch(&address, "/api/v1/alerts", QUERY_TIMEOUT).await?;
    parse_alerts(&body).map_err(crate::http::FetchError::Refused)
}

fn parse_alerts(body: &str) -> Result<Vec<FiringAlert>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let alerts = v["data"]["alerts"]
        .as_array()
        .ok_or_else(|| format!("no data.alerts in {body}"))?;
    let text =
        |a: &Value, k: &str, field: &str| a[k][field].as_str().unwrap_or_default().to_string();
    let mut out: Vec<FiringAlert> = alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| FiringAlert {
            name: text(a, "labels", "alertname"),
            severity: text(a, "labels", "severity"),
            summary: text(a, "annotations", "summary"),
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.summary).cmp(&(&b.name, &b.summary)));
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_firing_alerts_are_shown_in_order() {
        let body = r#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"ChatClusterReplicaBroken","severity":"warning"},"annotations":{"summary":"b"},"state":"pending"},
            {"labels":{"alertname":"ChatClusterPrimaryUnavailable","severity":"critical"},"annotations":{"summary":"p"},"state":"firing"},
            {"labels":{"alertname":"ChatClusterFailoverHappened","severity":"warning"},"annotations":{"summary":"f"},"state":"firing"}]}}"#;
        let names: Vec<String> = parse_alerts(body)
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(
            names,
            [
                "ChatClusterFailoverHappened",
                "ChatClusterPrimaryUnavailable"
            ]
        );
        assert!(parse_alerts(r#"{"status":"error"}"#).is_err());
    }

    #[test]
    fn off_or_without_prometheus_there_is_no_monitor() {
        let bin = PathBuf::from("/usr/bin/prometheus");
        let root = std::path::Path::new("/data");
        assert!(monitor(false, Some(&bin), root, 9).is_none());
        assert!(monitor(true, None, root, 9).is_none());
        let m = monitor(true, Some(&bin), root, 20051).unwrap();
        assert!(
            m.launch
                .args
                .contains(&"--web.listen-address=127.0.0.1:20051".to_string())
        );
        assert_eq!(
            m.files.targets,
            PathBuf::from("/data/prometheus/targets.json")
        );
    }
}
