//! Per-method deadlines: how long chatd works on a call before it answers DEADLINE_EXCEEDED,
//! whatever the client asked for (a client's shorter `grpc-timeout` still wins, and
//! [`REQUEST_TIMEOUT`](crate::server::REQUEST_TIMEOUT) bounds everything). Reads are quick or
//! broken; writes may wait for the replica's semi-sync acknowledgement; login and registration
//! may wait 5 s for a hashing slot, then hash. For a stream, the deadline bounds its opening,
//! never how long it stays open.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

/// Deadline of reads (`Get…`, `List…`, `History`, health checks).
pub const READ: Duration = Duration::from_secs(5);
/// Deadline of everything else: writes, logins, opening a stream.
pub const WRITE: Duration = Duration::from_secs(10);

/// The deadline of the call to `path` (`/package.Service/Method`).
pub fn deadline(path: &str) -> Duration {
    let method = path.rsplit('/').next().unwrap_or_default();
    let read = method.starts_with("Get")
        || method.starts_with("List")
        || matches!(method, "History" | "Check");
    if read { READ } else { WRITE }
}

/// Puts [`deadline`] on every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let limit = deadline(req.uri().path());
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answered) => answered,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within {} s",
                    limit.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_get_less_time_than_writes() {
        assert_eq!(deadline("/chatcluster.groups.v1.Groups/History"), READ);
        assert_eq!(deadline("/chatcluster.groups.v1.Groups/ListMyGroups"), READ);
        assert_eq!(deadline("/chatcluster.auth.v1.Auth/GetProfile"), READ);
        assert_eq!(deadline("/chatcluster.groups.v1.Groups/SendMessage"), WRITE);
        assert_eq!(deadline("/chatcluster.auth.v1.Auth/Login"), WRITE);
        assert_eq!(deadline("/chatcluster.groups.v1.Groups/Subscribe"), WRITE);
        assert_eq!(deadline("garbage"), WRITE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let slow = tower::service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(Response::new(String::from("late")))
        });
        let mut svc = DeadlineLayer.layer(slow);
        let req = Request::builder()
            .uri("/chatcluster.groups.v1.Groups/History")
            .body(())
            .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let Ok(response) = svc.call(req).await;
        assert_eq!(started.elapsed(), READ);
        assert_eq!(
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("4"),
            "DEADLINE_EXCEEDED"
        );
        assert!(response.body().is_empty());
    }
}
