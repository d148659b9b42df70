//! Hostile clients against the auth service: password guessing is throttled per account before
//! any hash runs, and a flood of logins does not blow the memory up (Argon2 hashes run a few at
//! a time). Real chatd, real MariaDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chatd::pb::auth::LoginRequest;
use common::{Setup, register};
use tonic::Code;

fn login(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.into(),
        password: password.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_one_accounts_password_is_throttled_before_any_hash() {
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    register(&mut c.auth, "victim").await;
    let mut codes = Vec::new();
    for i in 0..50 {
        let code = match c.auth.login(login("victim", &format!("guess {i}"))).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        codes.push(code);
    }
    let wrong = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let throttled = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    assert!(wrong <= 11, "{wrong} guesses were checked: {codes:?}");
    assert!(throttled >= 39, "{throttled} throttled: {codes:?}");
    // While throttled, even the right password waits its turn; another account does not.
    let right = c.auth.login(login("victim", "correct horse battery")).await;
    assert_eq!(right.unwrap_err().code(), Code::ResourceExhausted);
    register(&mut c.auth, "bystander").await;
    c.auth
        .login(login("bystander", "correct horse battery"))
        .await
        .unwrap();
    // An unknown account answers exactly as a wrong password does.
    let unknown = c.auth.login(login("nobody-here", "guess")).await;
    assert_eq!(unknown.unwrap_err().message(), "wrong username or password");
}

/// `body` as coming from client address `ip` (as Envoy's x-forwarded-for entry says).
fn from<T>(ip: &str, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_is_throttled_across_accounts_for_logins_and_registrations() {
    use chatd::pb::auth::RegisterRequest;
    // Few, so that no token comes back while the hashes run (one per 20 s).
    const LOGINS: u32 = 3;
    const REGISTRATIONS: u32 = 3;
    let s = Setup::with(|o| {
        o.address_logins_per_minute = LOGINS;
        o.address_registrations_per_hour = REGISTRATIONS;
    });
    let mut c = common::Clients::new(&s.chatd).await;
    let register_from = |ip: &str, name: &str| {
        from(
            ip,
            RegisterRequest {
                username: name.into(),
                password: "correct horse battery".into(),
                display_name: String::new(),
            },
        )
    };
    // The client's own x-forwarded-for entries come first; only Envoy's (the last) counts.
    for i in 0..REGISTRATIONS {
        let req = register_from(&format!("{i}.{i}.{i}.{i}, 10.0.0.1"), &format!("bulk-{i}"));
        c.auth.register(req).await.unwrap();
    }
    let refused = c
        .auth
        .register(register_from("9.9.9.9, 10.0.0.1", "bulk-more"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("this address"), "{refused:?}");
    c.auth
        .register(register_from("10.0.0.2", "elsewhere"))
        .await
        .unwrap();

    // Guesses spread over many accounts (never reaching any account's own limit) are still
    // LOGINS a minute from one address; the next is refused before any hash.
    for i in 0..LOGINS {
        let guess = from("10.0.0.1", login(&format!("account-{i}"), "guess"));
        let status = c.auth.login(guess).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let throttled = from("10.0.0.1", login("account-x", "guess"));
    let status = c.auth.login(throttled).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let other = from("10.0.0.2", login("elsewhere", "correct horse battery"));
    c.auth.login(other).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_logins_stays_within_the_memory_of_a_few_hashes() {
    let mut s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let accounts = ["alice", "bobby", "carol", "david"];
    for name in accounts {
        register(&mut c.auth, name).await;
    }
    let pid = s.chatd.process().pid();
    let before = chatcluster_tests::peak_rss_mib(pid);
    // 64 wrong passwords for existing accounts (each once a hash of its own, all at once) and
    // 64 for unknown ones (which cost a hash too, so they cannot be told apart).
    let names = (0..64)
        .map(|i| accounts[i % 4].to_string())
        .chain((0..64).map(|i| format!("unknown-{i}")));
    // Each from an address of its own (a botnet): the per-address limit does not save the day.
    let logins: Vec<_> = names
        .enumerate()
        .map(|(i, name)| {
            let mut auth = c.auth.clone();
            let req = from(
                &format!("10.1.{}.{}", i / 256, i % 256),
                login(&name, "wrong"),
            );
            tokio::spawn(async move { auth.login(req).await })
        })
        .collect();
    for login in logins {
        let code = login.await.unwrap().unwrap_err().code();
        assert!(
            matches!(code, Code::Unauthenticated | Code::ResourceExhausted),
            "{code:?}"
        );
    }
    let after = chatcluster_tests::peak_rss_mib(pid);
    eprintln!("peak resident memory: {before} MiB before, {after} MiB after 128 logins at once");
    // Once 64 logins took 218 MiB to 1,208 MiB. Now a hashing thread per core (at most 4),
    // each hashing in its own 19 MiB, allocated once, whatever the number of callers.
    let bound = before + 19 * chatd::services::passwords::slots() as u64 + 40;
    assert!(
        after < bound,
        "peak memory {before} MiB → {after} MiB under 128 concurrent logins (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_demote_another_admin_by_adding_them_again() {
    use chatd::pb::groups::{AddMemberRequest, GetGroupRequest, Role};
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let first = register(&mut c.auth, "first-admin").await;
    let second = register(&mut c.auth, "second-admin").await;
    let group = c.group(&owner, "team", &[]).await;
    let add = |user, role: Role| AddMemberRequest {
        group_id: group.id,
        user_id: user,
        role: role as i32,
    };
    for admin in [&first, &second] {
        let promote = add(common::uid(admin), Role::Admin);
        c.groups
            .add_member(common::authed(&owner, promote))
            .await
            .unwrap();
        c.accept(admin, group.id).await;
    }
    let demote = add(common::uid(&second), Role::Member);
    let refused = c
        .groups
        .add_member(common::authed(&first, demote))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // The owner reads what the second admin wrote (the acceptance): once the replica has it.
    s.db.replica.wait_caught_up(&s.db.primary);
    let get = GetGroupRequest { group_id: group.id };
    let roles = c
        .groups
        .get_group(common::authed(&owner, get))
        .await
        .unwrap()
        .into_inner()
        .members;
    let role_of_second = roles
        .iter()
        .find(|m| m.user_id == common::uid(&second))
        .map(|m| m.role);
    assert_eq!(role_of_second, Some(Role::Admin as i32));
    // The owner may; adding an existing member again as what they are is harmless.
    c.groups
        .add_member(common::authed(&owner, demote))
        .await
        .unwrap();
    c.groups
        .add_member(common::authed(&first, demote))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_holds_a_bounded_number_of_subscriptions() {
    use chatd::{pb::chat::SubscribeRequest, services::MAX_SUBSCRIPTIONS_PER_USER};
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let hoarder = register(&mut c.auth, "hoarder").await;
    let other = register(&mut c.auth, "other").await;
    let group = c.group(&hoarder, "mine", &[&other]).await;
    let subscribe = SubscribeRequest {
        conversation_id: group.id,
        after_seq: 0,
    };
    let mut open = Vec::new();
    for _ in 0..MAX_SUBSCRIPTIONS_PER_USER {
        let stream = c
            .groups
            .subscribe(common::authed(&hoarder, subscribe))
            .await;
        open.push(stream.unwrap().into_inner());
    }
    let refused = c
        .groups
        .subscribe(common::authed(&hoarder, subscribe))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Per user: someone else subscribes as usual.
    c.groups
        .subscribe(common::authed(&other, subscribe))
        .await
        .unwrap();
    // A stream the client drops gives its place back.
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c
            .groups
            .subscribe(common::authed(&hoarder, subscribe))
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_used_twice_revokes_its_whole_session() {
    use chatd::pb::auth::{LogoutRequest, RefreshRequest};
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    register(&mut c.auth, "victim").await;
    let refresh = |token: &str| RefreshRequest {
        refresh_token: token.into(),
    };
    let stolen = c
        .auth
        .login(login("victim", "correct horse battery"))
        .await
        .unwrap()
        .into_inner()
        .refresh_token;
    // The victim's client rotates; the thief then presents the old token.
    let victims = c.auth.refresh(refresh(&stolen)).await.unwrap().into_inner();
    let replay = c.auth.refresh(refresh(&stolen)).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(replay.message().contains("used before"), "{replay:?}");
    // The whole session is gone: the rotated token too, so the thief gains nothing.
    let after = c
        .auth
        .refresh(refresh(&victims.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);

    // Logging out ends the session the token belongs to, whichever of its tokens is given.
    let session = c
        .auth
        .login(login("victim", "correct horse battery"))
        .await
        .unwrap()
        .into_inner();
    let rotated = c
        .auth
        .refresh(refresh(&session.refresh_token))
        .await
        .unwrap()
        .into_inner();
    let out = LogoutRequest {
        refresh_token: session.refresh_token.clone(),
    };
    c.auth.logout(common::authed(&rotated, out)).await.unwrap();
    let gone = c
        .auth
        .refresh(refresh(&rotated.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_send_without_a_client_key_is_stored_once() {
    use chatd::pb::chat::SendMessageRequest;
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let alice = register(&mut c.auth, "alice").await;
    let group = c.group(&alice, "g", &[]).await;
    // What Envoy sends when it retries: the same request, the same x-request-id.
    let send = |request_id: &str| {
        let mut req = common::authed(
            &alice,
            SendMessageRequest {
                conversation_id: group.id,
                text: "hello".into(),
                client_key: String::new(),
            },
        );
        req.metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        req
    };
    let first = c
        .groups
        .send_message(send("4e1c"))
        .await
        .unwrap()
        .into_inner();
    let retry = c
        .groups
        .send_message(send("4e1c"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.seq, retry.seq, "the retry returned the first message");
    let other = c
        .groups
        .send_message(send("9f2a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        other.seq,
        first.seq + 1,
        "another request is another message"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_is_put_in_a_group_without_accepting() {
    use chatd::pb::{
        chat::HistoryRequest,
        groups::{
            AddMemberRequest, DeclineInvitationRequest, GetGroupRequest, ListInvitationsRequest,
            ListMyGroupsRequest, RemoveMemberRequest, Role,
        },
    };
    let s = Setup::new();
    let mut c = common::Clients::new(&s.chatd).await;
    let spammer = register(&mut c.auth, "spammer").await;
    let target = register(&mut c.auth, "target").await;
    // The target's invitations (newest first) once they are the groups `want`: another user's
    // writes reach the target's reads when the replica has applied them.
    let invited = |c: &mut common::Clients, who, want: Vec<u64>| {
        let groups = c.groups.clone();
        async move {
            let now = common::eventually(
                || {
                    let mut groups = groups.clone();
                    async move {
                        groups
                            .list_invitations(common::authed(who, ListInvitationsRequest {}))
                            .await
                            .unwrap()
                            .into_inner()
                            .invitations
                    }
                },
                |now| now.iter().map(|i| i.group_id).eq(want.iter().copied()),
            )
            .await;
            let ids: Vec<u64> = now.iter().map(|i| i.group_id).collect();
            assert_eq!(ids, want, "the target's invitations");
            now
        }
    };
    // Named at creation and added afterwards: both only invitations.
    let created = c
        .groups
        .create_group(common::authed(
            &spammer,
            chatd::pb::groups::CreateGroupRequest {
                name: "buy now".into(),
                member_ids: vec![common::uid(&target)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let other = c.group(&spammer, "second", &[]).await;
    let add = AddMemberRequest {
        group_id: other.id,
        user_id: common::uid(&target),
        role: Role::Member as i32,
    };
    let shown = c
        .groups
        .add_member(common::authed(&spammer, add))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.members.len(), 1, "only the owner is a member");
    assert_eq!(shown.invited.len(), 1, "the target is invited: {shown:?}");

    // The target is in neither group, reads neither, and sees the invitations.
    let mine = c
        .groups
        .list_my_groups(common::authed(&target, ListMyGroupsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.groups.is_empty(), "{mine:?}");
    for group in [created.id, other.id] {
        let history = HistoryRequest {
            conversation_id: group,
            ..Default::default()
        };
        let denied = c
            .groups
            .history(common::authed(&target, history))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
    let pending = invited(&mut c, &target, vec![other.id, created.id]).await;
    assert_eq!(pending[0].invited_by, common::uid(&spammer));

    // Declined, it is gone and cannot be accepted; accepted, the target is a member.
    c.groups
        .decline_invitation(common::authed(
            &target,
            DeclineInvitationRequest {
                group_id: created.id,
            },
        ))
        .await
        .unwrap();
    let late = c
        .groups
        .accept_invitation(common::authed(
            &target,
            chatd::pb::groups::AcceptInvitationRequest {
                group_id: created.id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::NotFound, "{late:?}");
    let joined = c.accept(&target, other.id).await;
    assert!(joined.invited.is_empty());
    assert!(
        joined
            .members
            .iter()
            .any(|m| m.user_id == common::uid(&target))
    );
    invited(&mut c, &target, vec![]).await;

    // A manager may withdraw an invitation before it is accepted.
    let third = c.group(&spammer, "third", &[]).await;
    let add = AddMemberRequest {
        group_id: third.id,
        user_id: common::uid(&target),
        role: 0,
    };
    c.groups
        .add_member(common::authed(&spammer, add))
        .await
        .unwrap();
    let withdrawn = c
        .groups
        .remove_member(common::authed(
            &spammer,
            RemoveMemberRequest {
                group_id: third.id,
                user_id: common::uid(&target),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(withdrawn.invited.is_empty());
    invited(&mut c, &target, vec![]).await;
    let get = GetGroupRequest { group_id: third.id };
    let denied = c
        .groups
        .get_group(common::authed(&target, get))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
