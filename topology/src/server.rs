//! One database server as the topology loop sees it: a connection with short timeouts (a
//! server behind a network cut must not stall the loop), what it reports about itself, and the
//! statements the loop runs on it.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    AssertSqlSafe, Connection, MySqlConnection, Row,
    mysql::{MySqlConnectOptions, MySqlRow, MySqlSslMode},
};

use super::{
    db::DbServer,
    dialect::{self, Dialect, Source},
    gtid::GtidSet,
    physical::{self, Seeder},
    seed,
    status::SemiSyncState,
};

/// Errors talking to one server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server did not answer in time.
    #[error("{server}: no answer within {timeout:?}")]
    Timeout {
        /// Member name.
        server: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered with an error.
    #[error("{server}: {source}")]
    Sql {
        /// Member name.
        server: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },
    /// The server reported a GTID set that cannot be parsed.
    #[error("{server}: {source}")]
    Gtid {
        /// Member name.
        server: String,
        /// The parse error.
        #[source]
        source: super::gtid::ParseError,
    },
}

/// Result of the topology's server operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Pod or process name: how status and events refer to it.
    pub name: String,
    /// Host others reach it at (replicas replicate from this address).
    pub host: String,
    /// Its port.
    pub port: u16,
}

/// Users the loop connects and replicates as.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Administrative user (replication control, read-only switch, re-seeding).
    pub admin_user: String,
    /// Its password.
    pub admin_password: String,
    /// Replication user (`REPLICATION SLAVE` only).
    pub repl_user: String,
    /// Its password.
    pub repl_password: String,
    /// The internal CA (PEM), when the servers serve TLS: the loop then connects over TLS
    /// only, verifying each server's certificate and its name (the member's host).
    pub ca_pem: Option<String>,
}

/// A replica's replication threads as reported by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replication {
    /// Host replicated from.
    pub source_host: String,
    /// Port replicated from.
    pub source_port: u16,
    /// The receiver thread is connected.
    pub io_running: bool,
    /// The receiver thread is stopped: neither connected nor trying to connect.
    pub io_stopped: bool,
    /// The applier thread runs.
    pub sql_running: bool,
    /// Last receiver error (0: none).
    pub io_errno: u32,
    /// Its text.
    pub io_error: String,
    /// Last applier error (0: none).
    pub sql_errno: u32,
    /// Its text.
    pub sql_error: String,
    /// GTIDs received, applied or not.
    pub received: GtidSet,
    /// Configured over TLS.
    pub ssl: bool,
    /// The same, as the server prints them (what its wait function takes).
    pub received_text: String,
}

/// What one server reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `SELECT VERSION()`.
    pub version: String,
    /// Refuses writes from ordinary users.
    pub read_only: bool,
    /// Its commits wait for a semi-sync acknowledgement (as a primary). A restarted server
    /// comes back without: the loop must set it again.
    pub semi_sync_source: bool,
    /// `@@server_id`: the origin of the transactions it writes itself (MariaDB GTIDs name it).
    pub server_id: u32,
    /// GTIDs executed, as the server prints them.
    pub executed_text: String,
    /// GTIDs executed.
    pub executed: GtidSet,
    /// Replication, when configured.
    pub replication: Option<Replication>,
}

impl Report {
    /// Everything this server has: executed plus received but not yet applied.
    pub fn has(&self) -> GtidSet {
        match &self.replication {
            Some(r) => self.executed.union(&r.received),
            None => self.executed.clone(),
        }
    }
}

/// A connection to one member, re-opened when it breaks.
pub struct Server {
    /// Who it is.
    pub member: Member,
    credentials: Credentials,
    timeout: Duration,
    conn: Option<MySqlConnection>,
    dialect: &'static Dialect,
    /// How its files are copied physically, where they can be (MariaDB in local mode and in
    /// Kubernetes); without one, re-seeding copies logically.
    seeder: Option<Arc<dyn Seeder>>,
}

impl Server {
    /// A server not connected yet; `timeout` bounds every statement (and the connect).
    pub fn new(member: Member, credentials: Credentials, timeout: Duration) -> Self {
        Self {
            member,
            credentials,
            timeout,
            conn: None,
            dialect: &dialect::MARIADB,
            seeder: None,
        }
    }

    /// The same, re-seeded physically through `seeder`.
    pub fn with_seeder(mut self, seeder: Arc<dyn Seeder>) -> Self {
        self.seeder = Some(seeder);
        self
    }

    /// How its files are copied physically, if they can be.
    pub fn seeder(&self) -> Option<Arc<dyn Seeder>> {
        self.seeder.clone()
    }

    /// The engine's statements (known once it has answered).
    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    fn sql_err(&self, source: sqlx::Error) -> Error {
        Error::Sql {
            server: self.member.name.clone(),
            source,
        }
    }

    fn timeout_err(&self) -> Error {
        Error::Timeout {
            server: self.member.name.clone(),
            timeout: self.timeout,
        }
    }

    /// Forget the connection (the next call reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// The connection, opened within `timeout` if there is none.
    async fn connection(&mut self, timeout: Duration) -> Result<&mut MySqlConnection> {
        if self.conn.is_none() {
            let options = MySqlConnectOptions::from_str("mysql://localhost")
                .map_err(|e| self.sql_err(e))?
                .host(&self.member.host)
                .port(self.member.port)
                .username(&self.credentials.admin_user)
                .password(&self.credentials.admin_password);
            let options = match &self.credentials.ca_pem {
                Some(ca) => options
                    .ssl_mode(MySqlSslMode::VerifyIdentity)
                    .ssl_ca_from_pem(ca.as_bytes().to_vec()),
                // Never sqlx's default, `Preferred`: unverified TLS, or silently plain.
                None => options.ssl_mode(MySqlSslMode::Disabled),
            };
            let mut conn = tokio::time::timeout(timeout, MySqlConnection::connect_with(&options))
                .await
                .map_err(|_| self.timeout_err())?
                .map_err(|e| self.sql_err(e))?;
            let version: String = tokio::time::timeout(
                timeout,
                sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut conn),
            )
            .await
            .map_err(|_| self.timeout_err())?
            .map_err(|e| self.sql_err(e))?;
            self.dialect = dialect::for_version(&version);
            self.conn = Some(conn);
        }
        let err = self.timeout_err();
        self.conn.as_mut().ok_or(err)
    }

    /// Run `f` on the connection within the timeout, dropping the connection on any failure.
    async fn with<T>(
        &mut self,
        timeout: Duration,
        f: impl for<'c> FnOnce(
            &'c mut MySqlConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T> {
        let conn = self.connection(timeout).await?;
        let out = tokio::time::timeout(timeout, f(conn)).await;
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) {
                    self.conn = None;
                }
                Err(self.sql_err(e))
            }
            Err(_) => {
                self.conn = None;
                Err(Error::Timeout {
                    server: self.member.name.clone(),
                    timeout,
                })
            }
        }
    }

    /// Run statements in order, each call bounded by the statement timeout.
    pub async fn exec<S: AsRef<str>>(&mut self, statements: &[S]) -> Result<()> {
        self.exec_within(statements, self.timeout).await
    }

    /// [`exec`](Self::exec) bounded by `timeout` instead: for a statement known to take
    /// longer than a query should.
    pub async fn exec_within<S: AsRef<str>>(
        &mut self,
        statements: &[S],
        timeout: Duration,
    ) -> Result<()> {
        let statements: Vec<String> = statements.iter().map(|s| s.as_ref().to_string()).collect();
        self.with(timeout, move |conn| {
            Box::pin(async move {
                for s in statements {
                    sqlx::query(AssertSqlSafe(s)).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Disconnect every client session but the loop's own and replication's: a fenced server
    /// must not hand out acknowledgements for commits that were waiting (semi-sync) when it
    /// lost its place.
    pub async fn kill_clients(&mut self, timeout: Duration) -> Result<()> {
        let keep = [
            self.credentials.admin_user.clone(),
            self.credentials.repl_user.clone(),
        ];
        self.with(timeout, move |conn| {
            Box::pin(async move {
                let ids: Vec<u64> = sqlx::query_scalar(
                    "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND USER NOT IN (?, ?, 'system user', 'event_scheduler')",
                )
                .bind(&keep[0])
                .bind(&keep[1])
                .fetch_all(&mut *conn)
                .await?;
                for id in ids {
                    // A session may end by itself meanwhile (unknown thread): fine.
                    let _ = sqlx::query(AssertSqlSafe(format!("KILL CONNECTION {id}")))
                        .execute(&mut *conn)
                        .await;
                }
                Ok(())
            })
        })
        .await
    }

    /// Fence: end ordinary users' sessions and refuse their writes. Sessions go first: a
    /// commit waiting for a semi-sync acknowledgement that will never come would hold off the
    /// read-only switch (it waits for commits in progress); killed, it is never acknowledged.
    async fn fence_now(&mut self, timeout: Duration) -> Result<()> {
        self.kill_clients(timeout).await?;
        let read_only = self.dialect.make_read_only;
        self.exec_within(&[read_only], timeout).await?;
        // Whoever connected in between.
        self.kill_clients(timeout).await
    }

    /// Wait up to `wait` until the server has applied `gtids`; whether it has.
    async fn wait_for(&mut self, gtids: &str, wait: Duration) -> Result<bool> {
        let query = self.dialect.wait_for_gtids;
        let gtids = gtids.to_string();
        let secs = wait.as_secs_f64();
        let result: Option<i64> = self
            .with(wait + self.timeout, move |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(query)
                        .bind(gtids)
                        .bind(secs)
                        .fetch_one(&mut *conn)
                        .await
                })
            })
            .await?;
        Ok(result == Some(0))
    }

    /// Ask the server about itself.
    async fn ask(&mut self) -> Result<Report> {
        // Connect first: the dialect comes from the server's version.
        self.connection(self.timeout).await?;
        let dialect = self.dialect;
        let (row, executed_text, status) = self
            .with(self.timeout, move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(AssertSqlSafe(format!(
                        "SELECT VERSION() AS version, @@GLOBAL.read_only AS ro, {} AS ss, @@GLOBAL.server_id AS sid",
                        dialect.semi_sync_source_enabled
                    )))
                    .fetch_one(&mut *conn)
                    .await?;
                    let executed: String = sqlx::query_scalar(dialect.executed_gtids)
                        .fetch_one(&mut *conn)
                        .await?;
                    let status = sqlx::query(dialect.replica_status)
                        .fetch_optional(&mut *conn)
                        .await?;
                    Ok((row, executed, status))
                })
            })
            .await?;
        let version = text(&row, "version");
        let read_only = text(&row, "ro") != "0";
        let semi_sync_source = !matches!(text(&row, "ss").as_str(), "0" | "OFF" | "");
        let server_id = text(&row, "sid").parse().unwrap_or(0);
        let parse = |text: &str| {
            dialect.parse_gtids(text).map_err(|source| Error::Gtid {
                server: self.member.name.clone(),
                source,
            })
        };
        let executed = parse(&executed_text)?;
        let replication = match status {
            Some(row) => {
                let c = dialect.replica_columns;
                let source_host = text(&row, c.source_host);
                // A configured-then-reset replica reports an empty row.
                if source_host.is_empty() {
                    None
                } else {
                    Some(Replication {
                        source_host,
                        source_port: text(&row, c.source_port).parse().unwrap_or(0),
                        io_running: text(&row, c.io_running) == "Yes",
                        io_stopped: text(&row, c.io_running) == "No",
                        sql_running: text(&row, c.sql_running) == "Yes",
                        io_errno: text(&row, c.io_errno).parse().unwrap_or(0),
                        io_error: text(&row, c.io_error),
                        sql_errno: text(&row, c.sql_errno).parse().unwrap_or(0),
                        sql_error: text(&row, c.sql_error),
                        received: parse(&text(&row, c.received))?,
                        ssl: text(&row, c.ssl) == "Yes",
                        received_text: text(&row, c.received),
                    })
                }
            }
            None => None,
        };
        Ok(Report {
            version,
            read_only,
            semi_sync_source,
            server_id,
            executed_text,
            executed,
            replication,
        })
    }

    /// One value of `query`, as text.
    pub async fn scalar(&mut self, query: &str) -> Result<String> {
        let query = query.to_string();
        let row = self
            .with(self.timeout, move |conn| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(query))
                        .fetch_one(&mut *conn)
                        .await
                })
            })
            .await?;
        Ok(text(&row, 0usize))
    }

    /// The connection, for multi-statement work that needs one session (re-seeding).
    pub async fn session(&mut self) -> Result<&mut MySqlConnection> {
        self.connection(self.timeout).await
    }

    /// The timeout of single statements.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl DbServer for Server {
    fn member(&self) -> &Member {
        &self.member
    }

    async fn report(&mut self) -> Result<Report> {
        self.ask().await
    }

    async fn fence(&mut self, within: Duration) -> Result<()> {
        self.fence_now(within).await
    }

    async fn stop_receiver(&mut self, within: Duration) -> Result<()> {
        let stop = self.dialect.stop_io_thread;
        self.exec_within(&[stop], within).await
    }

    async fn stop_replication(&mut self) -> Result<()> {
        let stop = self.dialect.stop_replica;
        self.exec(&[stop]).await
    }

    async fn follow(&mut self, source: &Source<'_>, semi_sync: bool) -> Result<()> {
        // Fenced and without clients before its own semi-sync wait is lifted: commits that
        // were waiting complete, but nobody is left to be told they did.
        self.fence_now(self.timeout).await?;
        let dialect = self.dialect;
        let mut statements: Vec<String> = vec![
            dialect.stop_replica.into(),
            dialect.semi_sync_source_off.into(),
            dialect.net_timeout(),
        ];
        statements.extend(dialect.adopt_own_position.map(String::from));
        statements.push(dialect.change_source(source));
        if semi_sync {
            statements.push(dialect.semi_sync_replica.into());
        }
        statements.push(dialect.start_replica.into());
        self.exec(&statements).await
    }

    async fn set_semi_sync(&mut self, state: SemiSyncState) -> Result<()> {
        let statements = match state {
            SemiSyncState::Waiting(n) => self.dialect.semi_sync_source(n),
            SemiSyncState::Off | SemiSyncState::Degraded => {
                vec![self.dialect.semi_sync_source_off.into()]
            }
        };
        self.exec(&statements).await
    }

    async fn make_writable(&mut self) -> Result<()> {
        let statements = self.dialect.promote;
        self.exec(statements).await
    }

    async fn wait_applied(&mut self, gtids: &str, wait: Duration) -> Result<bool> {
        self.wait_for(gtids, wait).await
    }

    fn another(&self) -> Self {
        let another = Self::new(self.member.clone(), self.credentials.clone(), self.timeout);
        match &self.seeder {
            Some(seeder) => another.with_seeder(seeder.clone()),
            None => another,
        }
    }

    async fn reseed_from(
        &mut self,
        primary: &mut Self,
        source: &Source<'_>,
    ) -> Result<(), seed::Error> {
        // Physically where a seeder can reach the files and the engine is MariaDB (MySQL
        // clones itself).
        let mariadb = self
            .report()
            .await?
            .version
            .to_ascii_lowercase()
            .contains("mariadb");
        match self.seeder.clone() {
            Some(seeder) if mariadb => {
                self.exec(&[self.dialect.stop_replica, self.dialect.reset_replica])
                    .await?;
                physical::reseed(seeder.as_ref(), &primary.member, self).await?;
                Ok(())
            }
            _ => seed::reseed(primary, self, source).await,
        }
    }
}

/// A column of a status row as text, whatever type the server gave it.
pub(crate) fn text<I: sqlx::ColumnIndex<MySqlRow> + Copy>(row: &MySqlRow, column: I) -> String {
    if let Ok(Some(s)) = row.try_get::<Option<String>, _>(column) {
        return s;
    }
    if let Ok(Some(n)) = row.try_get::<Option<i64>, _>(column) {
        return n.to_string();
    }
    if let Ok(Some(n)) = row.try_get::<Option<u64>, _>(column) {
        return n.to_string();
    }
    if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>, _>(column) {
        return String::from_utf8_lossy(&b).into_owned();
    }
    String::new()
}
