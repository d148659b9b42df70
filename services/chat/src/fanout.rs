//! Delivery of new messages to subscribers on every replica.
//!
//! The database is the source of truth: a subscriber's stream reads messages by seq from it,
//! so nothing is lost or duplicated whatever happens to the hints below. Hints only make
//! delivery fast:
//! - a send on this replica wakes local subscribers of that conversation at once;
//! - it is also pushed to every peer replica of the same service (`Fanout.Notify`, batched and
//!   coalesced per conversation), which wakes theirs;
//! - as a safety net for a lost hint, each service on each replica re-reads `last_seq` of the
//!   conversations it has subscribers for every few seconds, in one statement per 64 of them
//!   (`Conversations::new` starts it): work grows with subscribed conversations per replica,
//!   not with subscribers, and no subscription polls by itself.

use chatcluster_common::sync::lock;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, watch};
use tonic::{Request, Response, Status, transport::Endpoint};
use tracing::{debug, warn};

use crate::pb::internal::{
    Notification, NotifyRequest, NotifyResponse, fanout_client::FanoutClient, fanout_server::Fanout,
};

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
    subscribers: usize,
}

/// Local subscribers by conversation, and the outbox to peers.
pub struct Hub {
    topics: Mutex<HashMap<Topic, Channel>>,
    outbox: Option<mpsc::UnboundedSender<Notification>>,
}

/// A subscriber's handle on a conversation; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Topic,
    /// Changes when a newer message is known.
    pub latest: watch::Receiver<Hint>,
    /// Edited or deleted messages (seq, token).
    pub updates: broadcast::Receiver<(u64, String)>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.lock();
        if let Some(ch) = topics.get_mut(&self.topic) {
            ch.subscribers -= 1;
            if ch.subscribers == 0 {
                topics.remove(&self.topic);
            }
        }
    }
}

impl Hub {
    /// A hub pushing hints to `peers` (none: single replica).
    pub fn new(peers: Option<Peers>) -> Arc<Self> {
        let outbox = peers.map(|p| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(p.run(rx));
            tx
        });
        Arc::new(Self {
            topics: Mutex::new(HashMap::new()),
            outbox,
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
            subscribers: 0,
        });
        ch.subscribers += 1;
        Subscription {
            hub: self.clone(),
            latest: ch.latest.subscribe(),
            updates: ch.updates.subscribe(),
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

    /// A new message `seq` in `topic`, heard of locally or from a peer. Returns whether a
    /// local subscriber was woken.
    pub fn hint(&self, topic: &Topic, seq: u64, token: &str) -> bool {
        let topics = self.lock();
        let Some(ch) = topics.get(topic) else {
            return false;
        };
        ch.latest.send_if_modified(|h| {
            if seq > h.seq {
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

    /// A message was written here: wake local subscribers and tell the peers.
    pub fn publish(&self, topic: &Topic, seq: u64, token: &str, update: bool) {
        if update {
            self.hint_update(topic, seq, token);
        } else {
            self.hint(topic, seq, token);
        }
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(Notification {
                service: topic.service.to_string(),
                conversation_id: topic.conversation,
                seq,
                gtid: token.to_string(),
                update,
            });
        }
    }
}

/// Where the peer replicas are.
#[derive(Debug, Clone)]
pub enum PeerSource {
    /// Fixed `host:port` addresses (laptop modes).
    Static(Vec<String>),
    /// A DNS name resolving to every replica (a headless Service), and their port.
    Dns {
        /// Name to resolve.
        name: String,
        /// gRPC port.
        port: u16,
    },
}

/// The peers of this replica, and how to reach them.
pub struct Peers {
    /// This replica's id, sent along so a peer list that includes us is harmless.
    pub me: String,
    /// Our own address, skipped when found in the peer list.
    pub my_address: Option<String>,
    /// Where the peers are.
    pub source: PeerSource,
    /// Internal TLS to them (verifying each as this service's identity); none: plain text.
    pub tls: Option<chatcluster_common::tls::Connector>,
}

impl Peers {
    async fn addresses(&self) -> Vec<String> {
        let all = match &self.source {
            PeerSource::Static(list) => list.clone(),
            PeerSource::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => addrs.map(|a| a.to_string()).collect(),
                    Err(e) => {
                        warn!(error = %e, %name, "cannot resolve peers");
                        Vec::new()
                    }
                }
            }
        };
        all.into_iter()
            .filter(|a| Some(a) != self.my_address.as_ref())
            .collect()
    }

    /// Send batches of notifications to every peer until the outbox closes. Notifications
    /// for the same conversation coalesce while a batch is in flight.
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Notification>) {
        let mut clients: HashMap<String, FanoutClient<tonic::transport::Channel>> = HashMap::new();
        let mut addresses = self.addresses().await;
        let mut refreshed = tokio::time::Instant::now();
        while let Some(first) = rx.recv().await {
            // New-message hints coalesce to the newest per conversation; updates stay apart.
            let mut batch: HashMap<(String, u64, Option<u64>), Notification> = HashMap::new();
            let mut add = |n: Notification| {
                let key = (
                    n.service.clone(),
                    n.conversation_id,
                    n.update.then_some(n.seq),
                );
                match batch.get(&key) {
                    Some(old) if old.seq >= n.seq => {}
                    _ => {
                        batch.insert(key, n);
                    }
                }
            };
            add(first);
            while let Ok(n) = rx.try_recv() {
                add(n);
            }
            if refreshed.elapsed() > Duration::from_secs(5) {
                addresses = self.addresses().await;
                refreshed = tokio::time::Instant::now();
            }
            let request = NotifyRequest {
                sender: self.me.clone(),
                notifications: batch.into_values().collect(),
            };
            let sends = addresses.iter().map(|addr| {
                let client = clients.entry(addr.clone()).or_insert_with(|| {
                    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                        .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"))
                        .connect_timeout(Duration::from_secs(1))
                        .timeout(Duration::from_secs(2));
                    FanoutClient::new(match &self.tls {
                        Some(tls) => endpoint.connect_with_connector_lazy(tls.clone()),
                        None => endpoint.connect_lazy(),
                    })
                });
                let mut client = client.clone();
                let request = request.clone();
                let addr = addr.clone();
                async move {
                    if let Err(e) = client.notify(request).await {
                        // The peer's safety poll delivers what this hint would have.
                        debug!(peer = %addr, error = %e, "peer notification failed");
                    }
                }
            });
            futures::future::join_all(sends).await;
        }
    }
}

/// The `Fanout` gRPC service: hints from peers.
pub struct FanoutService {
    /// The local hub.
    pub hub: Arc<Hub>,
    /// This replica's id.
    pub me: String,
}

fn static_service(name: &str) -> Option<&'static str> {
    ["auth", "groups", "dms", "servers"]
        .into_iter()
        .find(|s| *s == name)
}

#[tonic::async_trait]
impl Fanout for FanoutService {
    async fn notify(
        &self,
        request: Request<NotifyRequest>,
    ) -> Result<Response<NotifyResponse>, Status> {
        let req = request.into_inner();
        if req.sender == self.me {
            return Ok(Response::new(NotifyResponse {}));
        }
        for n in req.notifications {
            let Some(service) = static_service(&n.service) else {
                continue;
            };
            let topic = Topic {
                service,
                conversation: n.conversation_id,
            };
            if n.update {
                self.hub.hint_update(&topic, n.seq, &n.gtid);
            } else {
                self.hub.hint(&topic, n.seq, &n.gtid);
            }
        }
        Ok(Response::new(NotifyResponse {}))
    }
}
