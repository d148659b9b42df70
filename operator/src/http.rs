//! The operator's HTTP endpoint: `/metrics` for Prometheus, `/healthz` for liveness and
//! `/readyz` for readiness; and the one small client the operator needs, for reading chat-xds's
//! load and the local Prometheus's alerts over loopback or the pod network.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;

/// The router, separate from the listener so tests can drive it.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> (StatusCode, String) {
    match metrics.encode() {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serve [`router`] on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Why a [`fetch`] got no body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection, or no answer in time.
    #[error("no answer: {0}")]
    Unreachable(String),
    /// An answer other than 200 OK, or not HTTP.
    #[error("answered {0}")]
    Refused(String),
}

/// GET `path` from `address` (`host:port`) and return the body of a 200 answer, read until the
/// server closes the connection (`Connection: close`), in chunks or not.
pub async fn fetch(address: &str, path: &str, timeout: Duration) -> Result<String, FetchError> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(address).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Unreachable(format!("nothing within {timeout:?}")))?
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
    body_of(&raw)
}

/// The body of `response`, as text once put back together: chunk sizes count bytes, and a
/// chunk may end inside a character.
fn body_of(response: &[u8]) -> Result<String, FetchError> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| FetchError::Refused("no HTTP response".into()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(FetchError::Refused(status.to_string()));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| FetchError::Refused("a broken chunked body".into()))?
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The body a chunked transfer carries: each chunk is its size in hex, CRLF, the bytes, CRLF;
/// a chunk of size 0 ends it.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        let after = &rest[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(Body::empty())
                    .unwrap_or_default(),
            )
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_leader(true);
        let app = router(metrics);
        assert_eq!(
            get(app.clone(), "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            get(app.clone(), "/readyz").await,
            (StatusCode::OK, "ok".into())
        );
        let (status, text) = get(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("chat_operator_leader 1"), "{text}");
        assert_eq!(get(app, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn answers_other_than_200_are_refused_with_their_status() {
        let ok = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"a\":1}";
        assert_eq!(body_of(ok).unwrap(), "{\"a\":1}");
        let e = body_of(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("404"), "{e}");
        assert!(body_of(b"garbage").is_err());
    }

    #[test]
    fn chunked_bodies_are_put_back_together() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nenvoy_\r\n5;x=y\r\nstats\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).unwrap(), "envoy_stats");
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nenv";
        assert!(body_of(cut).is_err());
    }

    #[test]
    fn a_chunk_may_end_inside_a_character() {
        // "é" is two bytes, one in each chunk (an alert's summary naming a user's cluster).
        let mut split =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nd\xc3\r\n".to_vec();
        split.extend_from_slice(b"2\r\n\xa9j\r\n0\r\n\r\n");
        assert_eq!(body_of(&split).unwrap(), "d\u{e9}j");
    }
}
