//! chat-xds driving a real Envoy (State-of-the-World and Delta): gRPC routed by package to each
//! service's backends, spread over them, following endpoint changes, and a malformed endpoints
//! file refused with the last good state kept. Asserted through traffic and Envoy's admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request as HttpRequest, response::Response};
use bytes::Bytes;
use chat_operator::{
    api::LoadBalancing,
    build::{XdsConfig, XdsService},
};
use chatcluster_tests::{Process, TempDir, envoy_binary, free_port};
use envoy_types::pb::google::protobuf::Empty;
use http::{HeaderMap, HeaderValue};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::json;
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

/// A gRPC backend answering every call with an empty message and an `x-backend` header naming
/// itself, and its health checks with SERVING.
async fn backend(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(move |req: HttpRequest<Body>| async move {
        // Health: HealthCheckResponse { status: SERVING } is the two bytes 08 01.
        let payload: &[u8] = if req.uri().path() == "/grpc.health.v1.Health/Check" {
            &[0x08, 0x01]
        } else {
            &[]
        };
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
            Ok(Frame::trailers(trailers)),
        ]);
        Response::builder()
            .header("content-type", "application/grpc")
            .header("x-backend", name)
            .body(Body::new(StreamBody::new(frames)))
            .unwrap()
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn service(name: &str, lb: LoadBalancing) -> XdsService {
    let title: String = name[..1].to_uppercase() + &name[1..];
    XdsService {
        name: name.into(),
        grpc_package: format!("chatcluster.{name}.v1"),
        health_service: format!("chatcluster.{name}.v1.{title}"),
        kubernetes_service: format!("demo-{name}"),
        port: 50051,
        load_balancing: lb,
        hash_header: None,
    }
}

fn write_endpoints(path: &Path, services: &BTreeMap<&str, Vec<u16>>) {
    let doc = json!({
        "services": services
            .iter()
            .map(|(name, ports)| {
                (name.to_string(), json!(ports.iter().map(|p| json!({ "address": "127.0.0.1", "port": p })).collect::<Vec<_>>()))
            })
            .collect::<serde_json::Map<_, _>>()
    });
    // Write then rename, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Stack {
    _dir: TempDir,
    _xds: Process,
    envoy: Process,
    endpoints: std::path::PathBuf,
    ingress: u16,
    admin: u16,
}

fn start(api_type: &str, services: &BTreeMap<&str, Vec<u16>>) -> Stack {
    let dir = TempDir::new("xds-envoy");
    let (xds_port, ingress, admin) = (free_port(), free_port(), free_port());
    let config = XdsConfig {
        cluster: "demo".into(),
        namespace: "chat".into(),
        endpoint_selector: "chatcluster.io/cluster=demo".into(),
        listener_port: free_port() as i32,
        plaintext_port: Some(ingress as i32),
        tls_secret: "demo-tls".into(),
        grpc_web: true,
        leader_lease: "demo-xds-leader".into(),
        services: vec![
            service("auth", LoadBalancing::RoundRobin),
            service("groups", LoadBalancing::LeastRequest),
        ],
    };
    let config_path = dir.path().join("xds.yaml");
    std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    write_endpoints(&endpoints, services);
    let xds = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_chat-xds"))
            .env("RUST_LOG", "warn")
            .env("CHAT_XDS_CONFIG", &config_path)
            .env("CHAT_XDS_ENDPOINTS_FILE", &endpoints)
            .env("CHAT_XDS_LISTEN", format!("127.0.0.1:{xds_port}"))
            .env("CHAT_XDS_POLL_MS", "20"),
    );
    let socket =
        |port: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
    let bootstrap = json!({
        "node": { "id": format!("envoy-{api_type}"), "cluster": "demo-envoy" },
        "admin": { "address": socket(admin) },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [{
            "name": "xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            },
            "load_assignment": { "cluster_name": "xds", "endpoints": [{ "lb_endpoints": [
                { "endpoint": { "address": socket(xds_port) } }
            ]}]}
        }]}
    });
    let boot_path = dir.path().join("envoy.yaml");
    std::fs::write(&boot_path, serde_yaml::to_string(&bootstrap).unwrap()).unwrap();
    let envoy = Process::spawn(
        Command::new(envoy_binary())
            .args(["--base-id-path"])
            .arg(dir.path().join("base-id"))
            .args(["--use-dynamic-base-id", "--log-level", "error", "-c"])
            .arg(&boot_path)
            .stdout(std::process::Stdio::null()),
    );
    Stack {
        _dir: dir,
        _xds: xds,
        envoy,
        endpoints,
        ingress,
        admin,
    }
}

async fn admin_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Healthy endpoints Envoy has for `cluster`, from `/clusters`.
async fn healthy_ports(admin: u16, cluster: &str) -> Vec<u16> {
    let text = admin_get(admin, "/clusters").await;
    let mut ports: Vec<u16> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{cluster}::127.0.0.1:"))
                && l.contains("::health_flags::healthy")
        })
        .filter_map(|l| l.split("::").nth(1)?.rsplit(':').next()?.parse().ok())
        .collect();
    ports.sort();
    ports
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Call `path` through Envoy; the backend that answered.
async fn call(channel: &Channel, path: &'static str) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<Empty, Empty> = tonic_prost::ProstCodec::default();
    let resp = grpc
        .unary(
            tonic::Request::new(Empty {}),
            PathAndQuery::from_static(path),
            codec,
        )
        .await?;
    Ok(resp
        .metadata()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

async fn routes_spreads_and_follows_endpoints(api_type: &str) {
    let (a1, a2, g1) = (
        backend("auth-1").await,
        backend("auth-2").await,
        backend("groups-1").await,
    );
    let mut services = BTreeMap::from([("auth", vec![a1, a2]), ("groups", vec![g1])]);
    let mut stack = start(api_type, &services);
    let admin = stack.admin;
    eventually(
        "both auth endpoints healthy in Envoy",
        Duration::from_secs(20),
        || async move {
            healthy_ports(admin, "auth").await.len() == 2
                && healthy_ports(admin, "groups").await.len() == 1
        },
    )
    .await;
    assert!(stack.envoy.running());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", stack.ingress))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Routed by package; round robin spreads over both auth backends.
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let who = call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap();
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["auth-1", "auth-2"],
        "{seen:?}"
    );
    assert!(
        seen.values().all(|n| *n >= 8),
        "round robin is even: {seen:?}"
    );
    assert_eq!(
        call(&channel, "/chatcluster.groups.v1.Groups/SendMessage")
            .await
            .unwrap(),
        "groups-1"
    );
    // A package no service owns is not routed.
    let unrouted = call(&channel, "/chatcluster.billing.v1.Billing/Pay")
        .await
        .unwrap_err();
    assert_eq!(unrouted.code(), tonic::Code::Unimplemented, "{unrouted:?}");

    // Remove auth-1: traffic follows within moments, with no failed call.
    services.insert("auth", vec![a2]);
    write_endpoints(&stack.endpoints, &services);
    eventually(
        "auth-1 gone from Envoy",
        Duration::from_secs(10),
        || async move { healthy_ports(admin, "auth").await == vec![a2] },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            call(&channel, "/chatcluster.auth.v1.Auth/Login")
                .await
                .unwrap(),
            "auth-2"
        );
    }

    // A malformed endpoints file is refused; Envoy keeps the last good configuration.
    let tmp = stack.endpoints.with_extension("tmp");
    std::fs::write(&tmp, "services: [this is not a map").unwrap();
    std::fs::rename(&tmp, &stack.endpoints).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(healthy_ports(admin, "auth").await, vec![a2]);
    assert_eq!(
        call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap(),
        "auth-2"
    );

    // Adding endpoints back: both take traffic again.
    services.insert("auth", vec![a1, a2]);
    write_endpoints(&stack.endpoints, &services);
    eventually("auth-1 back", Duration::from_secs(10), || async move {
        healthy_ports(admin, "auth").await.len() == 2
    })
    .await;
    // Envoy's admin view is its main thread's; workers follow a moment later.
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && Instant::now() < deadline {
        *seen
            .entry(
                call(&channel, "/chatcluster.auth.v1.Auth/Login")
                    .await
                    .unwrap(),
            )
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sotw_routes_spreads_and_follows_endpoints() {
    routes_spreads_and_follows_endpoints("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_routes_spreads_and_follows_endpoints() {
    routes_spreads_and_follows_endpoints("DELTA_GRPC").await;
}
