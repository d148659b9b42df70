//! The auth service's tables: accounts (with their password hashes) and refresh tokens, which
//! are stored hashed.

use sqlx::{MySqlConnection, Row, mysql::MySqlRow};

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

/// Store a refresh token's hash for `user`, valid until `expires_at_ms`.
pub async fn insert_refresh(
    conn: &mut MySqlConnection,
    hash: &[u8],
    user: u64,
    expires_at_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO auth_refresh_tokens (token_hash, user_id, expires_at_ms) VALUES (?, ?, ?)",
    )
    .bind(hash)
    .bind(user)
    .bind(expires_at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Use up a refresh token: delete it and return its user and expiry, only to the request
/// whose delete took the row, so a token works once even when two requests race.
pub async fn take_refresh(conn: &mut MySqlConnection, hash: &[u8]) -> Result<Option<(u64, i64)>> {
    let row: Option<(u64, i64)> = sqlx::query_as(
        "SELECT user_id, expires_at_ms FROM auth_refresh_tokens WHERE token_hash = ?",
    )
    .bind(hash)
    .fetch_optional(&mut *conn)
    .await?;
    let deleted = sqlx::query("DELETE FROM auth_refresh_tokens WHERE token_hash = ?")
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(row.filter(|_| deleted.rows_affected() == 1))
}

/// Revoke `user`'s refresh token (a token of another user is left alone).
pub async fn revoke_refresh(conn: &mut MySqlConnection, hash: &[u8], user: u64) -> Result<()> {
    sqlx::query("DELETE FROM auth_refresh_tokens WHERE token_hash = ? AND user_id = ?")
        .bind(hash)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
