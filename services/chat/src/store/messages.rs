//! Messages, the same for every conversation kind: each service keeps them in its own tables
//! (`<prefix>_messages`, with `last_seq` on its conversation table) and checks access itself
//! before calling here.
//!
//! Sequence numbers come from the conversation row, incremented by a trigger of the message
//! table ([`Tables::seq_trigger_ddl`]) inside the INSERT itself: the row lock orders
//! concurrent sends, so seqs are 1, 2, 3, … with no gap, and a send is one autocommitted
//! statement — one round trip and one commit — plus one for its seq and token. A client key
//! makes a send idempotent: the unique key (conversation, sender, key) refuses the second
//! INSERT (and with it the trigger's increment), and the first message is returned.

use sqlx::{AssertSqlSafe, Connection, MySqlConnection, Row, mysql::MySqlRow};

use crate::{
    db::Db,
    error::{Error, Result, is_duplicate},
    pb::chat::{HistoryRequest, HistoryResponse, Message},
    token::now_ms,
};

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest client idempotency key, in bytes.
pub const MAX_CLIENT_KEY: usize = 64;
/// History page size when the request gives none, and the largest allowed.
pub const DEFAULT_HISTORY: u32 = 50;
/// Largest history page.
pub const MAX_HISTORY: u32 = 200;

/// The two tables of one service's conversations.
#[derive(Debug, Clone, Copy)]
pub struct Tables {
    /// The conversation table (`id`, `last_seq`).
    pub conversations: &'static str,
    /// The message table.
    pub messages: &'static str,
    /// Who may read and send, as an SQL condition on `j.conversation_id` and `j.sender_id`
    /// (the user): the service's access rule (its `Membership`), false for a conversation
    /// that does not exist. A batched send checks it inside its INSERT ([`super::batch`]), a
    /// delivery inside its read ([`readable_range`]); where it says no, the `Membership`
    /// check runs and says why.
    pub access_rule: &'static str,
}

impl Tables {
    /// DDL of the message table.
    pub fn messages_ddl(&self) -> String {
        format!(
            "CREATE TABLE {} (
               conversation_id BIGINT UNSIGNED NOT NULL,
               seq BIGINT UNSIGNED NOT NULL,
               sender_id BIGINT UNSIGNED NOT NULL,
               text TEXT NOT NULL,
               client_key VARCHAR(64) NULL,
               sent_at_ms BIGINT NOT NULL,
               edited_at_ms BIGINT NOT NULL DEFAULT 0,
               deleted TINYINT(1) NOT NULL DEFAULT 0,
               PRIMARY KEY (conversation_id, seq),
               UNIQUE KEY idempotency (conversation_id, sender_id, client_key)
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            self.messages
        )
    }

    /// DDL of the trigger numbering each new message sent with seq 0: it bumps the
    /// conversation's `last_seq` (taking its row lock until the INSERT commits), gives the
    /// message that seq, and leaves `<table>:<conversation>:<seq>` in the session variable
    /// [`SENT_VARIABLE`] for the sender to read back — a trigger's `LAST_INSERT_ID` does not
    /// outlive it. A missing conversation fails the INSERT. A row inserted with its seq
    /// already set is left alone: that is how a chatd of before the trigger sends, and during
    /// a rolling upgrade both kinds write. Row-based binlogs carry the rows the trigger
    /// wrote; replicas do not fire it again. `IF NOT EXISTS`: a migration interrupted after
    /// the trigger was made, before its step was recorded, runs again.
    pub fn seq_trigger_ddl(&self) -> String {
        format!(
            "CREATE TRIGGER IF NOT EXISTS {messages}_seq BEFORE INSERT ON {messages} FOR EACH ROW
             BEGIN
               IF NEW.seq = 0 THEN
                 UPDATE {conversations} SET last_seq = last_seq + 1 WHERE id = NEW.conversation_id;
                 IF ROW_COUNT() = 0 THEN
                   SIGNAL SQLSTATE '{NO_CONVERSATION}' SET MESSAGE_TEXT = 'no such conversation';
                 END IF;
                 SET NEW.seq = (SELECT last_seq FROM {conversations} WHERE id = NEW.conversation_id);
                 SET {SENT_VARIABLE} = CONCAT('{messages}:', NEW.conversation_id, ':', NEW.seq);
               END IF;
             END",
            messages = self.messages,
            conversations = self.conversations,
        )
    }
}

/// The session variable the seq trigger leaves `<table>:<conversation>:<seq>` in: the table
/// and conversation make sure the seq read back is this INSERT's, not one an earlier send on
/// the same pooled connection left (if the trigger were missing, say after a restore without
/// triggers).
const SENT_VARIABLE: &str = "@chatcluster_sent";
/// The SQLSTATE the seq trigger signals for a conversation that does not exist (a class the
/// servers leave to applications).
const NO_CONVERSATION: &str = "45001";

/// A message written, with the token of the write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The message as stored.
    pub message: Message,
    /// Consistency token covering the write.
    pub token: String,
    /// False when an idempotent retry returned an earlier message.
    pub fresh: bool,
}

/// Check a message text: not empty or blank, not too long. It is stored exactly as given.
pub fn check_text(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::InvalidArgument("message text is empty".into()));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(Error::InvalidArgument(format!(
            "message text is {chars} characters, more than {MAX_TEXT_CHARS}"
        )));
    }
    // C0 and C1 controls (terminal escapes among them) have no place in a message; newlines
    // and tabs do.
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::InvalidArgument(
            "message text contains control characters (newlines and tabs are fine)".into(),
        ));
    }
    Ok(())
}

fn row_to_message(row: &MySqlRow) -> Result<Message> {
    Ok(Message {
        conversation_id: row.try_get("conversation_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        text: row.try_get("text")?,
        sent_at_ms: row.try_get("sent_at_ms")?,
        edited_at_ms: row.try_get("edited_at_ms")?,
        deleted: row.try_get::<i8, _>("deleted")? != 0,
        client_key: row
            .try_get::<Option<String>, _>("client_key")?
            .unwrap_or_default(),
    })
}

const COLUMNS: &str =
    "conversation_id, seq, sender_id, text, client_key, sent_at_ms, edited_at_ms, deleted";

/// A message about to be sent, checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewMessage {
    /// Where to.
    pub conversation_id: u64,
    /// Who sends it.
    pub sender_id: u64,
    /// Its text, as [`check_text`] allows.
    pub text: String,
    /// The sender's idempotency key, if any.
    pub client_key: Option<String>,
}

impl NewMessage {
    /// `text` from `sender` to `conv`, with `client_key` (empty: none): INVALID_ARGUMENT
    /// when the text or the key is not allowed.
    pub fn new(conv: u64, sender: u64, text: String, client_key: String) -> Result<Self> {
        check_text(&text)?;
        if client_key.len() > MAX_CLIENT_KEY {
            return Err(Error::InvalidArgument(format!(
                "client_key is longer than {MAX_CLIENT_KEY} bytes"
            )));
        }
        Ok(Self {
            conversation_id: conv,
            sender_id: sender,
            text,
            client_key: (!client_key.is_empty()).then_some(client_key),
        })
    }

    /// This message, stored with `seq` at `sent_at_ms` by a write `token` covers.
    pub fn written(self, seq: u64, sent_at_ms: i64, token: String) -> Written {
        Written {
            message: Message {
                conversation_id: self.conversation_id,
                seq,
                sender_id: self.sender_id,
                text: self.text,
                sent_at_ms,
                edited_at_ms: 0,
                deleted: false,
                client_key: self.client_key.unwrap_or_default(),
            },
            token,
            fresh: true,
        }
    }
}

/// Send `msg` by itself, on `conn` (a primary connection, on which the caller checked
/// access): NOT_FOUND when the conversation does not exist; with a client key already
/// used, the first message.
pub async fn send(
    db: &Db,
    conn: &mut MySqlConnection,
    t: Tables,
    msg: NewMessage,
) -> Result<Written> {
    let (conv, sender) = (msg.conversation_id, msg.sender_id);
    let sent_at_ms = now_ms();
    let inserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (conversation_id, seq, sender_id, text, client_key, sent_at_ms) VALUES (?, 0, ?, ?, ?, ?)",
        t.messages
    )))
    .bind(conv)
    .bind(sender)
    .bind(&msg.text)
    .bind(msg.client_key.as_deref())
    .bind(sent_at_ms)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {SENT_VARIABLE} AS sent, {} AS token",
                db.dialect().commit_token
            )))
            .fetch_one(&mut *conn)
            .await?;
            let sent: Option<String> = row.try_get("sent")?;
            let token: Option<String> = row.try_get("token")?;
            let seq = sent
                .as_deref()
                .and_then(|s| s.strip_prefix(&format!("{}:{conv}:", t.messages)))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "{} has no seq trigger: its message was stored without a seq",
                        t.messages
                    ))
                })?;
            Ok(msg.written(seq, sent_at_ms, token.unwrap_or_default()))
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(NO_CONVERSATION) => {
            Err(Error::NotFound(format!("conversation {conv} not found")))
        }
        // A retry with the same key (or a concurrent one that won): return the first message.
        Err(e) if msg.client_key.is_some() && is_duplicate(&e) => {
            let key = msg.client_key.as_deref().unwrap_or_default();
            let existing = by_client_key(conn, t, conv, sender, key)
                .await?
                .ok_or_else(|| Error::Internal("duplicate key without a row".into()))?;
            // Not this connection's last commit, which may be another's: everything the
            // server has applied covers the first send's.
            let token = db.executed_token(conn).await?;
            Ok(Written {
                message: existing,
                token,
                fresh: false,
            })
        }
        Err(e) => Err(e.into()),
    }
}

async fn by_client_key(
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    sender: u64,
    key: &str,
) -> Result<Option<Message>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE conversation_id = ? AND sender_id = ? AND client_key = ?",
        t.messages
    )))
    .bind(conv)
    .bind(sender)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(row_to_message).transpose()
}

/// Who may change a message: its sender, or (for deletes) a moderator of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// Replace the text (sender only).
    Edit(&'a str),
    /// Delete (sender, or a moderator when `moderator` is true).
    Delete {
        /// The caller may delete other people's messages.
        moderator: bool,
    },
}

/// Edit or delete message `seq` of `conv` as `caller`, on `conn` (a primary connection).
pub async fn change(
    db: &Db,
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    seq: u64,
    caller: u64,
    change: Change<'_>,
) -> Result<Written> {
    if let Change::Edit(text) = change {
        check_text(text)?;
    }
    let mut tx = conn.begin().await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE conversation_id = ? AND seq = ? FOR UPDATE",
        t.messages
    )))
    .bind(conv)
    .bind(seq)
    .fetch_optional(&mut *tx)
    .await?;
    let mut message = row
        .as_ref()
        .map(row_to_message)
        .transpose()?
        .filter(|m| !m.deleted)
        .ok_or_else(|| Error::NotFound(format!("message {seq} not found")))?;
    let allowed = match change {
        Change::Edit(_) => message.sender_id == caller,
        Change::Delete { moderator } => message.sender_id == caller || moderator,
    };
    if !allowed {
        return Err(Error::PermissionDenied(match change {
            Change::Edit(_) => "only the sender may edit a message".into(),
            Change::Delete { .. } => "only the sender or a moderator may delete a message".into(),
        }));
    }
    let now = now_ms();
    match change {
        Change::Edit(text) => {
            message.text = text.to_string();
            message.edited_at_ms = now;
        }
        Change::Delete { .. } => {
            message.text = String::new();
            message.deleted = true;
            message.edited_at_ms = now;
        }
    }
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {} SET text = ?, edited_at_ms = ?, deleted = ? WHERE conversation_id = ? AND seq = ?",
        t.messages
    )))
    .bind(&message.text)
    .bind(message.edited_at_ms)
    .bind(message.deleted)
    .bind(conv)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let token = db.commit_token(conn).await?;
    Ok(Written {
        message,
        token,
        fresh: true,
    })
}

/// A page of history, read through `conn`.
pub async fn history(
    conn: &mut MySqlConnection,
    t: Tables,
    req: &HistoryRequest,
) -> Result<HistoryResponse> {
    if req.before != 0 && req.after != 0 {
        return Err(Error::InvalidArgument(
            "give before or after, not both".into(),
        ));
    }
    let limit = match req.limit {
        0 => DEFAULT_HISTORY,
        n if n > MAX_HISTORY => {
            return Err(Error::InvalidArgument(format!(
                "limit {n} is more than {MAX_HISTORY}"
            )));
        }
        n => n,
    };
    let (condition, order, bound) = if req.after != 0 {
        ("seq > ?", "ASC", req.after)
    } else if req.before != 0 {
        ("seq < ?", "DESC", req.before)
    } else {
        ("seq <= ?", "DESC", u64::MAX >> 1)
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE conversation_id = ? AND {condition} ORDER BY seq {order} LIMIT ?",
        t.messages
    )))
    .bind(req.conversation_id)
    .bind(bound)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() > limit as usize;
    let messages = rows
        .iter()
        .take(limit as usize)
        .map(row_to_message)
        .collect::<Result<Vec<_>>>()?;
    Ok(HistoryResponse { messages, more })
}

/// What one read of new messages found, with the reader's access checked in the same
/// statement.
#[derive(Debug)]
pub enum Readable {
    /// The access rule allows the reader: these messages, oldest first.
    Allowed(Vec<Message>),
    /// There are messages after the reader's seq, but the access rule says no.
    Denied,
    /// Nothing after the reader's seq, so the statement could not say: ask the `Membership`.
    Nothing,
}

/// The messages of `conv` after seq `after` (oldest first, at most `limit`), each row also
/// answering whether `user` may read them (the service's [`access_rule`](Tables::access_rule)):
/// a delivery's one round trip.
pub async fn readable_range(
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    user: u64,
    after: u64,
    limit: u32,
) -> Result<Readable> {
    // `j` holds the rule's two names; the conversation is bound again for the range, so the
    // primary key orders the rows (no sort). (Nesting `j` in a second derived table fails
    // from a prepared statement's second run on MariaDB 10.11: "Unknown column
    // 'j.conversation_id'".)
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("m.{c}")).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT CAST({rule} AS SIGNED) AS ok, {columns}
         FROM {messages} m, (SELECT ? AS conversation_id, ? AS sender_id) j
         WHERE m.conversation_id = ? AND m.seq > ? ORDER BY m.seq ASC LIMIT ?",
        rule = t.access_rule,
        columns = columns.join(", "),
        messages = t.messages,
    )))
    .bind(conv)
    .bind(user)
    .bind(conv)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(Readable::Nothing);
    };
    if first.try_get::<i64, _>("ok")? != 1 {
        return Ok(Readable::Denied);
    }
    Ok(Readable::Allowed(
        rows.iter().map(row_to_message).collect::<Result<_>>()?,
    ))
}

/// Messages of `conv` with seq in `(after, upto]`, oldest first, at most `limit`.
pub async fn range(
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    after: u64,
    limit: u32,
) -> Result<Vec<Message>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
        t.messages
    )))
    .bind(conv)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(row_to_message).collect()
}

/// One message.
pub async fn get(
    conn: &mut MySqlConnection,
    t: Tables,
    conv: u64,
    seq: u64,
) -> Result<Option<Message>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE conversation_id = ? AND seq = ?",
        t.messages
    )))
    .bind(conv)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(row_to_message).transpose()
}

/// Conversation ids one [`last_seqs`] statement asks for: lists are padded to it with id 0,
/// which no conversation has, so the one statement text stays prepared.
pub const LAST_SEQS_CHUNK: usize = 64;

/// The newest seq of each of `convs` that exists (0 for one with no message yet), in one
/// statement per [`LAST_SEQS_CHUNK`] ids.
pub async fn last_seqs(
    conn: &mut MySqlConnection,
    t: Tables,
    convs: &[u64],
) -> Result<Vec<(u64, u64)>> {
    let marks = vec!["?"; LAST_SEQS_CHUNK].join(", ");
    let sql = format!(
        "SELECT id, last_seq FROM {} WHERE id IN ({marks})",
        t.conversations
    );
    let mut out = Vec::with_capacity(convs.len());
    for chunk in convs.chunks(LAST_SEQS_CHUNK) {
        let padding = std::iter::repeat_n(&0, LAST_SEQS_CHUNK - chunk.len());
        let mut query = sqlx::query_as::<_, (u64, u64)>(AssertSqlSafe(sql.clone()));
        for id in chunk.iter().chain(padding) {
            query = query.bind(*id);
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert!(check_text("hi").is_ok());
        assert!(check_text("  <script>alert(1)</script>'; DROP TABLE x; --  ").is_ok());
        for blank in ["", " ", "\n\t", "\u{3000}"] {
            assert!(
                matches!(check_text(blank), Err(Error::InvalidArgument(_))),
                "{blank:?}"
            );
        }
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS + 1)).is_err());
        assert!(check_text("clear \u{1b}[2J screen").is_err());
        assert!(check_text("c1 \u{9b}31m").is_err());
        assert!(check_text("two\nlines\tand a tab").is_ok());
    }
}
