//! Autoscaling in local mode, for real: a load generator steps the request rate on the groups
//! service up through Envoy; the runner (same policy as in Kubernetes, on the rate Envoy
//! reports) starts chatd processes, Envoy sends them traffic once healthy, and latency stays
//! low; then load drops and, after the stabilisation window, the extra replicas drain away
//! with no failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::api::ServiceKind;
use chatcluster_tests::{
    load::{Load, quantile, reader, served},
    local::LocalCluster,
};

fn replicas(cluster: &LocalCluster) -> Option<u64> {
    cluster.status()["autoscaling"]["groups"]["currentReplicas"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_scale_out_with_load_and_back_in_after_the_window_without_failures() {
    let cluster = tokio::task::spawn_blocking(|| {
        LocalCluster::start_with(
            "examples/autoscale.yaml",
            &[
                ("CHATD_RATE_PER_SECOND", "100000"),
                ("CHATD_RATE_BURST", "100000"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(replicas(&cluster), Some(1), "{:#}", cluster.status());
    let (session, group) = reader(&cluster.endpoint(), "loader").await;

    // Light load: one replica is enough (20/s per replica is the target).
    let load = Load::start(&cluster.endpoint(), session, group, 8.0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        replicas(&cluster),
        Some(1),
        "no scaling at light load: {:#}",
        cluster.status()["autoscaling"]
    );

    // Step to 70/s: ceil(70 / 20) = 4 replicas.
    let step = load.now();
    load.set_rate(70.0);
    let grown = tokio::task::spawn_blocking({
        let status = cluster.dir.path().join("status.json");
        move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let s: serde_json::Value = std::fs::read_to_string(&status)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                let groups = &s["autoscaling"]["groups"];
                if groups["currentReplicas"] == 4 {
                    return true;
                }
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
    .await
    .unwrap();
    assert!(
        grown,
        "groups did not grow to 4: {:#}",
        cluster.status()["autoscaling"]
    );
    // The runner's metrics show the decision and the signal.
    let metrics = chatcluster_tests::http_get(cluster.plan.metrics_port, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("chat_operator_autoscaler_desired_replicas{")
                && l.contains("service=\"groups\"")
                && l.ends_with(" 4")
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_operator_autoscaler_requests_per_second{"),
        "{metrics}"
    );
    // Every new replica serves traffic once healthy.
    let service = cluster.plan.service(ServiceKind::Groups).unwrap().clone();
    for i in 1..4 {
        let mut n = 0;
        for _ in 0..100 {
            n = served(service.port(i) + 1, "History").await;
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(n > 0, "groups-{i} got no traffic");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after_step = load.between(step, step + Duration::from_secs(2));
    let settled = load.between(load.now() - Duration::from_secs(3), load.now());
    let p99 = quantile(&settled, 0.99);
    println!(
        "p99 in the first 2 s of the step: {:?}; once scaled: {p99:?}",
        quantile(&after_step, 0.99)
    );
    assert!(
        p99 < Duration::from_millis(500),
        "p99 once scaled out: {p99:?}"
    );

    // Load drops to light again: replicas stay for the window (10 s), then shrink to one; the
    // removed ones leave Envoy's endpoints first and drain, so no request fails.
    let drop = load.now();
    load.set_rate(8.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        replicas(&cluster),
        Some(4),
        "held during the window: {:#}",
        cluster.status()["autoscaling"]
    );
    cluster.wait_for("groups back to one replica", Duration::from_secs(30), |s| {
        s["autoscaling"]["groups"]["currentReplicas"] == 1
    });
    // Let the last removed replicas finish draining under load.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = load.between(step, load.now());
    let failed: Vec<_> = during.iter().filter(|o| o.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling: {:?}",
        failed.len(),
        during.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        load.between(drop, load.now()).len() > 100,
        "load kept running during scale-in"
    );
}
