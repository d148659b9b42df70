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

use crate::{ads::Clients, discovery::Discovered, load::Load};

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
    /// What discovery found: the ingress certificate among it.
    pub discovered: tokio::sync::watch::Receiver<Discovered>,
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
    // The certificate clients see, apart from the internal ones Envoy holds too (those are
    // the operator's to renew, and its metrics watch them): none known, no series.
    let expiry = observed
        .discovered
        .borrow()
        .certificate
        .as_ref()
        .and_then(|c| chatcluster_common::tls::not_after(&c.cert_pem));
    if let Some(at) = expiry {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(
            "ingress_certificate_expiry_timestamp_seconds",
            "When the certificate Envoy serves to clients expires",
            gauge,
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Certificate;

    fn observed(certificate: Option<Certificate>) -> Observed {
        let discovered = Discovered {
            endpoints: Default::default(),
            certificate,
        };
        Observed {
            clients: Arc::new(Clients::default()),
            load: Arc::new(Load::default()),
            discovered: tokio::sync::watch::channel(discovered).1,
        }
    }

    #[test]
    fn the_ingress_certificates_expiry_is_a_series_once_one_is_known() {
        const NAME: &str = "chat_xds_ingress_certificate_expiry_timestamp_seconds";
        let none = render(&observed(None)).unwrap();
        assert!(none.contains("chat_xds_nacks_total"), "{none}");
        assert!(!none.contains(NAME), "{none}");
        let mut params = rcgen::CertificateParams::new(vec!["chat.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let text = render(&observed(Some(Certificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })))
        .unwrap();
        // 2031-05-17T00:00:00Z.
        assert!(text.contains(&format!("{NAME} 1936742400")), "{text}");
    }
}
