//! The auth service's tables: accounts (with their password hashes) and refresh tokens, which
//! are stored hashed.

use sqlx::{Connection, MySqlConnection, Row, mysql::MySqlRow};

use crate::{
    db::Db,
    error::{Error, Result, is_duplicate},
    pb::auth::Profile,
    token::now_ms,
};

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE auth_users (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           username VARCHAR(32) NOT NULL,
           password_hash VARCHAR(255) NOT NULL,
           display_name VARCHAR(64) NOT NULL,
           bio VARCHAR(512) NOT NULL DEFAULT '',
           created_at_ms BIGINT NOT NULL,
           UNIQUE KEY username (username)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        "CREATE TABLE auth_refresh_tokens (
           token_hash BINARY(32) NOT NULL PRIMARY KEY,
           user_id BIGINT UNSIGNED NOT NULL,
           expires_at_ms BIGINT NOT NULL,
           KEY user_id (user_id)
         ) ENGINE=InnoDB"
            .into(),
        // Refresh tokens rotate within a family (one login); a used one is kept, marked,
        // until it expires, so presenting it again is seen as theft.
        "ALTER TABLE auth_refresh_tokens
           ADD COLUMN family BINARY(16) NULL,
           ADD COLUMN used TINYINT(1) NOT NULL DEFAULT 0,
           ADD KEY family (family)"
            .into(),
        "UPDATE auth_refresh_tokens SET family = LEFT(token_hash, 16) WHERE family IS NULL".into(),
    ]
}

/// Apply the `auth_` schema.
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "auth", &migrations()).await
}

const PROFILE_COLUMNS: &str = "id, username, display_name, bio, created_at_ms";

fn row_to_profile(row: &MySqlRow) -> Result<Profile> {
    Ok(Profile {
        user_id: row.try_get("id")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        bio: row.try_get("bio")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Create an account; ALREADY_EXISTS when the username is taken. Its id.
pub async fn create_user(
    conn: &mut MySqlConnection,
    username: &str,
    password_hash: &str,
    display_name: &str,
) -> Result<u64> {
    let inserted = sqlx::query(
        "INSERT INTO auth_users (username, password_hash, display_name, created_at_ms) VALUES (?, ?, ?, ?)",
    )
    .bind(username)
    .bind(password_hash)
    .bind(display_name)
    .bind(now_ms())
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(r) => Ok(r.last_insert_id()),
        Err(e) if is_duplicate(&e) => Err(Error::AlreadyExists(format!(
            "username {username} is taken"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The profile of user `id`, if there is one.
pub async fn profile(conn: &mut MySqlConnection, id: u64) -> Result<Option<Profile>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS} FROM auth_users WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(row_to_profile).transpose()
}

/// The profile and password hash of `username`, if there is such a user.
pub async fn credentials(
    conn: &mut MySqlConnection,
    username: &str,
) -> Result<Option<(Profile, String)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROFILE_COLUMNS}, password_hash FROM auth_users WHERE username = ?"
    )))
    .bind(username)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| Ok((row_to_profile(&row)?, row.try_get("password_hash")?)))
        .transpose()
}

/// Change the display name and bio where given.
pub async fn update_profile(
    conn: &mut MySqlConnection,
    user: u64,
    display_name: Option<&str>,
    bio: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE auth_users SET display_name = COALESCE(?, display_name), bio = COALESCE(?, bio) WHERE id = ?",
    )
    .bind(display_name)
    .bind(bio)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Store a refresh token's hash for `user`, of session `family`, valid until `expires_at_ms`.
pub async fn insert_refresh(
    conn: &mut MySqlConnection,
    hash: &[u8],
    user: u64,
    family: &[u8],
    expires_at_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO auth_refresh_tokens (token_hash, user_id, expires_at_ms, family) VALUES (?, ?, ?, ?)",
    )
    .bind(hash)
    .bind(user)
    .bind(expires_at_ms)
    .bind(family)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Unused and now used up: its user, expiry and session family.
    Fresh {
        /// The user.
        user: u64,
        /// When the token expired or expires.
        expires_at_ms: i64,
        /// Its session.
        family: Vec<u8>,
    },
    /// Used before: stolen, or replayed. Its whole session's refresh tokens are gone.
    Reused {
        /// The session.
        family: Vec<u8>,
    },
    /// No such token (never issued, expired and cleaned up, or revoked).
    Unknown,
}

/// Use up a refresh token, in one transaction that locks its row: a fresh one is marked used
/// (and kept until it expires); one presented a second time revokes its whole session, the
/// rotated tokens of whoever else holds it included. Expired tokens of the user go too.
pub async fn take_refresh(conn: &mut MySqlConnection, hash: &[u8]) -> Result<Refresh> {
    let mut tx = conn.begin().await?;
    let row: Option<(u64, i64, Option<Vec<u8>>, i8)> = sqlx::query_as(
        "SELECT user_id, expires_at_ms, family, used FROM auth_refresh_tokens WHERE token_hash = ? FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user, expires_at_ms, family, used)) = row else {
        return Ok(Refresh::Unknown);
    };
    let family = family.unwrap_or_else(|| hash.iter().take(16).copied().collect());
    let outcome = if used != 0 {
        sqlx::query("DELETE FROM auth_refresh_tokens WHERE family = ?")
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        Refresh::Reused { family }
    } else {
        sqlx::query("UPDATE auth_refresh_tokens SET used = 1 WHERE token_hash = ?")
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        Refresh::Fresh {
            user,
            expires_at_ms,
            family,
        }
    };
    sqlx::query("DELETE FROM auth_refresh_tokens WHERE user_id = ? AND expires_at_ms < ?")
        .bind(user)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Delete every refresh token of `user`'s session `family`.
pub async fn revoke_family(conn: &mut MySqlConnection, family: &[u8], user: u64) -> Result<()> {
    sqlx::query("DELETE FROM auth_refresh_tokens WHERE family = ? AND user_id = ?")
        .bind(family)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Revoke the session of `user`'s refresh token: every token of its family (a token of
/// another user is left alone).
pub async fn revoke_refresh(conn: &mut MySqlConnection, hash: &[u8], user: u64) -> Result<()> {
    let family: Option<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT family FROM auth_refresh_tokens WHERE token_hash = ? AND user_id = ?",
    )
    .bind(hash)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(Some(family)) = family {
        revoke_family(conn, &family, user).await?;
    }
    sqlx::query("DELETE FROM auth_refresh_tokens WHERE token_hash = ? AND user_id = ?")
        .bind(hash)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
