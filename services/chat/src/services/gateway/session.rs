//! One client's session: it follows, on the hub (and so on the broker), every conversation of
//! its user, the user's own topic (memberships and read markers) and the channel lists of the
//! user's servers, and turns what wakes it into events. Nothing here polls: the conversation
//! services' safety poll covers lost hints, and an idle session costs no query.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamMap;
use tonic::Status;
use tracing::debug;

use super::{
    feed::{Feeds, Follow, Verdict},
    presence::{Online, PRESENCE_CHANGE_GAP, PRESENCE_EVERY, Seen, presence},
};
use crate::{
    error::{Error, Result},
    fanout::{ACCESS_CHANGED, SERVER, Topic, USER, Wake},
    pb::{
        chat::{Heartbeat, Message},
        gateway::{
            ConversationMessage, ConversationRef, ConversationState, Kind, PresenceState,
            ReadMarker, SessionEvent, Snapshot, session_event,
        },
    },
    services::{
        App, LOGGED_OUT, SubscriptionSlot,
        conversation::{HEARTBEAT, hand_over, until_true},
    },
    store::{
        gateway::{
            MAX_CONVERSATIONS, Membership, Memberships, allowed_among, conversations_of, service,
            tables,
        },
        messages,
    },
    token::now_ms,
};

/// How often a session reads again what a read left behind.
const RETRY_STALLED: Duration = Duration::from_secs(1);

/// What a session wakes on, by topic.
type Wakes = StreamMap<Topic, Pin<Box<dyn Stream<Item = Wake> + Send>>>;

/// A conversation the session follows.
struct Followed {
    kind: Kind,
    /// The seq of the last message delivered.
    last: u64,
    /// The read marker the client was last told.
    read: u64,
    follow: Follow,
}

/// Who the session is for, and where it stands.
pub struct Session {
    pub(super) app: Arc<App>,
    pub(super) feeds: Arc<Feeds>,
    /// The sessions of each user here.
    pub(super) online: Arc<Online>,
    /// Its place among the user's streams, given back when it ends.
    pub(super) _slot: SubscriptionSlot,
    pub(super) user: u64,
    /// The login session: the stream ends when it is logged out.
    pub(super) sid: String,
    pub(super) expires_at_ms: i64,
    /// The client's cursors, by conversation.
    pub(super) cursors: HashMap<(Kind, u64), u64>,
    pub(super) token: Option<String>,
    pub(super) tx: mpsc::Sender<Result<SessionEvent, Status>>,
    /// Fired when the client reads too slowly.
    pub(super) cut: Option<oneshot::Sender<()>>,
}

/// Whether the session goes on.
enum Flow {
    Continue,
    Stop,
}

/// The running session.
struct Running {
    s: Session,
    followed: HashMap<Topic, Followed>,
    servers: HashSet<u64>,
    wakes: Wakes,
    /// The user's presence, as this session announces it.
    presence: PresenceState,
    /// What it announced last, and when it may announce a change next: a client toggling
    /// its presence must not make every session send to every conversation each time.
    announced: PresenceState,
    next_change: tokio::time::Instant,
    /// The presences told to the client.
    seen: Seen,
    /// Conversations a read left behind: read again on the retry tick, up to the seq and
    /// with the token that woke them.
    stalled: HashMap<Topic, (u64, Option<String>)>,
}

fn wakes_of(app: &App, topic: Topic) -> Pin<Box<dyn Stream<Item = Wake> + Send>> {
    let sub = app.hub.subscribe(topic);
    Box::pin(futures::stream::unfold(sub, |mut sub| async move {
        let wake = sub.next().await?;
        Some((wake, sub))
    }))
}

fn reference(kind: Kind, id: u64) -> ConversationRef {
    ConversationRef {
        kind: kind as i32,
        id,
    }
}

fn state(m: &Membership) -> ConversationState {
    ConversationState {
        conversation: Some(reference(m.kind, m.id)),
        last_seq: m.last_seq,
        read_seq: m.read_seq,
        unread: m.last_seq - m.read_seq,
    }
}

fn event(kind: session_event::Kind) -> SessionEvent {
    SessionEvent { kind: Some(kind) }
}

impl Session {
    /// Run until the client goes, the login ends or the server drains.
    pub async fn run(self) {
        let mut wakes = Wakes::new();
        // Followed before the list is read, so no change after the read is missed.
        wakes.insert(
            Topic::user(self.user),
            wakes_of(&self.app, Topic::user(self.user)),
        );
        let mut running = Running {
            s: self,
            followed: HashMap::new(),
            servers: HashSet::new(),
            wakes,
            presence: PresenceState::Online,
            announced: PresenceState::Online,
            next_change: tokio::time::Instant::now(),
            seen: Seen::new(),
            stalled: HashMap::new(),
        };
        if let Err(e) = running.start().await {
            running.s.deliver(Err(e.into())).await;
            return;
        }
        let (online, user) = (running.s.online.clone(), running.s.user);
        online.enter(user);
        running.announce();
        let running = running.serve().await;
        if online.leave(user) {
            running.announce_as(PresenceState::Offline);
        }
    }

    async fn list(&self) -> Result<Memberships> {
        let mut conn = self.app.db.reader(self.token.as_deref()).await?;
        conversations_of(&mut conn, self.user).await
    }

    /// Whether the user may read `topic`, on a replica that has applied `token`, confirmed on
    /// the primary when the replica says no.
    async fn may_read(&self, topic: &Topic, kind: Kind, token: Option<&str>) -> Result<bool> {
        let Some(t) = tables(kind) else {
            return Ok(false);
        };
        let (conv, user) = (topic.conversation, self.user);
        let mut conn = self.app.db.reader(token).await?;
        if allowed_among(&mut conn, t, conv, &[user])
            .await?
            .contains(&user)
        {
            return Ok(true);
        }
        drop(conn);
        self.primary_may_read(topic, kind).await
    }

    /// Whether the user may read `topic`, by the primary.
    async fn primary_may_read(&self, topic: &Topic, kind: Kind) -> Result<bool> {
        let Some(t) = tables(kind) else {
            return Ok(false);
        };
        let (conv, user) = (topic.conversation, self.user);
        let mut primary = self.app.primary_conn().await?;
        Ok(allowed_among(&mut primary, t, conv, &[user])
            .await?
            .contains(&user))
    }

    /// Hand `item` to the client (see [`hand_over`]).
    async fn deliver(&mut self, item: Result<SessionEvent, Status>) -> Flow {
        match hand_over(&self.tx, &mut self.cut, item).await {
            true => Flow::Continue,
            false => Flow::Stop,
        }
    }
}

impl Running {
    /// The snapshot, then what the cursors missed.
    async fn start(&mut self) -> Result<()> {
        let Memberships {
            conversations: list,
            servers,
        } = self.s.list().await?;
        for m in &list {
            let cursor = self.s.cursors.get(&(m.kind, m.id)).copied();
            self.follow(m, cursor.unwrap_or(m.last_seq).min(m.last_seq));
        }
        for server in servers {
            self.follow_server(server);
        }
        let snapshot = Snapshot {
            conversations: list.iter().map(state).collect(),
        };
        if let Flow::Stop = self
            .s
            .deliver(Ok(event(session_event::Kind::Snapshot(snapshot))))
            .await
        {
            return Ok(());
        }
        let behind: Vec<(Topic, u64)> = list
            .iter()
            .filter_map(|m| {
                let topic = Topic {
                    service: service(m.kind)?,
                    conversation: m.id,
                };
                let f = self.followed.get(&topic)?;
                (f.last < m.last_seq).then_some((topic, m.last_seq))
            })
            .collect();
        let token = self.s.token.clone();
        for (topic, upto) in behind {
            if let Flow::Stop = self.catch_up(&topic, upto, token.as_deref()).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    fn follow(&mut self, m: &Membership, last: u64) {
        let (Some(service), Some(tables)) = (service(m.kind), tables(m.kind)) else {
            return;
        };
        let topic = Topic {
            service,
            conversation: m.id,
        };
        let follow = self.s.feeds.follow(&topic, tables, self.s.user);
        self.wakes
            .insert(topic.clone(), wakes_of(&self.s.app, topic.clone()));
        self.followed.insert(
            topic,
            Followed {
                kind: m.kind,
                last,
                read: m.read_seq,
                follow,
            },
        );
    }

    fn follow_server(&mut self, server: u64) {
        if self.servers.insert(server) {
            let topic = Topic::server(server);
            self.wakes
                .insert(topic.clone(), wakes_of(&self.s.app, topic));
        }
    }

    /// Tell the members of every followed conversation the user's presence.
    fn announce(&mut self) {
        self.announce_as(self.presence);
        self.announced = self.presence;
        self.next_change = tokio::time::Instant::now() + PRESENCE_CHANGE_GAP;
    }

    fn announce_as(&self, state: PresenceState) {
        for topic in self.followed.keys() {
            self.s
                .app
                .hub
                .ephemeral(topic, presence(self.s.user, state));
        }
    }

    /// Serve until the session ends; the state it ended in.
    async fn serve(mut self) -> Self {
        let mut shutdown = self.s.app.shutdown.clone();
        let mut revoked = self.s.app.revocations.changes();
        let left_ms = u64::try_from(self.s.expires_at_ms - now_ms()).unwrap_or(0);
        let expiry = tokio::time::sleep(Duration::from_millis(left_ms));
        tokio::pin!(expiry);
        let start = tokio::time::Instant::now() + HEARTBEAT;
        let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = tokio::time::Instant::now() + PRESENCE_EVERY;
        let mut presence = tokio::time::interval_at(start, PRESENCE_EVERY);
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY_STALLED);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flow = tokio::select! {
                Some((topic, wake)) = self.wakes.next() => match self.woken(topic, wake).await {
                    Ok(flow) => flow,
                    Err(e) => self.s.deliver(Err(e.into())).await.and(Flow::Stop),
                },
                _ = heartbeat.tick() => {
                    let beat = event(session_event::Kind::Heartbeat(Heartbeat {}));
                    self.s.deliver(Ok(beat)).await
                }
                _ = presence.tick() => {
                    self.announce();
                    Flow::Continue
                }
                _ = retry.tick(), if !self.stalled.is_empty() => match self.retry_stalled().await {
                    Ok(flow) => flow,
                    Err(e) => self.s.deliver(Err(e.into())).await.and(Flow::Stop),
                },
                () = tokio::time::sleep_until(self.next_change), if self.presence != self.announced => {
                    self.announce();
                    Flow::Continue
                }
                Ok(()) = revoked.changed() => {
                    if self.s.app.revocations.is_revoked(&self.s.sid) {
                        self.s.deliver(Err(Status::unauthenticated(LOGGED_OUT))).await;
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                }
                _ = self.s.tx.closed() => Flow::Stop,
                _ = until_true(&mut shutdown) => Flow::Stop,
                () = &mut expiry => {
                    let expired = Status::unauthenticated(
                        "the access token expired: refresh it and open the session again",
                    );
                    self.s.deliver(Err(expired)).await;
                    Flow::Stop
                }
            };
            if let Flow::Stop = flow {
                return self;
            }
        }
    }

    async fn woken(&mut self, topic: Topic, wake: Wake) -> Result<Flow> {
        if topic.service == USER || topic.service == SERVER {
            return match wake {
                Wake::Update(_, token) => self.refresh(&token).await,
                // Set on another of the user's sessions (SetPresence).
                Wake::Ephemeral(e) if topic.service == USER => {
                    if let Some(crate::pb::internal::ephemeral::Kind::Presence(state)) = e.kind
                        && let Ok(state) = PresenceState::try_from(state)
                    {
                        self.presence = state;
                        if state != self.announced
                            && tokio::time::Instant::now() >= self.next_change
                        {
                            self.announce();
                        }
                    }
                    Ok(Flow::Continue)
                }
                Wake::Newer(_) | Wake::Missed(_) | Wake::Ephemeral(_) => Ok(Flow::Continue),
            };
        }
        match wake {
            Wake::Ephemeral(e) => {
                let Some(kind) = self.followed.get(&topic).map(|f| f.kind) else {
                    return Ok(Flow::Continue);
                };
                let conversation = reference(kind, topic.conversation);
                match self.seen.event(self.s.user, conversation, &e) {
                    Some(told) => Ok(self.s.deliver(Ok(event(told))).await),
                    None => Ok(Flow::Continue),
                }
            }
            Wake::Newer(hint) => {
                let behind = self.followed.get(&topic).is_some_and(|f| hint.seq > f.last);
                if behind {
                    return self.catch_up(&topic, hint.seq, Some(&hint.token)).await;
                }
                Ok(Flow::Continue)
            }
            Wake::Update(ACCESS_CHANGED, token) => self.recheck(&topic, &token).await,
            Wake::Update(seq, token) => self.updated(&topic, seq, &token).await,
            Wake::Missed(n) => {
                debug!(missed = n, "session missed updates");
                Ok(Flow::Continue)
            }
        }
    }

    /// Deliver the messages of `topic` after the last delivered, up to `upto` at least. A
    /// read that brings nothing while the session is behind (a replica that lacks a grant,
    /// say) leaves the topic to the retry tick: the hint that woke it will not come again.
    async fn catch_up(&mut self, topic: &Topic, upto: u64, token: Option<&str>) -> Result<Flow> {
        loop {
            let Some(f) = self.followed.get(topic) else {
                self.stalled.remove(topic);
                return Ok(Flow::Continue);
            };
            let (kind, last) = (f.kind, f.last);
            if last >= upto {
                self.stalled.remove(topic);
                return Ok(Flow::Continue);
            }
            let batch = match f.follow.read(&self.s.app.db, last, upto, token).await {
                Ok(batch) => batch,
                Err(Error::PermissionDenied(_)) => {
                    if !self.s.primary_may_read(topic, kind).await? {
                        return self.leave(topic).await;
                    }
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            if batch.is_empty() {
                self.stalled
                    .insert(topic.clone(), (upto, token.map(str::to_string)));
                return Ok(Flow::Continue);
            }
            let mut confirmed = false;
            for (message, verdict) in batch {
                // The read's snapshot denied the user, or did not ask them: the primary
                // decides, once per batch (a replica's yes could be older than that snapshot).
                if verdict != Verdict::Allowed && !confirmed {
                    if !self.s.primary_may_read(topic, kind).await? {
                        return self.leave(topic).await;
                    }
                    confirmed = true;
                }
                if let Some(f) = self.followed.get_mut(topic) {
                    f.last = message.seq;
                }
                let m = ConversationMessage {
                    kind: kind as i32,
                    message: Some(Message::clone(&message)),
                };
                if let Flow::Stop = self
                    .s
                    .deliver(Ok(event(session_event::Kind::Message(m))))
                    .await
                {
                    return Ok(Flow::Stop);
                }
            }
        }
    }

    /// Read again what stalled (see [`catch_up`](Self::catch_up)).
    async fn retry_stalled(&mut self) -> Result<Flow> {
        for (topic, (upto, token)) in std::mem::take(&mut self.stalled) {
            if let Flow::Stop = self.catch_up(&topic, upto, token.as_deref()).await? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Who may read `topic` changed: leave it if the user lost it.
    async fn recheck(&mut self, topic: &Topic, token: &str) -> Result<Flow> {
        let Some(kind) = self.followed.get(topic).map(|f| f.kind) else {
            return Ok(Flow::Continue);
        };
        if self.s.may_read(topic, kind, Some(token)).await? {
            return Ok(Flow::Continue);
        }
        self.leave(topic).await
    }

    async fn leave(&mut self, topic: &Topic) -> Result<Flow> {
        let Some(f) = self.followed.remove(topic) else {
            return Ok(Flow::Continue);
        };
        self.wakes.remove(topic);
        let left = reference(f.kind, topic.conversation);
        Ok(self
            .s
            .deliver(Ok(event(session_event::Kind::Left(left))))
            .await)
    }

    /// A delivered message of `topic` was edited or deleted.
    async fn updated(&mut self, topic: &Topic, seq: u64, token: &str) -> Result<Flow> {
        let Some((kind, last)) = self.followed.get(topic).map(|f| (f.kind, f.last)) else {
            return Ok(Flow::Continue);
        };
        let Some(t) = tables(kind) else {
            return Ok(Flow::Continue);
        };
        if seq > last {
            // Not delivered yet: it comes as it is now.
            return Ok(Flow::Continue);
        }
        if !self.s.may_read(topic, kind, Some(token)).await? {
            return self.leave(topic).await;
        }
        let mut conn = self.s.app.db.reader(Some(token)).await?;
        let Some(message) = messages::get(&mut conn, t, topic.conversation, seq).await? else {
            return Ok(Flow::Continue);
        };
        let m = ConversationMessage {
            kind: kind as i32,
            message: Some(message),
        };
        Ok(self
            .s
            .deliver(Ok(event(session_event::Kind::Updated(m))))
            .await)
    }

    /// The user's conversations or read markers changed at `token`: read them again, follow
    /// what is new, leave what is gone, tell of moved markers.
    async fn refresh(&mut self, token: &str) -> Result<Flow> {
        self.s.token = Some(token.to_string());
        let Memberships {
            conversations: list,
            servers,
        } = self.s.list().await?;
        let mut now = HashSet::new();
        let mut events = Vec::new();
        for m in &list {
            let Some(service) = service(m.kind) else {
                continue;
            };
            let topic = Topic {
                service,
                conversation: m.id,
            };
            now.insert(topic.clone());
            match self.followed.get_mut(&topic) {
                Some(f) => {
                    if m.read_seq != f.read {
                        f.read = m.read_seq;
                        events.push(session_event::Kind::Read(ReadMarker {
                            conversation: Some(reference(m.kind, m.id)),
                            read_seq: m.read_seq,
                        }));
                    }
                }
                None => {
                    self.follow(m, m.last_seq);
                    self.s
                        .app
                        .hub
                        .ephemeral(&topic, presence(self.s.user, self.presence));
                    events.push(session_event::Kind::Joined(state(m)));
                }
            }
        }
        // A list cut at its limit says nothing of what lies past it: nothing is left then (a
        // conversation really lost is left on its own access hint).
        let complete = list.len() < MAX_CONVERSATIONS;
        let gone: Vec<Topic> = self
            .followed
            .keys()
            .filter(|t| complete && !now.contains(*t))
            .cloned()
            .collect();
        for topic in gone {
            if let Flow::Stop = self.leave(&topic).await? {
                return Ok(Flow::Stop);
            }
        }
        let servers: HashSet<u64> = servers.into_iter().collect();
        for server in self.servers.clone() {
            if !servers.contains(&server) {
                self.servers.remove(&server);
                self.wakes.remove(&Topic::server(server));
            }
        }
        for server in servers {
            self.follow_server(server);
        }
        for e in events {
            if let Flow::Stop = self.s.deliver(Ok(event(e))).await {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }
}

impl Flow {
    /// `other` unless this is Stop.
    fn and(self, other: Flow) -> Flow {
        match self {
            Flow::Stop => Flow::Stop,
            Flow::Continue => other,
        }
    }
}
