//! A hostile client against a running local cluster (`examples/laptop.yaml`), through Envoy,
//! as an outside gRPC client sees it: streams end within a second of losing access, password
//! guessing is throttled per account and per address, a flood of logins stays within its
//! memory, made-up paths add no metric series, one user's subscriptions are capped, a slow
//! reader is cut with its resume point, Envoy's per-client limit answers as configured, and
//! hostile text is refused. Different clients are told apart by their source address
//! (127.0.0.0/8 is all loopback), as Envoy tells them apart.
//!
//! One cluster serves every check, in turn, so the suite costs one cluster start in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::api::ServiceKind;
use chatcluster_tests::{
    chat::{PASSWORD, accept_invitation, authed, create_group, register, slow_reader},
    http_get,
    local::LocalCluster,
    peak_rss_mib,
};
use chatd::{
    pb::{
        auth::{
            GetProfileRequest, LoginRequest, LogoutRequest, RegisterRequest, Session,
            auth_client::AuthClient,
        },
        chat::{Event, SendMessageRequest, SubscribeRequest, event},
        groups::{CreateGroupRequest, RemoveMemberRequest, groups_client::GroupsClient},
        servers::{
            CreateInviteRequest, CreateServerRequest, DeleteChannelRequest, JoinRequest,
            KickRequest, servers_client::ServersClient,
        },
    },
    services::conversation::{RESUME_TRAILER, SLOW_READER},
    token::{Claims, Signer, now_ms},
};
use tonic::{Code, Request, Status, Streaming, transport::Channel};

/// What the cluster is started with: small per-address auth limits, so that the checks
/// reach them in a few calls; writes per user unlimited, so that the slow reader can be
/// buried quickly (the per-user write limit has its own test in chatd's suite).
const LOGINS_PER_MINUTE: u32 = 5;
const REGISTRATIONS_PER_HOUR: u32 = 30;
/// The cluster's environment, from the limits above.
fn env() -> Vec<(&'static str, String)> {
    vec![
        (
            "CHATD_ADDRESS_LOGINS_PER_MINUTE",
            LOGINS_PER_MINUTE.to_string(),
        ),
        (
            "CHATD_ADDRESS_REGISTRATIONS_PER_HOUR",
            REGISTRATIONS_PER_HOUR.to_string(),
        ),
        ("CHATD_RATE_PER_SECOND", "100000".into()),
        ("CHATD_RATE_BURST", "100000".into()),
    ]
}
/// How soon a stream must end once access is gone.
const ONE_SECOND: Duration = Duration::from_secs(1);

/// A client connecting from `source` (an address of 127.0.0.0/8) to `url`.
async fn client(url: &str, source: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .local_address(Some(source.parse().unwrap()))
        .connect()
        .await
        .unwrap()
}

fn user_id(session: &Session) -> u64 {
    session.profile.as_ref().map(|p| p.user_id).unwrap()
}

fn from_start(conv: u64) -> SubscribeRequest {
    SubscribeRequest {
        conversation_id: conv,
        after_seq: 0,
    }
}

fn text(conv: u64, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: conv,
        text: text.into(),
        client_key: String::new(),
    }
}

/// Read `stream` until its status; fails unless it comes within `limit`.
async fn ends_within(stream: &mut Streaming<Event>, limit: Duration) -> Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("the stream did not end within {limit:?}"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => return status,
        }
    }
}

/// Read `stream` until a message arrives (the stream is live).
async fn first_message(stream: &mut Streaming<Event>) {
    chatcluster_tests::chat::next_message(stream).await;
}

fn login(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.into(),
        password: password.into(),
    }
}

fn registration(username: &str) -> RegisterRequest {
    RegisterRequest {
        username: username.into(),
        password: PASSWORD.into(),
        display_name: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_meets_every_limit() {
    let cluster = tokio::task::spawn_blocking(|| {
        let env = env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        LocalCluster::start_with("examples/laptop.yaml", &env)
    })
    .await
    .unwrap();
    let url = cluster.endpoint();
    let envoy = client(&url, "127.0.0.1").await;
    let alice = register(&envoy, "alice").await.unwrap().0;

    streams_end_when_access_ends(&cluster, &envoy, &alice).await;
    password_guessing_is_throttled(&url).await;
    a_login_flood_stays_within_its_memory(&cluster, &url).await;
    made_up_paths_add_no_metric_series(&cluster, &url).await;
    subscriptions_are_capped_and_slow_readers_cut(&cluster, &envoy, &url).await;
    envoys_client_limit_answers_as_configured(&url).await;
    hostile_text_is_refused(&envoy, &alice).await;
}

/// Removed from a group, kicked from a server, the channel deleted, logged out, the token
/// expired: each ends the stream (with its own status) within a second, although nothing
/// is written.
async fn streams_end_when_access_ends(cluster: &LocalCluster, envoy: &Channel, alice: &Session) {
    let mut groups = GroupsClient::new(envoy.clone());
    let mut servers = ServersClient::new(envoy.clone());
    let mut auth = AuthClient::new(envoy.clone());
    let (bob, bob_id) = register(envoy, "bob").await.unwrap();
    let group = create_group(envoy, alice, "team", vec![bob_id])
        .await
        .unwrap();
    accept_invitation(envoy, &bob, group.id).await.unwrap();
    let mut stream = groups
        .subscribe(authed(&bob, from_start(group.id)).unwrap())
        .await
        .unwrap()
        .into_inner();
    groups
        .send_message(authed(alice, text(group.id, "hello")).unwrap())
        .await
        .unwrap();
    first_message(&mut stream).await;
    let remove = RemoveMemberRequest {
        group_id: group.id,
        user_id: bob_id,
    };
    groups
        .remove_member(authed(alice, remove).unwrap())
        .await
        .unwrap();
    let status = ends_within(&mut stream, ONE_SECOND).await;
    assert_eq!(status.code(), Code::PermissionDenied, "removed: {status:?}");

    let server = servers
        .create_server(authed(alice, CreateServerRequest { name: "s".into() }).unwrap())
        .await
        .unwrap()
        .into_inner();
    let channel = server.channels[0].id;
    let invite = CreateInviteRequest {
        server_id: server.id,
        ttl_seconds: 0,
        max_uses: 0,
    };
    let code = servers
        .create_invite(authed(alice, invite).unwrap())
        .await
        .unwrap()
        .into_inner()
        .code;
    let mut joined = Vec::new();
    for name in ["carol", "dave"] {
        let (who, _) = register(envoy, name).await.unwrap();
        let join = JoinRequest { code: code.clone() };
        servers.join(authed(&who, join).unwrap()).await.unwrap();
        let stream = servers
            .subscribe(authed(&who, from_start(channel)).unwrap())
            .await
            .unwrap()
            .into_inner();
        joined.push((who, stream));
    }
    let kick = KickRequest {
        server_id: server.id,
        user_id: user_id(&joined[0].0),
    };
    servers.kick(authed(alice, kick).unwrap()).await.unwrap();
    let status = ends_within(&mut joined[0].1, ONE_SECOND).await;
    assert_eq!(status.code(), Code::PermissionDenied, "kicked: {status:?}");
    let delete = DeleteChannelRequest {
        channel_id: channel,
    };
    servers
        .delete_channel(authed(alice, delete).unwrap())
        .await
        .unwrap();
    let status = ends_within(&mut joined[1].1, ONE_SECOND).await;
    assert_eq!(status.code(), Code::NotFound, "channel deleted: {status:?}");

    // Bob, back in a group, logs out: his stream ends though his token has not expired.
    let again = create_group(envoy, alice, "again", vec![bob_id])
        .await
        .unwrap();
    accept_invitation(envoy, &bob, again.id).await.unwrap();
    let mut stream = groups
        .subscribe(authed(&bob, from_start(again.id)).unwrap())
        .await
        .unwrap()
        .into_inner();
    let out = LogoutRequest {
        refresh_token: bob.refresh_token.clone(),
    };
    auth.logout(authed(&bob, out).unwrap()).await.unwrap();
    let status = ends_within(&mut stream, ONE_SECOND).await;
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "logged out: {status:?}"
    );

    // A token that lives two seconds (signed with the cluster's own key) ends its stream then.
    let key = std::fs::read_to_string(cluster.data.join("secrets/token-private.pem")).unwrap();
    let claims = Claims {
        sub: user_id(alice),
        usr: "alice".into(),
        iat: now_ms(),
        exp: now_ms() + 2_000,
        kid: String::new(),
        sid: String::new(),
    };
    let short = Signer::from_pem(&key).unwrap().sign(&claims);
    let mut req = Request::new(from_start(again.id));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {short}").parse().unwrap());
    let mut stream = groups.subscribe(req).await.unwrap().into_inner();
    let status = ends_within(&mut stream, Duration::from_secs(6)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "expired: {status:?}");
}

/// One account's password guessed from many addresses: the 11th guess is refused before any
/// hash (unless time earned another). Many accounts guessed from one address: the address's limit holds. Accounts made in
/// bulk from one address: its registration limit holds.
async fn password_guessing_is_throttled(url: &str) {
    // An account nobody registered is throttled like any other (its answers must not tell).
    // Ten at once, then one per 6 s: the first refusal comes after ten, plus what the time
    // the hashes took earned.
    let started = std::time::Instant::now();
    let mut refused_at = None;
    for i in 0..20 {
        let mut auth = AuthClient::new(client(url, &format!("127.0.4.{}", i + 1)).await);
        match auth.login(login("victim", &format!("guess {i}"))).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused_at = Some(i);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
            Ok(_) => panic!("a guess succeeded"),
        }
    }
    let earned = (started.elapsed().as_secs_f64() / 6.0).floor() as u32;
    let refused_at = refused_at.expect("guessing one account was never throttled");
    assert!(
        (10..=10 + earned).contains(&refused_at),
        "the first refusal was guess {refused_at} ({earned} attempts earned meanwhile)"
    );

    let mut auth = AuthClient::new(client(url, "127.0.3.2").await);
    for i in 0..=LOGINS_PER_MINUTE {
        let status = auth
            .login(login(&format!("account-{i}"), "guess"))
            .await
            .unwrap_err();
        let expected = if i < LOGINS_PER_MINUTE {
            Code::Unauthenticated
        } else {
            Code::ResourceExhausted
        };
        assert_eq!(
            status.code(),
            expected,
            "login {i} from one address: {status:?}"
        );
    }

    let mut auth = AuthClient::new(client(url, "127.0.3.1").await);
    let mut made = 0;
    let refused = loop {
        match auth.register(registration(&format!("bulk-{made}"))).await {
            Ok(_) => made += 1,
            Err(status) => break status,
        }
        assert!(
            made <= REGISTRATIONS_PER_HOUR,
            "{made} accounts from one address"
        );
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(made, REGISTRATIONS_PER_HOUR);
}

/// 256 logins at once from 256 addresses (a botnet: no per-address limit applies), each a
/// hash: the auth process stays under 256 MiB.
async fn a_login_flood_stays_within_its_memory(cluster: &LocalCluster, url: &str) {
    let pid = cluster.pid("auth-0").expect("auth-0 runs");
    let before = peak_rss_mib(pid);
    let mut clients = Vec::new();
    for i in 0..256 {
        clients.push(AuthClient::new(client(url, &format!("127.0.5.{i}")).await));
    }
    let logins: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut auth)| {
            tokio::spawn(async move { auth.login(login(&format!("nobody-{i}"), "guess")).await })
        })
        .collect();
    for login in logins {
        let code = login.await.unwrap().unwrap_err().code();
        assert!(
            matches!(code, Code::Unauthenticated | Code::ResourceExhausted),
            "{code:?}"
        );
    }
    let after = peak_rss_mib(pid);
    eprintln!("auth-0 peak RSS: {before} MiB before, {after} MiB after 256 concurrent logins");
    assert!(
        after < 256,
        "auth-0 peaked at {after} MiB under 256 concurrent logins"
    );
}

/// Metric lines of `text`, and the calls counted under method `unknown`.
fn series(text: &str) -> (usize, u64) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let unknown = lines
        .iter()
        .filter(|l| l.contains("requests_total") && l.contains("method=\"unknown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    (lines.len(), unknown)
}

/// 10,000 calls to made-up paths (half under the auth package, which Envoy routes to auth;
/// half under made-up packages, which it refuses itself) add no metric series to the auth
/// chatd or to Envoy: the calls are counted under one `unknown` method.
async fn made_up_paths_add_no_metric_series(cluster: &LocalCluster, url: &str) {
    let auth = cluster.plan.service(ServiceKind::Auth).unwrap();
    let metrics_port = auth.port(0) + 1;
    let envoy_admin = cluster.base_port + 40;
    let call = async |channel: &Channel, path: String| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
        let path = path.parse().unwrap();
        grpc.unary(Request::new(()), path, codec).await
    };
    // Once each, so that the one `unknown` series exists before counting.
    let warm = client(url, "127.0.6.1").await;
    let _ = call(&warm, "/chatcluster.auth.v1.Auth/Warm".into()).await;
    let _ = call(&warm, "/made.up.v1.Svc/Warm".into()).await;
    let (chatd_before, unknown_before) = series(&http_get(metrics_port, "/metrics").await);
    let envoy_before = series(&http_get(envoy_admin, "/stats?format=prometheus").await).0;

    const PATHS: usize = 10_000;
    const CLIENTS: usize = 100;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let channel = client(url, &format!("127.0.7.{}", c + 1)).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PATHS / CLIENTS {
                let n = c * 1_000_003 + i * 7_919;
                let path = if i % 2 == 0 {
                    format!("/chatcluster.auth.v1.Auth/Made{n}")
                } else {
                    format!("/pkg{n}.v1.Svc{n}/Made{n}")
                };
                let status = call(&channel, path).await.unwrap_err();
                assert_ne!(status.code(), Code::Ok);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (chatd_after, unknown_after) = series(&http_get(metrics_port, "/metrics").await);
    let envoy_after = series(&http_get(envoy_admin, "/stats?format=prometheus").await).0;
    eprintln!(
        "metric series after {PATHS} made-up paths: auth chatd {chatd_before} → {chatd_after}, Envoy {envoy_before} → {envoy_after}"
    );
    assert_eq!(chatd_after, chatd_before, "the auth chatd's series grew");
    assert_eq!(envoy_after, envoy_before, "Envoy's series grew");
    assert!(
        unknown_after - unknown_before >= (PATHS / 2) as u64,
        "the auth chatd counted {} unknown calls",
        unknown_after - unknown_before
    );
}

/// One user holds at most 256 subscriptions on a replica; a reader that stops reading is cut,
/// through Envoy, with the seq to resume after.
async fn subscriptions_are_capped_and_slow_readers_cut(
    cluster: &LocalCluster,
    envoy: &Channel,
    url: &str,
) {
    let (hoarder, _) = register(envoy, "hoarder").await.unwrap();
    let group = create_group(envoy, &hoarder, "mine", vec![]).await.unwrap();
    let mut open = Vec::new();
    // Envoy takes 100 streams per client connection: three connections, three addresses.
    let mut connections = Vec::new();
    for i in 1..=3 {
        connections.push(GroupsClient::new(
            client(url, &format!("127.0.8.{i}")).await,
        ));
    }
    for i in 0..chatd::services::MAX_SUBSCRIPTIONS_PER_USER as usize {
        let stream = connections[i % 3]
            .subscribe(authed(&hoarder, from_start(group.id)).unwrap())
            .await
            .unwrap();
        open.push(stream.into_inner());
    }
    let refused = connections[0]
        .subscribe(authed(&hoarder, from_start(group.id)).unwrap())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(open);

    // The reader's client and Envoy hold 64 KiB each; chatd's queue and send buffer the rest
    // of what fits; 600 messages of 4 KB, sent straight to chatd, bury them all.
    let (reader, reader_id) = register(envoy, "reader").await.unwrap();
    let busy = create_group(envoy, &hoarder, "busy", vec![reader_id])
        .await
        .unwrap();
    accept_invitation(envoy, &reader, busy.id).await.unwrap();
    let mut stream = GroupsClient::new(slow_reader(url).await)
        .subscribe(authed(&reader, from_start(busy.id)).unwrap())
        .await
        .unwrap()
        .into_inner();
    let mut direct = GroupsClient::new(cluster.replica_channel(ServiceKind::Groups, 0).await);
    const SENT: u64 = 600;
    for i in 0..SENT {
        let body = format!("{i:04}{}", "x".repeat(3_996));
        direct
            .send_message(authed(&hoarder, text(busy.id, &body)).unwrap())
            .await
            .unwrap();
    }
    tokio::time::sleep(SLOW_READER + Duration::from_secs(2)).await;
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("what was buffered comes at once")
        {
            Ok(Some(Event {
                kind: Some(event::Kind::Message(m)),
            })) => {
                assert_eq!(m.seq, last + 1, "in order, no gap");
                last = m.seq;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended without a status after seq {last}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(last < SENT, "cut before the end");
    let resume = status
        .metadata()
        .get(RESUME_TRAILER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        resume,
        Some(last),
        "the trailer names the last seq delivered"
    );
}

/// One address sending 400 calls at once meets Envoy's bucket (200 at once, 100 a second):
/// the rest get RESOURCE_EXHAUSTED from Envoy.
async fn envoys_client_limit_answers_as_configured(url: &str) {
    let channel = client(url, "127.0.9.1").await;
    let calls: Vec<_> = (0..400)
        .map(|i| {
            let mut auth = AuthClient::new(channel.clone());
            tokio::spawn(async move {
                // Without a token: refused by chatd when Envoy lets it through.
                let req = GetProfileRequest { user_id: i };
                auth.get_profile(req).await.unwrap_err().code()
            })
        })
        .collect();
    let mut exhausted = 0;
    for call in calls {
        match call.await.unwrap() {
            Code::ResourceExhausted => exhausted += 1,
            code => assert_eq!(code, Code::Unauthenticated),
        }
    }
    assert!(
        (100..=200).contains(&exhausted),
        "{exhausted} of 400 refused by the per-client limit"
    );
}

/// Terminal escapes in messages and direction overrides in names are refused.
async fn hostile_text_is_refused(envoy: &Channel, alice: &Session) {
    let mut groups = GroupsClient::new(envoy.clone());
    let group = create_group(envoy, alice, "clean", vec![]).await.unwrap();
    for bad in ["\u{1b}[2J\u{1b}[31mpwned", "bell\u{7}", "c1\u{9b}31m"] {
        let status = groups
            .send_message(authed(alice, text(group.id, bad)).unwrap())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    groups
        .send_message(authed(alice, text(group.id, "two\nlines\tand a tab")).unwrap())
        .await
        .unwrap();
    for bad in ["admin\u{202e}nimda", "zero\u{200b}width"] {
        let status = groups
            .create_group(
                authed(
                    alice,
                    CreateGroupRequest {
                        name: bad.into(),
                        member_ids: vec![],
                    },
                )
                .unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let mut auth = AuthClient::new(envoy.clone());
    let status = auth
        .register(RegisterRequest {
            username: "mallory".into(),
            password: PASSWORD.into(),
            display_name: "\u{2066}alice\u{2069}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
