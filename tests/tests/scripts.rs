//! The project's shell scripts: shellcheck-clean, and the k3d scripts' parts that need no
//! cluster (k3d cannot run here: it pulls its node image from Docker Hub).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    chatcluster_tests::repo()
}

fn scripts() -> Vec<PathBuf> {
    let mut out = vec![root().join(".ci/run")];
    for dir in ["scripts", "k3d"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_script_is_shellcheck_clean() {
    let scripts = scripts();
    assert!(scripts.len() >= 9, "{scripts:?}");
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root())
        .output()
        .expect("shellcheck (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn k3d_scripts_know_the_release_and_name_what_is_missing() {
    // The image tag defaults to the workspace version.
    let out = Command::new("bash")
        .args([
            "-c",
            "source k3d/lib.sh && echo \"$TAG $CLUSTER_NAME $NAMESPACE\"",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} chatcluster chat", env!("CARGO_PKG_VERSION"))
    );
    // Without k3d on the PATH, a script stops at once and says what is missing.
    let out = Command::new("bash")
        .arg(root().join("k3d/create.sh"))
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing k3d"));
    // The cluster config parses and maps the ingress to the host.
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("k3d/cluster.yaml")).unwrap())
            .unwrap();
    assert_eq!(config["kind"], "Simple");
    assert_eq!(config["servers"], 1);
    assert_eq!(config["agents"], 2);
    assert_eq!(config["ports"][0]["port"], "8443:443");
}

/// The end-to-end driver k3d/e2e.sh runs: without a cluster it fails at its first step and
/// says which (it never passes without one).
#[test]
fn e2e_driver_fails_clearly_without_a_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_e2e"))
        .args(["--namespace", "nowhere", "--cluster", "none"])
        // No kubectl here, or one with no cluster to talk to: either way, no cluster.
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kubectl"), "{err}");
    // And the script checks its tools first.
    let out = Command::new("bash")
        .arg(root().join("k3d/e2e.sh"))
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
}
