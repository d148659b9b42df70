//! Field-by-field tests of the desired state, without a client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container, EnvVar, PodTemplateSpec, Service},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::*;
use crate::api::{
    AutoscalingSpec, ChatClusterSpec, DatabaseEngine, LoadBalancing, ServiceType, TlsSpec, defaults,
};

fn resource_of(spec: ChatClusterSpec) -> ChatCluster {
    let mut resource = ChatCluster::new("demo", spec);
    resource.metadata.namespace = Some("chat".into());
    resource.metadata.uid = Some("uid-demo".into());
    resource
}

/// The identity of a ChatCluster `name` in `namespace`, as if read from the API.
pub(super) fn cluster_ref(name: &str, namespace: &str) -> ClusterRef {
    let mut resource = ChatCluster::new(name, ChatClusterSpec::default());
    resource.metadata.namespace = Some(namespace.into());
    resource.metadata.uid = Some(format!("uid-{name}"));
    ClusterRef::new(&resource).expect("a resource with metadata")
}

/// The desired objects of `resource`, which must be valid.
fn desired_of(resource: &ChatCluster, observed: &Observed) -> Result<Desired, BuildError> {
    let validated =
        ValidatedCluster::new(resource.name_any(), &resource.spec).expect("a valid spec");
    desired(&ClusterRef::new(resource)?, &validated, observed)
}

fn build(spec: ChatClusterSpec) -> Desired {
    match desired_of(&resource_of(spec), &Observed::default()) {
        Ok(d) => d,
        Err(e) => panic!("build failed: {e}"),
    }
}

fn deployment<'a>(d: &'a Desired, name: &str) -> &'a Deployment {
    d.deployments
        .iter()
        .find(|x| x.name_any() == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn service<'a>(d: &'a Desired, name: &str) -> &'a Service {
    d.services
        .iter()
        .find(|x| x.name_any() == name)
        .unwrap_or_else(|| panic!("no Service {name}"))
}

fn container(t: &PodTemplateSpec) -> &Container {
    &t.spec.as_ref().expect("pod spec").containers[0]
}

fn env<'a>(owner: &'a Container, name: &str) -> Option<&'a EnvVar> {
    owner.env.iter().flatten().find(|e| e.name == name)
}

fn env_value(owner: &Container, name: &str) -> Option<String> {
    env(owner, name).and_then(|e| e.value.clone())
}

fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn empty_spec_builds_every_child() {
    let d = build(ChatClusterSpec::default());
    let names = |v: Vec<String>| {
        let mut v = v;
        v.sort();
        v
    };
    assert_eq!(
        names(d.deployments.iter().map(|x| x.name_any()).collect()),
        [
            "demo-auth",
            "demo-broker",
            "demo-dms",
            "demo-envoy",
            "demo-gateway",
            "demo-groups",
            "demo-servers",
            "demo-xds"
        ]
    );
    assert_eq!(
        names(d.stateful_sets.iter().map(|x| x.name_any()).collect()),
        ["demo-db-primary", "demo-db-replica"]
    );
    assert_eq!(
        names(d.services.iter().map(|x| x.name_any()).collect()),
        [
            "demo-auth",
            "demo-broker",
            "demo-db",
            "demo-db-primary",
            "demo-db-replicas",
            "demo-dms",
            "demo-envoy",
            "demo-gateway",
            "demo-groups",
            "demo-servers",
            "demo-xds"
        ]
    );
    assert_eq!(
        names(d.config_maps.iter().map(|x| x.name_any()).collect()),
        ["demo-broker", "demo-db-config", "demo-envoy", "demo-xds"]
    );
    assert_eq!(
        names(
            d.pod_disruption_budgets
                .iter()
                .map(|x| x.name_any())
                .collect()
        ),
        [
            "demo-auth",
            "demo-db",
            "demo-dms",
            "demo-envoy",
            "demo-gateway",
            "demo-groups",
            "demo-servers",
            "demo-xds"
        ]
    );
    assert_eq!(d.service_accounts.len(), 1);
    assert_eq!(d.roles.len(), 1);
    assert_eq!(d.role_bindings.len(), 1);
    // Two of everything that serves traffic, so one can die; one broker, which holds
    // nothing a restart could lose (chatd polls meanwhile).
    assert_eq!(deployment(&d, "demo-broker").spec.replicas, Some(1));
    for dep in d
        .deployments
        .iter()
        .filter(|d| d.name_any() != "demo-broker")
    {
        assert_eq!(dep.spec.replicas, Some(2), "{}", dep.name_any());
    }
    let replica_set = d
        .stateful_sets
        .iter()
        .find(|s| s.name_any() == "demo-db-replica")
        .expect("replica set");
    assert_eq!(replica_set.spec.replicas, Some(2));
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let d = build(ChatClusterSpec::default());
    let objects = d.objects().expect("objects");
    // 37 workloads, configuration and Services; 9 NetworkPolicies.
    assert_eq!(objects.len(), 46);
    for obj in &objects {
        let name = obj.name_any();
        assert_eq!(obj.metadata.namespace.as_deref(), Some("chat"), "{name}");
        let owners = obj.metadata.owner_references.as_ref().expect("owner refs");
        assert_eq!(owners.len(), 1, "{name}");
        assert_eq!(owners[0].kind, "ChatCluster");
        assert_eq!(owners[0].name, "demo");
        assert_eq!(owners[0].uid, "uid-demo");
        assert_eq!(owners[0].controller, Some(true));
        let labels = obj.labels();
        assert_eq!(
            labels.get(labels::CLUSTER).map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            labels.get(labels::MANAGED_BY).map(String::as_str),
            Some(labels::MANAGER),
            "{name}"
        );
        let types = obj.types.as_ref().expect("types");
        assert!(!types.kind.is_empty() && !types.api_version.is_empty());
    }
    // Configuration comes before the workloads that mount it.
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o.types.as_ref().map(|t| t.kind.as_str()).unwrap_or(""))
        .collect();
    let first = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or(usize::MAX);
    assert_eq!(first("NetworkPolicy"), 0, "the firewall comes first");
    assert!(first("ConfigMap") < first("StatefulSet"));
    assert!(first("Service") < first("Deployment"));
    assert!(first("Deployment") < first("PodDisruptionBudget"));
}

#[test]
fn selectors_match_their_pods() {
    let d = build(ChatClusterSpec::default());
    for dep in &d.deployments {
        let selector = dep.spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            selects(&selector, &template_labels(&dep.spec.template)),
            "{}",
            dep.name_any()
        );
        if dep.spec.replicas == Some(1) {
            continue;
        }
        // Each budget selects exactly its workload's pods.
        let pdb = d
            .pod_disruption_budgets
            .iter()
            .find(|p| p.name_any() == dep.name_any())
            .expect("budget");
        let pdb_selector = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        assert_eq!(pdb_selector, selector);
    }
    for kind in ServiceKind::ALL {
        let name = format!("demo-{kind}");
        let svc_selector = service(&d, &name)
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let pods = template_labels(&deployment(&d, &name).spec.template);
        assert!(selects(&svc_selector, &pods), "{name}");
        // A service's selector must not also catch another service's pods.
        for other in ServiceKind::ALL.iter().filter(|o| **o != kind) {
            let other_pods =
                template_labels(&deployment(&d, &format!("demo-{other}")).spec.template);
            assert!(
                !selects(&svc_selector, &other_pods),
                "{name} selects {other}"
            );
        }
    }
    // The write Service reaches the pod the topology loop labels primary and not the
    // replicas; reads the reverse. Unlabelled (just started) pods are in neither.
    let with_role = |set: usize, role: &str| {
        let mut l = template_labels(&d.stateful_sets[set].spec.template);
        assert_eq!(l.get(labels::DB_ROLE), None, "the loop owns the role label");
        l.insert(labels::DB_ROLE.to_string(), role.to_string());
        l
    };
    let primary_pods = with_role(0, "primary");
    let replica_pods = with_role(1, "replica");
    let unlabelled = template_labels(&d.stateful_sets[1].spec.template);
    assert!(!selects(
        &selector_of_db(&d, "demo-db-primary"),
        &unlabelled
    ));
    assert!(!selects(
        &selector_of_db(&d, "demo-db-replicas"),
        &unlabelled
    ));
    assert!(!selects(
        &selector_of_db(&d, "demo-db-replicas"),
        &with_role(1, "errant")
    ));
    let selector_of = |name: &str| {
        service(&d, name)
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default()
    };
    assert!(selects(&selector_of("demo-db-primary"), &primary_pods));
    assert!(!selects(&selector_of("demo-db-primary"), &replica_pods));
    assert!(selects(&selector_of("demo-db-replicas"), &replica_pods));
    assert!(!selects(&selector_of("demo-db-replicas"), &primary_pods));
    assert!(selects(&selector_of("demo-db"), &primary_pods));
    assert!(selects(&selector_of("demo-db"), &replica_pods));
}

#[test]
fn chatd_deployment_is_wired_and_locked_down() {
    let d = build(ChatClusterSpec::default());
    for kind in ServiceKind::ALL {
        let dep = deployment(&d, &format!("demo-{kind}"));
        let pod = dep.spec.template.spec.as_ref().expect("pod");
        let owner = container(&dep.spec.template);
        assert_eq!(
            owner.image.as_deref(),
            Some(defaults::chatd_image().as_str())
        );
        assert_eq!(
            env_value(owner, "CHATD_SERVICES").as_deref(),
            Some(kind.as_str())
        );
        assert_eq!(
            env_value(owner, "CHATD_DB_PRIMARY").as_deref(),
            Some("demo-db-primary.chat.svc:3306")
        );
        assert_eq!(
            env_value(owner, "CHATD_DB_REPLICAS").as_deref(),
            Some("demo-db-replicas.chat.svc:3306")
        );
        assert_eq!(
            env_value(owner, "CHATD_BROKER").as_deref(),
            Some("demo-broker.chat.svc:4222")
        );
        assert_eq!(
            env_value(owner, "CHATD_METRICS_LISTEN").as_deref(),
            Some("0.0.0.0:9090")
        );
        // The broker's Service selects the broker's pod.
        let broker = service(&d, "demo-broker").spec.clone().expect("spec");
        assert!(selects(
            &broker.selector.unwrap_or_default(),
            &template_labels(&deployment(&d, "demo-broker").spec.template)
        ));
        let password = env(owner, "CHATD_DB_PASSWORD")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("password from a Secret");
        assert_eq!(password.name, "demo-db");
        assert_eq!(password.key, secrets::DB_APP_PASSWORD_KEY);
        // Probes ask the metrics port's /healthz (200 serving, 503 draining): the kubelet has
        // no certificate for the gRPC port.
        for probe in [
            &owner.readiness_probe,
            &owner.liveness_probe,
            &owner.startup_probe,
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("an HTTP probe");
            assert_eq!(get.port, IntOrString::Int(ports::METRICS));
            assert_eq!(get.path.as_deref(), Some("/healthz"));
        }
        let ports: Vec<i32> = owner
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [ports::CHATD_GRPC, ports::METRICS]);
        // Security.
        let sc = owner.security_context.as_ref().expect("container security");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        let psc = pod.security_context.as_ref().expect("pod security");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u > 0));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let spread = pod.topology_spread_constraints.as_ref().expect("spread");
        assert!(
            spread
                .iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname")
        );
        // Only auth gets the private signing key.
        let items: Vec<String> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref())
            .flat_map(|s| s.items.iter().flatten().map(|i| i.key.clone()))
            .collect();
        let has_private = items.iter().any(|k| k == "private.pem");
        assert_eq!(has_private, kind == ServiceKind::Auth, "{kind}");
        assert_eq!(
            env_value(owner, "CHATD_TOKEN_PRIVATE_KEY_FILE").is_some(),
            kind == ServiceKind::Auth
        );
        // The Service exposes gRPC as h2c.
        let port = &service(&d, &format!("demo-{kind}"))
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()[0];
        assert_eq!(port.port, ports::CHATD_GRPC);
        assert_eq!(port.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }
}

#[test]
fn replicas_follow_the_spec_and_the_autoscaler() {
    let mut spec = ChatClusterSpec::default();
    spec.services.auth.replicas = Some(5);
    spec.services.groups.autoscaling = Some(AutoscalingSpec {
        min_replicas: 3,
        max_replicas: 10,
        target_requests_per_second: Some(400),
        target_cpu_utilization: None,
        scale_down_stabilization_seconds: 300,
    });
    let resource = resource_of(spec);
    let replicas = |observed: Observed, name: &str| {
        desired_of(&resource, &observed)
            .expect("build")
            .deployments
            .iter()
            .find(|d| d.name_any() == name)
            .and_then(|d| d.spec.replicas)
    };
    assert_eq!(replicas(Observed::default(), "demo-auth"), Some(5));
    // A new autoscaled service starts at its minimum…
    assert_eq!(replicas(Observed::default(), "demo-groups"), Some(3));
    // …keeps what the autoscaler chose…
    let chosen = |n| Observed {
        current_replicas: BTreeMap::from([(ServiceKind::Groups, n)]),
        ..Observed::default()
    };
    assert_eq!(replicas(chosen(7), "demo-groups"), Some(7));
    // …and is clamped to the bounds when they change.
    assert_eq!(replicas(chosen(50), "demo-groups"), Some(10));
    assert_eq!(replicas(chosen(1), "demo-groups"), Some(3));
}

#[test]
fn init_script_gives_every_database_pod_a_unique_server_id() {
    let d = build(ChatClusterSpec::default());
    let script = d
        .config_maps
        .iter()
        .find(|c| c.name_any() == "demo-db-config")
        .and_then(|c| c.data.as_ref())
        .and_then(|data| data.get("init.sh"))
        .cloned()
        .expect("init.sh");
    let dir = std::env::temp_dir().join(format!("chatcluster-init-{}", std::process::id()));
    let mut ids = Vec::new();
    for set in &d.stateful_sets {
        let init = &set
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod")
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "init-config")
            .expect("init");
        let base = env_value(init, "SERVER_ID_BASE").expect("base");
        let db_set = env_value(init, "DB_SET").expect("set");
        for ordinal in 0..set.spec.replicas.unwrap_or(1) {
            let pod = format!("{}-{ordinal}", set.name_any());
            let conf = dir.join(&pod);
            std::fs::create_dir_all(&conf).expect("temp dir");
            let config = dir.join("config");
            std::fs::create_dir_all(&config).expect("config dir");
            std::fs::write(config.join("chatcluster.cnf"), "[mysqld]\n").expect("write cnf");
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script.replace("/config/", &format!("{}/", config.display())))
                .env("POD_NAME", &pod)
                .env("SERVER_ID_BASE", &base)
                .env("DB_SET", &db_set)
                .env("HEADLESS_SERVICE", "demo-db.chat.svc")
                .env("CONF_DIR", &conf)
                .env("INITDB_DIR", &conf)
                .env("ADMIN_USER", "chatcluster-admin")
                .env("REPL_USER", "chatcluster-repl")
                .env("ADMIN_PRIVILEGES", "SELECT")
                .env("ADMIN_PASSWORD", "apw")
                .env("REPL_PASSWORD", "rpw")
                .output()
                .expect("run sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let written =
                std::fs::read_to_string(conf.join("server-id.cnf")).expect("server-id.cnf");
            assert!(
                written.contains(&format!("report_host={pod}.demo-db.chat.svc")),
                "{written}"
            );
            let id = written
                .lines()
                .find_map(|l| l.strip_prefix("server_id="))
                .and_then(|v| v.parse::<u32>().ok())
                .expect("server_id");
            ids.push(id);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(unique.len(), ids.len(), "server ids {ids:?}");
    assert!(ids.iter().all(|id| *id > 0));
}

#[test]
fn database_config_per_engine() {
    let mysql = database::server_config(&ChatClusterSpec::default().database);
    for line in [
        "gtid_mode=ON",
        "enforce_gtid_consistency=ON",
        "rpl_semi_sync_replica_enabled=ON",
        "rpl_semi_sync_source_wait_point=AFTER_SYNC",
        "rpl_semi_sync_source_timeout=86400000",
        "skip_replica_start=ON",
        "read_only=ON",
        "super_read_only=ON",
    ] {
        assert!(mysql.lines().any(|l| l == line), "mysql lacks {line}");
    }
    let mut spec = ChatClusterSpec::default();
    spec.database.engine = DatabaseEngine::Mariadb;
    let maria = database::server_config(&spec.database);
    for line in [
        "gtid_strict_mode=ON",
        "log_slave_updates=ON",
        "rpl_semi_sync_slave_enabled=ON",
        "rpl_semi_sync_master_wait_point=AFTER_SYNC",
        "rpl_semi_sync_master_timeout=86400000",
        "read_only=ON",
    ] {
        assert!(maria.lines().any(|l| l == line), "mariadb lacks {line}");
    }
    // Semi-sync with nobody to wait for would stall every write: off without replicas. With
    // them, the topology loop turns the primary's side on, sized from the caught-up replicas.
    assert!(!maria.contains("semi_sync_master_enabled"));
    spec.database.replicas = 0;
    assert!(!database::server_config(&spec.database).contains("semi_sync"));
    spec.database.replicas = 2;
    spec.database.semi_sync = false;
    assert!(!database::server_config(&spec.database).contains("semi_sync"));

    // Engine choice reaches image and environment; config changes roll the pods.
    let d = build(spec.clone());
    let set = &d.stateful_sets[0];
    let owner = container(&set.spec.template);
    assert_eq!(owner.image.as_deref(), Some(defaults::MARIADB_IMAGE));
    assert!(env(owner, "MARIADB_ROOT_PASSWORD").is_some());
    assert!(env(owner, "MYSQL_ROOT_PASSWORD").is_none());
    let hash = |d: &Desired| {
        d.stateful_sets[0]
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
    };
    spec.database.semi_sync = true;
    assert_ne!(hash(&d), hash(&build(spec)));
}

#[test]
fn database_sets_have_volumes_probes_and_roles() {
    let mut spec = ChatClusterSpec::default();
    spec.database.replicas = 3;
    spec.database.storage.size = "50Gi".into();
    spec.database.storage.storage_class_name = Some("fast".into());
    let d = build(spec);
    let [primary, replicas] = [&d.stateful_sets[0], &d.stateful_sets[1]];
    assert_eq!(primary.spec.replicas, Some(1));
    assert_eq!(replicas.spec.replicas, Some(3));
    for set in [primary, replicas] {
        assert_eq!(set.spec.service_name.as_deref(), Some("demo-db"));
        let pvc = &set.spec.volume_claim_templates.as_ref().expect("pvc")[0];
        let pvc_spec = pvc.spec.as_ref().expect("pvc spec");
        assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
        let size = pvc_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone());
        assert_eq!(size.as_deref(), Some("50Gi"));
        let owner = container(&set.spec.template);
        assert!(
            owner
                .readiness_probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .is_some()
        );
        assert!(
            owner
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/var/lib/mysql")
        );
        let psc = set
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.security_context.as_ref())
            .expect("psc");
        assert_eq!(psc.run_as_user, Some(999));
        assert_eq!(psc.run_as_non_root, Some(true));
    }
    let role = |s: &k8s_openapi::api::apps::v1::StatefulSet| {
        template_labels(&s.spec.template)
            .get(labels::DB_ROLE)
            .cloned()
    };
    assert_eq!(role(primary), None);
    assert_eq!(role(replicas), None);
}

#[test]
fn mariadb_pods_carry_the_physical_reseed_and_mysql_pods_do_not() {
    // Without internal TLS, so that the re-seed's parts are all there is beside the server.
    let mut spec = ChatClusterSpec::default();
    spec.internal_tls.enabled = false;
    let mysql = build(spec.clone());
    spec.database.engine = DatabaseEngine::Mariadb;
    let observed = Observed {
        operator_image: Some("registry.example/chat-operator:9".into()),
        ..Observed::default()
    };
    let d = desired_of(&resource_of(spec), &observed).unwrap();
    for set in &d.stateful_sets {
        let pod = set.spec.template.spec.as_ref().unwrap();
        let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let inits = pod.init_containers.as_deref().unwrap();
        // The binary first, the swap last: after init-config, before the server starts.
        assert_eq!(names(inits), ["seed-agent", "init-config", "seed-swap"]);
        assert_eq!(
            inits[0].image.as_deref(),
            Some("registry.example/chat-operator:9")
        );
        assert_eq!(names(&pod.containers), ["database", "seed-donor"]);
        let donor = &pod.containers[1];
        let key = env(donor, "CHATCLUSTER_SEED_KEY")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("demo-db", secrets::DB_ADMIN_PASSWORD_KEY)
        );
        assert_eq!(
            donor.ports.as_ref().unwrap()[0].container_port,
            i32::from(crate::seed::DONOR_PORT)
        );
        // The swap and the donor see the server's data; the donor also its socket; the
        // swap the operator's approvals, which may not exist (the pod starts anyway).
        for owner in [&inits[2], donor] {
            assert!(
                owner
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "data")
            );
        }
        assert!(
            inits[2]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "seed-approvals")
        );
        let approvals = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "seed-approvals")
            .and_then(|v| v.config_map.as_ref())
            .unwrap();
        assert_eq!(approvals.name, "demo-db-seed");
        assert_eq!(approvals.optional, Some(true));
        assert!(
            donor.readiness_probe.is_none(),
            "never out of the Services for it"
        );
        assert!(
            donor
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/var/run/mysqld")
        );
    }
    assert!(
        d.config_maps
            .iter()
            .any(|m| m.name_any() == "demo-db-seed" && m.data.is_none()),
        "the approvals ConfigMap, applied without data"
    );
    let config = d
        .config_maps
        .iter()
        .find(|m| m.name_any() == "demo-db-config")
        .and_then(|m| m.data.as_ref())
        .map(|d| d["chatcluster.cnf"].clone())
        .unwrap();
    assert!(
        config.contains("ignore_db_dirs=.chatcluster-seed"),
        "{config}"
    );

    for set in &mysql.stateful_sets {
        let pod = set.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.init_containers.as_ref().unwrap().len(), 1);
        assert_eq!(pod.containers.len(), 1, "MySQL clones itself");
    }
}

#[test]
fn with_internal_tls_every_database_pod_carries_a_certificate_reloader() {
    let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let image = "registry.example/chat-operator:9";
    for (engine, flag, sidecars, inits) in [
        (
            DatabaseEngine::Mysql,
            "mysql",
            vec!["database", "tls-reload"],
            vec!["init-config"],
        ),
        (
            DatabaseEngine::Mariadb,
            "mariadb",
            vec!["database", "seed-donor", "tls-reload"],
            vec!["seed-agent", "init-config", "seed-swap"],
        ),
    ] {
        let mut spec = ChatClusterSpec::default();
        spec.database.engine = engine;
        let observed = Observed {
            operator_image: Some(image.into()),
            ..Observed::default()
        };
        let d = desired_of(&resource_of(spec), &observed).unwrap();
        for set in &d.stateful_sets {
            let pod = set.spec.template.spec.as_ref().unwrap();
            assert_eq!(names(&pod.containers), sidecars, "{flag}");
            // The reloader runs the operator's image as it is: nothing is copied in for it.
            assert_eq!(
                names(pod.init_containers.as_deref().unwrap()),
                inits,
                "{flag}"
            );
            let reloader = pod.containers.last().unwrap();
            assert_eq!(reloader.image.as_deref(), Some(image));
            // The reloader alone goes without a liveness probe (the policy scan accepts it
            // for these pods on that ground).
            for c in &pod.containers[..pod.containers.len() - 1] {
                assert!(c.liveness_probe.is_some(), "{flag}: {}", c.name);
            }
            assert!(reloader.liveness_probe.is_none());
            let args = reloader.args.as_deref().unwrap();
            assert_eq!(args[0], "reload-tls");
            assert!(args.windows(2).any(|w| w == ["--engine", flag]), "{args:?}");
            assert!(args.windows(2).any(|w| w == ["--port", "3306"]), "{args:?}");
            // It reads the certificate the server serves, and logs in as the administrator.
            let mounts = reloader.volume_mounts.as_deref().unwrap();
            let tls = mounts
                .iter()
                .find(|m| m.mount_path == database::TLS_DIR)
                .unwrap();
            assert_eq!(tls.read_only, Some(true));
            assert_eq!(mounts.len(), 1);
            let key = env(reloader, "CHATCLUSTER_SEED_KEY")
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.secret_key_ref.as_ref())
                .unwrap();
            assert_eq!(key.key, secrets::DB_ADMIN_PASSWORD_KEY);
        }
    }
}

fn selector_of_db(d: &Desired, name: &str) -> BTreeMap<String, String> {
    service(d, name)
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

#[test]
fn envoy_bootstrap_points_at_chat_xds() {
    let d = build(ChatClusterSpec::default());
    let yaml = d
        .config_maps
        .iter()
        .find(|c| c.name_any() == "demo-envoy")
        .and_then(|c| c.data.as_ref())
        .and_then(|data| data.get("envoy.yaml"))
        .cloned()
        .expect("bootstrap");
    let boot: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let xds = boot["static_resources"]["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "xds"))
        .expect("xds cluster");
    let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(addr["address"], "demo-xds.chat.svc");
    assert_eq!(addr["port_value"], ports::XDS);
    assert_eq!(
        boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "xds"
    );
    assert_eq!(
        boot["dynamic_resources"]["lds_config"]["ads"],
        serde_json::json!({})
    );
    // The edge sheds load: new requests refused near the heap's end, connections bounded.
    let actions: Vec<&str> = boot["overload_manager"]["actions"]
        .as_array()
        .expect("overload actions")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "envoy.overload_actions.shrink_heap",
            "envoy.overload_actions.stop_accepting_requests"
        ]
    );
    let monitors = boot["overload_manager"]["resource_monitors"].to_string();
    assert!(
        monitors.contains("max_active_downstream_connections"),
        "{monitors}"
    );
    // Admin only on loopback.
    assert_eq!(
        boot["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    let envoy = deployment(&d, "demo-envoy");
    let owner = container(&envoy.spec.template);
    let readiness = owner
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("http probe");
    assert_eq!(readiness.path.as_deref(), Some("/ready"));
    let svc = service(&d, "demo-envoy").spec.clone().expect("spec");
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(svc.ports.as_ref().map(|p| p[0].port), Some(443));
}

#[test]
fn ingress_settings_reach_service_and_xds() {
    let mut spec = ChatClusterSpec::default();
    spec.ingress.service.type_ = ServiceType::NodePort;
    spec.ingress.service.port = 8443;
    spec.ingress.service.annotations = BTreeMap::from([("lb".to_string(), "internal".to_string())]);
    spec.ingress.replicas = 3;
    spec.ingress.grpc_web = false;
    spec.ingress.tls = Some(TlsSpec {
        secret_name: "my-cert".into(),
    });
    spec.services.servers.load_balancing = LoadBalancing::RingHash;
    let d = build(spec.clone());
    let svc = service(&d, "demo-envoy");
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.type_.clone()).as_deref(),
        Some("NodePort")
    );
    assert_eq!(
        svc.annotations().get("lb").map(String::as_str),
        Some("internal")
    );
    assert_eq!(deployment(&d, "demo-envoy").spec.replicas, Some(3));

    let config: XdsConfig = serde_yaml::from_str(
        d.config_maps
            .iter()
            .find(|c| c.name_any() == "demo-xds")
            .and_then(|c| c.data.as_ref())
            .and_then(|data| data.get("xds.yaml"))
            .expect("xds.yaml"),
    )
    .expect("config parses back");
    let discovery = config.kubernetes.as_ref().expect("a Kubernetes source");
    assert_eq!(discovery.tls_secret, "my-cert");
    assert!(!config.grpc_web);
    assert_eq!(discovery.endpoint_selector, "chatcluster.io/cluster=demo");
    assert_eq!(discovery.namespace, "chat");
    assert_eq!(discovery.services["servers"], "demo-servers");
    let servers = config
        .services
        .iter()
        .find(|s| s.name == "servers")
        .expect("servers");
    assert_eq!(servers.load_balancing, LoadBalancing::RingHash);
    assert_eq!(servers.hash_header.as_deref(), Some(defaults::HASH_HEADER));
    assert_eq!(servers.grpc_package, "chatcluster.servers.v1");
    let auth = config
        .services
        .iter()
        .find(|s| s.name == "auth")
        .expect("auth");
    assert_eq!(auth.load_balancing, LoadBalancing::LeastRequest);
    assert_eq!(auth.hash_header, None);
    // Each client address is limited unless the spec says otherwise.
    assert_eq!(
        config.rate_limit,
        Some(RateLimit {
            requests_per_second: 100,
            burst: 200,
        })
    );
    let mut unlimited = spec.clone();
    unlimited.ingress.rate_limit.enabled = false;
    let unlimited = ValidatedCluster::new("demo", &unlimited).expect("a valid spec");
    let config = xds_config(&unlimited);
    assert_eq!(config.rate_limit, None);

    // chat-xds may read only the certificate it serves, and nothing cluster-wide.
    let rules = d.roles[0].rules.clone().unwrap_or_default();
    let secret_rule = rules
        .iter()
        .find(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
        .expect("secret rule");
    assert_eq!(
        secret_rule.resource_names.as_deref(),
        Some(&["my-cert".to_string()][..])
    );
    // It only reads: every chat-xds replica serves, none elects a leader (no Lease).
    for rule in &rules {
        assert!(
            rule.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
            "{rule:?}"
        );
    }
    assert_eq!(
        secrets::generated(&spec),
        [
            secrets::Generated::DbCredentials,
            secrets::Generated::TokenKey,
            secrets::Generated::InternalCa
        ]
    );
    assert_eq!(
        secrets::generated(&ChatClusterSpec::default()),
        [
            secrets::Generated::DbCredentials,
            secrets::Generated::TokenKey,
            secrets::Generated::SelfSignedTls,
            secrets::Generated::InternalCa
        ]
    );
}

#[test]
fn generated_secrets_hold_fresh_material() {
    let resource = resource_of(ChatClusterSpec::default());
    let owner = ClusterRef::new(&resource).expect("ref");
    let data = |g: secrets::Generated| {
        g.generate(&owner)
            .expect("generate")
            .string_data
            .unwrap_or_default()
    };
    let a = data(secrets::Generated::DbCredentials);
    let b = data(secrets::Generated::DbCredentials);
    assert_eq!(
        a.get(secrets::DB_APP_USER_KEY).map(String::as_str),
        Some("chat")
    );
    let root = a.get(secrets::DB_ROOT_PASSWORD_KEY).expect("root");
    assert_eq!(root.len(), 32);
    assert_ne!(
        a.get(secrets::DB_ROOT_PASSWORD_KEY),
        b.get(secrets::DB_ROOT_PASSWORD_KEY)
    );
    assert_ne!(
        a.get(secrets::DB_ROOT_PASSWORD_KEY),
        a.get(secrets::DB_APP_PASSWORD_KEY)
    );

    let tls = secrets::Generated::SelfSignedTls
        .generate(&owner)
        .expect("tls");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls_data = tls.string_data.unwrap_or_default();
    assert!(tls_data["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(tls_data["tls.key"].contains("PRIVATE KEY"));
    assert!(secrets::self_signed_names(&owner).contains(&"demo-envoy.chat.svc".to_string()));

    let key = data(secrets::Generated::TokenKey);
    assert!(key["private.pem"].starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(key["public.pem"].starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn a_cluster_not_read_from_the_api_is_refused() {
    let resource = ChatCluster::new("demo", ChatClusterSpec::default());
    assert!(matches!(
        ClusterRef::new(&resource),
        Err(BuildError::MissingMetadata("namespace"))
    ));
}

/// The Secret volume a pod mounts at `path`, if any.
fn mounted_secret(t: &PodTemplateSpec, path: &str) -> Option<String> {
    let mount = container(t)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)?;
    let volume = t
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    volume.secret.as_ref()?.secret_name.clone()
}

#[test]
fn internal_tls_gives_each_component_its_own_certificate_and_points_envoy_at_them() {
    let d = build(ChatClusterSpec::default());
    let resource = resource_of(ChatClusterSpec::default());
    let owner = ClusterRef::new(&resource).unwrap();
    let leaves = internal_tls::leaves(&owner, &resource.spec, crate::pki::LEAF_LIFETIME);
    let components: Vec<&str> = leaves
        .iter()
        .map(|l| l.identity.component.as_str())
        .collect();
    assert_eq!(
        components,
        [
            "xds", "ingress", "db", "broker", "auth", "groups", "dms", "servers", "gateway"
        ]
    );
    // The database's certificate names every address it is reached at.
    let db_names = &leaves[2].dns_names;
    for name in [
        "demo-db-primary-0.demo-db.chat.svc",
        "demo-db-replica-0.demo-db.chat.svc.cluster.local",
        "demo-db-primary.chat.svc",
        "demo-db-replicas.chat.svc",
    ] {
        assert!(
            db_names.iter().any(|n| n == name),
            "{name} not in {db_names:?}"
        );
    }
    for member in crate::reconcile::topology::members(&owner, &resource.spec.database) {
        assert!(db_names.contains(&member.host), "{}", member.host);
    }
    // Database pods mount theirs and serve TLS only.
    for set in &d.stateful_sets {
        assert_eq!(
            mounted_secret(&set.spec.template, database::TLS_DIR),
            Some("demo-db-internal-tls".into()),
            "{}",
            set.name_any()
        );
    }
    let db_config = d
        .config_maps
        .iter()
        .find(|c| c.name_any() == "demo-db-config")
        .and_then(|c| c.data.as_ref()?.get("chatcluster.cnf").cloned())
        .expect("the database configuration");
    for line in [
        "ssl_cert=/etc/mysql/internal-tls/tls.crt",
        "ssl_key=/etc/mysql/internal-tls/tls.key",
        "ssl_ca=/etc/mysql/internal-tls/ca.crt",
        "require_secure_transport=ON",
    ] {
        assert!(
            db_config.lines().any(|l| l == line),
            "{line} in {db_config}"
        );
    }
    // Each pod mounts its own component's Secret, and no other's.
    for (deployment_name, path, component) in [
        ("demo-xds", "/etc/chat-xds/tls", "xds"),
        ("demo-envoy", "/etc/envoy/internal-tls", "ingress"),
        ("demo-auth", "/etc/chatd/tls", "auth"),
        ("demo-groups", "/etc/chatd/tls", "groups"),
    ] {
        let template = &deployment(&d, deployment_name).spec.template;
        assert_eq!(
            mounted_secret(template, path),
            Some(format!("demo-{component}-internal-tls")),
            "{deployment_name}"
        );
    }
    let xds = &deployment(&d, "demo-xds").spec.template;
    assert_eq!(
        env_value(container(xds), "CHAT_XDS_TLS_DIR").as_deref(),
        Some("/etc/chat-xds/tls")
    );
    let groups = &deployment(&d, "demo-groups").spec.template;
    assert_eq!(
        env_value(container(groups), "CHATD_TLS_DIR").as_deref(),
        Some("/etc/chatd/tls")
    );
    // The kubelet cannot present a certificate: chatd and chat-xds are probed over HTTP on
    // their metrics port, never on the mutual-TLS gRPC port.
    for template in [xds, groups] {
        let c = container(template);
        for probe in [&c.readiness_probe, &c.liveness_probe]
            .into_iter()
            .flatten()
        {
            assert!(probe.grpc.is_none(), "{probe:?}");
            let get = probe.http_get.as_ref().expect("an HTTP probe");
            assert_eq!(get.port, IntOrString::Int(ports::METRICS));
            assert_eq!(get.path.as_deref(), Some("/healthz"));
        }
    }
    // Envoy's bootstrap ConfigMap carries the SDS resource naming the mounted files, and
    // chat-xds's configuration points the chatd clusters at the same paths.
    let bootstrap = d
        .config_maps
        .iter()
        .find(|c| c.name_any() == "demo-envoy")
        .and_then(|c| c.data.clone())
        .unwrap();
    let sds: serde_json::Value = serde_yaml::from_str(&bootstrap["internal-tls-sds.yaml"]).unwrap();
    let cert = &sds["resources"][0]["tls_certificate"];
    assert_eq!(
        cert["certificate_chain"]["filename"],
        "/etc/envoy/internal-tls/tls.crt"
    );
    assert_eq!(cert["watched_directory"]["path"], "/etc/envoy/internal-tls");
    let envoy: serde_json::Value = serde_yaml::from_str(&bootstrap["envoy.yaml"]).unwrap();
    let xds_cluster = &envoy["static_resources"]["clusters"][0];
    let matcher = &xds_cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
        ["match_typed_subject_alt_names"][0];
    assert_eq!(
        matcher["matcher"]["exact"],
        "spiffe://chatcluster.io/ns/chat/cluster/demo/xds"
    );
    let config: XdsConfig = serde_yaml::from_str(
        &d.config_maps
            .iter()
            .find(|c| c.name_any() == "demo-xds")
            .and_then(|c| c.data.clone())
            .unwrap()["xds.yaml"],
    )
    .unwrap();
    let upstream = config.upstream_tls.expect("Envoy → chatd over TLS");
    assert_eq!(upstream.sds_file, "/etc/envoy/internal-tls-sds.yaml");
    assert_eq!(upstream.ca_file, "/etc/envoy/internal-tls/ca.crt");
    assert_eq!(upstream.namespace, "chat");

    // Off: no certificate, no mount, no TLS setting anywhere.
    let mut spec = ChatClusterSpec::default();
    spec.internal_tls.enabled = false;
    let plain = build(spec.clone());
    assert!(!secrets::generated(&spec).contains(&secrets::Generated::InternalCa));
    for deployment_name in ["demo-xds", "demo-envoy", "demo-groups"] {
        let template = &deployment(&plain, deployment_name).spec.template;
        let c = container(template);
        assert!(env(c, "CHATD_TLS_DIR").is_none() && env(c, "CHAT_XDS_TLS_DIR").is_none());
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .all(|m| !m.name.contains("internal-tls")),
            "{deployment_name}"
        );
    }
}

#[test]
fn another_clusters_certificate_cannot_be_named_as_the_listeners() {
    let owner = ClusterRef::new(&resource_of(ChatClusterSpec::default())).unwrap();
    let issued = crate::pki::Issued {
        cert_pem: "c".into(),
        key_pem: "k".into(),
        ca_pem: "a".into(),
    };
    let leaves = internal_tls::leaves(
        &owner,
        &ChatClusterSpec::default(),
        crate::pki::LEAF_LIFETIME,
    );
    // Envoy's internal identity, as the operator made it: refused, though kubernetes.io/tls.
    let envoy = internal_tls::leaf_secret(&owner, &leaves[1], &issued);
    let problem =
        secrets::tls_secret_problem("demo-ingress-internal-tls", Some(&envoy)).expect("refused");
    assert_eq!(problem.field, "spec.ingress.tls.secretName");
    assert!(problem.message.contains("the operator made"), "{problem}");
    // Only an owner reference to a ChatCluster left (labels stripped): still refused.
    let mut unlabelled = envoy.clone();
    unlabelled.metadata.labels = None;
    assert!(secrets::tls_secret_problem("x", Some(&unlabelled)).is_some());
    // A user's own certificate passes.
    let mut mine = envoy;
    mine.metadata.labels = None;
    mine.metadata.owner_references = None;
    assert_eq!(secrets::tls_secret_problem("site", Some(&mine)), None);
}
