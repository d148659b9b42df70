//! Pieces every workload shares: security contexts, spread, probes, budgets, config hashes.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource,
            EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext,
            PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
            SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
            TopologySpreadConstraint, Volume, VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use sha2::{Digest, Sha256};

use super::ClusterRef;

/// Pod-level security: non-root, fixed uid/gid, runtime-default seccomp.
pub fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level security: no privilege escalation, no capabilities, and a read-only root
/// file system unless the image must write outside its volumes.
pub fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// Spread a component's pods over nodes and zones, preferring but not requiring it, so a
/// small cluster still schedules everything.
pub fn topology_spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The user's resources, or modest requests and a memory limit.
pub fn resources(
    user: Option<&ResourceRequirements>,
    cpu: &str,
    memory: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    user.cloned().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    })
}

/// A budget allowing one pod of a component down at a time during voluntary disruptions
/// (node drains). `maxUnavailable` rather than `minAvailable`, so a one-pod component can
/// still be drained.
pub fn disruption_budget(owner: &ClusterRef, name: &str, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(name.to_string(), owner.labels(component, "chatcluster")),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector(component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Content hash of a ConfigMap's data, for [`super::CONFIG_HASH_ANNOTATION`].
/// BTreeMap iteration is ordered, so the hash is stable.
pub fn config_hash(cm: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in cm.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An environment variable with a fixed value.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable from a key of a Secret (which must exist).
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An environment variable from a field of the pod (downward API), e.g. `metadata.name`.
pub fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A Service port targeting the container port of the same name; `app_protocol` tells meshes
/// and Envoy what it speaks (`kubernetes.io/h2c`, `mysql`).
pub fn service_port(name: &str, port: i32, app_protocol: Option<&str>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        app_protocol: app_protocol.map(Into::into),
        ..ServicePort::default()
    }
}

/// The cluster-internal Service `name` over the pods of `component` (labelled as `app`'s),
/// with `ports`.
pub fn internal_service(
    owner: &ClusterRef,
    name: String,
    component: &str,
    app: &str,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: owner.meta(name, owner.labels(component, app)),
        spec: Some(ServiceSpec {
            selector: Some(owner.selector(component)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The scratch volume a container with a read-only root writes its temporary files to.
pub fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Set `key` to `value` among `template`'s annotations (a change rolls its pods).
pub fn annotate_template(template: &mut PodTemplateSpec, key: &str, value: &str) {
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
}

/// The Secret `secret` as the volume `name`, its files readable by the pod's group only (the
/// [`pod_security`] fsGroup): the private keys in it are for this container alone.
pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The volume holding `component`'s internal certificate (its Secret), the same in every
/// pod that has one: with [`internal_tls_mount`], the one way a pod is given its identity.
pub fn internal_tls_volume(owner: &super::ClusterRef, component: &str) -> Volume {
    secret_volume(
        INTERNAL_TLS_VOLUME,
        &super::names::internal_tls(owner, component),
    )
}

/// [`internal_tls_volume`] mounted read-only at `path`.
pub fn internal_tls_mount(path: &str) -> VolumeMount {
    read_only_mount(INTERNAL_TLS_VOLUME, path)
}

const INTERNAL_TLS_VOLUME: &str = "internal-tls";

/// Where [`tmp_volume`] is mounted: `/tmp`.
pub fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }
}

/// Volume `name` mounted read-only at `path`.
pub fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Named container ports, `(name, port)`.
pub fn container_ports(named: &[(&str, i32)]) -> Vec<ContainerPort> {
    named
        .iter()
        .map(|&(name, port)| ContainerPort {
            name: Some(name.into()),
            container_port: port,
            ..ContainerPort::default()
        })
        .collect()
}

/// The volumes or mounts that apply (`None`: one this configuration does without, such as
/// TLS off).
pub fn present<T, const N: usize>(items: [Option<T>; N]) -> Vec<T> {
    items.into_iter().flatten().collect()
}

/// ConfigMap `config_map` as volume `name`.
pub fn config_map_volume(name: &str, config_map: String) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// GET `/healthz` on the metrics port every `period` seconds, failing after `failures`: the
/// kubelet presents no client certificate, and the gRPC ports take none but the internal
/// CA's.
pub fn healthz_probe(period: i32, failures: i32) -> Probe {
    healthz_probe_on(super::ports::METRICS, period, failures)
}

/// As [`healthz_probe`], on `port` (a component whose health is on a port of its own).
pub fn healthz_probe_on(port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Selects the pods carrying all of `labels`.
pub fn label_selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}
