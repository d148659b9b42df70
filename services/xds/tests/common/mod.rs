//! A control plane and a real Envoy for tests: test gRPC backends that name themselves in an
//! `x-backend` header and can be killed, chat-xds as a process, Envoy on free ports, and
//! helpers reading Envoy's admin API.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request as HttpRequest, response::Response};
use bytes::Bytes;
use chatcluster_harness::{Process, TempDir, envoy_binary, free_port};
use chatcluster_types::xds::{LoadBalancing, XdsConfig, XdsService};
use envoy_types::pb::google::protobuf::Empty;
use http::{HeaderMap, HeaderValue};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::task::JoinSet;
use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

/// A test backend; dropping or [`kill`](Backend::kill)ing it closes every connection at once,
/// like a crashed process.
pub struct Backend {
    pub port: u16,
    tasks: JoinSet<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let app = router(name);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: HttpRequest<hyper::body::Incoming>| {
                            let app = app.clone();
                            async move {
                                use tower::ServiceExt;
                                app.oneshot(req.map(Body::new)).await
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self { port, tasks }
    }

    pub fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

fn router(name: &'static str) -> axum::Router {
    axum::Router::new().fallback(move |req: HttpRequest<Body>| async move {
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
    })
}

pub fn service(name: &str, lb: LoadBalancing) -> XdsService {
    let title: String = name[..1].to_uppercase() + &name[1..];
    XdsService {
        name: name.into(),
        grpc_package: format!("chatcluster.{name}.v1"),
        health_service: format!("chatcluster.{name}.v1.{title}"),
        port: 50051,
        hash_header: matches!(lb, LoadBalancing::RingHash | LoadBalancing::Maglev)
            .then(|| "x-chat-affinity".to_string()),
        load_balancing: lb,
    }
}

/// Endpoints by service, and optionally certificate files.
#[derive(Clone, Default)]
pub struct Inputs {
    pub services: BTreeMap<String, Vec<u16>>,
    pub certificate: Option<(PathBuf, PathBuf)>,
}

/// Write then rename, so a watcher never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    chatcluster_common::fs::write_atomically(path, text).unwrap();
}

pub fn write_endpoints(path: &Path, inputs: &Inputs) {
    let services: serde_json::Map<String, serde_json::Value> = inputs
        .services
        .iter()
        .map(|(name, ports)| {
            let list: Vec<_> = ports
                .iter()
                .map(|p| json!({ "address": "127.0.0.1", "port": p }))
                .collect();
            (name.clone(), json!(list))
        })
        .collect();
    let mut doc = json!({ "services": services });
    if let Some((cert, key)) = &inputs.certificate {
        doc["certificate"] = json!({ "certFile": cert, "keyFile": key });
    }
    write_atomically(path, &serde_yaml::to_string(&doc).unwrap());
}

pub struct Stack {
    pub dir: TempDir,
    pub xds: Option<Process>,
    pub xds_port: u16,
    pub envoy: Process,
    pub config_path: PathBuf,
    pub config: XdsConfig,
    pub endpoints: PathBuf,
    pub ingress: u16,
    pub tls_port: u16,
    pub admin: u16,
    /// chat-xds's HTTP endpoint (metrics, load, clients).
    pub http: u16,
}

impl Stack {
    pub fn start(api_type: &str, services: Vec<XdsService>, inputs: &Inputs) -> Self {
        let dir = TempDir::new("xds-envoy");
        let (xds_port, ingress, admin, tls_port) =
            (free_port(), free_port(), free_port(), free_port());
        let config = XdsConfig {
            cluster: "demo".into(),
            listener_port: tls_port as i32,
            plaintext_port: Some(ingress as i32),
            listen_address: None,
            grpc_web: true,
            rate_limit: None,
            services,
            upstream_tls: None,
            kubernetes: None,
        };
        let config_path = dir.path().join("xds.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();
        let endpoints = dir.path().join("endpoints.yaml");
        write_endpoints(&endpoints, inputs);
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
            "cluster_manager": { "load_stats_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }]
            }},
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
        let mut stack = Self {
            dir,
            xds: None,
            xds_port,
            envoy,
            config_path,
            config,
            endpoints,
            ingress,
            tls_port,
            admin,
            http: free_port(),
        };
        stack.start_xds();
        stack
    }

    pub fn start_xds(&mut self) {
        self.xds = Some(Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_chat-xds"))
                .env("RUST_LOG", "warn")
                .env("CHAT_XDS_CONFIG", &self.config_path)
                .env("CHAT_XDS_ENDPOINTS_FILE", &self.endpoints)
                .env("CHAT_XDS_LISTEN", format!("127.0.0.1:{}", self.xds_port))
                .env("CHAT_XDS_POLL_MS", "60000")
                .env(
                    "CHAT_XDS_METRICS_LISTEN",
                    format!("127.0.0.1:{}", self.http),
                ),
        ));
    }

    pub fn kill_xds(&mut self) {
        self.xds = None;
    }

    pub fn write_config(&self, config: &XdsConfig) {
        write_atomically(&self.config_path, &serde_yaml::to_string(config).unwrap());
    }

    /// A channel to the plain-text listener, once Envoy has it (clusters can be ready first).
    pub async fn channel(&self) -> Channel {
        self.channel_from("127.0.0.1").await
    }

    /// A client of the ingress connecting from local address `source` (any of 127.0.0.0/8):
    /// another client as Envoy sees it.
    pub async fn channel_from(&self, source: &str) -> Channel {
        let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", self.ingress))
            .unwrap()
            .local_address(Some(source.parse().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(e) if Instant::now() > deadline => panic!("no ingress listener: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

pub async fn admin_get(port: u16, path: &str) -> String {
    chatcluster_harness::http_get(port, path).await
}

/// An Envoy counter or gauge from `/stats`.
pub async fn stat(admin: u16, name: &str) -> Option<u64> {
    chatcluster_harness::envoy_stat(admin, name).await
}

/// Healthy endpoints Envoy has for `cluster`, from `/clusters`.
pub async fn healthy_ports(admin: u16, cluster: &str) -> Vec<u16> {
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

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, f: F)
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

/// Call `path` through Envoy with optional headers; the backend that answered.
pub async fn call_with(
    channel: &Channel,
    path: &'static str,
    headers: &[(&'static str, String)],
) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<Empty, Empty> = tonic_prost::ProstCodec::default();
    let mut req = tonic::Request::new(Empty {});
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let resp = grpc
        .unary(req, PathAndQuery::from_static(path), codec)
        .await?;
    Ok(resp
        .metadata()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

pub async fn call(channel: &Channel, path: &'static str) -> Result<String, tonic::Status> {
    call_with(channel, path, &[]).await
}

pub async fn ready(stack: &Stack, cluster: &'static str, n: usize) {
    let admin = stack.admin;
    eventually(
        "endpoints healthy in Envoy",
        Duration::from_secs(20),
        || async move { healthy_ports(admin, cluster).await.len() == n },
    )
    .await;
}

/// One service with `ports` as its endpoints (and optionally a certificate), started, with
/// every endpoint healthy in Envoy.
pub async fn single(
    api_type: &str,
    name: &'static str,
    lb: LoadBalancing,
    ports: Vec<u16>,
    certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> (Inputs, Stack) {
    let inputs = Inputs {
        services: BTreeMap::from([(name.to_string(), ports.clone())]),
        certificate,
    };
    let stack = Stack::start(api_type, vec![service(name, lb)], &inputs);
    ready(&stack, name, ports.len()).await;
    (inputs, stack)
}

/// One auth backend behind a stack speaking `api_type`, healthy in Envoy.
pub async fn one_auth(api_type: &str) -> (Backend, Stack) {
    let b = Backend::start("auth-1").await;
    let (_, stack) = single(
        api_type,
        "auth",
        LoadBalancing::LeastRequest,
        vec![b.port],
        None,
    )
    .await;
    (b, stack)
}

pub fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    let fingerprint = fingerprint_of_pem(&cert);
    (cert, key, fingerprint)
}

pub fn fingerprint_of_pem(path: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The fingerprint of the certificate Envoy serves on `port` (real TLS handshake, openssl).
pub fn served_fingerprint(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Wait until Envoy's TLS listener on `port` serves the certificate with `fingerprint`.
pub async fn serves_certificate(port: u16, fingerprint: &str) {
    let fingerprint = fingerprint.to_string();
    eventually("the certificate served", Duration::from_secs(10), || {
        let fingerprint = fingerprint.clone();
        async move {
            tokio::task::spawn_blocking(move || served_fingerprint(port))
                .await
                .unwrap()
                == fingerprint
        }
    })
    .await;
}

/// One `auth` backend behind Envoy's TLS listener serving certificate `a` (made in `certs`),
/// already served: the backend, the inputs, the stack and certificate `a`'s files and
/// fingerprint.
pub async fn tls_stack(certs: &Path) -> (Backend, Inputs, Stack, (PathBuf, PathBuf, String)) {
    let b = Backend::start("auth-1").await;
    let (cert, key, fingerprint) = certificate(certs, "a");
    let (inputs, stack) = single(
        "DELTA_GRPC",
        "auth",
        LoadBalancing::LeastRequest,
        vec![b.port],
        Some((cert.clone(), key.clone())),
    )
    .await;
    serves_certificate(stack.tls_port, &fingerprint).await;
    (b, inputs, stack, (cert, key, fingerprint))
}
