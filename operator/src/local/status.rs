//! What the local runner reports: one row per process and the cluster's state, printed as a
//! table for people and written to `status.json` for scripts.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    monitor::FiringAlert,
    supervisor::{ProcessState, ProcessStatus},
};
use crate::{api::AutoscalingStatus, topology::status::TopologyStatus};

/// One row of the status table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRow {
    /// Process name.
    pub name: String,
    /// What it is: database, chatd service, xds, envoy.
    pub component: String,
    /// Its port.
    pub port: u16,
    /// Supervision state.
    #[serde(flatten)]
    pub status: ProcessStatus,
    /// Its port answers.
    pub up: bool,
    /// Database role, as the topology loop sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The runner's status, also written to `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalStatus {
    /// Cluster name.
    pub cluster: String,
    /// Every process is up and the primary takes writes.
    pub ready: bool,
    /// gRPC and gRPC-Web in plain text (chatctl's default; the web page is at `/`).
    pub endpoint: String,
    /// The same over TLS (self-signed certificate in the data directory).
    pub tls_endpoint: String,
    /// The database primary's address.
    pub primary: String,
    /// Every process.
    pub processes: Vec<ProcessRow>,
    /// The topology loop's view.
    pub database: TopologyStatus,
    /// Autoscaled services: replicas, the policy's choice and the signal.
    pub autoscaling: BTreeMap<String, AutoscalingStatus>,
    /// Prometheus metrics of the runner (autoscaling, the database, certificates),
    /// `http://…/metrics`.
    pub metrics: String,
    /// The local Prometheus's UI, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
    /// Why it does not answer, when it does not (its alerts are then unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_down: Option<String>,
    /// Alerts firing there, as last heard (every few seconds).
    pub alerts: Vec<FiringAlert>,
}

impl LocalStatus {
    /// The status as a table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "cluster {}: {}  gRPC/web {}  TLS {}  primary {}\n",
            self.cluster,
            if self.ready { "Ready" } else { "NotReady" },
            self.endpoint,
            self.tls_endpoint,
            self.primary,
        );
        out.push_str(&format!(
            "  {:<12} {:<10} {:<8} {:>6} {:>8}  {}\n",
            "NAME", "COMPONENT", "PID", "PORT", "RESTARTS", "STATE"
        ));
        for p in &self.processes {
            let state = match &p.status.state {
                ProcessState::Starting => "starting".to_string(),
                ProcessState::Running { .. } if !p.up => "starting".to_string(),
                ProcessState::Running { .. } => p.role.clone().unwrap_or_else(|| "up".into()),
                ProcessState::Restarting { reason } => format!("restarting ({reason})"),
                ProcessState::Stopped => "stopped".into(),
            };
            let pid = match p.status.state {
                ProcessState::Running { pid } => pid.to_string(),
                _ => "-".into(),
            };
            out.push_str(&format!(
                "  {:<12} {:<10} {:<8} {:>6} {:>8}  {}\n",
                p.name, p.component, pid, p.port, p.status.restarts, state
            ));
        }
        for f in &self.database.findings {
            let server = f
                .server
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            out.push_str(&format!("  database{server}: {}\n", f.reason));
        }
        for (service, a) in &self.autoscaling {
            out.push_str(&format!(
                "  autoscaling {service}: {} replicas, desired {}\n",
                a.current_replicas, a.desired_replicas
            ));
        }
        if let Some(url) = &self.prometheus {
            match &self.prometheus_down {
                Some(why) => out.push_str(&format!("  prometheus {url}: down ({why})\n")),
                None => out.push_str(&format!("  prometheus {url}\n")),
            }
        }
        for a in &self.alerts {
            out.push_str(&format!(
                "  alert {} ({}): {}\n",
                a.name, a.severity, a.summary
            ));
        }
        out
    }
}
