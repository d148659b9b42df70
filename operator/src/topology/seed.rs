//! Re-seeding a replica from the primary, for a replica that is new, errant, or cannot resume
//! replication (its source purged the binary logs it needs, or its relay log is broken).
//!
//! MySQL copies itself with the clone plugin (see [`Dialect::seed`]). MariaDB has no clone, so
//! the application schemas are copied logically from one consistent snapshot, and the replica
//! resumes from the snapshot's GTID position: every transaction after it arrives through
//! replication, none twice. The copy is written outside the replica's binary log, and the
//! replica's own GTID history (where errant transactions live) is reset. Fine for the chat
//! schemas of a laptop or a test; a large production dataset wants a physical copy
//! (mariadb-backup) instead, which this module does not do.

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, MySqlConnection};

use super::{
    dialect::{Seed, Source},
    server::{self, Server},
};

/// Schemas never copied: the server's own (users are created on every server alike).
const SYSTEM_SCHEMAS: &str = "'mysql','information_schema','performance_schema','sys'";
/// Largest INSERT statement the copy sends.
const BATCH_BYTES: usize = 1 << 20;

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// One table's definition and rows as SQL value tuples.
struct Table {
    name: String,
    create: String,
    rows: Vec<String>,
}

/// One schema's definition and tables.
struct Schema {
    name: String,
    create: String,
    tables: Vec<Table>,
}

/// A consistent copy of the application schemas, and the GTID position it was taken at.
struct Snapshot {
    gtids: String,
    schemas: Vec<Schema>,
}

/// Read the snapshot from `source` inside one consistent-snapshot transaction.
async fn snapshot(conn: &mut MySqlConnection) -> Result<Snapshot, sqlx::Error> {
    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await?;
    sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .execute(&mut *conn)
        .await?;
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
    let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({SYSTEM_SCHEMAS}) ORDER BY 1"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let mut schemas = Vec::new();
    for name in names {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SHOW CREATE DATABASE {}",
            ident(&name)
        )))
        .fetch_one(&mut *conn)
        .await?;
        let create = server::text(&row, "Create Database");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut copied = Vec::new();
        for table in tables {
            copied.push(copy_table(conn, &name, &table).await?);
        }
        schemas.push(Schema {
            name,
            create,
            tables: copied,
        });
    }
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(Snapshot {
        gtids: gtids.unwrap_or_default(),
        schemas,
    })
}

async fn copy_table(
    conn: &mut MySqlConnection,
    schema: &str,
    table: &str,
) -> Result<Table, sqlx::Error> {
    let qualified = format!("{}.{}", ident(schema), ident(table));
    let row = sqlx::query(AssertSqlSafe(format!("SHOW CREATE TABLE {qualified}")))
        .fetch_one(&mut *conn)
        .await?;
    let create = server::text(&row, "Create Table");
    let columns = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS type FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    // Each value as an SQL literal built by the server: QUOTE() for text and numbers (it
    // prints NULL for NULL), hex for binary data, which need not be valid text.
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
    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CONCAT('(', CONCAT_WS(',', {}), ')') FROM {qualified}",
        values.join(", ")
    )))
    .fetch(&mut *conn)
    .try_collect()
    .await?;
    Ok(Table {
        name: table.to_string(),
        create,
        rows,
    })
}

/// Load `snap` into `replica`: outside its binary log, replacing every application schema,
/// then reset its GTID history to the snapshot's position.
async fn load(
    conn: &mut MySqlConnection,
    snap: &Snapshot,
    reset_binlog: &str,
    set_applied: &str,
) -> Result<(), sqlx::Error> {
    for s in [
        "SET SESSION sql_log_bin = 0",
        "SET SESSION foreign_key_checks = 0",
        "SET SESSION unique_checks = 0",
    ] {
        sqlx::query(s).execute(&mut *conn).await?;
    }
    let existing: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ({SYSTEM_SCHEMAS})"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for name in existing {
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE {}", ident(&name))))
            .execute(&mut *conn)
            .await?;
    }
    for schema in &snap.schemas {
        sqlx::query(AssertSqlSafe(schema.create.clone()))
            .execute(&mut *conn)
            .await?;
        sqlx::query(AssertSqlSafe(format!("USE {}", ident(&schema.name))))
            .execute(&mut *conn)
            .await?;
        for table in &schema.tables {
            sqlx::query(AssertSqlSafe(table.create.clone()))
                .execute(&mut *conn)
                .await?;
            let head = format!("INSERT INTO {} VALUES ", ident(&table.name));
            let mut batch = String::new();
            for row in &table.rows {
                if !batch.is_empty() && batch.len() + row.len() > BATCH_BYTES {
                    sqlx::query(AssertSqlSafe(std::mem::take(&mut batch)))
                        .execute(&mut *conn)
                        .await?;
                }
                batch.push_str(if batch.is_empty() { &head } else { "," });
                batch.push_str(row);
            }
            if !batch.is_empty() {
                sqlx::query(AssertSqlSafe(batch))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    for s in [reset_binlog, set_applied, "SET SESSION sql_log_bin = 1"] {
        sqlx::query(AssertSqlSafe(s.to_string()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Errors re-seeding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to a server failed.
    #[error(transparent)]
    Server(#[from] server::Error),
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
            dialect.stop_replica(),
            dialect.reset_replica(),
            dialect.make_read_only(),
        ])
        .await?;
    match dialect.seed(source) {
        Seed::Clone(statements) => {
            // The server copies itself and restarts; the loop finds it again next tick.
            replica.exec(&statements).await?;
        }
        Seed::Logical => {
            let copy_err = |replica: &Server, primary: &Server| {
                let (r, p) = (replica.member.name.clone(), primary.member.name.clone());
                move |error| Error::Copy {
                    source_name: p,
                    replica: r,
                    error,
                }
            };
            let err = copy_err(replica, primary);
            let snap = snapshot(primary.session().await?).await.map_err(err)?;
            let err = copy_err(replica, primary);
            let set_applied = dialect.set_applied(&snap.gtids);
            let reset = dialect.reset_binlog();
            let result = load(replica.session().await?, &snap, reset, &set_applied)
                .await
                .map_err(err);
            // The session carried session settings: start clean next time.
            replica.disconnect();
            primary.disconnect();
            result?;
        }
    }
    Ok(())
}
