//! The load signal and what the spec asks of it: chat-xds's `/load` (request rate and in-flight
//! requests per service, as Envoy reports them), read over plain HTTP, and the spec's targets
//! and bounds in the policy's terms.

use std::time::Duration;

use super::policy::{Bounds, Targets};
use crate::api::AutoscalingSpec;

/// Requests per second one replica should carry when the spec sets no target.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 400.0;
/// Longest a `/load` request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

pub use chatcluster_types::load::{LoadReport, ServiceLoad};

/// Why the signal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// No connection or no answer in time.
    #[error("cannot reach chat-xds at {address}: {message}")]
    Unreachable {
        /// Where.
        address: String,
        /// Why.
        message: String,
    },
    /// An answer that is not a load report.
    #[error("chat-xds at {address} answered {message}")]
    Invalid {
        /// Where.
        address: String,
        /// What came back.
        message: String,
    },
}

/// GET `/load` from chat-xds's HTTP endpoint at `address` (`host:port`).
pub async fn fetch(address: &str) -> Result<LoadReport, SignalError> {
    let body = crate::http::fetch(address, "/load", FETCH_TIMEOUT)
        .await
        .map_err(|e| match e {
            crate::http::FetchError::Unreachable(message) => SignalError::Unreachable {
                address: address.to_string(),
                message,
            },
            crate::http::FetchError::Refused(message) => SignalError::Invalid {
                address: address.to_string(),
                message,
            },
        })?;
    serde_json::from_str(&body).map_err(|e| SignalError::Invalid {
        address: address.to_string(),
        message: format!("{e}: {body}"),
    })
}

/// Cores in a Kubernetes CPU quantity (`250m`, `12345678n`, `1500u`, `2`).
pub fn cpu_cores(quantity: &str) -> Option<f64> {
    crate::api::quantity::value(quantity.trim()).filter(|n| n.is_finite() && *n >= 0.0)
}

/// The policy's targets from the spec (a request-rate target of
/// [`DEFAULT_REQUESTS_PER_SECOND`] when the spec sets none).
pub fn targets(spec: &AutoscalingSpec) -> Targets {
    let cpu = spec.target_cpu_utilization.map(|p| f64::from(p) / 100.0);
    let rps = spec.target_requests_per_second.map(f64::from);
    Targets {
        requests_per_second: match (rps, cpu) {
            (None, None) => Some(DEFAULT_REQUESTS_PER_SECOND),
            (rps, _) => rps,
        },
        cpu,
    }
}

/// The policy's bounds from the spec; `period` is how often the signal is sampled (scale-up
/// follows the last two samples).
pub fn bounds(spec: &AutoscalingSpec, period: Duration) -> Bounds {
    Bounds {
        min: spec.min_replicas,
        max: spec.max_replicas.max(spec.min_replicas),
        scale_down_window: Duration::from_secs(
            u64::try_from(spec.scale_down_stabilization_seconds).unwrap_or(0),
        ),
        scale_up_window: period * 2,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(rps: Option<i32>, cpu: Option<i32>) -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 8,
            target_requests_per_second: rps,
            target_cpu_utilization: cpu,
            scale_down_stabilization_seconds: 60,
        }
    }

    #[test]
    fn targets_and_bounds_come_from_the_spec() {
        assert_eq!(targets(&spec(None, None)).requests_per_second, Some(400.0));
        let t = targets(&spec(Some(50), Some(70)));
        assert_eq!((t.requests_per_second, t.cpu), (Some(50.0), Some(0.7)));
        let t = targets(&spec(None, Some(70)));
        assert_eq!((t.requests_per_second, t.cpu), (None, Some(0.7)));
        let b = bounds(&spec(None, None), Duration::from_secs(15));
        assert_eq!((b.min, b.max), (2, 8));
        assert_eq!(b.scale_down_window, Duration::from_secs(60));
        assert_eq!(b.scale_up_window, Duration::from_secs(30));
    }

    #[test]
    fn cpu_quantities_in_every_unit_metrics_servers_use() {
        assert_eq!(cpu_cores("250m"), Some(0.25));
        assert_eq!(cpu_cores("2"), Some(2.0));
        assert!((cpu_cores("12345678n").unwrap() - 0.012_345_678).abs() < 1e-12);
        assert!((cpu_cores("1500u").unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(cpu_cores("lots"), None);
        assert_eq!(cpu_cores("-1"), None);
        assert_eq!(cpu_cores(""), None);
    }

    #[tokio::test]
    async fn an_unreachable_xds_is_an_error_not_zero_load() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = fetch(&format!("127.0.0.1:{port}")).await.unwrap_err();
        assert!(matches!(e, SignalError::Unreachable { .. }), "{e}");
    }
}
