//! chat-xds's HTTP endpoint: `/metrics` (Prometheus), `/load` (the load signal the operator's
//! autoscaler reads) and `/clients` (what each Envoy was sent, acknowledged and rejected).

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use chatcluster_types::load::LoadReport;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::ConstCounter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{ads::Clients, load::Load};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// What the endpoint reads.
#[derive(Clone)]
pub struct Observed {
    /// Connected Envoys and their status.
    pub clients: Arc<Clients>,
    /// Load reports.
    pub load: Arc<Load>,
}

/// The metrics, rendered from the current state at each scrape.
pub fn render(observed: &Observed) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("chat_xds");
    let rps = Family::<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let in_flight = Family::<ServiceLabel, Gauge>::default();
    for (service, load) in observed.load.services() {
        let label = ServiceLabel { service };
        rps.get_or_create(&label).set(load.requests_per_second);
        in_flight
            .get_or_create(&label)
            .set(i64::try_from(load.in_flight).unwrap_or(i64::MAX));
    }
    registry.register(
        "service_requests_per_second",
        "Requests per second sent to each chat service, summed over the Envoys",
        rps,
    );
    registry.register(
        "service_in_flight",
        "Requests in progress at each chat service, summed over the Envoys",
        in_flight,
    );
    let envoys = Gauge::<i64>::default();
    envoys.set(i64::try_from(observed.clients.snapshot().len()).unwrap_or(i64::MAX));
    registry.register("envoys", "Envoys connected over ADS", envoys);
    registry.register(
        "nacks",
        "Configurations rejected by an Envoy",
        ConstCounter::new(observed.clients.nacks()),
    );
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

async fn metrics(State(observed): State<Observed>) -> (StatusCode, String) {
    match render(&observed) {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn load(State(observed): State<Observed>) -> Json<LoadReport> {
    Json(LoadReport {
        services: observed.load.services(),
    })
}

async fn clients(State(observed): State<Observed>) -> Json<serde_json::Value> {
    let all = observed.clients.snapshot();
    let view: serde_json::Map<String, serde_json::Value> = all
        .into_iter()
        .map(|(node, types)| {
            let types: serde_json::Map<String, serde_json::Value> = types
                .into_iter()
                .map(|(kind, s)| {
                    (
                        format!("{kind:?}"),
                        serde_json::json!({
                            "sent": s.sent,
                            "acked": s.acked,
                            "nacked": s.nacked.map(|(v, m)| serde_json::json!({ "version": v, "error": m })),
                        }),
                    )
                })
                .collect();
            (node, serde_json::Value::Object(types))
        })
        .collect();
    Json(serde_json::Value::Object(view))
}

/// Serve until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    observed: Observed,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        // The kubelet's probe: it presents no client certificate for the ADS port.
        .route("/healthz", get(|| async { "ok" }))
        .route("/load", get(load))
        .route("/clients", get(clients))
        .with_state(observed);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
