//! Closed-loop send load for benchmarks: users who each send one message at a time on their
//! own connection and group, with the throughput and latency percentiles that come of it.

use std::time::{Duration, Instant};

use chatd::pb::{auth::Session, chat::SendMessageRequest, groups::groups_client::GroupsClient};
use tonic::transport::Channel;

use crate::chat::{authed, create_group, register};

/// What one level of load gave.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Messages acknowledged per second.
    pub per_second: f64,
    /// Median send latency.
    pub p50_ms: f64,
    /// 99th percentile send latency.
    pub p99_ms: f64,
}

impl Figures {
    /// The mean of two rounds.
    pub fn mean(&self, other: &Self) -> Self {
        Self {
            per_second: (self.per_second + other.per_second) / 2.0,
            p50_ms: (self.p50_ms + other.p50_ms) / 2.0,
            p99_ms: (self.p99_ms + other.p99_ms) / 2.0,
        }
    }

    /// These figures over `base`'s: throughput, p50 and p99 ratios.
    pub fn ratios(&self, base: &Self) -> (f64, f64, f64) {
        (
            self.per_second / base.per_second,
            self.p50_ms / base.p50_ms,
            self.p99_ms / base.p99_ms,
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(address.to_string())
        .unwrap_or_else(|e| panic!("{address}: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{address}: {e}"))
}

/// `users` users, each with a group, registered through `via`.
pub async fn users(via: &str, tag: &str, users: usize) -> Vec<(Session, u64)> {
    let ch = connect(via).await;
    let mut out = Vec::new();
    for i in 0..users {
        let (session, _) = register(&ch, &format!("{tag}-{i}"))
            .await
            .unwrap_or_else(|e| panic!("register: {e}"));
        let group = create_group(&ch, &session, "bench", vec![])
            .await
            .unwrap_or_else(|e| panic!("create group: {e}"));
        out.push((session, group.id));
    }
    out
}

/// Every user of `users` sends through `address`, one message at a time, for `length`.
pub async fn level(address: &str, users: &[(Session, u64)], length: Duration) -> Figures {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (session, group) in users.iter().cloned() {
        let ch = connect(address).await;
        tasks.push(tokio::spawn(async move {
            let mut groups = GroupsClient::new(ch);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let send = SendMessageRequest {
                    conversation_id: group,
                    text: "an ordinary message of ordinary length".into(),
                    client_key: String::new(),
                };
                let req = authed(&session, send).unwrap_or_else(|e| panic!("{e}"));
                groups
                    .send_message(req)
                    .await
                    .unwrap_or_else(|e| panic!("send: {e}"));
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Figures {
        per_second: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    }
}
