//! The internal plane's mutual TLS in a running local cluster (real chat-xds, Envoy, chatd,
//! MariaDB): chat-xds hands configuration — and with it the listener's private key — to its
//! cluster's Envoy alone and refuses forged load reports; chatd takes chat calls from Envoy
//! only; the broker takes clients with the cluster's certificates only, and a hint forged
//! there cannot freeze a conversation; certificates are renewed under load without a failed
//! request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use chat_operator::pki::{Ca, Issued, Leaf};
use chatcluster_tests::{http_get, load, local::LocalCluster};
use chatcluster_types::identity::{Identity, component};
use chatd::pb::{
    chat::{SendMessageRequest, SubscribeRequest},
    groups::{GetGroupRequest, groups_client::GroupsClient},
    internal::Notification,
};
use envoy_types::pb::envoy::{
    config::core::v3::Node,
    config::endpoint::v3::{ClusterStats, UpstreamLocalityStats},
    service::{
        discovery::v3::{
            DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
        load_stats::v3::{
            LoadStatsRequest, load_reporting_service_client::LoadReportingServiceClient,
        },
    },
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as KeyPair};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cluster_ca(cluster: &LocalCluster) -> Ca {
    let f = &cluster.plan.files;
    Ca::from_pem(&read(&f.ca_cert()), &read(&f.ca_key())).unwrap()
}

fn certificate_for(ca: &Ca, identity: Identity, issued_at: SystemTime) -> Issued {
    ca.issue(
        &Leaf {
            identity,
            dns_names: Vec::new(),
            lifetime: 30 * DAY,
        },
        issued_at,
    )
    .unwrap()
}

/// A channel to chat-xds over TLS, trusting `trusted` and presenting `client` if any. `Err`
/// when the handshake fails.
async fn tls_channel(
    port: u16,
    trusted: &str,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    tls_channel_to(port, "localhost", trusted, client).await
}

/// As [`tls_channel`], verifying the server as `name`.
async fn tls_channel_to(
    port: u16,
    name: &str,
    trusted: &str,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted))
        .domain_name(name);
    if let Some(c) = client {
        tls = tls.identity(KeyPair::from_pem(&c.cert_pem, &c.key_pem));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn node() -> Node {
    Node {
        id: "intruder".into(),
        cluster: "laptop-envoy".into(),
        ..Node::default()
    }
}

/// The first response of a SotW stream asking for the listener's certificate.
async fn ask_for_the_key(channel: Channel) -> Result<usize, tonic::Status> {
    let request = DiscoveryRequest {
        node: Some(node()),
        type_url: SECRET_TYPE.into(),
        resource_names: vec!["ingress-cert".into()],
        ..DiscoveryRequest::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")?
        .expect("a response");
    drop(tx);
    Ok(first.resources.len())
}

/// Report a million requests to `auth` as if from an Envoy; the stream's status.
async fn forge_load(channel: Channel) -> Result<(), tonic::Status> {
    let report = LoadStatsRequest {
        node: Some(node()),
        cluster_stats: vec![ClusterStats {
            cluster_name: "auth".into(),
            upstream_locality_stats: vec![UpstreamLocalityStats {
                total_issued_requests: 1_000_000,
                total_requests_in_progress: 10_000,
                ..UpstreamLocalityStats::default()
            }],
            ..ClusterStats::default()
        }],
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(report).await.unwrap();
    let mut responses = LoadReportingServiceClient::new(channel)
        .stream_load_stats(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let _ = tokio::time::timeout(Duration::from_secs(3), responses.message()).await;
    drop(tx);
    Ok(())
}

/// SHA-256 fingerprint of the certificate in `pem`, as openssl prints it.
fn fingerprint(pem: &str) -> String {
    let dir = chatcluster_harness::TempDir::new("fingerprint");
    let file = dir.path().join("c.pem");
    std::fs::write(&file, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The certificate chat-xds presents to a client holding `client`, fingerprinted.
fn served_fingerprint(port: u16, client_dir: &Path) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -alpn h2 -cert {d}/tls.crt -key {d}/tls.key </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        d = client_dir.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The JSON body of `GET path` on `port` (chat-xds's `/load`, Envoy's `/certs`); a chunked
/// body's single chunk is read between its outer braces.
async fn get_json(port: u16, path: &str) -> serde_json::Value {
    let response = http_get(port, path).await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if a < b => &body[a..=b],
        _ => "",
    };
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {response}"))
}

async fn envoy_stat(admin: u16, name: &str) -> u64 {
    chatcluster_tests::envoy_stat(admin, name)
        .await
        .unwrap_or(0)
}

/// A client of the broker at `port`: over TLS with the key pair and CA in `dir`, or in plain
/// text without one.
async fn broker_client(
    port: u16,
    dir: Option<&Path>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    match dir {
        Some(dir) => {
            let tls = chatcluster_common::tls::TlsDir(dir.to_path_buf())
                .client_config()
                .unwrap();
            options
                .require_tls(true)
                .tls_client_config((*tls).clone())
                .connect(format!("tls://127.0.0.1:{port}"))
                .await
        }
        None => options.connect(format!("nats://127.0.0.1:{port}")).await,
    }
}

/// A directory holding `issued` as a component's certificate files, trusting `ca_pem`.
fn key_pair_dir(issued: &Issued, ca_pem: &str) -> chatcluster_tests::TempDir {
    use chatcluster_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};
    let dir = chatcluster_tests::TempDir::new("broker-client");
    for (name, pem) in [
        (CERT_FILE, issued.cert_pem.as_str()),
        (KEY_FILE, &issued.key_pem),
        (CA_FILE, ca_pem),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    dir
}

/// A chat API call made straight to a chatd replica, past Envoy.
async fn call_groups(channel: Channel) -> Result<(), tonic::Status> {
    GroupsClient::new(channel)
        .get_group(GetGroupRequest { group_id: 1 })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatd_takes_calls_from_envoy_only_and_the_broker_its_cluster_only() {
    let cluster = LocalCluster::start("examples/laptop.yaml");
    let groups = cluster
        .plan
        .services
        .iter()
        .find(|s| s.kind.as_str() == "groups")
        .unwrap();
    let port = groups.port(0);
    let ca = cluster_ca(&cluster);
    let ca_pem = ca.cert_pem().to_string();
    let me = Identity::new("local", "laptop", "groups");
    let now = SystemTime::now();

    // Through Envoy (over mutual TLS to chatd), clients chat as ever.
    let (session, group) = load::reader(&cluster.endpoint(), "through-envoy").await;
    assert!(session.access_token.len() > 10 && group > 0);

    // Past Envoy: plain text and certificate-less TLS get nothing.
    if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
    {
        assert!(call_groups(channel).await.is_err());
    }
    if let Ok(channel) = tls_channel_to(port, &me.server_name(), &ca_pem, None).await {
        assert!(
            call_groups(channel).await.is_err(),
            "served without a certificate"
        );
    }
    // The cluster's CA, another component: Envoy may call the API; another service's
    // replica, or one of the same service, may not.
    let channel_as = |who: Identity| {
        let cert = certificate_for(&ca, who, now);
        let ca_pem = ca_pem.clone();
        let name = me.server_name();
        async move {
            tls_channel_to(port, &name, &ca_pem, Some(&cert))
                .await
                .unwrap()
        }
    };
    let envoy = channel_as(me.sibling(component::INGRESS)).await;
    assert_ne!(
        call_groups(envoy).await.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied),
        "Envoy's identity is refused the API"
    );
    for who in [me.sibling("auth"), me.clone()] {
        let channel = channel_as(who.clone()).await;
        assert_eq!(
            call_groups(channel).await.unwrap_err().code(),
            tonic::Code::PermissionDenied,
            "{who} called the API"
        );
    }

    // The broker: plain text and a certificate of another CA are refused; the cluster's
    // certificate is taken.
    let broker = cluster.plan.broker.port;
    assert!(
        broker_client(broker, None).await.is_err(),
        "plain text taken"
    );
    let foreign = Ca::generate("local", "laptop", now).unwrap();
    let stranger = key_pair_dir(&certificate_for(&foreign, me.clone(), now), &ca_pem);
    assert!(
        broker_client(broker, Some(stranger.path())).await.is_err(),
        "another CA's certificate taken"
    );
    let insider = key_pair_dir(&certificate_for(&ca, me.clone(), now), &ca_pem);
    let forger = broker_client(broker, Some(insider.path())).await.unwrap();

    // Even so, a hint forged there (the last possible seq) does not freeze the group: the
    // next message still arrives pushed, not polled.
    let envoy_channel = Channel::from_shared(cluster.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut groups_api = GroupsClient::new(envoy_channel);
    let subscribe = SubscribeRequest {
        conversation_id: group,
        after_seq: 0,
    };
    let mut stream = groups_api
        .subscribe(chatcluster_tests::chat::authed(&session, subscribe).unwrap())
        .await
        .unwrap()
        .into_inner();
    // The replica subscribes to the group's subject when its first subscriber comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let forged = Notification {
        seq: u64::MAX,
        gtid: String::new(),
        update: false,
        ephemeral: None,
    };
    use prost::Message as _;
    forger
        .publish(
            format!("chat.groups.{group}"),
            forged.encode_to_vec().into(),
        )
        .await
        .unwrap();
    forger.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let message = SendMessageRequest {
        conversation_id: group,
        text: "after the forgery".into(),
        client_key: String::new(),
    };
    groups_api
        .send_message(chatcluster_tests::chat::authed(&session, message).unwrap())
        .await
        .unwrap();
    let delivered = chatcluster_tests::chat::next_message(&mut stream).await;
    assert_eq!(delivered.text, "after the forgery");
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "delivered by the poll after a forged hint: {:?}",
        sent.elapsed()
    );
    // A server that is not the groups service is not taken for it: the auth replica's
    // certificate names another identity, so a client expecting groups refuses it.
    let auth_port = cluster
        .plan
        .services
        .iter()
        .find(|s| s.kind.as_str() == "auth")
        .unwrap()
        .port(0);
    let cert = certificate_for(&ca, me.sibling(component::INGRESS), now);
    assert!(
        tls_channel_to(auth_port, &me.server_name(), &ca_pem, Some(&cert))
            .await
            .is_err(),
        "the auth replica passed for groups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_xds_serves_only_its_envoy_and_certificates_rotate_under_load() {
    let cluster = LocalCluster::start("examples/laptop.yaml");
    let xds = cluster.plan.xds[0].port;
    let xds_http = cluster.plan.xds_http[0];
    let envoy_admin = cluster.plan.envoys[0].port;
    let files = cluster.plan.files.clone();
    let ca = cluster_ca(&cluster);
    let ours = Identity::new("local", "laptop", component::INGRESS);
    let now = SystemTime::now();

    // The cluster's own Envoy got its configuration over mutual TLS.
    assert_eq!(
        envoy_stat(envoy_admin, "control_plane.connected_state").await,
        1
    );
    assert!(envoy_stat(envoy_admin, "cluster.xds.ssl.handshake").await >= 1);

    // Plain text gets nothing: the port speaks TLS only.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{xds}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(
            ask_for_the_key(channel).await.is_err(),
            "plain text was served"
        );
    }
    // TLS without a client certificate: the handshake is refused.
    let ca_pem = ca.cert_pem().to_string();
    match tls_channel(xds, &ca_pem, None).await {
        Err(_) => {}
        Ok(channel) => assert!(
            ask_for_the_key(channel).await.is_err(),
            "served without a certificate"
        ),
    }
    // A certificate naming the right identity, from another CA: refused at the handshake.
    let stranger = Ca::generate("local", "laptop", now).unwrap();
    let foreign = certificate_for(&stranger, ours.clone(), now);
    match tls_channel(xds, &ca_pem, Some(&foreign)).await {
        Err(_) => {}
        Ok(channel) => assert!(
            ask_for_the_key(channel).await.is_err(),
            "a foreign CA was trusted"
        ),
    }
    // The cluster's CA, but another component or another cluster: no key, no load report.
    for intruder in [
        ours.sibling("auth"),
        ours.sibling(component::XDS),
        Identity::new("local", "other", component::INGRESS),
    ] {
        let cert = certificate_for(&ca, intruder.clone(), now);
        let channel = tls_channel(xds, &ca_pem, Some(&cert)).await.unwrap();
        let refused = ask_for_the_key(channel.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{intruder}");
        let forged = forge_load(channel).await.unwrap_err();
        assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{intruder}");
    }
    // Only the real Envoy reports load: the forged million requests are nowhere.
    let report = get_json(xds_http, "/load").await;
    let auth = &report["services"]["auth"];
    assert!(auth["envoys"].as_u64().unwrap_or(0) <= 1, "{report}");
    for (service, load) in report["services"].as_object().unwrap() {
        assert!(
            load["inFlight"].as_u64().unwrap_or(0) < 100,
            "{service}: {report}"
        );
        assert!(
            load["requestsPerSecond"].as_f64().unwrap_or(0.0) < 1000.0,
            "{service}: {report}"
        );
    }
    // And the Envoy identity itself is served the key (the positive control).
    let envoy_cert = certificate_for(&ca, ours.clone(), now);
    let channel = tls_channel(xds, &ca_pem, Some(&envoy_cert)).await.unwrap();
    assert_eq!(ask_for_the_key(channel).await.unwrap(), 1);

    // Rotation under load: both certificates are made due (issued 21 of their 30 days ago,
    // past the two thirds at which the runner renews), while clients read through Envoy.
    let (session, group) = load::reader(&cluster.endpoint(), "rotation").await;
    let traffic = load::Load::start(&cluster.endpoint(), session, group, 50.0).await;
    let before = traffic.now();
    let handshakes = envoy_stat(envoy_admin, "cluster.xds.ssl.handshake").await;
    let mut planted = Vec::new();
    // The history reads go to groups: its replica's certificate is renewed under them too,
    // and the database's, under chatd's connections.
    for who in [
        component::XDS,
        component::INGRESS,
        "groups",
        component::DATABASE,
    ] {
        let dir = files.tls_dir(who);
        let old = if who == component::DATABASE {
            // chatd verifies the database by name.
            let leaf = Leaf {
                identity: ours.sibling(who),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime: 30 * DAY,
            };
            ca.issue(&leaf, now - 21 * DAY).unwrap()
        } else {
            certificate_for(&ca, ours.sibling(who), now - 21 * DAY)
        };
        // Into the directory the links point at, as a stale volume would hold them.
        std::fs::write(dir.join("..data/tls.key"), &old.key_pem).unwrap();
        std::fs::write(dir.join("..data/tls.crt"), &old.cert_pem).unwrap();
        planted.push((dir, fingerprint(&old.cert_pem)));
    }
    // The runner renews them within its check interval.
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let fresh: Vec<String> = planted
            .iter()
            .map(|(dir, _)| fingerprint(&read(&dir.join("tls.crt"))))
            .collect();
        if fresh.iter().zip(&planted).all(|(f, (_, old))| f != old) {
            break fresh;
        }
        assert!(
            Instant::now() < deadline,
            "the due certificates were not renewed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // chat-xds and chatd serve their new certificates to new connections, without a restart.
    let groups = cluster
        .plan
        .services
        .iter()
        .find(|s| s.kind.as_str() == "groups")
        .unwrap()
        .port(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (port, fresh) in [(xds, &renewed[0]), (groups, &renewed[2])] {
        while served_fingerprint(port, &files.tls_dir(component::INGRESS)) != *fresh {
            assert!(
                Instant::now() < deadline,
                "port {port} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // So does the database, once its reloader has looked.
    let db_renewed = not_after_of(&read(&files.tls_dir(component::DATABASE).join("tls.crt")));
    let ca_file = files.tls_dir(component::DATABASE).join("ca.crt");
    wait_until_served(&chatd_db(&cluster, Some(ca_file)), db_renewed, 15).await;
    // Envoy reconnects to a restarted chat-xds with its renewed certificate, verifying the
    // renewed server certificate, and keeps serving clients meanwhile.
    cluster.signal("xds-0", "KILL");
    let deadline = Instant::now() + Duration::from_secs(40);
    while envoy_stat(envoy_admin, "cluster.xds.ssl.handshake").await <= handshakes
        || envoy_stat(envoy_admin, "control_plane.connected_state").await != 1
    {
        assert!(
            Instant::now() < deadline,
            "Envoy did not reconnect over TLS"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Envoy holds the renewed client certificate: 29+ days left, not the planted 9.
    let certs = get_json(envoy_admin, "/certs").await;
    let ingress_days: Vec<u64> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter(|c| {
            c["subject_alt_names"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n["uri"] == ours.uri()))
        })
        .filter_map(|c| c["days_until_expiration"].as_str()?.parse().ok())
        .collect();
    assert!(
        !ingress_days.is_empty() && ingress_days.iter().all(|&d| d >= 29),
        "Envoy's internal certificate has {ingress_days:?} days left: {certs}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = traffic.between(before, traffic.now());
    let failed: Vec<_> = during.iter().filter(|o| o.error.is_some()).collect();
    assert!(during.len() > 100, "too little traffic: {}", during.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        during.len(),
        failed.first()
    );
}

/// `statement` as root over `socket`, one `name: value` line per column.
fn sql(socket: &Path, statement: &str) -> String {
    chatcluster_tests::mariadb::root_sql(socket, &["-E"], statement)
}

/// chatd's database settings as the runner gives them, with the CA at `ca_file`.
fn chatd_db(cluster: &LocalCluster, ca_file: Option<std::path::PathBuf>) -> chatd::db::DbConfig {
    let text = read(&cluster.plan.files.credentials);
    let credentials: chat_operator::build::secrets::DbCredentials =
        serde_json::from_str(&text).unwrap();
    chatd::db::DbConfig {
        primary: cluster.plan.databases[0].address(),
        replicas: None,
        database: chat_operator::build::DB_NAME.into(),
        user: chat_operator::build::secrets::DB_APP_USER.into(),
        password: credentials.app().into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: chatd::db::STATEMENT_TIMEOUT,
        ca_file,
    }
}

/// What the primary serves to a connection made as chatd makes them with `cfg`: its
/// `Ssl_server_not_after`, or the connection's error.
async fn served_not_after(cfg: &chatd::db::DbConfig) -> Result<String, sqlx::Error> {
    use sqlx::{Connection, Row};
    let options = chatd::db::connect_options(cfg, &cfg.primary).unwrap();
    let mut conn = sqlx::MySqlConnection::connect_with(&options).await?;
    let row = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_server_not_after'")
        .fetch_one(&mut conn)
        .await?;
    row.try_get::<String, _>(1)
}

/// Wait up to `seconds` until the primary `cfg` names serves the certificate expiring at
/// `expected` to a client connecting as chatd does (refused meanwhile if it serves an
/// expired one).
async fn wait_until_served(cfg: &chatd::db::DbConfig, expected: SystemTime, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let served = served_not_after(cfg).await;
        if served
            .as_ref()
            .is_ok_and(|s| parse_not_after(s) == Some(expected))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the database still serves {served:?}, not the renewed certificate"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// When a certificate expires.
fn not_after_of(cert_pem: &str) -> SystemTime {
    chat_operator::pki::not_after(&Issued {
        cert_pem: cert_pem.into(),
        key_pem: String::new(),
        ca_pem: String::new(),
    })
    .unwrap()
}

/// The time in a server's `Ssl_server_not_after` (OpenSSL's `Dec  1 23:18:44 2036 GMT`).
fn parse_not_after(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [month, day, clock, year, "GMT"] = parts[..] else {
        return None;
    };
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    let clock: Vec<u8> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [hour, minute, second] = clock[..] else {
        return None;
    };
    let at = time::Date::from_calendar_date(
        year.parse().ok()?,
        time::Month::try_from(u8::try_from(month).ok()?).ok()?,
        day.parse().ok()?,
    )
    .ok()?
    .with_hms(hour, minute, second)
    .ok()?
    .assume_utc();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.unix_timestamp()).ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_serves_verified_tls_only_and_takes_a_renewed_certificate_after_expiry() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start("examples/laptop.yaml"))
        .await
        .unwrap();
    let files = &cluster.plan.files;
    let ca_file = files.tls_dir(component::DATABASE).join("ca.crt");

    // chatd's own connection verifies the server; plain text is refused by the server, and
    // a server certificate of another CA by chatd.
    let served = served_not_after(&chatd_db(&cluster, Some(ca_file.clone())))
        .await
        .unwrap();
    assert!(!served.is_empty(), "no TLS on chatd's connection");
    // The same user and password in plain text (MariaDB answers "access denied").
    let plain = served_not_after(&chatd_db(&cluster, None)).await;
    assert!(plain.is_err(), "plain text was not refused: {plain:?}");
    let stranger = Ca::generate("local", "another", SystemTime::now()).unwrap();
    let foreign = cluster.dir.path().join("foreign-ca.crt");
    std::fs::write(&foreign, stranger.cert_pem()).unwrap();
    let unverified = served_not_after(&chatd_db(&cluster, Some(foreign))).await;
    assert!(
        unverified.is_err(),
        "a server chatd cannot verify was accepted: {unverified:?}"
    );

    // The replica replicates over TLS, verifying the primary's certificate.
    let replica = &cluster.plan.databases[1];
    let status = sql(&replica.socket(), "SHOW SLAVE STATUS");
    for field in [
        "Slave_IO_Running: Yes",
        "Master_SSL_Allowed: Yes",
        "Master_SSL_Verify_Server_Cert: Yes",
    ] {
        assert!(status.contains(field), "no {field:?} in {status}");
    }

    // The servers serve an expired certificate (issued 31 days ago for 30), as they would
    // after their operator was down past the renewal. chatd refuses it; the runner renews
    // it, and the reloader beside each server has it served (on loopback, not verifying),
    // though no verifying client could reach the server any more.
    let (primary_pid, replica_pid) = (cluster.pid("db-0"), cluster.pid("db-1"));
    assert!(
        primary_pid.is_some() && replica_pid.is_some(),
        "no database pids"
    );
    let dir = files.tls_dir(component::DATABASE);
    let ca = cluster_ca(&cluster);
    let old = ca
        .issue(
            &Leaf {
                identity: Identity::new("local", &cluster.plan.name, component::DATABASE),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime: 30 * DAY,
            },
            SystemTime::now() - 31 * DAY,
        )
        .unwrap();
    std::fs::write(dir.join("..data/tls.key"), &old.key_pem).unwrap();
    std::fs::write(dir.join("..data/tls.crt"), &old.cert_pem).unwrap();
    let primary = &cluster.plan.databases[0];
    sql(&primary.socket(), "FLUSH NO_WRITE_TO_BINLOG SSL");
    let expired = not_after_of(&old.cert_pem);
    // Unless the runner renewed it in between, the expired one is served now and refused.
    match served_not_after(&chatd_db(&cluster, Some(ca_file.clone()))).await {
        Ok(now) => assert_ne!(parse_not_after(&now), Some(expired), "accepted expired"),
        Err(e) => assert!(e.to_string().contains("xpired"), "{e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let now = read(&dir.join("tls.crt"));
        if now != old.cert_pem {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the due certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let expected = not_after_of(&renewed);
    assert_ne!(
        parse_not_after(&served),
        Some(expected),
        "the renewed certificate expires when the first did"
    );
    wait_until_served(&chatd_db(&cluster, Some(ca_file)), expected, 20).await;
    // Replication carries on over TLS after the reload, and the reload left no transaction
    // of the replica's own (a logged FLUSH would make it errant, and re-seeded).
    let home = cluster.dir.path().join("alice");
    cluster.chatctl(&home, &["register", "alice"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = sql(&replica.socket(), "SHOW SLAVE STATUS");
    for field in ["Slave_IO_Running: Yes", "Slave_SQL_Running: Yes"] {
        assert!(status.contains(field), "no {field:?} in {status}");
    }
    let own = sql(
        &replica.socket(),
        "SELECT @@gtid_binlog_pos LIKE CONCAT('%-', @@server_id, '-%') AS own",
    );
    assert!(own.contains("own: 0"), "the replica wrote its own: {own}");
    assert_eq!(cluster.pid("db-1"), replica_pid, "the replica restarted");
    assert_eq!(cluster.pid("db-0"), primary_pid, "the primary restarted");
    let servers = cluster.status()["database"]["servers"].clone();
    assert!(
        servers
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["name"] == "db-1" && x["role"] == "replica" && x["error"].is_null()),
        "{servers:#}"
    );
}

/// A certificate for a server on this machine, issued `ago`, and its files in `dir` as the
/// kubelet leaves a Secret volume's (each written in turn, so a reader may see half of it).
fn write_server_certificate(ca: &Ca, dir: &Path, ago: Duration, files: &[&str]) -> Issued {
    let issued = ca
        .issue(
            &Leaf {
                identity: Identity::new("local", "reload", component::DATABASE),
                dns_names: vec!["localhost".into(), "127.0.0.1".into()],
                lifetime: 30 * DAY,
            },
            SystemTime::now() - ago,
        )
        .unwrap();
    for name in files {
        let text = match *name {
            "tls.crt" => &issued.cert_pem,
            "tls.key" => &issued.key_pem,
            _ => &issued.ca_pem,
        };
        std::fs::write(dir.join(name), text).unwrap();
    }
    issued
}

/// What `db` serves a client connecting as chatd does, verifying it with `ca_file`.
async fn served_by(db: &chatcluster_tests::mariadb::MariaDb, ca_file: &Path) -> String {
    let cfg = chatd::db::DbConfig {
        primary: db.address(),
        replicas: None,
        database: chatcluster_tests::mariadb::APP_DB.into(),
        user: chatcluster_tests::mariadb::APP_USER.into(),
        password: chatcluster_tests::mariadb::APP_PASSWORD.into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: chatd::db::STATEMENT_TIMEOUT,
        ca_file: Some(ca_file.to_path_buf()),
    };
    served_not_after(&cfg).await.unwrap()
}

#[tokio::test]
async fn the_reloader_has_its_server_serve_changed_files_and_survives_a_half_written_pair() {
    use chat_operator::tls_reload::{Error, Reloader};
    let dir = chatcluster_tests::TempDir::new("tls-reload");
    let ca = Ca::generate("local", "reload", SystemTime::now()).unwrap();
    let first = write_server_certificate(&ca, dir.path(), DAY, &["tls.crt", "tls.key", "ca.crt"]);
    let line = |key: &str, file: &str| format!("--{key}={}", dir.path().join(file).display());
    let (cert, key, ca_line) = (
        line("ssl_cert", "tls.crt"),
        line("ssl_key", "tls.key"),
        line("ssl_ca", "ca.crt"),
    );
    let db = chatcluster_tests::mariadb::MariaDb::start(1, &[&cert, &key, &ca_line]);
    let ca_file = dir.path().join("ca.crt");
    let served = |db| served_by(db, &ca_file);
    assert_eq!(
        parse_not_after(&served(&db).await),
        Some(not_after_of(&first.cert_pem))
    );

    // The production administrator's privileges are enough.
    let mut reloader = Reloader::new(
        dir.path().to_path_buf(),
        db.port,
        "admin".into(),
        chatcluster_tests::mariadb::ADMIN_PASSWORD.into(),
        &chat_operator::topology::dialect::MARIADB,
    );
    assert!(reloader.check().await.unwrap(), "the first look reloads");
    assert!(!reloader.check().await.unwrap(), "nothing changed");

    // Half a renewal (a new key beside the old certificate): the server refuses the pair
    // and goes on serving the old one; once the certificate follows, it serves the new.
    let second = write_server_certificate(&ca, dir.path(), Duration::ZERO, &["tls.key"]);
    let refused = reloader.check().await;
    assert!(matches!(refused, Err(Error::Reload(_))), "{refused:?}");
    assert_eq!(
        parse_not_after(&served(&db).await),
        Some(not_after_of(&first.cert_pem))
    );
    std::fs::write(dir.path().join("tls.crt"), &second.cert_pem).unwrap();
    assert!(reloader.check().await.unwrap());
    assert_eq!(
        parse_not_after(&served(&db).await),
        Some(not_after_of(&second.cert_pem))
    );
    // An expired certificate is no obstacle to the reloader: the server serving one still
    // takes the next.
    write_server_certificate(&ca, dir.path(), 31 * DAY, &["tls.crt", "tls.key"]);
    assert!(reloader.check().await.unwrap());
    let third = write_server_certificate(&ca, dir.path(), Duration::ZERO, &["tls.crt", "tls.key"]);
    assert!(reloader.check().await.unwrap());
    assert_eq!(
        parse_not_after(&served(&db).await),
        Some(not_after_of(&third.cert_pem))
    );
    let binlogged = db.sql("SELECT @@gtid_binlog_pos");
    assert!(
        binlogged.trim().is_empty(),
        "the reload was binlogged: {binlogged}"
    );

    // A frozen server costs the agent its timeout, not its life; a wrong password is a
    // connection error, and nothing is recorded as loaded.
    let mut stranger = Reloader::new(
        dir.path().to_path_buf(),
        db.port,
        "admin".into(),
        "wrong".into(),
        &chat_operator::topology::dialect::MARIADB,
    );
    let denied = stranger.check().await;
    assert!(matches!(denied, Err(Error::Connect { .. })), "{denied:?}");
    write_server_certificate(&ca, dir.path(), Duration::ZERO, &["tls.crt", "tls.key"]);
    db.signal("STOP");
    let started = Instant::now();
    let frozen = reloader.check().await;
    db.signal("CONT");
    assert!(matches!(frozen, Err(Error::Timeout)), "{frozen:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        reloader.check().await.unwrap(),
        "the reload is still due after a failure"
    );
}
