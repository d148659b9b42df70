//! A Subscribe stream lasts only as long as its subscriber's access: removed from the group,
//! kicked from the server, the channel deleted, or the access token expired, the stream ends
//! with the matching status, and nothing sent after the loss reaches it. Real chatd, real
//! MariaDB primary and replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatd::{
    pb::{
        auth::Session,
        chat::{Event, SendMessageRequest, SubscribeRequest, event},
        groups::RemoveMemberRequest,
        servers::{DeleteChannelRequest, JoinRequest, KickRequest},
    },
    token::{Claims, Signer, now_ms},
};
use common::{Setup, authed, register, uid};
use tonic::{Code, Request, Status, Streaming};

/// How soon a stream ends once its subscriber loses access (only the change's own hint
/// meets this: no stream polls, and the shared poll looks only for new messages).
const ONE_SECOND: Duration = Duration::from_secs(1);

fn send(conv: u64, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        conversation_id: conv,
        text: text.into(),
        client_key: String::new(),
    }
}

fn from_start(conv: u64) -> SubscribeRequest {
    SubscribeRequest {
        conversation_id: conv,
        after_seq: 0,
    }
}

/// Read the stream until it ends with an error; the texts delivered before it, and the error.
async fn until_error(stream: &mut Streaming<Event>) -> (Vec<String>, Status) {
    until_error_within(stream, Duration::from_secs(10)).await
}

/// As [`until_error`], failing unless the stream ends within `limit`.
async fn until_error_within(
    stream: &mut Streaming<Event>,
    limit: Duration,
) -> (Vec<String>, Status) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut texts = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the stream ends within {limit:?}"));
        match next {
            Ok(Some(Event {
                kind: Some(event::Kind::Message(m)),
            })) => texts.push(m.text),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status; delivered {texts:?}"),
            Err(status) => return (texts, status),
        }
    }
}

/// Read events until a message with `text` arrives.
async fn until_text(stream: &mut Streaming<Event>, text: &str) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        if matches!(event.kind, Some(event::Kind::Message(m)) if m.text == text) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_removed_from_a_group_gets_nothing_more() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let member = register(&mut c.auth, "member").await;
    let group = c.group(&owner, "team", &[&member]).await;
    let mut stream = c.subscribe_group(&member, group.id).await;
    c.groups
        .send_message(authed(&owner, send(group.id, "before")))
        .await
        .unwrap();
    until_text(&mut stream, "before").await;

    c.groups
        .remove_member(authed(
            &owner,
            RemoveMemberRequest {
                group_id: group.id,
                user_id: uid(&member),
            },
        ))
        .await
        .unwrap();
    let removed = std::time::Instant::now();
    for i in 0..5 {
        c.groups
            .send_message(authed(&owner, send(group.id, &format!("after {i}"))))
            .await
            .unwrap();
    }
    let (delivered, status) = until_error(&mut stream).await;
    assert_eq!(delivered, Vec::<String>::new(), "sent after the removal");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        removed.elapsed() < ONE_SECOND,
        "ended {:?} after the removal",
        removed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kicked_or_with_the_channel_deleted_a_stream_ends_even_when_nobody_writes() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let kicked = register(&mut c.auth, "kicked").await;
    let stays = register(&mut c.auth, "stays").await;
    let server = c.server(&owner, "s").await;
    let channel = server.channels[0].id;
    let invite = c.invite(&owner, server.id).await;
    let subscribe = async |c: &mut common::Clients, who: &Session| {
        let join = JoinRequest {
            code: invite.clone(),
        };
        c.servers.join(authed(who, join)).await.unwrap();
        c.servers
            .subscribe(authed(who, from_start(channel)))
            .await
            .unwrap()
            .into_inner()
    };
    let mut kicked_stream = subscribe(&mut c, &kicked).await;
    let mut other_stream = subscribe(&mut c, &stays).await;

    // No message follows the kick: the kick itself ends the stream, well before the idle
    // subscription's next poll.
    let kick = KickRequest {
        server_id: server.id,
        user_id: uid(&kicked),
    };
    c.servers.kick(authed(&owner, kick)).await.unwrap();
    let (_, status) = until_error_within(&mut kicked_stream, ONE_SECOND).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let delete = DeleteChannelRequest {
        channel_id: channel,
    };
    c.servers
        .delete_channel(authed(&owner, delete))
        .await
        .unwrap();
    let (_, status) = until_error_within(&mut other_stream, ONE_SECOND).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_access_token_expires() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let group = c.group(&owner, "team", &[]).await;
    let key = std::fs::read_to_string(s.keys.dir.path().join("private.pem")).unwrap();
    let claims = Claims {
        sub: uid(&owner),
        usr: "owner".into(),
        iat: now_ms(),
        exp: now_ms() + 2_000,
        kid: String::new(),
        sid: String::new(),
    };
    let short = Signer::from_pem(&key).unwrap().sign(&claims);
    let mut req = Request::new(from_start(group.id));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {short}").parse().unwrap());
    let started = std::time::Instant::now();
    let mut stream = c.groups.subscribe(req).await.unwrap().into_inner();
    let (_, status) = until_error(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(6),
        "ended after {took:?}, the token lived 2 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_out_ends_the_sessions_streams_and_refuses_its_access_token() {
    use chatd::pb::{auth::LogoutRequest, groups::GetGroupRequest};
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let group = c.group(&owner, "team", &[]).await;
    // A second login of the same user: its stream must outlive the first session's logout.
    let other = common::login(&mut c.auth, "owner").await;
    let mut stream = c.subscribe_group(&owner, group.id).await;
    let mut others = c.subscribe_group(&other, group.id).await;
    let out = LogoutRequest {
        refresh_token: owner.refresh_token.clone(),
    };
    c.auth.logout(authed(&owner, out)).await.unwrap();
    let (_, status) = until_error_within(&mut stream, ONE_SECOND).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("logged out"), "{status:?}");

    // The token has not expired, yet no call takes it any more; the other session works.
    let get = |who: &Session| authed(who, GetGroupRequest { group_id: group.id });
    let refused = c.groups.get_group(get(&owner)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    c.groups.get_group(get(&other)).await.unwrap();
    c.groups
        .send_message(authed(&other, send(group.id, "still here")))
        .await
        .unwrap();
    until_text(&mut others, "still here").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_too_slow_is_cut_with_the_seq_to_resume_after() {
    use chatd::services::conversation::{RESUME_TRAILER, SLOW_READER};
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let reader = register(&mut c.auth, "reader").await;
    let group = c.group(&owner, "busy", &[&reader]).await;
    // Opened and then not read: what is sent piles up in the server's buffers until they are
    // full (the queue, the HTTP/2 send buffer and a 64 KiB window: well under 300 × 4 KB).
    let slow = chatcluster_tests::chat::slow_reader(&s.chatd.url()).await;
    let mut stream = chatd::pb::groups::groups_client::GroupsClient::new(slow)
        .subscribe(authed(&reader, from_start(group.id)))
        .await
        .unwrap()
        .into_inner();
    const SENT: u64 = 300;
    for i in 0..SENT {
        let text = format!("{i:04}{}", "x".repeat(3_996));
        c.groups
            .send_message(authed(&owner, send(group.id, &text)))
            .await
            .unwrap();
    }
    tokio::time::sleep(SLOW_READER + Duration::from_secs(2)).await;

    // Reading now finds what was buffered, then the cut, naming the last seq delivered.
    let mut seqs = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("buffered events come at once; had {}", seqs.len()))
        {
            Ok(Some(Event {
                kind: Some(event::Kind::Message(m)),
            })) => seqs.push(m.seq),
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended without a status after {} events", seqs.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let last = *seqs.last().expect("some events were buffered");
    assert!(last < SENT, "the stream was cut before the end: {last}");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "in order, no gap");
    let resume: u64 = status
        .metadata()
        .get(RESUME_TRAILER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the resume trailer");
    assert_eq!(resume, last);
    assert!(status.message().contains(&format!("after_seq = {last}")));

    // Subscribing again from there delivers the rest, each once.
    let mut rest = c
        .groups
        .subscribe(authed(
            &reader,
            SubscribeRequest {
                conversation_id: group.id,
                after_seq: resume,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut next = resume;
    while next < SENT {
        let event = tokio::time::timeout(Duration::from_secs(10), rest.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        if let Some(event::Kind::Message(m)) = event.kind {
            assert_eq!(m.seq, next + 1);
            next = m.seq;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_carries_a_heartbeat_so_proxies_keep_it() {
    use chatd::services::conversation::HEARTBEAT;
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let group = c.group(&owner, "quiet", &[]).await;
    let mut stream = c.subscribe_group(&owner, group.id).await;
    let opened = std::time::Instant::now();
    let event = tokio::time::timeout(HEARTBEAT + Duration::from_secs(5), stream.message())
        .await
        .expect("something within a heartbeat's interval")
        .unwrap()
        .expect("stream open");
    assert!(
        matches!(event.kind, Some(event::Kind::Heartbeat(_))),
        "{event:?}"
    );
    assert!(opened.elapsed() >= HEARTBEAT - Duration::from_secs(1));
}

/// SELECTs the server has run since it started.
#[tokio::test(flavor = "multi_thread")]
async fn idle_streams_cost_the_database_a_poll_per_conversations_not_per_subscriber() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let mut streams = Vec::new();
    for g in 0..4 {
        let group = c.group(&owner, &format!("quiet {g}"), &[]).await;
        for _ in 0..50 {
            streams.push(c.subscribe_group(&owner, group.id).await);
        }
    }
    // Every stream has made its first read; from here on nobody writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, watched) = (common::selects(&s.db.replica), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let per_second =
        (common::selects(&s.db.replica) - before) as f64 / watched.elapsed().as_secs_f64();
    // When each subscription polled on its own, this was about 300 a second. Now it is one
    // poll of the four conversations every 2 s, plus the connection's own reads: about 3.
    assert!(
        per_second < 10.0,
        "{per_second:.1} SELECTs/s on the replica for 200 idle streams"
    );
    assert_eq!(streams.len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_nobody_hinted_is_delivered_by_the_shared_poll() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let group = c.group(&owner, "unhinted", &[]).await;
    let mut stream = c.subscribe_group(&owner, group.id).await;
    // Written behind chatd's back, as if its hint had been lost: only the poll can tell.
    s.db.primary.sql(&format!(
        "INSERT INTO chat.groups_messages (conversation_id, seq, sender_id, text, sent_at_ms) \
         VALUES ({}, 0, {}, 'behind its back', 0)",
        group.id,
        uid(&owner)
    ));
    tokio::time::timeout(
        Duration::from_secs(5),
        until_text(&mut stream, "behind its back"),
    )
    .await
    .expect("delivered within a poll or two");
}
