//! The DM service's tables: one conversation per pair of users, and the messages.

use sqlx::{MySqlConnection, Row, mysql::MySqlRow};

use super::messages::Tables;
use crate::{
    db::Db,
    error::{Error, Result},
    pb::dms::Conversation,
    token::now_ms,
};

/// The DM tables.
pub const TABLES: Tables = Tables {
    conversations: "dms_conversations",
    messages: "dms_messages",
    access_rule: "EXISTS (SELECT 1 FROM dms_conversations WHERE id = j.conversation_id AND j.sender_id IN (user_low, user_high))",
};

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE dms_conversations (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           user_low BIGINT UNSIGNED NOT NULL,
           user_high BIGINT UNSIGNED NOT NULL,
           last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
           created_at_ms BIGINT NOT NULL,
           UNIQUE KEY pair (user_low, user_high),
           KEY user_high (user_high)
         ) ENGINE=InnoDB"
            .into(),
        TABLES.messages_ddl(),
        TABLES.seq_trigger_ddl(),
    ]
}

/// Apply the `dms_` schema.
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "dms", &migrations()).await
}

/// The two users of conversation `id`; NOT_FOUND when it does not exist.
pub async fn participants(conn: &mut MySqlConnection, id: u64) -> Result<(u64, u64)> {
    let row = sqlx::query("SELECT user_low, user_high FROM dms_conversations WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("conversation {id} not found")))?;
    Ok((row.try_get("user_low")?, row.try_get("user_high")?))
}

fn row_to_conversation(row: &MySqlRow) -> Result<Conversation> {
    Ok(Conversation {
        id: row.try_get("id")?,
        user_ids: vec![row.try_get("user_low")?, row.try_get("user_high")?],
        last_seq: row.try_get("last_seq")?,
    })
}

/// The conversation of users `a` and `b`, created the first time: the pair is unique, so both
/// get the same one and opening again is harmless.
pub async fn open(conn: &mut MySqlConnection, a: u64, b: u64) -> Result<Conversation> {
    let (low, high) = (a.min(b), a.max(b));
    sqlx::query(
        "INSERT INTO dms_conversations (user_low, user_high, created_at_ms) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE id = id",
    )
    .bind(low)
    .bind(high)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "SELECT id, user_low, user_high, last_seq FROM dms_conversations WHERE user_low = ? AND user_high = ?",
    )
    .bind(low)
    .bind(high)
    .fetch_one(&mut *conn)
    .await?;
    row_to_conversation(&row)
}

/// `user`'s conversations, at most 1,000, oldest first.
pub async fn of_user(conn: &mut MySqlConnection, user: u64) -> Result<Vec<Conversation>> {
    sqlx::query(
        "SELECT id, user_low, user_high, last_seq FROM dms_conversations
         WHERE user_low = ? OR user_high = ? ORDER BY id LIMIT 1000",
    )
    .bind(user)
    .bind(user)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(row_to_conversation)
    .collect()
}
