//! chatd: runs the chat services its configuration names. Configuration comes from flags or,
//! equally, `CHATD_*` environment variables (named in `chatcluster_types::chatd::var`, which
//! the operator and the local runner set).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use chatcluster_types::chatd::var;
use chatd::{
    db::DbConfig,
    server::{Config, ServiceName, serve},
    services::auth::AddressLimits,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "ChatCluster chat services")]
struct Args {
    /// Services to run, comma-separated: auth, groups, dms, servers.
    #[arg(long, env = var::SERVICES, value_delimiter = ',')]
    services: Vec<ServiceName>,
    /// gRPC address.
    #[arg(long, env = var::LISTEN, default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Prometheus metrics address (`/metrics`).
    #[arg(long, env = var::METRICS_LISTEN)]
    metrics_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, env = var::LOG_JSON)]
    log_json: bool,
    /// `host:port` of the database primary.
    #[arg(long, env = var::DB_PRIMARY, default_value = "127.0.0.1:3306")]
    db_primary: String,
    /// File holding the primary's `host:port`, followed as it changes (laptop failover).
    #[arg(long, env = var::DB_PRIMARY_FILE)]
    db_primary_file: Option<PathBuf>,
    /// `host:port` of the read replicas (default: read from the primary).
    #[arg(long, env = var::DB_REPLICAS)]
    db_replicas: Option<String>,
    /// Database schema.
    #[arg(long, env = var::DB_NAME, default_value = "chat")]
    db_name: String,
    /// Database user.
    #[arg(long, env = var::DB_USER, default_value = "chat")]
    db_user: String,
    /// Database password.
    #[arg(
        long,
        env = var::DB_PASSWORD,
        default_value = "",
        hide_env_values = true
    )]
    db_password: String,
    /// Connections per database pool.
    #[arg(long, env = var::DB_POOL, default_value_t = 32)]
    db_pool: u32,
    /// PEM public key verifying access tokens.
    #[arg(long, env = var::TOKEN_PUBLIC_KEY_FILE)]
    token_public_key_file: Option<PathBuf>,
    /// PEM private key signing access tokens (auth only).
    #[arg(long, env = var::TOKEN_PRIVATE_KEY_FILE)]
    token_private_key_file: Option<PathBuf>,
    /// `host:port` of the broker (NATS) the replicas exchange delivery hints through; none:
    /// a single replica.
    #[arg(long, env = var::BROKER)]
    broker: Option<String>,
    /// Replica name.
    #[arg(long, env = var::POD_NAME, default_value = "chatd")]
    instance: String,
    /// Writes per user per second.
    #[arg(long, env = var::RATE_PER_SECOND, default_value_t = 20.0)]
    rate_per_second: f64,
    /// Writes per user at once.
    #[arg(long, env = var::RATE_BURST, default_value_t = 40.0)]
    rate_burst: f64,
    /// Login attempts one client address may make per minute.
    #[arg(long, env = var::ADDRESS_LOGINS_PER_MINUTE, default_value_t = AddressLimits::default().logins_per_minute)]
    address_logins_per_minute: u32,
    /// Accounts one client address may register per hour.
    #[arg(long, env = var::ADDRESS_REGISTRATIONS_PER_HOUR, default_value_t = AddressLimits::default().registrations_per_hour)]
    address_registrations_per_hour: u32,
    /// Seconds of NOT_SERVING before stopping, on SIGTERM.
    #[arg(long, env = var::DRAIN_SECONDS, default_value_t = 5.0)]
    drain_seconds: f64,
    /// Internal TLS: a directory with this replica's certificate (`tls.crt`, `tls.key`) and
    /// the cluster's CA (`ca.crt`). Every caller must then present a certificate of that CA:
    /// Envoy for the chat APIs, the same service's replicas for fan-out. The database is
    /// then reached over TLS only, its certificate verified against the same CA.
    #[arg(long, env = var::TLS_DIR)]
    tls_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // First thing: as PID 1 in its image, chatd would otherwise ignore SIGTERM.
    let shutdown = match chatcluster_common::Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chatd: cannot handle signals: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    if args.services.is_empty() {
        eprintln!("chatd: {}", chatd::server::StartError::NoServices);
        return ExitCode::from(2);
    }
    let Some(token_public_key) = args.token_public_key_file else {
        eprintln!("chatd: set CHATD_TOKEN_PUBLIC_KEY_FILE (or --token-public-key-file)");
        return ExitCode::from(2);
    };
    let config = Config {
        services: args.services,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        db: DbConfig {
            primary: args.db_primary,
            replicas: args.db_replicas,
            database: args.db_name,
            user: args.db_user,
            password: args.db_password,
            max_connections: args.db_pool,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: chatd::db::STATEMENT_TIMEOUT,
            ca_file: args
                .tls_dir
                .as_ref()
                .map(|dir| chatcluster_common::tls::TlsDir(dir.clone()).ca_file()),
        },
        db_primary_file: args.db_primary_file,
        token_public_key,
        token_private_key: args.token_private_key_file,
        broker: args.broker,
        instance: args.instance,
        rate: (args.rate_per_second, args.rate_burst),
        address_limits: AddressLimits {
            logins_per_minute: args.address_logins_per_minute,
            registrations_per_hour: args.address_registrations_per_hour,
        },
        drain: Duration::from_secs_f64(args.drain_seconds.max(0.0)),
        tls: args.tls_dir.map(chatcluster_common::tls::TlsDir),
    };
    match serve(config, shutdown.wait()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::from(2)
        }
    }
}
