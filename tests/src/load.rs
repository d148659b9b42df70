//! A paced load generator for autoscaling tests and benchmarks: `rate` group-history reads per
//! second through one endpoint, each outcome and latency recorded with its time.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chatd::pb::{auth::Session, chat::HistoryRequest, groups::groups_client::GroupsClient};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::chat::authed;

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, since the generator's start.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// The gRPC error, if it failed.
    pub error: Option<String>,
}

/// A running generator; change its rate with [`set_rate`](Self::set_rate).
pub struct Load {
    rate: watch::Sender<f64>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// A new user `name` with a group of its own to read, through `endpoint`.
pub async fn reader(endpoint: &str, name: &str) -> (Session, u64) {
    let ch = Channel::from_shared(endpoint.to_string())
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    let (session, _) = crate::chat::register(&ch, name)
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    let group = crate::chat::create_group(&ch, &session, name, vec![])
        .await
        .unwrap_or_else(|e| panic!("create a group: {e}"));
    (session, group.id)
}

/// How many connections the load is spread over (as many users would).
const CONNECTIONS: usize = 8;

impl Load {
    /// Start reading `group`'s history as `session` through `endpoint` at `rate` per second.
    pub async fn start(endpoint: &str, session: Session, group: u64, rate: f64) -> Self {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let ch = Channel::from_shared(endpoint.to_string())
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            clients.push(GroupsClient::new(ch));
        }
        let (tx, mut rx) = watch::channel(rate);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let out = outcomes.clone();
        let task = tokio::spawn(async move {
            let mut next = Instant::now();
            let mut n = 0usize;
            loop {
                let rate = *rx.borrow_and_update();
                if rate <= 0.0 {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    next = Instant::now();
                    continue;
                }
                next += Duration::from_secs_f64(1.0 / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    changed = rx.changed() => {
                        if changed.is_err() { return; }
                        next = Instant::now();
                        continue;
                    }
                }
                let mut client = clients[n % CONNECTIONS].clone();
                n += 1;
                let session = session.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let result = match authed(
                        &session,
                        HistoryRequest {
                            conversation_id: group,
                            limit: 20,
                            ..HistoryRequest::default()
                        },
                    ) {
                        Ok(req) => client.history(req).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    let outcome = Outcome {
                        at: sent.duration_since(started),
                        latency: sent.elapsed(),
                        error: result
                            .err()
                            .map(|e| format!("{:?}: {}", e.code(), e.message())),
                    };
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(outcome);
                });
            }
        });
        Self {
            rate: tx,
            outcomes,
            started,
            task,
        }
    }

    /// Change the rate (0: pause).
    pub fn set_rate(&self, rate: f64) {
        let _ = self.rate.send(rate);
    }

    /// Time since the start, on the outcomes' clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// The outcomes of requests sent in `[from, to)`.
    pub fn between(&self, from: Duration, to: Duration) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|o| o.at >= from && o.at < to)
            .cloned()
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `p`-quantile (0–1) of the outcomes' latencies.
pub fn quantile(outcomes: &[Outcome], p: f64) -> Duration {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    if l.is_empty() {
        return Duration::ZERO;
    }
    l[((l.len() - 1) as f64 * p).round() as usize]
}

/// Calls of `method` (a gRPC method name such as `History`) a chatd has finished, from its
/// metrics on `metrics_port`.
pub async fn served(metrics_port: u16, method: &str) -> u64 {
    crate::http_get(metrics_port, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("chatd_requests_total{") && l.contains(&format!("/{method}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
