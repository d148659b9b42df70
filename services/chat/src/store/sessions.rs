//! Logged-out sessions, shared by every service: auth writes a row when a session ends before
//! its access tokens expire (logout, a stolen refresh token), and every replica of every
//! service reads the new rows (see [`crate::services::revocations`]). A row is needed only
//! while the session's tokens could still be valid, so rows past `until_ms` are deleted.

use sqlx::MySqlConnection;

use crate::{db::Db, error::Result};

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE sessions_revoked (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           session BINARY(16) NOT NULL,
           until_ms BIGINT NOT NULL,
           KEY until_ms (until_ms)
         ) ENGINE=InnoDB"
            .into(),
    ]
}

/// Apply the `sessions_` schema (every chatd does: every service honours revocations).
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "sessions", &migrations()).await
}

/// One revoked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The row's id: rows are read in id order.
    pub id: u64,
    /// The session (a refresh-token family).
    pub session: Vec<u8>,
    /// When the last access token it may have been given expires.
    pub until_ms: i64,
}

/// Revoke `session` until `until_ms`; a few long-expired rows go at the same time.
pub async fn revoke(conn: &mut MySqlConnection, session: &[u8], until_ms: i64) -> Result<()> {
    sqlx::query("INSERT INTO sessions_revoked (session, until_ms) VALUES (?, ?)")
        .bind(session)
        .bind(until_ms)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM sessions_revoked WHERE until_ms < ? LIMIT 100")
        .bind(crate::token::now_ms() - 60_000)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Rows after id `after` still in force at `now_ms`, oldest first, at most `limit`.
pub async fn revoked_since(
    conn: &mut MySqlConnection,
    after: u64,
    now_ms: i64,
    limit: u32,
) -> Result<Vec<Revoked>> {
    let rows: Vec<(u64, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT id, session, until_ms FROM sessions_revoked WHERE id > ? AND until_ms > ? ORDER BY id LIMIT ?",
    )
    .bind(after)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, session, until_ms)| Revoked {
            id,
            session,
            until_ms,
        })
        .collect())
}
