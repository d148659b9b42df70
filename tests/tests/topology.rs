//! The topology loop against real MariaDB servers: a primary and two replicas, under
//! continuous acknowledged writes. Killed primary, restarted old primary, a real network cut,
//! an errant replica, a new replica whose source purged its binary logs, planned switchover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use chat_operator::topology::{
    manager::{self, Handle, Topology},
    plan::Policy,
    server::{Credentials, Member},
    status::{Role, SemiSyncState, TopologyStatus},
};
use chatcluster_tests::{
    mariadb::{ADMIN_PASSWORD, MariaDb, REPL_PASSWORD},
    netns::Netns,
    writer::{Ack, Writer},
};

/// Durable, GTID, semi-sync-capable servers that start read-only: only the loop makes a
/// server writable.
const FLAGS: &[&str] = &[
    "--read-only=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
];

fn credentials() -> Credentials {
    Credentials {
        admin_user: "admin".into(),
        admin_password: ADMIN_PASSWORD.into(),
        repl_user: "repl".into(),
        repl_password: REPL_PASSWORD.into(),
        ca_pem: None,
    }
}

fn policy() -> Policy {
    Policy {
        failover_timeout: Duration::from_secs(2),
        ..Policy::default()
    }
}

fn member(i: usize, db: &MariaDb) -> Member {
    Member {
        name: format!("db-{i}"),
        host: db.host.clone(),
        port: db.port,
    }
}

/// Three servers started side by side.
fn servers() -> Vec<MariaDb> {
    servers_n(3)
}

/// `n` servers started side by side.
fn servers_n(n: u32) -> Vec<MariaDb> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..=n)
            .map(|id| s.spawn(move || MariaDb::start(id, FLAGS)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn spawn_loop(dbs: &[MariaDb], policy: Policy) -> Handle {
    // The loop's log, shown for failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chatcluster_topology=info,chat_operator=info")
        .with_test_writer()
        .try_init();
    let members = dbs.iter().enumerate().map(|(i, d)| member(i, d)).collect();
    let (topology, status) = Topology::new(members, "db-0", credentials(), policy).unwrap();
    manager::spawn(topology, status, Duration::from_millis(250))
}

async fn wait_status(
    handle: &Handle,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&TopologyStatus) -> bool,
) -> TopologyStatus {
    let mut rx = handle.status.clone();
    let deadline = Instant::now() + timeout;
    loop {
        let now = rx.borrow_and_update().clone();
        if pred(&now) {
            return now;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last status: {now:#?}");
        }
    }
}

fn healthy(s: &TopologyStatus, primary: &str, replicas: usize) -> bool {
    s.primary == primary
        && s.primary_ready
        && s.in_role(Role::Replica).len() == replicas
        && s.servers.iter().all(|x| x.error.is_none())
}

/// A loop over three fresh servers, healthy, with the writer's table created.
async fn cluster(policy: Policy) -> (Vec<MariaDb>, Handle) {
    cluster_on(servers(), policy).await
}

/// A loop over `dbs` (`db-0` the primary), healthy, with the writer's table created.
async fn cluster_on(dbs: Vec<MariaDb>, policy: Policy) -> (Vec<MariaDb>, Handle) {
    let handle = spawn_loop(&dbs, policy);
    wait_status(
        &handle,
        "a healthy topology",
        Duration::from_secs(30),
        |s| healthy(s, "db-0", 2) && s.semi_sync == SemiSyncState::Waiting(1),
    )
    .await;
    dbs[0].sql(&Writer::create_table());
    (dbs, handle)
}

fn ids_on(db: &MariaDb) -> BTreeSet<u64> {
    db.sql("SELECT id FROM chat.acks")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

fn assert_none_lost(acks: &[Ack], db: &MariaDb) {
    let present = ids_on(db);
    let lost: Vec<u64> = acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acks.len()
    );
}

/// Wait until the old primary (`db-0`) serves as a replica of `primary` and has caught up.
async fn rejoined(handle: &Handle, dbs: &[MariaDb], primary: &str) {
    wait_status(
        handle,
        "the old primary rejoining",
        Duration::from_secs(60),
        |s| healthy(s, primary, 2),
    )
    .await;
    let index: usize = primary.trim_start_matches("db-").parse().unwrap();
    dbs[0].wait_caught_up(&dbs[index]);
}

fn index_of(status: &TopologyStatus) -> usize {
    status.primary.trim_start_matches("db-").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_primary_fails_over_without_losing_acknowledged_writes_and_rejoins() {
    let (mut dbs, handle) = cluster(policy()).await;
    let writer = Writer::start(handle.status.clone());
    assert!(writer.wait_for(200, Duration::from_secs(30)).await >= 200);

    dbs[0].kill();
    let killed = Instant::now();
    let after = wait_status(&handle, "a failover", Duration::from_secs(30), |s| {
        s.primary != "db-0" && s.primary_ready
    })
    .await;
    let promotion = after.last_promotion.clone().unwrap();
    assert_eq!(promotion.from, "db-0");
    assert_eq!(promotion.reason, "primary unreachable");
    let before = writer.acks().len();
    assert!(writer.wait_for(before + 200, Duration::from_secs(30)).await >= before + 200);
    let acks = writer.stop().await;
    let first_after = acks.iter().find(|a| a.at > killed).unwrap();
    eprintln!(
        "failover: {} ms from kill to the first write accepted ({} acknowledged writes)",
        first_after.at.duration_since(killed).as_millis(),
        acks.len()
    );
    let new_primary = index_of(&after);
    assert_none_lost(&acks, &dbs[new_primary]);
    // The other replica follows the new primary and has everything too.
    let other = 3 - new_primary;
    wait_status(
        &handle,
        "the other replica following",
        Duration::from_secs(30),
        |s| {
            s.servers.iter().any(|x| {
                x.name == format!("db-{other}") && x.role == Role::Replica && x.error.is_none()
            })
        },
    )
    .await;
    dbs[other].wait_caught_up(&dbs[new_primary]);
    assert_none_lost(&acks, &dbs[other]);

    // The old primary comes back: fenced and turned into a replica of the new one.
    dbs[0].restart();
    rejoined(&handle, &dbs, &after.primary).await;
    assert_eq!(dbs[0].sql("SELECT @@read_only"), "1");
    assert_none_lost(&acks, &dbs[0]);
    assert_eq!(ids_on(&dbs[0]), ids_on(&dbs[new_primary]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errant_replica_is_never_promoted_and_is_reseeded() {
    let (mut dbs, handle) = cluster(Policy {
        reseed: false,
        ..policy()
    })
    .await;
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(50, Duration::from_secs(30)).await;
    let acks = writer.stop().await;
    dbs[1].wait_caught_up(&dbs[0]);

    // A transaction written on the replica directly (root bypasses read_only).
    dbs[1].sql("INSERT INTO chat.acks (id) VALUES (1000000)");
    let seen = wait_status(
        &handle,
        "the errant replica",
        Duration::from_secs(30),
        |s| s.in_role(Role::Errant) == ["db-1"],
    )
    .await;
    let why = seen.servers.iter().find(|s| s.name == "db-1").unwrap();
    assert!(
        why.error.as_deref().unwrap_or("").contains("primary lacks"),
        "{why:?}"
    );

    // The primary dies: only the healthy replica may take over.
    dbs[0].kill();
    let after = wait_status(&handle, "a failover", Duration::from_secs(30), |s| {
        s.primary != "db-0" && s.primary_ready
    })
    .await;
    assert_eq!(after.primary, "db-2", "{after:#?}");
    assert_none_lost(&acks, &dbs[2]);

    // Allowed to, the loop re-seeds it from the new primary.
    handle.set_policy(policy()).await;
    wait_status(
        &handle,
        "the errant replica re-seeded",
        Duration::from_secs(60),
        |s| {
            s.servers
                .iter()
                .any(|x| x.name == "db-1" && x.role == Role::Replica && x.error.is_none())
        },
    )
    .await;
    dbs[2].sql("INSERT INTO chat.acks (id) VALUES (2000000)");
    dbs[1].wait_caught_up(&dbs[2]);
    let ids = ids_on(&dbs[1]);
    assert!(!ids.contains(&1_000_000), "the errant row is gone");
    assert!(ids.contains(&2_000_000), "it replicates again");
    assert_eq!(ids, ids_on(&dbs[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_replica_whose_source_purged_its_binlogs_is_seeded() {
    let mut dbs = servers();
    let fresh = dbs.pop().unwrap();
    let handle = spawn_loop(&dbs, policy());
    wait_status(
        &handle,
        "primary and one replica",
        Duration::from_secs(30),
        |s| healthy(s, "db-0", 1),
    )
    .await;
    dbs[0].sql(&Writer::create_table());
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(100, Duration::from_secs(30)).await;
    // Nothing before this point can be replicated any more.
    dbs[0].sql("FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 SECOND");
    let mut members: Vec<Member> = dbs.iter().enumerate().map(|(i, d)| member(i, d)).collect();
    members.push(member(2, &fresh));
    handle.set_members(members).await;
    wait_status(
        &handle,
        "the new replica serving",
        Duration::from_secs(60),
        |s| healthy(s, "db-0", 2),
    )
    .await;
    let acks = writer.stop().await;
    fresh.wait_caught_up(&dbs[0]);
    assert_none_lost(&acks, &fresh);
    assert_eq!(ids_on(&fresh), ids_on(&dbs[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_under_writes_loses_nothing() {
    let (dbs, handle) = cluster(policy()).await;
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(100, Duration::from_secs(30)).await;
    let record = handle.switchover("db-1").await.unwrap();
    assert_eq!((record.from.as_str(), record.to.as_str()), ("db-0", "db-1"));
    assert!(
        record.duration_ms < 5000,
        "write pause {} ms",
        record.duration_ms
    );
    eprintln!("switchover: write pause {} ms", record.duration_ms);
    let before = writer.acks().len();
    writer.wait_for(before + 100, Duration::from_secs(30)).await;
    let acks = writer.stop().await;
    assert_none_lost(&acks, &dbs[1]);
    wait_status(
        &handle,
        "old primary following",
        Duration::from_secs(30),
        |s| healthy(s, "db-1", 2),
    )
    .await;
    dbs[0].wait_caught_up(&dbs[1]);
    assert_eq!(ids_on(&dbs[0]), ids_on(&dbs[1]));
    assert_eq!(dbs[0].sql("SELECT @@read_only"), "1");
    // Refusals name the problem.
    let err = handle.switchover("db-1").await.unwrap_err().to_string();
    assert!(err.contains("already the primary"), "{err}");
    let err = handle.switchover("db-9").await.unwrap_err().to_string();
    assert!(err.contains("not a member"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_primary_is_replaced_and_acknowledges_nothing_alone() {
    // The primary runs behind a link that can be cut; the replicas listen where it can reach
    // them once the link is back.
    let ns = Netns::new();
    let ns_ref = &ns;
    let (primary, replicas) = std::thread::scope(|s| {
        let p = s.spawn(move || {
            MariaDb::start_at(1, FLAGS, &ns_ref.ns_ip, &ns_ref.ns_ip, Some(&ns_ref.name))
        });
        let r: Vec<_> = (2..=3)
            .map(|id| {
                s.spawn(move || MariaDb::start_at(id, FLAGS, "0.0.0.0", &ns_ref.host_ip, None))
            })
            .collect();
        (
            p.join().unwrap(),
            r.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(),
        )
    });
    let mut dbs = vec![primary];
    dbs.extend(replicas);
    let (mut dbs, handle) = cluster_on(dbs, policy()).await;
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(100, Duration::from_secs(30)).await;

    ns.cut();
    let after = wait_status(&handle, "a failover", Duration::from_secs(30), |s| {
        s.primary != "db-0" && s.primary_ready
    })
    .await;
    let before = writer.acks().len();
    writer.wait_for(before + 100, Duration::from_secs(30)).await;

    // The cut-off primary still runs; an ordinary client on its side gets no acknowledgement
    // (semi-sync has no replica to wait for, and never falls back to asynchronous).
    let direct = std::process::Command::new("timeout")
        .args([
            "3",
            "ip",
            "netns",
            "exec",
            &ns.name,
            "mariadb",
            "--no-defaults",
        ])
        .arg(format!("-h{}", ns.ns_ip))
        .arg(format!("-P{}", dbs[0].port))
        .args([
            "-uchat",
            "-pchat-pw",
            "-e",
            "INSERT INTO chat.acks (id) VALUES (3000000)",
        ])
        .status()
        .unwrap();
    assert!(
        !direct.success(),
        "the partitioned primary acknowledged a write"
    );

    let acks = writer.stop().await;
    let new_primary = index_of(&after);
    assert_none_lost(&acks, &dbs[new_primary]);
    assert!(!ids_on(&dbs[new_primary]).contains(&3_000_000));

    // Healed, the old primary is fenced and rejoins (re-seeded if it kept a write the
    // others never received); exactly one writable server all along.
    ns.heal();
    rejoined(&handle, &dbs, &after.primary).await;
    let writable: Vec<usize> = (0..3)
        .filter(|&i| dbs[i].sql("SELECT @@read_only") == "0")
        .collect();
    assert_eq!(writable, [new_primary]);
    assert_eq!(ids_on(&dbs[0]), ids_on(&dbs[new_primary]));
    dbs[0].kill();
}

/// The laptop shape: a primary and one replica under the loop, healthy, with the writer's
/// table created.
async fn pair() -> (Vec<MariaDb>, Handle) {
    let dbs = servers_n(2);
    let handle = spawn_loop(&dbs, policy());
    wait_status(&handle, "a healthy pair", Duration::from_secs(30), |s| {
        healthy(s, "db-0", 1) && s.semi_sync == SemiSyncState::Waiting(1)
    })
    .await;
    dbs[0].sql(&Writer::create_table());
    (dbs, handle)
}

/// The laptop shape, one replica. The replication stream is cut first, so the primary's next
/// commit waits in its binary log for an acknowledgement that cannot come; then the primary
/// freezes. The replica is promoted (nothing acknowledged is lost), and the thawed old primary
/// holds a commit nobody else has: the new primary refuses it (1236). That refusal is the old
/// primary's problem, not a cut between the new primary and its replicas: it is re-seeded and
/// the cluster is healthy again by itself (it used to fail over again, every tick, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diverged_old_primary_with_one_replica_is_reseeded_and_the_cluster_heals() {
    let (dbs, handle) = pair().await;
    dbs[0].sql("INSERT INTO chat.acks (id) VALUES (1)");
    dbs[1].wait_caught_up(&dbs[0]);

    // Cut the replication stream: the replica may no longer replicate (outside the binary
    // log, so the replica keeps its grants) and its stream ends. (Stopping its receiver would
    // not do: the loop starts a stopped receiver again.)
    dbs[0].sql(
        "SET SESSION sql_log_bin = 0; REVOKE REPLICATION SLAVE ON *.* FROM 'repl'@'%'; FLUSH PRIVILEGES",
    );
    for id in dbs[0]
        .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
        .lines()
    {
        dbs[0].sql(&format!("KILL {id}"));
    }
    let mut pending = dbs[0]
        .sql_command("INSERT INTO chat.acks (id) VALUES (2)")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pending.try_wait().unwrap().is_none(),
        "the commit waits for an acknowledgement"
    );
    dbs[0].signal("STOP");
    wait_status(
        &handle,
        "the replica promoted",
        Duration::from_secs(30),
        |s| s.primary == "db-1" && s.primary_ready,
    )
    .await;
    // The new primary takes writes: its GTIDs move past the old primary's, so the old
    // primary's extra commit no longer shows as errant by position, only as a divergence when
    // it asks the new primary for what follows.
    for id in 3..=10 {
        dbs[1].sql(&format!("INSERT INTO chat.acks (id) VALUES ({id})"));
    }
    dbs[0].signal("CONT");
    let thawed = Instant::now();

    wait_status(
        &handle,
        "the cluster healed",
        Duration::from_secs(30),
        |s| healthy(s, "db-1", 1),
    )
    .await;
    eprintln!("healthy {:?} after the thaw", thawed.elapsed());
    // The waiting commit was never acknowledged: its client was cut off when the old primary
    // was fenced.
    let status = pending.wait().unwrap();
    assert!(
        !status.success(),
        "the unacknowledged insert reported success"
    );
    dbs[0].wait_caught_up(&dbs[1]);
    let acknowledged: BTreeSet<u64> = [1].into_iter().chain(3..=10).collect();
    assert_eq!(ids_on(&dbs[1]), acknowledged);
    assert_eq!(
        ids_on(&dbs[0]),
        acknowledged,
        "the old primary was re-seeded"
    );
}

/// How the primary fails in [`fault_under_writes`].
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGSTOP: its connections stay open and silent; its replicas' receivers hang on them.
    Freeze,
    /// SIGKILL, then a restart.
    Kill,
}

/// The run in a given shape: acknowledged writes one at a time, the primary frozen or
/// killed, a replica promoted (within the failover timeout plus a few seconds: stopping a
/// receiver that hangs on a frozen source takes MariaDB 2 s, and the failover must not give up
/// there), the fault ended (thaw, or restart); nothing acknowledged is lost, and every server
/// replicates from the new primary, semi-sync sized, within 30 s of the fault's end.
async fn fault_under_writes(replicas: usize, fault: Fault) {
    let mut dbs = servers_n(u32::try_from(replicas).unwrap() + 1);
    let handle = spawn_loop(&dbs, policy());
    wait_status(&handle, "a healthy cluster", Duration::from_secs(30), |s| {
        healthy(s, "db-0", replicas) && s.semi_sync == SemiSyncState::Waiting(1)
    })
    .await;
    dbs[0].sql(&Writer::create_table());
    let writer = Writer::start(handle.status.clone());
    writer.wait_for(50, Duration::from_secs(30)).await;
    let faulted = Instant::now();
    match fault {
        Fault::Freeze => dbs[0].signal("STOP"),
        Fault::Kill => dbs[0].kill(),
    }
    let after = wait_status(
        &handle,
        "a replica promoted",
        Duration::from_secs(30),
        |s| s.primary != "db-0" && s.primary_ready,
    )
    .await;
    let promoted = faulted.elapsed();
    assert!(
        promoted < Duration::from_secs(10),
        "promoted only after {promoted:?}"
    );
    let n = writer.acks().len();
    writer.wait_for(n + 20, Duration::from_secs(10)).await;
    match fault {
        Fault::Freeze => dbs[0].signal("CONT"),
        Fault::Kill => tokio::task::block_in_place(|| dbs[0].restart()),
    }
    let ended = Instant::now();
    let ready = wait_status(
        &handle,
        "every server replicating from the new primary",
        Duration::from_secs(30),
        |s| s.ready() && s.primary == after.primary && s.servers.len() == replicas + 1,
    )
    .await;
    eprintln!(
        "{fault:?} with {replicas} replica(s): promoted {promoted:?} after the fault, Ready {:?} after it ended",
        ended.elapsed()
    );
    let n = writer.acks().len();
    writer.wait_for(n + 20, Duration::from_secs(10)).await;
    let acks = writer.stop().await;
    assert_none_lost(&acks, &dbs[index_of(&ready)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_with_one_replica_is_replaced_and_the_pair_heals() {
    fault_under_writes(1, Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_with_one_replica_is_replaced_and_the_pair_heals() {
    fault_under_writes(1, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_with_two_replicas_is_replaced_and_the_cluster_heals() {
    fault_under_writes(2, Fault::Freeze).await;
}

/// A re-seed streams the primary's tables through the operator in bounded batches: a table
/// several batches large, binary values and NULLs arrive intact, and the replica's errant row
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reseed_copies_a_table_larger_than_a_batch_intact() {
    let (dbs, handle) = pair().await;
    dbs[0].sql(
        "CREATE TABLE chat.big (id INT PRIMARY KEY, b LONGBLOB, t TEXT NULL); \
         INSERT INTO chat.big SELECT seq, REPEAT(UNHEX(SHA2(seq, 256)), 32), \
         IF(seq % 7 = 0, NULL, CONCAT('row ', seq, ' ''quoted'' \\\\ back')) FROM chat.seq_1_to_4000",
    );
    dbs[1].wait_caught_up(&dbs[0]);
    // Errant: written on the replica directly.
    dbs[1].sql("INSERT INTO chat.acks (id) VALUES (999999)");
    wait_status(
        &handle,
        "the errant replica",
        Duration::from_secs(30),
        |s| s.in_role(Role::Errant) == ["db-1"] || s.in_role(Role::Seeding) == ["db-1"],
    )
    .await;
    wait_status(
        &handle,
        "the replica re-seeded",
        Duration::from_secs(60),
        |s| healthy(s, "db-0", 1),
    )
    .await;
    dbs[0].sql("INSERT INTO chat.acks (id) VALUES (1)");
    dbs[1].wait_caught_up(&dbs[0]);
    let checksum = |db: &MariaDb| db.sql("CHECKSUM TABLE chat.big");
    assert_eq!(checksum(&dbs[0]), checksum(&dbs[1]));
    assert_eq!(
        dbs[1].sql("SELECT COUNT(*) FROM chat.big WHERE t IS NULL"),
        "571"
    );
    assert_eq!(ids_on(&dbs[1]), BTreeSet::from([1]));
    let staging = dbs[1].sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '\\_chatcluster\\_seed\\_%'");
    assert_eq!(staging, "0", "no staging schema left");
}

/// Someone stops a replica's replication: the loop starts it again (a stopped receiver is no
/// sign of a cut), and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_replica_is_started_again() {
    let (dbs, handle) = pair().await;
    dbs[1].sql("STOP SLAVE");
    dbs[0].sql("INSERT INTO chat.acks (id) VALUES (1)");
    wait_status(
        &handle,
        "replication running again",
        Duration::from_secs(10),
        |s| healthy(s, "db-0", 1),
    )
    .await;
    dbs[1].wait_caught_up(&dbs[0]);
    assert_eq!(ids_on(&dbs[1]), BTreeSet::from([1]));
}
