//! The Envoy bootstrap the operator writes is accepted by a real Envoy, and its readiness
//! listener exposes `/ready` and metrics but not the rest of the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::Command,
    time::{Duration, SystemTime},
};

use chat_operator::{
    api::{ChatCluster, ChatClusterSpec, ValidatedCluster},
    build::{self, Observed},
    pki::{Ca, Leaf},
};
use chatcluster_tests::{Process, TempDir, envoy_binary, free_port};
use chatcluster_types::identity::{Identity, component};
use kube::ResourceExt;

/// The bootstrap ConfigMap's files and the internal certificate Secret's, as the pod mounts
/// them, written below `dir` (for `/etc/envoy`); the bootstrap's path.
fn mount_bootstrap(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.display().to_string();
    let files = bootstrap_files();
    for (name, text) in &files {
        std::fs::write(dir.join(name), text.replace("/etc/envoy", &root)).unwrap();
    }
    // The Secret the reconciler issues, from the cluster's CA.
    let ca = Ca::generate("chat", "demo", SystemTime::now()).unwrap();
    let issued = ca
        .issue(
            &Leaf {
                identity: Identity::new("chat", "demo", component::INGRESS),
                dns_names: Vec::new(),
                lifetime: Duration::from_secs(3600),
            },
            SystemTime::now(),
        )
        .unwrap();
    let tls = dir.join("internal-tls");
    std::fs::create_dir(&tls).unwrap();
    for (name, text) in [
        ("tls.crt", &issued.cert_pem),
        ("tls.key", &issued.key_pem),
        ("ca.crt", &issued.ca_pem),
    ] {
        std::fs::write(tls.join(name), text).unwrap();
    }
    dir.join("envoy.yaml")
}

fn bootstrap_files() -> std::collections::BTreeMap<String, String> {
    let mut resource = ChatCluster::new("demo", ChatClusterSpec::default());
    resource.metadata.namespace = Some("chat".into());
    resource.metadata.uid = Some("uid".into());
    let validated = ValidatedCluster::new("demo", &resource.spec).unwrap();
    let cluster = build::ClusterRef::new(&resource).unwrap();
    let desired = build::desired(&cluster, &validated, &Observed::default()).unwrap();
    desired
        .config_maps
        .iter()
        .find(|c| c.name_any() == "demo-envoy")
        .and_then(|c| c.data.clone())
        .expect("bootstrap ConfigMap")
}

#[test]
fn envoy_validates_the_bootstrap() {
    let dir = TempDir::new("envoy-validate");
    let path = mount_bootstrap(dir.path());
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--service-node", "demo-envoy-0", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy rejected the bootstrap:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http_get(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn readiness_listener_exposes_only_ready_and_metrics() {
    // The same bootstrap, moved to free ports so tests can run side by side.
    let (admin, ready) = (free_port(), free_port());
    let dir = TempDir::new("envoy-ready");
    let path = mount_bootstrap(dir.path());
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("port_value: 19000", &format!("port_value: {admin}"))
        .replace("port_value: 19001", &format!("port_value: {ready}"));
    std::fs::write(&path, yaml).unwrap();
    let mut envoy = Process::spawn(
        Command::new(envoy_binary())
            .args(["--service-node", "demo-envoy-0", "--base-id-path"])
            .arg(dir.path().join("base-id"))
            .args(["--use-dynamic-base-id", "--log-level", "error", "-c"])
            .arg(&path),
    );
    // Envoy waits for its first configuration (none comes: no chat-xds) for the bootstrap's
    // initial fetch timeout before it opens any listener.
    let mut metrics = None;
    for _ in 0..300 {
        assert!(envoy.running(), "envoy exited");
        metrics = http_get(ready, "/stats/prometheus");
        if metrics.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metrics, Some(200));
    // Once the initial fetch has timed out Envoy reports itself live (serving whatever it
    // has); before that it answers nothing at all, so a probe cannot pass early.
    assert_eq!(http_get(ready, "/ready"), Some(200));
    // The admin API's dangerous endpoints are not reachable through the pod's port.
    assert_eq!(http_get(ready, "/config_dump"), Some(404));
    assert_eq!(http_get(ready, "/quitquitquit"), Some(404));
}
