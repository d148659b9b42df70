//! Message throughput and send→delivery latency, against the database's own commit rate.
//!
//! `cargo bench -p chatd --bench throughput`
//!
//! A MariaDB primary and replica (durable: `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`)
//! and two chatd replicas. Senders (each in its own group) write through replica A; one
//! subscriber per group reads through replica B, so every message crosses replicas. At 1, 16
//! and 64 concurrent senders: messages/s acknowledged, and send→delivery latency p50/p99.
//! Baseline, in the same run and at the same concurrency: plain autocommit INSERTs straight
//! into the same primary — the database's own durable commit rate. Per message, also: the
//! statements the primary and the replica ran (their `Questions` counters, every client's),
//! the CPU both chatd replicas spent sending and delivering, and the CPU both database servers
//! spent (`/proc/<pid>/stat`) — beside the CPU they spent per baseline commit (the replica
//! applying it included): on this two-core machine, where the senders, chatd and both
//! servers share the cores, CPU per message bounds the rate as much as the disk does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chatcluster_tests::{free_port, mariadb::MariaDb};
use chatd::pb::{
    chat::{SendMessageRequest, SubscribeRequest, event},
    groups::CreateGroupRequest,
};
use common::{Chatd, Clients, Keys, Options, authed, cpu_us, register, uid};
use sqlx::mysql::MySqlPoolOptions;
use tokio::sync::Mutex;

const LEVEL_SECONDS: u64 = 4;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The baseline's commits per second, and the CPU the database servers spent per commit.
async fn baseline(db: &common::Db, concurrency: usize) -> (f64, f64) {
    let primary = &db.primary;
    let pool = MySqlPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect(&primary.app_url())
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_baseline (
           id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, conversation_id BIGINT UNSIGNED,
           sender_id BIGINT UNSIGNED, text TEXT, sent_at_ms BIGINT)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let servers = [db.primary.pid().unwrap(), db.replica.pid().unwrap()];
    let db_before = cpu_us(&servers);
    let deadline = Instant::now() + Duration::from_secs(LEVEL_SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                sqlx::query(
                    "INSERT INTO bench_baseline (conversation_id, sender_id, text, sent_at_ms) VALUES (?, ?, ?, ?)",
                )
                .bind(worker as u64)
                .bind(worker as u64)
                .bind("baseline message text of ordinary length")
                .bind(0i64)
                .execute(&pool)
                .await
                .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let per_second = total as f64 / started.elapsed().as_secs_f64();
    // The replica applies the baseline's rows too: let it finish before reading its CPU.
    db.replica.wait_caught_up(&db.primary);
    let db_us = cpu_us(&servers) - db_before;
    (per_second, db_us as f64 / total as f64)
}

struct Level {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    statements_per_message: f64,
    replica_statements_per_message: f64,
    chatd_cpu_us_per_message: f64,
    db_cpu_us_per_message: f64,
}

/// Statements the server has been sent, by every client.
async fn questions(db: &MariaDb) -> u64 {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&db.app_url())
        .await
        .unwrap();
    let (_, value): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Questions'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    value.parse().unwrap()
}

async fn chat_level(
    a: &Chatd,
    b: &Chatd,
    db: &common::Db,
    concurrency: usize,
    round: usize,
) -> Level {
    let mut ca = Clients::new(a).await;
    let base = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut senders = Vec::new();
    let mut subscribers = Vec::new();
    for i in 0..concurrency {
        let sender = register(&mut ca.auth, &format!("s{round}x{i}")).await;
        let reader = register(&mut ca.auth, &format!("r{round}x{i}")).await;
        let group = ca
            .groups
            .create_group(authed(
                &sender,
                CreateGroupRequest {
                    name: "bench".into(),
                    member_ids: vec![uid(&reader)],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        ca.accept(&reader, group.id).await;
        let mut cb = Clients::new(b).await;
        let mut stream = cb
            .groups
            .subscribe(authed(
                &reader,
                SubscribeRequest {
                    conversation_id: group.id,
                    after_seq: 0,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let latencies = latencies.clone();
        subscribers.push(tokio::spawn(async move {
            while let Ok(Ok(Some(ev))) =
                tokio::time::timeout(Duration::from_secs(LEVEL_SECONDS + 10), stream.message())
                    .await
            {
                if let Some(event::Kind::Message(m)) = ev.kind
                    && let Ok(sent_us) = m.text.parse::<u128>()
                {
                    let now_us = base.elapsed().as_micros();
                    latencies
                        .lock()
                        .await
                        .push(now_us.saturating_sub(sent_us) as f64 / 1000.0);
                }
            }
        }));
        senders.push((sender, group.id));
    }
    let mut clients = Vec::new();
    for _ in 0..senders.len() {
        clients.push(Clients::new(a).await);
    }
    let chatds = [a.pid(), b.pid()];
    let servers = [db.primary.pid().unwrap(), db.replica.pid().unwrap()];
    let questions_before = questions(&db.primary).await;
    let replica_questions_before = questions(&db.replica).await;
    let (chatd_before, db_before) = (cpu_us(&chatds), cpu_us(&servers));
    let deadline = Instant::now() + Duration::from_secs(LEVEL_SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((sender, group), mut c) in senders.into_iter().zip(clients) {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let text = base.elapsed().as_micros().to_string();
                c.groups
                    .send_message(authed(
                        &sender,
                        SendMessageRequest {
                            conversation_id: group,
                            text,
                            client_key: String::new(),
                        },
                    ))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let per_second = sent as f64 / started.elapsed().as_secs_f64();
    // Let deliveries finish, then stop the subscribers.
    for _ in 0..100 {
        if latencies.lock().await.len() as u64 >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in subscribers {
        s.abort();
    }
    let (chatd_us, db_us) = (cpu_us(&chatds) - chatd_before, cpu_us(&servers) - db_before);
    // Less this query's own.
    let statements = questions(&db.primary).await - questions_before - 1;
    let replica_statements = questions(&db.replica).await - replica_questions_before - 1;
    let mut l = latencies.lock().await.clone();
    assert_eq!(
        l.len() as u64,
        sent,
        "every acknowledged message was delivered"
    );
    l.sort_by(f64::total_cmp);
    Level {
        per_second,
        p50_ms: percentile(&l, 0.5),
        p99_ms: percentile(&l, 0.99),
        statements_per_message: statements as f64 / sent as f64,
        replica_statements_per_message: replica_statements as f64 / sent as f64,
        chatd_cpu_us_per_message: chatd_us as f64 / sent as f64,
        db_cpu_us_per_message: db_us as f64 / sent as f64,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let durable = ["--sync-binlog=1", "--innodb-flush-log-at-trx-commit=1"];
    let primary = MariaDb::start(1, &durable);
    let replica = MariaDb::start(2, &durable);
    replica.replicate_from(&primary);
    let db = common::Db { primary, replica };
    let keys = Keys::new();
    let broker = chatcluster_tests::nats::Nats::start();
    let opts = || Options {
        broker: Some(broker.address()),
        rate: 1e9,
        ..Options::new("auth,groups", &db)
    };
    let a = Chatd::start(&keys, opts(), free_port());
    let b = Chatd::start(&keys, opts(), free_port());

    println!(
        "chatd throughput: senders on replica A, subscribers on replica B, {LEVEL_SECONDS} s per level"
    );
    println!(
        "baseline = autocommit INSERTs straight into the same durable MariaDB primary, same run\n"
    );
    println!(
        "| senders | chat msg/s | DB commits/s | ratio | p50 ms | p99 ms | primary stmts | replica stmts | chatd CPU µs | DB CPU µs | baseline DB CPU µs |"
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|\n| | | | | | | per message | per message | per message | per message | per commit |"
    );
    rt.block_on(async {
        for (round, concurrency) in [1usize, 16, 64].into_iter().enumerate() {
            let (commits, baseline_db_us) = baseline(&db, concurrency).await;
            let level = chat_level(&a, &b, &db, concurrency, round).await;
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
                concurrency,
                level.per_second,
                commits,
                level.per_second / commits,
                level.p50_ms,
                level.p99_ms,
                level.statements_per_message,
                level.replica_statements_per_message,
                level.chatd_cpu_us_per_message,
                level.db_cpu_us_per_message,
                baseline_db_us,
            );
        }
    });
}
