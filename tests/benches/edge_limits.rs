//! What the edge limits cost: message throughput and send latency through Envoy with its
//! per-client rate limit on (set far above the offered load, so it counts every request and
//! refuses none) against the same cluster with it off, at 16 and 64 concurrent users.
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench edge_limits`
//!
//! Two local clusters from `examples/laptop.yaml`, alike but for `spec.ingress.rateLimit`
//! (the overload manager, connection and header limits and HTTP/2 settings are always on, in
//! both). Each user sends one message at a time for 5 s, in the order off, on, on, off (each
//! figure the mean of its two rounds). Ratios: limits on / off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chatcluster_tests::{
    local::{LocalCluster, UNLIMITED_CHATD},
    sends::{level, users},
};

const LEVEL: Duration = Duration::from_secs(5);

fn main() {
    let off = LocalCluster::start_edited(
        "examples/laptop.yaml",
        |resource| resource.spec.ingress.rate_limit.enabled = false,
        UNLIMITED_CHATD,
    );
    let on = LocalCluster::start_edited(
        "examples/laptop.yaml",
        |resource| {
            let limit = &mut resource.spec.ingress.rate_limit;
            limit.enabled = true;
            limit.requests_per_second = 1_000_000;
            limit.burst = 1_000_000;
        },
        UNLIMITED_CHATD,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| users | Envoy's rate limit | msg/s | p50 ms | p99 ms | msg/s ratio | p50 ratio | p99 ratio |\n|---|---|---|---|---|---|---|---|"
    );
    rt.block_on(async {
        for n in [16, 64] {
            let (off_url, on_url) = (off.endpoint(), on.endpoint());
            let off_users = users(&off_url, &format!("u{n}"), n).await;
            let on_users = users(&on_url, &format!("u{n}"), n).await;
            let o1 = level(&off_url, &off_users, LEVEL).await;
            let l1 = level(&on_url, &on_users, LEVEL).await;
            let l2 = level(&on_url, &on_users, LEVEL).await;
            let o2 = level(&off_url, &off_users, LEVEL).await;
            let (o, l) = (o1.mean(&o2), l1.mean(&l2));
            let (rate, p50, p99) = l.ratios(&o);
            println!(
                "| {n} | off | {:.0} | {:.2} | {:.2} | 1.00 | 1.00 | 1.00 |",
                o.per_second, o.p50_ms, o.p99_ms
            );
            println!(
                "| {n} | on | {:.0} | {:.2} | {:.2} | {rate:.2} | {p50:.2} | {p99:.2} |",
                l.per_second, l.p50_ms, l.p99_ms
            );
        }
    });
}
