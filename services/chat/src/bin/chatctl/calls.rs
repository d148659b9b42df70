//! The message calls, the same for every conversation kind, sent to the service that owns it.

use chatd::{
    client::{ConversationRef, Kind, authed},
    pb::{
        chat::{HistoryRequest, Message, SendMessageRequest},
        dms::dms_client::DmsClient,
        gateway::{
            Cursor, MarkReadRequest, OpenRequest, ReadMarker, SessionEvent,
            gateway_client::GatewayClient,
        },
        groups::groups_client::GroupsClient,
        servers::servers_client::ServersClient,
    },
};
use tonic::Status;

use crate::session::Client;

pub(crate) async fn send(c: &Client, to: ConversationRef, text: String) -> Result<Message, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = SendMessageRequest {
        conversation_id: to.id,
        text,
        // A retried send with the same key is stored once.
        client_key: format!("chatctl-{:016x}", rand::random::<u64>()),
    };
    let ch = c.channel.clone();
    Ok(match to.kind {
        Kind::Group => {
            GroupsClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
        Kind::Dm => {
            DmsClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
        Kind::Channel => {
            ServersClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
    }?
    .into_inner())
}

pub(crate) async fn history(
    c: &Client,
    of: ConversationRef,
    limit: u32,
) -> Result<Vec<Message>, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = HistoryRequest {
        conversation_id: of.id,
        limit,
        ..HistoryRequest::default()
    };
    let ch = c.channel.clone();
    let mut messages = match of.kind {
        Kind::Group => GroupsClient::new(ch).history(authed(&session, req)?).await,
        Kind::Dm => DmsClient::new(ch).history(authed(&session, req)?).await,
        Kind::Channel => ServersClient::new(ch).history(authed(&session, req)?).await,
    }?
    .into_inner()
    .messages;
    messages.reverse();
    Ok(messages)
}

/// The session stream: every conversation, from `cursors` where given.
pub(crate) async fn open_session(
    c: &Client,
    cursors: Vec<(ConversationRef, u64)>,
) -> Result<tonic::Streaming<SessionEvent>, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let cursors = cursors
        .into_iter()
        .map(|(of, after_seq)| Cursor {
            conversation: Some(of.into()),
            after_seq,
        })
        .collect();
    Ok(GatewayClient::new(c.channel.clone())
        .open(authed(&session, OpenRequest { cursors })?)
        .await?
        .into_inner())
}

/// Mark `of` read up to `seq`.
pub(crate) async fn mark_read(
    c: &Client,
    of: ConversationRef,
    seq: u64,
) -> Result<ReadMarker, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = MarkReadRequest {
        conversation: Some(of.into()),
        seq,
    };
    Ok(GatewayClient::new(c.channel.clone())
        .mark_read(authed(&session, req)?)
        .await?
        .into_inner())
}
