//! chat-xds as a process: it stops at once on SIGTERM with Envoys connected (in its image it
//! is PID 1, so without a handler the signal would be ignored), and reading the files it
//! watches — as chatd and Envoy do in local mode — does not wake it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use chatcluster_common::procfs;
use common::{
    admin_get, certificate, eventually, one_auth, serves_certificate, tls_stack, write_endpoints,
};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_chat_xds_within_two_seconds_with_an_envoy_connected() {
    let (_b, mut stack) = one_auth("DELTA_GRPC").await;
    let http = stack.http;
    eventually("Envoy connected", Duration::from_secs(10), || async move {
        admin_get(http, "/metrics")
            .await
            .contains("chat_xds_envoys 1")
    })
    .await;
    let mut xds = stack.xds.take().unwrap();
    xds.terminate();
    let status = xds
        .wait_exit(Duration::from_secs(2))
        .expect("chat-xds still running 2 s after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_the_watched_files_does_not_wake_chat_xds() {
    let certs = chatcluster_harness::TempDir::new("xds-certs");
    let (_backend, _, stack, _) = tls_stack(certs.path()).await;
    let pid = stack.xds.as_ref().unwrap().pid();
    // Others read every file in the watched directories, as chatd reads the primary's
    // address every second beside the endpoints file.
    let files: BTreeMap<_, _> = std::fs::read_dir(stack.dir.path())
        .unwrap()
        .chain(std::fs::read_dir(certs.path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), ()))
        .collect();
    // Every 20 ms: 50 times as often as chatd reads its file. notify's thread still wakes on
    // each open (inotify's IN_OPEN is in its mask, whatever the handler keeps); at every 5 ms
    // that alone cost 2–3 % of a core, and 7 % once in CI.
    let before = procfs::cpu_seconds(pid).unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for file in files.keys() {
            let _ = std::fs::read(file).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let share = (procfs::cpu_seconds(pid).unwrap() - before) / started.elapsed().as_secs_f64();
    eprintln!(
        "chat-xds: {:.2} % of a core while its files were read",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "chat-xds used {:.1} % of a core while its files were read",
        share * 100.0
    );
}

/// The endpoints file names certificate files that do not exist yet (the change is refused,
/// the last good certificate kept); when they appear, they are served, although the
/// endpoints file itself did not change again.
#[tokio::test(flavor = "multi_thread")]
async fn certificate_files_named_before_they_exist_are_served_once_they_appear() {
    let certs = chatcluster_harness::TempDir::new("xds-certs-later");
    let (_backend, mut inputs, stack, _) = tls_stack(certs.path()).await;
    let port = stack.tls_port;

    // Beside the endpoints file, so the directory watch sees them arrive.
    let made = chatcluster_harness::TempDir::new("xds-certs-made");
    let (cert_c, key_c, fp_c) = certificate(made.path(), "c");
    let (later_cert, later_key) = (
        stack.dir.path().join("c.crt"),
        stack.dir.path().join("c.key"),
    );
    inputs.certificate = Some((later_cert.clone(), later_key.clone()));
    write_endpoints(&stack.endpoints, &inputs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::copy(&key_c, &later_key).unwrap();
    std::fs::copy(&cert_c, &later_cert).unwrap();
    serves_certificate(port, &fp_c).await;
}
