//! chat-operator: runs the ChatCluster controller in a Kubernetes cluster.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use chat_operator::{
    api::ChatCluster,
    http,
    leader::{LeaderElector, Timing},
    local,
    metrics::Metrics,
    reconcile::{self, Context},
};
use chatcluster_common::Shutdown;
use clap::{Parser, Subcommand};
use kube::{Api, Client, api::ListParams};
use tracing::warn;

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for ChatCluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster in the kubeconfig or the pod's service account.
    Run(RunArgs),
    /// Run the cluster a ChatCluster file describes as processes on this machine.
    Local(LocalArgs),
    /// Print every object the operator would create for a ChatCluster file (no cluster needed).
    Render(RenderArgs),
    /// Physical re-seeding in Kubernetes: what runs beside a MariaDB server (not for people).
    #[command(subcommand)]
    Seed(SeedCommand),
    /// Beside a database server in Kubernetes: have it reload its certificate whenever the
    /// files change (not for people). The password comes from the environment only.
    ReloadTls(ReloadTlsArgs),
}

#[derive(clap::Args)]
struct ReloadTlsArgs {
    /// Directory holding the server's `tls.crt`, `tls.key` and `ca.crt`.
    #[arg(long, default_value = chat_operator::build::database::TLS_DIR)]
    dir: PathBuf,
    /// The server's port on the pod's loopback.
    #[arg(long, default_value_t = 3306)]
    port: u16,
    /// The server's engine (its reload statement differs).
    #[arg(long, value_enum)]
    engine: chat_operator::api::DatabaseEngine,
    /// An administrative user (its password is `CHATCLUSTER_SEED_KEY`).
    #[arg(long, env = "CHATCLUSTER_SEED_USER")]
    user: String,
}

/// The programs of a physical re-seed (see `chat_operator::seed`). The key (the database's
/// administrative password) comes from the environment only: an argument would show in every
/// process listing.
#[derive(Subcommand)]
enum SeedCommand {
    /// Copy this binary to a path (the init container that brings it into the database image).
    Install {
        /// Where to.
        dest: PathBuf,
    },
    /// The donor agent: stream hot backups of the server to clients that hold the key.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:3307")]
        listen: String,
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/mysql")]
        data_dir: PathBuf,
        /// The server's Unix socket.
        #[arg(long, default_value = "/var/run/mysqld/mysqld.sock")]
        socket: PathBuf,
        /// The server's whole configuration (default: its usual option files).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Scratch space for each backup.
        #[arg(long, default_value = "/tmp")]
        work_dir: PathBuf,
        /// mariadb-backup's user.
        #[arg(long, env = "CHATCLUSTER_SEED_USER")]
        user: String,
    },
    /// Fetch a copy from a donor into the staging directory of a data directory, prepare it
    /// and mark it ready; prints its GTID position (also to the termination log, if given).
    Fetch {
        /// The donor agent (`host:port`).
        #[arg(long)]
        from: String,
        /// The replica's data directory.
        #[arg(long, default_value = "/var/lib/mysql")]
        data_dir: PathBuf,
        /// This attempt's id (the operator names each).
        #[arg(long)]
        copy_id: String,
        /// Where Kubernetes reads a container's termination message.
        #[arg(long)]
        termination_log: Option<PathBuf>,
    },
    /// Put a ready copy in place (or finish doing so) before the server starts, if the
    /// operator approved it; throw it away if not.
    Swap {
        /// The data directory.
        #[arg(long, default_value = "/var/lib/mysql")]
        data_dir: PathBuf,
        /// The directory of approvals: a file per pod, holding the copy id it may take and
        /// until when (`<id> <Unix seconds>`).
        #[arg(long)]
        approvals: PathBuf,
        /// This pod's name.
        #[arg(long, env = "POD_NAME")]
        pod: String,
        /// Where Kubernetes reads a container's termination message.
        #[arg(long)]
        termination_log: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RenderArgs {
    /// The ChatCluster file.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Namespace of the objects (default: the file's, else `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Print a Markdown table of the objects by kind instead of YAML.
    #[arg(long)]
    summary: bool,
    /// The namespace the operator runs in, which the NetworkPolicies admit to the database
    /// and chat-xds (default: the objects' namespace).
    #[arg(long)]
    operator_namespace: Option<String>,
}

#[derive(clap::Args)]
struct LocalArgs {
    /// The ChatCluster file (the same one `kubectl apply` takes).
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Where the servers keep their data (default `.chatcluster/<name>`); a second run on the
    /// same directory resumes the cluster.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Envoy's plain-text port: gRPC, gRPC-Web and the web page.
    #[arg(long, env = "CHATCLUSTER_PLAINTEXT_PORT", default_value_t = 8080)]
    plaintext_port: u16,
    /// Envoy's TLS port (self-signed certificate in the data directory).
    #[arg(long, env = "CHATCLUSTER_PORT", default_value_t = 8443)]
    port: u16,
    /// The address Envoy's two client ports bind: loopback, so only this machine reaches the
    /// cluster; `0.0.0.0` (or one interface's address) serves the network. Every other
    /// process listens on loopback whatever this says.
    #[arg(long, env = "CHATCLUSTER_LISTEN_ADDRESS", default_value_t = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))]
    listen_address: std::net::IpAddr,
    /// First of the internal ports (databases, chatd, chat-xds, Envoy admin: ~500 from here).
    #[arg(long, env = "CHATCLUSTER_BASE_PORT", default_value_t = 17000)]
    base_port: u16,
    /// Where chatd and chat-xds are (default: beside this program, then the PATH).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the metrics and health endpoint.
    #[arg(
        long,
        env = "CHAT_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// The operator's own namespace: its leader-election Lease's, and the one the
    /// NetworkPolicies admit to the database and chat-xds.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Let ChatClusters set their components' images. Each image runs with what its component
    /// is given (chatd: the database password; auth: the token signing key), so whoever may
    /// create a ChatCluster could otherwise hand those to an image of their choosing.
    #[arg(long, env = "CHAT_OPERATOR_ALLOW_IMAGE_OVERRIDES")]
    allow_image_overrides: bool,
    /// Watch only these namespaces (comma-separated; default: all), as a namespaced install
    /// whose Roles grant nothing elsewhere.
    #[arg(long, env = "CHAT_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "CHAT_OPERATOR_LEASE", default_value = "chat-operator")]
    lease_name: String,
    /// This replica's identity in the election (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "CHAT_OPERATOR_LOG_JSON")]
    log_json: bool,
    /// The image this operator runs (MariaDB pods and re-seed Jobs copy the binary from it).
    #[arg(long, env = "CHAT_OPERATOR_IMAGE", default_value_t = chat_operator::api::defaults::operator_image())]
    image: String,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Logs on stderr, for the programs whose stdout is their answer (`seed fetch` prints the
/// copy's position).
fn init_tracing_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (kubeconfig or in-cluster service account)")?;
    // Fail fast with a clear message when the CRD is missing; an API server that does not
    // answer must not keep a stop request waiting.
    let scope = reconcile::Scope::of(args.watch_namespaces.clone());
    let clusters = match &scope {
        reconcile::Scope::Cluster => Api::<ChatCluster>::all(client.clone()),
        reconcile::Scope::Namespaces(list) => match list.first() {
            Some(ns) => Api::<ChatCluster>::namespaced(client.clone(), ns),
            None => Api::<ChatCluster>::all(client.clone()),
        },
    };
    let first = ListParams::default().limit(1);
    tokio::select! {
        listed = clusters.list_metadata(&first) => {
            listed.context("cannot list ChatClusters: is the CRD installed (kubectl apply -f crds/)?")?;
        }
        () = shutdown.wait() => return Ok(()),
    }

    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(http::serve(
        args.metrics_addr,
        metrics.clone(),
        shutdown.wait(),
    ));

    let identity = args
        .identity
        .unwrap_or_else(|| format!("chat-operator-{}", std::process::id()));
    let elector = LeaderElector::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        Timing::default(),
    );
    tokio::select! {
        _ = elector.acquire() => {}
        () = shutdown.wait() => return Ok(()),
    }
    metrics.set_leader(true);
    let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some(identity))
            .with_operator_image(args.image)
            .with_operator_namespace(args.lease_namespace.clone())
            .with_image_overrides(args.allow_image_overrides)
            .with_topologies(Arc::new(reconcile::topology::Topologies::new(
                wake_tx.clone(),
            )))
            .with_autoscalers(Arc::new(reconcile::autoscaling::Autoscalers::new(
                wake_tx,
                Arc::new(reconcile::autoscaling::XdsPods),
                reconcile::autoscaling::PERIOD,
            ))),
    );
    let controller = reconcile::run(client, ctx, scope, wake_rx, shutdown.wait());
    let outcome = elector.lead(controller).await;
    metrics.set_leader(false);
    if let Err(e) = server.await.context("metrics server task")? {
        warn!(error = %e, "metrics server failed");
    }
    // Losing the lease ends the process: a replica that might act beside the new leader must not.
    outcome.context("leader election")?;
    Ok(())
}

/// Read a ChatCluster file, held to what the API server would hold it to.
fn read_cluster(file: &std::path::Path) -> anyhow::Result<ChatCluster> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    chat_operator::api::file::from_yaml(&text).with_context(|| format!("{}", file.display()))
}

fn render(args: RenderArgs) -> anyhow::Result<()> {
    let resource = read_cluster(&args.file)?;
    let objects = chat_operator::render::render(
        &resource,
        args.namespace.as_deref(),
        args.operator_namespace.as_deref(),
    )
    .with_context(|| format!("cannot render {}", args.file.display()))?;
    if args.summary {
        print!("{}", chat_operator::render::summary(&objects));
    } else {
        print!("{}", chat_operator::render::to_yaml(&objects)?);
    }
    Ok(())
}

async fn local(args: LocalArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let resource = read_cluster(&args.file)?;
    if resource.spec.database.engine != chat_operator::api::DatabaseEngine::Mariadb {
        warn!(
            "spec.database.engine is mysql: local mode runs MariaDB, the server this machine has (same replication and failover, MariaDB dialect)"
        );
    }
    let name = resource.metadata.name.clone().unwrap_or_default();
    // Children resolve relative paths against their own working or base directory (mariadbd
    // against its basedir, /usr): hand them absolute ones, whatever form the user gave.
    let absolute = |path: PathBuf| {
        std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))
    };
    let data_dir = absolute(
        args.data_dir
            .unwrap_or_else(|| PathBuf::from(".chatcluster").join(&name)),
    )?;
    let bin_dir = args.bin_dir.map(absolute).transpose()?;
    let options = local::Options {
        data_dir,
        base_port: args.base_port,
        port: args.port,
        plaintext_port: args.plaintext_port,
        listen_address: args.listen_address,
        binaries: local::Binaries::find(bin_dir.as_deref())?,
    };
    let plan = local::plan(&resource, &options)?;
    println!(
        "starting {name} from {} (data in {})",
        args.file.display(),
        options.data_dir.display()
    );
    let run = local::run(
        plan,
        (args.plaintext_port, args.port),
        shutdown.wait(),
        |status| println!("{}", status.table()),
    );
    tokio::select! {
        ran = run => ran?,
        // A second Ctrl-C: leaving drops every supervised child, and each is killed on drop.
        () = shutdown.forced() => {
            println!("stopped at once: every process killed");
            return Ok(());
        }
    }
    println!("stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // First thing: as PID 1 in its image, the operator would otherwise ignore SIGTERM.
    let shutdown = Shutdown::install().context("cannot handle signals")?;
    match cli.command {
        Command::Run(args) => {
            init_tracing(args.log_json);
            run(args, shutdown).await
        }
        Command::Local(args) => {
            init_tracing(false);
            local(args, shutdown).await
        }
        Command::Render(args) => render(args),
        Command::Seed(command) => {
            init_tracing_stderr();
            seed(command, shutdown).await
        }
        Command::ReloadTls(args) => {
            init_tracing_stderr();
            let dialect = chat_operator::build::database::engine_dialect(args.engine);
            let reloader = chat_operator::tls_reload::Reloader::new(
                args.dir,
                args.port,
                args.user,
                seed_key()?,
                dialect,
            );
            chat_operator::tls_reload::run(reloader, shutdown.wait()).await;
            Ok(())
        }
    }
}

/// Leave `message` where Kubernetes reads a container's termination message.
fn write_termination_log(path: Option<&std::path::Path>, message: &str) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, message)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The re-seed key, from `CHATCLUSTER_SEED_KEY`.
fn seed_key() -> anyhow::Result<String> {
    std::env::var("CHATCLUSTER_SEED_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .context("CHATCLUSTER_SEED_KEY (the database's administrative password) is not set")
}

async fn seed(command: SeedCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    use chat_operator::seed;
    match command {
        SeedCommand::Install { dest } => seed::install::install(&dest)?,
        SeedCommand::Serve {
            listen,
            data_dir,
            socket,
            config,
            work_dir,
            user,
        } => {
            let key = seed_key()?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("re-seed donor listening on {}", listener.local_addr()?);
            let donor = seed::donor::Donor {
                key: key.into_bytes(),
                user,
                data_dir,
                socket,
                config,
                work_dir,
            };
            seed::donor::serve(listener, donor, shutdown.wait()).await?;
        }
        SeedCommand::Fetch {
            from,
            data_dir,
            copy_id,
            termination_log,
        } => {
            let key = seed_key()?;
            let fetch = seed::fetch::Fetch {
                from,
                key: key.into_bytes(),
                data_dir,
                copy_id,
            };
            let outcome = tokio::select! {
                fetched = seed::fetch::fetch(&fetch) => fetched.map_err(anyhow::Error::from),
                () = shutdown.wait() => {
                    seed::fetch::discard(&fetch.data_dir).await;
                    Err(anyhow::anyhow!("stopped before the copy was complete"))
                }
            };
            let message = match &outcome {
                Ok(ready) => ready.message(),
                Err(e) => format!("re-seed copy failed: {e:#}"),
            };
            write_termination_log(termination_log.as_deref(), &message)?;
            outcome?;
            println!("{message}");
        }
        SeedCommand::Swap {
            data_dir,
            approvals,
            pod,
            termination_log,
        } => {
            // The ConfigMap is optional: no file, no approval; an expired one, none either.
            let approved = std::fs::read_to_string(approvals.join(&pod))
                .ok()
                .and_then(|a| seed::swap::approved_id(&a, seed::swap::unix_now()));
            let outcome = tokio::task::spawn_blocking(move || {
                seed::swap::swap(&data_dir, approved.as_deref())
            })
            .await??;
            write_termination_log(termination_log.as_deref(), &outcome.message())?;
            println!("{}", outcome.message());
        }
    }
    Ok(())
}
