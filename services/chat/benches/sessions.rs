//! The session gateway: what idle sessions cost, and how fast a message fans out to a group's
//! online members, against a bare NATS publish→subscribe in the same run.
//!
//! `cargo bench -p chatd --bench sessions`
//!
//! A MariaDB primary and replica, a NATS broker, one chatd taking the writes (auth, groups)
//! and two gateway replicas holding the sessions.
//! - Idle: 1,000 then 4,000 sessions open on one gateway, each following its user's group;
//!   the gateway's resident memory and CPU per session, and the replica's SELECTs per second,
//!   beside the same gateway with no session (the baseline, measured first).
//! - Fan-out: one group of 100 members, each with a session (half on each gateway); 16 of them
//!   send as fast as they are acknowledged; from each acknowledgement to each member's
//!   receipt, p50 and p99. Baseline: 16 publishers and 100 subscribers (on two connections)
//!   on one subject of the same broker, publish → receipt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chatcluster_tests::{free_port, nats::Nats};
use chatd::pb::{
    auth::Session,
    gateway::{OpenRequest, SessionEvent, gateway_client::GatewayClient, session_event},
};
use common::{Chatd, Clients, Db, Keys, Options, authed, cpu_us, register, send};
use futures::StreamExt as _;
use tonic::{Streaming, transport::Channel};

/// How long each measurement watches.
const WATCH: Duration = Duration::from_secs(8);
/// How long the senders send.
const SENDING: Duration = Duration::from_secs(5);
const SENDERS: usize = 16;
const MEMBERS: usize = 100;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Over [`WATCH`]: the gateway's CPU (µs per second) and the replica's SELECTs per second.
async fn idle_cost(gateway: u32, db: &Db) -> (f64, f64) {
    let (cpu, selects, started) = (
        cpu_us(&[gateway]),
        common::selects(&db.replica),
        Instant::now(),
    );
    tokio::time::sleep(WATCH).await;
    let seconds = started.elapsed().as_secs_f64();
    (
        (cpu_us(&[gateway]) - cpu) as f64 / seconds,
        (common::selects(&db.replica) - selects) as f64 / seconds,
    )
}

async fn open(gateway: &mut GatewayClient<Channel>, who: &Session) -> Streaming<SessionEvent> {
    let mut stream = gateway
        .open(authed(who, OpenRequest { cursors: vec![] }))
        .await
        .unwrap()
        .into_inner();
    // The snapshot: the session is following by now.
    stream.message().await.unwrap().unwrap();
    stream
}

/// A group of `members` (the first is its owner), everyone joined.
async fn group_of(c: &mut Clients, members: &[Session], name: &str) -> u64 {
    let others: Vec<&Session> = members[1..].iter().collect();
    c.group(&members[0], name, &others).await.id
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = Db::start();
    let keys = Keys::new();
    let broker = Nats::start();
    let opts = |services| Options {
        broker: Some(broker.address()),
        rate: 1e9,
        ..Options::new(services, &db)
    };
    let writer = Chatd::start(&keys, opts("auth,groups"), free_port());
    let g1 = Chatd::start(&keys, opts("gateway"), free_port());
    let g2 = Chatd::start(&keys, opts("gateway"), free_port());
    rt.block_on(async {
        let mut c = Clients::new(&writer).await;
        let mut users = Vec::new();
        for i in 0..250 {
            users.push(register(&mut c.auth, &format!("user{i:03}")).await);
        }
        for (i, cohort) in users.chunks(50).enumerate() {
            group_of(&mut c, cohort, &format!("cohort {i}")).await;
        }
        let mut gateway = GatewayClient::new(g1.channel().await);

        println!("chatd sessions: one gateway replica, sessions following one group each\n");
        println!("| sessions | ms to open one | gateway RSS MiB | KiB per session | gateway CPU % | µs CPU/s per session | replica SELECT/s | added by the sessions |");
        println!("|---|---|---|---|---|---|---|---|");
        let base_rss = rss_kib(g1.pid());
        let (base_cpu, base_selects) = idle_cost(g1.pid(), &db).await;
        println!(
            "| 0 (baseline) | | {:.1} | | {:.2} | | {:.1} | |",
            base_rss as f64 / 1024.0,
            base_cpu / 10_000.0,
            base_selects
        );
        let mut sessions = Vec::new();
        for level in [1_000usize, 4_000] {
            let opening = Instant::now();
            let before = sessions.len();
            while sessions.len() < level {
                let who = &users[sessions.len() % users.len()];
                // A connection carries at most 1,024 streams (chatd's limit): a new one
                // every 500 sessions, as many clients would bring.
                if sessions.len() % 500 == 499 {
                    gateway = GatewayClient::new(g1.channel().await);
                }
                let mut stream = open(&mut gateway, who).await;
                // A client reads what comes (presences of the other members, heartbeats).
                sessions.push(tokio::spawn(async move {
                    while let Ok(Some(_)) = stream.message().await {}
                }));
            }
            let open_ms = opening.elapsed().as_secs_f64() * 1000.0 / (level - before) as f64;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = rss_kib(g1.pid());
            let (cpu, selects) = idle_cost(g1.pid(), &db).await;
            println!(
                "| {level} | {open_ms:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:+.1} |",
                rss as f64 / 1024.0,
                rss.saturating_sub(base_rss) as f64 / level as f64,
                cpu / 10_000.0,
                (cpu - base_cpu) / level as f64,
                selects,
                selects - base_selects
            );
        }
        for s in sessions {
            s.abort();
        }

        // Fan-out: 100 members online, half on each gateway; 16 of them send.
        let members = &users[..MEMBERS];
        let group = group_of(&mut c, members, "everyone").await;
        let mut gateways = [
            GatewayClient::new(g1.channel().await),
            GatewayClient::new(g2.channel().await),
        ];
        let receipts: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let mut readers = Vec::new();
        for (i, member) in members.iter().enumerate() {
            let mut stream = open(&mut gateways[i % 2], member).await;
            let receipts = receipts.clone();
            readers.push(tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(session_event::Kind::Message(m)) = event.kind
                        && let Some(m) = m.message
                        && m.conversation_id == group
                    {
                        receipts.lock().unwrap().push((m.seq, Instant::now()));
                    }
                }
            }));
        }
        let acks: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let deadline = Instant::now() + SENDING;
        let mut senders = Vec::new();
        for (i, member) in members[..SENDERS].iter().enumerate() {
            let (mut groups, member, acks) = (c.groups.clone(), member.clone(), acks.clone());
            senders.push(tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    let req = send(group, "fan-out", &format!("s{i}-{n}"));
                    let m = groups.send_message(authed(&member, req)).await.unwrap();
                    acks.lock().unwrap().insert(m.into_inner().seq, Instant::now());
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let sent = acks.lock().unwrap().len();
        // Every member has every message, or a few seconds pass.
        let until = Instant::now() + Duration::from_secs(10);
        while receipts.lock().unwrap().len() < sent * MEMBERS && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for r in readers {
            r.abort();
        }
        let mut chat: Vec<f64> = {
            let acks = acks.lock().unwrap();
            receipts
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(seq, at)| acks.get(seq).map(|ack| at.saturating_duration_since(*ack)))
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect()
        };
        chat.sort_by(f64::total_cmp);
        let delivered = receipts.lock().unwrap().len();
        let rate = sent as f64 / SENDING.as_secs_f64();
        let mut bare = nats_fan_out(&broker.address(), rate).await;
        bare.sort_by(f64::total_cmp);

        println!("\nfan-out: {SENDERS} senders, a group of {MEMBERS} online members over 2 gateways, {} s", SENDING.as_secs());
        println!("| path | messages | deliveries | p50 ms | p99 ms | p99 ÷ bare NATS p99 |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| bare NATS publish → subscribe (baseline) | | {} | {:.2} | {:.2} | 1.00 |",
            bare.len(),
            percentile(&bare, 0.5),
            percentile(&bare, 0.99)
        );
        println!(
            "| chat send ack → session receipt | {sent} | {delivered} of {} | {:.2} | {:.2} | {:.2} |",
            sent * MEMBERS,
            percentile(&chat, 0.5),
            percentile(&chat, 0.99),
            percentile(&chat, 0.99) / percentile(&bare, 0.99)
        );
    });
}

/// Publish → receipt on one subject: [`SENDERS`] publishers at `rate` messages per second
/// in all (the chat's), [`MEMBERS`] subscribers on two connections (as two gateways would
/// hold them), for [`SENDING`]. Latencies in ms.
async fn nats_fan_out(address: &str, rate: f64) -> Vec<f64> {
    let url = format!("nats://{address}");
    let subject = "bench.fanout";
    let receipts: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut readers = Vec::new();
    let connections = [
        async_nats::connect(&url).await.unwrap(),
        async_nats::connect(&url).await.unwrap(),
    ];
    for i in 0..MEMBERS {
        let mut sub = connections[i % 2].subscribe(subject).await.unwrap();
        let receipts = receipts.clone();
        readers.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let n = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                receipts.lock().unwrap().push((n, Instant::now()));
            }
        }));
    }
    for c in &connections {
        c.flush().await.unwrap();
    }
    let published: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let publisher = async_nats::connect(&url).await.unwrap();
    let deadline = Instant::now() + SENDING;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (publisher, published) = (publisher.clone(), published.clone());
        let every = Duration::from_secs_f64(SENDERS as f64 / rate.max(1.0));
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while Instant::now() < deadline {
                tick.tick().await;
                let n = {
                    let mut p = published.lock().unwrap();
                    p.push(Instant::now());
                    p.len() - 1
                };
                publisher
                    .publish(subject, n.to_string().into())
                    .await
                    .unwrap();
                publisher.flush().await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in readers {
        r.abort();
    }
    let published = published.lock().unwrap();
    receipts
        .lock()
        .unwrap()
        .iter()
        .map(|(n, at)| at.saturating_duration_since(published[*n]).as_secs_f64() * 1000.0)
        .collect()
}
