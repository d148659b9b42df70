//! Reconcile cost for 1 and 100 ChatClusters against the in-memory API.
//!
//! `cargo bench -p chat-operator --bench reconcile`
//!
//! Baseline, measured in the same run: server-side applying the very same child objects
//! directly (no reads, no Secrets, no status). The ratio is what the reconciler adds on top of
//! the writes it cannot avoid. Memory: resident-set growth over the first reconcile of all
//! clusters (largest of the rounds), and the process's peak resident set (which includes the
//! in-memory API's store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chat_operator::{
    api::{ChatCluster, ValidatedCluster},
    build::{self, ClusterRef, Observed},
    metrics::Metrics,
    reconcile::{Context, FIELD_MANAGER, apply::apply, reconcile},
};
use chatcluster_testkit::FakeApi;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const NS: &str = "bench";
const ROUNDS: usize = 5;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn create_clusters(api: &FakeApi, n: usize) -> Vec<ChatCluster> {
    let clusters: Api<ChatCluster> = Api::namespaced(api.client(), NS);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let resource: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chatcluster.io/v1alpha1",
            "kind": "ChatCluster",
            "metadata": { "name": format!("c{i}"), "namespace": NS },
            "spec": {},
        }))
        .unwrap();
        out.push(
            clusters
                .create(&PostParams::default(), &resource)
                .await
                .unwrap(),
        );
    }
    out
}

struct Run {
    first: Duration,
    steady: Duration,
    rss_growth_kib: u64,
}

async fn reconcile_run(n: usize) -> Run {
    let api = FakeApi::new();
    let ctx = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::default()),
        None,
    ));
    let clusters = create_clusters(&api, n).await;
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    for resource in &clusters {
        reconcile(Arc::new(resource.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let first = started.elapsed();
    let rss_growth_kib = status_kib("VmRSS:").saturating_sub(rss_before);
    // Steady state: re-read each cluster (with its status) and reconcile again.
    let api_cc: Api<ChatCluster> = Api::namespaced(api.client(), NS);
    let fresh: Vec<ChatCluster> = api_cc.list(&Default::default()).await.unwrap().items;
    let started = Instant::now();
    for resource in fresh {
        reconcile(Arc::new(resource), ctx.clone()).await.unwrap();
    }
    Run {
        first,
        steady: started.elapsed(),
        rss_growth_kib,
    }
}

async fn raw_apply_run(n: usize) -> Duration {
    let api = FakeApi::new();
    let client = api.client();
    let clusters = create_clusters(&api, n).await;
    let objects: Vec<_> = clusters
        .iter()
        .map(|resource| {
            let validated = ValidatedCluster::new(resource.name_any(), &resource.spec).unwrap();
            build::desired(
                &ClusterRef::new(resource).unwrap(),
                &validated,
                &Observed::default(),
            )
            .unwrap()
            .objects()
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    for objs in &objects {
        for obj in objs {
            apply(&client, NS, obj).await.unwrap();
        }
    }
    // Plus one status write per cluster, which the reconciler also cannot avoid.
    let api_cc: Api<ChatCluster> = Api::namespaced(client.clone(), NS);
    for resource in &clusters {
        let name = resource.metadata.name.clone().unwrap();
        let patch = json!({
            "apiVersion": "chatcluster.io/v1alpha1", "kind": "ChatCluster",
            "status": { "phase": "Progressing" }
        });
        api_cc
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .unwrap();
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

#[tokio::main]
async fn main() {
    println!("operator reconcile benchmark: in-memory API, median of {ROUNDS} rounds");
    println!("baseline = server-side applying the same children + one status write, same run\n");
    println!(
        "{:>8} {:>16} {:>16} {:>16} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "clusters",
        "first ms/cluster",
        "steady ms/clust",
        "baseline ms/cl",
        "first/base",
        "steady/base",
        "clusters/s",
        "RSS +KiB",
        "peak RSS MiB"
    );
    for n in [1usize, 100] {
        let mut firsts = Vec::new();
        let mut steadies = Vec::new();
        let mut bases = Vec::new();
        let mut rss = 0;
        for _ in 0..ROUNDS {
            bases.push(raw_apply_run(n).await);
            let run = reconcile_run(n).await;
            firsts.push(run.first);
            steadies.push(run.steady);
            rss = rss.max(run.rss_growth_kib);
        }
        let (first, steady, base) = (median(firsts), median(steadies), median(bases));
        println!(
            "{:>8} {:>16.3} {:>16.3} {:>16.3} {:>12.2} {:>12.2} {:>10.0} {:>12} {:>12.1}",
            n,
            per(first, n),
            per(steady, n),
            per(base, n),
            first.as_secs_f64() / base.as_secs_f64(),
            steady.as_secs_f64() / base.as_secs_f64(),
            n as f64 / first.as_secs_f64(),
            rss,
            status_kib("VmHWM:") as f64 / 1024.0
        );
    }
}
