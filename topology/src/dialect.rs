//! The replication statements of each engine, chosen from `VERSION()`. MySQL 8.4 has no
//! server here to run against, so its statements are checked for their exact text; MariaDB's
//! are also run against real servers by the topology tests.

use std::fmt::Write as _;

use super::gtid::{GtidSet, ParseError};

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
    /// Replicate over TLS, verifying the source's certificate (its name included) against
    /// the CA at this path on the replica; `None`: plain text.
    pub tls: Option<&'a str>,
}

/// Column names of the engine's replica status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaColumns {
    /// `Yes` / `Connecting` / `No`.
    pub io_running: &'static str,
    /// `Yes` / `No`.
    pub sql_running: &'static str,
    /// Host replicated from.
    pub source_host: &'static str,
    /// Port replicated from.
    pub source_port: &'static str,
    /// Last receiver error number and text.
    pub io_errno: &'static str,
    /// See `io_errno`.
    pub io_error: &'static str,
    /// Last applier error number and text.
    pub sql_errno: &'static str,
    /// See `sql_errno`.
    pub sql_error: &'static str,
    /// GTIDs received (possibly not applied yet).
    pub received: &'static str,
    /// `Yes` when replication is configured over TLS.
    pub ssl: &'static str,
}

/// How a replica is re-seeded from the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// Copy the application schemas from a consistent snapshot (MariaDB has no clone).
    Logical,
    /// Run these statements on the replica: the server copies itself and restarts.
    Clone(Vec<String>),
}

/// Statements that differ between engines.
pub trait Dialect: Send + Sync {
    /// Parse the engine's GTID notation.
    fn parse_gtids(&self, text: &str) -> Result<GtidSet, ParseError>;
    /// Query returning the executed GTID set.
    fn executed_gtids(&self) -> &'static str;
    /// Expression giving, right after a commit on the same connection, a GTID set
    /// containing that commit: the read-your-writes token chatd hands its clients, which a
    /// replica waits for with [`wait_for_gtids`](Self::wait_for_gtids). An expression, so a
    /// sender can read it in the same query as its message's seq.
    fn commit_token(&self) -> &'static str;
    /// Whether `INSERT … RETURNING` and `JSON_TABLE` exist (MariaDB 10.6 on): a batch of
    /// sends is then one statement that learns each message's seq. Without them every send
    /// is its own.
    fn insert_returning(&self) -> bool;
    /// Make every later statement of this session give up after `ms` milliseconds (0: no
    /// limit). MariaDB bounds every statement; MySQL bounds only SELECTs, and writes are
    /// bounded by the lock wait timeout.
    fn statement_timeout(&self, ms: u64) -> String;
    /// The replica status statement (one row when replication is configured).
    fn replica_status(&self) -> &'static str;
    /// Its column names.
    fn replica_columns(&self) -> ReplicaColumns;
    /// Before pointing a server that may have been a primary at a source: make it resume from
    /// everything it has executed, not only what it replicated.
    fn adopt_own_position(&self) -> Option<&'static str>;
    /// Forget replication settings.
    fn reset_replica(&self) -> &'static str;
    /// Forget this server's binary logs and GTID history (re-seeding).
    fn reset_binlog(&self) -> &'static str;
    /// Declare `gtids` applied (after re-seeding from a snapshot at that position).
    fn set_applied(&self, gtids: &str) -> String;
    /// How a replica is re-seeded from `source`.
    fn seed(&self, source: &Source<'_>) -> Seed;
    /// Turn the primary's semi-sync off (degraded: no caught-up replica to wait for).
    fn semi_sync_source_off(&self) -> &'static str;
    /// Re-read the server's certificate and key files (the server reads them only at start
    /// and on this statement); new connections get the new ones.
    fn reload_tls(&self) -> &'static str;
    /// What the topology loop's user is granted on `*.*` (no GRANT OPTION, no ALL): control
    /// replication and semi-sync, switch read-only, end client sessions, and re-seed the
    /// application schemas on a read-only server.
    fn admin_privileges(&self) -> &'static str;
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
    /// Lossless semi-sync as a primary, waiting for `wait_count` replicas. The server's own
    /// fall-back to asynchronous commits is pushed out to a day: a primary cut off from its
    /// replicas must not acknowledge writes by itself; the topology loop, which sees every
    /// server, decides when to degrade.
    fn semi_sync_source(&self, wait_count: u32) -> Vec<String>;
    /// Semi-sync as a replica.
    fn semi_sync_replica(&self) -> &'static str;
    /// How long a replica's receiver waits on a silent source ([`NET_TIMEOUT_SECONDS`]).
    fn net_timeout(&self) -> String;
    /// The variable saying whether commits wait for a semi-sync acknowledgement.
    fn semi_sync_source_enabled(&self) -> &'static str;
}

/// MySQL 8.4 (the `REPLICA`/`SOURCE` vocabulary; `super_read_only` also binds SUPER users).
#[derive(Debug, Clone, Copy, Default)]
pub struct MySql;

/// MariaDB 10.11 and later (`SLAVE`/`MASTER` vocabulary, GTIDs in `gtid_slave_pos`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MariaDb;

/// How long a primary waits for a semi-sync acknowledgement before committing without one.
const SEMI_SYNC_TIMEOUT_MS: u64 = 86_400_000;
/// Seconds between heartbeats a source sends an idle replica.
pub const HEARTBEAT_SECONDS: u32 = 1;
/// Seconds of silence after which a replica's receiver gives up on its source and reconnects
/// (the engines' default is 60): with a heartbeat every second, a replica notices a dead or
/// frozen primary within this, and the loop sees it cut off.
pub const NET_TIMEOUT_SECONDS: u32 = 4;

/// Quote a string literal for SQL.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Dialect for MySql {
    fn parse_gtids(&self, text: &str) -> Result<GtidSet, ParseError> {
        GtidSet::parse_mysql(text)
    }
    fn replica_status(&self) -> &'static str {
        "SHOW REPLICA STATUS"
    }
    fn replica_columns(&self) -> ReplicaColumns {
        ReplicaColumns {
            io_running: "Replica_IO_Running",
            sql_running: "Replica_SQL_Running",
            source_host: "Source_Host",
            source_port: "Source_Port",
            io_errno: "Last_IO_Errno",
            io_error: "Last_IO_Error",
            sql_errno: "Last_SQL_Errno",
            sql_error: "Last_SQL_Error",
            received: "Retrieved_Gtid_Set",
            ssl: "Source_SSL_Allowed",
        }
    }
    fn adopt_own_position(&self) -> Option<&'static str> {
        // Auto-positioning already sends everything in gtid_executed.
        None
    }
    fn reset_replica(&self) -> &'static str {
        "RESET REPLICA ALL"
    }
    fn reset_binlog(&self) -> &'static str {
        "RESET BINARY LOGS AND GTIDS"
    }
    fn set_applied(&self, gtids: &str) -> String {
        format!("SET GLOBAL gtid_purged = {}", quote(gtids))
    }
    fn seed(&self, s: &Source<'_>) -> Seed {
        let mut statements = vec![format!(
            "SET GLOBAL clone_valid_donor_list = {}",
            quote(&format!("{}:{}", s.host, s.port))
        )];
        // REQUIRE SSL only encrypts: the donor is verified against the CA too.
        statements.extend(
            s.tls
                .map(|ca| format!("SET GLOBAL clone_ssl_ca = {}", quote(ca))),
        );
        statements.push(format!(
            "CLONE INSTANCE FROM {}@{}:{} IDENTIFIED BY {}{}",
            quote(s.user),
            quote(s.host),
            s.port,
            quote(s.password),
            if s.tls.is_some() { " REQUIRE SSL" } else { "" }
        ));
        Seed::Clone(statements)
    }
    fn semi_sync_source_off(&self) -> &'static str {
        "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
    }
    fn reload_tls(&self) -> &'static str {
        "ALTER INSTANCE RELOAD TLS"
    }
    fn admin_privileges(&self) -> &'static str {
        "SYSTEM_VARIABLES_ADMIN, REPLICATION_SLAVE_ADMIN, CONNECTION_ADMIN, CLONE_ADMIN, BACKUP_ADMIN, RELOAD, PROCESS, REPLICATION CLIENT, SHOW DATABASES, SELECT, INSERT, CREATE, DROP, ALTER, INDEX, REFERENCES, LOCK TABLES"
    }
    fn executed_gtids(&self) -> &'static str {
        "SELECT @@GLOBAL.gtid_executed"
    }
    fn commit_token(&self) -> &'static str {
        // The executed set: a superset of this session's commit.
        "@@GLOBAL.gtid_executed"
    }
    fn insert_returning(&self) -> bool {
        false
    }
    fn statement_timeout(&self, ms: u64) -> String {
        format!("SET SESSION max_execution_time = {ms}")
    }
    fn change_source(&self, s: &Source<'_>) -> String {
        let mut sql = format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST={}, SOURCE_PORT={}, SOURCE_USER={}, SOURCE_PASSWORD={}, SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, SOURCE_HEARTBEAT_PERIOD={HEARTBEAT_SECONDS}, GET_SOURCE_PUBLIC_KEY=1",
            quote(s.host),
            s.port,
            quote(s.user),
            quote(s.password)
        );
        // Explicit either way: CHANGE keeps every option it is not given.
        match s.tls {
            Some(ca) => {
                let _ = write!(
                    sql,
                    ", SOURCE_SSL=1, SOURCE_SSL_CA={}, SOURCE_SSL_VERIFY_SERVER_CERT=1",
                    quote(ca)
                );
            }
            None => sql.push_str(", SOURCE_SSL=0, SOURCE_SSL_VERIFY_SERVER_CERT=0"),
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
            format!("SET GLOBAL rpl_semi_sync_source_timeout = {SEMI_SYNC_TIMEOUT_MS}"),
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
    fn net_timeout(&self) -> String {
        format!("SET GLOBAL replica_net_timeout = {NET_TIMEOUT_SECONDS}")
    }
    fn semi_sync_source_enabled(&self) -> &'static str {
        "@@GLOBAL.rpl_semi_sync_source_enabled"
    }
}

impl Dialect for MariaDb {
    fn parse_gtids(&self, text: &str) -> Result<GtidSet, ParseError> {
        GtidSet::parse_mariadb(text)
    }
    fn replica_status(&self) -> &'static str {
        "SHOW SLAVE STATUS"
    }
    fn replica_columns(&self) -> ReplicaColumns {
        ReplicaColumns {
            io_running: "Slave_IO_Running",
            sql_running: "Slave_SQL_Running",
            source_host: "Master_Host",
            source_port: "Master_Port",
            io_errno: "Last_IO_Errno",
            io_error: "Last_IO_Error",
            sql_errno: "Last_SQL_Errno",
            sql_error: "Last_SQL_Error",
            received: "Gtid_IO_Pos",
            ssl: "Master_SSL_Allowed",
        }
    }
    fn adopt_own_position(&self) -> Option<&'static str> {
        // gtid_slave_pos holds only what was replicated; a former primary's own writes are in
        // gtid_current_pos.
        Some("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos")
    }
    fn reset_replica(&self) -> &'static str {
        "RESET SLAVE ALL"
    }
    fn reset_binlog(&self) -> &'static str {
        "RESET MASTER"
    }
    fn set_applied(&self, gtids: &str) -> String {
        format!("SET GLOBAL gtid_slave_pos = {}", quote(gtids))
    }
    fn seed(&self, _source: &Source<'_>) -> Seed {
        Seed::Logical
    }
    fn semi_sync_source_off(&self) -> &'static str {
        "SET GLOBAL rpl_semi_sync_master_enabled = OFF"
    }
    fn reload_tls(&self) -> &'static str {
        // Kept out of the binary log: logged, it would be a transaction of the server's own,
        // which makes a replica errant.
        "FLUSH NO_WRITE_TO_BINLOG SSL"
    }
    fn admin_privileges(&self) -> &'static str {
        "SUPER, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, SLAVE MONITOR, BINLOG ADMIN, BINLOG MONITOR, CONNECTION ADMIN, RELOAD, PROCESS, SHUTDOWN, SHOW DATABASES, SELECT, INSERT, CREATE, DROP, ALTER, INDEX, REFERENCES, LOCK TABLES"
    }
    fn executed_gtids(&self) -> &'static str {
        "SELECT @@GLOBAL.gtid_current_pos"
    }
    fn commit_token(&self) -> &'static str {
        // The session's last committed GTID.
        "@@last_gtid"
    }
    fn insert_returning(&self) -> bool {
        true
    }
    fn statement_timeout(&self, ms: u64) -> String {
        // Seconds, fractions allowed.
        format!(
            "SET SESSION max_statement_time = {}.{:03}",
            ms / 1000,
            ms % 1000
        )
    }
    fn change_source(&self, s: &Source<'_>) -> String {
        let mut sql = format!(
            "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD={HEARTBEAT_SECONDS}",
            quote(s.host),
            s.port,
            quote(s.user),
            quote(s.password)
        );
        // Explicit either way: CHANGE keeps every option it is not given.
        match s.tls {
            Some(ca) => {
                let _ = write!(
                    sql,
                    ", MASTER_SSL=1, MASTER_SSL_CA={}, MASTER_SSL_VERIFY_SERVER_CERT=1",
                    quote(ca)
                );
            }
            None => sql.push_str(", MASTER_SSL=0, MASTER_SSL_VERIFY_SERVER_CERT=0"),
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
            format!("SET GLOBAL rpl_semi_sync_master_timeout = {SEMI_SYNC_TIMEOUT_MS}"),
            "SET GLOBAL rpl_semi_sync_master_enabled = ON".into(),
        ]
    }
    fn semi_sync_replica(&self) -> &'static str {
        "SET GLOBAL rpl_semi_sync_slave_enabled = ON"
    }
    fn net_timeout(&self) -> String {
        format!("SET GLOBAL slave_net_timeout = {NET_TIMEOUT_SECONDS}")
    }
    fn semi_sync_source_enabled(&self) -> &'static str {
        "@@GLOBAL.rpl_semi_sync_master_enabled"
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
            tls: tls.then_some("/etc/mysql/tls/ca.crt"),
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
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='demo-db-replica-0.demo-db.chat.svc', SOURCE_PORT=3306, SOURCE_USER='repl', SOURCE_PASSWORD='p''w\\\\d', SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, SOURCE_HEARTBEAT_PERIOD=1, GET_SOURCE_PUBLIC_KEY=1, SOURCE_SSL=0, SOURCE_SSL_VERIFY_SERVER_CERT=0"
        );
        assert!(MySql.change_source(&source(true)).ends_with(
            ", SOURCE_SSL=1, SOURCE_SSL_CA='/etc/mysql/tls/ca.crt', SOURCE_SSL_VERIFY_SERVER_CERT=1"
        ));
        assert_eq!(MySql.reload_tls(), "ALTER INSTANCE RELOAD TLS");
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
                "SET GLOBAL rpl_semi_sync_source_timeout = 86400000",
                "SET GLOBAL rpl_semi_sync_source_wait_for_replica_count = 2",
                "SET GLOBAL rpl_semi_sync_source_enabled = ON"
            ]
        );
        assert_eq!(
            MySql.semi_sync_replica(),
            "SET GLOBAL rpl_semi_sync_replica_enabled = ON"
        );
        assert_eq!(MySql.executed_gtids(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(MySql.commit_token(), "@@GLOBAL.gtid_executed");
        assert_eq!(MariaDb.commit_token(), "@@last_gtid");
        assert_eq!(
            MySql.statement_timeout(10_000),
            "SET SESSION max_execution_time = 10000"
        );
        assert_eq!(
            MariaDb.statement_timeout(2_500),
            "SET SESSION max_statement_time = 2.500"
        );
        assert_eq!(MySql.replica_status(), "SHOW REPLICA STATUS");
        assert_eq!(MySql.replica_columns().received, "Retrieved_Gtid_Set");
        assert_eq!(MySql.reset_binlog(), "RESET BINARY LOGS AND GTIDS");
        assert_eq!(
            MySql.set_applied("a:1-3"),
            "SET GLOBAL gtid_purged = 'a:1-3'"
        );
        assert_eq!(
            MySql.seed(&source(true)),
            Seed::Clone(vec![
                "SET GLOBAL clone_valid_donor_list = 'demo-db-replica-0.demo-db.chat.svc:3306'"
                    .into(),
                "SET GLOBAL clone_ssl_ca = '/etc/mysql/tls/ca.crt'".into(),
                "CLONE INSTANCE FROM 'repl'@'demo-db-replica-0.demo-db.chat.svc':3306 IDENTIFIED BY 'p''w\\\\d' REQUIRE SSL".into(),
            ])
        );
        assert_eq!(
            MySql.semi_sync_source_off(),
            "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
        );
        assert_eq!(MySql.adopt_own_position(), None);
        assert_eq!(
            MySql.wait_for_gtids(),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
        );
    }

    #[test]
    fn mariadb_statements_exact_text() {
        assert_eq!(
            MariaDb.change_source(&source(false)),
            "CHANGE MASTER TO MASTER_HOST='demo-db-replica-0.demo-db.chat.svc', MASTER_PORT=3306, MASTER_USER='repl', MASTER_PASSWORD='p''w\\\\d', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, MASTER_SSL=0, MASTER_SSL_VERIFY_SERVER_CERT=0"
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
        assert_eq!(MariaDb.replica_status(), "SHOW SLAVE STATUS");
        assert_eq!(MariaDb.replica_columns().io_running, "Slave_IO_Running");
        assert_eq!(
            MariaDb.adopt_own_position(),
            Some("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos")
        );
        assert_eq!(MariaDb.reset_binlog(), "RESET MASTER");
        assert_eq!(
            MariaDb.set_applied("0-1-5"),
            "SET GLOBAL gtid_slave_pos = '0-1-5'"
        );
        assert_eq!(MariaDb.seed(&source(false)), Seed::Logical);
        assert!(MariaDb.change_source(&source(true)).ends_with(
            ", MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/tls/ca.crt', MASTER_SSL_VERIFY_SERVER_CERT=1"
        ));
        assert_eq!(MariaDb.reload_tls(), "FLUSH NO_WRITE_TO_BINLOG SSL");
    }
}
