//! Direct messages: one conversation per pair of users; only the two may read or write it.

use std::sync::Arc;

use sqlx::{MySqlConnection, Row, mysql::MySqlRow};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    App,
    conversation::{Access, Conversations, Membership},
};
use crate::{
    db,
    error::{Error, Result},
    messages::Tables,
    pb::{
        chat::{
            DeleteMessageRequest, EditMessageRequest, Event, HistoryRequest, HistoryResponse,
            Message, SendMessageRequest, SubscribeRequest,
        },
        dms::{
            Conversation, ListConversationsRequest, ListConversationsResponse, OpenRequest,
            dms_server::Dms,
        },
    },
    token::now_ms,
};

/// The DM tables.
pub const TABLES: Tables = Tables {
    conversations: "dms_conversations",
    messages: "dms_messages",
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
    ]
}

/// The two participants, and nobody else.
pub struct DmMembership;

#[tonic::async_trait]
impl Membership for DmMembership {
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access> {
        let row = sqlx::query("SELECT user_low, user_high FROM dms_conversations WHERE id = ?")
            .bind(conv)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("conversation {conv} not found")))?;
        let (low, high): (u64, u64) = (row.try_get("user_low")?, row.try_get("user_high")?);
        if user != low && user != high {
            return Err(Error::PermissionDenied(format!(
                "conversation {conv} is between two other users"
            )));
        }
        Ok(Access { moderator: false })
    }
}

fn row_to_conversation(row: &MySqlRow) -> Result<Conversation> {
    Ok(Conversation {
        id: row.try_get("id")?,
        user_ids: vec![row.try_get("user_low")?, row.try_get("user_high")?],
        last_seq: row.try_get("last_seq")?,
    })
}

/// The DM service.
pub struct DmsService {
    app: Arc<App>,
    conversations: Conversations<DmMembership>,
}

impl DmsService {
    /// DMs over `app`.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            conversations: Conversations {
                app: app.clone(),
                service: "dms",
                tables: TABLES,
                membership: Arc::new(DmMembership),
            },
            app,
        }
    }

    /// Apply the `dms_` schema.
    pub async fn migrate(db: &db::Db) -> Result<()> {
        let steps = migrations();
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        db::migrate(&db.primary().await, "dms", &steps).await
    }
}

#[tonic::async_trait]
impl Dms for DmsService {
    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<Conversation>, Status> {
        let caller = self.app.writer(&req)?;
        let other = req.into_inner().user_id;
        if other == 0 || other == caller.sub {
            return Err(
                Error::InvalidArgument("open a conversation with another user".into()).into(),
            );
        }
        let (low, high) = (caller.sub.min(other), caller.sub.max(other));
        let mut conn = self.app.primary_conn().await?;
        // Idempotent: the pair is unique, and both users get the same conversation.
        sqlx::query(
            "INSERT INTO dms_conversations (user_low, user_high, created_at_ms) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE id = id",
        )
        .bind(low)
        .bind(high)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let row = sqlx::query(
            "SELECT id, user_low, user_high, last_seq FROM dms_conversations WHERE user_low = ? AND user_high = ?",
        )
        .bind(low)
        .bind(high)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::from)?;
        Ok(self
            .app
            .written(caller.sub, &token, row_to_conversation(&row)?))
    }

    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let mut conn = self.app.db.reader(token.as_deref()).await?;
        let rows = sqlx::query(
            "SELECT id, user_low, user_high, last_seq FROM dms_conversations
             WHERE user_low = ? OR user_high = ? ORDER BY id LIMIT 1000",
        )
        .bind(caller.sub)
        .bind(caller.sub)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let conversations = rows
            .iter()
            .map(row_to_conversation)
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(ListConversationsResponse { conversations }))
    }

    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.send(req).await
    }

    async fn edit_message(
        &self,
        req: Request<EditMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.edit(req).await
    }

    async fn delete_message(
        &self,
        req: Request<DeleteMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.delete(req).await
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.conversations.history(req).await
    }

    type SubscribeStream = ReceiverStream<Result<Event, Status>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.conversations.subscribe(req).await
    }
}
