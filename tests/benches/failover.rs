//! Failover benchmark with real MariaDB servers, in the shapes of `examples/laptop.yaml` (a
//! primary and one replica) and `examples/ha.yaml` (two replicas), with their defaults (10 s
//! failover timeout, semi-sync, a 1 s loop tick), under continuous acknowledged writes: the
//! primary is frozen (SIGSTOP) or killed (SIGKILL); once a replica took over, it is thawed or
//! restarted. Per run: the write pause (the longest gap between acknowledgements after the
//! fault), the time
//! from the fault's end to Ready (every server replicating from the new primary, semi-sync
//! sized), and acknowledged writes lost (must be 0). Then a planned switchover back, and its
//! write pause.
//!
//! Baseline, same run: the same killed server restarted in place (crash recovery, no
//! replicas) — how long writes stop without failover. Ratios are pause / baseline.
//!
//! `cargo bench -p chatcluster-tests --bench failover` (`FAILOVER_RUNS`, default 10 per case)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use chat_operator::topology::{
    manager::{self, Topology},
    plan::Policy,
    server::{Credentials, Member},
    status::{self, SemiSyncState},
};
use chatcluster_tests::{
    mariadb::{ADMIN_PASSWORD, MariaDb, REPL_PASSWORD},
    writer::Writer,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);
const FLAGS: &[&str] = &[
    "--read-only=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
];

fn runs() -> usize {
    std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Freeze,
    Kill,
}

struct Run {
    pause_ms: u64,
    /// The loop's own measure: primary last seen → new primary writable.
    promotion_ms: u64,
    ready_ms: u64,
    lost: usize,
    acked: usize,
    switchover_pause_ms: u64,
}

fn members(dbs: &[MariaDb]) -> Vec<Member> {
    dbs.iter()
        .enumerate()
        .map(|(i, d)| Member {
            name: format!("db-{i}"),
            host: d.host.clone(),
            port: d.port,
        })
        .collect()
}

fn ids(db: &MariaDb) -> BTreeSet<u64> {
    db.sql("SELECT id FROM chat.acks")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

async fn wait<F: Fn(&status::TopologyStatus) -> bool>(
    rx: &mut tokio::sync::watch::Receiver<status::TopologyStatus>,
    f: F,
) -> status::TopologyStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = rx.borrow_and_update().clone();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {s:#?}");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
}

/// The write pause: the longest gap between two acknowledgements around `fault` (a write in
/// flight when it struck may still be acknowledged just after it).
fn longest_gap_after(acks: &[chatcluster_tests::writer::Ack], fault: Instant) -> Duration {
    acks.windows(2)
        .filter(|w| w[1].at > fault)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

async fn failover_run(replicas: usize, fault: Fault) -> Run {
    let mut dbs: Vec<MariaDb> = std::thread::scope(|s| {
        let h: Vec<_> = (1..=u32::try_from(replicas).unwrap() + 1)
            .map(|id| s.spawn(move || MariaDb::start(id, FLAGS)))
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let policy = Policy {
        failover_timeout: TIMEOUT,
        ..Policy::default()
    };
    let credentials = Credentials {
        admin_user: "admin".into(),
        admin_password: ADMIN_PASSWORD.into(),
        repl_user: "repl".into(),
        repl_password: REPL_PASSWORD.into(),
        ca_pem: None,
    };
    let (topology, status) = Topology::new(members(&dbs), "db-0", credentials, policy).unwrap();
    let handle = manager::spawn(topology, status, TICK);
    let mut rx = handle.status.clone();
    wait(&mut rx, |s| {
        s.ready() && s.semi_sync == SemiSyncState::Waiting(1)
    })
    .await;
    dbs[0].sql(&Writer::create_table());
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(100, Duration::from_secs(30)).await;

    let faulted = Instant::now();
    match fault {
        Fault::Freeze => dbs[0].signal("STOP"),
        Fault::Kill => dbs[0].kill(),
    }
    let after = wait(&mut rx, |s| s.primary != "db-0" && s.primary_ready).await;
    let n = writer.acks().len();
    writer.wait_for(n + 20, Duration::from_secs(30)).await;
    match fault {
        Fault::Freeze => dbs[0].signal("CONT"),
        Fault::Kill => tokio::task::block_in_place(|| dbs[0].restart()),
    }
    let ended = Instant::now();
    wait(&mut rx, |s| {
        s.ready() && s.primary == after.primary && s.servers.len() == replicas + 1
    })
    .await;
    let ready_ms = ms(ended.elapsed());
    let record = handle.switchover("db-0").await.unwrap();
    let n = writer.acks().len();
    writer.wait_for(n + 20, Duration::from_secs(30)).await;
    let acks = writer.stop().await;
    let pause = longest_gap_after(&acks, faulted);
    let present = ids(&dbs[0]);
    Run {
        pause_ms: ms(pause),
        promotion_ms: after.last_promotion.as_ref().map_or(0, |p| p.duration_ms),
        ready_ms,
        lost: acks.iter().filter(|a| !present.contains(&a.id)).count(),
        acked: acks.len(),
        switchover_pause_ms: record.duration_ms,
    }
}

/// Writes stopped by killing a lone primary and restarting it in place.
async fn restart_run() -> u64 {
    let mut db = MariaDb::start(
        9,
        &["--sync-binlog=1", "--innodb-flush-log-at-trx-commit=1"],
    );
    db.sql(&Writer::create_table());
    let (tx, rx) = tokio::sync::watch::channel(status::TopologyStatus {
        primary: "db".into(),
        primary_address: db.address(),
        primary_ready: true,
        servers: vec![],
        semi_sync: SemiSyncState::Off,
        last_promotion: None,
        failover_pending: None,
        findings: vec![],
    });
    let writer = Writer::start(rx);
    writer.wait_for(300, Duration::from_secs(30)).await;
    db.kill();
    let killed = Instant::now();
    tokio::task::block_in_place(|| db.restart());
    let n = writer.acks().len();
    writer.wait_for(n + 100, Duration::from_secs(30)).await;
    let acks = writer.stop().await;
    drop(tx);
    ms(longest_gap_after(&acks, killed))
}

fn p50(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let runs = runs();
    let mut baseline = Vec::new();
    for _ in 0..runs {
        baseline.push(restart_run().await);
    }
    let base = p50(&baseline);
    println!(
        "baseline: lone primary killed and restarted in place: p50 {base} ms, max {} ms",
        baseline.iter().max().unwrap()
    );
    println!(
        "failover timeout {} ms, tick {} ms; writes acknowledged one at a time; {runs} runs each\n",
        TIMEOUT.as_millis(),
        TICK.as_millis()
    );
    println!(
        "| shape | fault | write pause p50 | max | p50 / baseline | loop: last seen → promoted p50 | fault end → Ready p50 | max | acknowledged | lost | switchover pause p50 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (shape, replicas) in [("laptop (1 replica)", 1), ("ha (2 replicas)", 2)] {
        for fault in [Fault::Freeze, Fault::Kill] {
            let mut done = Vec::new();
            for _ in 0..runs {
                done.push(failover_run(replicas, fault).await);
            }
            let pauses: Vec<u64> = done.iter().map(|r| r.pause_ms).collect();
            let ready: Vec<u64> = done.iter().map(|r| r.ready_ms).collect();
            let promoted: Vec<u64> = done.iter().map(|r| r.promotion_ms).collect();
            let switch: Vec<u64> = done.iter().map(|r| r.switchover_pause_ms).collect();
            let lost: usize = done.iter().map(|r| r.lost).sum();
            let acked: usize = done.iter().map(|r| r.acked).sum();
            println!(
                "| {shape} | {fault:?} | {} ms | {} ms | {:.1} | {} ms | {} ms | {} ms | {acked} | {lost} | {} ms | {} ms |",
                p50(&pauses),
                pauses.iter().max().unwrap(),
                p50(&pauses) as f64 / base.max(1) as f64,
                p50(&promoted),
                p50(&ready),
                ready.iter().max().unwrap(),
                p50(&switch),
                switch.iter().max().unwrap(),
            );
            assert_eq!(lost, 0, "acknowledged writes lost");
        }
    }
}
