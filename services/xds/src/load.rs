//! The load signal for autoscaling: every Envoy reports, once a second over the Load Reporting
//! Service, the requests each cluster (= chat service) issued and has in progress. chat-xds
//! keeps each Envoy's latest report and serves the sum per service: requests per second and
//! in-flight requests.

use chatcluster_common::sync::lock;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::service::load_stats::v3::{
        LoadStatsRequest, LoadStatsResponse, load_reporting_service_server::LoadReportingService,
    },
    google::protobuf::Duration as ProtoDuration,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// How often Envoys report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A report older than this no longer counts (its Envoy is gone).
const STALE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Report {
    at: Instant,
    requests_per_second: f64,
    in_flight: u64,
}

pub use chatcluster_types::load::ServiceLoad;

/// Latest report per (Envoy, service).
#[derive(Default)]
pub struct Load {
    reports: Mutex<BTreeMap<(String, String), Report>>,
}

impl Load {
    fn record(&self, node: &str, service: &str, report: Report) {
        lock(&self.reports).insert((node.to_string(), service.to_string()), report);
    }

    /// The current load of every service with a fresh report.
    pub fn services(&self) -> BTreeMap<String, ServiceLoad> {
        let mut reports = lock(&self.reports);
        reports.retain(|_, r| r.at.elapsed() < STALE);
        let mut out: BTreeMap<String, ServiceLoad> = BTreeMap::new();
        for ((_, service), r) in reports.iter() {
            let load = out.entry(service.clone()).or_default();
            load.requests_per_second += r.requests_per_second;
            load.in_flight += r.in_flight;
            load.envoys += 1;
        }
        out
    }
}

/// The LRS gRPC service.
pub struct LoadReporting {
    load: Arc<Load>,
}

impl LoadReporting {
    /// Record into `load`.
    pub fn new(load: Arc<Load>) -> Self {
        Self { load }
    }
}

fn seconds(d: Option<&ProtoDuration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or(0.0)
}

#[tonic::async_trait]
impl LoadReportingService for LoadReporting {
    type StreamLoadStatsStream = ReceiverStream<Result<LoadStatsResponse, Status>>;

    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let load = self.load.clone();
        tokio::spawn(async move {
            let mut node = String::from("unknown");
            let mut answered = false;
            while let Some(Ok(req)) = inbound.next().await {
                if let Some(n) = req.node.as_ref().filter(|n| !n.id.is_empty()) {
                    node = n.id.clone();
                }
                if !answered {
                    // Ask for every cluster, every second.
                    let response = LoadStatsResponse {
                        send_all_clusters: true,
                        load_reporting_interval: Some(ProtoDuration {
                            seconds: REPORT_INTERVAL.as_secs() as i64,
                            nanos: 0,
                        }),
                        ..LoadStatsResponse::default()
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    answered = true;
                }
                for cluster in &req.cluster_stats {
                    let interval = seconds(cluster.load_report_interval.as_ref()).max(1e-3);
                    let (issued, in_flight) =
                        cluster
                            .upstream_locality_stats
                            .iter()
                            .fold((0u64, 0u64), |(i, f), s| {
                                (
                                    i + s.total_issued_requests,
                                    f + s.total_requests_in_progress,
                                )
                            });
                    debug!(%node, cluster = %cluster.cluster_name, issued, in_flight, "load report");
                    load.record(
                        &node,
                        &cluster.cluster_name,
                        Report {
                            at: Instant::now(),
                            requests_per_second: issued as f64 / interval,
                            in_flight,
                        },
                    );
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
