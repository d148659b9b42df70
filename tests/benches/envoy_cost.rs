//! Envoy's cost on the whole stack: message throughput and send latency (p50/p99) through
//! Envoy at 16 and 64 concurrent users, against the same load sent straight to the chatd
//! replica Envoy forwards to, in the same run.
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench envoy_cost`
//! (the bench runs the release binaries beside it)
//!
//! One local cluster from `examples/laptop.yaml` (one chatd per service, MariaDB primary +
//! replica with semi-sync, durable commits). Each user has its own connection and its own
//! group and sends one message at a time for 5 s, in the order direct, Envoy, Envoy, direct
//! (each figure the mean of its two rounds). Ratios: through Envoy / direct.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_operator::api::ServiceKind;
use chatcluster_tests::{
    chat::{authed, create_group, register},
    local::LocalCluster,
};
use chatd::pb::{auth::Session, chat::SendMessageRequest, groups::groups_client::GroupsClient};
use tonic::transport::Channel;

const LEVEL: Duration = Duration::from_secs(5);

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn mean(&self, other: &Self) -> Self {
        Self {
            per_second: (self.per_second + other.per_second) / 2.0,
            p50_ms: (self.p50_ms + other.p50_ms) / 2.0,
            p99_ms: (self.p99_ms + other.p99_ms) / 2.0,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(address.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `users` users, each with a group, registered through `via`.
async fn users(via: &str, tag: &str, users: usize) -> Vec<(Session, u64)> {
    let ch = connect(via).await;
    let mut out = Vec::new();
    for i in 0..users {
        let (session, _) = register(&ch, &format!("{tag}-{i}")).await.unwrap();
        let group = create_group(&ch, &session, "bench", vec![]).await.unwrap();
        out.push((session, group.id));
    }
    out
}

async fn level(address: &str, users: &[(Session, u64)]) -> Figures {
    let deadline = Instant::now() + LEVEL;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (session, group) in users.iter().cloned() {
        let ch = connect(address).await;
        tasks.push(tokio::spawn(async move {
            let mut groups = GroupsClient::new(ch);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                groups
                    .send_message(
                        authed(
                            &session,
                            SendMessageRequest {
                                conversation_id: group,
                                text: "an ordinary message of ordinary length".into(),
                                client_key: String::new(),
                            },
                        )
                        .unwrap(),
                    )
                    .await
                    .unwrap();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Figures {
        per_second: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    }
}

fn main() {
    let cluster = LocalCluster::start_with(
        "examples/laptop.yaml",
        // The per-user token bucket (20/s) would cap both paths alike, and every user comes
        // from one address here.
        &[
            ("CHATD_RATE_PER_SECOND", "100000"),
            ("CHATD_RATE_BURST", "100000"),
            ("CHATD_ADDRESS_REGISTRATIONS_PER_HOUR", "1000000"),
            ("CHATD_ADDRESS_LOGINS_PER_MINUTE", "1000000"),
        ],
    );
    let groups = cluster.plan.service(ServiceKind::Groups).unwrap();
    let direct = format!("http://{}", groups.address(0));
    let envoy = cluster.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| users | path | msg/s | p50 ms | p99 ms | msg/s ratio | p50 ratio | p99 ratio |\n|---|---|---|---|---|---|---|---|"
    );
    rt.block_on(async {
        for n in [16, 64] {
            let people = users(&envoy, &format!("u{n}"), n).await;
            // Direct, Envoy, Envoy, direct: neither path always runs on a warmer (or fuller)
            // database; each figure is the mean of its two rounds.
            let d1 = level(&direct, &people).await;
            let e1 = level(&envoy, &people).await;
            let e2 = level(&envoy, &people).await;
            let d2 = level(&direct, &people).await;
            let (d, e) = (d1.mean(&d2), e1.mean(&e2));
            println!(
                "| {n} | direct to chatd | {:.0} | {:.2} | {:.2} | 1.00 | 1.00 | 1.00 |",
                d.per_second, d.p50_ms, d.p99_ms
            );
            println!(
                "| {n} | through Envoy | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                e.per_second,
                e.p50_ms,
                e.p99_ms,
                e.per_second / d.per_second,
                e.p50_ms / d.p50_ms,
                e.p99_ms / d.p99_ms
            );
        }
    });
}
