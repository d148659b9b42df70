//! Sessions ended before their access tokens expire (logout, a reused refresh token), which
//! every replica refuses at once: each replica reads the new rows of
//! [`store::sessions`](crate::store::sessions) every [`POLL`] into a set it checks on every
//! call, and its open streams of a revoked session end. Access tokens stay stateless for
//! everyone else; the set holds only sessions revoked within one access-token lifetime.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use chatcluster_common::sync::lock;
use tokio::sync::watch;
use tracing::debug;

use crate::{
    db::Db,
    store::sessions::{self, Revoked},
    token::now_ms,
};

/// How often a replica reads new revocations: a revoked token stops working here within
/// about this, plus the replica's replication lag.
pub const POLL: Duration = Duration::from_millis(500);
/// Ids already read are read again this far back: ids are assigned before commit, so a row
/// may become visible after one with a higher id.
const OVERLAP: u64 = 256;
/// Rows read per query.
const BATCH: u32 = 10_000;

/// The revoked sessions this replica knows of.
pub struct Revocations {
    /// Session id (as in [`Claims::sid`](crate::token::Claims)) → when its revocation lapses.
    revoked: Mutex<HashMap<String, i64>>,
    /// Counts additions, for streams to check their session when it moves.
    added: watch::Sender<u64>,
}

impl Revocations {
    /// None known yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            revoked: Mutex::new(HashMap::new()),
            added: watch::channel(0).0,
        })
    }

    /// Whether `session` is revoked (a token without a session id never is).
    pub fn is_revoked(&self, session: &str) -> bool {
        !session.is_empty() && lock(&self.revoked).contains_key(session)
    }

    /// Changes whenever a session is added.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    /// Take in `rows`, forget revocations that lapsed by `now_ms`; tells watchers of new ones.
    pub fn record(&self, rows: &[Revoked], now_ms: i64) {
        let mut revoked = lock(&self.revoked);
        revoked.retain(|_, until| *until > now_ms);
        let mut fresh = 0;
        for row in rows {
            let until = revoked.entry(B64.encode(&row.session)).or_insert(0);
            if *until < row.until_ms {
                if *until == 0 {
                    fresh += 1;
                }
                *until = row.until_ms;
            }
        }
        drop(revoked);
        if fresh > 0 {
            self.added.send_modify(|n| *n += fresh);
        }
    }

    /// Read new revocations from the database for as long as the process runs. A failed read
    /// (the database moving, the table not yet made by the first replica) is retried.
    pub async fn follow(self: Arc<Self>, db: Arc<Db>) {
        let mut after = 0u64;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            let read = async {
                let mut conn = db.reader(None).await?;
                sessions::revoked_since(&mut conn, after.saturating_sub(OVERLAP), now, BATCH).await
            };
            match read.await {
                Ok(rows) => {
                    after = rows.iter().map(|r| r.id).fold(after, u64::max);
                    self.record(&rows, now);
                }
                Err(e) => debug!(error = %e, "cannot read revoked sessions"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, session: u8, until_ms: i64) -> Revoked {
        Revoked {
            id,
            session: vec![session; 16],
            until_ms,
        }
    }

    #[test]
    fn revocations_hold_until_they_lapse_and_only_news_wakes_streams() {
        let r = Revocations::new();
        let changes = r.changes();
        let sid = B64.encode([1u8; 16]);
        assert!(!r.is_revoked(&sid));
        r.record(&[row(1, 1, 1_000)], 0);
        assert!(r.is_revoked(&sid));
        assert!(
            !r.is_revoked(""),
            "tokens without a session are never revoked"
        );
        assert!(changes.has_changed().unwrap_or(false));
        let seen = *r.changes().borrow();
        // Read again (the overlap): nothing new.
        r.record(&[row(1, 1, 1_000)], 10);
        assert_eq!(*r.changes().borrow(), seen);
        r.record(&[], 1_000);
        assert!(!r.is_revoked(&sid), "lapsed");
    }
}
