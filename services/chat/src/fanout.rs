//! Delivery of new messages to subscribers on every replica.
//!
//! The database is the source of truth: a subscriber's stream reads messages by seq from it,
//! so nothing is lost or duplicated whatever happens to the hints below. Hints only make
//! delivery fast:
//! - a send on this replica wakes local subscribers of that conversation at once;
//! - it is also published to the broker (NATS) on the conversation's subject
//!   (`chat.<service>.<conversation>`); each replica subscribes to the subjects of the
//!   conversations it has subscribers for, so a hint reaches only replicas that want it, and
//!   a replica's work follows its own subscribers, not the whole cluster's traffic;
//! - as a safety net for a lost hint (the broker down, a replica reconnecting, a slow
//!   consumer's dropped messages), each service on each replica re-reads `last_seq` of the
//!   conversations it has subscribers for every few seconds, in one statement per 64 of them
//!   (`Conversations::new` starts it). No subscription polls by itself.
//!
//! A hint is a wake-up, never trusted: a subscriber reads only when a hint names a seq past
//! what it delivered, and a hint that names a lower seq than the last one still wakes, so a
//! forged `u64::MAX` cannot freeze a conversation.

use chatcluster_common::{sync::lock, tls::TlsDir};
use futures::StreamExt as _;
use prost::Message as _;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc, watch},
    task::AbortHandle,
};
use tracing::{debug, info, warn};

use prometheus_client::metrics::counter::Counter;

use crate::pb::internal::{Ephemeral, Notification};

/// A conversation of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// Service name.
    pub service: &'static str,
    /// Conversation id.
    pub conversation: u64,
}

/// The seq an update hint carries when it is about access, not a message (seqs start at 1).
pub const ACCESS_CHANGED: u64 = 0;

/// The topic "service" of a user's own events: the conversations they belong to changed, or
/// a read marker of theirs moved. Sessions of the user follow it.
pub const USER: &str = "user";
/// The topic "service" of a server's channel list: a channel was created. Sessions of its
/// members follow it.
pub const SERVER: &str = "server";

impl Topic {
    /// The events of user `id` (see [`USER`]).
    pub fn user(id: u64) -> Self {
        Self {
            service: USER,
            conversation: id,
        }
    }

    /// The channel list of server `id` (see [`SERVER`]).
    pub fn server(id: u64) -> Self {
        Self {
            service: SERVER,
            conversation: id,
        }
    }
}

/// What woke a subscriber (see [`Subscription::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A message newer than the last hint: read if it is past what was delivered.
    Newer(Hint),
    /// Message `seq` was edited or deleted ([`ACCESS_CHANGED`]: who may read changed), at
    /// the token.
    Update(u64, String),
    /// Updates were missed (the subscriber lagged): what they said is in the database.
    Missed(u64),
    /// Typing or presence, from another session (never stored; lost ones are just lost).
    Ephemeral(Ephemeral),
}

/// The newest message a replica has heard of, and the token to read it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    /// Newest seq.
    pub seq: u64,
    /// Consistency token of its write.
    pub token: String,
}

struct Channel {
    latest: watch::Sender<Hint>,
    updates: broadcast::Sender<(u64, String)>,
    ephemeral: broadcast::Sender<Ephemeral>,
    subscribers: usize,
    /// The task taking this conversation's hints from the broker; aborted (and so
    /// unsubscribed) with the last local subscriber.
    interest: Option<AbortHandle>,
}

/// Local subscribers by conversation, and the broker connection.
pub struct Hub {
    topics: Mutex<HashMap<Topic, Channel>>,
    broker: Option<Broker>,
    /// Hints taken from the broker.
    received: Counter,
}

/// A subscriber's handle on a conversation; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Topic,
    /// Changes when a newer message is known.
    pub latest: watch::Receiver<Hint>,
    /// Edited or deleted messages (seq, token).
    pub updates: broadcast::Receiver<(u64, String)>,
    /// Typing and presence.
    ephemeral: broadcast::Receiver<Ephemeral>,
}

impl Subscription {
    /// The next wake-up; None once the hub is gone.
    pub async fn next(&mut self) -> Option<Wake> {
        tokio::select! {
            changed = self.latest.changed() => {
                changed.ok()?;
                Some(Wake::Newer(self.latest.borrow_and_update().clone()))
            }
            update = self.updates.recv() => match update {
                Ok((seq, token)) => Some(Wake::Update(seq, token)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some(Wake::Missed(n)),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            event = self.ephemeral.recv() => match event {
                Ok(e) => Some(Wake::Ephemeral(e)),
                // Stale typing is worth nothing: skip what was missed.
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Wake::Missed(0)),
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.lock();
        if let Some(ch) = topics.get_mut(&self.topic) {
            ch.subscribers -= 1;
            if ch.subscribers == 0 {
                if let Some(interest) = ch.interest.take() {
                    interest.abort();
                }
                topics.remove(&self.topic);
            }
        }
    }
}

impl Hub {
    /// A hub exchanging hints through `broker` (none: a single replica, hints stay local),
    /// counting those it takes from it in `received`.
    pub fn new(broker: Option<Broker>, received: Counter) -> Arc<Self> {
        Arc::new(Self {
            topics: Mutex::new(HashMap::new()),
            broker,
            received,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Topic, Channel>> {
        // Every update is a single map operation: a panicked holder leaves it consistent.
        lock(&self.topics)
    }

    /// Subscribe to `topic`.
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> Subscription {
        let mut topics = self.lock();
        let ch = topics.entry(topic.clone()).or_insert_with(|| Channel {
            latest: watch::channel(Hint::default()).0,
            updates: broadcast::channel(256).0,
            ephemeral: broadcast::channel(64).0,
            subscribers: 0,
            interest: self.broker.as_ref().map(|b| {
                tokio::spawn(b.clone().listen(self.clone(), topic.clone())).abort_handle()
            }),
        });
        ch.subscribers += 1;
        let mut latest = ch.latest.subscribe();
        // The hint already here is news to this subscriber: its first read may have come from
        // a replica that lacked that message, and the same hint never wakes it again.
        latest.mark_changed();
        Subscription {
            hub: self.clone(),
            latest,
            updates: ch.updates.subscribe(),
            ephemeral: ch.ephemeral.subscribe(),
            topic,
        }
    }

    /// Conversations with local subscribers.
    pub fn subscribed(&self) -> usize {
        self.lock().len()
    }

    /// The conversations of `service` with local subscribers.
    pub fn conversations(&self, service: &str) -> Vec<u64> {
        self.lock()
            .keys()
            .filter(|t| t.service == service)
            .map(|t| t.conversation)
            .collect()
    }

    /// A new message `seq` in `topic`, heard of here, from the broker or from the safety
    /// poll. Returns whether the conversation has local subscribers. Wakes them when `seq`
    /// differs from the last hint: each reads only if it is past what it delivered.
    pub fn hint(&self, topic: &Topic, seq: u64, token: &str) -> bool {
        let topics = self.lock();
        let Some(ch) = topics.get(topic) else {
            return false;
        };
        ch.latest.send_if_modified(|h| {
            if seq != h.seq {
                *h = Hint {
                    seq,
                    token: token.to_string(),
                };
                true
            } else {
                false
            }
        });
        true
    }

    /// Message `seq` of `topic` was edited or deleted.
    pub fn hint_update(&self, topic: &Topic, seq: u64, token: &str) {
        if let Some(ch) = self.lock().get(topic) {
            // No receiver is fine.
            let _ = ch.updates.send((seq, token.to_string()));
        }
    }

    /// Who may read `topic` changed (a member removed, kicked or gone, a channel deleted),
    /// committed at `token`: its subscribers here and on the peers check their access again at
    /// once, so a stream that lost it ends now rather than at its next poll. Sent as an update
    /// of [`ACCESS_CHANGED`], which names no message.
    pub fn access_changed(&self, topic: &Topic, token: &str) {
        self.publish(topic, ACCESS_CHANGED, token, true);
    }

    /// Typing or presence in `topic`, heard of here or from the broker: to its local
    /// subscribers.
    fn hint_ephemeral(&self, topic: &Topic, event: Ephemeral) {
        if let Some(ch) = self.lock().get(topic) {
            // No receiver is fine.
            let _ = ch.ephemeral.send(event);
        }
    }

    /// Typing or presence in `topic`: to its subscribers here and on every replica.
    pub fn ephemeral(&self, topic: &Topic, event: Ephemeral) {
        self.hint_ephemeral(topic, event);
        if let Some(broker) = &self.broker {
            let note = Notification {
                ephemeral: Some(event),
                ..Notification::default()
            };
            broker.send(topic, note);
        }
    }

    /// A message was written here: wake local subscribers and tell the other replicas.
    pub fn publish(&self, topic: &Topic, seq: u64, token: &str, update: bool) {
        if update {
            self.hint_update(topic, seq, token);
        } else {
            self.hint(topic, seq, token);
        }
        if let Some(broker) = &self.broker {
            broker.publish(topic, seq, token, update);
        }
    }
}

/// Hints waiting to be handed to the broker client, at most: past it (the broker down for a
/// while) they are dropped, and the safety poll delivers what they would have.
const OUTBOX: usize = 4096;

/// The broker's subject of `topic`.
fn subject(topic: &Topic) -> String {
    format!("chat.{}.{}", topic.service, topic.conversation)
}

/// Where the broker is, and how to speak to it.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `host:port` of the NATS server.
    pub address: String,
    /// Internal TLS: mutual, with this replica's certificate, trusting the cluster's CA only.
    pub tls: Option<TlsDir>,
    /// This replica's name, as the broker lists its clients.
    pub name: String,
}

/// Why the broker connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The TLS files did not load.
    #[error(transparent)]
    Tls(#[from] chatcluster_common::tls::TlsError),
    /// The client refused the options.
    #[error("broker {address}: {source}")]
    Connect {
        /// The broker.
        address: String,
        /// Why.
        source: async_nats::ConnectError,
    },
}

/// The connection to the broker: it reconnects by itself, and while it is down hints are
/// dropped (bounded by [`OUTBOX`]) and the safety poll carries delivery.
#[derive(Clone)]
pub struct Broker {
    client: async_nats::Client,
    outbox: mpsc::Sender<(String, bytes::Bytes)>,
}

impl Broker {
    /// Connect to the broker (in the background: a broker not up yet is retried, and the
    /// replica serves meanwhile).
    pub async fn connect(config: BrokerConfig) -> Result<Self, BrokerError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(config.name)
            // Our own hints woke our subscribers already.
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => info!("broker connected"),
                    async_nats::Event::Disconnected => {
                        warn!("broker disconnected: the safety poll delivers until it is back")
                    }
                    other => debug!(event = %other, "broker"),
                }
            });
        let scheme = match &config.tls {
            Some(dir) => {
                options = options
                    .require_tls(true)
                    .tls_client_config((*dir.client_config()?).clone());
                "tls"
            }
            None => "nats",
        };
        let address = format!("{scheme}://{}", config.address);
        let client = options
            .connect(address.as_str())
            .await
            .map_err(|source| BrokerError::Connect { address, source })?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(send_hints(client.clone(), rx));
        Ok(Self { client, outbox })
    }

    fn publish(&self, topic: &Topic, seq: u64, token: &str, update: bool) {
        let hint = Notification {
            seq,
            gtid: token.to_string(),
            update,
            ephemeral: None,
        };
        self.send(topic, hint);
    }

    fn send(&self, topic: &Topic, hint: Notification) {
        if self
            .outbox
            .try_send((subject(topic), hint.encode_to_vec().into()))
            .is_err()
        {
            debug!("hint outbox full: dropped");
        }
    }

    /// Take `topic`'s hints from the other replicas to `hub` until aborted.
    async fn listen(self, hub: Arc<Hub>, topic: Topic) {
        let mut hints = match self.client.subscribe(subject(&topic)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot subscribe to the broker: the safety poll delivers");
                return;
            }
        };
        while let Some(message) = hints.next().await {
            hub.received.inc();
            match Notification::decode(message.payload) {
                Ok(Notification {
                    ephemeral: Some(e), ..
                }) => hub.hint_ephemeral(&topic, e),
                Ok(n) if n.update => hub.hint_update(&topic, n.seq, &n.gtid),
                Ok(n) => {
                    hub.hint(&topic, n.seq, &n.gtid);
                }
                Err(e) => debug!(error = %e, "malformed hint"),
            }
        }
    }
}

async fn send_hints(client: async_nats::Client, mut rx: mpsc::Receiver<(String, bytes::Bytes)>) {
    while let Some((subject, payload)) = rx.recv().await {
        if let Err(e) = client.publish(subject, payload).await {
            debug!(error = %e, "hint not published");
        }
    }
}
