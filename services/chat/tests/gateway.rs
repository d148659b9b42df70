//! The session stream, end to end: a gateway replica (A) holds the sessions, two other chatd
//! replicas (B, C) take the writes, and hints go between them through a real NATS broker, on
//! real MariaDB (a primary and a replica).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use chatcluster_tests::{free_port, nats::Nats};
use chatd::pb::{
    auth::Session,
    dms::OpenRequest as OpenDm,
    gateway::{
        ConversationRef, Cursor, Kind, MarkReadRequest, OpenRequest, Presence, PresenceState,
        SessionEvent, SetPresenceRequest, SetTypingRequest, Typing, gateway_client::GatewayClient,
        session_event,
    },
    groups::{AddMemberRequest, RemoveMemberRequest},
    servers::{CreateChannelRequest, JoinRequest},
};
use common::{Chatd, Clients, Db, Keys, Options, authed, register, send, uid};
use tonic::{Code, Streaming, transport::Channel};

/// A gateway (A) and two writing replicas (B with auth, C with a gateway too), sharing a
/// broker.
struct Cluster {
    _keys: Keys,
    db: Db,
    broker: Nats,
    replicas: Vec<Chatd>,
    b: Clients,
    c: Clients,
    gateway: GatewayClient<Channel>,
    /// C's gateway.
    other_gateway: GatewayClient<Channel>,
}

impl Cluster {
    async fn start() -> Self {
        let keys = Keys::new();
        let db = Db::start();
        let broker = Nats::start();
        let start = |services| {
            let opts = Options {
                broker: Some(broker.address()),
                ..Options::new(services, &db)
            };
            Chatd::start(&keys, opts, free_port())
        };
        let a = start("gateway");
        let b = start("auth,groups,dms,servers");
        let c = start("groups,dms,servers,gateway");
        let gateway = GatewayClient::new(a.channel().await);
        let other_gateway = GatewayClient::new(c.channel().await);
        let (b_clients, c_clients) = (Clients::new(&b).await, Clients::new(&c).await);
        Self {
            _keys: keys,
            db,
            broker,
            replicas: vec![a, b, c],
            b: b_clients,
            c: c_clients,
            gateway,
            other_gateway,
        }
    }

    async fn open(&mut self, who: &Session, cursors: Vec<Cursor>) -> Streaming<SessionEvent> {
        self.gateway
            .open(authed(who, OpenRequest { cursors }))
            .await
            .unwrap()
            .into_inner()
    }
}

fn reference(kind: Kind, id: u64) -> Option<ConversationRef> {
    Some(ConversationRef {
        kind: kind as i32,
        id,
    })
}

/// The next event that is not a heartbeat, within 10 s.
async fn next(stream: &mut Streaming<SessionEvent>) -> session_event::Kind {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream goes on");
        match event.kind.unwrap() {
            session_event::Kind::Heartbeat(_) => continue,
            kind => return kind,
        }
    }
}

/// The next event within `wait`, if any.
async fn next_within(
    stream: &mut Streaming<SessionEvent>,
    wait: Duration,
) -> Option<session_event::Kind> {
    tokio::time::timeout(wait, next(stream)).await.ok()
}

/// (kind, conversation, seq) of a message event.
fn message(kind: &session_event::Kind) -> Option<(i32, u64, u64)> {
    match kind {
        session_event::Kind::Message(m) => {
            let msg = m.message.as_ref()?;
            Some((m.kind, msg.conversation_id, msg.seq))
        }
        _ => None,
    }
}

/// Messages delivered, by (kind, conversation), until `want` of them came.
async fn messages(
    stream: &mut Streaming<SessionEvent>,
    want: usize,
) -> BTreeMap<(i32, u64), Vec<u64>> {
    let mut got: BTreeMap<(i32, u64), Vec<u64>> = BTreeMap::new();
    let mut n = 0;
    while n < want {
        let event = next(stream).await;
        let (kind, conv, seq) = message(&event).unwrap_or_else(|| panic!("a message: {event:?}"));
        got.entry((kind, conv)).or_default().push(seq);
        n += 1;
    }
    got
}

fn snapshot(event: session_event::Kind) -> BTreeMap<(i32, u64), (u64, u64, u64)> {
    let session_event::Kind::Snapshot(s) = event else {
        panic!("the session opens with a snapshot: {event:?}");
    };
    s.conversations
        .iter()
        .map(|c| {
            let r = c.conversation.unwrap();
            ((r.kind, r.id), (c.last_seq, c.read_seq, c.unread))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_carries_every_conversation_in_order_exactly_once_and_follows_membership() {
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let bob = register(&mut k.b.auth, "bob").await;
    let group = k.b.group(&alice, "team", &[&bob]).await;
    let dm =
        k.c.dms
            .open(authed(&alice, OpenDm { user_id: uid(&bob) }))
            .await
            .unwrap()
            .into_inner();
    let server = k.c.server(&alice, "guild").await;
    let code = k.c.invite(&alice, server.id).await;
    k.b.servers
        .join(authed(&bob, JoinRequest { code }))
        .await
        .unwrap();
    let channel = server.channels[0].id;

    // Bob's writes went through B and C, which the gateway knows nothing of: its snapshot
    // still has them.
    let mut session = k.open(&bob, vec![]).await;
    let first = snapshot(next(&mut session).await);
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        vec![
            (Kind::Group as i32, group.id),
            (Kind::Dm as i32, dm.id),
            (Kind::Channel as i32, channel)
        ]
    );

    // Sends through B and C, interleaved: each conversation in order, each message once.
    for i in 0..6 {
        let (writer, conv) = if i % 2 == 0 {
            (&mut k.b, group.id)
        } else {
            (&mut k.c, group.id)
        };
        writer
            .groups
            .send_message(authed(
                &alice,
                send(conv, &format!("g{i}"), &format!("g{i}")),
            ))
            .await
            .unwrap();
        if i < 3 {
            k.c.dms
                .send_message(authed(&alice, send(dm.id, "dm", &format!("d{i}"))))
                .await
                .unwrap();
            k.b.servers
                .send_message(authed(&alice, send(channel, "ch", &format!("c{i}"))))
                .await
                .unwrap();
        }
    }
    let got = messages(&mut session, 12).await;
    assert_eq!(got[&(Kind::Group as i32, group.id)], vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(got[&(Kind::Dm as i32, dm.id)], vec![1, 2, 3]);
    assert_eq!(got[&(Kind::Channel as i32, channel)], vec![1, 2, 3]);
    let extra = next_within(&mut session, Duration::from_millis(500)).await;
    assert!(extra.is_none(), "nothing more: {extra:?}");

    // Invited to a second group and accepting it (through C): it joins the session at once.
    let second = k.b.group(&alice, "second", &[]).await;
    let add = AddMemberRequest {
        group_id: second.id,
        user_id: uid(&bob),
        role: 0,
    };
    k.b.groups.add_member(authed(&alice, add)).await.unwrap();
    k.c.accept(&bob, second.id).await;
    let joined = next(&mut session).await;
    let session_event::Kind::Joined(state) = joined else {
        panic!("joined: {joined:?}");
    };
    assert_eq!(state.conversation, reference(Kind::Group, second.id));
    k.c.groups
        .send_message(authed(&alice, send(second.id, "welcome", "w")))
        .await
        .unwrap();
    assert_eq!(
        message(&next(&mut session).await),
        Some((Kind::Group as i32, second.id, 1))
    );

    // Removed: the conversation leaves the session within a second, and nothing after.
    let remove = RemoveMemberRequest {
        group_id: second.id,
        user_id: uid(&bob),
    };
    k.b.groups
        .remove_member(authed(&alice, remove))
        .await
        .unwrap();
    let left = next_within(&mut session, Duration::from_secs(1))
        .await
        .expect("left within a second");
    assert_eq!(
        left,
        session_event::Kind::Left(reference(Kind::Group, second.id).unwrap())
    );
    k.c.groups
        .send_message(authed(&alice, send(second.id, "secret", "s")))
        .await
        .unwrap();
    let after = next_within(&mut session, Duration::from_millis(700)).await;
    assert!(after.is_none(), "nothing of a group left: {after:?}");

    // A new channel of the server joins the session.
    let created =
        k.c.servers
            .create_channel(authed(
                &alice,
                CreateChannelRequest {
                    server_id: server.id,
                    name: "random".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
    let joined = next(&mut session).await;
    let session_event::Kind::Joined(state) = joined else {
        panic!("joined: {joined:?}");
    };
    assert_eq!(state.conversation, reference(Kind::Channel, created.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_resumes_from_its_cursors_and_survives_a_broker_restart() {
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let bob = register(&mut k.b.auth, "bob").await;
    let group = k.b.group(&alice, "team", &[&bob]).await;
    let mut sent = 0;
    let mut say = async |k: &mut Cluster, n: usize| {
        for _ in 0..n {
            sent += 1;
            let writer = if sent % 2 == 0 { &mut k.b } else { &mut k.c };
            writer
                .groups
                .send_message(authed(&alice, send(group.id, "hi", &format!("m{sent}"))))
                .await
                .unwrap();
        }
    };
    let mut session = k.open(&bob, vec![]).await;
    snapshot(next(&mut session).await);
    say(&mut k, 3).await;
    let got = messages(&mut session, 3).await;
    assert_eq!(got[&(Kind::Group as i32, group.id)], vec![1, 2, 3]);

    // Gone, then back with its cursor: what it missed, once.
    drop(session);
    say(&mut k, 4).await;
    let cursor = Cursor {
        conversation: reference(Kind::Group, group.id),
        after_seq: 3,
    };
    let mut session = k.open(&bob, vec![cursor]).await;
    let opened = snapshot(next(&mut session).await);
    assert_eq!(opened[&(Kind::Group as i32, group.id)].0, 7, "last seq");
    let got = messages(&mut session, 4).await;
    assert_eq!(got[&(Kind::Group as i32, group.id)], vec![4, 5, 6, 7]);

    // The broker down: the safety poll delivers; back up: hints again; none lost or repeated.
    k.broker.stop();
    say(&mut k, 2).await;
    let got = messages(&mut session, 2).await;
    assert_eq!(got[&(Kind::Group as i32, group.id)], vec![8, 9]);
    k.broker.start_again();
    say(&mut k, 3).await;
    let got = messages(&mut session, 3).await;
    assert_eq!(got[&(Kind::Group as i32, group.id)], vec![10, 11, 12]);
    let extra = next_within(&mut session, Duration::from_millis(500)).await;
    assert!(extra.is_none(), "nothing more: {extra:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_markers_and_unread_counts_follow_the_user_across_sessions() {
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let bob = register(&mut k.b.auth, "bob").await;
    let phone = common::login(&mut k.b.auth, "bob").await;
    let group = k.b.group(&alice, "team", &[&bob]).await;
    for i in 0..3 {
        k.b.groups
            .send_message(authed(&alice, send(group.id, "hi", &format!("m{i}"))))
            .await
            .unwrap();
    }
    let key = (Kind::Group as i32, group.id);
    let mut desktop = k.open(&bob, vec![]).await;
    let mut mobile = k.open(&phone, vec![]).await;
    assert_eq!(snapshot(next(&mut desktop).await)[&key], (3, 0, 3));
    assert_eq!(snapshot(next(&mut mobile).await)[&key], (3, 0, 3));

    let mark = |seq| MarkReadRequest {
        conversation: reference(Kind::Group, group.id),
        seq,
    };
    let marker = k.gateway.mark_read(authed(&bob, mark(2))).await.unwrap();
    assert_eq!(marker.into_inner().read_seq, 2);
    for stream in [&mut desktop, &mut mobile] {
        let event = next(stream).await;
        let session_event::Kind::Read(r) = event else {
            panic!("a read marker: {event:?}");
        };
        assert_eq!(
            (r.conversation, r.read_seq),
            (reference(Kind::Group, group.id), 2)
        );
    }
    // Markers never go back, nor past the newest message.
    let back = k.gateway.mark_read(authed(&phone, mark(1))).await.unwrap();
    assert_eq!(back.into_inner().read_seq, 2);
    let reopened = snapshot(next(&mut k.open(&phone, vec![]).await).await);
    assert_eq!(reopened[&key], (3, 2, 1));
    let past = k.gateway.mark_read(authed(&bob, mark(99))).await.unwrap();
    assert_eq!(past.into_inner().read_seq, 3);

    // Not a member, or no such kind: refused.
    let outsider = register(&mut k.b.auth, "eve").await;
    let denied = k
        .gateway
        .mark_read(authed(&outsider, mark(1)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let nameless = MarkReadRequest {
        conversation: Some(ConversationRef { kind: 0, id: 1 }),
        seq: 1,
    };
    let invalid = k
        .gateway
        .mark_read(authed(&bob, nameless))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_cost_the_database_nothing() {
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let mut users = Vec::new();
    for i in 0..20 {
        users.push(register(&mut k.b.auth, &format!("user{i}")).await);
    }
    let members: Vec<&Session> = users.iter().collect();
    for g in 0..5 {
        k.b.group(&alice, &format!("quiet {g}"), &members).await;
    }
    // 20 users x 10 sessions, each following 5 groups.
    let mut sessions = Vec::new();
    for user in &users {
        for _ in 0..10 {
            let mut s = k.open(user, vec![]).await;
            snapshot(next(&mut s).await);
            sessions.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, watched) = (common::selects(&k.db.replica), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let per_second =
        (common::selects(&k.db.replica) - before) as f64 / watched.elapsed().as_secs_f64();
    // The gateway's safety poll (five conversations every 2 s) and the pools' own reads.
    assert!(
        per_second < 10.0,
        "{per_second:.1} SELECTs/s on the replica for 200 idle sessions"
    );
    assert_eq!(sessions.len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_and_presence_reach_the_other_member_across_gateways_and_say_how_long_they_hold() {
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let bob = register(&mut k.b.auth, "bob").await;
    let group = k.b.group(&alice, "team", &[&bob]).await;
    // Bob on gateway A, Alice on C's: what they say crosses the broker.
    let mut bobs = k.open(&bob, vec![]).await;
    snapshot(next(&mut bobs).await);
    let mut alices = k
        .other_gateway
        .open(authed(&alice, OpenRequest { cursors: vec![] }))
        .await
        .unwrap()
        .into_inner();
    snapshot(next(&mut alices).await);
    let presence = |state: PresenceState| {
        session_event::Kind::Presence(Presence {
            user_id: uid(&alice),
            state: state as i32,
            for_ms: 90_000,
        })
    };
    assert_eq!(next(&mut bobs).await, presence(PresenceState::Online));

    let typing = SetTypingRequest {
        conversation: reference(Kind::Group, group.id),
    };
    k.other_gateway
        .set_typing(authed(&alice, typing))
        .await
        .unwrap();
    assert_eq!(
        next(&mut bobs).await,
        session_event::Kind::Typing(Typing {
            conversation: reference(Kind::Group, group.id),
            user_id: uid(&alice),
            for_ms: 6_000,
        })
    );
    let own = next_within(&mut alices, Duration::from_millis(300)).await;
    assert!(own.is_none(), "nobody hears themself type: {own:?}");

    // Idle, set on any gateway, reaches her sessions and so the members; gone, offline.
    let idle = SetPresenceRequest {
        state: PresenceState::Idle as i32,
    };
    k.gateway.set_presence(authed(&alice, idle)).await.unwrap();
    assert_eq!(next(&mut bobs).await, presence(PresenceState::Idle));
    // Toggled 20 times at once: her sessions announce a change at most every 5 s, so bob
    // hears at most one of them now (each announcement goes to all her conversations).
    for i in 0..20 {
        let state = [PresenceState::Online, PresenceState::Idle][i % 2];
        let toggle = SetPresenceRequest {
            state: state as i32,
        };
        k.gateway
            .set_presence(authed(&alice, toggle))
            .await
            .unwrap();
    }
    let mut heard = 0;
    while let Some(event) = next_within(&mut bobs, Duration::from_secs(2)).await {
        assert!(
            matches!(event, session_event::Kind::Presence(_)),
            "{event:?}"
        );
        heard += 1;
    }
    assert!(heard <= 1, "{heard} presences heard from 20 toggles");
    drop(alices);
    assert_eq!(next(&mut bobs).await, presence(PresenceState::Offline));

    // Typing where one is not a member, or saying "offline": refused.
    let eve = register(&mut k.b.auth, "eve").await;
    let denied = k
        .gateway
        .set_typing(authed(&eve, typing))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let offline = SetPresenceRequest {
        state: PresenceState::Offline as i32,
    };
    let invalid = k
        .gateway
        .set_presence(authed(&eve, offline))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_too_slow_is_cut_and_resumes_from_its_cursors_with_nothing_missed() {
    use chatd::services::conversation::SLOW_READER;
    let mut k = Cluster::start().await;
    let alice = register(&mut k.b.auth, "alice").await;
    let bob = register(&mut k.b.auth, "bob").await;
    let group = k.b.group(&alice, "busy", &[&bob]).await;
    // Opened and then not read: the queue, the HTTP/2 buffers and a 64 KiB window fill.
    let slow = chatcluster_tests::chat::slow_reader(&k.replicas[0].url()).await;
    let mut session = GatewayClient::new(slow)
        .open(authed(&bob, OpenRequest { cursors: vec![] }))
        .await
        .unwrap()
        .into_inner();
    const SENT: u64 = 300;
    for i in 0..SENT {
        let text = format!("{i:04}{}", "x".repeat(3_996));
        k.b.groups
            .send_message(authed(&alice, send(group.id, &text, &format!("m{i}"))))
            .await
            .unwrap();
    }
    tokio::time::sleep(SLOW_READER + Duration::from_secs(2)).await;

    // What was buffered, then the cut.
    let mut seqs = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), session.message())
            .await
            .expect("buffered events come at once")
        {
            Ok(Some(event)) => {
                if let Some((_, _, seq)) = event.kind.as_ref().and_then(message) {
                    seqs.push(seq);
                }
            }
            Ok(None) => panic!("ended without a status after {seqs:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("cursors"), "{status:?}");
    let last = *seqs.last().expect("some messages came before the cut");
    assert!(last < SENT, "cut before the end: {last}");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "in order, no gap");

    // Opened again from the last seq received: the rest, each once.
    let cursor = Cursor {
        conversation: reference(Kind::Group, group.id),
        after_seq: last,
    };
    let mut again = k.open(&bob, vec![cursor]).await;
    snapshot(next(&mut again).await);
    let rest = messages(&mut again, (SENT - last) as usize).await;
    assert_eq!(
        rest[&(Kind::Group as i32, group.id)],
        (last + 1..=SENT).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_holds_a_bounded_number_of_sessions() {
    use chatd::services::MAX_SESSIONS_PER_USER;
    let mut k = Cluster::start().await;
    let bob = register(&mut k.b.auth, "bob").await;
    let mut open = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_USER {
        let mut s = k.open(&bob, vec![]).await;
        snapshot(next(&mut s).await);
        open.push(s);
    }
    let refused = k
        .gateway
        .open(authed(&bob, OpenRequest { cursors: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A closed session gives its place back.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match k
            .gateway
            .open(authed(&bob, OpenRequest { cursors: vec![] }))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the place never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Too many cursors: refused before anything is read.
    let many = (1..=1001)
        .map(|id| Cursor {
            conversation: reference(Kind::Group, id),
            after_seq: 0,
        })
        .collect();
    let refused = k
        .other_gateway
        .open(authed(&bob, OpenRequest { cursors: many }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
