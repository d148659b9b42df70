//! Endpoint-change convergence: chat-xds against Envoy's own file-based dynamic configuration.
//!
//! `cargo bench -p chat-xds --bench convergence`
//!
//! For 10, 100 and 1000 endpoints of one service and 1 and 20 Envoys: add one endpoint and
//! time until every Envoy lists it (`/clusters`: configuration applied) and until every Envoy
//! has it healthy (first active health check passed: traffic can reach it). Baseline, same
//! run, same cluster settings: the same Envoys configured from files (`path_config_source`),
//! the change written as a new EDS file. Also chat-xds's resident memory and CPU time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use chatcluster_common::procfs;
use chatcluster_harness::{Process, TempDir, envoy_binary, free_port};
use chatcluster_types::xds::LoadBalancing;
use common::{admin_get, service, write_atomically};
use serde_json::json;

const CHANGES: usize = 5;

fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// One listener per endpoint address, all answering gRPC health checks.
async fn backends(n: usize, port: u16) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    for i in 0..n {
        let listener = tokio::net::TcpListener::bind((address(i), port))
            .await
            .unwrap();
        out.push(tokio::spawn(async move {
            let app = axum::Router::new().fallback(|| async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                        bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]),
                    )),
                    Ok(hyper::body::Frame::trailers(trailers)),
                ]);
                axum::response::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(axum::body::Body::new(http_body_util::StreamBody::new(
                        frames,
                    )))
                    .unwrap()
            });
            let _ = axum::serve(listener, app).await;
        }));
    }
    out
}

fn eds_json(n: usize, port: u16) -> serde_json::Value {
    let eps: Vec<_> = (0..n)
        .map(|i| json!({ "endpoint": { "address": { "socket_address": { "address": address(i).to_string(), "port_value": port } } } }))
        .collect();
    json!({ "cluster_name": "auth", "endpoints": [{ "lb_endpoints": eps }] })
}

/// The cluster as chat-xds builds it, but with endpoints from a file.
fn file_cluster(eds_path: &Path, dir: &Path) -> serde_json::Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "auth",
        "type": "EDS",
        "connect_timeout": "1s",
        "ignore_health_on_host_removal": true,
        "lb_policy": "LEAST_REQUEST",
        "eds_cluster_config": { "eds_config": {
            "resource_api_version": "V3",
            "path_config_source": { "path": eds_path, "watched_directory": { "path": dir } }
        }},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "health_checks": [{
            "timeout": "1s", "interval": "2s", "no_traffic_interval": "2s",
            "unhealthy_threshold": 2, "healthy_threshold": 1,
            "grpc_health_check": { "service_name": "chatcluster.auth.v1.Auth" }
        }]
    })
}

fn write_eds_file(path: &Path, n: usize, port: u16) {
    let mut doc = eds_json(n, port);
    doc["@type"] = json!("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
    write_atomically(
        path,
        &serde_json::to_string(&json!({ "resources": [doc] })).unwrap(),
    );
}

fn start_envoy(dir: &Path, name: &str, bootstrap: serde_json::Value) -> (Process, u16) {
    let admin = free_port();
    let mut boot = bootstrap;
    boot["admin"] =
        json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin } } });
    boot["node"] = json!({ "id": name, "cluster": "bench" });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string(&boot).unwrap()).unwrap();
    let process = Process::spawn(
        Command::new(envoy_binary())
            .args([
                "--concurrency",
                "1",
                "--log-level",
                "error",
                "--base-id-path",
            ])
            .arg(dir.join(format!("{name}.base-id")))
            .args(["--use-dynamic-base-id", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    (process, admin)
}

/// (listed, healthy) counts of `addr` across the Envoys.
async fn presence(admins: &[u16], addr: &str) -> (usize, usize) {
    let mut listed = 0;
    let mut healthy = 0;
    for admin in admins {
        let text = admin_get(*admin, "/clusters").await;
        let prefix = format!("auth::{addr}::health_flags::");
        if let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) {
            listed += 1;
            if line.ends_with("healthy") {
                healthy += 1;
            }
        }
    }
    (listed, healthy)
}

/// Whether this machine (2 cores, shared with every Envoy) sustains the health checks of
/// `envoys` × `n` endpoints every 2 s; beyond, only "configuration applied" is measured.
fn measure_health(envoys: usize, n: usize) -> bool {
    envoys * n <= 2000
}

async fn wait_count(admins: &[u16], n: usize, port: u16, healthy_only: bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = true;
        for admin in admins {
            let text = admin_get(*admin, "/clusters").await;
            let healthy = text
                .lines()
                .filter(|l| {
                    l.starts_with("auth::")
                        && l.contains(&format!(":{port}::health_flags::"))
                        && (!healthy_only || l.ends_with("::health_flags::healthy"))
                })
                .count();
            if healthy < n {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoys never had {n} healthy endpoints"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time until every Envoy lists, then has healthy, the endpoint at `addr`.
async fn converge(
    admins: &[u16],
    addr: &str,
    started: Instant,
    health: bool,
) -> (Duration, Duration) {
    let mut listed_at = None;
    let deadline = started + Duration::from_secs(60);
    loop {
        let (listed, healthy) = presence(admins, addr).await;
        if listed == admins.len() && listed_at.is_none() {
            listed_at = Some(started.elapsed());
            if !health {
                return (started.elapsed(), Duration::ZERO);
            }
        }
        if healthy == admins.len() {
            let done = started.elapsed();
            return (listed_at.unwrap_or(done), done);
        }
        assert!(Instant::now() < deadline, "no convergence on {addr}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (RSS in MiB, CPU seconds) of process `pid`.
fn proc_stats(pid: u32) -> (f64, f64) {
    let rss = procfs::rss_bytes(pid).unwrap_or(0) as f64 / (1024.0 * 1024.0);
    (rss, procfs::cpu_seconds(pid).unwrap_or(0.0))
}

fn percentile(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

struct Row {
    listed: Vec<Duration>,
    healthy: Vec<Duration>,
}

async fn run_xds(dir: &Path, envoys: usize, n: usize, port: u16) -> (Row, f64, f64) {
    let xds_port = free_port();
    let endpoints_path = dir.join("endpoints.yaml");
    let write = |count: usize| {
        let list: Vec<_> = (0..count)
            .map(|i| json!({ "address": address(i).to_string(), "port": port }))
            .collect();
        write_atomically(
            &endpoints_path,
            &serde_yaml::to_string(&json!({ "services": { "auth": list } })).unwrap(),
        );
    };
    write(n);
    let config = chatcluster_types::xds::XdsConfig {
        cluster: "bench".into(),
        listener_port: free_port() as i32,
        plaintext_port: None,
        listen_address: None,
        grpc_web: false,
        rate_limit: None,
        services: vec![service("auth", LoadBalancing::LeastRequest)],
        upstream_tls: None,
        kubernetes: None,
    };
    let config_path = dir.join("xds.yaml");
    std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let xds = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_chat-xds"))
            .env("RUST_LOG", "error")
            .env("CHAT_XDS_CONFIG", &config_path)
            .env("CHAT_XDS_ENDPOINTS_FILE", &endpoints_path)
            .env("CHAT_XDS_LISTEN", format!("127.0.0.1:{xds_port}"))
            .env("CHAT_XDS_POLL_MS", "1000"),
    );
    let pid = xds.pid();
    let bootstrap = json!({
        "dynamic_resources": {
            "ads_config": { "api_type": "DELTA_GRPC", "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }] },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} } } },
            "load_assignment": { "cluster_name": "xds", "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": xds_port } } } } ] }] }
        }]}
    });
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for e in 0..envoys {
        let (p, a) = start_envoy(dir, &format!("xds-envoy-{e}"), bootstrap.clone());
        procs.push(p);
        admins.push(a);
    }
    let health = measure_health(envoys, n);
    wait_count(&admins, n, port, health).await;
    let cpu_before = proc_stats(pid).1;
    let row = changes(&admins, n, port, health, write).await;
    let (rss, cpu_after) = proc_stats(pid);
    drop(procs);
    drop(xds);
    (row, rss, cpu_after - cpu_before)
}

async fn run_files(dir: &Path, envoys: usize, n: usize, port: u16) -> Row {
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    let mut eds_paths = Vec::new();
    for e in 0..envoys {
        // Each Envoy its own watched directory, as with a ConfigMap per pod.
        let d = dir.join(format!("files-{e}"));
        std::fs::create_dir_all(&d).unwrap();
        let (cds, eds) = (d.join("cds.json"), d.join("eds.json"));
        write_eds_file(&eds, n, port);
        write_atomically(
            &cds,
            &serde_json::to_string(&json!({ "resources": [file_cluster(&eds, &d)] })).unwrap(),
        );
        let bootstrap = json!({ "dynamic_resources": { "cds_config": {
            "resource_api_version": "V3",
            "path_config_source": { "path": cds, "watched_directory": { "path": d } }
        }}});
        let (p, a) = start_envoy(dir, &format!("file-envoy-{e}"), bootstrap);
        procs.push(p);
        admins.push(a);
        eds_paths.push(eds);
    }
    let health = measure_health(envoys, n);
    wait_count(&admins, n, port, health).await;
    let row = changes(&admins, n, port, health, |count| {
        for eds in &eds_paths {
            write_eds_file(eds, count, port);
        }
    })
    .await;
    drop(procs);
    row
}

/// Add one endpoint [`CHANGES`] times through `write` (which is handed the new count), timing
/// each until every Envoy lists and then finds healthy the newest.
async fn changes(
    admins: &[u16],
    n: usize,
    port: u16,
    health: bool,
    mut write: impl FnMut(usize),
) -> Row {
    let mut row = Row {
        listed: vec![],
        healthy: vec![],
    };
    for change in 0..CHANGES {
        let count = n + change + 1;
        let started = Instant::now();
        write(count);
        let (l, h) = converge(
            admins,
            &format!("{}:{port}", address(count - 1)),
            started,
            health,
        )
        .await;
        row.listed.push(l);
        row.healthy.push(h);
    }
    row
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let port = free_port();
        let _backends = backends(1000 + CHANGES, port).await;
        println!("endpoint-change convergence, {CHANGES} changes per row, ms (p50 / p99 over the changes)");
        println!("baseline = the same Envoys configured from watched files (path_config_source), same run\n");
        println!(
            "{:>9} {:>6} {:>21} {:>21} {:>21} {:>21} {:>9} {:>10} {:>9}",
            "endpoints", "envoys", "xds: all listed", "files: all listed", "xds: all healthy", "files: all healthy",
            "listed x", "xds RSS MB", "xds CPU s"
        );
        for n in [10usize, 100, 1000] {
            for envoys in [1usize, 20] {
                if envoys * n > 2000 {
                    // 20 Envoys each health-checking 1000 hosts every 2 s (10k checks/s, plus
                    // 20 Envoy main threads) do not fit in 2 cores: nothing converges there.
                    println!("{n:>9} {envoys:>6}   not measurable on this machine (health-check load on 2 cores)");
                    continue;
                }
                let dir = TempDir::new("xds-bench");
                let (xds, rss, cpu) = run_xds(dir.path(), envoys, n, port).await;
                let files = run_files(dir.path(), envoys, n, port).await;
                let fmt = |v: &Vec<Duration>| format!("{:.0} / {:.0}", percentile(v.clone(), 0.5), percentile(v.clone(), 0.99));
                let fmt_health = |v: &Vec<Duration>| {
                    if measure_health(envoys, n) {
                        fmt(v)
                    } else {
                        "- (HC load)".to_string()
                    }
                };
                println!(
                    "{:>9} {:>6} {:>21} {:>21} {:>21} {:>21} {:>9.2} {:>10.1} {:>9.2}",
                    n,
                    envoys,
                    fmt(&xds.listed),
                    fmt(&files.listed),
                    fmt_health(&xds.healthy),
                    fmt_health(&files.healthy),
                    percentile(xds.listed.clone(), 0.5) / percentile(files.listed.clone(), 0.5).max(0.001),
                    rss,
                    cpu
                );
            }
        }
    });
}
