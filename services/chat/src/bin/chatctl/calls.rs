//! The message calls, the same for every conversation kind, sent to the service that owns it.

use chatd::{
    client::{ConversationRef, Kind, authed},
    pb::{
        chat::{Event, HistoryRequest, Message, SendMessageRequest, SubscribeRequest},
        dms::dms_client::DmsClient,
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

pub(crate) async fn subscribe(
    c: &Client,
    of: ConversationRef,
    after_seq: u64,
) -> Result<tonic::Streaming<Event>, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = SubscribeRequest {
        conversation_id: of.id,
        after_seq,
    };
    let ch = c.channel.clone();
    Ok(match of.kind {
        Kind::Group => {
            GroupsClient::new(ch)
                .subscribe(authed(&session, req)?)
                .await
        }
        Kind::Dm => DmsClient::new(ch).subscribe(authed(&session, req)?).await,
        Kind::Channel => {
            ServersClient::new(ch)
                .subscribe(authed(&session, req)?)
                .await
        }
    }?
    .into_inner())
}
