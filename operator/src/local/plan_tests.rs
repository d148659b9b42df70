//! The plan as plain data: ports, files, environments and bootstraps of every process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::*;
use crate::api::file::from_yaml;

fn options() -> Options {
    Options {
        data_dir: "/data".into(),
        base_port: 20000,
        port: 8443,
        plaintext_port: 8080,
        listen_address: std::net::Ipv4Addr::LOCALHOST.into(),
        binaries: Binaries {
            chatd: "/bin/chatd".into(),
            xds: "/bin/chat-xds".into(),
            envoy: "/bin/envoy".into(),
            mariadbd: "/bin/mariadbd".into(),
            install_db: "/bin/mariadb-install-db".into(),
            prometheus: Some("/bin/prometheus".into()),
            nats_server: "/bin/nats-server".into(),
        },
    }
}

const HA: &str = "
apiVersion: chatcluster.io/v1alpha1
kind: ChatCluster
metadata: { name: ha }
spec:
  services:
    auth: { replicas: 2 }
    groups: { autoscaling: { minReplicas: 2, maxReplicas: 5 } }
  database: { engine: mariadb, replicas: 2, failover: { timeoutSeconds: 3 } }
  ingress: { replicas: 2 }
  xds: { replicas: 2 }
";

#[test]
fn envoy_binds_the_address_it_is_given() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    assert_eq!(
        p.xds_config.listen_address,
        Some(std::net::Ipv4Addr::LOCALHOST.into())
    );
    let anywhere = Options {
        listen_address: std::net::Ipv4Addr::UNSPECIFIED.into(),
        ..options()
    };
    let p = plan(&from_yaml(HA).unwrap(), &anywhere).unwrap();
    assert_eq!(
        p.xds_config.listen_address,
        Some(std::net::Ipv4Addr::UNSPECIFIED.into())
    );
}

#[test]
fn every_process_of_the_file_gets_a_fixed_port() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    assert_eq!(
        p.databases
            .iter()
            .map(|d| (d.name.as_str(), d.port))
            .collect::<Vec<_>>(),
        [("db-0", 20000), ("db-1", 20001), ("db-2", 20002)]
    );
    let groups = p.service(ServiceKind::Groups).unwrap();
    assert_eq!((groups.initial, groups.bounds), (2, (2, 5)));
    let auth = p.service(ServiceKind::Auth).unwrap();
    assert_eq!((auth.initial, auth.bounds), (2, (2, 2)));
    assert_ne!(groups.port(0), auth.port(0));
    assert_eq!(
        p.xds.iter().map(|l| l.port).collect::<Vec<_>>(),
        [20020, 20021]
    );
    assert_eq!(
        p.envoys.iter().map(|l| l.port).collect::<Vec<_>>(),
        [20040, 20041]
    );
    let mut ports = p.ports();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n, "no port is used twice");
    assert!(!ports.contains(&8443) && !ports.contains(&8080));
    assert_eq!(p.policy.failover_timeout, Duration::from_secs(3));
    assert!(p.policy.semi_sync);
}

#[test]
fn chatd_replicas_follow_the_published_primary_and_share_the_broker() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let creds = secrets::DbCredentials::generate();
    let groups = p.service(ServiceKind::Groups).unwrap();
    let l = p.chatd_launch(groups, 1, &creds);
    assert_eq!(l.name, "groups-1");
    assert_eq!(l.env["CHATD_SERVICES"], "groups");
    assert_eq!(
        l.env["CHATD_LISTEN"],
        format!("127.0.0.1:{}", groups.port(1))
    );
    assert_eq!(l.env["CHATD_DB_PRIMARY_FILE"], "/data/run/primary");
    assert_eq!(l.env["CHATD_DB_REPLICAS"], "127.0.0.1:20001");
    assert_eq!(l.env["CHATD_DB_PASSWORD"], creds.app());
    assert_eq!(
        l.env["CHATD_BROKER"],
        format!("127.0.0.1:{}", p.broker.port),
        "every replica shares the broker"
    );
    assert_eq!(p.broker.args, ["-c", "/data/run/nats.conf"]);
    assert!(p.ports().contains(&p.broker.port));
    assert!(
        !l.env.contains_key("CHATD_TOKEN_PRIVATE_KEY_FILE"),
        "only auth signs"
    );
    let auth = p.service(ServiceKind::Auth).unwrap();
    assert!(
        p.chatd_launch(auth, 0, &creds)
            .env
            .contains_key("CHATD_TOKEN_PRIVATE_KEY_FILE")
    );
}

#[test]
fn the_database_runs_the_operators_configuration_with_its_own_identity() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let cnf = p.database_config(&p.databases[2], false);
    assert!(!cnf.contains("user=root"));
    assert!(
        p.database_config(&p.databases[2], true)
            .ends_with("user=root\n")
    );
    assert!(cnf.starts_with("[mariadb]\n"), "{cnf}");
    for line in [
        "read_only=ON",
        "gtid_strict_mode=ON",
        "rpl_semi_sync_master_wait_point=AFTER_SYNC",
        "server_id=3",
        "port=20002",
        "datadir=/data/db/db-2/data",
        "init_file=/data/db/db-2/init.sql",
    ] {
        assert!(cnf.lines().any(|l| l == line), "{line} missing from\n{cnf}");
    }
    let creds = secrets::DbCredentials::generate();
    let sql = p.database_init_sql(&creds);
    assert!(sql.starts_with("SET SESSION sql_log_bin = 0;"), "{sql}");
    assert!(sql.contains(&format!("IDENTIFIED BY '{}'", creds.admin())));
    assert!(sql.contains("GRANT REPLICATION SLAVE ON *.* TO 'chatcluster-repl'@'%'"));
    assert!(
        !sql.contains("ALL PRIVILEGES ON *.*"),
        "least privilege: {sql}"
    );
}

#[test]
fn envoys_share_the_ingress_and_reach_every_xds_replica() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    assert_eq!(p.xds_config.listener_port, 8443);
    assert_eq!(p.xds_config.plaintext_port, Some(8080));
    assert!(p.xds_config.grpc_web);
    let boot = &p.envoy_bootstraps[1];
    assert_eq!(
        boot["admin"]["address"]["socket_address"]["port_value"],
        20041
    );
    let xds =
        &boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"];
    assert_eq!(xds.as_array().unwrap().len(), 2);
    assert_eq!(boot["static_resources"]["listeners"], serde_json::json!([]));
    assert!(p.envoys[1].args.contains(&"ha-envoy-1".to_string()));
}

#[test]
fn the_endpoints_file_lists_the_serving_replicas() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let groups = p.service(ServiceKind::Groups).unwrap();
    let serving = BTreeMap::from([(ServiceKind::Groups, vec![0, 2])]);
    let doc = p.endpoints_file(&serving);
    assert_eq!(
        doc["services"]["groups"],
        serde_json::json!([
            { "address": "127.0.0.1", "port": groups.port(0) },
            { "address": "127.0.0.1", "port": groups.port(2) }
        ])
    );
    assert_eq!(doc["services"]["auth"], serde_json::json!([]));
    assert_eq!(doc["certificate"]["certFile"], "/data/secrets/tls.crt");
}

#[test]
fn what_cannot_run_locally_is_refused_naming_the_field() {
    let big = HA.replace("maxReplicas: 5", "maxReplicas: 60");
    let e = plan(&from_yaml(&big).unwrap(), &options())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.services.groups.autoscaling.maxReplicas"),
        "{e}"
    );
    let invalid = HA.replace(
        "minReplicas: 2, maxReplicas: 5",
        "minReplicas: 6, maxReplicas: 5",
    );
    let e = plan(&from_yaml(&invalid).unwrap(), &options())
        .unwrap_err()
        .to_string();
    assert!(e.contains("maxReplicas"), "{e}");
    let mut o = options();
    o.base_port = 65000;
    assert!(
        plan(&from_yaml(HA).unwrap(), &o)
            .unwrap_err()
            .to_string()
            .contains("--base-port")
    );
}

/// Paths in arguments (`--flag=/path`, `/path`), environment values and the server's
/// configuration lines (`datadir = /path`): a value that names a file starts with `/`.
fn relative_paths<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v.rsplit_once('=').map_or(v, |(_, value)| value).trim())
        .filter(|v| v.contains('/') && !v.contains("://") && !v.starts_with('/'))
        .map(str::to_string)
        .collect()
}

#[test]
fn prometheus_scrapes_every_process_labelled_as_in_kubernetes() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let m = p.monitor.as_ref().unwrap();
    assert_eq!(m.launch.port, 20051);
    assert!(p.ports().contains(&20051));
    let groups = p.service(ServiceKind::Groups).unwrap();
    let serving = BTreeMap::from([(ServiceKind::Groups, vec![0, 2])]);
    let targets = p.scrape_targets(&serving);
    let listed: Vec<(String, String, String)> = targets
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let l = &t["labels"];
            assert_eq!(l["namespace"], "local");
            assert_eq!(l["cluster"], "ha");
            (
                t["targets"][0].as_str().unwrap().to_string(),
                l["instance"].as_str().unwrap().to_string(),
                l["__metrics_path__"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let target = |port: u16, instance: &str, path: &str| {
        (
            format!("127.0.0.1:{port}"),
            instance.to_string(),
            path.to_string(),
        )
    };
    assert_eq!(
        listed,
        [
            target(groups.port(0) + 1, "groups-0", "/metrics"),
            target(groups.port(2) + 1, "groups-2", "/metrics"),
            target(20030, "xds-0", "/metrics"),
            target(20031, "xds-1", "/metrics"),
            target(20040, "envoy-0", "/stats/prometheus"),
            target(20041, "envoy-1", "/stats/prometheus"),
        ]
    );
    let config = p.prometheus_config(m);
    let jobs = config["scrape_configs"].as_array().unwrap();
    assert_eq!(
        jobs[0]["file_sd_configs"][0]["files"][0],
        "/data/prometheus/targets.json"
    );
    // The runner's series name their cluster themselves.
    assert_eq!(jobs[1]["honor_labels"], true);
    assert_eq!(
        jobs[1]["static_configs"][0]["targets"][0],
        "127.0.0.1:20050"
    );
    assert!(
        p.prometheus_rules()
            .contains(r#"namespace="local",cluster="ha""#)
    );

    // Turned off, or not installed: no Prometheus, and its port is not held.
    let mut off = from_yaml(HA).unwrap();
    off.spec.monitoring.enabled = false;
    assert!(plan(&off, &options()).unwrap().monitor.is_none());
    let mut o = options();
    o.binaries.prometheus = None;
    let p = plan(&from_yaml(HA).unwrap(), &o).unwrap();
    assert!(p.monitor.is_none() && !p.ports().contains(&20051));
}

#[test]
fn children_get_only_absolute_paths() {
    let mut o = options();
    o.data_dir = ".chatcluster/ha".into();
    let e = plan(&from_yaml(HA).unwrap(), &o).unwrap_err().to_string();
    assert!(
        e.contains("data directory") && e.contains(".chatcluster/ha"),
        "{e}"
    );
    let mut o = options();
    o.binaries.envoy = "bin/envoy".into();
    let e = plan(&from_yaml(HA).unwrap(), &o).unwrap_err().to_string();
    assert!(e.contains("envoy") && e.contains("bin/envoy"), "{e}");

    // A data directory too deep for the servers' sockets is refused, naming it.
    let mut o = options();
    o.data_dir = PathBuf::from("/").join("d".repeat(100));
    let e = plan(&from_yaml(HA).unwrap(), &o).unwrap_err().to_string();
    assert!(e.contains("--data-dir") && e.contains("too long"), "{e}");

    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let creds = secrets::DbCredentials::generate();
    let mut launches: Vec<Launch> = p.databases.iter().map(|d| p.database_launch(d)).collect();
    launches.extend(p.xds.iter().cloned());
    launches.extend(p.envoys.iter().cloned());
    for s in &p.services {
        launches.push(p.chatd_launch(s, 0, &creds));
    }
    for l in &launches {
        assert!(
            l.program.is_absolute(),
            "{}: {}",
            l.name,
            l.program.display()
        );
        let values = l.args.iter().chain(l.env.values()).map(String::as_str);
        assert_eq!(relative_paths(values), Vec::<String>::new(), "{}", l.name);
    }
    for db in &p.databases {
        let config = p.database_config(db, true);
        assert_eq!(
            relative_paths(config.lines()),
            Vec::<String>::new(),
            "{config}"
        );
    }
    let endpoints = p.endpoints_file(&BTreeMap::new());
    for file in ["certFile", "keyFile"] {
        let path = endpoints["certificate"][file].as_str().unwrap();
        assert!(path.starts_with('/'), "{file}: {path}");
    }
}

#[test]
fn internal_tls_gives_every_process_its_own_certificate_directory() {
    let p = plan(&from_yaml(HA).unwrap(), &options()).unwrap();
    let components: Vec<&str> = p
        .certificates
        .iter()
        .map(|l| l.identity.component.as_str())
        .collect();
    assert_eq!(
        components,
        [
            "xds", "ingress", "db", "broker", "auth", "groups", "dms", "servers", "gateway"
        ]
    );
    // The servers serve TLS from their directory, and the loop's policy verifies them.
    let config = p.database_config(&p.databases[0], false);
    let dir = p.files.tls_dir("db").display().to_string();
    assert!(
        config.contains(&format!("ssl_cert={dir}/tls.crt\n")),
        "{config}"
    );
    assert!(config.contains("require_secure_transport=ON\n"), "{config}");
    assert_eq!(p.policy.tls_ca, Some(format!("{dir}/ca.crt")));
    // The broker takes only clients with the cluster's certificates, on loopback.
    let broker = p.broker_config();
    let broker_dir = p.files.tls_dir("broker").display().to_string();
    assert!(
        broker.contains(&format!("cert_file: \"{broker_dir}/tls.crt\"")),
        "{broker}"
    );
    assert!(broker.contains("verify: true") && broker.contains("listen: \"127.0.0.1:"));
    assert!(
        p.certificates
            .iter()
            .all(|l| l.identity.namespace == "local")
    );
    assert_eq!(
        p.xds[0].env.get("CHAT_XDS_TLS_DIR").map(String::as_str),
        Some("/data/pki/xds")
    );
    let groups = p.service(ServiceKind::Groups).unwrap();
    let credentials = secrets::DbCredentials::generate();
    let launch = p.chatd_launch(groups, 0, &credentials);
    assert_eq!(
        launch.env.get("CHATD_TLS_DIR").map(String::as_str),
        Some("/data/pki/groups")
    );
    let upstream = p
        .xds_config
        .upstream_tls
        .clone()
        .expect("Envoy → chatd over TLS");
    assert_eq!(upstream.ca_file, "/data/pki/ingress/ca.crt");
    assert_eq!(upstream.namespace, "local");
    let boot = &p.envoy_bootstraps[0];
    let xds = &boot["static_resources"]["clusters"][0];
    assert_eq!(
        xds["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
            [0]["matcher"]["exact"],
        "spiffe://chatcluster.io/ns/local/cluster/ha/xds"
    );

    // Off: plain text everywhere, no certificate to keep.
    let off = HA.replace(
        "  xds: { replicas: 2 }",
        "  xds: { replicas: 2 }\n  internalTls: { enabled: false }",
    );
    let p = plan(&from_yaml(&off).unwrap(), &options()).unwrap();
    assert!(p.certificates.is_empty());
    assert!(p.xds_config.upstream_tls.is_none());
    assert_eq!(p.policy.tls_ca, None, "replication in plain text");
    assert!(!p.xds[0].env.contains_key("CHAT_XDS_TLS_DIR"));
    let groups = p.service(ServiceKind::Groups).unwrap();
    assert!(
        !p.chatd_launch(groups, 0, &credentials)
            .env
            .contains_key("CHATD_TLS_DIR")
    );
    assert!(p.envoy_bootstraps[0]["static_resources"]["clusters"][0]["transport_socket"].is_null());
}
