//! Autoscaling, measured: time from a load step to the new replicas serving traffic, and
//! requests failed while scaling in (must be 0), on a local cluster.
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench autoscale`
//!
//! `examples/autoscale.yaml`: groups autoscaled 1–4 at 20 requests/s per replica, scale-down
//! window 10 s; the runner samples Envoy's request rate every second. Each run: 8 reads/s,
//! then a step to 70/s (→ 4 replicas), then back to 8/s (→ 1 replica after the window).
//! Baseline in the same run: one chatd started by hand with the same configuration, from
//! launch to its first answered call — the part of the delay no policy can remove. Then 20 s
//! of steady load worth 1.5 replicas: the replica count must not change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_operator::{api::ServiceKind, build::secrets::DbCredentials};
use chatcluster_tests::{
    Process,
    chat::authed,
    load::{Load, reader, served},
    local::LocalCluster,
};
use chatd::pb::{chat::HistoryRequest, groups::groups_client::GroupsClient};
use tonic::transport::Channel;

const RUNS: usize = 3;
const STEADY: Duration = Duration::from_secs(20);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cluster = LocalCluster::start_with(
        "examples/autoscale.yaml",
        &[
            ("CHATD_RATE_PER_SECOND", "100000"),
            ("CHATD_RATE_BURST", "100000"),
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = cluster.plan.service(ServiceKind::Groups).unwrap().clone();
    let replicas =
        |c: &LocalCluster| c.status()["autoscaling"]["groups"]["currentReplicas"].as_u64();

    let (first, all, failed, total, baseline, flaps) = rt.block_on(async {
        let (session, group) = reader(&cluster.endpoint(), "bench").await;
        let load = Load::start(&cluster.endpoint(), session.clone(), group, 8.0).await;
        let (mut first, mut all, mut failed, mut total) = (Vec::new(), Vec::new(), 0, 0);
        for run in 0..RUNS {
            while replicas(&cluster) != Some(1) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let before: Vec<u64> = served_by_slot(&service).await;
            let step = Instant::now();
            load.set_rate(70.0);
            let mut serving = [None; 4];
            while serving[1..].iter().any(Option::is_none) {
                assert!(
                    step.elapsed() < Duration::from_secs(60),
                    "run {run}: no scale-out"
                );
                let now = served_by_slot(&service).await;
                for i in 1..4 {
                    if serving[i].is_none() && now[i] > before[i] {
                        serving[i] = Some(step.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let times: Vec<f64> = serving[1..]
                .iter()
                .flatten()
                .map(|d| d.as_secs_f64())
                .collect();
            first.push(times.iter().copied().fold(f64::MAX, f64::min));
            all.push(times.iter().copied().fold(0.0, f64::max));
            tokio::time::sleep(Duration::from_secs(3)).await;
            let drop = load.now();
            load.set_rate(8.0);
            while replicas(&cluster) != Some(1) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The last removed replicas finish draining.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let during = load.between(drop, load.now());
            failed += during.iter().filter(|o| o.error.is_some()).count();
            total += during.len();
        }

        // Steady load between two replica counts' worth: no replica change for 20 s.
        load.set_rate(30.0);
        let settle = Instant::now();
        while replicas(&cluster) != Some(2) {
            assert!(
                settle.elapsed() < Duration::from_secs(60),
                "never settled at 2 replicas"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut flaps = 0;
        let mut last = replicas(&cluster);
        let steady = Instant::now();
        while steady.elapsed() < STEADY {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = replicas(&cluster);
            if now != last {
                flaps += 1;
                last = now;
            }
        }

        // Baseline: a chatd like the runner's, started by hand on a spare port.
        let text =
            std::fs::read_to_string(cluster.dir.path().join("secrets/credentials.json")).unwrap();
        let creds: DbCredentials = serde_json::from_str(&text).unwrap();
        let mut launch = cluster.plan.chatd_launch(&service, 0, &creds);
        let port = service.port(service.bounds.1);
        launch
            .env
            .insert("CHATD_LISTEN".into(), format!("127.0.0.1:{port}"));
        launch.env.insert(
            "CHATD_METRICS_LISTEN".into(),
            format!("127.0.0.1:{}", port + 1),
        );
        let mut baseline = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let _chatd = Process::spawn(
                std::process::Command::new(&launch.program)
                    .envs(&launch.env)
                    .env("RUST_LOG", "warn")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()),
            );
            loop {
                if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect()
                    .await
                {
                    let req = authed(
                        &session,
                        HistoryRequest {
                            conversation_id: group,
                            limit: 1,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    if GroupsClient::new(ch).history(req).await.is_ok() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            baseline.push(started.elapsed().as_secs_f64());
        }
        (first, all, failed, total, median(baseline), flaps)
    });
    let (first, all) = (median(first), median(all));
    println!("| measure (median of {RUNS}) | seconds | ratio to baseline |\n|---|---|---|");
    println!("| baseline: chatd launched → first call answered | {baseline:.3} | 1.00 |");
    println!(
        "| load step → first new replica serving | {first:.2} | {:.1} |",
        first / baseline
    );
    println!(
        "| load step → all 3 new replicas serving | {all:.2} | {:.1} |",
        all / baseline
    );
    println!("requests failed while scaling in: {failed} of {total} (over {RUNS} scale-ins)");
    println!(
        "replica changes during {}s of steady 30 requests/s (2 replicas' worth): {flaps}",
        STEADY.as_secs()
    );
    assert_eq!(failed, 0, "requests failed during scale-in");
    assert_eq!(flaps, 0, "the replica count changed under steady load");
}

/// History calls each replica slot 0–3 has served so far (0 when not running).
async fn served_by_slot(service: &chat_operator::local::plan::ServicePlan) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..4 {
        out.push(served(service.port(i) + 1, "History").await);
    }
    out
}
