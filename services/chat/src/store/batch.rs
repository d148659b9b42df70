//! Many sends written by one statement, for group commit (`crate::group_commit`): N
//! concurrent sends cost one INSERT, one commit and one fsync instead of N.
//!
//! The messages travel as one JSON array read by `JSON_TABLE`, so the statement's text is
//! the same for every batch size and stays prepared. It keeps the rows whose sender the
//! service's [`Tables::may_send`] rule allows and whose client key is not taken yet, lets the
//! seq trigger number them in the batch's order (sorted by conversation, so two batches take
//! conversation row locks in one order and cannot deadlock on them), and returns what it
//! inserted (`RETURNING`, MariaDB). One autocommitted statement: it commits all or nothing.
//! A message it left out is sent by itself, which says why (NOT_FOUND, PERMISSION_DENIED) or
//! returns the first message of an idempotent retry.

use std::{collections::HashMap, sync::Arc};

use sqlx::{AssertSqlSafe, MySqlConnection, Row};

use super::messages::{NewMessage, Tables};
use crate::error::{Error, Result};

/// The INSERT of a batch for `t`; binds `sent_at_ms` and the batch as JSON ([`to_json`]).
fn insert_sql(t: Tables) -> String {
    format!(
        "INSERT INTO {messages} (conversation_id, seq, sender_id, text, client_key, sent_at_ms)
         SELECT j.conversation_id, 0, j.sender_id, j.text, j.client_key, ?
         FROM JSON_TABLE(?, '$[*]' COLUMNS (
           ord FOR ORDINALITY,
           conversation_id BIGINT UNSIGNED PATH '$.conversation_id',
           sender_id BIGINT UNSIGNED PATH '$.sender_id',
           text TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$.text',
           client_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$.client_key'
         )) AS j
         WHERE {access_rule}
           AND NOT EXISTS (SELECT 1 FROM {messages} taken
             WHERE taken.conversation_id = j.conversation_id AND taken.sender_id = j.sender_id
               AND taken.client_key = j.client_key)
         ORDER BY j.conversation_id, j.ord
         RETURNING conversation_id, seq, sender_id",
        messages = t.messages,
        access_rule = t.access_rule,
    )
}

/// The batch as the JSON array [`insert_sql`] reads.
pub fn to_json(batch: &[&NewMessage]) -> Result<String> {
    serde_json::to_string(batch).map_err(|e| Error::Internal(format!("batch to JSON: {e}")))
}

/// The seq each message of `batch` was stored with, from the `(conversation, sender, seq)`
/// rows the INSERT returned; None for one it left out. A batch holds at most one message per
/// conversation and sender, so a row names its message.
pub fn seqs(batch: &[&NewMessage], returned: &[(u64, u64, u64)]) -> Vec<Option<u64>> {
    let by_pair: HashMap<(u64, u64), u64> = returned
        .iter()
        .map(|&(conv, sender, seq)| ((conv, sender), seq))
        .collect();
    batch
        .iter()
        .map(|m| by_pair.get(&(m.conversation_id, m.sender_id)).copied())
        .collect()
}

/// The batch INSERT of one service, its text made once (every batch runs it).
#[derive(Debug, Clone)]
pub struct Insert(Arc<str>);

impl Insert {
    /// The batch INSERT for tables `t`.
    pub fn new(t: Tables) -> Self {
        Self(insert_sql(t).into())
    }

    /// Write `batch` (at most one message per conversation and sender) on `conn`, a primary
    /// connection, at `sent_at_ms`: the seq of each message, None for one left out.
    pub async fn run(
        &self,
        conn: &mut MySqlConnection,
        batch: &[&NewMessage],
        sent_at_ms: i64,
    ) -> std::result::Result<Vec<Option<u64>>, InsertError> {
        insert(conn, self.0.clone(), batch, sent_at_ms).await
    }
}

async fn insert(
    conn: &mut MySqlConnection,
    sql: Arc<str>,
    batch: &[&NewMessage],
    sent_at_ms: i64,
) -> std::result::Result<Vec<Option<u64>>, InsertError> {
    let json = to_json(batch).map_err(InsertError::Refused)?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(sent_at_ms)
        .bind(json)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| match e {
            // The server refused the statement, which rolled back whole.
            sqlx::Error::Database(_) => InsertError::Refused(e.into()),
            _ => InsertError::Unknown(e),
        })?;
    let mut returned = Vec::with_capacity(rows.len());
    for row in &rows {
        let get = |c: &str| row.try_get::<u64, _>(c);
        match (get("conversation_id"), get("sender_id"), get("seq")) {
            (Ok(conv), Ok(sender), Ok(seq)) => returned.push((conv, sender, seq)),
            // Committed, but unreadable: nobody may be told it failed.
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(InsertError::Unknown(e));
            }
        }
    }
    Ok(seqs(batch, &returned))
}

/// Why a batch was not written, as far as its senders are concerned.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// Nothing was written (the server refused the statement, or it was never sent): each
    /// message may be sent again by itself.
    #[error("batch not written: {0}")]
    Refused(Error),
    /// The statement may or may not have committed (the connection broke, or its answer could
    /// not be read): nobody can be told either way.
    #[error("batch outcome unknown: {0}")]
    Unknown(sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: u64, sender: u64, text: &str, key: &str) -> NewMessage {
        NewMessage::new(conv, sender, text.into(), key.into()).unwrap()
    }

    #[test]
    fn json_carries_text_exactly_and_no_key_as_null() {
        let a = msg(1, 2, "quote \" backslash \\ newline\n tab\t 😀 é", "");
        let b = msg(3, 4, "x", "key-1");
        let json = to_json(&[&a, &b]).unwrap();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0]["text"], a.text.as_str());
        assert_eq!(back[0]["client_key"], serde_json::Value::Null);
        assert_eq!(back[1]["client_key"], "key-1");
        assert_eq!(back[1]["conversation_id"], 3);
        assert_eq!(back[1]["sender_id"], 4);
    }

    #[test]
    fn seqs_follow_the_messages_not_the_returned_order() {
        let (a, b, c) = (msg(7, 1, "a", ""), msg(5, 1, "b", ""), msg(7, 2, "c", ""));
        // Returned sorted by conversation, `b` first; `c` left out.
        let got = seqs(&[&a, &b, &c], &[(5, 1, 40), (7, 1, 12)]);
        assert_eq!(got, vec![Some(12), Some(40), None]);
        assert_eq!(seqs(&[&a], &[]), vec![None]);
    }
}
