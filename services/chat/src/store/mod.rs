//! What each service keeps in the database: its tables, their migrations, and every SQL
//! statement it runs. A handler picks the connection (the primary for a write, a replica that
//! passed the access check for a read) and calls a store function on it; no SQL lives in
//! `services`.

pub mod auth;
pub mod batch;
pub mod dms;
pub mod gateway;
pub mod groups;
pub mod messages;
pub mod servers;
pub mod sessions;

use sqlx::{AssertSqlSafe, Connection, MySql, MySqlConnection, Transaction};
use tracing::info;

use crate::{
    db::Db,
    error::{Error, Result},
    token::now_ms,
};

/// A transaction on `conn`, for a handler whose checks and writes must see one state (a role
/// change checks the caller's role in the transaction that changes it).
pub async fn begin(conn: &mut MySqlConnection) -> Result<Transaction<'_, MySql>> {
    Ok(conn.begin().await?)
}

/// Commit `tx`.
pub async fn commit(tx: Transaction<'_, MySql>) -> Result<()> {
    Ok(tx.commit().await?)
}

/// Versioned DDL of one service, applied once under a named lock, so ten replicas starting
/// together against one database apply each step exactly once. Migrations may take long (an
/// ALTER of a big table, the lock while another replica migrates), so they run on a
/// connection of their own without the statement timeout, closed afterwards.
pub async fn migrate(db: &Db, prefix: &str, steps: &[String]) -> Result<()> {
    let mut conn = db.primary().await.acquire().await?.detach();
    sqlx::query(AssertSqlSafe(db.dialect().statement_timeout(0)))
        .execute(&mut conn)
        .await?;
    // A step that changes a busy table (a trigger on the messages) waits for its metadata
    // lock, and every send queues behind that wait: give up soon rather than stall them
    // (chatd retries at its next start).
    sqlx::query("SET SESSION lock_wait_timeout = 5")
        .execute(&mut conn)
        .await?;
    let conn = &mut conn;
    let lock = format!("chatd_migrate_{prefix}");
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
        .bind(&lock)
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Err(Error::Internal(format!(
            "could not take the migration lock {lock}"
        )));
    }
    let result = apply_steps(conn, prefix, steps).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&lock)
        .execute(&mut *conn)
        .await;
    result?;
    released?;
    Ok(())
}

async fn apply_steps(conn: &mut MySqlConnection, prefix: &str, steps: &[String]) -> Result<()> {
    let table = format!("{prefix}_schema_migrations");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version INT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)"
    )))
    .execute(&mut *conn)
    .await?;
    let done: Option<i32> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT MAX(version) FROM {table}")))
            .fetch_one(&mut *conn)
            .await?;
    let done = usize::try_from(done.unwrap_or(0)).unwrap_or(0);
    for (i, step) in steps.iter().enumerate().skip(done) {
        let version = i + 1;
        info!(prefix, version, "applying migration");
        // The text protocol: a trigger cannot be created as a prepared statement.
        sqlx::raw_sql(AssertSqlSafe(step.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(|e| untrusted_creator(prefix, version, e))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (version, applied_at_ms) VALUES (?, ?)"
        )))
        .bind(i32::try_from(version).unwrap_or(i32::MAX))
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// MySQL's and MariaDB's refusal (1419) to let a user without SUPER create a trigger while
/// binary logging is on, said the way an operator can act on it; other errors as they are.
fn untrusted_creator(prefix: &str, version: usize, e: sqlx::Error) -> Error {
    let refused = matches!(&e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()) == Some(1419));
    if refused {
        return Error::Internal(format!(
            "migration {prefix} {version} creates a trigger, which the database refuses until it \
             runs with log_bin_trust_function_creators=ON (the operator's configuration has it: \
             after an upgrade, the database pods take it when they restart)"
        ));
    }
    e.into()
}

/// The members of a group or a server: the two share a shape (a parent table, a members table
/// keyed by parent and user, a role code), so membership SQL is written once for both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Roster {
    /// The parent table (`groups_groups`, `servers_servers`).
    pub parents: &'static str,
    /// The members table.
    pub members: &'static str,
    /// The members table's column naming the parent.
    pub key: &'static str,
    /// What the parent is called in errors ("group", "server").
    pub what: &'static str,
}

/// A member as stored: user and role code (the protobuf enum value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRow {
    /// The user.
    pub user_id: u64,
    /// Role code.
    pub role: i32,
}

impl Roster {
    /// DDL of the members table: one row per (parent, user) with the role code, found by user
    /// too (a user's conversations).
    pub fn members_ddl(&self) -> String {
        format!(
            "CREATE TABLE {} (
               {key} BIGINT UNSIGNED NOT NULL,
               user_id BIGINT UNSIGNED NOT NULL,
               role TINYINT NOT NULL,
               joined_at_ms BIGINT NOT NULL,
               PRIMARY KEY ({key}, user_id),
               KEY user_id (user_id)
             ) ENGINE=InnoDB",
            self.members,
            key = self.key
        )
    }

    /// `user`'s role code in `parent` (None: not a member), in one round trip; NOT_FOUND when
    /// the parent does not exist.
    pub async fn role(
        &self,
        conn: &mut MySqlConnection,
        parent: u64,
        user: u64,
    ) -> Result<Option<i32>> {
        let row: Option<(Option<i8>,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT m.role FROM {} p LEFT JOIN {} m ON m.{} = p.id AND m.user_id = ? WHERE p.id = ?",
            self.parents, self.members, self.key
        )))
        .bind(user)
        .bind(parent)
        .fetch_optional(&mut *conn)
        .await?;
        let (role,) =
            row.ok_or_else(|| Error::NotFound(format!("{} {parent} not found", self.what)))?;
        Ok(role.map(i32::from))
    }

    /// The members of `parent`, longest-standing first.
    pub async fn members(&self, conn: &mut MySqlConnection, parent: u64) -> Result<Vec<MemberRow>> {
        let rows: Vec<(u64, i8)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT user_id, role FROM {} WHERE {} = ? ORDER BY joined_at_ms, user_id",
            self.members, self.key
        )))
        .bind(parent)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, role)| MemberRow {
                user_id,
                role: i32::from(role),
            })
            .collect())
    }

    /// Add `user` with `role`, joined at `joined_at_ms`; false when they were a member already
    /// (their role is left alone).
    pub async fn add(
        &self,
        conn: &mut MySqlConnection,
        parent: u64,
        user: u64,
        role: i32,
        joined_at_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "INSERT IGNORE INTO {} ({}, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)",
            self.members, self.key
        )))
        .bind(parent)
        .bind(user)
        .bind(code(role))
        .bind(joined_at_ms)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Set `user`'s role to `role`.
    pub async fn set_role(
        &self,
        conn: &mut MySqlConnection,
        parent: u64,
        user: u64,
        role: i32,
    ) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET role = ? WHERE {} = ? AND user_id = ?",
            self.members, self.key
        )))
        .bind(code(role))
        .bind(parent)
        .bind(user)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Remove `user` from `parent`.
    pub async fn remove(&self, conn: &mut MySqlConnection, parent: u64, user: u64) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE {} = ? AND user_id = ?",
            self.members, self.key
        )))
        .bind(parent)
        .bind(user)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// How many members `parent` has.
    pub async fn count(&self, conn: &mut MySqlConnection, parent: u64) -> Result<i64> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {} WHERE {} = ?",
            self.members, self.key
        )))
        .bind(parent)
        .fetch_one(&mut *conn)
        .await?)
    }

    /// The parents `user` belongs to, at most 1,000, oldest first.
    pub async fn of_user(&self, conn: &mut MySqlConnection, user: u64) -> Result<Vec<u64>> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {key} FROM {} WHERE user_id = ? ORDER BY {key} LIMIT 1000",
            self.members,
            key = self.key
        )))
        .bind(user)
        .fetch_all(&mut *conn)
        .await?)
    }
}

/// A role's stored code: protobuf role values are 0–3.
fn code(role: i32) -> i8 {
    i8::try_from(role).unwrap_or(0)
}
