//! Local mode end to end: `chat-operator local` brings the example files up as real processes
//! (MariaDB, chatd, chat-xds, Envoy); users chat through Envoy with chatctl, gRPC and the web
//! page in headless Chromium, while chatd and database processes are killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_operator::api::ServiceKind;
use chatcluster_tests::{
    chat::{PASSWORD, accept_invitation, authed, create_group, group_history, register},
    listening_addresses,
    local::{LocalCluster, alive},
    repo,
};
use chatd::pb::{
    auth::Session,
    chat::{Event, SendMessageRequest, SubscribeRequest, event},
    dms::{OpenRequest, dms_client::DmsClient},
    groups::groups_client::GroupsClient,
    servers::{
        CreateInviteRequest, CreateServerRequest, JoinRequest, servers_client::ServersClient,
    },
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

async fn channel(address: &str) -> Channel {
    let endpoint = Channel::from_shared(address.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match endpoint.connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot reach {address}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A live subscription directly on one chatd replica (`ch`); messages arrive on the
/// receiver.
async fn subscribe_on(
    ch: Channel,
    kind: ServiceKind,
    session: Session,
    conversation_id: u64,
) -> mpsc::UnboundedReceiver<(u64, String)> {
    let req = authed(
        &session,
        SubscribeRequest {
            conversation_id,
            after_seq: 0,
        },
    )
    .unwrap();
    let mut stream: tonic::Streaming<Event> = match kind {
        ServiceKind::Groups => GroupsClient::new(ch).subscribe(req).await,
        ServiceKind::Dms => DmsClient::new(ch).subscribe(req).await,
        ServiceKind::Servers => ServersClient::new(ch).subscribe(req).await,
        ServiceKind::Auth | ServiceKind::Gateway => unreachable!("{kind} has no conversations"),
    }
    .unwrap()
    .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            if let Some(event::Kind::Message(m)) = e.kind {
                let _ = tx.send((m.seq, m.text));
            }
        }
    });
    rx
}

async fn received(rx: &mut mpsc::UnboundedReceiver<(u64, String)>, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            other => panic!("subscription ended or stalled after {out:?}: {other:?}"),
        }
    }
    out
}

async fn send(
    ch: &Channel,
    kind: ServiceKind,
    session: &Session,
    id: u64,
    text: &str,
) -> Result<u64, tonic::Status> {
    let req = authed(
        session,
        SendMessageRequest {
            conversation_id: id,
            text: text.into(),
            client_key: text.into(),
        },
    )?;
    let m = match kind {
        ServiceKind::Groups => GroupsClient::new(ch.clone()).send_message(req).await,
        ServiceKind::Dms => DmsClient::new(ch.clone()).send_message(req).await,
        ServiceKind::Servers => ServersClient::new(ch.clone()).send_message(req).await,
        ServiceKind::Auth | ServiceKind::Gateway => unreachable!("{kind} has no conversations"),
    }?;
    Ok(m.into_inner().seq)
}

/// Through Envoy, `count` messages; each live subscriber (one per replica of the service)
/// receives all of them in order.
async fn chat_with_subscribers_on_every_replica(
    cluster: &LocalCluster,
    envoy: &Channel,
    kind: ServiceKind,
    (sender, reader): (&Session, &Session),
    conversation: u64,
    count: usize,
) {
    let service = cluster.plan.service(kind).unwrap();
    let mut subscribers = Vec::new();
    for i in 0..service.initial {
        let channel = cluster.replica_channel(kind, i).await;
        subscribers.push(subscribe_on(channel, kind, reader.clone(), conversation).await);
    }
    let mut sent = Vec::new();
    for n in 0..count {
        let text = format!("{kind}-{conversation}-{n}");
        let seq = send(envoy, kind, sender, conversation, &text)
            .await
            .unwrap();
        sent.push((seq, text));
    }
    for (i, rx) in subscribers.iter_mut().enumerate() {
        assert_eq!(received(rx, count).await, sent, "subscriber on {kind}-{i}");
    }
    // The replicas told each other through the broker (over mutual TLS), not only their
    // safety polls.
    let mut hints = 0.0;
    for i in 0..service.initial {
        let metrics = chatcluster_tests::http_get(service.port(i) + 1, "/metrics").await;
        hints += metrics
            .lines()
            .filter_map(|l| l.strip_prefix("chatd_broker_hints_received_total "))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        hints > 0.0,
        "no hint between {kind} replicas through the broker"
    );
}

/// Local mode serves this machine only: every process the cluster runs, the runner included,
/// listens on loopback, and Envoy's client ports are among them.
fn only_loopback_listens(cluster: &LocalCluster) {
    let mut envoy_ports = Vec::new();
    for (name, pid) in cluster.processes() {
        let addresses = listening_addresses(pid);
        assert!(!addresses.is_empty(), "{name} listens on nothing");
        for address in &addresses {
            assert!(address.ip().is_loopback(), "{name} listens on {address}");
        }
        if name.starts_with("envoy") {
            envoy_ports.extend(addresses.iter().map(|a| a.port()));
        }
    }
    for port in [cluster.plaintext_port, cluster.tls_port] {
        assert!(envoy_ports.contains(&port), "no Envoy listens on {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_cluster_chats_through_envoy_and_survives_crashed_processes() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start("examples/ha.yaml"))
        .await
        .unwrap();
    only_loopback_listens(&cluster);
    let envoy = channel(&cluster.endpoint()).await;
    let (alice, _) = register(&envoy, "alice").await.unwrap();
    let (bob, bob_id) = register(&envoy, "bob").await.unwrap();

    // A group, a DM and a server channel, each with a live subscriber on every replica.
    let group = create_group(&envoy, &alice, "friends", vec![bob_id])
        .await
        .unwrap();
    accept_invitation(&envoy, &bob, group.id).await.unwrap();
    chat_with_subscribers_on_every_replica(
        &cluster,
        &envoy,
        ServiceKind::Groups,
        (&alice, &bob),
        group.id,
        10,
    )
    .await;
    let dm = DmsClient::new(envoy.clone())
        .open(authed(&alice, OpenRequest { user_id: bob_id }).unwrap())
        .await
        .unwrap()
        .into_inner();
    chat_with_subscribers_on_every_replica(
        &cluster,
        &envoy,
        ServiceKind::Dms,
        (&alice, &bob),
        dm.id,
        10,
    )
    .await;
    let mut servers = ServersClient::new(envoy.clone());
    let server = servers
        .create_server(
            authed(
                &alice,
                CreateServerRequest {
                    name: "guild".into(),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    let invite = servers
        .create_invite(
            authed(
                &alice,
                CreateInviteRequest {
                    server_id: server.id,
                    ttl_seconds: 0,
                    max_uses: 0,
                },
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    servers
        .join(authed(&bob, JoinRequest { code: invite.code }).unwrap())
        .await
        .unwrap();
    let general = server.channels[0].id;
    chat_with_subscribers_on_every_replica(
        &cluster,
        &envoy,
        ServiceKind::Servers,
        (&bob, &alice),
        general,
        10,
    )
    .await;

    // A chatd process killed: every send through Envoy still succeeds (the others serve,
    // Envoy retries what the dead one refused), and the runner restarts it.
    cluster
        .wait_until_envoys_route_to_every_replica(ServiceKind::Groups)
        .await;
    // Envoy's per-host counters are printed below if a send fails after the kill.
    let old = cluster.signal("groups-0", "KILL");
    for n in 0..40 {
        let text = format!("after-kill-{n}");
        if let Err(e) = send(&envoy, ServiceKind::Groups, &alice, group.id, &text).await {
            let mut counters = String::new();
            for admin in cluster.plan.envoys.iter().map(|e| e.port) {
                let page = chatcluster_tests::http_get(admin, "/clusters").await;
                let hosts = page.lines().filter(|l| {
                    l.starts_with("groups::127.")
                        && ["rq_total", "rq_error", "health_flags"]
                            .iter()
                            .any(|k| l.contains(k))
                });
                counters += &format!("Envoy {admin}: {}\n", hosts.collect::<Vec<_>>().join(" "));
            }
            panic!("{text} failed while groups-0 was down: {e}\n{counters}");
        }
    }
    cluster.wait_for("groups-0 restarted", Duration::from_secs(30), |s| {
        s["processes"].as_array().into_iter().flatten().any(|p| {
            p["name"] == "groups-0"
                && p["restarts"].as_u64() >= Some(1)
                && p["up"] == true
                && p["pid"].as_u64() != Some(u64::from(old))
        })
    });

    // The database primary, first killed (restarted in place), then frozen (a hung host:
    // replaced by failover), under continuous sends retried with the same key until
    // acknowledged. The history must hold exactly the acknowledged messages.
    let fresh = create_group(&envoy, &alice, "durable", vec![])
        .await
        .unwrap();
    let first_primary = cluster.status()["database"]["primary"]
        .as_str()
        .unwrap()
        .to_string();
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut frozen: Option<String> = None;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < 240 {
        assert!(
            Instant::now() < deadline,
            "sends did not resume after {} acknowledged; status {:#}",
            acked.len(),
            cluster.status()
        );
        if acked.len() == 60 && !killed {
            cluster.signal(&first_primary, "KILL");
            killed = true;
        }
        if acked.len() == 140 && frozen.is_none() {
            // A failover is safe only once semi-sync waits for a replica again after the
            // restart, and the loop counts that from the tick after it saw it waiting: freeze
            // the primary only then (fast sends can reach 140 before).
            cluster.wait_for(
                "semi-sync waiting for a replica again",
                Duration::from_secs(30),
                |s| s["database"]["semiSync"]["waiting"].as_u64() >= Some(1),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let primary = cluster.status()["database"]["primary"]
                .as_str()
                .unwrap()
                .to_string();
            cluster.signal(&primary, "STOP");
            frozen = Some(primary);
        }
        let text = format!("m{}", acked.len() + 1);
        match tokio::time::timeout(
            Duration::from_secs(3),
            send(&envoy, ServiceKind::Groups, &alice, fresh.id, &text),
        )
        .await
        {
            Ok(Ok(seq)) => acked.push((text, seq)),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let frozen = frozen.unwrap();
    let status = cluster.status();
    assert_ne!(
        status["database"]["primary"],
        frozen.as_str(),
        "the frozen primary was replaced: {status:#}"
    );
    cluster.signal(&frozen, "CONT");
    let mut groups = GroupsClient::new(envoy.clone());
    // The reads may reach the groups replica that did not take the last sends (so waits for
    // no token of them) and a database replica still applying them: read until it has them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        let history = group_history(&mut groups, &alice, fresh.id).await.unwrap();
        if history.len() >= acked.len() || std::time::Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        history, acked,
        "the history is exactly the acknowledged messages, in order"
    );
    assert_eq!(
        history.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        (1..=240).collect::<Vec<u64>>()
    );
    // The old primary comes back as a replica (fenced; re-seeded if it kept a write nobody
    // acknowledged).
    cluster.wait_for(
        "the frozen primary to rejoin as a replica",
        Duration::from_secs(90),
        |s| {
            s["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == frozen.as_str() && p["role"] == "replica")
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_every_process_and_a_restart_keeps_the_conversations() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start("examples/laptop.yaml"))
        .await
        .unwrap();
    let home = cluster.dir.path().join("chatctl");
    let out = cluster.chatctl(&home, &["register", "carol"]);
    assert!(out.contains("registered and logged in as carol"), "{out}");
    let out = cluster.chatctl(&home, &["group", "create", "notes"]);
    let group = out.split_whitespace().next().unwrap().to_string();
    assert!(group.starts_with("group:"), "{out}");
    cluster.chatctl(&home, &["send", &group, "remember me"]);
    let out = cluster.chatctl(&home, &["history", &group]);
    assert!(out.contains("carol: remember me"), "{out}");
    // The session stream, through Envoy and the gateway: a tail from a cursor, unread counts,
    // read markers.
    let out = cluster.chatctl(&home, &["tail", &group, "--after", "0", "--count", "1"]);
    assert!(
        out.contains("#1") && out.contains("carol: remember me"),
        "{out}"
    );
    let out = cluster.chatctl(&home, &["unread"]);
    assert!(
        out.contains(&format!("{group} ")) && out.contains("1 unread"),
        "{out}"
    );
    let out = cluster.chatctl(&home, &["read", &group]);
    assert!(out.contains("read up to #1"), "{out}");
    let out = cluster.chatctl(&home, &["unread"]);
    assert!(out.contains("(nothing unread)"), "{out}");

    let file = cluster.file.clone();
    let pids: Vec<u32> = cluster.status()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect();
    assert_eq!(
        pids.len(),
        11,
        "2 databases, 5 chatd, chat-xds, Envoy, the broker, Prometheus"
    );
    let (dir, ports) = tokio::task::spawn_blocking(move || cluster.stop_keeping_data())
        .await
        .unwrap();
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived Ctrl-C");
    }

    let cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start_in(file, dir, Some(ports), &[]))
            .await
            .unwrap();
    let out = cluster.chatctl(&home, &["login", "carol"]);
    assert!(out.contains("logged in as carol"), "{out}");
    let out = cluster.chatctl(&home, &["history", &group]);
    assert!(
        out.contains("carol: remember me"),
        "the restarted cluster kept the message: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_sends_and_receives_messages_in_headless_chromium() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start("examples/laptop.yaml"))
        .await
        .unwrap();
    let envoy = channel(&cluster.endpoint()).await;
    let (dave, _) = register(&envoy, "dave").await.unwrap();
    let (erin, erin_id) = register(&envoy, "erin").await.unwrap();
    let group = create_group(&envoy, &dave, "web", vec![erin_id])
        .await
        .unwrap();
    accept_invitation(&envoy, &erin, group.id).await.unwrap();
    send(
        &envoy,
        ServiceKind::Groups,
        &dave,
        group.id,
        "before the page opened",
    )
    .await
    .unwrap();

    let script = repo().join("tests/web/chat.mjs");
    let mut browser = tokio::process::Command::new("node")
        .arg(&script)
        .env("CHAT_URL", format!("{}/", cluster.endpoint()))
        .env("CHAT_USER", "erin")
        .env("CHAT_PASSWORD", PASSWORD)
        .env("CHAT_CONVERSATION", format!("group:{}", group.id))
        .env("CHAT_HISTORY", "before the page opened")
        .env("CHAT_SEND", "hello from the browser")
        .env("CHAT_EXPECT", "hello from gRPC")
        .env("PLAYWRIGHT_DIR", repo().join(".tools/web/node_modules"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (run scripts/setup.sh)");
    let stdout = browser.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // The page subscribed and sent its message; now a message from outside must reach it live.
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the page did not get ready")
            .unwrap();
        match line.as_deref() {
            Some("sent") => break,
            Some(_) => continue,
            None => panic!(
                "the browser script ended early: {:?}",
                browser.wait_with_output().await
            ),
        }
    }
    send(
        &envoy,
        ServiceKind::Groups,
        &dave,
        group.id,
        "hello from gRPC",
    )
    .await
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), browser.wait_with_output())
        .await
        .expect("the browser script did not finish")
        .unwrap();
    assert!(
        out.status.success(),
        "browser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history = group_history(&mut GroupsClient::new(envoy.clone()), &dave, group.id)
        .await
        .unwrap();
    let texts: Vec<&str> = history.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            "before the page opened",
            "hello from the browser",
            "hello from gRPC"
        ]
    );
}

/// A second Ctrl-C stops at once, even while a graceful stop waits on a process that does not
/// stop (here a frozen Envoy, which the first Ctrl-C would give 10 s): every process is gone.
#[test]
fn a_second_ctrl_c_stops_everything_at_once() {
    let cluster = LocalCluster::start("examples/laptop.yaml");
    let processes = cluster.processes();
    let runner = processes.iter().find(|(n, _)| n == "runner").unwrap().1;
    cluster.signal("envoy-0", "STOP");
    let interrupt = || {
        std::process::Command::new("kill")
            .args(["-INT", &runner.to_string()])
            .status()
            .unwrap();
    };
    interrupt();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    interrupt();
    while alive(runner) && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(runner), "the runner outlived a second Ctrl-C by 5 s");
    std::thread::sleep(Duration::from_millis(500));
    for (name, pid) in processes {
        assert!(!alive(pid), "{name} ({pid}) outlived the runner");
    }
}
