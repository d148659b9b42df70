//! What an idle local cluster costs: CPU (share of one core) and resident memory of every
//! process of `examples/laptop.yaml` over 10 s after Ready, against one bare MariaDB server
//! idle for the same 10 s in the same run (the least a cluster with a database can cost).
//!
//! `cargo build --release --workspace && cargo bench -p chatcluster-tests --bench idle`
//! (the bench runs the release binaries beside it)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chatcluster_common::procfs;
use chatcluster_tests::{local::LocalCluster, mariadb::MariaDb};

const IDLE: Duration = Duration::from_secs(10);

/// (name, share of one core, RSS in MiB) of each process over [`IDLE`].
fn measure(processes: &[(String, u32)]) -> Vec<(String, f64, f64)> {
    let before: Vec<f64> = processes
        .iter()
        .map(|(_, pid)| procfs::cpu_seconds(*pid).unwrap())
        .collect();
    let started = Instant::now();
    std::thread::sleep(IDLE);
    let elapsed = started.elapsed().as_secs_f64();
    processes
        .iter()
        .zip(before)
        .map(|((name, pid), before)| {
            let cpu = (procfs::cpu_seconds(*pid).unwrap() - before) / elapsed;
            let rss = procfs::rss_bytes(*pid).unwrap() as f64 / (1024.0 * 1024.0);
            (name.clone(), cpu, rss)
        })
        .collect()
}

fn main() {
    let baseline = {
        let db = MariaDb::start(1, &[]);
        std::thread::sleep(Duration::from_secs(2));
        measure(&[("bare mariadbd".into(), db.pid().unwrap())])
    };
    let (_, base_cpu, base_rss) = baseline[0].clone();

    let cluster = LocalCluster::start("examples/laptop.yaml");
    let figures = measure(&cluster.processes());

    println!(
        "idle for {} s after Ready (examples/laptop.yaml, release binaries)",
        IDLE.as_secs()
    );
    println!("| process | CPU % of a core | RSS MiB | CPU ÷ bare MariaDB | RSS ÷ bare MariaDB |");
    println!("|---|---|---|---|---|");
    let ratio = |x: f64, base: f64| {
        if base > 0.0 {
            format!("{:.2}", x / base)
        } else {
            "-".into()
        }
    };
    for (name, cpu, rss) in baseline.iter().chain(&figures) {
        println!(
            "| {name} | {:.2} | {rss:.0} | {} | {} |",
            cpu * 100.0,
            ratio(*cpu, base_cpu),
            ratio(*rss, base_rss)
        );
    }
    let cpu: f64 = figures.iter().map(|(_, c, _)| c).sum();
    let rss: f64 = figures.iter().map(|(_, _, r)| r).sum();
    println!(
        "| whole cluster | {:.2} | {rss:.0} | {} | {} |",
        cpu * 100.0,
        ratio(cpu, base_cpu),
        ratio(rss, base_rss)
    );
}
