//! Failover benchmark with real MariaDB servers: a primary and two replicas under continuous
//! acknowledged writes; the primary is killed (SIGKILL) and the time until the first write is
//! accepted again is measured, with and without semi-sync, over 5 runs each; then a planned
//! switchover's write pause. Every acknowledged write is checked on the new primary.
//!
//! Baseline, same run: the same killed server restarted in place (crash recovery, no
//! replicas) — how long writes stop without failover. Ratios are failover / baseline.
//!
//! `cargo bench -p chatcluster-tests --bench failover`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use chat_operator::topology::{
    manager::{self, Topology},
    plan::Policy,
    server::{Credentials, Member},
    status::{self, Role, SemiSyncState},
};
use chatcluster_tests::{
    mariadb::{ADMIN_PASSWORD, MariaDb, REPL_PASSWORD},
    writer::Writer,
};

const RUNS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(2);
const FLAGS: &[&str] = &[
    "--read-only=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
];

struct Run {
    failover_ms: u64,
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = rx.borrow_and_update().clone();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {s:#?}");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
}

async fn failover_run(semi_sync: bool) -> Run {
    let mut dbs: Vec<MariaDb> = std::thread::scope(|s| {
        let h: Vec<_> = (1..=3)
            .map(|id| s.spawn(move || MariaDb::start(id, FLAGS)))
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let policy = Policy {
        failover_timeout: TIMEOUT,
        semi_sync,
        ..Policy::default()
    };
    let credentials = Credentials {
        admin_user: "admin".into(),
        admin_password: ADMIN_PASSWORD.into(),
        repl_user: "repl".into(),
        repl_password: REPL_PASSWORD.into(),
    };
    let (topology, status) = Topology::new(members(&dbs), "db-0", credentials, policy).unwrap();
    let handle = manager::spawn(topology, status, Duration::from_millis(250));
    let mut rx = handle.status.clone();
    let want = if semi_sync {
        SemiSyncState::Waiting(1)
    } else {
        SemiSyncState::Off
    };
    wait(&mut rx, |s| {
        s.primary_ready && s.in_role(Role::Replica).len() == 2 && s.semi_sync == want
    })
    .await;
    dbs[0].sql(&Writer::create_table());
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(300, Duration::from_secs(30)).await;

    dbs[0].kill();
    let killed = Instant::now();
    let after = wait(&mut rx, |s| s.primary != "db-0" && s.primary_ready).await;
    let n = writer.acks().len();
    writer.wait_for(n + 100, Duration::from_secs(30)).await;
    let new: usize = after.primary.trim_start_matches("db-").parse().unwrap();
    let other = 3 - new;
    wait(&mut rx, |s| {
        s.servers.iter().any(|x| {
            x.name == format!("db-{other}") && x.role == Role::Replica && x.error.is_none()
        })
    })
    .await;
    let record = handle.switchover(&format!("db-{other}")).await.unwrap();
    let n = writer.acks().len();
    writer.wait_for(n + 100, Duration::from_secs(30)).await;
    let acks = writer.stop().await;
    let first = acks.iter().find(|a| a.at > killed).unwrap();
    let present = ids(&dbs[other]);
    Run {
        failover_ms: u64::try_from(first.at.duration_since(killed).as_millis()).unwrap(),
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
    let first = acks.iter().find(|a| a.at > killed).unwrap();
    u64::try_from(first.at.duration_since(killed).as_millis()).unwrap()
}

fn p50(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        baseline.push(restart_run().await);
    }
    let base = p50(&baseline);
    println!(
        "baseline: lone primary killed and restarted in place: p50 {base} ms, max {} ms",
        baseline.iter().max().unwrap()
    );
    println!(
        "failover timeout {} ms; writes acknowledged one at a time; {RUNS} runs each\n",
        TIMEOUT.as_millis()
    );
    println!(
        "| semi-sync | failover p50 | max | beyond the timeout p50 | p50 / baseline | writes acknowledged | lost | switchover pause p50 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for semi_sync in [true, false] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(failover_run(semi_sync).await);
        }
        let times: Vec<u64> = runs.iter().map(|r| r.failover_ms).collect();
        let pauses: Vec<u64> = runs.iter().map(|r| r.switchover_pause_ms).collect();
        let lost: usize = runs.iter().map(|r| r.lost).sum();
        let acked: usize = runs.iter().map(|r| r.acked).sum();
        println!(
            "| {} | {} ms | {} ms | {} ms | {:.2} | {acked} | {lost} | {} ms | {} ms |",
            if semi_sync { "on" } else { "off" },
            p50(&times),
            times.iter().max().unwrap(),
            p50(&times).saturating_sub(u64::try_from(TIMEOUT.as_millis()).unwrap()),
            p50(&times) as f64 / base.max(1) as f64,
            p50(&pauses),
            pauses.iter().max().unwrap(),
        );
        assert_eq!(lost, 0, "acknowledged writes lost");
    }
}
