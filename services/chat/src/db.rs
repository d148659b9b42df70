//! The database: a primary pool for writes, a replica pool for reads, and the consistency
//! tokens that keep read-your-writes across them.
//!
//! A write returns the GTID it committed as a token (`x-chat-consistency` response header). A
//! read that carries a token first waits, on the replica connection it will read from, until
//! that replica has applied the GTID (briefly); if it cannot, the read goes to the primary.
//! chatd also remembers each user's last token, so a client that does not echo it still reads
//! its own writes through the replica that served them. Replicas down: reads use the primary.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Connection as _, MySql, MySqlConnection, Row,
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode},
    pool::PoolConnection,
};
use tokio::sync::RwLock;
use tracing::{info, warn};

use chatcluster_topology::dialect::{self, Dialect};

use crate::error::{Error, Result};

/// Where the database is and how to log in.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `host:port` of the primary.
    pub primary: String,
    /// `host:port` of the replicas (a Service spreading over them); `None`: read the primary.
    pub replicas: Option<String>,
    /// Schema.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Connections per pool.
    pub max_connections: u32,
    /// How long to wait for a connection before failing (UNAVAILABLE).
    pub acquire_timeout: Duration,
    /// Longest an SQL statement runs before the server aborts it (UNAVAILABLE): a slow query
    /// or a long lock wait cannot hold a connection, and the caller, indefinitely.
    pub statement_timeout: Duration,
    /// The internal CA's file: connect over TLS only, verifying the server's certificate and
    /// its name (the host of the address). `None`: plain text.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The [`DbConfig::statement_timeout`] chatd runs with.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How chatd connects to the server at `address` (`host:port`) with `cfg`.
pub fn connect_options(cfg: &DbConfig, address: &str) -> Result<MySqlConnectOptions> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| Error::Internal(format!("database address {address:?} lacks a port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Error::Internal(format!("database address {address:?} has a bad port")))?;
    let options = MySqlConnectOptions::from_str("mysql://localhost")
        .map_err(Error::Database)?
        .host(host)
        .port(port)
        .username(&cfg.user)
        .password(&cfg.password)
        .database(&cfg.database);
    Ok(match &cfg.ca_file {
        Some(ca) => options.ssl_mode(MySqlSslMode::VerifyIdentity).ssl_ca(ca),
        // Never sqlx's default, `Preferred`: unverified, and silently plain text.
        None => options.ssl_mode(MySqlSslMode::Disabled),
    })
}

fn pool(cfg: &DbConfig, address: &str) -> Result<MySqlPool> {
    let timeout_ms = u64::try_from(cfg.statement_timeout.as_millis()).unwrap_or(u64::MAX);
    Ok(MySqlPoolOptions::new()
        // Each new connection bounds its statements, in its server's own dialect.
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut *conn)
                    .await?;
                let set = dialect::for_version(&version).statement_timeout(timeout_ms);
                sqlx::query(sqlx::AssertSqlSafe(set))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .max_connections(cfg.max_connections)
        .min_connections(0)
        .acquire_timeout(cfg.acquire_timeout)
        // A connection to a server that died (failover) is found out before use — by a ping
        // only when it has sat idle: sqlx already pings every connection as it comes back to
        // the pool, so one released a moment ago was alive a moment ago. Pinging it again
        // would add a round trip to every send batch and every delivery read.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .idle_timeout(Duration::from_secs(60))
        .connect_lazy_with(connect_options(cfg, address)?))
}

/// How long a pooled connection may sit idle before it is pinged on acquire.
const PING_WHEN_IDLE: Duration = Duration::from_secs(1);

/// The pools and the dialect.
pub struct Db {
    cfg: DbConfig,
    primary: RwLock<(String, MySqlPool)>,
    replicas: Option<MySqlPool>,
    dialect: &'static Dialect,
}

/// How long a user's read waits for its replica to catch up with a token before using the
/// primary: a little latency traded for load kept off the primary.
pub const READ_WAIT: Duration = Duration::from_millis(100);
/// How long a subscription's read of a just-announced message waits: deliveries are latency
/// sensitive, and reading a few rows by primary key costs the primary little.
pub const DELIVERY_WAIT: Duration = Duration::from_millis(20);

impl Db {
    /// Pools for `cfg`; asks the primary for its version (retrying while it starts).
    pub async fn connect(cfg: DbConfig) -> Result<Arc<Self>> {
        let primary = pool(&cfg, &cfg.primary)?;
        let replicas = cfg.replicas.as_deref().map(|r| pool(&cfg, r)).transpose()?;
        let mut attempt = 0;
        let version: String = loop {
            match sqlx::query_scalar("SELECT VERSION()")
                .fetch_one(&primary)
                .await
            {
                Ok(v) => break v,
                Err(e) if attempt < 30 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "database not reachable yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let dialect = dialect::for_version(&version);
        info!(%version, "connected to the database");
        Ok(Arc::new(Self {
            primary: RwLock::new((cfg.primary.clone(), primary)),
            replicas,
            dialect,
            cfg,
        }))
    }

    /// The dialect of the servers.
    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    /// The primary pool, for writes.
    pub async fn primary(&self) -> MySqlPool {
        self.primary.read().await.1.clone()
    }

    /// Point writes at a new primary (after a failover in the laptop modes, where the address
    /// changes; in Kubernetes the `-primary` Service keeps its address).
    pub async fn set_primary(&self, address: &str) -> Result<()> {
        let mut guard = self.primary.write().await;
        if guard.0 == address {
            return Ok(());
        }
        info!(from = %guard.0, to = %address, "primary moved");
        let old = std::mem::replace(
            &mut *guard,
            (address.to_string(), pool(&self.cfg, address)?),
        );
        drop(guard);
        old.1.close().await;
        Ok(())
    }

    /// `(pool, size, idle)` of each pool, for metrics.
    pub async fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        let primary = self.primary().await;
        let mut out = vec![("primary", primary.size(), primary.num_idle())];
        if let Some(r) = &self.replicas {
            out.push(("replica", r.size(), r.num_idle()));
        }
        out
    }

    /// The token of what this connection committed last.
    pub async fn commit_token(&self, conn: &mut MySqlConnection) -> Result<String> {
        let query = format!("SELECT {}", self.dialect.commit_token);
        token(conn, &query).await
    }

    /// A token of everything the server behind `conn` has applied: for a write this
    /// connection did not make (an idempotent retry finding the first send's message).
    pub async fn executed_token(&self, conn: &mut MySqlConnection) -> Result<String> {
        token(conn, self.dialect.executed_gtids).await
    }

    /// A connection to read from that has applied `token`: a replica when one can be had and
    /// has caught up within [`READ_WAIT`], else the primary.
    pub async fn reader(&self, token: Option<&str>) -> Result<PoolConnection<MySql>> {
        self.reader_within(token, READ_WAIT).await
    }

    /// As [`reader`](Self::reader), waiting at most `wait` for the replica.
    pub async fn reader_within(
        &self,
        token: Option<&str>,
        wait: Duration,
    ) -> Result<PoolConnection<MySql>> {
        if let Some(replicas) = &self.replicas {
            match replicas.acquire().await {
                Ok(mut conn) => match token.filter(|t| !t.is_empty()) {
                    None => return Ok(conn),
                    Some(t) => {
                        let waited = sqlx::query(self.dialect.wait_for_gtids)
                            .bind(t)
                            .bind(wait.as_secs_f64())
                            .fetch_one(&mut *conn)
                            .await;
                        match waited.and_then(|row| row.try_get::<Option<i64>, _>(0)) {
                            Ok(Some(0)) => return Ok(conn),
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "cannot wait for replica"),
                        }
                    }
                },
                Err(e) => warn!(error = %e, "replicas unavailable, reading from the primary"),
            }
        }
        Ok(self.primary().await.acquire().await?)
    }
}

/// The GTID set `query` returns on `conn`, empty when the server has none.
async fn token(conn: &mut MySqlConnection, query: &str) -> Result<String> {
    let token: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_one(conn)
        .await?;
    Ok(token.unwrap_or_default())
}
