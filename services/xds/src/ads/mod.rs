//! The aggregated discovery service: State-of-the-World and Delta streams over one snapshot.
//!
//! As in go-control-plane, protocol and transport are apart: [`sotw`] and [`delta`] hold
//! each stream's subscription state and turn a request or a new snapshot into the responses
//! to send (pure, unit-tested without streams); [`drive`] only moves messages and records
//! client status.
//!
//! Every stream reads the current [`Snapshot`] from a latest-value channel, so a slow Envoy
//! only ever skips intermediate versions and never holds anyone up; resources are encoded once
//! and shared. Per stream and type it tracks the subscription, the last nonce and version sent,
//! and the last version acknowledged. A response carrying a stale nonce is ignored. A NACK is
//! recorded (log, metric, client status) and the rejected version is not sent again: the
//! stream waits for a new one, so a bad resource never loops.

mod delta;
mod sotw;

use chatcluster_common::sync::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        aggregated_discovery_service_server::AggregatedDiscoveryService,
    },
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

pub use delta::Delta;
pub use sotw::Sotw;

use crate::resources::{Kind, Snapshot};

/// What one Envoy last did with one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Version last sent.
    pub sent: Option<String>,
    /// Version last acknowledged.
    pub acked: Option<String>,
    /// The last rejection: the version and Envoy's message.
    pub nacked: Option<(String, String)>,
}

/// The state of every connected Envoy, for operators (and tests): node id → type → status.
#[derive(Default)]
pub struct Clients {
    inner: Mutex<BTreeMap<String, BTreeMap<Kind, TypeStatus>>>,
    nacks: std::sync::atomic::AtomicU64,
}

impl Clients {
    /// Record what a stream's protocol state reported for `node`.
    fn record(&self, node: &str, change: StatusChange) {
        match change {
            StatusChange::Sent(kind, version) => {
                self.update(node, kind, |s| s.sent = Some(version))
            }
            StatusChange::Acked(kind, version) => {
                self.update(node, kind, |s| s.acked = Some(version));
            }
            StatusChange::Nacked(kind, version, message) => {
                warn!(node, ?kind, %version, error = %message, "Envoy rejected configuration");
                self.nacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.update(node, kind, |s| s.nacked = Some((version, message)));
            }
        }
    }

    fn update(&self, node: &str, kind: Kind, f: impl FnOnce(&mut TypeStatus)) {
        let mut all = lock(&self.inner);
        f(all
            .entry(node.to_string())
            .or_default()
            .entry(kind)
            .or_default());
    }

    fn remove(&self, node: &str) {
        lock(&self.inner).remove(node);
    }

    /// A copy of every client's status.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<Kind, TypeStatus>> {
        lock(&self.inner).clone()
    }

    /// NACKs received since start.
    pub fn nacks(&self) -> u64 {
        self.nacks.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The ADS gRPC service.
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: Arc<Clients>,
}

impl Ads {
    /// Serve the snapshots published on `snapshots`, recording client status in `clients`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, clients: Arc<Clients>) -> Self {
        Self { snapshots, clients }
    }

    fn open<P: Protocol>(
        &self,
        protocol: P,
        inbound: Streaming<P::Request>,
        mode: &'static str,
    ) -> Response<Stream<P::Response>> {
        let (tx, rx) = mpsc::channel(16);
        drive(
            protocol,
            inbound,
            self.snapshots.clone(),
            self.clients.clone(),
            tx,
            mode,
        );
        Response::new(ReceiverStream::new(rx))
    }
}

/// Which part of a change a push sends: new and changed resources go out first, in
/// make-before-break order; removals after, in reverse order, so nothing is removed while
/// something still refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Additions and updates.
    Upserts,
    /// Removals.
    Removals,
    /// Both at once (answers to Envoy's own requests).
    All,
}

/// A change of what one Envoy has of one type, for [`Clients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// A version was sent.
    Sent(Kind, String),
    /// Envoy acknowledged a version.
    Acked(Kind, String),
    /// Envoy rejected a version, saying why.
    Nacked(Kind, String, String),
}

/// What a protocol decided: the responses to send, in order, and the status to record.
#[derive(Debug)]
pub struct Out<R> {
    /// Responses, in the order they must go out.
    pub responses: Vec<R>,
    /// Status changes of this Envoy.
    pub status: Vec<StatusChange>,
}

impl<R> Default for Out<R> {
    fn default() -> Self {
        Self {
            responses: Vec::new(),
            status: Vec::new(),
        }
    }
}

/// The protocol state of one stream: pure, so each variant is tested without a stream.
pub trait Protocol: Send + 'static {
    /// Envoy's request type.
    type Request: Send + 'static;
    /// The response type.
    type Response: Send + 'static;
    /// What to do about one request, given the current snapshot.
    fn on_request(&mut self, req: Self::Request, snapshot: &Snapshot) -> Out<Self::Response>;
    /// What to send of `kind` in a new `snapshot`, in this `phase`.
    fn on_snapshot(&mut self, snapshot: &Snapshot, kind: Kind, phase: Phase)
    -> Out<Self::Response>;
    /// The Envoy's node id, once known.
    fn node(&self) -> &str;
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// What both protocols keep of a stream beside their per-type state: the Envoy's node id
/// and the last nonce handed out.
#[derive(Debug)]
pub struct StreamState<T> {
    node: String,
    nonce: u64,
    types: HashMap<Kind, T>,
}

impl<T> Default for StreamState<T> {
    fn default() -> Self {
        Self {
            node: "unknown".into(),
            nonce: 0,
            types: HashMap::new(),
        }
    }
}

impl<T> StreamState<T> {
    /// Take the node id a request carries (only the first request must).
    fn note_node(&mut self, node: Option<&Node>) {
        if let Some(n) = node.filter(|n| !n.id.is_empty()) {
            self.node = n.id.clone();
        }
    }
}

/// The next nonce of a stream.
fn next_nonce(nonce: &mut u64) -> String {
    *nonce += 1;
    nonce.to_string()
}

/// Record what a protocol reported for `node`, then send its responses; false once Envoy
/// has gone.
async fn deliver<R>(
    clients: &Clients,
    tx: &mpsc::Sender<Result<R, Status>>,
    node: &str,
    out: Out<R>,
) -> bool {
    for change in out.status {
        clients.record(node, change);
    }
    for response in out.responses {
        if tx.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}

/// Drive one stream: Envoy's requests, and every new snapshot (pushed in make-before-break
/// order), until either side ends; then forget the Envoy's status.
fn drive<P: Protocol>(
    mut protocol: P,
    mut inbound: Streaming<P::Request>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: Arc<Clients>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
    mode: &'static str,
) {
    tokio::spawn(
        async move {
            'stream: loop {
                tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => {
                            let snapshot = snapshots.borrow().clone();
                            let out = protocol.on_request(req, &snapshot);
                            if !deliver(&clients, &tx, protocol.node(), out).await {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "stream error");
                            break;
                        }
                        None => break,
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let snapshot = snapshots.borrow_and_update().clone();
                        let upserts = Kind::ALL.into_iter().map(|k| (k, Phase::Upserts));
                        let removals = Kind::ALL.into_iter().rev().map(|k| (k, Phase::Removals));
                        for (kind, phase) in upserts.chain(removals) {
                            let out = protocol.on_snapshot(&snapshot, kind, phase);
                            if !deliver(&clients, &tx, protocol.node(), out).await {
                                break 'stream;
                            }
                        }
                    }
                }
            }
            info!(node = %protocol.node(), "stream closed");
            clients.remove(protocol.node());
        }
        .instrument(info_span!("ads", mode)),
    );
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Stream<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open(Sotw::default(), request.into_inner(), "sotw"))
    }

    type DeltaAggregatedResourcesStream = Stream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open(Delta::default(), request.into_inner(), "delta"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! What the protocol tests share.

    use envoy_types::pb::google::{protobuf::Any, rpc};

    use crate::resources::{Kind, Snapshot};

    /// A snapshot of `(kind, name, version)` resources with empty bodies.
    pub fn snapshot(resources: &[(Kind, &str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (kind, name, version) in resources {
            s.insert(*kind, name.to_string(), version.to_string(), Any::default());
        }
        s
    }

    /// The error detail of a NACK saying `message`.
    pub fn nack_detail(message: &str) -> Option<rpc::Status> {
        Some(rpc::Status {
            code: 3,
            message: message.into(),
            ..rpc::Status::default()
        })
    }
}
