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

/// The replication statements of one engine: the fixed ones as fields, the ones built from
/// arguments as methods. One value per engine ([`MYSQL`], [`MARIADB`]), so the two
/// vocabularies sit side by side as data rather than as two copies of the same functions.
#[derive(Debug)]
pub struct Dialect {
    engine: Engine,
    /// Query returning the executed GTID set.
    pub executed_gtids: &'static str,
    /// Expression giving, right after a commit on the same connection, a GTID set
    /// containing that commit: the read-your-writes token chatd hands its clients, which a
    /// replica waits for with [`wait_for_gtids`](Self::wait_for_gtids). An expression, so a
    /// sender can read it in the same query as its message's seq.
    pub commit_token: &'static str,
    /// Whether `INSERT … RETURNING` and `JSON_TABLE` exist (MariaDB 10.6 on): a batch of
    /// sends is then one statement that learns each message's seq. Without them every send
    /// is its own.
    pub insert_returning: bool,
    /// The replica status statement (one row when replication is configured).
    pub replica_status: &'static str,
    /// Its column names.
    pub replica_columns: ReplicaColumns,
    /// Before pointing a server that may have been a primary at a source: make it resume from
    /// everything it has executed, not only what it replicated.
    pub adopt_own_position: Option<&'static str>,
    /// Forget replication settings.
    pub reset_replica: &'static str,
    /// Forget this server's binary logs and GTID history (re-seeding).
    pub reset_binlog: &'static str,
    /// Turn the primary's semi-sync off (degraded: no caught-up replica to wait for).
    pub semi_sync_source_off: &'static str,
    /// Re-read the server's certificate and key files (the server reads them only at start
    /// and on this statement); new connections get the new ones.
    pub reload_tls: &'static str,
    /// What the topology loop's user is granted on `*.*` (no GRANT OPTION, no ALL): control
    /// replication and semi-sync, switch read-only, end client sessions, and re-seed the
    /// application schemas on a read-only server.
    pub admin_privileges: &'static str,
    /// Start replicating.
    pub start_replica: &'static str,
    /// Stop replicating (both threads).
    pub stop_replica: &'static str,
    /// Stop receiving new transactions, keep applying the received ones.
    pub stop_io_thread: &'static str,
    /// Query waiting up to `?` seconds until the server has applied GTID set `?` (0 = done).
    pub wait_for_gtids: &'static str,
    /// Make this server refuse writes (fence it).
    pub make_read_only: &'static str,
    /// Make this server the primary: stop and forget replication, accept writes.
    pub promote: &'static [&'static str],
    /// Semi-sync as a replica.
    pub semi_sync_replica: &'static str,
    /// The variable saying whether commits wait for a semi-sync acknowledgement.
    pub semi_sync_source_enabled: &'static str,
    /// Prefix of the primary's semi-sync variables.
    semi_sync_source_prefix: &'static str,
    /// The variable declaring GTIDs applied without replicating them.
    applied_variable: &'static str,
    /// The variable bounding a replica receiver's wait on a silent source.
    net_timeout_variable: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    MySql,
    MariaDb,
}

/// MySQL 8.4 (the `REPLICA`/`SOURCE` vocabulary; `super_read_only` also binds SUPER users).
pub static MYSQL: Dialect = Dialect {
    engine: Engine::MySql,
    executed_gtids: "SELECT @@GLOBAL.gtid_executed",
    // The executed set: a superset of this session's commit.
    commit_token: "@@GLOBAL.gtid_executed",
    insert_returning: false,
    replica_status: "SHOW REPLICA STATUS",
    replica_columns: ReplicaColumns {
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
    },
    // Auto-positioning already sends everything in gtid_executed.
    adopt_own_position: None,
    reset_replica: "RESET REPLICA ALL",
    reset_binlog: "RESET BINARY LOGS AND GTIDS",
    semi_sync_source_off: "SET GLOBAL rpl_semi_sync_source_enabled = OFF",
    reload_tls: "ALTER INSTANCE RELOAD TLS",
    admin_privileges: "SYSTEM_VARIABLES_ADMIN, REPLICATION_SLAVE_ADMIN, CONNECTION_ADMIN, CLONE_ADMIN, BACKUP_ADMIN, RELOAD, PROCESS, REPLICATION CLIENT, SHOW DATABASES, SELECT, INSERT, CREATE, DROP, ALTER, INDEX, REFERENCES, LOCK TABLES",
    start_replica: "START REPLICA",
    stop_replica: "STOP REPLICA",
    stop_io_thread: "STOP REPLICA IO_THREAD",
    wait_for_gtids: "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
    make_read_only: "SET GLOBAL super_read_only = ON",
    promote: &[
        "STOP REPLICA",
        "RESET REPLICA ALL",
        "SET GLOBAL super_read_only = OFF",
        "SET GLOBAL read_only = OFF",
    ],
    semi_sync_replica: "SET GLOBAL rpl_semi_sync_replica_enabled = ON",
    semi_sync_source_enabled: "@@GLOBAL.rpl_semi_sync_source_enabled",
    semi_sync_source_prefix: "rpl_semi_sync_source",
    applied_variable: "gtid_purged",
    net_timeout_variable: "replica_net_timeout",
};

/// MariaDB 10.11 and later (`SLAVE`/`MASTER` vocabulary, GTIDs in `gtid_slave_pos`).
pub static MARIADB: Dialect = Dialect {
    engine: Engine::MariaDb,
    executed_gtids: "SELECT @@GLOBAL.gtid_current_pos",
    // The session's last committed GTID.
    commit_token: "@@last_gtid",
    insert_returning: true,
    replica_status: "SHOW SLAVE STATUS",
    replica_columns: ReplicaColumns {
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
    },
    // gtid_slave_pos holds only what was replicated; a former primary's own writes are in
    // gtid_current_pos.
    adopt_own_position: Some("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos"),
    reset_replica: "RESET SLAVE ALL",
    reset_binlog: "RESET MASTER",
    semi_sync_source_off: "SET GLOBAL rpl_semi_sync_master_enabled = OFF",
    // Kept out of the binary log: logged, it would be a transaction of the server's own,
    // which makes a replica errant.
    reload_tls: "FLUSH NO_WRITE_TO_BINLOG SSL",
    admin_privileges: "SUPER, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, SLAVE MONITOR, BINLOG ADMIN, BINLOG MONITOR, CONNECTION ADMIN, RELOAD, PROCESS, SHUTDOWN, SHOW DATABASES, SELECT, INSERT, CREATE, DROP, ALTER, INDEX, REFERENCES, LOCK TABLES",
    start_replica: "START SLAVE",
    stop_replica: "STOP SLAVE",
    stop_io_thread: "STOP SLAVE IO_THREAD",
    wait_for_gtids: "SELECT MASTER_GTID_WAIT(?, ?)",
    make_read_only: "SET GLOBAL read_only = ON",
    promote: &[
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL read_only = OFF",
    ],
    semi_sync_replica: "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
    semi_sync_source_enabled: "@@GLOBAL.rpl_semi_sync_master_enabled",
    semi_sync_source_prefix: "rpl_semi_sync_master",
    applied_variable: "gtid_slave_pos",
    net_timeout_variable: "slave_net_timeout",
};

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

impl Dialect {
    /// Parse the engine's GTID notation.
    pub fn parse_gtids(&self, text: &str) -> Result<GtidSet, ParseError> {
        match self.engine {
            Engine::MySql => GtidSet::parse_mysql(text),
            Engine::MariaDb => GtidSet::parse_mariadb(text),
        }
    }

    /// Make every later statement of this session give up after `ms` milliseconds (0: no
    /// limit). MariaDB bounds every statement; MySQL bounds only SELECTs, and writes are
    /// bounded by the lock wait timeout.
    pub fn statement_timeout(&self, ms: u64) -> String {
        match self.engine {
            Engine::MySql => format!("SET SESSION max_execution_time = {ms}"),
            // Seconds, fractions allowed.
            Engine::MariaDb => format!(
                "SET SESSION max_statement_time = {}.{:03}",
                ms / 1000,
                ms % 1000
            ),
        }
    }

    /// Declare `gtids` applied (after re-seeding from a snapshot at that position).
    pub fn set_applied(&self, gtids: &str) -> String {
        format!("SET GLOBAL {} = {}", self.applied_variable, quote(gtids))
    }

    /// How a replica is re-seeded from `source`.
    pub fn seed(&self, s: &Source<'_>) -> Seed {
        if self.engine == Engine::MariaDb {
            // MariaDB has no clone plugin.
            return Seed::Logical;
        }
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

    /// Point this server at `source`, resuming from its own GTID position.
    pub fn change_source(&self, s: &Source<'_>) -> String {
        // The option prefix, how the position is found, and what follows the common options.
        let (statement, w, position, tail) = match self.engine {
            Engine::MySql => (
                "CHANGE REPLICATION SOURCE TO",
                "SOURCE",
                "SOURCE_AUTO_POSITION=1",
                ", GET_SOURCE_PUBLIC_KEY=1",
            ),
            Engine::MariaDb => (
                "CHANGE MASTER TO",
                "MASTER",
                "MASTER_USE_GTID=slave_pos",
                "",
            ),
        };
        let mut sql = format!(
            "{statement} {w}_HOST={}, {w}_PORT={}, {w}_USER={}, {w}_PASSWORD={}, {position}, {w}_CONNECT_RETRY=1, {w}_HEARTBEAT_PERIOD={HEARTBEAT_SECONDS}{tail}",
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
                    ", {w}_SSL=1, {w}_SSL_CA={}, {w}_SSL_VERIFY_SERVER_CERT=1",
                    quote(ca)
                );
            }
            None => {
                let _ = write!(sql, ", {w}_SSL=0, {w}_SSL_VERIFY_SERVER_CERT=0");
            }
        }
        sql
    }

    /// Lossless semi-sync as a primary, waiting for `wait_count` replicas. The server's own
    /// fall-back to asynchronous commits is pushed out to a day: a primary cut off from its
    /// replicas must not acknowledge writes by itself; the topology loop, which sees every
    /// server, decides when to degrade.
    pub fn semi_sync_source(&self, wait_count: u32) -> Vec<String> {
        let p = self.semi_sync_source_prefix;
        let mut statements = vec![
            format!("SET GLOBAL {p}_wait_point = 'AFTER_SYNC'"),
            format!("SET GLOBAL {p}_timeout = {SEMI_SYNC_TIMEOUT_MS}"),
        ];
        // MariaDB waits for one acknowledgement; its semi-sync has no wait count.
        if self.engine == Engine::MySql {
            statements.push(format!(
                "SET GLOBAL {p}_wait_for_replica_count = {}",
                wait_count.max(1)
            ));
        }
        statements.push(format!("SET GLOBAL {p}_enabled = ON"));
        statements
    }

    /// How long a replica's receiver waits on a silent source ([`NET_TIMEOUT_SECONDS`]).
    pub fn net_timeout(&self) -> String {
        format!(
            "SET GLOBAL {} = {NET_TIMEOUT_SECONDS}",
            self.net_timeout_variable
        )
    }
}

/// The dialect of a server reporting `version` from `SELECT VERSION()`.
pub fn for_version(version: &str) -> &'static Dialect {
    if version.to_ascii_lowercase().contains("mariadb") {
        &MARIADB
    } else {
        &MYSQL
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
            for_version("10.11.14-MariaDB-0+deb12u2-log").start_replica,
            "START SLAVE"
        );
        assert_eq!(for_version("8.4.6").start_replica, "START REPLICA");
    }

    #[test]
    fn mysql_statements_exact_text() {
        assert_eq!(
            MYSQL.change_source(&source(false)),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='demo-db-replica-0.demo-db.chat.svc', SOURCE_PORT=3306, SOURCE_USER='repl', SOURCE_PASSWORD='p''w\\\\d', SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, SOURCE_HEARTBEAT_PERIOD=1, GET_SOURCE_PUBLIC_KEY=1, SOURCE_SSL=0, SOURCE_SSL_VERIFY_SERVER_CERT=0"
        );
        assert!(MYSQL.change_source(&source(true)).ends_with(
            ", SOURCE_SSL=1, SOURCE_SSL_CA='/etc/mysql/tls/ca.crt', SOURCE_SSL_VERIFY_SERVER_CERT=1"
        ));
        assert_eq!(MYSQL.reload_tls, "ALTER INSTANCE RELOAD TLS");
        assert_eq!(MYSQL.stop_io_thread, "STOP REPLICA IO_THREAD");
        assert_eq!(MYSQL.make_read_only, "SET GLOBAL super_read_only = ON");
        assert_eq!(
            MYSQL.promote,
            [
                "STOP REPLICA",
                "RESET REPLICA ALL",
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert_eq!(
            MYSQL.semi_sync_source(2),
            [
                "SET GLOBAL rpl_semi_sync_source_wait_point = 'AFTER_SYNC'",
                "SET GLOBAL rpl_semi_sync_source_timeout = 86400000",
                "SET GLOBAL rpl_semi_sync_source_wait_for_replica_count = 2",
                "SET GLOBAL rpl_semi_sync_source_enabled = ON"
            ]
        );
        assert_eq!(
            MYSQL.semi_sync_replica,
            "SET GLOBAL rpl_semi_sync_replica_enabled = ON"
        );
        assert_eq!(MYSQL.executed_gtids, "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(MYSQL.commit_token, "@@GLOBAL.gtid_executed");
        assert_eq!(MARIADB.commit_token, "@@last_gtid");
        assert_eq!(
            MYSQL.statement_timeout(10_000),
            "SET SESSION max_execution_time = 10000"
        );
        assert_eq!(
            MARIADB.statement_timeout(2_500),
            "SET SESSION max_statement_time = 2.500"
        );
        assert_eq!(MYSQL.replica_status, "SHOW REPLICA STATUS");
        assert_eq!(MYSQL.replica_columns.received, "Retrieved_Gtid_Set");
        assert_eq!(MYSQL.reset_binlog, "RESET BINARY LOGS AND GTIDS");
        assert_eq!(
            MYSQL.set_applied("a:1-3"),
            "SET GLOBAL gtid_purged = 'a:1-3'"
        );
        assert_eq!(
            MYSQL.seed(&source(true)),
            Seed::Clone(vec![
                "SET GLOBAL clone_valid_donor_list = 'demo-db-replica-0.demo-db.chat.svc:3306'"
                    .into(),
                "SET GLOBAL clone_ssl_ca = '/etc/mysql/tls/ca.crt'".into(),
                "CLONE INSTANCE FROM 'repl'@'demo-db-replica-0.demo-db.chat.svc':3306 IDENTIFIED BY 'p''w\\\\d' REQUIRE SSL".into(),
            ])
        );
        assert_eq!(
            MYSQL.semi_sync_source_off,
            "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
        );
        assert_eq!(MYSQL.adopt_own_position, None);
        assert_eq!(
            MYSQL.wait_for_gtids,
            "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
        );
    }

    #[test]
    fn mariadb_statements_exact_text() {
        assert_eq!(
            MARIADB.change_source(&source(false)),
            "CHANGE MASTER TO MASTER_HOST='demo-db-replica-0.demo-db.chat.svc', MASTER_PORT=3306, MASTER_USER='repl', MASTER_PASSWORD='p''w\\\\d', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, MASTER_SSL=0, MASTER_SSL_VERIFY_SERVER_CERT=0"
        );
        assert_eq!(
            MARIADB.promote,
            [
                "STOP SLAVE",
                "RESET SLAVE ALL",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert_eq!(MARIADB.executed_gtids, "SELECT @@GLOBAL.gtid_current_pos");
        assert_eq!(MARIADB.replica_status, "SHOW SLAVE STATUS");
        assert_eq!(MARIADB.replica_columns.io_running, "Slave_IO_Running");
        assert_eq!(
            MARIADB.adopt_own_position,
            Some("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos")
        );
        assert_eq!(MARIADB.reset_binlog, "RESET MASTER");
        assert_eq!(
            MARIADB.set_applied("0-1-5"),
            "SET GLOBAL gtid_slave_pos = '0-1-5'"
        );
        assert_eq!(MARIADB.seed(&source(false)), Seed::Logical);
        assert!(MARIADB.change_source(&source(true)).ends_with(
            ", MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/tls/ca.crt', MASTER_SSL_VERIFY_SERVER_CERT=1"
        ));
        assert_eq!(MARIADB.reload_tls, "FLUSH NO_WRITE_TO_BINLOG SSL");
    }
}
