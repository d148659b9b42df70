//! The local runner: brings a [`Plan`] up as supervised processes, keeps the database topology
//! with the same loop as in Kubernetes, publishes the primary to chatd and the serving chatd
//! replicas to chat-xds, reports a status table (and `status.json`), and on shutdown stops
//! everything in order: Envoy, chatd, chat-xds, the topology loop, the databases.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tracing::{info, warn};

use super::error::RunError;
use super::{
    monitor::{Alerts, watch_alerts},
    plan::{LOCAL_NAMESPACE, Plan},
    prepare::{
        LOOPBACK, certificates, check_ports, ingress_address, install_db, io, port_open, secrets,
        write_atomically, write_private,
    },
    primary::{remember_primary, remembered_primary},
    scaler::Scaler,
    status::{LocalStatus, ProcessRow},
    supervisor::{ProcessState, Supervised},
};
use crate::{
    api::ServiceKind,
    build::secrets::DbCredentials,
    metrics::Metrics,
    seed::local::{LocalFiles, LocalSeeder},
    topology::{
        self,
        manager::{Handle, Topology},
        physical::Seeder,
        server::Server,
        status::TopologyStatus,
    },
};

/// The status table's component of the local Prometheus.
const MONITORING_COMPONENT: &str = "monitoring";
/// How long a stopped process may take before it is killed.
const GRACE: Duration = Duration::from_secs(10);
/// How long the databases may take to come up, and the primary to be chosen.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Envoy re-reads the endpoints within this time of a change (chat-xds polls every 500 ms).
const ENDPOINT_PROPAGATION: Duration = Duration::from_secs(2);

async fn wait_until<F, Fut>(what: &str, f: F) -> Result<(), RunError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    while !f().await {
        if Instant::now() > deadline {
            return Err(RunError::Timeout(what.to_string(), START_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The running cluster.
struct Cluster {
    plan: Plan,
    credentials: DbCredentials,
    ingress: (u16, u16),
    databases: Vec<Supervised>,
    xds: Vec<Supervised>,
    envoys: Vec<Supervised>,
    broker: Option<Supervised>,
    /// When the broker's certificate expires: a change is a renewal, which it reads on SIGHUP.
    broker_certificate: Option<SystemTime>,
    chatd: BTreeMap<ServiceKind, BTreeMap<usize, Supervised>>,
    /// Replicas scaled away, finishing their drain.
    draining: Vec<tokio::task::JoinHandle<()>>,
    topology: Option<Handle>,
    /// Each server's certificate reloader ([`crate::tls_reload`]), with internal TLS.
    reloaders: Vec<tokio::task::JoinHandle<()>>,
    /// Prometheus, when the plan has one.
    prometheus: Option<Supervised>,
    /// What it says fires, asked apart from the tick.
    alerts: Option<watch::Receiver<Alerts>>,
}

impl Cluster {
    fn serving(&self) -> BTreeMap<ServiceKind, Vec<usize>> {
        self.chatd
            .iter()
            .map(|(kind, replicas)| (*kind, replicas.keys().copied().collect()))
            .collect()
    }

    /// Publish the serving chatd replicas to chat-xds, and to Prometheus as scrape targets.
    fn write_endpoints(&self) -> Result<(), RunError> {
        let serving = self.serving();
        let doc = self.plan.endpoints_file(&serving);
        write_atomically(&self.plan.files.endpoints, &doc.to_string())?;
        if let Some(m) = &self.plan.monitor {
            let targets = self.plan.scrape_targets(&serving);
            write_atomically(&m.files.targets, &targets.to_string())?;
        }
        Ok(())
    }

    /// Write Prometheus's configuration and rules, and start it.
    fn start_prometheus(&mut self) -> Result<(), RunError> {
        let Some(m) = self.plan.monitor.clone() else {
            return Ok(());
        };
        let config = self.plan.prometheus_config(&m);
        write_atomically(&m.files.config, &config.to_string())?;
        write_atomically(&m.files.cluster_rules, &self.plan.prometheus_rules())?;
        write_atomically(
            &m.files.operator_rules,
            crate::build::monitoring::OPERATOR_RULES,
        )?;
        self.write_endpoints()?;
        self.alerts = Some(watch_alerts(m.launch.port));
        self.prometheus = Some(Supervised::start(m.launch, &self.plan.files.logs, GRACE));
        Ok(())
    }

    /// Start or stop chatd replicas of `kind` until `n` run. New replicas join the endpoints
    /// at once (Envoy's health checks send them traffic once they serve); removed ones leave
    /// the endpoints first, and are stopped (drained) in the background once Envoy has
    /// stopped sending them requests.
    async fn scale(&mut self, kind: ServiceKind, n: usize) -> Result<(), RunError> {
        let Some(service) = self.plan.services.iter().find(|s| s.kind == kind).cloned() else {
            return Ok(());
        };
        let replicas = self.chatd.entry(kind).or_default();
        let mut removed = Vec::new();
        while replicas.len() > n {
            if let Some((_, r)) = replicas.pop_last() {
                removed.push(r);
            }
        }
        for i in 0..service.bounds.1.min(n) {
            if let std::collections::btree_map::Entry::Vacant(slot) = replicas.entry(i) {
                let launch = self.plan.chatd_launch(&service, i, &self.credentials);
                slot.insert(Supervised::start(launch, &self.plan.files.logs, GRACE));
            }
        }
        self.write_endpoints()?;
        self.draining.retain(|t| !t.is_finished());
        if !removed.is_empty() {
            self.draining.push(tokio::spawn(async move {
                tokio::time::sleep(ENDPOINT_PROPAGATION).await;
                futures::future::join_all(removed.into_iter().map(Supervised::stop)).await;
            }));
        }
        Ok(())
    }

    /// Tell the broker to read its certificate again when `dates` show it renewed (chatd,
    /// chat-xds and Envoy notice by themselves; the servers have their reloaders).
    fn reload_broker(&mut self, dates: &[crate::pki::Dates]) {
        let expiry = dates
            .iter()
            .find(|d| d.name == chatcluster_types::identity::component::BROKER)
            .map(|d| d.not_after);
        let renewed = self.broker_certificate.is_some() && expiry != self.broker_certificate;
        self.broker_certificate = expiry;
        if let Some(pid) = self
            .broker
            .as_ref()
            .and_then(Supervised::pid)
            .filter(|_| renewed)
        {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP) {
                warn!(error = %e, "cannot tell the broker to reload its certificate");
            }
        }
    }

    /// Pids of each service's replicas (`None`: not running right now).
    fn running(&self) -> BTreeMap<ServiceKind, Vec<Option<u32>>> {
        self.chatd
            .iter()
            .map(|(kind, replicas)| (*kind, replicas.values().map(Supervised::pid).collect()))
            .collect()
    }

    async fn status(&self, db: &TopologyStatus) -> LocalStatus {
        let mut rows = Vec::new();
        let roles: BTreeMap<&str, &str> = db
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.role.as_str()))
            .collect();
        let mut add = |p: &Supervised, component: String, role: Option<String>| {
            rows.push((
                p.name.clone(),
                component,
                p.port,
                p.status.borrow().clone(),
                role,
            ));
        };
        for p in &self.databases {
            add(
                p,
                "database".into(),
                roles.get(p.name.as_str()).map(|r| r.to_string()),
            );
        }
        for (kind, replicas) in &self.chatd {
            for p in replicas.values() {
                add(p, kind.to_string(), None);
            }
        }
        for p in &self.xds {
            add(p, "xds".into(), None);
        }
        if let Some(p) = &self.broker {
            add(p, "broker".into(), None);
        }
        for p in &self.envoys {
            add(p, "envoy".into(), None);
        }
        if let Some(p) = &self.prometheus {
            add(p, MONITORING_COMPONENT.into(), None);
        }
        let mut processes = Vec::new();
        for (name, component, port, status, role) in rows {
            let up = matches!(status.state, ProcessState::Running { .. })
                && port_open(LOOPBACK, port).await;
            processes.push(ProcessRow {
                name,
                component,
                port,
                status,
                up,
                role,
            });
        }
        let (plain, tls) = self.ingress;
        // Where a client on this machine reaches Envoy: loopback when it binds every interface.
        let host = match ingress_address(&self.plan) {
            a if a.is_unspecified() => LOOPBACK,
            a => a,
        };
        let ingress_up = port_open(host, plain).await;
        let heard = self.alerts.as_ref().map(|a| a.borrow().clone());
        let (prometheus_down, alerts) = match heard {
            Some(Alerts::Firing(alerts)) => (None, alerts),
            Some(Alerts::Down(why)) => (Some(why), Vec::new()),
            // Starting, or off: no alert is known to fire.
            Some(Alerts::Unknown) | None => (None, Vec::new()),
        };
        LocalStatus {
            cluster: self.plan.name.clone(),
            // Prometheus watches the cluster; it is not part of what serves.
            ready: db.primary_ready
                && ingress_up
                && processes
                    .iter()
                    .all(|p| p.up || p.component == MONITORING_COMPONENT),
            endpoint: format!("http://{}", SocketAddr::new(host, plain)),
            tls_endpoint: match host {
                IpAddr::V4(ip) if ip.is_loopback() => format!("https://localhost:{tls}"),
                _ => format!("https://{}", SocketAddr::new(host, tls)),
            },
            primary: db.primary_address.clone(),
            processes,
            database: db.clone(),
            autoscaling: BTreeMap::new(),
            metrics: format!("http://127.0.0.1:{}/metrics", self.plan.metrics_port),
            prometheus: self
                .plan
                .monitor
                .as_ref()
                .map(|m| format!("http://127.0.0.1:{}", m.launch.port)),
            prometheus_down,
            alerts,
        }
    }

    async fn stop(mut self) {
        let stop_all = |list: Vec<Supervised>| {
            futures::future::join_all(list.into_iter().map(Supervised::stop))
        };
        // The watcher first: what stops after it is no outage.
        self.alerts = None;
        stop_all(self.prometheus.take().into_iter().collect()).await;
        stop_all(std::mem::take(&mut self.envoys)).await;
        let chatd: Vec<Supervised> = std::mem::take(&mut self.chatd)
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect();
        stop_all(chatd).await;
        futures::future::join_all(std::mem::take(&mut self.draining)).await;
        stop_all(std::mem::take(&mut self.xds)).await;
        stop_all(self.broker.take().into_iter().collect()).await;
        // Dropping the handle ends the loop: nothing fails over while the servers stop.
        self.topology = None;
        for reloader in std::mem::take(&mut self.reloaders) {
            reloader.abort();
        }
        stop_all(std::mem::take(&mut self.databases)).await;
    }
}

/// Run `plan` until `shutdown` completes; `ingress` is Envoy's (plain-text, TLS) ports.
/// How often the runner looks at the internal certificates (a renewal is due two thirds into
/// a lifetime of at least an hour).
const RENEWAL_CHECK: Duration = Duration::from_secs(10);

/// `on_status` receives every status that differs from the last.
pub async fn run(
    plan: Plan,
    ingress: (u16, u16),
    shutdown: impl Future<Output = ()>,
    mut on_status: impl FnMut(&LocalStatus),
) -> Result<(), RunError> {
    let files = plan.files.clone();
    for dir in [
        files.root.join("secrets"),
        files.root.join("run"),
        files.logs.clone(),
    ]
    .into_iter()
    .chain(plan.monitor.iter().map(|m| m.files.data.clone()))
    {
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    }
    check_ports(&plan, &[ingress.0, ingress.1])?;
    let credentials = secrets(&plan)?;
    // The only one: it leads as an operator replica holding the Lease does.
    let metrics = Arc::new(Metrics::default());
    metrics.set_leader(true);
    metrics.observe_certificates(
        LOCAL_NAMESPACE,
        &plan.name,
        certificates(&plan, SystemTime::now(), true)?,
    );

    let mut cluster = Cluster {
        plan,
        credentials,
        ingress,
        databases: Vec::new(),
        xds: Vec::new(),
        envoys: Vec::new(),
        broker: None,
        broker_certificate: None,
        chatd: BTreeMap::new(),
        draining: Vec::new(),
        topology: None,
        reloaders: Vec::new(),
        prometheus: None,
        alerts: None,
    };
    tokio::pin!(shutdown);
    let started = tokio::select! {
        r = start(&mut cluster) => r,
        _ = &mut shutdown => Ok(None),
    };
    let status_rx = match started {
        Ok(Some(rx)) => rx,
        Ok(None) => {
            info!("stopping before the cluster came up");
            cluster.stop().await;
            return Ok(());
        }
        Err(e) => {
            cluster.stop().await;
            return Err(e);
        }
    };

    metrics.watch_database(LOCAL_NAMESPACE, &cluster.plan.name, status_rx.clone());
    let (autoscaling, autoscaling_rx) = watch::channel(BTreeMap::new());
    metrics.watch_autoscaling(LOCAL_NAMESPACE, &cluster.plan.name, Some(autoscaling_rx));
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = tokio::spawn(crate::http::serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], cluster.plan.metrics_port)),
        metrics.clone(),
        async move {
            let _ = metrics_stopped.await;
        },
    ));
    let mut scaler = Scaler::new(&cluster.plan);
    let mut printed = String::new();
    let mut written = String::new();
    let mut tick = tokio::time::interval(super::scaler::PERIOD);
    let mut renewals = tokio::time::interval(RENEWAL_CHECK);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = renewals.tick() => {
                // A failed renewal leaves the old certificate serving; the next check retries.
                // Every reader reloads renewed files itself (the servers through their
                // reloaders).
                match certificates(&cluster.plan, SystemTime::now(), false) {
                    Ok(dates) => {
                        cluster.reload_broker(&dates);
                        metrics.observe_certificates(LOCAL_NAMESPACE, &cluster.plan.name, dates);
                    }
                    Err(e) => warn!(error = %e, "cannot renew the internal certificates"),
                }
            }
            _ = tick.tick() => {
                if scaler.active() {
                    for (kind, n) in scaler.sample(&cluster.running()).await {
                        info!(service = %kind, from = cluster.chatd.get(&kind).map_or(0, BTreeMap::len), to = n, "autoscaling");
                        if let Err(e) = cluster.scale(kind, usize::try_from(n).unwrap_or(0)).await {
                            warn!(service = %kind, error = %e, "cannot scale");
                        }
                    }
                }
                let db = status_rx.borrow().clone();
                if let Err(e) = remember_primary(&files.state, &db) {
                    warn!(error = %e, "cannot save the primary");
                }
                let mut status = cluster.status(&db).await;
                status.autoscaling = scaler.status();
                autoscaling.send_if_modified(|last| {
                    let changed = *last != status.autoscaling;
                    if changed {
                        last.clone_from(&status.autoscaling);
                    }
                    changed
                });
                // Written when it changes, not every tick: an idle cluster writes nothing.
                let json = serde_json::to_string_pretty(&status).unwrap_or_default();
                if json != written {
                    if let Err(e) = write_atomically(&files.status, &json) {
                        break Err(e);
                    }
                    written = json;
                }
                // People get the table when something they would see changed.
                let table = status.table();
                if table != printed {
                    on_status(&status);
                    printed = table;
                }
            }
        }
    };
    info!("stopping the local cluster");
    let _ = metrics_stop.send(());
    match metrics_server.await {
        Ok(Err(e)) => warn!(error = %e, "metrics endpoint failed"),
        Err(e) => warn!(error = %e, "metrics endpoint task failed"),
        Ok(Ok(())) => {}
    }
    cluster.stop().await;
    let _ = std::fs::remove_file(&files.status);
    outcome
}

/// Bring everything up; the topology loop's status, or `None` if interrupted.
async fn start(cluster: &mut Cluster) -> Result<Option<watch::Receiver<TopologyStatus>>, RunError> {
    let plan = cluster.plan.clone();
    let as_root = nix::unistd::geteuid().is_root();
    let init_sql = plan.database_init_sql(&cluster.credentials);
    for db in &plan.databases {
        install_db(&plan, db).await?;
        std::fs::create_dir_all(db.tmp()).map_err(io("cannot create", &db.tmp()))?;
        write_atomically(&db.config_file(), &plan.database_config(db, as_root))?;
        write_private(&db.init_file(), &init_sql)?;
        cluster.databases.push(Supervised::start(
            plan.database_launch(db),
            &plan.files.logs,
            // InnoDB flushes on a clean stop; give it time rather than crash-recover next run.
            GRACE * 3,
        ));
    }
    for db in &plan.databases {
        wait_until(&format!("database {}", db.name), || {
            port_open(LOOPBACK, db.port)
        })
        .await?;
    }

    let primary = remembered_primary(&plan);
    info!(%primary, "starting the topology loop");
    // Every server's files are on this machine: re-seeding copies them physically.
    let ca_pem = match plan.database_tls() {
        Some(_) => {
            let path = plan.files.ca_cert();
            Some(std::fs::read_to_string(&path).map_err(io("cannot read", &path))?)
        }
        None => None,
    };
    let credentials = plan.topology_credentials(&cluster.credentials, ca_pem);
    if let Some(files) = plan.database_tls() {
        for db in &plan.databases {
            let reloader = crate::tls_reload::Reloader::new(
                PathBuf::from(&files.dir),
                db.port,
                credentials.admin_user.clone(),
                credentials.admin_password.clone(),
                &topology::dialect::MARIADB,
            );
            let run = crate::tls_reload::run(reloader, std::future::pending());
            cluster.reloaders.push(tokio::spawn(run));
        }
    }
    let seeder: Arc<dyn Seeder> = Arc::new(LocalSeeder {
        files: plan
            .databases
            .iter()
            .map(|db| {
                let files = LocalFiles {
                    data_dir: db.data(),
                    socket: db.socket(),
                    config: db.config_file(),
                };
                (db.name.clone(), files)
            })
            .collect(),
        credentials: credentials.clone(),
    });
    let servers = plan
        .databases
        .iter()
        .map(|db| {
            Server::new(db.member(), credentials.clone(), plan.policy.query_timeout)
                .with_seeder(seeder.clone())
        })
        .collect();
    let (topology, status) = Topology::with_servers(
        servers,
        &primary,
        credentials,
        plan.policy.clone(),
        topology::manager::monotonic_clock(),
    )?;
    let handle = topology::manager::spawn(topology, status.clone(), Duration::from_secs(1));
    tokio::spawn(topology::publish::primary_file(
        status.clone(),
        plan.files.primary.clone(),
    ));
    cluster.topology = Some(handle);
    let mut ready = status.clone();
    tokio::time::timeout(START_TIMEOUT, ready.wait_for(|s| s.primary_ready))
        .await
        .map_err(|_| RunError::Timeout("the database primary".into(), START_TIMEOUT))?
        .map_err(|_| RunError::Timeout("the database primary".into(), START_TIMEOUT))?;
    wait_until("the primary's address file", || async {
        plan.files.primary.exists()
    })
    .await?;

    let xds_yaml = serde_yaml::to_string(&plan.xds_config).map_err(|e| RunError::Invalid {
        path: plan.files.xds_config.clone(),
        message: e.to_string(),
    })?;
    write_atomically(&plan.files.xds_config, &xds_yaml)?;
    cluster.write_endpoints()?;
    for launch in &plan.xds {
        cluster
            .xds
            .push(Supervised::start(launch.clone(), &plan.files.logs, GRACE));
    }
    write_atomically(&plan.files.broker_config, &plan.broker_config())?;
    cluster.broker = Some(Supervised::start(
        plan.broker.clone(),
        &plan.files.logs,
        GRACE,
    ));
    for service in &plan.services {
        cluster.scale(service.kind, service.initial).await?;
    }
    for (i, (launch, bootstrap)) in plan.envoys.iter().zip(&plan.envoy_bootstraps).enumerate() {
        write_atomically(&plan.files.envoy_bootstrap(i), &bootstrap.to_string())?;
        cluster
            .envoys
            .push(Supervised::start(launch.clone(), &plan.files.logs, GRACE));
    }
    cluster.start_prometheus()?;
    Ok(Some(status))
}
