//! The message operations every conversation kind offers (send, edit, delete, history,
//! subscribe), parameterised by who may access a conversation.

use std::{sync::Arc, time::Duration};

use chatcluster_common::sync::lock;

use sqlx::MySqlConnection;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span};

use super::{App, LOGGED_OUT, PooledConn, SubscriptionSlot};
use crate::{
    db::DELIVERY_WAIT,
    error::{Error, Result},
    fanout::{ACCESS_CHANGED, Topic, Wake},
    group_commit::{Committer, Outcome},
    pb::chat::{
        DeleteMessageRequest, EditMessageRequest, Event, Heartbeat, HistoryRequest,
        HistoryResponse, Message, SendMessageRequest, SubscribeRequest, event,
    },
    store::messages::{self, Change, NewMessage, Readable, Tables},
    token::now_ms,
};

/// The events of one stream (a subscription, a session), as the client takes them. When the
/// client has taken nothing for [`SLOW_READER`] while events wait, the server gives up on it:
/// the stream ends with RESOURCE_EXHAUSTED telling it where to resume (see [`Resumable`]).
/// The stream's buffers are so bounded: [`STREAM_BUFFER`] events here, the HTTP/2 window in
/// flight.
pub struct EventStream<T = Event> {
    events: mpsc::Receiver<Result<T, Status>>,
    cut: oneshot::Receiver<()>,
    /// The seq of the last message handed to the transport, for a subscription's resume.
    last: u64,
    done: bool,
}

impl<T> EventStream<T> {
    /// The stream of `events`, cut when `cut` fires, having delivered up to `last` so far.
    pub fn new(
        events: mpsc::Receiver<Result<T, Status>>,
        cut: oneshot::Receiver<()>,
        last: u64,
    ) -> Self {
        Self {
            events,
            cut,
            last,
            done: false,
        }
    }
}

/// An event of a stream that can be cut: what a cut stream tells its client.
pub trait Resumable {
    /// The seq this event delivers, if it is a new message of the one conversation.
    fn delivered(&self) -> Option<u64>;
    /// The status a stream cut after delivering `last` ends with.
    fn too_slow(last: u64) -> Status;
}

impl Resumable for Event {
    fn delivered(&self) -> Option<u64> {
        match &self.kind {
            Some(event::Kind::Message(m)) => Some(m.seq),
            _ => None,
        }
    }

    /// Names, in its message and in the [`RESUME_TRAILER`] trailer, the last seq delivered,
    /// so the client subscribes again from there with no gap.
    fn too_slow(last: u64) -> Status {
        let mut trailers = tonic::metadata::MetadataMap::new();
        trailers.insert(RESUME_TRAILER, last.into());
        Status::with_metadata(
            tonic::Code::ResourceExhausted,
            format!("the subscriber read too slowly: subscribe again with after_seq = {last}"),
            trailers,
        )
    }
}

/// Trailer of a cut stream: the seq to subscribe again after.
pub const RESUME_TRAILER: &str = "x-chat-resume-after-seq";
/// How long a subscriber may leave delivered events unread before its stream is cut.
pub const SLOW_READER: Duration = Duration::from_secs(10);
/// Events waiting for one subscriber, at most.
pub const STREAM_BUFFER: usize = 64;

impl<T: Resumable> futures::Stream for EventStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::{future::Future, pin::Pin, task::Poll};
        if self.done {
            return Poll::Ready(None);
        }
        // The cut goes before whatever is still buffered: that is what was too slow.
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.cut).poll(cx) {
            self.done = true;
            return Poll::Ready(Some(Err(T::too_slow(self.last))));
        }
        let next = self.events.poll_recv(cx);
        if let Poll::Ready(Some(Ok(event))) = &next
            && let Some(seq) = event.delivered()
        {
            self.last = seq;
        }
        next
    }
}

/// What a member may do in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// May delete other people's messages.
    pub moderator: bool,
}

/// Who may access a conversation: the rule of one service.
#[tonic::async_trait]
pub trait Membership: Send + Sync + 'static {
    /// `user`'s access to conversation `conv`: NOT_FOUND when it does not exist,
    /// PERMISSION_DENIED when the user is not a member.
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access>;
}

/// The message operations of one service.
pub struct Conversations<M> {
    /// Shared state.
    pub app: Arc<App>,
    /// Service name (for hints to peers).
    pub service: &'static str,
    /// Its tables.
    pub tables: Tables,
    /// Its access rule.
    pub membership: Arc<M>,
    /// Its group commit (None: every send writes by itself).
    committer: Option<Committer>,
}

/// How often a subscription sends a heartbeat (see `Heartbeat` in `messages.proto`).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// How often each service re-reads the newest seq of the conversations subscribed on this
/// replica, in case a hint was lost.
const SAFETY_POLL: Duration = Duration::from_secs(2);
/// Messages read per query while a subscriber catches up.
const CATCH_UP_BATCH: u32 = 200;

impl<M: Membership> Conversations<M> {
    /// The message operations of `service`, over `tables`, for members by `membership`.
    pub fn new(app: Arc<App>, service: &'static str, tables: Tables, membership: M) -> Self {
        start_safety_poll(&app, service, tables);
        Self {
            committer: Committer::start(app.db.clone(), tables),
            app,
            service,
            tables,
            membership: Arc::new(membership),
        }
    }

    fn topic(&self, conv: u64) -> Topic {
        Topic {
            service: self.service,
            conversation: conv,
        }
    }

    /// A primary connection, after checking access on it (the primary is authoritative for
    /// writes); the write then uses the same connection: one pool checkout per call.
    async fn write_access(&self, user: u64, conv: u64) -> Result<(PooledConn, Access)> {
        let mut conn = self.app.primary_conn().await?;
        let access = self.membership.access(&mut conn, user, conv).await?;
        Ok((conn, access))
    }

    /// Send a message.
    pub async fn send(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let caller = self.app.writer(&req)?;
        let retry_key = request_id_key(&req);
        let mut req = req.into_inner();
        if req.client_key.is_empty()
            && let Some(key) = retry_key
        {
            req.client_key = key;
        }
        let message = NewMessage::new(req.conversation_id, caller.sub, req.text, req.client_key)?;
        let batched = match &self.committer {
            Some(committer) => committer.send(message).await?,
            None => Outcome::Alone(message),
        };
        let written = match batched {
            Outcome::Written(written) => written,
            Outcome::Alone(message) => {
                let (mut conn, _) = self
                    .write_access(caller.sub, message.conversation_id)
                    .await?;
                messages::send(&self.app.db, &mut conn, self.tables, message).await?
            }
        };
        if written.fresh {
            self.app.hub.publish(
                &self.topic(written.message.conversation_id),
                written.message.seq,
                &written.token,
                false,
            );
        }
        Ok(self
            .app
            .written(caller.sub, &written.token, written.message))
    }

    /// Edit one's message.
    pub async fn edit(
        &self,
        req: Request<EditMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let (conn, _) = self.write_access(caller.sub, req.conversation_id).await?;
        self.changed(
            conn,
            caller.sub,
            req.conversation_id,
            req.seq,
            Change::Edit(&req.text),
        )
        .await
    }

    /// Delete a message (one's own, or any as a moderator).
    pub async fn delete(
        &self,
        req: Request<DeleteMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let (conn, access) = self.write_access(caller.sub, req.conversation_id).await?;
        self.changed(
            conn,
            caller.sub,
            req.conversation_id,
            req.seq,
            Change::Delete {
                moderator: access.moderator,
            },
        )
        .await
    }

    async fn changed(
        &self,
        mut conn: PooledConn,
        user: u64,
        conv: u64,
        seq: u64,
        change: Change<'_>,
    ) -> Result<Response<Message>, Status> {
        let written = messages::change(
            &self.app.db,
            &mut conn,
            self.tables,
            conv,
            seq,
            user,
            change,
        )
        .await?;
        self.app
            .hub
            .publish(&self.topic(conv), seq, &written.token, true);
        Ok(self.app.written(user, &written.token, written.message))
    }

    /// A connection to read `conv` from, after checking `user` may (see [`App::granted`]).
    async fn read_access(&self, user: u64, conv: u64, token: Option<&str>) -> Result<PooledConn> {
        let membership = self.membership.clone();
        self.app
            .granted(token, move |conn| {
                let membership = membership.clone();
                Box::pin(async move { membership.access(conn, user, conv).await.map(|_| ()) })
            })
            .await
    }

    /// A page of history.
    pub async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let req = req.into_inner();
        let mut conn = self
            .read_access(caller.sub, req.conversation_id, token.as_deref())
            .await?;
        let page = messages::history(&mut conn, self.tables, &req).await?;
        Ok(Response::new(page))
    }

    /// Every message after `after_seq`, then new ones as they come, in order, each once; edits
    /// and deletions of delivered messages as updates. Ends when the server drains, and with
    /// an error when the caller loses access: removed or kicked (PERMISSION_DENIED), the
    /// conversation deleted (NOT_FOUND), the access token expired (UNAUTHENTICATED). Access is
    /// checked again before every delivery, on the connection the delivery reads from, so
    /// nothing committed after the loss is delivered.
    pub async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let req = req.into_inner();
        drop(
            self.read_access(caller.sub, req.conversation_id, token.as_deref())
                .await?,
        );
        let slot = self.app.subscription_slot(caller.sub)?;
        let (tx, events) = mpsc::channel(STREAM_BUFFER);
        let (cut, cut_rx) = oneshot::channel();
        let stream = Stream {
            cut: Some(cut),
            _slot: slot,
            app: self.app.clone(),
            tables: self.tables,
            topic: self.topic(req.conversation_id),
            membership: self.membership.clone(),
            user: caller.sub,
            session: caller.sid,
            expires_at_ms: caller.exp,
            last: req.after_seq,
            token,
            tx,
        };
        let span = info_span!(
            "subscription",
            service = self.service,
            conversation = req.conversation_id,
            user = caller.sub
        );
        tokio::spawn(stream.run().instrument(span));
        Ok(Response::new(EventStream::new(
            events,
            cut_rx,
            req.after_seq,
        )))
    }
}

/// The idempotency key of a send that names none: its `x-request-id`, which Envoy makes for
/// every outside request and keeps on its retries, so a retry of a send that committed finds
/// the first message. (A client that sets the header itself only picks its own key.)
fn request_id_key<T>(req: &Request<T>) -> Option<String> {
    let id = req.metadata().get("x-request-id")?.to_str().ok()?;
    let key = format!("request:{id}");
    (key.len() <= messages::MAX_CLIENT_KEY).then_some(key)
}

/// Start the safety poll of `service` on this replica, unless it runs already (the service
/// and the gateway both need it, and one poll covers every local subscriber of the service).
pub fn start_safety_poll(app: &Arc<App>, service: &'static str, tables: Tables) {
    if lock(&app.safety_polls).insert(service) {
        tokio::spawn(
            watch_last_seqs(app.clone(), service, tables)
                .instrument(info_span!("safety_poll", service)),
        );
    }
}

/// Every [`SAFETY_POLL`] until shutdown: hint the newest seq of every conversation of
/// `service` that has subscribers here, so a lost hint delays a delivery by a poll at most.
/// One reader connection and a statement per [`messages::LAST_SEQS_CHUNK`] conversations,
/// however many subscribers they have.
async fn watch_last_seqs(app: Arc<App>, service: &'static str, tables: Tables) {
    let mut tick = tokio::time::interval(SAFETY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = until_true(&mut shutdown) => return,
        }
        let convs = app.hub.conversations(service);
        if convs.is_empty() {
            continue;
        }
        if let Err(e) = hint_last_seqs(&app, service, tables, &convs).await {
            debug!(error = %e, "safety poll failed");
        }
    }
}

async fn hint_last_seqs(
    app: &App,
    service: &'static str,
    tables: Tables,
    convs: &[u64],
) -> Result<()> {
    let mut conn = app.db.reader(None).await?;
    let seqs = messages::last_seqs(&mut conn, tables, convs).await?;
    // Taken after the read, so it covers every seq the read saw: a stream waking on it
    // reads them wherever it reads.
    let token = app.db.executed_token(&mut conn).await?;
    for (conversation, seq) in seqs {
        app.hub.hint(
            &Topic {
                service,
                conversation,
            },
            seq,
            &token,
        );
    }
    Ok(())
}

/// Hand `item` to a stream's client: false when it is gone, or too slow to take it within
/// [`SLOW_READER`] (its stream is then cut by `cut`, see [`EventStream`]).
pub(crate) async fn hand_over<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    cut: &mut Option<oneshot::Sender<()>>,
    item: Result<T, Status>,
) -> bool {
    match tokio::time::timeout(SLOW_READER, tx.send(item)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            debug!("client too slow: stream cut");
            if let Some(cut) = cut.take() {
                let _ = cut.send(());
            }
            false
        }
    }
}

/// Completes once the flag is true.
pub(crate) async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

struct Stream<M> {
    /// The subscriber's place among their open subscriptions, given back when the stream ends.
    _slot: SubscriptionSlot,
    app: Arc<App>,
    tables: Tables,
    topic: Topic,
    /// Who may read the conversation, asked again before every delivery.
    membership: Arc<M>,
    /// The subscriber.
    user: u64,
    /// Their session: the stream ends when it is logged out.
    session: String,
    /// When the subscriber's access token expires: the stream ends then.
    expires_at_ms: i64,
    last: u64,
    token: Option<String>,
    tx: mpsc::Sender<Result<Event, Status>>,
    /// Fired when the subscriber reads too slowly (see [`EventStream`]).
    cut: Option<oneshot::Sender<()>>,
}

enum Flow {
    Continue,
    Stop,
}

impl<M: Membership> Stream<M> {
    async fn run(mut self) {
        let mut sub = self.app.hub.subscribe(self.topic.clone());
        let mut shutdown = self.app.shutdown.clone();
        let mut revoked = self.app.revocations.changes();
        let left_ms = u64::try_from(self.expires_at_ms - now_ms()).unwrap_or(0);
        let expiry = tokio::time::sleep(Duration::from_millis(left_ms));
        tokio::pin!(expiry);
        let start = tokio::time::Instant::now() + HEARTBEAT;
        let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Read at the start, then only when a hint names a seq past the last delivered.
        let mut behind = true;
        loop {
            if behind {
                match self.catch_up().await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return,
                    Err(e) => {
                        self.deliver(Err(e.into())).await;
                        return;
                    }
                }
            }
            behind = false;
            tokio::select! {
                wake = sub.next() => match wake {
                    None => return,
                    Some(Wake::Newer(hint)) => {
                        if hint.seq > self.last {
                            self.token = Some(hint.token);
                            behind = true;
                        }
                    }
                    Some(Wake::Update(seq, token)) if seq <= self.last => {
                        match self.send_update(seq, &token).await {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Stop) => return,
                            Err(e) => {
                                self.deliver(Err(e.into())).await;
                                return;
                            }
                        }
                    }
                    Some(Wake::Update(..)) => {}
                    // Missed updates: the history holds the current text.
                    Some(Wake::Missed(n)) => debug!(missed = n, "subscriber missed updates"),
                    // Typing and presence are for sessions.
                    Some(Wake::Ephemeral(_)) => {}
                },
                _ = heartbeat.tick() => {
                    let beat = Event {
                        kind: Some(event::Kind::Heartbeat(Heartbeat {})),
                    };
                    if let Flow::Stop = self.deliver(Ok(beat)).await {
                        return;
                    }
                }
                Ok(()) = revoked.changed() => {
                    if self.app.revocations.is_revoked(&self.session) {
                        self.deliver(Err(Status::unauthenticated(LOGGED_OUT))).await;
                        return;
                    }
                }
                _ = self.tx.closed() => return,
                _ = until_true(&mut shutdown) => return,
                () = &mut expiry => {
                    let expired = Status::unauthenticated("the access token expired: refresh it and subscribe again");
                    self.deliver(Err(expired)).await;
                    return;
                }
            }
        }
    }

    /// Deliver every message after `last` the database has.
    async fn catch_up(&mut self) -> Result<Flow> {
        loop {
            let batch = self.readable_batch().await?;
            let full = batch.len() == CATCH_UP_BATCH as usize;
            for message in batch {
                // Seqs have no gaps: a jump means the replica is missing a message; read again.
                if message.seq != self.last + 1 {
                    return Err(Error::Internal(format!(
                        "gap in conversation {}: {} after {}",
                        self.topic.conversation, message.seq, self.last
                    )));
                }
                self.last = message.seq;
                let event = Event {
                    kind: Some(event::Kind::Message(message)),
                };
                if let Flow::Stop = self.deliver(Ok(event)).await {
                    return Ok(Flow::Stop);
                }
            }
            if !full {
                return Ok(Flow::Continue);
            }
        }
    }

    /// The next messages after `last`, from a connection that has applied the newest hint's
    /// token as far as can be had, with the subscriber's access checked in the same
    /// statement: one round trip for a delivery. The `Membership` is asked only when that
    /// statement could not tell (nothing new) or said no (then the primary confirms).
    async fn readable_batch(&self) -> Result<Vec<Message>> {
        let (t, conv) = (self.tables, self.topic.conversation);
        let mut conn = self
            .app
            .db
            .reader_within(self.token.as_deref(), DELIVERY_WAIT)
            .await?;
        let read =
            messages::readable_range(&mut conn, t, conv, self.user, self.last, CATCH_UP_BATCH);
        match read.await? {
            Readable::Allowed(batch) => Ok(batch),
            Readable::Nothing => match self.membership.access(&mut conn, self.user, conv).await {
                Ok(_) => Ok(Vec::new()),
                Err(Error::NotFound(_) | Error::PermissionDenied(_)) => {
                    drop(conn);
                    self.read_confirmed().await
                }
                Err(e) => Err(e),
            },
            Readable::Denied => {
                drop(conn);
                self.read_confirmed().await
            }
        }
    }

    /// After a replica denied the subscriber: the primary's answer, and the batch read there.
    async fn read_confirmed(&self) -> Result<Vec<Message>> {
        let mut primary = self.confirmed_on_primary().await?;
        let (t, conv) = (self.tables, self.topic.conversation);
        messages::range(&mut primary, t, conv, self.last, CATCH_UP_BATCH).await
    }

    /// A connection to deliver from (one that has applied `token`, as far as can be had),
    /// after the subscriber's access passed on it.
    async fn checked_reader(&self, token: Option<&str>) -> Result<PooledConn> {
        let conv = self.topic.conversation;
        let mut conn = self.app.db.reader_within(token, DELIVERY_WAIT).await?;
        match self.membership.access(&mut conn, self.user, conv).await {
            Ok(_) => Ok(conn),
            Err(Error::NotFound(_) | Error::PermissionDenied(_)) => {
                drop(conn);
                self.confirmed_on_primary().await
            }
            Err(e) => Err(e),
        }
    }

    /// A replica that denies the subscriber may lack a grant made a moment ago: the primary
    /// confirms a denial (the stream then ends with its status) or gives its connection to
    /// read from.
    async fn confirmed_on_primary(&self) -> Result<PooledConn> {
        let mut primary = self.app.primary_conn().await?;
        self.membership
            .access(&mut primary, self.user, self.topic.conversation)
            .await?;
        Ok(primary)
    }

    /// Hand `item` to the subscriber (see [`hand_over`]).
    async fn deliver(&mut self, item: Result<Event, Status>) -> Flow {
        match hand_over(&self.tx, &mut self.cut, item).await {
            true => Flow::Continue,
            false => Flow::Stop,
        }
    }

    async fn send_update(&mut self, seq: u64, token: &str) -> Result<Flow> {
        if seq == ACCESS_CHANGED {
            // Only the check: it ends the stream when access is gone.
            drop(self.checked_reader(Some(token)).await?);
            return Ok(Flow::Continue);
        }
        let message = {
            let mut conn = self.checked_reader(Some(token)).await?;
            messages::get(&mut conn, self.tables, self.topic.conversation, seq).await?
        };
        Ok(match message {
            Some(message) => {
                let event = Event {
                    kind: Some(event::Kind::Updated(message)),
                };
                self.deliver(Ok(event)).await
            }
            None => Flow::Continue,
        })
    }
}
