//! Delivery hints between replicas go through a real NATS broker, and only to replicas with
//! subscribers for the conversation; with the broker down, delivery goes on through each
//! replica's shared poll, and nothing is lost; with it back, hints are pushed again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chatcluster_tests::{free_port, http_get, nats::Nats};
use chatd::pb::chat::Event;
use common::{Chatd, Clients, Db, Keys, Options, authed, register, send};
use tonic::Streaming;

/// The broker's subscriptions, by client name (chatd names its connection after its replica).
async fn subscriptions(broker: &Nats) -> Vec<(String, Vec<String>)> {
    let response = http_get(broker.monitor_port, "/connz?subs=1").await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let connz: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"));
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let subs = c["subscriptions_list"]
                .as_array()
                .map(|l| l.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (c["name"].as_str().unwrap_or_default().to_string(), subs)
        })
        .collect()
}

/// The seq of the next message, and how long it took to come.
async fn next_seq(stream: &mut Streaming<Event>) -> (u64, Duration) {
    let started = Instant::now();
    let seq = chatcluster_tests::chat::next_message(stream).await.seq;
    (seq, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn hints_go_through_the_broker_to_interested_replicas_and_survive_its_outage() {
    let keys = Keys::new();
    let db = Db::start();
    let mut broker = Nats::start();
    let (pa, pb) = (free_port(), free_port());
    let start = |port| {
        let opts = Options {
            broker: Some(broker.address()),
            ..Options::new("auth,groups", &db)
        };
        Chatd::start(&keys, opts, port)
    };
    let (a, b) = (start(pa), start(pb));
    let mut ca = Clients::new(&a).await;
    let mut cb = Clients::new(&b).await;
    let sender = register(&mut ca.auth, "sender").await;
    let reader = register(&mut ca.auth, "reader").await;
    let watched = ca.group(&sender, "watched", &[&reader]).await;
    let quiet = ca.group(&sender, "unwatched", &[&reader]).await;

    // Only B has a subscriber, for one conversation: only B subscribes, to it alone.
    let mut stream = cb.subscribe_group(&reader, watched.id).await;
    let subject = format!("chat.groups.{}", watched.id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subs = subscriptions(&broker).await;
        let of = |replica: u16| {
            subs.iter()
                .find(|(name, _)| *name == format!("chatd-{replica}"))
                .map(|(_, s)| s.clone())
        };
        if of(pb) == Some(vec![subject.clone()]) {
            assert_eq!(of(pa), Some(vec![]), "A has no subscriber: {subs:?}");
            break;
        }
        assert!(Instant::now() < deadline, "B never subscribed: {subs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Sent on A, pushed to B through the broker: well within the 2 s poll.
    for (n, conv) in [(1, watched.id), (1, quiet.id), (2, watched.id)] {
        ca.groups
            .send_message(authed(&sender, send(conv, &format!("m{n}"), "")))
            .await
            .unwrap();
    }
    for want in 1..=2 {
        let (seq, took) = next_seq(&mut stream).await;
        assert_eq!(seq, want);
        assert!(
            took < Duration::from_millis(1500),
            "seq {seq} took {took:?}"
        );
    }

    // The broker down: every message still arrives, in order, by the shared poll.
    broker.stop();
    for n in 3..=6 {
        ca.groups
            .send_message(authed(&sender, send(watched.id, &format!("m{n}"), "")))
            .await
            .unwrap();
    }
    for want in 3..=6 {
        assert_eq!(next_seq(&mut stream).await.0, want);
    }

    // Back: both replicas reconnect and B subscribes again; hints are pushed again.
    broker.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !subscriptions(&broker)
        .await
        .iter()
        .any(|(name, subs)| *name == format!("chatd-{pb}") && subs.contains(&subject))
    {
        assert!(Instant::now() < deadline, "B did not subscribe again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut want = 7;
    loop {
        ca.groups
            .send_message(authed(&sender, send(watched.id, &format!("m{want}"), "")))
            .await
            .unwrap();
        let (seq, took) = next_seq(&mut stream).await;
        assert_eq!(seq, want);
        if took < Duration::from_millis(300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never pushed again after the outage"
        );
        want += 1;
    }

    // The last subscriber gone, B unsubscribes.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscriptions(&broker)
        .await
        .iter()
        .any(|(_, subs)| subs.contains(&subject))
    {
        assert!(Instant::now() < deadline, "B kept its subscription");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
