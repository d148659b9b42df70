//! The aggregated discovery service: State-of-the-World and Delta streams over one snapshot.
//!
//! Every stream reads the current [`Snapshot`] from a latest-value channel, so a slow Envoy
//! only ever skips intermediate versions and never holds anyone up; resources are encoded once
//! and shared. Per stream and type it tracks the subscription, the last nonce and version sent,
//! and the last version acknowledged. A response carrying a stale nonce is ignored. A NACK is
//! recorded (log, metric, client status) and the rejected version is not sent again: the
//! stream waits for a new one, so a bad resource never loops.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
            Resource as DeltaResource,
            aggregated_discovery_service_server::AggregatedDiscoveryService,
        },
    },
    google::protobuf::Any,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

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
    fn update(&self, node: &str, kind: Kind, f: impl FnOnce(&mut TypeStatus)) {
        let mut all = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(all
            .entry(node.to_string())
            .or_default()
            .entry(kind)
            .or_default());
    }

    fn remove(&self, node: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// A copy of every client's status.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<Kind, TypeStatus>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

fn node_id(node: Option<&Node>) -> Option<String> {
    node.map(|n| n.id.clone()).filter(|id| !id.is_empty())
}

/// Version of a named subset of a kind.
fn subset_version(snapshot: &Snapshot, kind: Kind, names: &BTreeSet<String>) -> String {
    let mut h = Sha256::new();
    for name in names {
        if let Some(r) = snapshot.get(kind, name) {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(r.version.as_bytes());
            h.update([0]);
        }
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Default)]
struct SotwType {
    /// None: wildcard.
    names: Option<BTreeSet<String>>,
    requested: bool,
    last_nonce: Option<String>,
    last_sent: Option<String>,
    rejected: Option<String>,
}

struct Sotw {
    node: String,
    nonce: u64,
    types: HashMap<Kind, SotwType>,
    clients: Arc<Clients>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Sotw {
    fn version(&self, snapshot: &Snapshot, kind: Kind) -> String {
        match self.types.get(&kind).and_then(|t| t.names.as_ref()) {
            Some(names) => subset_version(snapshot, kind, names),
            None => snapshot.kind_version(kind),
        }
    }

    /// Send `kind` if Envoy asked for it and does not have (or has not rejected) this version.
    async fn push(&mut self, snapshot: &Snapshot, kind: Kind, force: bool) -> bool {
        let version = self.version(snapshot, kind);
        let Some(t) = self.types.get(&kind) else {
            return true;
        };
        if !t.requested
            || t.rejected.as_deref() == Some(version.as_str())
            || (!force && t.last_sent.as_deref() == Some(version.as_str()))
        {
            return true;
        }
        let resources: Vec<Any> = match &t.names {
            None => snapshot.of(kind).map(|r| r.body.clone()).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| snapshot.get(kind, n))
                .map(|r| r.body.clone())
                .collect(),
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: kind.type_url().into(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        };
        if let Some(t) = self.types.get_mut(&kind) {
            t.last_nonce = Some(nonce);
            t.last_sent = Some(version.clone());
        }
        self.clients
            .update(&self.node, kind, |s| s.sent = Some(version));
        self.tx.send(Ok(response)).await.is_ok()
    }

    async fn on_request(&mut self, req: DiscoveryRequest, snapshot: &Snapshot) -> bool {
        if let Some(id) = node_id(req.node.as_ref()) {
            self.node = id;
        }
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            debug!(type_url = %req.type_url, "ignoring unknown type");
            return true;
        };
        let t = self.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() && t.last_nonce.as_deref() != Some(&req.response_nonce) {
            debug!(?kind, nonce = %req.response_nonce, "ignoring stale nonce");
            return true;
        }
        if let Some(error) = &req.error_detail {
            // NACK: keep serving what Envoy has; never send this version again.
            let rejected = t.last_sent.clone().unwrap_or_default();
            warn!(node = %self.node, ?kind, version = %rejected, error = %error.message, "Envoy rejected configuration");
            t.rejected = Some(rejected.clone());
            let message = error.message.clone();
            self.clients
                .nacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.clients
                .update(&self.node, kind, |s| s.nacked = Some((rejected, message)));
        } else if !req.response_nonce.is_empty() {
            let version = req.version_info.clone();
            self.clients
                .update(&self.node, kind, |s| s.acked = Some(version));
        }
        let names: Option<BTreeSet<String>> = if kind.wildcard()
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"))
        {
            None
        } else {
            Some(req.resource_names.iter().cloned().collect())
        };
        let t = self.types.entry(kind).or_default();
        let changed = !t.requested || t.names != names;
        t.names = names;
        t.requested = true;
        if changed {
            // A new subscription gets an answer even when the version is unchanged.
            return self.push(snapshot, kind, true).await;
        }
        true
    }
}

#[derive(Default)]
struct DeltaType {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What Envoy has: name → version.
    known: BTreeMap<String, String>,
    last_nonce: Option<String>,
    /// What the last response sent, to undo on NACK.
    in_flight: BTreeMap<String, Option<String>>,
    /// Versions Envoy rejected: not sent again.
    rejected: BTreeMap<String, String>,
}

struct Delta {
    node: String,
    nonce: u64,
    types: HashMap<Kind, DeltaType>,
    clients: Arc<Clients>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Which part of a change a push sends: new and changed resources go out first, in
/// make-before-break order; removals after, in reverse order, so nothing is removed while
/// something still refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Additions and updates.
    Upserts,
    /// Removals.
    Removals,
    /// Both at once (answers to Envoy's own requests).
    All,
}

impl Delta {
    async fn push(&mut self, snapshot: &Snapshot, kind: Kind, phase: Phase) -> bool {
        let Some(t) = self.types.get_mut(&kind) else {
            return true;
        };
        if !t.subscribed {
            return true;
        }
        let wanted: BTreeSet<String> = if t.wildcard {
            snapshot
                .of(kind)
                .map(|r| r.name.clone())
                .chain(t.names.iter().cloned())
                .collect()
        } else {
            t.names.clone()
        };
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut in_flight = BTreeMap::new();
        let upserts = phase != Phase::Removals;
        let removals = phase != Phase::Upserts;
        for name in &wanted {
            match snapshot.get(kind, name) {
                Some(r) => {
                    if upserts
                        && t.known.get(name) != Some(&r.version)
                        && t.rejected.get(name) != Some(&r.version)
                    {
                        resources.push(DeltaResource {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            resource: Some(r.body.clone()),
                            ..DeltaResource::default()
                        });
                        in_flight.insert(name.clone(), t.known.get(name).cloned());
                        t.known.insert(name.clone(), r.version.clone());
                    }
                }
                None => {
                    if removals && t.known.remove(name).is_some() {
                        removed.push(name.clone());
                    }
                }
            }
        }
        // Resources Envoy has that no longer exist (wildcard kinds).
        let gone: Vec<String> = t
            .known
            .keys()
            .filter(|n| removals && snapshot.get(kind, n).is_none())
            .cloned()
            .collect();
        for name in gone {
            t.known.remove(&name);
            removed.push(name);
        }
        if resources.is_empty() && removed.is_empty() {
            return true;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        t.last_nonce = Some(nonce.clone());
        t.in_flight = in_flight;
        let version = snapshot.kind_version(kind);
        self.clients
            .update(&self.node, kind, |s| s.sent = Some(version.clone()));
        self.tx
            .send(Ok(DeltaDiscoveryResponse {
                system_version_info: version,
                resources,
                type_url: kind.type_url().into(),
                removed_resources: removed,
                nonce,
                ..DeltaDiscoveryResponse::default()
            }))
            .await
            .is_ok()
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        if let Some(id) = node_id(req.node.as_ref()) {
            self.node = id;
        }
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            return true;
        };
        let t = self.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() {
            if t.last_nonce.as_deref() != Some(&req.response_nonce) {
                debug!(?kind, nonce = %req.response_nonce, "ignoring stale nonce");
                return true;
            }
            if let Some(error) = &req.error_detail {
                // Undo what Envoy refused; remember it so it is not sent again.
                let refused = std::mem::take(&mut t.in_flight);
                for (name, before) in refused {
                    if let Some(v) = t.known.get(&name).cloned() {
                        t.rejected.insert(name.clone(), v);
                    }
                    match before {
                        Some(v) => t.known.insert(name, v),
                        None => t.known.remove(&name),
                    };
                }
                let version = snapshot.kind_version(kind);
                warn!(node = %self.node, ?kind, error = %error.message, "Envoy rejected configuration");
                self.clients
                    .nacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = error.message.clone();
                self.clients
                    .update(&self.node, kind, |s| s.nacked = Some((version, message)));
            } else {
                t.in_flight.clear();
                let version = snapshot.kind_version(kind);
                self.clients
                    .update(&self.node, kind, |s| s.acked = Some(version));
            }
        }
        let first = !t.subscribed;
        if first {
            t.subscribed = true;
            // Envoy reconnecting after a restart of chat-xds tells what it already has.
            t.known = req.initial_resource_versions.clone().into_iter().collect();
            t.wildcard = kind.wildcard() && req.resource_names_subscribe.is_empty();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                t.wildcard = true;
            } else {
                t.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.names.remove(name);
                t.known.remove(name);
            }
        }
        self.push(snapshot, kind, Phase::All).await
    }
}

/// What the shared stream driver needs of a stream's protocol state.
trait Protocol: Send + 'static {
    /// Envoy's request type.
    type Request: Send + 'static;
    /// Handle one request; false when the stream should end.
    fn on_request(
        &mut self,
        req: Self::Request,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = bool> + Send;
    /// Send what changed of `kind` in `snapshot` in this `phase`; false when the stream
    /// should end.
    fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        kind: Kind,
        phase: Phase,
    ) -> impl std::future::Future<Output = bool> + Send;
    /// The Envoy's node id, once known.
    fn node(&self) -> &str;
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    async fn on_request(&mut self, req: DiscoveryRequest, snapshot: &Snapshot) -> bool {
        Sotw::on_request(self, req, snapshot).await
    }
    async fn on_snapshot(&mut self, snapshot: &Snapshot, kind: Kind, phase: Phase) -> bool {
        // State-of-the-World sends each type whole: a removal is part of its update.
        phase == Phase::Removals || self.push(snapshot, kind, false).await
    }
    fn node(&self) -> &str {
        &self.node
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    async fn on_request(&mut self, req: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        Delta::on_request(self, req, snapshot).await
    }
    async fn on_snapshot(&mut self, snapshot: &Snapshot, kind: Kind, phase: Phase) -> bool {
        self.push(snapshot, kind, phase).await
    }
    fn node(&self) -> &str {
        &self.node
    }
}

/// Drive one stream: Envoy's requests, and every new snapshot (pushed in make-before-break
/// order), until either side ends; then forget the Envoy's status.
fn drive<P: Protocol>(
    mut protocol: P,
    mut inbound: Streaming<P::Request>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    clients: Arc<Clients>,
    mode: &'static str,
) {
    tokio::spawn(
        async move {
            'stream: loop {
                tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => {
                            let snapshot = snapshots.borrow().clone();
                            if !protocol.on_request(req, &snapshot).await {
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
                            if !protocol.on_snapshot(&snapshot, kind, phase).await {
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
        let (tx, rx) = mpsc::channel(16);
        let protocol = Sotw {
            node: "unknown".into(),
            nonce: 0,
            types: HashMap::new(),
            clients: self.clients.clone(),
            tx,
        };
        drive(
            protocol,
            request.into_inner(),
            self.snapshots.clone(),
            self.clients.clone(),
            "sotw",
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = Stream<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let protocol = Delta {
            node: "unknown".into(),
            nonce: 0,
            types: HashMap::new(),
            clients: self.clients.clone(),
            tx,
        };
        drive(
            protocol,
            request.into_inner(),
            self.snapshots.clone(),
            self.clients.clone(),
            "delta",
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
