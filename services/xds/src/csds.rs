//! CSDS: what each connected Envoy was sent, acknowledged or rejected, per resource type, in
//! Envoy's own client-status format (`envoy.service.status.v3`), for operators' tooling.

use std::sync::Arc;

use envoy_types::pb::envoy::{
    admin::v3::{ClientResourceStatus, UpdateFailureState},
    config::core::v3::Node,
    service::status::v3::{
        ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
        client_config::GenericXdsConfig,
        client_status_discovery_service_server::ClientStatusDiscoveryService,
    },
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ads::{Clients, TypeStatus};
use crate::resources::Kind;

/// The CSDS gRPC service.
pub struct Csds {
    clients: Arc<Clients>,
}

impl Csds {
    /// Report on `clients`.
    pub fn new(clients: Arc<Clients>) -> Self {
        Self { clients }
    }

    /// The status of every Envoy (or only the one `request.node` names).
    pub fn status(&self, request: &ClientStatusRequest) -> ClientStatusResponse {
        let only = request
            .node
            .as_ref()
            .map(|n| n.id.as_str())
            .filter(|id| !id.is_empty());
        let config = self
            .clients
            .snapshot()
            .into_iter()
            .filter(|(node, _)| only.is_none_or(|id| id == node))
            .map(|(node, types)| ClientConfig {
                node: Some(Node {
                    id: node,
                    ..Node::default()
                }),
                generic_xds_configs: types
                    .into_iter()
                    .map(|(kind, status)| generic(kind, &status))
                    .collect(),
                ..ClientConfig::default()
            })
            .collect();
        ClientStatusResponse { config }
    }
}

fn generic(kind: Kind, s: &TypeStatus) -> GenericXdsConfig {
    let (config_status, client_status) = match (&s.nacked, &s.sent, &s.acked) {
        (Some(_), _, _) => (ConfigStatus::Error, ClientResourceStatus::Nacked),
        (None, Some(sent), Some(acked)) if sent == acked => {
            (ConfigStatus::Synced, ClientResourceStatus::Acked)
        }
        (None, Some(_), _) => (ConfigStatus::Stale, ClientResourceStatus::Requested),
        (None, None, _) => (ConfigStatus::NotSent, ClientResourceStatus::Requested),
    };
    GenericXdsConfig {
        type_url: kind.type_url().into(),
        version_info: s
            .acked
            .clone()
            .or_else(|| s.sent.clone())
            .unwrap_or_default(),
        config_status: config_status as i32,
        client_status: client_status as i32,
        error_state: s
            .nacked
            .as_ref()
            .map(|(version, details)| UpdateFailureState {
                details: details.clone(),
                version_info: version.clone(),
                ..UpdateFailureState::default()
            }),
        ..GenericXdsConfig::default()
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = ReceiverStream<Result<ClientStatusResponse, Status>>;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let csds = Csds {
            clients: self.clients.clone(),
        };
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                if tx.send(Ok(csds.status(&req))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.status(request.get_ref())))
    }
}
