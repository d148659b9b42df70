//! Local mode re-seeds a replica physically: a replica that took a write of its own (errant)
//! is replaced by a mariadb-backup copy of the primary's files, streamed into a directory
//! beside its own and swapped in; the runner's supervisor starts it again on the copy, and it
//! replicates and serves as before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use chatcluster_tests::{local::LocalCluster, mariadb::root_sql};

fn sql(socket: &Path, statement: &str) -> String {
    root_sql(socket, &["-N", "-B"], statement)
        .trim()
        .to_string()
}

fn replica_serves(status: &serde_json::Value) -> bool {
    status["database"]["servers"].as_array().is_some_and(|s| {
        s.iter()
            .any(|x| x["name"] == "db-1" && x["role"] == "replica" && x["error"].is_null())
    })
}

#[test]
fn an_errant_replica_is_reseeded_from_a_physical_copy() {
    let cluster = LocalCluster::start("examples/laptop.yaml");
    let home = cluster.dir.path().join("alice");
    cluster.chatctl(&home, &["register", "alice"]);
    cluster.chatctl(&home, &["group", "create", "friends"]);
    for i in 0..20 {
        cluster.chatctl(&home, &["send", "group:1", &format!("before {i}")]);
    }
    let primary = &cluster.plan.databases[0];
    let replica = &cluster.plan.databases[1];
    cluster.wait_for(
        "the replica serving",
        Duration::from_secs(30),
        replica_serves,
    );

    // A write on the replica itself (root passes read_only): errant.
    sql(&replica.socket(), "CREATE DATABASE errant");
    let pid = cluster.pid("db-1");
    cluster.wait_for(
        "the replica restarted on a copy and serving",
        Duration::from_secs(90),
        |s| replica_serves(s) && cluster.pid("db-1").is_some_and(|p| Some(p) != pid),
    );
    let log = std::fs::read_to_string(replica.dir.join("seed.log")).unwrap();
    assert!(log.contains("completed OK!"), "{log}");
    assert!(
        !replica.dir.join("data.old").exists(),
        "the old data is gone"
    );
    assert!(!replica.dir.join("seed.new").exists());
    assert!(
        !replica.dir.join("seed.cnf").exists(),
        "no password left on disk"
    );
    assert_eq!(
        sql(&replica.socket(), "SHOW DATABASES LIKE 'errant'"),
        "",
        "the errant write is gone"
    );

    // It replicates and serves as before.
    for i in 0..5 {
        cluster.chatctl(&home, &["send", "group:1", &format!("after {i}")]);
    }
    let count = "SELECT COUNT(*) FROM chat.groups_messages";
    let want = sql(&primary.socket(), count);
    assert_eq!(want, "25");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sql(&replica.socket(), count) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = cluster.chatctl(&home, &["history", "group:1", "--limit", "30"]);
    assert!(history.contains("after 4"), "{history}");
}
