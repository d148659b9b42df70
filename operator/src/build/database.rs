//! The database: a primary StatefulSet (1 pod), a replica StatefulSet (N pods), their
//! configuration and the Services that route writes and reads.
//!
//! Which pod is primary is a pod label ([`labels::DB_ROLE`]), not a StatefulSet: the `-primary`
//! Service selects it, so failover moves writes by relabelling pods, and the StatefulSets only
//! keep pods and volumes alive.

use std::{collections::BTreeMap, time::Duration};

use chatcluster_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            ConfigMap, Container, EmptyDirVolumeSource, ExecAction, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Service, ServiceSpec,
            TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{CONFIG_HASH_ANNOTATION, ClusterRef, labels, names, pod, ports, secrets, seed};
use crate::{
    api::{DatabaseEngine, DatabaseSpec, defaults},
    topology::{self, dialect::Dialect, plan::Policy},
};

/// Component label of every database object.
pub const COMPONENT: &str = "database";
/// The schema chatd's services create their tables in.
pub const DB_NAME: &str = "chat";
/// uid/gid of the `mysql` user in both upstream images.
pub(super) const MYSQL_UID: i64 = 999;
pub(super) const CONF_DIR: &str = "/etc/mysql/conf.d";
/// The data directory in both upstream images: the volume's root.
pub(super) const DATA_DIR: &str = "/var/lib/mysql";
/// Scripts the upstream images run once, when they initialise an empty data directory.
const INITDB_DIR: &str = "/docker-entrypoint-initdb.d";
/// The topology loop's user (least privileges: [`Dialect::admin_privileges`]).
pub const ADMIN_USER: &str = "chatcluster-admin";
/// The replication user (`REPLICATION SLAVE` only).
pub const REPL_USER: &str = "chatcluster-repl";

/// The database's statements.
pub fn dialect(db: &DatabaseSpec) -> &'static Dialect {
    engine_dialect(db.engine)
}

/// An engine's statements.
pub fn engine_dialect(engine: DatabaseEngine) -> &'static Dialect {
    match engine {
        DatabaseEngine::Mysql => &topology::dialect::MYSQL,
        DatabaseEngine::Mariadb => &topology::dialect::MARIADB,
    }
}

/// The two StatefulSets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// One pod, the initial primary.
    Primary,
    /// The read replicas.
    Replica,
}

impl Set {
    fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }

    /// server-id of pod 0 of the set; pod n gets base + n, so ids are unique across both sets.
    fn server_id_base(self) -> u32 {
        match self {
            Self::Primary => 100,
            Self::Replica => 200,
        }
    }
}

pub(super) fn image(db: &DatabaseSpec) -> String {
    db.image.clone().unwrap_or_else(|| {
        match db.engine {
            DatabaseEngine::Mysql => defaults::MYSQL_IMAGE,
            DatabaseEngine::Mariadb => defaults::MARIADB_IMAGE,
        }
        .to_string()
    })
}

/// Where a server finds its certificate, key and the internal CA (files of the component's
/// Secret, or of the local runner's `pki/db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Directory holding `tls.crt`, `tls.key` and `ca.crt`.
    pub dir: String,
}

impl ServerTlsFiles {
    /// The CA's path, which replication verifies its source with.
    pub fn ca(&self) -> String {
        format!("{}/{CA_FILE}", self.dir)
    }

    /// Server configuration lines: serve TLS with these files and refuse plain-text TCP
    /// clients (the Unix socket, which the image's own scripts use, stays open).
    pub fn config_lines(&self) -> Vec<String> {
        vec![
            format!("ssl_cert={}/{CERT_FILE}", self.dir),
            format!("ssl_key={}/{KEY_FILE}", self.dir),
            format!("ssl_ca={}", self.ca()),
            "require_secure_transport=ON".into(),
        ]
    }
}

/// Where a database pod mounts its internal certificate.
pub const TLS_DIR: &str = "/etc/mysql/internal-tls";

/// A database pod's certificate files.
pub fn pod_tls() -> ServerTlsFiles {
    ServerTlsFiles {
        dir: TLS_DIR.into(),
    }
}

/// Server configuration common to every pod: GTIDs, row binlogs, crash-safe replication and,
/// when there are replicas to wait for, lossless (AFTER_SYNC) semi-synchronous replication.
/// Every server starts read-only and never starts replication by itself: the topology loop
/// decides who is primary (and makes it writable, with semi-sync sized from the caught-up
/// replicas) and who follows whom — so a restarted old primary cannot take writes. A primary
/// never falls back to asynchronous commits on its own (a day's timeout): cut off from its
/// replicas, it acknowledges nothing.
pub fn server_config(db: &DatabaseSpec) -> String {
    let semi_sync = db.semi_sync && db.replicas > 0;
    let mut lines: Vec<&str> = Vec::new();
    match db.engine {
        DatabaseEngine::Mysql => {
            lines.extend([
                "[mysqld]",
                "gtid_mode=ON",
                "enforce_gtid_consistency=ON",
                "log_bin=binlog",
                "log_replica_updates=ON",
                "skip_replica_start=ON",
                "relay_log_recovery=ON",
                "sync_binlog=1",
                "innodb_flush_log_at_trx_commit=1",
                "skip_name_resolve=ON",
                "read_only=ON",
                "super_read_only=ON",
                "plugin_load_add=semisync_source.so",
                "plugin_load_add=semisync_replica.so",
                // chatd's migrations create a trigger, as for MariaDB below. `loose`: the
                // variable is deprecated since 8.0.34, and a version without it still starts.
                "loose-log_bin_trust_function_creators=ON",
            ]);
            if semi_sync {
                lines.extend([
                    "rpl_semi_sync_replica_enabled=ON",
                    "rpl_semi_sync_source_wait_point=AFTER_SYNC",
                    "rpl_semi_sync_source_timeout=86400000",
                ]);
            }
        }
        DatabaseEngine::Mariadb => {
            lines.extend([
                "[mariadb]",
                "log_bin=binlog",
                "binlog_format=ROW",
                "log_slave_updates=ON",
                "gtid_strict_mode=ON",
                "skip_slave_start=ON",
                "relay_log_recovery=ON",
                "sync_binlog=1",
                "innodb_flush_log_at_trx_commit=1",
                "skip_name_resolve=ON",
                "read_only=ON",
                // Not schemas: where a physical re-seed stages its copy, and the volume's own.
                "ignore_db_dirs=.chatcluster-seed",
                "ignore_db_dirs=lost+found",
                // chatd's migrations create a trigger (the message seqs) as a user without
                // SUPER. Row-based binlogs carry the rows a trigger wrote, so trusting its
                // creator cannot make replicas diverge.
                "log_bin_trust_function_creators=ON",
            ]);
            if semi_sync {
                lines.extend([
                    "rpl_semi_sync_slave_enabled=ON",
                    "rpl_semi_sync_master_wait_point=AFTER_SYNC",
                    "rpl_semi_sync_master_timeout=86400000",
                ]);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Init script: gives each pod a unique `server_id` (set base + ordinal) and a `report_host`
/// peers can reach, and leaves the topology loop's users for the image's first-start
/// initialisation (outside the binary log: every server gets the same, none is errant).
const INIT_SCRIPT: &str = r#"#!/bin/sh
set -eu
ordinal="${POD_NAME##*-}"
cp /config/chatcluster.cnf "$CONF_DIR/chatcluster.cnf"
{
  echo "[mysqld]"
  echo "server_id=$((SERVER_ID_BASE + ordinal))"
  echo "report_host=${POD_NAME}.${HEADLESS_SERVICE}"
} > "$CONF_DIR/server-id.cnf"
cat > "$INITDB_DIR/10-chatcluster-users.sql" <<EOF
SET SESSION sql_log_bin = 0;
CREATE USER IF NOT EXISTS '${ADMIN_USER}'@'%' IDENTIFIED BY '${ADMIN_PASSWORD}';
GRANT ${ADMIN_PRIVILEGES} ON *.* TO '${ADMIN_USER}'@'%';
CREATE USER IF NOT EXISTS '${REPL_USER}'@'%' IDENTIFIED BY '${REPL_PASSWORD}';
GRANT REPLICATION SLAVE ON *.* TO '${REPL_USER}'@'%';
EOF
"#;

/// The database ConfigMap: server configuration (serving TLS with `internal_tls`) and the
/// init script.
pub fn config_map(owner: &ClusterRef, db: &DatabaseSpec, internal_tls: bool) -> ConfigMap {
    let mut config = server_config(db);
    if internal_tls {
        for line in pod_tls().config_lines() {
            config.push_str(&line);
            config.push('\n');
        }
    }
    ConfigMap {
        metadata: owner.meta(
            names::db_config(owner),
            owner.labels(COMPONENT, engine_app(db)),
        ),
        data: Some(BTreeMap::from([
            ("chatcluster.cnf".to_string(), config),
            ("init.sh".to_string(), INIT_SCRIPT.to_string()),
        ])),
        ..ConfigMap::default()
    }
}

fn engine_app(db: &DatabaseSpec) -> &'static str {
    match db.engine {
        DatabaseEngine::Mysql => "mysql",
        DatabaseEngine::Mariadb => "mariadb",
    }
}

fn set_selector(owner: &ClusterRef, set: Set) -> BTreeMap<String, String> {
    let mut selector = owner.selector(COMPONENT);
    selector.insert(labels::DB_SET.into(), set.as_str().into());
    selector
}

/// One of the two database StatefulSets. `config_hash` rolls the pods when the server
/// configuration changes.
/// `operator_image` is where the pods copy the re-seed programs from (MariaDB).
/// `internal_tls`: the pods mount the database's internal certificate.
pub fn stateful_set(
    owner: &ClusterRef,
    db: &DatabaseSpec,
    set: Set,
    config_hash: &str,
    operator_image: &str,
    internal_tls: bool,
) -> StatefulSet {
    let (name, replicas) = match set {
        Set::Primary => (names::db_primary(owner), 1),
        Set::Replica => (names::db_replicas_set(owner), db.replicas),
    };
    let selector = set_selector(owner, set);
    let mut pod_labels = owner.labels(COMPONENT, engine_app(db));
    pod_labels.extend(selector.clone());
    // No role label: a pod (also a restarted old primary) serves neither Service until the
    // topology loop, which owns the label, has seen what it is.

    let pod_name = pod::env_from_field("POD_NAME", "metadata.name");
    // The upstream images take the same settings under engine-specific names.
    let (prefix, client) = match db.engine {
        DatabaseEngine::Mysql => ("MYSQL", "mysql"),
        DatabaseEngine::Mariadb => ("MARIADB", "mariadb"),
    };
    let env = vec![
        pod::env_from_secret(
            &format!("{prefix}_ROOT_PASSWORD"),
            &names::db_secret(owner),
            secrets::DB_ROOT_PASSWORD_KEY,
        ),
        pod::env(&format!("{prefix}_DATABASE"), DB_NAME),
        pod::env_from_secret(
            &format!("{prefix}_USER"),
            &names::db_secret(owner),
            secrets::DB_APP_USER_KEY,
        ),
        pod::env_from_secret(
            &format!("{prefix}_PASSWORD"),
            &names::db_secret(owner),
            secrets::DB_APP_PASSWORD_KEY,
        ),
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    };
    let query_probe = Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                // The socket (`localhost`): with internal TLS, plain TCP is refused, and
                // the TCP port is the liveness probe's.
                format!(
                    "MYSQL_PWD=\"${prefix}_ROOT_PASSWORD\" {client} -hlocalhost -uroot -e 'SELECT 1'"
                ),
            ]),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let tcp_probe = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(ports::DATABASE),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };

    let init = Container {
        name: "init-config".into(),
        image: Some(image(db)),
        command: Some(vec!["sh".into(), "/config/init.sh".into()]),
        env: Some(vec![
            pod_name.clone(),
            pod::env("SERVER_ID_BASE", set.server_id_base().to_string()),
            pod::env("DB_SET", set.as_str()),
            pod::env(
                "HEADLESS_SERVICE",
                owner.service_host(&names::db_headless(owner)),
            ),
            pod::env("CONF_DIR", CONF_DIR),
            pod::env("INITDB_DIR", INITDB_DIR),
            pod::env("ADMIN_USER", ADMIN_USER),
            pod::env("REPL_USER", REPL_USER),
            pod::env("ADMIN_PRIVILEGES", dialect(db).admin_privileges),
            pod::env_from_secret(
                "ADMIN_PASSWORD",
                &names::db_secret(owner),
                secrets::DB_ADMIN_PASSWORD_KEY,
            ),
            pod::env_from_secret(
                "REPL_PASSWORD",
                &names::db_secret(owner),
                secrets::DB_REPLICATION_PASSWORD_KEY,
            ),
        ]),
        volume_mounts: Some(vec![
            mount("config", "/config"),
            mount("conf", CONF_DIR),
            mount("initdb", INITDB_DIR),
        ]),
        // A shell writing two files: little, but bounded like every container.
        resources: Some(pod::resources(None, "50m", "64Mi", "128Mi")),
        security_context: Some(pod::container_security(true)),
        ..Container::default()
    };
    let server = Container {
        name: "database".into(),
        image: Some(image(db)),
        env: Some(env),
        ports: Some(pod::container_ports(&[("mysql", ports::DATABASE)])),
        readiness_probe: Some(query_probe),
        liveness_probe: Some(tcp_probe(10, 6)),
        // First start initialises the data directory, which can take minutes on slow disks.
        startup_probe: Some(tcp_probe(5, 120)),
        resources: Some(pod::resources(
            db.resources.as_ref(),
            "250m",
            "512Mi",
            "2Gi",
        )),
        // The upstream entrypoints write outside the mounted volumes on first start.
        security_context: Some(pod::container_security(false)),
        volume_mounts: Some(
            [
                mount("data", DATA_DIR),
                mount("conf", CONF_DIR),
                mount("initdb", INITDB_DIR),
                mount("run", "/var/run/mysqld"),
                mount("tmp", "/tmp"),
            ]
            .into_iter()
            .chain(internal_tls.then(|| pod::internal_tls_mount(TLS_DIR)))
            .collect(),
        ),
        ..Container::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };

    // Beside the server: on MariaDB the physical re-seed (the binary copied in first, a ready
    // copy swapped in last, the donor agent), with internal TLS the certificate reloader.
    let parts = seed::pod_parts(owner, db, operator_image, internal_tls);
    let init_containers: Vec<Container> = parts
        .first_init
        .into_iter()
        .chain([init])
        .chain(parts.last_init)
        .collect();
    let containers: Vec<Container> = [server].into_iter().chain(parts.sidecars).collect();
    let seed_volumes = parts.volumes;
    StatefulSet {
        metadata: owner.meta(name, owner.labels(COMPONENT, engine_app(db))),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names::db_headless(owner)),
            // Servers do not depend on each other's start; the topology loop wires them.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(init_containers),
                    containers,
                    security_context: Some(pod::pod_security(MYSQL_UID)),
                    topology_spread_constraints: Some(pod::topology_spread(
                        &owner.selector(COMPONENT),
                    )),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(60),
                    volumes: Some(
                        vec![
                            pod::config_map_volume("config", names::db_config(owner)),
                            empty_dir("conf"),
                            empty_dir("initdb"),
                            empty_dir("run"),
                            empty_dir("tmp"),
                        ]
                        .into_iter()
                        .chain(seed_volumes)
                        .chain(internal_tls.then(|| {
                            pod::internal_tls_volume(
                                owner,
                                chatcluster_types::identity::component::DATABASE,
                            )
                        }))
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(owner.selector(COMPONENT)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: db.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(db.storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The topology loop's policy from the spec: the same for both drivers.
pub fn topology_policy(db: &DatabaseSpec) -> Policy {
    Policy {
        failover: db.failover.enabled,
        failover_timeout: Duration::from_secs(
            u64::try_from(db.failover.timeout_seconds).unwrap_or(10),
        ),
        allow_data_loss: db.failover.allow_data_loss,
        semi_sync: db.semi_sync && db.replicas > 0,
        max_semi_sync_acks: match db.engine {
            DatabaseEngine::Mariadb => 1,
            DatabaseEngine::Mysql => u32::MAX,
        },
        ..Policy::default()
    }
}

/// The headless Service (stable DNS per pod, also while not ready, so replicas can reach a
/// recovering primary), the `-primary` Service for writes and the `-replicas` Service for reads.
pub fn services(owner: &ClusterRef) -> [Service; 3] {
    let port = || {
        Some(vec![pod::service_port(
            "mysql",
            ports::DATABASE,
            Some("mysql"),
        )])
    };
    let by_role = |name: String, role: &str| {
        let mut selector = owner.selector(COMPONENT);
        selector.insert(labels::DB_ROLE.into(), role.into());
        Service {
            metadata: owner.meta(name, owner.labels(COMPONENT, "database")),
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: port(),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    };
    [
        Service {
            metadata: owner.meta(
                names::db_headless(owner),
                owner.labels(COMPONENT, "database"),
            ),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(owner.selector(COMPONENT)),
                ports: port(),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        by_role(names::db_primary(owner), "primary"),
        by_role(names::db_replicas(owner), "replica"),
    ]
}
