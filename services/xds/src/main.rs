//! chat-xds: serves Envoy its configuration over ADS (State-of-the-World and Delta).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use chat_xds::csds::Csds;
use chat_xds::{
    ads::{Ads, Clients},
    discovery::{self, Discovered, FileSource, Source, kubernetes::KubernetesSource},
    http::{self, Observed},
    load::{Load, LoadReporting},
    pipeline,
};
use chatcluster_common::{
    admit::Admit,
    tls::{self, TlsDir},
};
use chatcluster_types::identity::component;
use chatcluster_types::xds::XdsConfig;
use clap::Parser;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::{
    load_stats::v3::load_reporting_service_server::LoadReportingServiceServer,
    status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer,
};
use tokio::sync::watch;
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tracing::info;

#[derive(Parser, Debug)]
#[command(version, about = "ChatCluster xDS control plane for Envoy")]
struct Args {
    /// The configuration file written by the operator (or by the local runner).
    #[arg(long, env = "CHAT_XDS_CONFIG")]
    config: PathBuf,
    /// Static endpoints file (laptop modes), watched for changes.
    #[arg(long, env = "CHAT_XDS_ENDPOINTS_FILE")]
    endpoints_file: Option<PathBuf>,
    /// ADS address.
    #[arg(long, env = "CHAT_XDS_LISTEN", default_value = "0.0.0.0:18000")]
    listen: SocketAddr,
    /// Metrics, load signal and client status over HTTP.
    #[arg(long, env = "CHAT_XDS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Internal TLS: a directory with this replica's certificate (`tls.crt`, `tls.key`) and
    /// the cluster's CA (`ca.crt`). Every caller must then present a certificate of that CA,
    /// and only the cluster's Envoys get configuration or may report load.
    #[arg(long, env = "CHAT_XDS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// How often watched files are re-read even without a change notification, in ms.
    #[arg(long, env = "CHAT_XDS_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
}

/// How long a stop waits for calls in flight before ending the streams that never finish.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Envoy's own limit is far above tonic's 4 MiB default; thousands of endpoints need it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // First thing: as PID 1 in its image, chat-xds would otherwise ignore SIGTERM.
    let shutdown = chatcluster_common::Shutdown::install().context("cannot handle signals")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let config_text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let config: XdsConfig = serde_yaml::from_str(&config_text)
        .with_context(|| format!("{} is not a chat-xds configuration", args.config.display()))?;
    let poll = Duration::from_millis(args.poll_ms.max(10));
    // Laptop modes name a file; in Kubernetes the cluster is the source.
    let initial = match &args.endpoints_file {
        Some(file) => discovery::parse_file(file)?,
        None => Discovered::default(),
    };

    let snapshot = Arc::new(pipeline::first(&config, &initial));
    let (discovered_tx, discovered_rx) = watch::channel::<Discovered>(initial);
    match args.endpoints_file {
        Some(path) => {
            tokio::spawn(FileSource { path, every: poll }.run(discovered_tx));
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("no endpoints file and no Kubernetes configuration")?;
            let discovery = config
                .kubernetes
                .clone()
                .context("no endpoints file, and the configuration names no Kubernetes source")?;
            info!(namespace = %discovery.namespace, selector = %discovery.endpoint_selector, "watching EndpointSlices");
            let source = KubernetesSource {
                client,
                config: config.clone(),
                discovery,
            };
            tokio::spawn(source.run(discovered_tx));
        }
    }
    let (config_tx, config_rx) = watch::channel(config);
    let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
    tokio::spawn(discovery::watch_yaml(args.config.clone(), poll, config_tx));
    let discovered = discovered_rx.clone();
    tokio::spawn(pipeline::run(config_rx, discovered_rx, snapshot_tx));

    let clients = Arc::new(Clients::default());
    let load = Arc::new(Load::default());
    if let Some(addr) = args.metrics_listen {
        let observed = Observed {
            clients: clients.clone(),
            load: load.clone(),
            discovered,
        };
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, observed, std::future::pending()).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let tls = args.tls_dir.map(TlsDir);
    let own = match &tls {
        Some(dir) => Some(dir.identity()?),
        None => {
            tracing::warn!("internal TLS off: any client that reaches the port is served");
            None
        }
    };
    // Configuration carries the listener's private key, and load reports drive the
    // autoscaler: Envoy alone, for every service of this port. The same client status is
    // read in plain text on the HTTP port's `/clients`, which the firewall opens to the
    // operator and the scrapers only.
    let envoy = Admit::new(own, &[component::INGRESS]);
    let lrs = InterceptedService::new(
        LoadReportingServiceServer::new(LoadReporting::new(load)),
        envoy.clone(),
    );
    let csds = InterceptedService::new(
        ClientStatusDiscoveryServiceServer::new(Csds::new(clients.clone())),
        envoy.clone(),
    );
    let ads = InterceptedService::new(
        AggregatedDiscoveryServiceServer::new(Ads::new(snapshot_rx, clients))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        envoy.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    info!(listen = %args.listen, tls = tls.is_some(), "chat-xds serving");
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(InterceptedService::new(health_service, envoy))
        .add_service(ads)
        .add_service(lrs)
        .add_service(csds);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>>>> =
        match &tls {
            Some(dir) => Box::pin(router.serve_with_incoming_shutdown(
                tls::incoming(listener, dir.server_config()?),
                shutdown.wait(),
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.wait(),
            )),
        };
    // A graceful stop waits for every stream to end, and an Envoy's ADS and LRS streams never
    // do: after a short grace the process ends them by exiting. Envoy keeps serving its last
    // configuration and reconnects to another replica.
    let grace = async {
        shutdown.wait().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace => info!("streams still open after the grace period; stopping"),
    }
    Ok(())
}
