//! What runs beside a database server in its pod, all of it the operator's own binary: for
//! a physical MariaDB re-seed (see [`crate::seed`]), copied in by a first init container, the
//! swap before the server starts and the donor agent beside it, and the Job that fetches a
//! copy into one pod's volume (MySQL pods carry none of it: MySQL clones itself over SQL);
//! with internal TLS, on both engines, the certificate reloader ([`crate::tls_reload`]), the
//! operator's image as it is.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Affinity, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
            PersistentVolumeClaimVolumeSource, PodAffinity, PodAffinityTerm, PodSpec,
            PodTemplateSpec, Probe, TCPSocketAction, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    ClusterRef,
    database::{ADMIN_USER, COMPONENT, DATA_DIR, MYSQL_UID, image},
    names, pod, secrets,
};
use crate::{
    api::{DatabaseEngine, DatabaseSpec},
    seed::DONOR_PORT,
};

/// Where the binary is copied to, in a volume every container of the pod mounts.
const AGENT_DIR: &str = "/agent";
const AGENT_VOLUME: &str = "seed-agent";
/// Label naming the pod a re-seed Job fetches for.
pub const SEED_FOR_LABEL: &str = "chatcluster.io/seed-for";
/// Label naming the attempt a re-seed Job (and its pod) belongs to.
pub const SEED_COPY_LABEL: &str = "chatcluster.io/seed-copy";
/// Where the swap finds the approvals ConfigMap.
const APPROVALS_DIR: &str = "/seed-approvals";
/// How long a re-seed Job may run before Kubernetes stops it.
pub const JOB_DEADLINE_SECONDS: i64 = 1800;
/// Where Kubernetes reads a container's termination message (the copy's GTID position).
const TERMINATION_LOG: &str = "/dev/termination-log";

fn agent() -> String {
    format!("{AGENT_DIR}/chat-operator")
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The key both ends of the stream prove: the administrative password.
fn key_env(owner: &ClusterRef) -> EnvVar {
    pod::env_from_secret(
        "CHATCLUSTER_SEED_KEY",
        &names::db_secret(owner),
        secrets::DB_ADMIN_PASSWORD_KEY,
    )
}

/// The init container copying the binary into the shared volume (the operator's image holds
/// nothing else, so the binary copies itself).
fn install_agent(operator_image: &str) -> Container {
    Container {
        name: "seed-agent".into(),
        image: Some(operator_image.into()),
        args: Some(vec!["seed".into(), "install".into(), agent()]),
        volume_mounts: Some(vec![mount(AGENT_VOLUME, AGENT_DIR)]),
        resources: Some(pod::resources(None, "10m", "16Mi", "64Mi")),
        security_context: Some(pod::container_security(true)),
        ..Container::default()
    }
}

fn tcp_probe(period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("seed".into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// What a database pod carries beside its server; all empty when it needs none.
#[derive(Debug, Clone, Default)]
pub struct PodParts {
    /// Init containers to run before the others: the binary copied in.
    pub first_init: Vec<Container>,
    /// Init containers to run last: a ready copy put in place.
    pub last_init: Vec<Container>,
    /// The donor agent, the certificate reloader.
    pub sidecars: Vec<Container>,
    /// The volumes they mount beside the database's own.
    pub volumes: Vec<Volume>,
}

/// The parts of a database pod beside its server: the re-seed's on MariaDB, the certificate
/// reloader with `internal_tls`.
pub fn pod_parts(
    owner: &ClusterRef,
    db: &DatabaseSpec,
    operator_image: &str,
    internal_tls: bool,
) -> PodParts {
    let mut parts = PodParts::default();
    if db.engine == DatabaseEngine::Mariadb {
        let [donor, swap] = reseed_parts(owner, db);
        parts.first_init.push(install_agent(operator_image));
        parts.last_init.push(swap);
        parts.sidecars.push(donor);
        let [agent, tmp] = pod_volumes();
        parts.volumes.extend([agent, tmp, approvals_volume(owner)]);
    }
    if internal_tls {
        parts.sidecars.push(tls_reloader(owner, db, operator_image));
    }
    parts
}

/// The certificate reloader, on the operator's own image (it needs nothing of the
/// database's): reads the server's certificate files (read-only) and talks to the server on
/// the pod's loopback.
fn tls_reloader(owner: &ClusterRef, db: &DatabaseSpec, operator_image: &str) -> Container {
    use clap::ValueEnum as _;
    let engine = db
        .engine
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    Container {
        name: "tls-reload".into(),
        image: Some(operator_image.into()),
        args: Some(vec![
            "reload-tls".into(),
            "--engine".into(),
            engine,
            "--dir".into(),
            super::database::TLS_DIR.into(),
            "--port".into(),
            super::ports::DATABASE.to_string(),
        ]),
        env: Some(vec![
            pod::env("CHATCLUSTER_SEED_USER", ADMIN_USER),
            key_env(owner),
        ]),
        resources: Some(pod::resources(None, "5m", "16Mi", "64Mi")),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(vec![pod::internal_tls_mount(super::database::TLS_DIR)]),
        ..Container::default()
    }
}

/// The donor agent and the swap of a MariaDB pod.
fn reseed_parts(owner: &ClusterRef, db: &DatabaseSpec) -> [Container; 2] {
    let swap = Container {
        name: "seed-swap".into(),
        image: Some(image(db)),
        command: Some(vec![
            agent(),
            "seed".into(),
            "swap".into(),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--approvals".into(),
            APPROVALS_DIR.into(),
            "--termination-log".into(),
            TERMINATION_LOG.into(),
        ]),
        env: Some(vec![pod::env_from_field("POD_NAME", "metadata.name")]),
        // The operator reads the outcome here before it sets the replica's position.
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR),
            mount(AGENT_VOLUME, AGENT_DIR),
            mount("seed-approvals", APPROVALS_DIR),
        ]),
        resources: Some(pod::resources(None, "10m", "16Mi", "64Mi")),
        security_context: Some(pod::container_security(true)),
        ..Container::default()
    };
    let donor = Container {
        name: "seed-donor".into(),
        image: Some(image(db)),
        command: Some(vec![
            agent(),
            "seed".into(),
            "serve".into(),
            "--listen".into(),
            format!("0.0.0.0:{DONOR_PORT}"),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--socket".into(),
            "/var/run/mysqld/mysqld.sock".into(),
            "--work-dir".into(),
            "/tmp".into(),
        ]),
        env: Some(vec![
            pod::env("CHATCLUSTER_SEED_USER", ADMIN_USER),
            key_env(owner),
        ]),
        ports: Some(pod::container_ports(&[("seed", i32::from(DONOR_PORT))])),
        // No readiness probe: the agent must never take the database out of its Services.
        // A probe's connection ends its session at once.
        liveness_probe: Some(tcp_probe(20)),
        // mariadb-backup streams through a small buffer; copying reads the files, it does
        // not hold them.
        resources: Some(pod::resources(None, "10m", "32Mi", "512Mi")),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(vec![
            // mariadb-backup reads the data (a read-only mount does: checked by hand with
            // a read-only bind mount), reads the configuration, talks on the socket.
            VolumeMount {
                read_only: Some(true),
                ..mount("data", DATA_DIR)
            },
            mount("conf", super::database::CONF_DIR),
            mount("run", "/var/run/mysqld"),
            mount("seed-tmp", "/tmp"),
            mount(AGENT_VOLUME, AGENT_DIR),
        ]),
        ..Container::default()
    };
    [donor, swap]
}

/// The approvals ConfigMap, optional: a pod starts whether or not it exists.
fn approvals_volume(owner: &ClusterRef) -> Volume {
    Volume {
        name: "seed-approvals".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::db_seed_approvals(owner),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The ConfigMap the topology loop writes a pod's approved copy id into (a key per pod)
/// just before it restarts the pod; empty otherwise. The reconciler applies it without data,
/// so it never removes what the loop wrote.
pub fn approvals_config_map(owner: &ClusterRef) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(
            names::db_seed_approvals(owner),
            owner.labels(COMPONENT, "mariadb"),
        ),
        ..ConfigMap::default()
    }
}

/// The binary's volume and the donor's scratch space.
fn pod_volumes() -> [Volume; 2] {
    [empty_dir(AGENT_VOLUME), empty_dir("seed-tmp")]
}

/// The Job fetching a copy of `donor_host`'s files into `replica_pod`'s volume: scheduled on
/// the replica's node (its ReadWriteOnce volume is attached there), never retried by
/// Kubernetes (the topology loop retries with backoff), its GTID position left as the
/// termination message.
pub fn job(
    owner: &ClusterRef,
    db: &DatabaseSpec,
    operator_image: &str,
    replica_pod: &str,
    donor_host: &str,
    copy_id: &str,
) -> Job {
    let mut labels = owner.labels(COMPONENT, "mariadb");
    labels.insert(SEED_FOR_LABEL.into(), replica_pod.into());
    labels.insert(SEED_COPY_LABEL.into(), copy_id.into());
    let fetch = Container {
        name: "fetch".into(),
        image: Some(image(db)),
        command: Some(vec![
            agent(),
            "seed".into(),
            "fetch".into(),
            "--from".into(),
            format!("{donor_host}:{DONOR_PORT}"),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--copy-id".into(),
            copy_id.into(),
            "--termination-log".into(),
            TERMINATION_LOG.into(),
        ]),
        env: Some(vec![key_env(owner)]),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        // mariadb-backup --prepare applies the redo log with a 100 MiB buffer by default.
        resources: Some(pod::resources(None, "100m", "128Mi", "512Mi")),
        security_context: Some(pod::container_security(true)),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR),
            mount(AGENT_VOLUME, AGENT_DIR),
            mount("seed-tmp", "/tmp"),
        ]),
        ..Container::default()
    };
    let [agent_volume, tmp] = pod_volumes();
    let data = Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: format!("data-{replica_pod}"),
            read_only: Some(false),
        }),
        ..Volume::default()
    };
    Job {
        metadata: owner.meta(names::db_seed_job(replica_pod), labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(JOB_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    affinity: Some(Affinity {
                        pod_affinity: Some(PodAffinity {
                            required_during_scheduling_ignored_during_execution: Some(vec![
                                PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(BTreeMap::from([(
                                            "statefulset.kubernetes.io/pod-name".to_string(),
                                            replica_pod.to_string(),
                                        )])),
                                        ..LabelSelector::default()
                                    }),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..PodAffinityTerm::default()
                                },
                            ]),
                            ..PodAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    init_containers: Some(vec![install_agent(operator_image)]),
                    containers: vec![fetch],
                    security_context: Some(pod::pod_security(MYSQL_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(vec![data, agent_volume, tmp]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
