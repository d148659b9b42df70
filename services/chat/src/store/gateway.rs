//! What the session gateway reads and keeps: every conversation a user belongs to across the
//! three conversation services (their tables, read here, are theirs), who among a set of users
//! may read one conversation, and the gateway's own table of read markers.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, MySqlConnection, Row};

use super::{dms, groups, messages::Tables, servers};
use crate::{db::Db, error::Result, pb::gateway::Kind};

/// Conversations one session follows, at most: a user in more sees the first this many.
pub const MAX_CONVERSATIONS: usize = 1000;

/// Servers one session follows the channel lists of, at most.
pub const MAX_SERVERS: usize = 200;

/// Users one [`allowed_among`] statement asks about.
pub const ALLOWED_CHUNK: usize = 64;

/// The conversation kinds, each with the service whose tables and topics hold it.
pub const KINDS: [Kind; 3] = [Kind::Group, Kind::Dm, Kind::Channel];

/// The service of a conversation kind: the first part of its hub topic and broker subject.
pub fn service(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Group => Some("groups"),
        Kind::Dm => Some("dms"),
        Kind::Channel => Some("servers"),
        Kind::Unspecified => None,
    }
}

/// The tables of a conversation kind.
pub fn tables(kind: Kind) -> Option<Tables> {
    match kind {
        Kind::Group => Some(groups::TABLES),
        Kind::Dm => Some(dms::TABLES),
        Kind::Channel => Some(servers::TABLES),
        Kind::Unspecified => None,
    }
}

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE gateway_read_markers (
           user_id BIGINT UNSIGNED NOT NULL,
           kind TINYINT NOT NULL,
           conversation_id BIGINT UNSIGNED NOT NULL,
           read_seq BIGINT UNSIGNED NOT NULL,
           PRIMARY KEY (user_id, kind, conversation_id)
         ) ENGINE=InnoDB"
            .into(),
    ]
}

/// Apply the `gateway_` schema.
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "gateway", &migrations()).await
}

/// One conversation of a user, as the gateway lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Its kind.
    pub kind: Kind,
    /// Its id in that kind's service.
    pub id: u64,
    /// Its newest seq.
    pub last_seq: u64,
    /// The user's read marker in it.
    pub read_seq: u64,
    /// For a channel, its server; else 0.
    pub server: u64,
}

/// What a user belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memberships {
    /// Their conversations, by kind then id.
    pub conversations: Vec<Membership>,
    /// Their servers, whose channel lists a session follows (a server may have no channel).
    pub servers: Vec<u64>,
}

/// Every conversation `user` belongs to, at most [`MAX_CONVERSATIONS`]: groups they are a
/// member of, their DMs, and the live channels of their servers, with their read markers;
/// and their servers. One statement, so one consistent view.
pub async fn conversations_of(conn: &mut MySqlConnection, user: u64) -> Result<Memberships> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        // Cast: a UNION of literals and columns, and COALESCE, leave the types to the server.
        "SELECT CAST(c.kind AS SIGNED) AS kind, CAST(c.id AS UNSIGNED) AS id,
           CAST(c.last_seq AS UNSIGNED) AS last_seq, CAST(c.server_id AS UNSIGNED) AS server_id,
           CAST(COALESCE(r.read_seq, 0) AS UNSIGNED) AS read_seq
         FROM (
           SELECT {group} AS kind, g.id, g.last_seq, 0 AS server_id
             FROM groups_members m JOIN groups_groups g ON g.id = m.group_id WHERE m.user_id = ?
           UNION ALL
           SELECT {dm}, d.id, d.last_seq, 0
             FROM dms_conversations d WHERE d.user_low = ? OR d.user_high = ?
           UNION ALL
           SELECT {channel}, ch.id, ch.last_seq, ch.server_id
             FROM servers_members m JOIN servers_channels ch ON ch.server_id = m.server_id
             WHERE m.user_id = ? AND ch.deleted = 0
           UNION ALL
           SELECT {server}, m.server_id, 0, m.server_id FROM servers_members m WHERE m.user_id = ?
         ) c
         LEFT JOIN gateway_read_markers r
           ON r.user_id = ? AND r.kind = c.kind AND r.conversation_id = c.id
         ORDER BY c.kind = {server}, c.kind, c.id LIMIT {limit}",
        group = Kind::Group as i32,
        dm = Kind::Dm as i32,
        channel = Kind::Channel as i32,
        // Servers are listed under the kind no conversation has, after the conversations (so
        // they never crowd them out of the limit).
        server = Kind::Unspecified as i32,
        limit = MAX_CONVERSATIONS + MAX_SERVERS,
    )))
    .bind(user)
    .bind(user)
    .bind(user)
    .bind(user)
    .bind(user)
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Memberships::default();
    for row in &rows {
        let kind = i32::try_from(row.try_get::<i64, _>("kind")?)
            .ok()
            .and_then(|k| Kind::try_from(k).ok())
            .unwrap_or(Kind::Unspecified);
        let id: u64 = row.try_get("id")?;
        if kind == Kind::Unspecified {
            out.servers.push(id);
            continue;
        }
        if out.conversations.len() == MAX_CONVERSATIONS {
            continue;
        }
        let read_seq: u64 = row.try_get("read_seq")?;
        let last_seq: u64 = row.try_get("last_seq")?;
        out.conversations.push(Membership {
            kind,
            id,
            last_seq,
            // A marker past the newest seq (a conversation restored from an older backup)
            // reads as "all read".
            read_seq: read_seq.min(last_seq),
            server: row.try_get("server_id")?,
        });
    }
    Ok(out)
}

/// Those of `users` that conversation `conv` (of the service of `t`) lets read, by the
/// service's own access rule, in one statement per [`ALLOWED_CHUNK`] users. Sent as text with
/// the ids written in (numbers only, so nothing to inject): MariaDB 10.11 loses track of a
/// derived table's columns inside the servers' rule from a prepared statement's second run
/// ("Unknown column 'j.sender_id'").
pub async fn allowed_among(
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    users: &[u64],
) -> Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for chunk in users.chunks(ALLOWED_CHUNK) {
        let pairs: Vec<String> = chunk
            .iter()
            .map(|user| format!("SELECT {conv} AS conversation_id, {user} AS sender_id"))
            .collect();
        let sql = format!(
            "SELECT CAST(j.sender_id AS UNSIGNED) FROM ({}) j WHERE {}",
            pairs.join(" UNION ALL "),
            t.access_rule
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            out.insert(row.try_get::<u64, _>(0)?);
        }
    }
    Ok(out)
}

/// Move `user`'s read marker in a conversation forward to `seq` (never back); the marker now.
pub async fn mark_read(
    conn: &mut MySqlConnection,
    user: u64,
    kind: Kind,
    conv: u64,
    seq: u64,
) -> Result<u64> {
    sqlx::query(
        "INSERT INTO gateway_read_markers (user_id, kind, conversation_id, read_seq)
         VALUES (?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
    )
    .bind(user)
    .bind(kind as i32)
    .bind(conv)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT read_seq FROM gateway_read_markers WHERE user_id = ? AND kind = ? AND conversation_id = ?",
    )
    .bind(user)
    .bind(kind as i32)
    .bind(conv)
    .fetch_one(&mut *conn)
    .await?)
}
