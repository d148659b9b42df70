//! Envoy's cost on the whole stack: message throughput and send latency (p50/p99) through
//! Envoy at 16 and 64 concurrent users, against the same load sent straight to the chatd
//! replica Envoy forwards to, in the same run.
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench envoy_cost`
//! (the bench runs the release binaries beside it)
//!
//! One local cluster from `examples/laptop.yaml` (one chatd per service, MariaDB primary +
//! replica with semi-sync, durable commits), Envoy's per-client rate limit off (every user
//! here is one address; `edge_limits` measures the limit), internal TLS off (the direct
//! baseline is a plain-text client; the `internal_tls` bench measures that hop). Each user has its own connection
//! and its own group and sends one message at a time for 5 s, in the order direct, Envoy,
//! Envoy, direct (each figure the mean of its two rounds). Ratios: through Envoy / direct.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::api::ServiceKind;
use chatcluster_tests::{
    local::{LocalCluster, UNLIMITED_CHATD},
    sends::{level, users},
};

const LEVEL: Duration = Duration::from_secs(5);

fn main() {
    let cluster = LocalCluster::start_edited(
        "examples/laptop.yaml",
        |resource| {
            resource.spec.ingress.rate_limit.enabled = false;
            // Envoy's own cost against plain chatd; `internal_tls` measures the TLS hop.
            resource.spec.internal_tls.enabled = false;
        },
        UNLIMITED_CHATD,
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
            let d1 = level(&direct, &people, LEVEL).await;
            let e1 = level(&envoy, &people, LEVEL).await;
            let e2 = level(&envoy, &people, LEVEL).await;
            let d2 = level(&direct, &people, LEVEL).await;
            let (d, e) = (d1.mean(&d2), e1.mean(&e2));
            let (rate, p50, p99) = e.ratios(&d);
            println!(
                "| {n} | direct to chatd | {:.0} | {:.2} | {:.2} | 1.00 | 1.00 | 1.00 |",
                d.per_second, d.p50_ms, d.p99_ms
            );
            println!(
                "| {n} | through Envoy | {:.0} | {:.2} | {:.2} | {rate:.2} | {p50:.2} | {p99:.2} |",
                e.per_second, e.p50_ms, e.p99_ms
            );
        }
    });
}
