//! One chatd process: the services its configuration names, the standard gRPC health service
//! (one status per service, plus "" for the process), server reflection, the broker
//! connection that carries delivery hints between replicas, and a graceful drain.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use chatcluster_common::{
    admit::Admit,
    tls::{self, TlsDir},
};
use chatcluster_types::identity::component;
use futures::FutureExt as _;
use tokio::sync::watch;
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    db::{Db, DbConfig},
    deadline::DeadlineLayer,
    fanout::{Broker, BrokerConfig, BrokerError, Hub},
    pb::{
        self, auth::auth_server::AuthServer, dms::dms_server::DmsServer,
        gateway::gateway_server::GatewayServer, groups::groups_server::GroupsServer,
        servers::servers_server::ServersServer,
    },
    services::{
        App, RateLimiter,
        auth::{ACCESS_TTL_MS, AddressLimits, AuthService},
        dms::DmsService,
        gateway::GatewayService,
        groups::GroupsService,
        revocations::Revocations,
        servers::ServersService,
    },
    store,
    telemetry::{Metrics, TelemetryLayer},
    token::{KeyError, Signer, Verifier},
};

/// Concurrent calls (streams) one HTTP/2 connection may carry.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header block a request may send.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Longest a call waits for its answer (for a stream: for the stream to open).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A chat service a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceName {
    /// Accounts and tokens.
    Auth,
    /// Group chats.
    Groups,
    /// Direct messages.
    Dms,
    /// Discord-style servers.
    Servers,
    /// Client sessions: one stream per client for all its conversations.
    Gateway,
}

impl ServiceName {
    /// The gRPC service name, under which its health is reported.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::Auth => "chatcluster.auth.v1.Auth",
            Self::Groups => "chatcluster.groups.v1.Groups",
            Self::Dms => "chatcluster.dms.v1.Dms",
            Self::Servers => "chatcluster.servers.v1.Servers",
            Self::Gateway => "chatcluster.gateway.v1.Gateway",
        }
    }
}

impl std::str::FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auth" => Ok(Self::Auth),
            "groups" => Ok(Self::Groups),
            "dms" => Ok(Self::Dms),
            "servers" => Ok(Self::Servers),
            "gateway" => Ok(Self::Gateway),
            other => Err(format!(
                "unknown service {other:?}: expected auth, groups, dms, servers or gateway"
            )),
        }
    }
}

/// Everything a process needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Services to run; never empty.
    pub services: Vec<ServiceName>,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Prometheus metrics address (`/metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// The database.
    pub db: DbConfig,
    /// A file holding the primary's `host:port`, re-read every second (laptop modes, where
    /// failover changes the address).
    pub db_primary_file: Option<PathBuf>,
    /// PEM public key verifying access tokens.
    pub token_public_key: PathBuf,
    /// PEM private key signing them (auth only).
    pub token_private_key: Option<PathBuf>,
    /// `host:port` of the broker delivery hints go through; none: a single replica.
    pub broker: Option<String>,
    /// Name of this replica.
    pub instance: String,
    /// Writes per user per second, and burst.
    pub rate: (f64, f64),
    /// What auth lets one client address do.
    pub address_limits: AddressLimits,
    /// How long to report NOT_SERVING before closing, so load balancers stop sending first.
    pub drain: Duration,
    /// Internal TLS: this replica's certificate and the cluster's CA; none: plain text.
    pub tls: Option<TlsDir>,
}

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No service named.
    #[error(
        "no service to run: set CHATD_SERVICES (or --services) to one or more of auth, groups, dms, servers, gateway"
    )]
    NoServices,
    /// A key file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is malformed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Auth runs without a signing key.
    #[error("the auth service needs CHATD_TOKEN_PRIVATE_KEY_FILE")]
    NoSigningKey,
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(#[from] crate::error::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics port could not be bound.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    /// Reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The internal certificate could not be loaded.
    #[error("internal TLS: {0}")]
    Tls(#[from] chatcluster_common::tls::TlsError),
    /// The broker connection could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The gRPC port could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn read(path: &PathBuf) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::KeyFile {
        path: path.clone(),
        source,
    })
}

/// Run until `shutdown` completes, then drain: health turns NOT_SERVING, subscription streams
/// end, and after `config.drain` the server stops and in-flight calls finish.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if config.services.is_empty() {
        return Err(StartError::NoServices);
    }
    let verifier = Verifier::from_pem(&read(&config.token_public_key)?)?;
    let signer = if config.services.contains(&ServiceName::Auth) {
        let path = config
            .token_private_key
            .as_ref()
            .ok_or(StartError::NoSigningKey)?;
        Some(Signer::from_pem(&read(path)?)?)
    } else {
        None
    };

    let mut db_config = config.db.clone();
    // A restarted replica starts on the primary as published now, not the one it was given
    // at first: the migrations below need a writable server.
    if let Some(address) = config
        .db_primary_file
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
    {
        db_config.primary = address;
    }
    // Waiting for the database (it may not be up yet) must not outlast a stop request.
    let shutdown = shutdown.boxed().shared();
    let ready = async {
        let db = Db::connect(db_config).await?;
        store::sessions::migrate(&db).await?;
        for service in &config.services {
            match service {
                ServiceName::Auth => store::auth::migrate(&db).await?,
                ServiceName::Groups => store::groups::migrate(&db).await?,
                ServiceName::Dms => store::dms::migrate(&db).await?,
                ServiceName::Servers => store::servers::migrate(&db).await?,
                // The gateway reads the three conversation schemas: it must not wait for
                // their services to make them.
                ServiceName::Gateway => {
                    store::groups::migrate(&db).await?;
                    store::dms::migrate(&db).await?;
                    store::servers::migrate(&db).await?;
                    store::gateway::migrate(&db).await?;
                }
            }
        }
        Ok::<_, StartError>(db)
    };
    let db = tokio::select! {
        db = ready => db?,
        () = shutdown.clone() => {
            info!("stopped before the database was ready");
            return Ok(());
        }
    };
    if let Some(path) = config.db_primary_file.clone() {
        tokio::spawn(follow_primary_file(db.clone(), path));
    }

    // With internal TLS, our certificate says who we are.
    let own = config.tls.as_ref().map(TlsDir::identity).transpose()?;
    if own.is_none() {
        warn!("internal TLS off: any client that reaches the port, or the broker, may call");
    }
    let broker = match &config.broker {
        Some(address) => Some(
            Broker::connect(BrokerConfig {
                address: address.clone(),
                tls: config.tls.clone(),
                name: config.instance.clone(),
            })
            .await?,
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(broker, metrics.broker_hints());
    let (drain_tx, drain_rx) = watch::channel(false);
    let revocations = Revocations::new();
    tokio::spawn(revocations.clone().follow(db.clone()));
    let app = App::new(
        db,
        verifier,
        hub.clone(),
        RateLimiter::new(config.rate.0, config.rate.1),
        revocations,
        drain_rx,
    );

    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(StartError::Metrics)?;
        tokio::spawn(serve_metrics(
            listener,
            metrics.clone(),
            app.shutdown.clone(),
        ));
    }
    tokio::spawn(sample_gauges(
        metrics.clone(),
        app.db.clone(),
        app.hub.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let has = |s| config.services.contains(&s);
    // The chat APIs are Envoy's to call: clients reach them through it, never directly.
    let clients = Admit::new(own.clone(), &[component::INGRESS]);
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A client's connection holds at most this many calls at once (Envoy opens more
        // connections when it needs them), and no call waits longer than REQUEST_TIMEOUT for
        // its answer (a client's shorter grpc-timeout wins).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .timeout(REQUEST_TIMEOUT)
        .layer(TelemetryLayer::new(metrics))
        // Inside telemetry, so a call cut at its deadline is counted as DEADLINE_EXCEEDED.
        .layer(DeadlineLayer)
        .add_service(InterceptedService::new(
            health_service,
            Admit::with_peers(own.clone(), &[component::INGRESS]),
        ))
        .add_service(InterceptedService::new(
            reflection,
            Admit::with_peers(own.clone(), &[component::INGRESS]),
        ))
        .add_optional_service(
            signer
                .map(|s| {
                    AuthService::new(app.clone(), s, ACCESS_TTL_MS, config.address_limits)
                        .map(|s| InterceptedService::new(AuthServer::new(s), clients.clone()))
                })
                .transpose()?,
        )
        .add_optional_service(has(ServiceName::Groups).then(|| {
            InterceptedService::new(
                GroupsServer::new(GroupsService::new(app.clone())),
                clients.clone(),
            )
        }))
        .add_optional_service(has(ServiceName::Dms).then(|| {
            InterceptedService::new(
                DmsServer::new(DmsService::new(app.clone())),
                clients.clone(),
            )
        }))
        .add_optional_service(has(ServiceName::Servers).then(|| {
            InterceptedService::new(
                ServersServer::new(ServersService::new(app.clone())),
                clients.clone(),
            )
        }))
        .add_optional_service(has(ServiceName::Gateway).then(|| {
            InterceptedService::new(
                GatewayServer::new(GatewayService::new(app.clone())),
                clients.clone(),
            )
        }));

    for service in &config.services {
        health
            .set_service_status(service.grpc_name(), ServingStatus::Serving)
            .await;
    }
    health.set_service_status("", ServingStatus::Serving).await;
    info!(services = ?config.services, listen = %config.listen, "chatd serving");

    let services = config.services.clone();
    let drain = config.drain;
    let stop = async move {
        shutdown.await;
        info!("draining");
        for service in &services {
            health
                .set_service_status(service.grpc_name(), ServingStatus::NotServing)
                .await;
        }
        // Streams end cleanly; load balancers see NOT_SERVING before the listener closes.
        let _ = drain_tx.send(true);
        tokio::time::sleep(drain).await;
    };
    match &config.tls {
        Some(dir) => {
            let listener =
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| StartError::Listen {
                        address: config.listen,
                        source,
                    })?;
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, dir.server_config()?), stop)
                .await?;
        }
        None => router.serve_with_shutdown(config.listen, stop).await?,
    }
    info!("stopped");
    Ok(())
}

/// Metrics, and `/healthz` for the kubelet (which presents no client certificate to the gRPC
/// port): 200 while serving, 503 once draining, so the pod leaves its Service first.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    draining: watch::Receiver<bool>,
) {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.encode() {
                        Ok(text) => (StatusCode::OK, text),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let draining = *draining.borrow();
                async move {
                    match draining {
                        false => (StatusCode::OK, "serving"),
                        true => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics server stopped");
    }
}

/// Gauges read from their owners every few seconds.
async fn sample_gauges(metrics: Arc<Metrics>, db: Arc<Db>, hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for (pool, size, idle) in db.pool_stats().await {
            metrics.set_pool(pool, size, idle);
        }
        metrics.set_subscribed(hub.subscribed());
    }
}

async fn follow_primary_file(db: Arc<Db>, path: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match tokio::fs::read_to_string(&path).await {
            Ok(address) => {
                let address = address.trim();
                if !address.is_empty()
                    && let Err(e) = db.set_primary(address).await
                {
                    warn!(error = %e, "cannot use the new primary address");
                }
            }
            Err(e) => warn!(error = %e, path = %path.display(), "cannot read the primary address"),
        }
    }
}
