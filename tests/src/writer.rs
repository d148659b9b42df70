//! A client writing numbered rows to whichever server the topology loop publishes as primary,
//! recording the ones acknowledged: what a failover must not lose.

use std::{
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chat_operator::topology::status::TopologyStatus;
use sqlx::{Connection, MySqlConnection, mysql::MySqlConnectOptions};
use tokio::sync::watch;

use crate::mariadb::{APP_DB, APP_PASSWORD, APP_USER};

/// The table the writer fills (created by [`Writer::create_table`]).
pub const TABLE: &str = "chat.acks";

/// An acknowledged write: its id and when the acknowledgement arrived.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Row id.
    pub id: u64,
    /// When the commit returned.
    pub at: Instant,
}

/// A running writer.
pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn connect(address: &str) -> Option<MySqlConnection> {
    let (host, port) = address.rsplit_once(':')?;
    let options = MySqlConnectOptions::from_str("mysql://localhost")
        .ok()?
        .host(host)
        .port(port.parse().ok()?)
        .username(APP_USER)
        .password(APP_PASSWORD)
        .database(APP_DB);
    tokio::time::timeout(
        Duration::from_secs(1),
        MySqlConnection::connect_with(&options),
    )
    .await
    .ok()?
    .ok()
}

impl Writer {
    /// The statement creating [`TABLE`].
    pub fn create_table() -> String {
        format!(
            "CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))"
        )
    }

    /// Start writing ids 1, 2, … one at a time to the published primary. A write is retried
    /// (same id) on a new connection until acknowledged; a duplicate key on retry means an
    /// earlier attempt committed, so it counts as acknowledged then.
    pub fn start(status: watch::Receiver<TopologyStatus>) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acks.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut id = 1u64;
            let mut conn: Option<(String, MySqlConnection)> = None;
            while !s.load(Ordering::Relaxed) {
                let address = status.borrow().primary_address.clone();
                if conn.as_ref().is_none_or(|(at, _)| *at != address) {
                    conn = connect(&address).await.map(|c| (address, c));
                }
                let Some((_, c)) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let insert = sqlx::query("INSERT INTO chat.acks (id) VALUES (?)")
                    .bind(id)
                    .execute(c);
                let acknowledged = match tokio::time::timeout(Duration::from_secs(2), insert).await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("23000") => {
                        true
                    }
                    _ => false,
                };
                if acknowledged {
                    a.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                        id,
                        at: Instant::now(),
                    });
                    id += 1;
                } else {
                    // The outcome is unknown: never counted, retried elsewhere.
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { acks, stop, task }
    }

    /// Acknowledged writes so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until at least `n` writes are acknowledged, or `timeout` passes; the count.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.acks().len();
            if count >= n || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop and return every acknowledged write.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
