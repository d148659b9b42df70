//! Direct messages: one conversation per pair of users; only the two may read or write it.

use std::sync::Arc;

use sqlx::MySqlConnection;
use tonic::{Request, Response, Status};

use super::{
    App,
    conversation::{Access, Conversations, Membership},
    conversation_service,
};
use crate::{
    error::{Error, Result},
    pb::dms::{
        Conversation, ListConversationsRequest, ListConversationsResponse, OpenRequest,
        dms_server::Dms,
    },
    store::dms as store,
};

/// The two participants, and nobody else.
pub struct DmMembership;

#[tonic::async_trait]
impl Membership for DmMembership {
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access> {
        let (low, high) = store::participants(conn, conv).await?;
        if user != low && user != high {
            return Err(Error::PermissionDenied(format!(
                "conversation {conv} is between two other users"
            )));
        }
        Ok(Access { moderator: false })
    }
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
            conversations: Conversations::new(app.clone(), "dms", store::TABLES, DmMembership),
            app,
        }
    }
}

conversation_service! {
impl Dms for DmsService {
    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<Conversation>, Status> {
        let caller = self.app.writer(&req)?;
        let other = req.into_inner().user_id;
        if other == 0 || other == caller.sub {
            return Err(
                Error::InvalidArgument("open a conversation with another user".into()).into(),
            );
        }
        let mut conn = self.app.primary_conn().await?;
        let conversation = store::open(&mut conn, caller.sub, other).await?;
        Ok(self
            .app
            .committed_telling(&mut conn, caller.sub, &[caller.sub, other], conversation)
            .await?)
    }

    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let (caller, mut conn) = self.app.reader(&req).await?;
        let conversations = store::of_user(&mut conn, caller.sub).await?;
        Ok(Response::new(ListConversationsResponse { conversations }))
    }
}
}
