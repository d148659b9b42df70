//! What the internal plane's mutual TLS costs: message throughput and send latency (p50/p99)
//! through Envoy at 16 and 64 concurrent users with internal TLS on (Envoy → chatd over
//! mutual TLS, chatd → the database and replication over verified TLS) against the same
//! cluster with it off, in the same run; and how long Envoy takes
//! to have its ADS stream back on a restarted chat-xds, with mutual TLS and without.
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench internal_tls`
//! (the bench runs the release binaries beside it)
//!
//! Two local clusters from `examples/laptop.yaml`, one with `internalTls` on and one off,
//! both up for the whole run, Envoy's per-client rate limit off; each user sends one message
//! at a time for 5 s, in the order off, on, on, off (each figure the mean of its two rounds).
//! Ratios: on / off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatcluster_tests::{
    envoy_stat,
    local::{LocalCluster, UNLIMITED_CHATD},
    sends::{level, users},
};

const LEVEL: Duration = Duration::from_secs(5);
const RESTARTS: usize = 5;

fn cluster(internal_tls: bool) -> LocalCluster {
    LocalCluster::start_edited(
        "examples/laptop.yaml",
        |resource| {
            resource.spec.ingress.rate_limit.enabled = false;
            resource.spec.internal_tls.enabled = internal_tls;
        },
        UNLIMITED_CHATD,
    )
}

async fn stat(admin: u16, name: &str) -> u64 {
    envoy_stat(admin, name).await.unwrap_or(0)
}

/// Kill chat-xds and time until Envoy's ADS stream is up again on the restarted one (a new
/// TCP connection and, with internal TLS, a new mutual handshake; the resources Envoy holds
/// are re-announced on the stream): the median over [`RESTARTS`], in ms. The supervisor's
/// restart and Envoy's jittered retry backoff (0.5 s, doubling) are part of every figure and
/// dominate it: this shows that Envoy comes back under mutual TLS, and roughly how fast; it
/// does not isolate the handshake's cost, which the throughput rounds bound from above.
async fn reconvergence(cluster: &LocalCluster) -> f64 {
    let admin = cluster.plan.envoys[0].port;
    let mut times = Vec::new();
    for _ in 0..RESTARTS {
        let started = Instant::now();
        cluster.signal("xds-0", "KILL");
        // Disconnected first, so the reconnection measured is the next one.
        while stat(admin, "control_plane.connected_state").await == 1
            && started.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while stat(admin, "control_plane.connected_state").await != 1 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no reconnection"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        // Let the supervisor's backoff reset before the next kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let off = cluster(false);
    let on = cluster(true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| users | internal TLS | msg/s | p50 ms | p99 ms | msg/s ratio | p50 ratio | p99 ratio |\n|---|---|---|---|---|---|---|---|"
    );
    rt.block_on(async {
        for n in [16, 64] {
            let plain_users = users(&off.endpoint(), &format!("p{n}"), n).await;
            let tls_users = users(&on.endpoint(), &format!("t{n}"), n).await;
            let p1 = level(&off.endpoint(), &plain_users, LEVEL).await;
            let t1 = level(&on.endpoint(), &tls_users, LEVEL).await;
            let t2 = level(&on.endpoint(), &tls_users, LEVEL).await;
            let p2 = level(&off.endpoint(), &plain_users, LEVEL).await;
            let (p, t) = (p1.mean(&p2), t1.mean(&t2));
            let (rate, p50, p99) = t.ratios(&p);
            println!(
                "| {n} | off | {:.0} | {:.2} | {:.2} | 1.00 | 1.00 | 1.00 |",
                p.per_second, p.p50_ms, p.p99_ms
            );
            println!(
                "| {n} | on | {:.0} | {:.2} | {:.2} | {rate:.2} | {p50:.2} | {p99:.2} |",
                t.per_second, t.p50_ms, t.p99_ms
            );
        }
        let plain = reconvergence(&off).await;
        let tls = reconvergence(&on).await;
        println!(
            "\n| Envoy's ADS stream back after a chat-xds restart | median ms | ratio |\n|---|---|---|\n| plain text | {plain:.0} | 1.00 |\n| mutual TLS | {tls:.0} | {:.2} |",
            tls / plain
        );
    });
}
