//! The MariaDB harness itself: a primary and a GTID replica that follows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chatcluster_tests::mariadb::MariaDb;

#[test]
fn replica_follows_primary_and_can_lag() {
    let primary = MariaDb::start(1, &[]);
    let replica = MariaDb::start(2, &[]);
    replica.replicate_from(&primary);
    primary.sql("CREATE TABLE chat.t (id INT PRIMARY KEY); INSERT INTO chat.t VALUES (1)");
    replica.wait_caught_up(&primary);
    assert_eq!(replica.sql("SELECT COUNT(*) FROM chat.t"), "1");
    assert_eq!(replica.sql("SELECT @@read_only"), "1");

    replica.pause_apply();
    primary.sql("INSERT INTO chat.t VALUES (2)");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        replica.sql("SELECT COUNT(*) FROM chat.t"),
        "1",
        "paused replica lags"
    );
    replica.resume_apply();
    replica.wait_caught_up(&primary);
    assert_eq!(replica.sql("SELECT COUNT(*) FROM chat.t"), "2");
    assert_eq!(
        replica.gtid_current_pos(),
        primary.sql("SELECT @@gtid_binlog_pos")
    );
}
