//! What the local runner runs, as a pure function of the `ChatCluster` file and the runner's
//! options: every process with its program, arguments, environment and port, and every file it
//! reads. Nothing here starts anything, so it is unit-tested as plain data.
//!
//! Ports are fixed by position from `--base-port`, so a restarted runner finds its servers
//! where replication expects them (and users find them where the status table said):
//!
//! | offset | what |
//! |---|---|
//! | 0 + i | database server i (0 = the first primary) |
//! | 20 + i | chat-xds i, ADS |
//! | 30 + i | chat-xds i, HTTP (metrics, `/load`) |
//! | 40 + i | Envoy i, admin API (loopback) |
//! | 50 | the runner's metrics (`/metrics`) |
//! | 51 | Prometheus (UI and API), with `spec.monitoring` on and `prometheus` installed |
//! | 52 | the broker (NATS), which the chatd replicas exchange delivery hints through |
//! | 100 × (s + 1) + 2i | chatd replica i of service s, gRPC (+1: metrics) |
//!
//! Envoy replicas share the ingress ports (`SO_REUSEPORT`): the kernel spreads connections over
//! whichever are running, as a Service spreads them over pods.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use chatcluster_types::{
    identity::{Identity, component},
    xds::UpstreamTls,
};

use crate::{
    api::{AutoscalingSpec, ChatCluster, ChatClusterSpec, Refused, ServiceKind, ValidatedCluster},
    build::{self, EnvoyInternalTls, EnvoyPlace, XdsConfig, database, secrets},
    pki,
    topology::{
        plan::Policy,
        server::{Credentials, Member},
    },
};

/// The namespace a local cluster's identities name (there is no Kubernetes namespace).
pub const LOCAL_NAMESPACE: &str = "local";
/// Most database servers (primary + replicas) a local cluster may have.
const MAX_DATABASES: usize = 16;
/// Most chat-xds and Envoy replicas each.
const MAX_CONTROL: usize = 10;
/// Most replicas of one chat service.
const MAX_SERVICE_REPLICAS: usize = 50;
/// Ports from the base port to the last one a plan may use.
const PORT_SPAN: u32 = 100 * 5 + 2 * MAX_SERVICE_REPLICAS as u32;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL); mariadbd
/// refuses a longer one and exits, so a deep data directory would crash-loop every server.
const MAX_SOCKET_PATH: usize = 107;
/// server_id of database server 0; server i gets base + i.
const SERVER_ID_BASE: u32 = 1;

/// The runner's own settings (the cluster's come from the file).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where every server keeps its state; a second run on the same directory resumes it.
    pub data_dir: PathBuf,
    /// First of the internal ports (see the module docs).
    pub base_port: u16,
    /// Envoy's TLS port (gRPC and gRPC-Web).
    pub port: u16,
    /// Envoy's plain-text port (gRPC, gRPC-Web and the web page).
    pub plaintext_port: u16,
    /// The address Envoy's two client ports bind; every other process listens on loopback
    /// whatever this says, since only Envoy faces clients.
    pub listen_address: IpAddr,
    /// The programs to run.
    pub binaries: Binaries,
}

/// Paths of the programs the runner starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Binaries {
    /// `chatd`.
    pub chatd: PathBuf,
    /// `chat-xds`.
    pub xds: PathBuf,
    /// `envoy`.
    pub envoy: PathBuf,
    /// `mariadbd`.
    pub mariadbd: PathBuf,
    /// `mariadb-install-db`, which initialises an empty data directory.
    pub install_db: PathBuf,
    /// `prometheus`, when installed: without it the cluster runs unmonitored.
    pub prometheus: Option<PathBuf>,
    /// `nats-server`, the broker.
    pub nats_server: PathBuf,
}

/// How to start one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Its name in logs and the status table (`groups-1`, `db-0`, …).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, beside the runner's own.
    pub env: BTreeMap<String, String>,
    /// The port that answers once it is up.
    pub port: u16,
}

/// One database server.
#[derive(Debug, Clone, PartialEq)]
pub struct DbProcess {
    /// Member name (`db-0`, …).
    pub name: String,
    /// Its port on loopback.
    pub port: u16,
    /// Its `server_id`.
    pub server_id: u32,
    /// Its directory: `data/`, `tmp/`, `my.cnf`, `init.sql`, the socket and the error log.
    pub dir: PathBuf,
}

impl DbProcess {
    /// The server's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its temporary directory.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Its Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Its configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }

    /// The SQL it runs at every start (users and schema; idempotent, outside the binary log).
    pub fn init_file(&self) -> PathBuf {
        self.dir.join("init.sql")
    }

    /// Its error log.
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// The topology loop's view of it.
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// One chat service: its bounds and where its replicas listen.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Which service.
    pub kind: ServiceKind,
    /// Replicas to start with.
    pub initial: usize,
    /// Fewest and most replicas (both `initial` without autoscaling).
    pub bounds: (usize, usize),
    /// Autoscaling targets, when the service scales with load.
    pub autoscaling: Option<AutoscalingSpec>,
    first_port: u16,
}

impl ServicePlan {
    /// gRPC port of replica `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.first_port + 2 * i as u16
    }

    /// `host:port` of replica `i`.
    pub fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.port(i))
    }

    /// Name of replica `i`.
    pub fn replica_name(&self, i: usize) -> String {
        format!("{}-{i}", self.kind)
    }
}

/// Files the runner writes and the processes read, all under the data directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    /// The data directory.
    pub root: PathBuf,
    /// Generated passwords.
    pub credentials: PathBuf,
    /// Token signing key (auth).
    pub token_private: PathBuf,
    /// Token verifying key (every service).
    pub token_public: PathBuf,
    /// Envoy's self-signed certificate.
    pub tls_cert: PathBuf,
    /// Its key.
    pub tls_key: PathBuf,
    /// The primary's address, followed by chatd.
    pub primary: PathBuf,
    /// chat-xds's configuration.
    pub xds_config: PathBuf,
    /// chat-xds's static discovery file: the chatd replicas serving, and the certificate.
    pub endpoints: PathBuf,
    /// What the runner remembers across restarts (the current primary).
    pub state: PathBuf,
    /// The runner's status, rewritten as it changes (for scripts and tests).
    pub status: PathBuf,
    /// One log per process.
    pub logs: PathBuf,
    /// The internal CA and each component's certificate directory.
    pub pki: PathBuf,
    /// The broker's configuration.
    pub broker_config: PathBuf,
}

impl Files {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            credentials: root.join("secrets/credentials.json"),
            token_private: root.join("secrets/token-private.pem"),
            token_public: root.join("secrets/token-public.pem"),
            tls_cert: root.join("secrets/tls.crt"),
            tls_key: root.join("secrets/tls.key"),
            primary: root.join("run/primary"),
            xds_config: root.join("run/xds.yaml"),
            endpoints: root.join("run/endpoints.yaml"),
            state: root.join("state.json"),
            status: root.join("status.json"),
            logs: root.join("logs"),
            pki: root.join("pki"),
            broker_config: root.join("run/nats.conf"),
        }
    }

    /// The internal CA's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki.join("ca.crt")
    }

    /// Its private key.
    pub fn ca_key(&self) -> PathBuf {
        self.pki.join("ca.key")
    }

    /// `component`'s certificate directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn tls_dir(&self, component: &str) -> PathBuf {
        self.pki.join(component)
    }

    /// Envoy's file-based SDS resource naming its internal certificate.
    pub fn envoy_internal_sds(&self) -> PathBuf {
        self.root.join("run/envoy-internal-tls-sds.yaml")
    }

    /// Envoy replica `i`'s bootstrap.
    pub fn envoy_bootstrap(&self, i: usize) -> PathBuf {
        self.root.join(format!("run/envoy-{i}.yaml"))
    }
}

/// Everything the runner will run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The cluster's name.
    pub name: String,
    /// The file's spec.
    pub spec: ChatClusterSpec,
    /// Database servers, the first one the initial primary.
    pub databases: Vec<DbProcess>,
    /// The chat services.
    pub services: Vec<ServicePlan>,
    /// chat-xds replicas.
    pub xds: Vec<Launch>,
    /// Their HTTP ports (metrics, `/load`).
    pub xds_http: Vec<u16>,
    /// Envoy replicas (each one's port is its admin API).
    pub envoys: Vec<Launch>,
    /// The broker.
    pub broker: Launch,
    /// Their bootstraps, in the same order.
    pub envoy_bootstraps: Vec<serde_json::Value>,
    /// The runner's own metrics and health endpoint.
    pub metrics_port: u16,
    /// Prometheus, scraping every process with the cluster's alert rules.
    pub monitor: Option<super::monitor::Monitor>,
    /// chat-xds's configuration.
    pub xds_config: XdsConfig,
    /// The internal certificates to keep issued; empty when internal TLS is off.
    pub certificates: Vec<pki::Leaf>,
    /// The topology loop's policy.
    pub policy: Policy,
    /// Files under the data directory.
    pub files: Files,
    /// The programs it runs.
    pub(super) binaries: Binaries,
}

/// Why a file cannot be run locally.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec is invalid (the same check the operator makes).
    #[error(transparent)]
    Invalid(#[from] Refused),
    /// More processes than a local cluster supports.
    #[error("{field}: at most {max} in local mode, got {got}")]
    TooMany {
        /// The field.
        field: String,
        /// The local limit.
        max: usize,
        /// What the file asks for.
        got: usize,
    },
    /// A path handed to the children is relative (they resolve it elsewhere).
    #[error("{what} must be an absolute path, got {path}")]
    RelativePath {
        /// Which path.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The data directory is too deep for the servers' Unix sockets.
    #[error("--data-dir {path} is too long: the database socket {socket} would be {len} bytes, and Unix sockets take at most {max}; use a shorter data directory", max = MAX_SOCKET_PATH)]
    DataDirTooLong {
        /// The data directory.
        path: PathBuf,
        /// The longest socket path.
        socket: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The ports would run past 65535.
    #[error("--base-port {0} leaves no room for the cluster's ports (use at most {max})", max = u32::from(u16::MAX) - PORT_SPAN)]
    Ports(u16),
}

fn count(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn at_most(field: &str, got: usize, max: usize) -> Result<(), PlanError> {
    if got > max {
        return Err(PlanError::TooMany {
            field: field.into(),
            max,
            got,
        });
    }
    Ok(())
}

/// The plan for `resource` with `options`.
pub fn plan(resource: &ChatCluster, options: &Options) -> Result<Plan, PlanError> {
    let validated = ValidatedCluster::of(resource)?;
    let name = validated.name().to_string();
    let spec = validated.spec();
    let base = options.base_port;
    // The fourth service's last possible replica's metrics port is the highest one.
    if u32::from(base) + PORT_SPAN > u32::from(u16::MAX) {
        return Err(PlanError::Ports(base));
    }
    let b = &options.binaries;
    for (what, path) in [
        ("the data directory", &options.data_dir),
        ("chatd", &b.chatd),
        ("chat-xds", &b.xds),
        ("envoy", &b.envoy),
        ("mariadbd", &b.mariadbd),
        ("mariadb-install-db", &b.install_db),
        ("nats-server", &b.nats_server),
    ]
    .into_iter()
    .chain(b.prometheus.iter().map(|p| ("prometheus", p)))
    {
        if !path.is_absolute() {
            return Err(PlanError::RelativePath {
                what,
                path: path.clone(),
            });
        }
    }
    let files = Files::new(&options.data_dir);

    let servers = 1 + count(spec.database.replicas);
    at_most("spec.database.replicas", servers - 1, MAX_DATABASES - 1)?;
    let databases: Vec<DbProcess> = (0..servers)
        .map(|i| DbProcess {
            name: format!("db-{i}"),
            port: base + i as u16,
            server_id: SERVER_ID_BASE + i as u32,
            dir: files.root.join(format!("db/db-{i}")),
        })
        .collect();
    if let Some(socket) = databases
        .iter()
        .map(DbProcess::socket)
        .max_by_key(|s| s.as_os_str().len())
        && socket.as_os_str().len() > MAX_SOCKET_PATH
    {
        return Err(PlanError::DataDirTooLong {
            path: options.data_dir.clone(),
            len: socket.as_os_str().len(),
            socket,
        });
    }

    let mut services = Vec::new();
    for (s, (kind, svc)) in spec.services.iter().enumerate() {
        let bounds = match &svc.autoscaling {
            Some(a) => (count(a.min_replicas), count(a.max_replicas)),
            None => {
                let n = count(build::replicas(svc, None));
                (n, n)
            }
        };
        let field = match svc.autoscaling {
            Some(_) => format!("spec.services.{kind}.autoscaling.maxReplicas"),
            None => format!("spec.services.{kind}.replicas"),
        };
        at_most(&field, bounds.1, MAX_SERVICE_REPLICAS)?;
        services.push(ServicePlan {
            kind,
            initial: count(build::replicas(svc, None)),
            bounds,
            autoscaling: svc.autoscaling.clone(),
            first_port: base + 100 * (s as u16 + 1),
        });
    }

    let xds_count = count(spec.xds.replicas).max(1);
    let envoy_count = count(spec.ingress.replicas).max(1);
    at_most("spec.xds.replicas", xds_count, MAX_CONTROL)?;
    at_most("spec.ingress.replicas", envoy_count, MAX_CONTROL)?;
    let xds_ports: Vec<u16> = (0..xds_count).map(|i| base + 20 + i as u16).collect();
    let xds_http: Vec<u16> = (0..xds_count).map(|i| base + 30 + i as u16).collect();
    let envoy_admin: Vec<u16> = (0..envoy_count).map(|i| base + 40 + i as u16).collect();

    let mut xds_config = build::xds_config(&validated);
    xds_config.listener_port = i32::from(options.port);
    xds_config.plaintext_port = Some(i32::from(options.plaintext_port));
    xds_config.listen_address = Some(options.listen_address);
    // Locally the web page and chatctl use the plain-text port: gRPC-Web is always on.
    xds_config.grpc_web = true;

    // Every process is on this machine: chat-xds serves under the loopback names.
    let identity = |component: &str| Identity::new(LOCAL_NAMESPACE, &name, component);
    let certificates: Vec<pki::Leaf> = match spec.internal_tls.lifetime() {
        Some(lifetime) => vec![
            pki::Leaf {
                identity: identity(component::XDS),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime,
            },
            pki::Leaf {
                identity: identity(component::INGRESS),
                dns_names: Vec::new(),
                lifetime,
            },
            // The servers, which chatd, the loop and the replicas reach at 127.0.0.1.
            pki::Leaf {
                identity: identity(component::DATABASE),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime,
            },
            // The broker, which chatd reaches at 127.0.0.1.
            pki::Leaf {
                identity: identity(component::BROKER),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime,
            },
        ]
        .into_iter()
        // Each chat service's replicas, which Envoy verifies by identity.
        .chain(services.iter().map(|s| pki::Leaf {
            identity: identity(s.kind.as_str()),
            dns_names: Vec::new(),
            lifetime,
        }))
        .collect(),
        None => Vec::new(),
    };
    let internal_tls = !certificates.is_empty();
    let dir_of = |component: &str| files.tls_dir(component).display().to_string();
    xds_config.upstream_tls = internal_tls.then(|| UpstreamTls {
        namespace: LOCAL_NAMESPACE.into(),
        sds_file: files.envoy_internal_sds().display().to_string(),
        ca_file: files
            .tls_dir(component::INGRESS)
            .join(chatcluster_common::tls::CA_FILE)
            .display()
            .to_string(),
    });

    let bin = &options.binaries;
    let xds = xds_ports
        .iter()
        .zip(&xds_http)
        .enumerate()
        .map(|(i, (&ads, &http))| Launch {
            name: format!("xds-{i}"),
            program: bin.xds.clone(),
            args: Vec::new(),
            env: env([
                ("CHAT_XDS_CONFIG", files.xds_config.display().to_string()),
                (
                    "CHAT_XDS_ENDPOINTS_FILE",
                    files.endpoints.display().to_string(),
                ),
                ("CHAT_XDS_LISTEN", format!("127.0.0.1:{ads}")),
                ("CHAT_XDS_METRICS_LISTEN", format!("127.0.0.1:{http}")),
                ("CHAT_XDS_POLL_MS", "500".into()),
            ])
            .into_iter()
            .chain(internal_tls.then(|| ("CHAT_XDS_TLS_DIR".into(), dir_of(component::XDS))))
            .collect(),
            port: ads,
        })
        .collect();

    let envoy_bootstraps = envoy_admin
        .iter()
        .map(|&admin| {
            build::envoy_bootstrap(&EnvoyPlace {
                node_cluster: format!("{name}-envoy"),
                xds: xds_ports
                    .iter()
                    .map(|&p| ("127.0.0.1".to_string(), i32::from(p)))
                    .collect(),
                admin_port: i32::from(admin),
                ready_port: None,
                internal_tls: internal_tls.then(|| EnvoyInternalTls {
                    dir: dir_of(component::INGRESS),
                    sds_file: files.envoy_internal_sds().display().to_string(),
                    xds_identity: identity(component::XDS).uri(),
                }),
            })
        })
        .collect();
    let envoys = envoy_admin
        .iter()
        .enumerate()
        .map(|(i, &admin)| Launch {
            name: format!("envoy-{i}"),
            program: bin.envoy.clone(),
            args: [
                "--config-path".to_string(),
                files.envoy_bootstrap(i).display().to_string(),
                "--service-node".into(),
                format!("{name}-envoy-{i}"),
                // Several Envoys on one machine: each picks an unused shared-memory id.
                "--base-id-path".into(),
                files
                    .root
                    .join(format!("run/envoy-{i}.base-id"))
                    .display()
                    .to_string(),
                "--use-dynamic-base-id".into(),
                "--drain-time-s".into(),
                "5".into(),
                "--log-level".into(),
                "warn".into(),
            ]
            .into(),
            env: BTreeMap::new(),
            port: admin,
        })
        .collect();

    let broker = Launch {
        name: "broker".into(),
        program: bin.nats_server.clone(),
        args: vec!["-c".into(), files.broker_config.display().to_string()],
        env: BTreeMap::new(),
        port: base + 52,
    };

    let policy = build::database::topology_policy(&spec.database);

    let mut plan = Plan {
        name,
        spec: spec.clone(),
        databases,
        services,
        xds,
        xds_http,
        envoys,
        broker,
        envoy_bootstraps,
        metrics_port: base + 50,
        monitor: super::monitor::monitor(
            spec.monitoring.enabled,
            bin.prometheus.as_ref(),
            &options.data_dir,
            base + 51,
        ),
        xds_config,
        certificates,
        policy,
        files,
        binaries: bin.clone(),
    };
    // Replication verifies its source with the CA beside the servers' certificate.
    plan.policy.tls_ca = plan.database_tls().map(|files| files.ca());
    Ok(plan)
}

/// An environment from name–value pairs.
pub(super) fn env<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Plan {
    /// The plan of service `kind`.
    pub fn service(&self, kind: ServiceKind) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.kind == kind)
    }

    /// The primary's initial member name.
    pub fn first_primary(&self) -> &str {
        &self.databases[0].name
    }

    /// The topology loop's users, with `credentials`' passwords, verifying the servers
    /// with `ca_pem` (the internal CA, when there is one).
    pub fn topology_credentials(
        &self,
        credentials: &secrets::DbCredentials,
        ca_pem: Option<String>,
    ) -> Credentials {
        Credentials {
            admin_user: database::ADMIN_USER.into(),
            admin_password: credentials.admin().into(),
            repl_user: database::REPL_USER.into(),
            repl_password: credentials.replication().into(),
            ca_pem,
        }
    }

    /// The database servers' certificate files, when internal TLS is on.
    pub fn database_tls(&self) -> Option<database::ServerTlsFiles> {
        (!self.certificates.is_empty()).then(|| database::ServerTlsFiles {
            dir: self
                .files
                .tls_dir(component::DATABASE)
                .display()
                .to_string(),
        })
    }

    /// Every fixed port the plan uses (chatd: every replica up to the maximum), to check
    /// before starting that nothing else holds one.
    pub fn ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self.databases.iter().map(|d| d.port).collect();
        out.extend(self.xds.iter().map(|l| l.port));
        out.extend(&self.xds_http);
        out.extend(self.envoys.iter().map(|l| l.port));
        out.push(self.metrics_port);
        out.push(self.broker.port);
        out.extend(self.monitor.iter().map(|m| m.launch.port));
        for s in &self.services {
            for i in 0..s.bounds.1 {
                out.extend([s.port(i), s.port(i) + 1]);
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
