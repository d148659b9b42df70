//! Client-side helpers shared by tests that talk to chatd (directly or through Envoy).

pub use chatd::client::authed;
use chatd::pb::{
    auth::{GetProfileRequest, RegisterRequest, Session, auth_client::AuthClient},
    chat::{Event, HistoryRequest, Message, event},
    groups::{AcceptInvitationRequest, CreateGroupRequest, Group, groups_client::GroupsClient},
};
use chatd::services::CONSISTENCY_HEADER;
use tonic::{Status, Streaming, transport::Channel};

/// The next message `stream` delivers, past heartbeats and updates; panics unless one comes
/// within 10 s with the stream open.
pub async fn next_message(stream: &mut Streaming<Event>) -> Message {
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message());
        let event = match next.await {
            Err(_) => panic!("no message within 10 s"),
            Ok(Err(status)) => panic!("the stream ended: {status}"),
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Ok(Some(event))) => event,
        };
        if let Some(event::Kind::Message(m)) = event.kind {
            return m;
        }
    }
}

/// A group's whole history, oldest first, as (text, seq). History pages newest first, each
/// page before the previous one's oldest message.
pub async fn group_history(
    groups: &mut GroupsClient<Channel>,
    session: &Session,
    conversation_id: u64,
) -> Result<Vec<(String, u64)>, Status> {
    let mut history = Vec::new();
    let mut before = 0;
    loop {
        let page = groups
            .history(authed(
                session,
                HistoryRequest {
                    conversation_id,
                    before,
                    limit: 200,
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        for m in page.messages {
            before = m.seq;
            history.push((m.text, m.seq));
        }
        if !page.more {
            break;
        }
    }
    history.reverse();
    Ok(history)
}

/// `session`'s user accepts their invitation to `group`.
pub async fn accept_invitation(
    channel: &Channel,
    session: &Session,
    group: u64,
) -> Result<Group, Status> {
    Ok(GroupsClient::new(channel.clone())
        .accept_invitation(authed(
            session,
            AcceptInvitationRequest { group_id: group },
        )?)
        .await?
        .into_inner())
}

/// Create a group owned by `session`'s user, inviting `member_ids`.
pub async fn create_group(
    channel: &Channel,
    session: &Session,
    name: &str,
    member_ids: Vec<u64>,
) -> Result<Group, Status> {
    Ok(GroupsClient::new(channel.clone())
        .create_group(authed(
            session,
            CreateGroupRequest {
                name: name.into(),
                member_ids,
            },
        )?)
        .await?
        .into_inner())
}

/// Password of the users [`register`] creates.
pub const PASSWORD: &str = "correct horse battery";

/// Register `name` (password [`PASSWORD`]) through `channel`: the session and the user id.
pub async fn register(channel: &Channel, name: &str) -> Result<(Session, u64), Status> {
    let mut auth = AuthClient::new(channel.clone());
    let registered = auth
        .register(RegisterRequest {
            username: name.into(),
            password: PASSWORD.into(),
            display_name: name.into(),
        })
        .await?;
    // The read may reach another auth replica, which knows nothing of this write: it waits
    // for the write's token, as a client passes it on.
    let token = registered.metadata().get(CONSISTENCY_HEADER).cloned();
    let session = registered.into_inner();
    let mut profile = authed(&session, GetProfileRequest { user_id: 0 })?;
    if let Some(token) = token {
        profile.metadata_mut().insert(CONSISTENCY_HEADER, token);
    }
    let me = auth.get_profile(profile).await?.into_inner();
    Ok((session, me.user_id))
}

/// A connection to `url` whose HTTP/2 windows are as small as the protocol allows (64 KiB), so
/// a stream its caller does not read backs up into the server at once.
pub async fn slow_reader(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}
