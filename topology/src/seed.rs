//! Re-seeding a replica from the primary, for a replica that is new, errant, or cannot resume
//! replication (its source purged the binary logs it needs, or its relay log is broken).
//!
//! MySQL copies itself with the clone plugin (see [`Dialect::seed`]). MariaDB has no clone, so
//! the application schemas are copied logically from one consistent snapshot, and the replica
//! resumes from the snapshot's GTID position: every transaction after it arrives through
//! replication, none twice. The copy:
//! - streams: rows go from the primary's cursor to the replica in INSERTs of at most
//!   [`BATCH_BYTES`], so the operator holds one batch whatever the database's size;
//! - keeps the replica's data until it is complete: tables are loaded into staging schemas
//!   and only then moved into place (`RENAME TABLE`);
//! - is written outside the replica's binary log, and the replica's own GTID history (where
//!   errant transactions live) is reset.
//!
//! The loop runs it beside its ticks (see [`super::execute`]). Where a
//! [`Seeder`](super::physical::Seeder) reaches the files — local mode, and every MariaDB pod
//! in Kubernetes — MariaDB is copied physically instead ([`super::physical`]); the logical copy
//! serves servers no seeder reaches (a loop built with [`Topology::new`](super::manager::Topology::new)).

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, MySqlConnection};

use super::{
    dialect::{Seed, Source},
    server::{self, Server},
};

/// Schemas never copied: the server's own (users are created on every server alike).
const SYSTEM_SCHEMAS: &str = "'mysql','information_schema','performance_schema','sys'";
/// Staging schemas are named this, then the schema's position.
const STAGING: &str = "_chatcluster_seed_";
/// Largest INSERT statement the copy sends.
pub const BATCH_BYTES: usize = 1 << 20;

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

async fn run(conn: &mut MySqlConnection, sql: impl Into<String>) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(sql.into()))
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// Application schemas on a server, staging ones included.
async fn schemas(conn: &mut MySqlConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({SYSTEM_SCHEMAS}) ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await
}

/// Base tables of `schema`.
async fn tables(conn: &mut MySqlConnection, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
}

/// Open a consistent snapshot on the primary; the GTID position it was taken at.
async fn open_snapshot(conn: &mut MySqlConnection) -> Result<String, sqlx::Error> {
    run(
        conn,
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    )
    .await?;
    run(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT").await?;
    // MariaDB names the binary log position matching the snapshot; its GTID position follows.
    let rows = sqlx::query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .fetch_all(&mut *conn)
        .await?;
    let (mut file, mut pos) = (String::new(), String::new());
    for row in &rows {
        match server::text(row, "Variable_name").as_str() {
            "Binlog_snapshot_file" => file = server::text(row, "Value"),
            "Binlog_snapshot_position" => pos = server::text(row, "Value"),
            _ => {}
        }
    }
    let gtids: Option<String> = sqlx::query_scalar("SELECT BINLOG_GTID_POS(?, ?)")
        .bind(&file)
        .bind(pos.parse::<u64>().unwrap_or(0))
        .fetch_one(&mut *conn)
        .await?;
    Ok(gtids.unwrap_or_default())
}

/// The expression printing a row of `schema.table` as an SQL value tuple, built by the
/// server: QUOTE() for text and numbers (it prints NULL for NULL), hex for binary data, which
/// need not be valid text.
async fn row_literal(
    conn: &mut MySqlConnection,
    schema: &str,
    table: &str,
) -> Result<String, sqlx::Error> {
    let columns = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS type FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let values: Vec<String> = columns
        .iter()
        .map(|c| {
            let col = ident(&server::text(c, "name"));
            match server::text(c, "type").as_str() {
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    format!("IF({col} IS NULL, 'NULL', CONCAT('0x', HEX({col})))")
                }
                _ => format!("QUOTE({col})"),
            }
        })
        .collect();
    Ok(format!(
        "CONCAT('(', CONCAT_WS(',', {}), ')')",
        values.join(", ")
    ))
}

/// Stream `schema.table` from the primary's snapshot into schema `staging` on the replica.
async fn copy_table(
    primary: &mut MySqlConnection,
    replica: &mut MySqlConnection,
    schema: &str,
    table: &str,
    staging: &str,
) -> Result<(), sqlx::Error> {
    let qualified = format!("{}.{}", ident(schema), ident(table));
    let row = sqlx::query(AssertSqlSafe(format!("SHOW CREATE TABLE {qualified}")))
        .fetch_one(&mut *primary)
        .await?;
    run(replica, format!("USE {}", ident(staging))).await?;
    run(replica, server::text(&row, "Create Table")).await?;
    let literal = row_literal(primary, schema, table).await?;
    let head = format!("INSERT INTO {} VALUES ", ident(table));
    let mut batch = String::new();
    let mut rows = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT {literal} FROM {qualified}"
    )))
    .fetch(&mut *primary);
    while let Some(row) = rows.try_next().await? {
        if !batch.is_empty() && batch.len() + row.len() > BATCH_BYTES {
            run(replica, std::mem::take(&mut batch)).await?;
        }
        batch.push_str(if batch.is_empty() { &head } else { "," });
        batch.push_str(&row);
    }
    if !batch.is_empty() {
        run(replica, batch).await?;
    }
    Ok(())
}

/// Copy every application schema of the primary's snapshot into staging schemas on the
/// replica, then replace the replica's schemas with them; the snapshot's GTID position.
async fn copy(
    primary: &mut MySqlConnection,
    replica: &mut MySqlConnection,
) -> Result<String, sqlx::Error> {
    for s in [
        "SET SESSION sql_log_bin = 0",
        "SET SESSION foreign_key_checks = 0",
        "SET SESSION unique_checks = 0",
    ] {
        run(replica, s).await?;
    }
    // Whatever an interrupted copy left behind.
    for name in schemas(replica).await? {
        if name.starts_with(STAGING) {
            run(replica, format!("DROP DATABASE {}", ident(&name))).await?;
        }
    }
    let gtids = open_snapshot(primary).await?;
    let wanted = schemas(primary).await?;
    let mut creates = Vec::new();
    for (n, schema) in wanted.iter().enumerate() {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SHOW CREATE DATABASE {}",
            ident(schema)
        )))
        .fetch_one(&mut *primary)
        .await?;
        creates.push(server::text(&row, "Create Database"));
        let staging = format!("{STAGING}{n}");
        run(replica, format!("CREATE DATABASE {}", ident(&staging))).await?;
        for table in tables(primary, schema).await? {
            copy_table(primary, replica, schema, &table, &staging).await?;
        }
    }
    run(primary, "COMMIT").await?;
    // Complete: only now does the replica's own data go.
    for name in schemas(replica).await? {
        if !name.starts_with(STAGING) {
            run(replica, format!("DROP DATABASE {}", ident(&name))).await?;
        }
    }
    for (n, (schema, create)) in wanted.iter().zip(creates).enumerate() {
        let staging = format!("{STAGING}{n}");
        run(replica, create).await?;
        let moves: Vec<String> = tables(replica, &staging)
            .await?
            .iter()
            .map(|t| {
                let (from, to) = (ident(&staging), ident(schema));
                format!("{from}.{t} TO {to}.{t}", t = ident(t))
            })
            .collect();
        if !moves.is_empty() {
            run(replica, format!("RENAME TABLE {}", moves.join(", "))).await?;
        }
        run(replica, format!("DROP DATABASE {}", ident(&staging))).await?;
    }
    Ok(gtids)
}

/// Errors re-seeding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to a server failed.
    #[error(transparent)]
    Server(#[from] server::Error),
    /// The physical copy failed.
    #[error(transparent)]
    Physical(#[from] super::physical::Error),
    /// Copying failed.
    #[error("copying from {source_name} to {replica}: {error}")]
    Copy {
        /// The primary.
        source_name: String,
        /// The replica.
        replica: String,
        /// What failed.
        #[source]
        error: sqlx::Error,
    },
}

/// Replace `replica`'s data with `primary`'s and leave it ready to replicate from the
/// position copied (the caller points it at the primary and starts it).
pub async fn reseed(
    primary: &mut Server,
    replica: &mut Server,
    source: &Source<'_>,
) -> Result<(), Error> {
    let dialect = replica.dialect();
    replica
        .exec(&[
            dialect.stop_replica,
            dialect.reset_replica,
            dialect.make_read_only,
        ])
        .await?;
    match dialect.seed(source) {
        Seed::Clone(statements) => {
            // The server copies itself and restarts; the loop finds it again next tick.
            replica.exec(&statements).await?;
        }
        Seed::Logical => {
            let names = (primary.member.name.clone(), replica.member.name.clone());
            let result = copy(primary.session().await?, replica.session().await?).await;
            // The sessions carried settings and a snapshot: start clean next time.
            replica.disconnect();
            primary.disconnect();
            let gtids = result.map_err(|error| Error::Copy {
                source_name: names.0,
                replica: names.1,
                error,
            })?;
            replica
                .exec(&[
                    "SET SESSION sql_log_bin = 0".to_string(),
                    dialect.reset_binlog.to_string(),
                    dialect.set_applied(&gtids),
                    "SET SESSION sql_log_bin = 1".to_string(),
                ])
                .await?;
        }
    }
    Ok(())
}
