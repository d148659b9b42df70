//! chatd through a real database failover: three MariaDB servers run by the operator's
//! topology loop, which publishes the primary's address in the file chatd follows. Messages
//! sent continuously (retried with the same client key until acknowledged) survive the
//! primary's `kill -9`: every acknowledged message is in the history, in order, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chat_operator::topology::{
    manager::{self, Topology},
    plan::Policy,
    publish,
    server::{Credentials, Member},
    status::{Role, SemiSyncState},
};
use chatcluster_tests::{
    free_port,
    mariadb::{ADMIN_PASSWORD, MariaDb, REPL_PASSWORD},
};
use chatd::pb::chat::SendMessageRequest;
use common::{Chatd, Clients, Keys, Options, authed, register};

const FLAGS: &[&str] = &[
    "--read-only=ON",
    "--rpl-semi-sync-slave-enabled=ON",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_a_primary_killed_mid_stream() {
    let mut dbs: Vec<MariaDb> = std::thread::scope(|s| {
        let h: Vec<_> = (1..=3)
            .map(|id| s.spawn(move || MariaDb::start(id, FLAGS)))
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let members = dbs
        .iter()
        .enumerate()
        .map(|(i, d)| Member {
            name: format!("db-{i}"),
            host: d.host.clone(),
            port: d.port,
        })
        .collect();
    let credentials = Credentials {
        admin_user: "admin".into(),
        admin_password: ADMIN_PASSWORD.into(),
        repl_user: "repl".into(),
        repl_password: REPL_PASSWORD.into(),
        ca_pem: None,
    };
    let policy = Policy {
        failover_timeout: Duration::from_secs(2),
        ..Policy::default()
    };
    let (topology, status) = Topology::new(members, "db-0", credentials, policy).unwrap();
    let handle = manager::spawn(topology, status, Duration::from_millis(250));
    let mut rx = handle.status.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !{
        let s = rx.borrow_and_update();
        s.primary_ready
            && s.in_role(Role::Replica).len() == 2
            && s.semi_sync == SemiSyncState::Waiting(1)
    } {
        assert!(Instant::now() < deadline, "no healthy topology");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
    let dir = chatcluster_tests::TempDir::new("primary-file");
    let file = dir.path().join("primary");
    std::fs::write(&file, dbs[0].address()).unwrap();
    tokio::spawn(publish::primary_file(handle.status.clone(), file.clone()));

    let keys = Keys::new();
    let chatd = Chatd::start(
        &keys,
        Options {
            services: "auth,groups",
            primary: dbs[0].address(),
            replicas: None,
            broker: None,
            primary_file: Some(file),
            rate: 10_000.0,
            metrics_port: None,
            drain_seconds: 0.2,
            address_logins_per_minute: 1_000,
            address_registrations_per_hour: 1_000,
        },
        free_port(),
    );
    let mut c = Clients::new(&chatd).await;
    let alice = register(&mut c.auth, "alice").await;
    let group = c.group(&alice, "failover", &[]).await;

    // Send m1, m2, … one at a time; an unacknowledged send is retried with the same key.
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut killed_at = None;
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 300 {
        assert!(Instant::now() < deadline, "sends did not resume: {acked:?}");
        if acked.len() == 100 && killed_at.is_none() {
            dbs[0].kill();
            killed_at = Some(Instant::now());
        }
        let text = format!("m{n}");
        let request = SendMessageRequest {
            conversation_id: group.id,
            text: text.clone(),
            client_key: text.clone(),
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            c.groups.send_message(authed(&alice, request)),
        )
        .await
        {
            Ok(Ok(m)) => {
                acked.push((text, m.into_inner().seq));
                n += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_ne!(
        handle.status.borrow().primary,
        "db-0",
        "a failover happened"
    );

    // Every acknowledged message, once, in order, with gap-free sequence numbers.
    let history = chatcluster_tests::chat::group_history(&mut c.groups, &alice, group.id)
        .await
        .unwrap();
    assert_eq!(
        history, acked,
        "history differs from the acknowledged sends"
    );
    let seqs: Vec<u64> = history.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
}
