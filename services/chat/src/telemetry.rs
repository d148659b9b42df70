//! Per-RPC telemetry: a tracing span around every call, and Prometheus metrics (requests by
//! method and gRPC code, latency, open streams, database pools, subscribed conversations).
//!
//! One tower layer does both, so no service method has to remember to. The gRPC code of a
//! unary call travels in the trailers (or in the headers of a trailers-only error), so the
//! response body is wrapped to read it when the call really ends; for a stream that is when
//! the stream closes, which also gives the open-stream gauge.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, header::HeaderMap};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use prost::Message as _;
use tower::{Layer, Service};
use tracing::{Instrument, Span, info_span};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

/// chatd's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    duration: Family<MethodLabels, Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
    pool: Family<PoolLabels, Gauge>,
    subscribed: Gauge,
    broker_hints: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chatd");
        let requests = Family::<CallLabels, Counter>::default();
        let duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        let in_flight = Family::<MethodLabels, Gauge>::default();
        let pool = Family::<PoolLabels, Gauge>::default();
        let subscribed = Gauge::default();
        registry.register(
            "requests",
            "Finished gRPC calls by method and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "gRPC call duration (for streams, how long they stayed open)",
            duration.clone(),
        );
        registry.register(
            "in_flight",
            "gRPC calls in progress, open subscription streams included",
            in_flight.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections by pool and state",
            pool.clone(),
        );
        registry.register(
            "subscribed_conversations",
            "Conversations with subscribers on this replica",
            subscribed.clone(),
        );
        let broker_hints = Counter::default();
        registry.register(
            "broker_hints_received",
            "Delivery hints taken from the broker: other replicas' writes to conversations subscribed here",
            broker_hints.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            in_flight,
            pool,
            subscribed,
            broker_hints,
        }
    }
}

impl Metrics {
    /// Record pool sizes: `(pool, total, idle)`.
    pub fn set_pool(&self, pool: &'static str, total: u32, idle: usize) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        self.pool
            .get_or_create(&PoolLabels {
                pool,
                state: "idle",
            })
            .set(idle);
        self.pool
            .get_or_create(&PoolLabels {
                pool,
                state: "active",
            })
            .set(i64::from(total) - idle);
    }

    /// The counter of hints taken from the broker, for the hub to count them in.
    pub fn broker_hints(&self) -> Counter {
        self.broker_hints.clone()
    }

    /// Record how many conversations have local subscribers.
    pub fn set_subscribed(&self, n: usize) {
        self.subscribed.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The layer to put in front of the gRPC services.
#[derive(Clone)]
pub struct TelemetryLayer {
    metrics: Arc<Metrics>,
}

impl TelemetryLayer {
    /// Record into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`TelemetryLayer`].
#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Counts a call once, when its response body ends (or is dropped unfinished).
struct Call {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    code: Option<String>,
    span: Span,
}

impl Call {
    fn finish(&mut self, code: String) {
        if self.code.is_none() {
            self.code = Some(code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A body dropped before its trailers: the client went away (CANCELLED, code 1).
        let code = self.code.take().unwrap_or_else(|| "1".into());
        let method = MethodLabels {
            method: self.method.clone(),
        };
        self.metrics.in_flight.get_or_create(&method).dec();
        self.metrics
            .duration
            .get_or_create(&method)
            .observe(self.started.elapsed().as_secs_f64());
        self.span
            .in_scope(|| tracing::debug!(code = %code, "call finished"));
        self.metrics
            .requests
            .get_or_create(&CallLabels {
                method: self.method.clone(),
                code,
            })
            .inc();
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Telemetry<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        let span = info_span!("rpc", method = %method);
        let metrics = self.metrics.clone();
        metrics
            .in_flight
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .inc();
        let mut call = Call {
            metrics,
            method,
            started: Instant::now(),
            code: None,
            span: span.clone(),
        };
        let future = self.inner.call(req);
        Box::pin(
            async move {
                let response = future.await?;
                if let Some(code) = grpc_status(response.headers()) {
                    call.finish(code);
                }
                Ok(response.map(|body| RecordedBody {
                    inner: body,
                    call: Some(call),
                }))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports its call's status when it ends.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body<Data = Bytes>> Body for RecordedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(call) = this.call.as_mut()
                {
                    call.finish(code);
                }
            }
            // Ended without trailers carrying a status: fine; failed mid-way: UNKNOWN (2).
            Poll::Ready(None) => {
                if let Some(mut call) = this.call.take() {
                    call.finish("0".into());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = this.call.take() {
                    call.finish("2".into());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
/// The method label of a request to `path`: the method it names when the API (or the health
/// or reflection service) has it, else `unknown`, so made-up paths cannot grow the metrics
/// without bound (300 of them once added 5,100 lines).
pub fn method_label(path: &str) -> String {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known: HashSet<String> = [
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .map(String::from)
        .into();
        let files = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .map(|set| set.file)
            .unwrap_or_default();
        for file in files {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        known
    });
    let method = path.trim_start_matches('/');
    if known.contains(method) {
        method.to_string()
    } else {
        "unknown".to_string()
    }
}

#[cfg(test)]
mod method_tests {
    use super::method_label;

    #[test]
    fn only_methods_the_api_has_are_labels() {
        for known in [
            "/chatcluster.groups.v1.Groups/SendMessage",
            "/chatcluster.auth.v1.Auth/Login",
            "/grpc.health.v1.Health/Check",
        ] {
            assert_eq!(method_label(known), known.trim_start_matches('/'));
        }
        for made_up in [
            "/chatcluster.auth.v1.Auth/Made-up-1",
            "/chatcluster.auth.v1.Auth/",
            "/",
            "/x/y/z",
        ] {
            assert_eq!(method_label(made_up), "unknown", "{made_up}");
        }
    }
}
