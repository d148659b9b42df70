//! The gateway: one session stream per client for every conversation of its user (see
//! `gateway.proto`), and read markers. It holds connections; the writes stay with the
//! conversation services, whose hints (local or through the broker) wake its sessions.

mod feed;
mod presence;
mod session;

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info_span};

use self::{feed::Feeds, presence::Online, session::Session};
use crate::{
    error::Error,
    fanout::Topic,
    pb::gateway::{
        ConversationRef, Kind, MarkReadRequest, OpenRequest, PresenceState, ReadMarker,
        SessionEvent, SetPresenceRequest, SetPresenceResponse, SetTypingRequest, SetTypingResponse,
        gateway_server::Gateway,
    },
    services::{
        App,
        conversation::{EventStream, Resumable, STREAM_BUFFER, start_safety_poll},
    },
    store::{
        gateway::{self as store, KINDS, MAX_CONVERSATIONS},
        messages,
    },
};

/// The gateway service.
pub struct GatewayService {
    app: Arc<App>,
    feeds: Arc<Feeds>,
    online: Arc<Online>,
}

impl GatewayService {
    /// The gateway over `app`; it starts the safety poll of every conversation kind here, so
    /// a lost hint delays its sessions by a poll at most.
    pub fn new(app: Arc<App>) -> Self {
        for kind in KINDS {
            if let (Some(service), Some(tables)) = (store::service(kind), store::tables(kind)) {
                start_safety_poll(&app, service, tables);
            }
        }
        Self {
            app,
            feeds: Arc::new(Feeds::default()),
            online: Arc::new(Online::default()),
        }
    }
}

impl Resumable for SessionEvent {
    fn delivered(&self) -> Option<u64> {
        None
    }

    fn too_slow(_: u64) -> Status {
        Status::resource_exhausted(
            "the session read too slowly: open it again with, as cursors, the seq of the last \
             message received in each conversation",
        )
    }
}

/// The kind and id a request names, checked.
fn conversation(c: Option<&ConversationRef>) -> Result<(Kind, u64), Error> {
    let c = c.ok_or_else(|| Error::InvalidArgument("conversation is required".into()))?;
    match Kind::try_from(c.kind) {
        Ok(kind) if kind != Kind::Unspecified && c.id != 0 => Ok((kind, c.id)),
        _ => Err(Error::InvalidArgument(
            "conversation needs a kind (group, dm, channel) and an id".into(),
        )),
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type OpenStream = EventStream<SessionEvent>;

    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<Self::OpenStream>, Status> {
        // Charged as a write: each session opened and closed is an announcement to every
        // conversation of the user.
        let caller = self.app.writer(&req)?;
        let slot = self.app.session_slot(caller.sub)?;
        // The user's writes went through other replicas, which this one knows nothing of:
        // without a token from the client, the snapshot waits for all the primary has
        // committed (one query per session opened).
        let given = self.app.read_token(&req, caller.sub);
        let token = match given.filter(|t| !t.is_empty()) {
            Some(token) => token,
            None => {
                let mut primary = self.app.primary_conn().await?;
                self.app.db.executed_token(&mut primary).await?
            }
        };
        let req = req.into_inner();
        if req.cursors.len() > MAX_CONVERSATIONS {
            return Err(
                Error::InvalidArgument(format!("at most {MAX_CONVERSATIONS} cursors")).into(),
            );
        }
        let mut cursors = HashMap::new();
        for c in &req.cursors {
            cursors.insert(conversation(c.conversation.as_ref())?, c.after_seq);
        }
        let (tx, events) = mpsc::channel(STREAM_BUFFER);
        let (cut, cut_rx) = oneshot::channel();
        let session = Session {
            app: self.app.clone(),
            feeds: self.feeds.clone(),
            online: self.online.clone(),
            _slot: slot,
            user: caller.sub,
            sid: caller.sid,
            expires_at_ms: caller.exp,
            cursors,
            token: Some(token),
            tx,
            cut: Some(cut),
        };
        let span = info_span!("session", user = caller.sub);
        tokio::spawn(session.run().instrument(span));
        Ok(Response::new(EventStream::new(events, cut_rx, 0)))
    }

    async fn mark_read(
        &self,
        req: Request<MarkReadRequest>,
    ) -> Result<Response<ReadMarker>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let (kind, id) = conversation(req.conversation.as_ref())?;
        let Some(tables) = store::tables(kind) else {
            return Err(Error::InvalidArgument("unknown conversation kind".into()).into());
        };
        let mut conn = self.app.primary_conn().await?;
        let allowed = store::allowed_among(&mut conn, tables, id, &[caller.sub]).await?;
        if !allowed.contains(&caller.sub) {
            return Err(Error::PermissionDenied(format!("not in conversation {id}")).into());
        }
        // Nobody reads what is not written yet.
        let newest = messages::last_seqs(&mut conn, tables, &[id])
            .await?
            .first()
            .map_or(0, |(_, seq)| *seq);
        let read_seq =
            store::mark_read(&mut conn, caller.sub, kind, id, req.seq.min(newest)).await?;
        let marker = ReadMarker {
            conversation: req.conversation,
            read_seq,
        };
        Ok(self
            .app
            .committed_telling(&mut conn, caller.sub, &[caller.sub], marker)
            .await?)
    }

    async fn set_typing(
        &self,
        req: Request<SetTypingRequest>,
    ) -> Result<Response<SetTypingResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let (kind, id) = conversation(req.conversation.as_ref())?;
        let (Some(service), Some(tables)) = (store::service(kind), store::tables(kind)) else {
            return Err(Error::InvalidArgument("unknown conversation kind".into()).into());
        };
        // A member's own typing: a replica's view of membership is good enough.
        let mut conn = self.app.db.reader(None).await?;
        if !store::allowed_among(&mut conn, tables, id, &[caller.sub])
            .await?
            .contains(&caller.sub)
        {
            return Err(Error::PermissionDenied(format!("not in conversation {id}")).into());
        }
        let topic = Topic {
            service,
            conversation: id,
        };
        self.app.hub.ephemeral(&topic, presence::typing(caller.sub));
        Ok(Response::new(SetTypingResponse {}))
    }

    async fn set_presence(
        &self,
        req: Request<SetPresenceRequest>,
    ) -> Result<Response<SetPresenceResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let state = match PresenceState::try_from(req.into_inner().state) {
            Ok(state @ (PresenceState::Online | PresenceState::Idle)) => state,
            _ => {
                return Err(Error::InvalidArgument(
                    "a presence is online or idle (offline is closing every session)".into(),
                )
                .into());
            }
        };
        // To the user's sessions, on every gateway: they announce it.
        let event = presence::presence(caller.sub, state);
        self.app.hub.ephemeral(&Topic::user(caller.sub), event);
        Ok(Response::new(SetPresenceResponse {}))
    }
}
