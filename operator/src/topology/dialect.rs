//! The replication statements of each engine, chosen from `VERSION()`. MySQL 8.4 has no
//! server here to run against, so its statements are checked for their exact text; MariaDB's
//! are also run against real servers by the topology tests.

use std::fmt::Write as _;

/// Where a replica replicates from, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// Host of the primary.
    pub host: &'a str,
    /// Port of the primary.
    pub port: u16,
    /// Replication user.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
    /// Replicate over TLS (when the cluster has certificates).
    pub tls: bool,
}

/// Statements that differ between engines.
pub trait Dialect: Send + Sync {
    /// Query returning the executed GTID set.
    fn executed_gtids(&self) -> &'static str;
    /// Point this server at `source`, resuming from its own GTID position.
    fn change_source(&self, source: &Source<'_>) -> String;
    /// Start replicating.
    fn start_replica(&self) -> &'static str;
    /// Stop replicating (both threads).
    fn stop_replica(&self) -> &'static str;
    /// Stop receiving new transactions, keep applying the received ones.
    fn stop_io_thread(&self) -> &'static str;
    /// Query waiting up to `?` seconds until the server has applied GTID set `?` (0 = done).
    fn wait_for_gtids(&self) -> &'static str;
    /// Make this server refuse writes (fence it).
    fn make_read_only(&self) -> &'static str;
    /// Make this server the primary: stop and forget replication, accept writes.
    fn promote(&self) -> Vec<&'static str>;
    /// Lossless semi-sync as a primary, waiting for `wait_count` replicas.
    fn semi_sync_source(&self, wait_count: u32) -> Vec<String>;
    /// Semi-sync as a replica.
    fn semi_sync_replica(&self) -> &'static str;
}

/// MySQL 8.4 (the `REPLICA`/`SOURCE` vocabulary; `super_read_only` also binds SUPER users).
#[derive(Debug, Clone, Copy, Default)]
pub struct MySql;

/// MariaDB 10.11 and later (`SLAVE`/`MASTER` vocabulary, GTIDs in `gtid_slave_pos`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MariaDb;

/// Quote a string literal for SQL.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Dialect for MySql {
    fn executed_gtids(&self) -> &'static str {
        "SELECT @@GLOBAL.gtid_executed"
    }
    fn change_source(&self, s: &Source<'_>) -> String {
        let mut sql = format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST={}, SOURCE_PORT={}, SOURCE_USER={}, SOURCE_PASSWORD={}, SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, GET_SOURCE_PUBLIC_KEY=1",
            quote(s.host),
            s.port,
            quote(s.user),
            quote(s.password)
        );
        if s.tls {
            let _ = write!(sql, ", SOURCE_SSL=1");
        }
        sql
    }
    fn start_replica(&self) -> &'static str {
        "START REPLICA"
    }
    fn stop_replica(&self) -> &'static str {
        "STOP REPLICA"
    }
    fn stop_io_thread(&self) -> &'static str {
        "STOP REPLICA IO_THREAD"
    }
    fn wait_for_gtids(&self) -> &'static str {
        "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
    }
    fn make_read_only(&self) -> &'static str {
        "SET GLOBAL super_read_only = ON"
    }
    fn promote(&self) -> Vec<&'static str> {
        vec![
            "STOP REPLICA",
            "RESET REPLICA ALL",
            "SET GLOBAL super_read_only = OFF",
            "SET GLOBAL read_only = OFF",
        ]
    }
    fn semi_sync_source(&self, wait_count: u32) -> Vec<String> {
        vec![
            "SET GLOBAL rpl_semi_sync_source_wait_point = 'AFTER_SYNC'".into(),
            format!(
                "SET GLOBAL rpl_semi_sync_source_wait_for_replica_count = {}",
                wait_count.max(1)
            ),
            "SET GLOBAL rpl_semi_sync_source_enabled = ON".into(),
        ]
    }
    fn semi_sync_replica(&self) -> &'static str {
        "SET GLOBAL rpl_semi_sync_replica_enabled = ON"
    }
}

impl Dialect for MariaDb {
    fn executed_gtids(&self) -> &'static str {
        "SELECT @@GLOBAL.gtid_current_pos"
    }
    fn change_source(&self, s: &Source<'_>) -> String {
        let mut sql = format!(
            "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            quote(s.host),
            s.port,
            quote(s.user),
            quote(s.password)
        );
        if s.tls {
            let _ = write!(sql, ", MASTER_SSL=1");
        }
        sql
    }
    fn start_replica(&self) -> &'static str {
        "START SLAVE"
    }
    fn stop_replica(&self) -> &'static str {
        "STOP SLAVE"
    }
    fn stop_io_thread(&self) -> &'static str {
        "STOP SLAVE IO_THREAD"
    }
    fn wait_for_gtids(&self) -> &'static str {
        "SELECT MASTER_GTID_WAIT(?, ?)"
    }
    fn make_read_only(&self) -> &'static str {
        "SET GLOBAL read_only = ON"
    }
    fn promote(&self) -> Vec<&'static str> {
        vec![
            "STOP SLAVE",
            "RESET SLAVE ALL",
            "SET GLOBAL read_only = OFF",
        ]
    }
    fn semi_sync_source(&self, _wait_count: u32) -> Vec<String> {
        // MariaDB waits for one acknowledgement; its semi-sync has no wait count.
        vec![
            "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'".into(),
            "SET GLOBAL rpl_semi_sync_master_enabled = ON".into(),
        ]
    }
    fn semi_sync_replica(&self) -> &'static str {
        "SET GLOBAL rpl_semi_sync_slave_enabled = ON"
    }
}

/// The dialect of a server reporting `version` from `SELECT VERSION()`.
pub fn for_version(version: &str) -> &'static dyn Dialect {
    if version.to_ascii_lowercase().contains("mariadb") {
        &MariaDb
    } else {
        &MySql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(tls: bool) -> Source<'static> {
        Source {
            host: "demo-db-replica-0.demo-db.chat.svc",
            port: 3306,
            user: "repl",
            password: "p'w\\d",
            tls,
        }
    }

    #[test]
    fn chosen_from_version() {
        assert_eq!(
            for_version("10.11.14-MariaDB-0+deb12u2-log").start_replica(),
            "START SLAVE"
        );
        assert_eq!(for_version("8.4.6").start_replica(), "START REPLICA");
    }

    #[test]
    fn mysql_statements_exact_text() {
        assert_eq!(
            MySql.change_source(&source(false)),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='demo-db-replica-0.demo-db.chat.svc', SOURCE_PORT=3306, SOURCE_USER='repl', SOURCE_PASSWORD='p''w\\\\d', SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, GET_SOURCE_PUBLIC_KEY=1"
        );
        assert!(
            MySql
                .change_source(&source(true))
                .ends_with(", SOURCE_SSL=1")
        );
        assert_eq!(MySql.stop_io_thread(), "STOP REPLICA IO_THREAD");
        assert_eq!(MySql.make_read_only(), "SET GLOBAL super_read_only = ON");
        assert_eq!(
            MySql.promote(),
            [
                "STOP REPLICA",
                "RESET REPLICA ALL",
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert_eq!(
            MySql.semi_sync_source(2),
            [
                "SET GLOBAL rpl_semi_sync_source_wait_point = 'AFTER_SYNC'",
                "SET GLOBAL rpl_semi_sync_source_wait_for_replica_count = 2",
                "SET GLOBAL rpl_semi_sync_source_enabled = ON"
            ]
        );
        assert_eq!(
            MySql.semi_sync_replica(),
            "SET GLOBAL rpl_semi_sync_replica_enabled = ON"
        );
        assert_eq!(MySql.executed_gtids(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(
            MySql.wait_for_gtids(),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
        );
    }

    #[test]
    fn mariadb_statements_exact_text() {
        assert_eq!(
            MariaDb.change_source(&source(false)),
            "CHANGE MASTER TO MASTER_HOST='demo-db-replica-0.demo-db.chat.svc', MASTER_PORT=3306, MASTER_USER='repl', MASTER_PASSWORD='p''w\\\\d', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        );
        assert_eq!(
            MariaDb.promote(),
            [
                "STOP SLAVE",
                "RESET SLAVE ALL",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert_eq!(MariaDb.executed_gtids(), "SELECT @@GLOBAL.gtid_current_pos");
    }
}
