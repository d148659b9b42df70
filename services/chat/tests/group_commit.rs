//! Group commit against a real MariaDB: concurrent sends share commits, and a batch mixing
//! members, outsiders, missing conversations and idempotent retries answers each as a send
//! by itself would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatd::pb::dms::OpenRequest;
use common::{Clients, Setup, authed, register, send};
use futures::future::join_all;
use tonic::Code;

fn binlog_commits(s: &Setup) -> u64 {
    let row = s.db.primary.sql("SHOW GLOBAL STATUS LIKE 'Binlog_commits'");
    row.split_whitespace().last().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_concurrent_sends_share_commits_and_each_gets_its_own_answer() {
    const MEMBERS: usize = 16;
    const EACH: usize = 4;
    let s = Setup::new();
    let mut c = Clients::new(&s.chatd).await;
    let owner = register(&mut c.auth, "owner").await;
    let outsider = register(&mut c.auth, "outsider").await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(register(&mut c.auth, &format!("member{i}")).await);
    }
    let refs: Vec<_> = members.iter().collect();
    let group = c.group(&owner, "busy", &refs).await;
    let dm = c
        .dms
        .open(authed(
            &owner,
            OpenRequest {
                user_id: common::uid(&members[0]),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let server = c.server(&owner, "club").await;
    let channel = server.channels[0].id;

    let before = binlog_commits(&s);
    // Every member sends EACH messages at once; the first also sends one keyed message twice
    // concurrently (a retry racing its original).
    let mut sends = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for n in 0..EACH {
            let mut groups = c.groups.clone();
            let req = authed(m, send(group.id, &format!("{i}-{n}"), ""));
            sends.push(tokio::spawn(async move { groups.send_message(req).await }));
        }
    }
    let keyed: Vec<_> = (0..2)
        .map(|_| {
            let mut groups = c.groups.clone();
            let req = authed(&members[0], send(group.id, "once", "the-key"));
            tokio::spawn(async move { groups.send_message(req).await })
        })
        .collect();
    // Amid them, sends a batch must leave out, each with the status a send alone gets.
    let mut refused = Vec::new();
    for (conv, who, service) in [
        (group.id, &outsider, "groups"),
        (group.id + 1000, &owner, "groups"),
        (dm.id, &outsider, "dms"),
        (channel, &outsider, "servers"),
        (channel + 1000, &owner, "servers"),
    ] {
        let req = authed(who, send(conv, "not allowed", ""));
        let mut cl = Clients::new(&s.chatd).await;
        refused.push(tokio::spawn(async move {
            match service {
                "groups" => cl.groups.send_message(req).await,
                "dms" => cl.dms.send_message(req).await,
                _ => cl.servers.send_message(req).await,
            }
        }));
    }

    let mut seqs = Vec::new();
    for r in join_all(sends).await {
        let m = r.unwrap().unwrap().into_inner();
        assert_eq!(m.conversation_id, group.id);
        seqs.push(m.seq);
    }
    let keyed: Vec<_> = join_all(keyed)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().into_inner())
        .collect();
    assert_eq!(keyed[0].seq, keyed[1].seq, "one message for one key");
    assert_eq!(keyed[0].text, "once");
    seqs.push(keyed[0].seq);
    let codes: Vec<Code> = join_all(refused)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap_err().code())
        .collect();
    assert_eq!(
        codes,
        [
            Code::PermissionDenied,
            Code::NotFound,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::NotFound
        ],
        "outsider, missing group, DM outsider, server outsider, missing channel"
    );
    let commits = binlog_commits(&s) - before;

    // Every acknowledged message has its own seq, with no gap, and is stored as acknowledged.
    let n = (MEMBERS * EACH + 1) as u64;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let stored = s.db.primary.sql(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT text) FROM chat.groups_messages WHERE conversation_id = {}",
        group.id
    ));
    assert_eq!(
        stored.split_whitespace().collect::<Vec<_>>(),
        [n.to_string(), n.to_string()]
    );
    // The owner reads the members' sends: once the replica has them.
    s.db.replica.wait_caught_up(&s.db.primary);
    assert_eq!(common::newest_group_seq(&mut c, &owner, group.id).await, n);
    // Shared commits: fewer commits than messages (each send alone is one).
    assert!(
        commits < n,
        "{n} concurrent sends took {commits} commits: none were batched"
    );
}
