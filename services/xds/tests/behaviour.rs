//! chat-xds and a real Envoy under the events that matter: a configuration Envoy rejects, the
//! control plane dying and returning, sticky routing, certificate rotation over SDS, gRPC-Web
//! from a browser, and a backend crashing under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chatcluster_types::xds::LoadBalancing;
use common::{
    Backend, Inputs, Stack, admin_get, call, call_with, certificate, eventually, healthy_ports,
    one_auth, ready, serves_certificate, service, single, stat, tls_stack, write_endpoints,
};
use envoy_types::pb::envoy::{
    admin::v3::ClientResourceStatus,
    service::status::v3::{
        ClientStatusRequest, ConfigStatus,
        client_status_discovery_service_client::ClientStatusDiscoveryServiceClient,
    },
};

async fn nack_is_not_resent(api_type: &str) {
    let b = Backend::start("auth-1").await;
    let s = Backend::start("servers-1").await;
    let inputs = Inputs {
        services: BTreeMap::from([
            ("auth".to_string(), vec![b.port]),
            ("servers".to_string(), vec![s.port]),
        ]),
        certificate: None,
    };
    let stack = Stack::start(
        api_type,
        vec![
            service("auth", LoadBalancing::LeastRequest),
            service("servers", LoadBalancing::RingHash),
        ],
        &inputs,
    );
    ready(&stack, "auth", 1).await;
    let channel = stack.channel().await;
    assert_eq!(
        call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap(),
        "auth-1"
    );

    // A hand-edited configuration with a header name Envoy refuses (empty; the operator's
    // schema would not let it through): the route table is NACKed.
    let rejected = "http.ingress_plaintext.rds.ingress.update_rejected";
    let mut bad = stack.config.clone();
    bad.services[1].hash_header = Some(String::new());
    stack.write_config(&bad);
    let admin = stack.admin;
    eventually("the NACK", Duration::from_secs(10), || async move {
        stat(admin, rejected).await == Some(1)
    })
    .await;
    // Not sent again in a loop, and traffic keeps flowing on the last good routes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stat(admin, rejected).await, Some(1));
    // CSDS tells operators which Envoy rejected what, and why.
    let xds =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", stack.xds_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status = ClientStatusDiscoveryServiceClient::new(xds)
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let envoy = status
        .config
        .iter()
        .find(|c| {
            c.node
                .as_ref()
                .is_some_and(|n| n.id == format!("envoy-{api_type}"))
        })
        .expect("our Envoy in CSDS");
    let routes = envoy
        .generic_xds_configs
        .iter()
        .find(|g| g.type_url.ends_with("RouteConfiguration"))
        .expect("route status");
    assert_eq!(routes.config_status, ConfigStatus::Error as i32);
    assert_eq!(routes.client_status, ClientResourceStatus::Nacked as i32);
    assert!(!routes.error_state.as_ref().unwrap().details.is_empty());
    let clusters = envoy
        .generic_xds_configs
        .iter()
        .find(|g| g.type_url.ends_with("Cluster"))
        .expect("cluster status");
    assert_eq!(clusters.config_status, ConfigStatus::Synced as i32);
    for _ in 0..5 {
        assert_eq!(
            call(&channel, "/chatcluster.auth.v1.Auth/Login")
                .await
                .unwrap(),
            "auth-1"
        );
    }
    assert_eq!(
        call(&channel, "/chatcluster.servers.v1.Servers/Join")
            .await
            .unwrap(),
        "servers-1"
    );

    // A corrected configuration (different from what Envoy kept) is sent and accepted. (Going
    // back to exactly the kept version needs no update at all in Delta: chat-xds knows Envoy
    // still has it.)
    let success = "http.ingress_plaintext.rds.ingress.update_success";
    let before = stat(admin, success).await.unwrap_or(0);
    let mut fixed = stack.config.clone();
    fixed.services[1].hash_header = Some("x-user".into());
    stack.write_config(&fixed);
    eventually("the fixed routes", Duration::from_secs(10), || async move {
        stat(admin, success).await.unwrap_or(0) > before
    })
    .await;
    assert_eq!(stat(admin, rejected).await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn sotw_nack_is_not_resent() {
    nack_is_not_resent("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_nack_is_not_resent() {
    nack_is_not_resent("DELTA_GRPC").await;
}

async fn control_plane_restart_fails_no_request(api_type: &str) {
    let b1 = Backend::start("auth-1").await;
    let b2 = Backend::start("auth-2").await;
    let (mut inputs, mut stack) = single(
        api_type,
        "auth",
        LoadBalancing::LeastRequest,
        vec![b1.port],
        None,
    )
    .await;
    let channel = stack.channel().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, channel) =
            (stop.clone(), ok.clone(), failed.clone(), channel.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&channel, "/chatcluster.auth.v1.Auth/Login").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill_xds();
    let admin = stack.admin;
    eventually("Envoy to notice", Duration::from_secs(10), || async move {
        stat(admin, "control_plane.connected_state").await == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.start_xds();
    eventually(
        "Envoy to reconnect",
        Duration::from_secs(20),
        || async move { stat(admin, "control_plane.connected_state").await == Some(1) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 100);

    // The new control plane is in charge: endpoint changes are followed again.
    inputs.services.insert("auth".into(), vec![b2.port]);
    write_endpoints(&stack.endpoints, &inputs);
    let want = b2.port;
    eventually("auth-2 only", Duration::from_secs(10), || async move {
        healthy_ports(admin, "auth").await == vec![want]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sotw_control_plane_restart_fails_no_request() {
    control_plane_restart_fails_no_request("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_control_plane_restart_fails_no_request() {
    control_plane_restart_fails_no_request("DELTA_GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_hash_is_sticky_per_key() {
    let backends = [
        Backend::start("servers-1").await,
        Backend::start("servers-2").await,
        Backend::start("servers-3").await,
    ];
    let ports = backends.iter().map(|b| b.port).collect();
    let (_, stack) = single(
        "DELTA_GRPC",
        "servers",
        LoadBalancing::RingHash,
        ports,
        None,
    )
    .await;
    let channel = stack.channel().await;
    let mut owners = BTreeSet::new();
    for key in 0..20 {
        let headers = [("x-chat-affinity", format!("user-{key}"))];
        let first = call_with(&channel, "/chatcluster.servers.v1.Servers/Join", &headers)
            .await
            .unwrap();
        for _ in 0..5 {
            let again = call_with(&channel, "/chatcluster.servers.v1.Servers/Join", &headers)
                .await
                .unwrap();
            assert_eq!(again, first, "key user-{key} moved");
        }
        owners.insert(first);
    }
    assert!(owners.len() >= 2, "20 keys all on {owners:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_rotates_over_sds_without_a_listener_change() {
    let certs = chatcluster_harness::TempDir::new("certs");
    let (_backend, mut inputs, stack, (cert_a, key_a, _)) = tls_stack(certs.path()).await;
    let port = stack.tls_port;
    let listener_updates = stat(stack.admin, "listener_manager.lds.update_success").await;

    // Rotate: new files, same names in the endpoints file's certificate section.
    let (cert_b, key_b, fp_b) = certificate(certs.path(), "b");
    std::fs::copy(&cert_b, &cert_a).unwrap();
    std::fs::copy(&key_b, &key_a).unwrap();
    inputs.certificate = Some((cert_a, key_a));
    write_endpoints(&stack.endpoints, &inputs);
    serves_certificate(port, &fp_b).await;
    assert_eq!(
        stat(stack.admin, "listener_manager.lds.update_success").await,
        listener_updates,
        "the listener was not replaced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_from_a_browser_reaches_the_service() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_b, stack) = one_auth("GRPC").await;
    let ingress = stack.ingress;
    eventually("the listener", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", ingress))
            .await
            .is_ok()
    })
    .await;
    // HTTP/1.1, as a browser sends it: an empty message in one gRPC-Web frame.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ingress))
        .await
        .unwrap();
    let request = "POST /chatcluster.auth.v1.Auth/Login HTTP/1.1\r\nHost: chat.example\r\n\
        Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nOrigin: https://chat.example\r\n\
        Content-Length: 5\r\nConnection: close\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: application/grpc-web"),
        "{text}"
    );
    assert!(text.contains("x-backend: auth-1"), "{text}");
    // gRPC-Web carries the trailers in the body.
    assert!(text.contains("grpc-status:0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_backend_fails_under_one_percent_of_requests() {
    let mut backends = [
        Backend::start("auth-1").await,
        Backend::start("auth-2").await,
        Backend::start("auth-3").await,
    ];
    let ports = backends.iter().map(|b| b.port).collect();
    let (_, stack) = single(
        "DELTA_GRPC",
        "auth",
        LoadBalancing::LeastRequest,
        ports,
        None,
    )
    .await;
    let channel = stack.channel().await;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (ok, failed, channel) = (ok.clone(), failed.clone(), channel.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..400 {
                match call(&channel, "/chatcluster.auth.v1.Auth/Login").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Crash one backend mid-load: its connections die, nothing tells the control plane.
    backends[0].kill();
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(ok + failed, 3200);
    assert!(
        failed * 100 < ok + failed,
        "{failed} of {} failed",
        ok + failed
    );
    // Health checks take it out of rotation.
    let admin = stack.admin;
    eventually(
        "the dead backend marked unhealthy",
        Duration::from_secs(15),
        || async move { healthy_ports(admin, "auth").await.len() == 2 },
    )
    .await;
    let _ = admin_get(admin, "/clusters").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_rate_limits_with_resource_exhausted() {
    let (_b, stack) = one_auth("DELTA_GRPC").await;
    let channel = stack.channel().await;
    for _ in 0..30 {
        call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap();
    }
    // Limit each client address to 5 requests per second with a burst of 10.
    let mut limited = stack.config.clone();
    limited.rate_limit = Some(chatcluster_types::xds::RateLimit {
        requests_per_second: 5,
        burst: 10,
    });
    stack.write_config(&limited);
    let admin = stack.admin;
    eventually(
        "the limited listener",
        Duration::from_secs(10),
        || async move {
            admin_get(admin, "/config_dump?resource=dynamic_listeners")
                .await
                .contains("local_ratelimit")
        },
    )
    .await;
    let channel = stack.channel().await;
    let (mut ok, mut exhausted) = (0, 0);
    for _ in 0..30 {
        match call(&channel, "/chatcluster.auth.v1.Auth/Login").await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                exhausted += 1;
            }
        }
    }
    assert!((10..=13).contains(&ok), "{ok} allowed, {exhausted} limited");
    // Another client has a bucket of its own.
    let other = stack.channel_from("127.0.0.2").await;
    for _ in 0..10 {
        call(&other, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn load_signal_and_client_status_over_http() {
    let (_b, stack) = one_auth("DELTA_GRPC").await;
    let channel = stack.channel().await;
    // About 100 requests per second for three seconds.
    for _ in 0..300 {
        call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = stack.http;
    let load: serde_json::Value = serde_json::from_str(
        admin_get(http, "/load")
            .await
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default(),
    )
    .unwrap();
    let rps = load["services"]["auth"]["requestsPerSecond"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((20.0..=200.0).contains(&rps), "auth at {rps} req/s: {load}");
    assert_eq!(load["services"]["auth"]["envoys"], 1);

    let metrics = admin_get(http, "/metrics").await;
    assert!(
        metrics.contains("chat_xds_service_requests_per_second{service=\"auth\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("chat_xds_envoys 1"), "{metrics}");
    assert!(metrics.contains("chat_xds_nacks_total 0"), "{metrics}");

    let clients = admin_get(http, "/clients").await;
    assert!(clients.contains("envoy-DELTA_GRPC"), "{clients}");
    assert!(clients.contains("\"acked\""), "{clients}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_request_spreads_and_draining_fails_nothing() {
    let b1 = Backend::start("auth-1").await;
    let b2 = Backend::start("auth-2").await;
    let (inputs, stack) = single(
        "DELTA_GRPC",
        "auth",
        LoadBalancing::LeastRequest,
        vec![b1.port, b2.port],
        None,
    )
    .await;
    let channel = stack.channel().await;
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        *seen
            .entry(
                call(&channel, "/chatcluster.auth.v1.Auth/Login")
                    .await
                    .unwrap(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "least request uses both: {seen:?}");

    // Under load, auth-1 starts terminating (Kubernetes: terminating, still serving), then goes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, channel) =
            (stop.clone(), ok.clone(), failed.clone(), channel.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&channel, "/chatcluster.auth.v1.Auth/Login").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let draining = serde_json::json!({ "services": { "auth": [
        { "address": "127.0.0.1", "port": b1.port, "ready": false, "terminating": true },
        { "address": "127.0.0.1", "port": b2.port },
    ]}});
    common::write_atomically(&stack.endpoints, &serde_yaml::to_string(&draining).unwrap());
    let admin = stack.admin;
    let (p1, p2) = (b1.port, b2.port);
    // Draining: still listed, no longer healthy for new requests.
    eventually(
        "auth-1 draining in Envoy",
        Duration::from_secs(10),
        || async move {
            let clusters = admin_get(admin, "/clusters").await;
            healthy_ports(admin, "auth").await == vec![p2]
                && clusters.contains(&format!("auth::127.0.0.1:{p1}::health_flags::"))
        },
    )
    .await;
    // New calls go to auth-2 only.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        assert_eq!(
            call(&channel, "/chatcluster.auth.v1.Auth/Login")
                .await
                .unwrap(),
            "auth-2"
        );
    }
    // Then it is gone, and then the process stops.
    let mut only = inputs.clone();
    only.services.insert("auth".into(), vec![b2.port]);
    write_endpoints(&stack.endpoints, &only);
    let want = b2.port;
    eventually("auth-1 removed", Duration::from_secs(10), || async move {
        healthy_ports(admin, "auth").await == vec![want]
    })
    .await;
    drop(b1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_b, stack) = one_auth("DELTA_GRPC").await;
    let ingress = stack.ingress;
    eventually("the listener", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", ingress))
            .await
            .is_ok()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ingress))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Never the blank line that ends the headers.
    s.write_all(b"POST /chatcluster.auth.v1.Auth/Login HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "still open after {took:?}");
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(20),
        "closed after {took:?} (the headers timeout is 10 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_is_served_with_a_content_security_policy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_b, stack) = one_auth("DELTA_GRPC").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let mut got = String::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", stack.ingress)).await {
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            got = String::from_utf8_lossy(&buf).to_string();
        }
        if got.starts_with("HTTP/1.1 200") {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "no page: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let head = response.split("\r\n\r\n").next().unwrap();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (key, value) = l.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then(|| value.to_string())
        })
    };
    let csp = header("content-security-policy").unwrap_or_else(|| panic!("no CSP in {head}"));
    assert_eq!(
        csp,
        chat_xds::resources::content_security_policy(chat_xds::resources::WEB_PAGE)
    );
    assert!(
        csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
}
