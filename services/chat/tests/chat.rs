//! chatd against real MariaDB servers (a primary and a GTID replica), as real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatcluster_tests::free_port;
use chatd::pb::{
    auth::{GetProfileRequest, LoginRequest, RefreshRequest, UpdateProfileRequest},
    chat::{DeleteMessageRequest, EditMessageRequest, HistoryRequest, SubscribeRequest, event},
    dms::OpenRequest,
    groups::{AddMemberRequest, CreateGroupRequest, GetGroupRequest, RemoveMemberRequest, Role},
    servers::{CreateChannelRequest, CreateInviteRequest, JoinRequest, KickRequest},
};
use common::{Chatd, Clients, Db, Keys, Options, Setup, authed, register, send, uid};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn accounts_tokens_and_profiles() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let ada = register(&mut c.auth, "ada").await;
    assert_eq!(ada.profile.as_ref().unwrap().display_name, "ada");

    let taken = c
        .auth
        .register(chatd::pb::auth::RegisterRequest {
            username: "ada".into(),
            password: "another password".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    let wrong = c
        .auth
        .login(LoginRequest {
            username: "ada".into(),
            password: "wrong password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let login = common::login(&mut c.auth, "ada").await;

    // Refresh tokens rotate: the old one works once.
    let refreshed = c
        .auth
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let again = c
        .auth
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    // That reuse revoked the whole session: the rotated token's access token stops working
    // within a revocation poll, so the client logs in again.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let get = GetProfileRequest { user_id: 0 };
        match c.auth.get_profile(authed(&refreshed, get)).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the reused session's access token still works"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refreshed = common::login(&mut c.auth, "ada").await;

    // Profile update, read back at once (read-your-writes through the replica path).
    let updated = c
        .auth
        .update_profile(authed(
            &refreshed,
            UpdateProfileRequest {
                display_name: Some("Ada L. <b>".into()),
                bio: Some("maths; 'quotes' \"too\"".into()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Ada L. <b>");
    let read = c
        .auth
        .get_profile(authed(&refreshed, GetProfileRequest { user_id: 0 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.bio, "maths; 'quotes' \"too\"");

    // Missing, malformed and forged tokens.
    let none = c
        .auth
        .get_profile(GetProfileRequest { user_id: 0 })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let mut forged = refreshed.clone();
    forged.access_token.push('x');
    let bad = c
        .auth
        .get_profile(authed(&forged, GetProfileRequest { user_id: 0 }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    let missing = c
        .auth
        .get_profile(authed(&refreshed, GetProfileRequest { user_id: 999_999 }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn group_authz_matrix() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let admin = register(&mut c.auth, "admin").await;
    let member = register(&mut c.auth, "member").await;
    let outsider = register(&mut c.auth, "outsider").await;
    let group = c.group(&owner, "team", &[&member]).await;
    c.groups
        .add_member(authed(
            &owner,
            AddMemberRequest {
                group_id: group.id,
                user_id: uid(&admin),
                role: Role::Admin as i32,
            },
        ))
        .await
        .unwrap();
    c.accept(&admin, group.id).await;

    // Members read and write; the outsider does neither.
    for who in [&owner, &admin, &member] {
        c.groups
            .send_message(authed(who, send(group.id, "hello", "")))
            .await
            .unwrap();
    }
    let denied = c
        .groups
        .send_message(authed(&outsider, send(group.id, "let me in", "")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .groups
        .history(authed(
            &outsider,
            HistoryRequest {
                conversation_id: group.id,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .groups
        .get_group(authed(&outsider, GetGroupRequest { group_id: group.id }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let missing = c
        .groups
        .send_message(authed(&owner, send(group.id + 1000, "anyone?", "")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A member cannot add or remove; an admin cannot remove an admin or the owner.
    let denied = c
        .groups
        .add_member(authed(
            &member,
            AddMemberRequest {
                group_id: group.id,
                user_id: uid(&outsider),
                role: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .groups
        .remove_member(authed(
            &admin,
            RemoveMemberRequest {
                group_id: group.id,
                user_id: uid(&owner),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Only the sender edits; the sender or a moderator deletes.
    let msg = c
        .groups
        .send_message(authed(&member, send(group.id, "typo", "")))
        .await
        .unwrap()
        .into_inner();
    let denied = c
        .groups
        .edit_message(authed(
            &admin,
            EditMessageRequest {
                conversation_id: group.id,
                seq: msg.seq,
                text: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let edited = c
        .groups
        .edit_message(authed(
            &member,
            EditMessageRequest {
                conversation_id: group.id,
                seq: msg.seq,
                text: "fixed".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edited.text, "fixed");
    assert!(edited.edited_at_ms > 0);
    let other = c
        .groups
        .send_message(authed(&owner, send(group.id, "owner's", "")))
        .await
        .unwrap()
        .into_inner();
    let denied = c
        .groups
        .delete_message(authed(
            &member,
            DeleteMessageRequest {
                conversation_id: group.id,
                seq: other.seq,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let deleted = c
        .groups
        .delete_message(authed(
            &admin,
            DeleteMessageRequest {
                conversation_id: group.id,
                seq: other.seq,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted && deleted.text.is_empty());

    // Removed members lose access at once.
    c.groups
        .remove_member(authed(
            &admin,
            RemoveMemberRequest {
                group_id: group.id,
                user_id: uid(&member),
            },
        ))
        .await
        .unwrap();
    let denied = c
        .groups
        .send_message(authed(&member, send(group.id, "still here?", "")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn dms_and_servers_authz() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let b = register(&mut c.auth, "bob").await;
    let e = register(&mut c.auth, "eve").await;

    let conv = c
        .dms
        .open(authed(&a, OpenRequest { user_id: uid(&b) }))
        .await
        .unwrap()
        .into_inner();
    let same = c
        .dms
        .open(authed(&b, OpenRequest { user_id: uid(&a) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(conv.id, same.id, "one conversation per pair");
    c.dms
        .send_message(authed(&b, send(conv.id, "hi alice", "")))
        .await
        .unwrap();
    for status in [
        c.dms
            .send_message(authed(&e, send(conv.id, "hi both", "")))
            .await
            .unwrap_err(),
        c.dms
            .history(authed(
                &e,
                HistoryRequest {
                    conversation_id: conv.id,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    let self_dm = c
        .dms
        .open(authed(&a, OpenRequest { user_id: uid(&a) }))
        .await
        .unwrap_err();
    assert_eq!(self_dm.code(), Code::InvalidArgument);

    // Servers: invite, join, channel permissions, kick.
    let server = c.server(&a, "club").await;
    let general = server.channels[0].id;
    let denied = c
        .servers
        .send_message(authed(&b, send(general, "before joining", "")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invite = c
        .servers
        .create_invite(authed(
            &a,
            CreateInviteRequest {
                server_id: server.id,
                ttl_seconds: 60,
                max_uses: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    c.servers
        .join(authed(
            &b,
            JoinRequest {
                code: invite.code.clone(),
            },
        ))
        .await
        .unwrap();
    let used_up = c
        .servers
        .join(authed(&e, JoinRequest { code: invite.code }))
        .await
        .unwrap_err();
    assert_eq!(used_up.code(), Code::FailedPrecondition);
    let unknown = c
        .servers
        .join(authed(
            &e,
            JoinRequest {
                code: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    c.servers
        .send_message(authed(&b, send(general, "joined!", "")))
        .await
        .unwrap();
    let denied = c
        .servers
        .create_channel(authed(
            &b,
            CreateChannelRequest {
                server_id: server.id,
                name: "mine".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .servers
        .create_invite(authed(
            &b,
            CreateInviteRequest {
                server_id: server.id,
                ttl_seconds: 0,
                max_uses: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .servers
        .kick(authed(
            &b,
            KickRequest {
                server_id: server.id,
                user_id: uid(&a),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    c.servers
        .kick(authed(
            &a,
            KickRequest {
                server_id: server.id,
                user_id: uid(&b),
            },
        ))
        .await
        .unwrap();
    let kicked = c
        .servers
        .send_message(authed(&b, send(general, "hello?", "")))
        .await
        .unwrap_err();
    assert_eq!(kicked.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_are_idempotent_and_history_pages() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let g = c.group(&a, "g", &[]).await;
    let first = c
        .groups
        .send_message(authed(&a, send(g.id, "once", "k-1")))
        .await
        .unwrap()
        .into_inner();
    let retry = c
        .groups
        .send_message(authed(&a, send(g.id, "once", "k-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.seq, retry.seq);
    assert_eq!(first.seq, 1);
    for i in 2..=25 {
        let m = c
            .groups
            .send_message(authed(&a, send(g.id, &format!("m{i}"), &format!("k-{i}"))))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(m.seq, i, "no gap, no duplicate");
    }
    let page = |before, after, limit| HistoryRequest {
        conversation_id: g.id,
        before,
        after,
        limit,
    };
    let newest = c
        .groups
        .history(authed(&a, page(0, 0, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (16..=25).rev().collect::<Vec<_>>()
    );
    assert!(newest.more);
    let older = c
        .groups
        .history(authed(&a, page(16, 0, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(older.messages.first().map(|m| m.seq), Some(15));
    let oldest = c
        .groups
        .history(authed(&a, page(6, 0, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        oldest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    assert!(!oldest.more);
    let forward = c
        .groups
        .history(authed(&a, page(0, 23, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        forward.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![24, 25]
    );
    assert!(!forward.more);
    let beyond = c
        .groups
        .history(authed(&a, page(0, 25, 10)))
        .await
        .unwrap()
        .into_inner();
    assert!(beyond.messages.is_empty());
    for bad in [page(5, 5, 10), page(0, 0, 201)] {
        let e = c.groups.history(authed(&a, bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}

/// Sends race each other and their own retries: the seq trigger hands every distinct message
/// one seq of 1..=N, and a retry racing its first try gets that message, consuming none.
#[tokio::test(flavor = "multi_thread")]
async fn racing_sends_and_retries_get_every_seq_once() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 15;
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let g = c.group(&a, "race", &[]).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // A send and its retry in flight at once.
        let (mut one, mut two) = (c.groups.clone(), c.groups.clone());
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..EACH {
                let key = format!("w{w}-{i}");
                let text = format!("from {w}, {i}");
                let (first, retry) = tokio::join!(
                    one.send_message(authed(&a, send(g.id, &text, &key))),
                    two.send_message(authed(&a, send(g.id, &text, &key))),
                );
                let (first, retry) = (first.unwrap().into_inner(), retry.unwrap().into_inner());
                assert_eq!(first.seq, retry.seq, "{key}: one message for a key");
                got.push(first.seq);
            }
            got
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=WRITERS * EACH).collect::<Vec<_>>());
    assert_eq!(
        common::newest_group_seq(&mut c, &a, g.id).await,
        WRITERS * EACH,
        "no seq was skipped"
    );
    let n = WRITERS * EACH;
    let last = |db: &common::Db| {
        db.primary.sql(&format!(
            "SELECT last_seq FROM chat.groups_groups WHERE id = {}",
            g.id
        ))
    };
    assert_eq!(
        last(&s.db).trim(),
        n.to_string(),
        "a refused retry left a bump"
    );

    // A chatd of before the trigger, still running during a rolling upgrade, numbers its
    // message itself: the trigger leaves it alone, and the next send follows it.
    s.db.primary.sql(&format!(
        "UPDATE chat.groups_groups SET last_seq = last_seq + 1 WHERE id = {g};
         INSERT INTO chat.groups_messages (conversation_id, seq, sender_id, text, sent_at_ms)
           SELECT id, last_seq, {a}, 'old', 0 FROM chat.groups_groups WHERE id = {g}",
        g = g.id,
        a = uid(&a)
    ));
    let next = c
        .groups
        .send_message(authed(&a, send(g.id, "new", "after-old")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.seq, n + 2);
    assert_eq!(last(&s.db).trim(), (n + 2).to_string());
    // A message for a conversation that does not exist is refused by the trigger itself.
    let refused = s.db.primary.try_sql(&format!(
        "INSERT INTO chat.groups_messages (conversation_id, seq, sender_id, text, sent_at_ms)
           VALUES ({}, 0, {}, 'lost', 0)",
        g.id + 1000,
        uid(&a)
    ));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no such conversation")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_proper_statuses() {
    let s = Setup::with_rate(5.0);
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let g = c.group(&a, "g", &[]).await;
    let long = "x".repeat(4001);
    for (text, key) in [
        ("", ""),
        ("   \n\t", ""),
        (long.as_str(), ""),
        ("ok", &"k".repeat(65)),
    ] {
        let e = c
            .groups
            .send_message(authed(&a, send(g.id, text, key)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{text:?}");
    }
    for name in ["", "  ", &"n".repeat(101)] {
        let e = c
            .groups
            .create_group(authed(
                &a,
                CreateGroupRequest {
                    name: name.to_string(),
                    member_ids: vec![],
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let e = c
        .auth
        .register(chatd::pb::auth::RegisterRequest {
            username: "Robert'); DROP TABLE auth_users;--".into(),
            password: "password123".into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Control characters (NUL, terminal escapes) are refused; newlines and tabs are not.
    // (Each refused send counts against this cluster's 5/s rate limit: one per second.)
    for control in ["nul \0 end", "escape \u{1b}[2J", "c1 \u{9b}"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let refused = c
            .groups
            .send_message(authed(&a, send(g.id, control, "")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{control:?}");
    }
    // (Refused sends count against this cluster's 5/s rate limit: let it refill.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Other hostile text is stored and returned verbatim.
    let hostile = "'; DROP TABLE groups_messages; -- <script>alert(1)</script> \u{202e}é🎉\n\tend";
    let m = c
        .groups
        .send_message(authed(&a, send(g.id, hostile, "")))
        .await
        .unwrap()
        .into_inner();
    let h = c
        .groups
        .history(authed(
            &a,
            HistoryRequest {
                conversation_id: g.id,
                before: 0,
                after: m.seq - 1,
                limit: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.messages[0].text, hostile);

    // The rate limit: 5/s with a burst of 10. How many pass depends on how long the sends
    // take (a loaded machine sends slower and earns more tokens), so the bound does too.
    let mut limited = 0;
    let started = std::time::Instant::now();
    for i in 0..30 {
        if let Err(e) = c
            .groups
            .send_message(authed(&a, send(g.id, &format!("spam {i}"), "")))
            .await
        {
            assert_eq!(e.code(), Code::ResourceExhausted);
            limited += 1;
        }
    }
    let allowed = 30 - limited;
    let earned = 10.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(
        limited > 0 && f64::from(allowed) <= earned.ceil() + 1.0,
        "{allowed} of 30 allowed in {:?}: the bucket allows {earned:.1}",
        started.elapsed()
    );
}

async fn next_seq(stream: &mut tonic::Streaming<chatd::pb::chat::Event>) -> u64 {
    chatcluster_tests::chat::next_message(stream).await.seq
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_across_replicas_in_order_and_resume_without_gap() {
    let keys = Keys::new();
    let db = Db::start();
    let broker = chatcluster_tests::nats::Nats::start();
    let start = || {
        Chatd::start(
            &keys,
            Options {
                broker: Some(broker.address()),
                ..Options::new("auth,groups", &db)
            },
            free_port(),
        )
    };
    let (a, b) = (start(), start());
    let mut ca = Clients::new(&a).await;
    let mut cb = Clients::new(&b).await;
    let sender = register(&mut ca.auth, "sender").await;
    let reader = register(&mut ca.auth, "reader").await;
    let g = ca.group(&sender, "fan", &[&reader]).await;

    // Subscribe on replica B, send through replica A.
    let mut stream = cb
        .groups
        .subscribe(authed(
            &reader,
            SubscribeRequest {
                conversation_id: g.id,
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    for i in 1..=20 {
        ca.groups
            .send_message(authed(&sender, send(g.id, &format!("m{i}"), "")))
            .await
            .unwrap();
    }
    for want in 1..=10 {
        assert_eq!(next_seq(&mut stream).await, want);
    }
    // Delivered by push, not by the 2-second safety poll.
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "took {:?}",
        started.elapsed()
    );

    // Reconnect after seq 10: the rest arrives, each once, in order.
    drop(stream);
    let mut resumed = cb
        .groups
        .subscribe(authed(
            &reader,
            SubscribeRequest {
                conversation_id: g.id,
                after_seq: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for want in 11..=20 {
        assert_eq!(next_seq(&mut resumed).await, want);
    }
    ca.groups
        .send_message(authed(&sender, send(g.id, "live", "")))
        .await
        .unwrap();
    assert_eq!(next_seq(&mut resumed).await, 21);

    // Edits reach the subscriber as updates.
    ca.groups
        .edit_message(authed(
            &sender,
            EditMessageRequest {
                conversation_id: g.id,
                seq: 21,
                text: "edited".into(),
            },
        ))
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), resumed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match update.kind {
        Some(event::Kind::Updated(m)) => assert_eq!((m.seq, m.text.as_str()), (21, "edited")),
        other => panic!("expected an update, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_see_own_writes_with_a_lagging_replica() {
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let b = register(&mut c.auth, "bob").await;
    s.db.replica.wait_caught_up(&s.db.primary);
    s.db.replica.pause_apply();
    let g = c.group(&a, "ryw", &[&b]).await;
    // Bob wrote nothing, carries no token, and the replica has not seen the group: a denial
    // from the replica is re-checked on the primary, so he can read it at once.
    let seen = c
        .groups
        .get_group(authed(&b, GetGroupRequest { group_id: g.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.members.len(), 2);
    let mut bobs = c
        .groups
        .subscribe(authed(
            &b,
            SubscribeRequest {
                conversation_id: g.id,
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sent = c
        .groups
        .send_message(authed(&a, send(g.id, "mine", "")))
        .await
        .unwrap();
    let token = sent
        .metadata()
        .get("x-chat-consistency")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("consistency token");
    assert!(!token.is_empty());
    // The replica has not applied the send; the sender still sees it.
    assert_eq!(
        s.db.replica.sql(&format!(
            "SELECT COUNT(*) FROM chat.groups_messages WHERE conversation_id = {}",
            g.id
        )),
        "0"
    );
    let h = c
        .groups
        .history(authed(
            &a,
            HistoryRequest {
                conversation_id: g.id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.messages.len(), 1);
    // Bob's subscription got the message through the hint's token, replica still paused.
    assert_eq!(next_seq(&mut bobs).await, 1);
    s.db.replica.resume_apply();
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_down_and_primary_moved() {
    let keys = Keys::new();
    let mut db = Db::start();
    let dir = chatcluster_tests::TempDir::new("primary-file");
    let file = dir.path().join("primary");
    std::fs::write(&file, db.primary.address()).unwrap();
    let chatd = Chatd::start(
        &keys,
        Options {
            primary_file: Some(file.clone()),
            ..Options::new("auth,groups", &db)
        },
        free_port(),
    );
    let mut c = Clients::new(&chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let g = c.group(&a, "ha", &[]).await;
    c.groups
        .send_message(authed(&a, send(g.id, "one", "")))
        .await
        .unwrap();
    db.replica.wait_caught_up(&db.primary);

    // Promote the replica by hand and point the file at it; the old primary dies.
    db.replica
        .sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;");
    std::fs::write(&file, db.replica.address()).unwrap();
    db.primary.kill();
    let mut sent = None;
    for _ in 0..50 {
        match c
            .groups
            .send_message(authed(&a, send(g.id, "two", "after-failover")))
            .await
        {
            Ok(m) => {
                sent = Some(m.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sent.expect("writes resume on the new primary").seq, 2);
    // Reads keep working with the (old) replica address gone from the read path too.
    let h = c
        .groups
        .history(authed(
            &a,
            HistoryRequest {
                conversation_id: g.id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.messages.len(), 2);
}

#[test]
fn refuses_to_start_without_services() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service to run"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ownership_roles_invites_and_channels() {
    use chatd::pb::{
        dms::ListConversationsRequest,
        groups::{LeaveRequest, ListMyGroupsRequest},
        servers::{DeleteChannelRequest, RenameChannelRequest, Role as ServerRole, SetRoleRequest},
    };
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let b = register(&mut c.auth, "bob").await;
    let d = register(&mut c.auth, "dora").await;

    // The owner leaving hands the group to the admin before older members.
    let g = c.group(&a, "g", &[&d]).await;
    c.groups
        .add_member(authed(
            &a,
            AddMemberRequest {
                group_id: g.id,
                user_id: uid(&b),
                role: Role::Admin as i32,
            },
        ))
        .await
        .unwrap();
    c.accept(&b, g.id).await;
    c.groups
        .leave(authed(&a, LeaveRequest { group_id: g.id }))
        .await
        .unwrap();
    // d reads what a did: once the replica has applied it.
    let groups = c.groups.clone();
    let after = common::eventually(
        || {
            let mut groups = groups.clone();
            let get = authed(&d, GetGroupRequest { group_id: g.id });
            async move { groups.get_group(get).await.unwrap().into_inner() }
        },
        |after| after.members.iter().all(|m| m.user_id != uid(&a)),
    )
    .await;
    let owner = after
        .members
        .iter()
        .find(|m| m.role == Role::Owner as i32)
        .unwrap();
    assert_eq!(owner.user_id, uid(&b));
    assert!(after.members.iter().all(|m| m.user_id != uid(&a)));
    let mine = c
        .groups
        .list_my_groups(authed(&d, ListMyGroupsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mine.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![g.id]
    );
    let none = c
        .groups
        .list_my_groups(authed(&a, ListMyGroupsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(none.groups.is_empty());

    // Invites expire.
    let server = c.server(&a, "club").await;
    let short = c
        .servers
        .create_invite(authed(
            &a,
            CreateInviteRequest {
                server_id: server.id,
                ttl_seconds: 1,
                max_uses: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let open = c
        .servers
        .create_invite(authed(
            &a,
            CreateInviteRequest {
                server_id: server.id,
                ttl_seconds: 600,
                max_uses: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = c
        .servers
        .join(authed(&b, JoinRequest { code: short.code }))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
    c.servers
        .join(authed(
            &b,
            JoinRequest {
                code: open.code.clone(),
            },
        ))
        .await
        .unwrap();
    c.servers
        .join(authed(&d, JoinRequest { code: open.code }))
        .await
        .unwrap();

    // Roles: only the owner changes them; an admin manages channels but not roles.
    let denied = c
        .servers
        .set_role(authed(
            &b,
            SetRoleRequest {
                server_id: server.id,
                user_id: uid(&d),
                role: ServerRole::Admin as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    c.servers
        .set_role(authed(
            &a,
            SetRoleRequest {
                server_id: server.id,
                user_id: uid(&b),
                role: ServerRole::Admin as i32,
            },
        ))
        .await
        .unwrap();
    let denied = c
        .servers
        .set_role(authed(
            &b,
            SetRoleRequest {
                server_id: server.id,
                user_id: uid(&d),
                role: ServerRole::Admin as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let channel = c
        .servers
        .create_channel(authed(
            &b,
            CreateChannelRequest {
                server_id: server.id,
                name: "random".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let renamed = c
        .servers
        .rename_channel(authed(
            &b,
            RenameChannelRequest {
                channel_id: channel.id,
                name: "off-topic".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "off-topic");
    c.servers
        .send_message(authed(&d, send(channel.id, "hi", "")))
        .await
        .unwrap();
    let denied = c
        .servers
        .delete_channel(authed(
            &d,
            DeleteChannelRequest {
                channel_id: channel.id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    c.servers
        .delete_channel(authed(
            &b,
            DeleteChannelRequest {
                channel_id: channel.id,
            },
        ))
        .await
        .unwrap();
    let gone = c
        .servers
        .send_message(authed(&d, send(channel.id, "hello?", "")))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Handing over ownership leaves exactly one owner; the old owner may then leave.
    let server = c
        .servers
        .set_role(authed(
            &a,
            SetRoleRequest {
                server_id: server.id,
                user_id: uid(&d),
                role: ServerRole::Owner as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let owners: Vec<u64> = server
        .members
        .iter()
        .filter(|m| m.role == ServerRole::Owner as i32)
        .map(|m| m.user_id)
        .collect();
    assert_eq!(owners, vec![uid(&d)]);

    // Each DM participant lists the conversation.
    let conv = c
        .dms
        .open(authed(&a, OpenRequest { user_id: uid(&b) }))
        .await
        .unwrap()
        .into_inner();
    for who in [&a, &b] {
        // b lists what a did: once the replica has applied it.
        let dms = c.dms.clone();
        let list = common::eventually(
            || {
                let mut dms = dms.clone();
                let req = authed(who, ListConversationsRequest {});
                async move { dms.list_conversations(req).await.unwrap().into_inner() }
            },
            |list| !list.conversations.is_empty(),
        )
        .await;
        assert_eq!(
            list.conversations.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![conv.id]
        );
    }
    let list = c
        .dms
        .list_conversations(authed(&d, ListConversationsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(list.conversations.is_empty());
}
