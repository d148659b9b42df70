//! The servers service's tables: servers, their members with roles, channels (the
//! conversations), invites, and the messages.

use rand::{Rng, distr::Alphanumeric};
use sqlx::{Connection, MySqlConnection, Row, mysql::MySqlRow};

use super::{Roster, messages::Tables};
use crate::{
    db::Db,
    error::{Error, Result},
    pb::servers::{Channel, Invite, Member, Role, Server},
    token::now_ms,
};

/// The server tables; channels are the conversations.
pub const TABLES: Tables = Tables {
    conversations: "servers_channels",
    messages: "servers_messages",
    access_rule: "EXISTS (SELECT 1 FROM servers_channels c JOIN servers_members m ON m.server_id = c.server_id WHERE c.id = j.conversation_id AND c.deleted = 0 AND m.user_id = j.sender_id)",
};

/// Server membership.
pub(crate) const ROSTER: Roster = Roster {
    parents: "servers_servers",
    members: "servers_members",
    key: "server_id",
    what: "server",
};

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE servers_servers (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           name VARCHAR(400) NOT NULL,
           created_at_ms BIGINT NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        ROSTER.members_ddl(),
        "CREATE TABLE servers_channels (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           server_id BIGINT UNSIGNED NOT NULL,
           name VARCHAR(400) NOT NULL,
           last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
           deleted TINYINT(1) NOT NULL DEFAULT 0,
           created_at_ms BIGINT NOT NULL,
           KEY server_id (server_id)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        "CREATE TABLE servers_invites (
           code VARCHAR(16) NOT NULL PRIMARY KEY,
           server_id BIGINT UNSIGNED NOT NULL,
           created_by BIGINT UNSIGNED NOT NULL,
           expires_at_ms BIGINT NOT NULL,
           max_uses INT UNSIGNED NOT NULL,
           uses INT UNSIGNED NOT NULL DEFAULT 0
         ) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin"
            .into(),
        TABLES.messages_ddl(),
        TABLES.seq_trigger_ddl(),
    ]
}

/// Apply the `servers_` schema.
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "servers", &migrations()).await
}

/// `user`'s role in `server` (None: not a member); NOT_FOUND when the server does not exist.
pub async fn role(conn: &mut MySqlConnection, server: u64, user: u64) -> Result<Option<Role>> {
    let code = ROSTER.role(conn, server, user).await?;
    Ok(code.and_then(|r| Role::try_from(r).ok()))
}

/// The server a live channel belongs to; NOT_FOUND for a deleted or unknown channel.
pub async fn channel_server(conn: &mut MySqlConnection, channel: u64) -> Result<u64> {
    sqlx::query_scalar("SELECT server_id FROM servers_channels WHERE id = ? AND deleted = 0")
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("channel {channel} not found")))
}

const CHANNEL_COLUMNS: &str = "id, server_id, name, last_seq";

fn row_to_channel(row: &MySqlRow) -> Result<Channel> {
    Ok(Channel {
        id: row.try_get("id")?,
        server_id: row.try_get("server_id")?,
        name: row.try_get("name")?,
        last_seq: row.try_get("last_seq")?,
    })
}

/// A live channel.
pub async fn channel(conn: &mut MySqlConnection, id: u64) -> Result<Channel> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM servers_channels WHERE id = ? AND deleted = 0"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NotFound(format!("channel {id} not found")))?;
    row_to_channel(&row)
}

/// A server with its members and live channels.
pub async fn load(conn: &mut MySqlConnection, id: u64) -> Result<Server> {
    let name: String = sqlx::query_scalar("SELECT name FROM servers_servers WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("server {id} not found")))?;
    let members = ROSTER
        .members(conn, id)
        .await?
        .into_iter()
        .map(|m| Member {
            user_id: m.user_id,
            role: m.role,
        })
        .collect();
    let channels = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM servers_channels WHERE server_id = ? AND deleted = 0 ORDER BY id"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(row_to_channel)
    .collect::<Result<Vec<_>>>()?;
    Ok(Server {
        id,
        name,
        members,
        channels,
    })
}

/// The servers `user` is in, at most 1,000.
pub async fn of_user(conn: &mut MySqlConnection, user: u64) -> Result<Vec<Server>> {
    let mut servers = Vec::new();
    for id in ROSTER.of_user(conn, user).await? {
        servers.push(load(conn, id).await?);
    }
    Ok(servers)
}

/// Create a server owned by `owner` with a `general` channel, in one transaction; its id.
pub async fn create(conn: &mut MySqlConnection, name: &str, owner: u64) -> Result<u64> {
    let mut tx = conn.begin().await?;
    let now = now_ms();
    let id = sqlx::query("INSERT INTO servers_servers (name, created_at_ms) VALUES (?, ?)")
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .last_insert_id();
    ROSTER
        .add(&mut tx, id, owner, Role::Owner as i32, now)
        .await?;
    insert_channel(&mut tx, id, "general", now).await?;
    tx.commit().await?;
    Ok(id)
}

async fn insert_channel(
    conn: &mut MySqlConnection,
    server: u64,
    name: &str,
    now: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO servers_channels (server_id, name, created_at_ms) VALUES (?, ?, ?)",
    )
    .bind(server)
    .bind(name)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .last_insert_id())
}

/// Create an invite to `server` by `creator`, valid `ttl_s` seconds for `max_uses` joins
/// (0: unlimited), with a fresh random code.
pub async fn create_invite(
    conn: &mut MySqlConnection,
    server: u64,
    creator: u64,
    ttl_s: u32,
    max_uses: u32,
) -> Result<Invite> {
    let code: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    let expires = now_ms() + i64::from(ttl_s) * 1000;
    sqlx::query(
        "INSERT INTO servers_invites (code, server_id, created_by, expires_at_ms, max_uses) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&code)
    .bind(server)
    .bind(creator)
    .bind(expires)
    .bind(max_uses)
    .execute(&mut *conn)
    .await?;
    Ok(Invite {
        code,
        server_id: server,
        expires_at_ms: expires,
        max_uses,
        uses: 0,
    })
}

/// `user` joins through invite `code`, in one transaction that locks the invite: an expired
/// or used-up invite is refused; joining again uses nothing up. The server's id.
pub async fn join(conn: &mut MySqlConnection, code: &str, user: u64) -> Result<u64> {
    let mut tx = conn.begin().await?;
    let invite = sqlx::query(
        "SELECT server_id, expires_at_ms, max_uses, uses FROM servers_invites WHERE code = ? FOR UPDATE",
    )
    .bind(code)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Error::NotFound("no such invite".into()))?;
    let server: u64 = invite.try_get("server_id")?;
    let expires: i64 = invite.try_get("expires_at_ms")?;
    let (max_uses, uses): (u32, u32) = (invite.try_get("max_uses")?, invite.try_get("uses")?);
    let now = now_ms();
    if expires <= now {
        return Err(Error::FailedPrecondition("the invite has expired".into()));
    }
    if max_uses != 0 && uses >= max_uses {
        return Err(Error::FailedPrecondition(
            "the invite has been used up".into(),
        ));
    }
    if ROSTER
        .add(&mut tx, server, user, Role::Member as i32, now)
        .await?
    {
        sqlx::query("UPDATE servers_invites SET uses = uses + 1 WHERE code = ?")
            .bind(code)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(server)
}

/// Remove `user` from `server`.
pub async fn remove_member(conn: &mut MySqlConnection, server: u64, user: u64) -> Result<()> {
    ROSTER.remove(conn, server, user).await
}

/// Give `user` `role` (on a connection in a transaction when it hands over ownership).
pub async fn set_role(
    conn: &mut MySqlConnection,
    server: u64,
    user: u64,
    role: Role,
) -> Result<()> {
    ROSTER.set_role(conn, server, user, role as i32).await
}

/// The ids of `server`'s live channels.
pub async fn channel_ids(conn: &mut MySqlConnection, server: u64) -> Result<Vec<u64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM servers_channels WHERE server_id = ? AND deleted = 0")
            .bind(server)
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// How many live channels `server` has.
pub async fn channel_count(conn: &mut MySqlConnection, server: u64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM servers_channels WHERE server_id = ? AND deleted = 0",
    )
    .bind(server)
    .fetch_one(&mut *conn)
    .await?)
}

/// Create channel `name` in `server`; its id.
pub async fn create_channel(conn: &mut MySqlConnection, server: u64, name: &str) -> Result<u64> {
    insert_channel(conn, server, name, now_ms()).await
}

/// Rename a channel.
pub async fn rename_channel(conn: &mut MySqlConnection, channel: u64, name: &str) -> Result<()> {
    sqlx::query("UPDATE servers_channels SET name = ? WHERE id = ?")
        .bind(name)
        .bind(channel)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Delete a channel (its row stays, marked, so its messages keep their seqs).
pub async fn delete_channel(conn: &mut MySqlConnection, channel: u64) -> Result<()> {
    sqlx::query("UPDATE servers_channels SET deleted = 1 WHERE id = ?")
        .bind(channel)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
