//! Operating chatd: Prometheus metrics, graceful drain on SIGTERM, migrations raced by many
//! replicas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatcluster_tests::{free_port, mariadb::MariaDb};
use chatd::pb::chat::{SendMessageRequest, SubscribeRequest};
use common::{Chatd, Clients, Db, Keys, Options, authed, register};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_calls_by_code_and_drain_ends_streams_cleanly() {
    let keys = Keys::new();
    let db = Db::start();
    let metrics_port = free_port();
    let mut chatd = Chatd::start(
        &keys,
        Options {
            metrics_port: Some(metrics_port),
            drain_seconds: 1.5,
            ..Options::new("auth,groups", &db)
        },
        free_port(),
    );
    let mut c = Clients::new(&chatd).await;
    let a = register(&mut c.auth, "alice").await;
    let g = c.group(&a, "ops", &[]).await;
    let send = |text: &str| SendMessageRequest {
        conversation_id: g.id,
        text: text.into(),
        client_key: String::new(),
    };
    c.groups
        .send_message(authed(&a, send("one")))
        .await
        .unwrap();
    let denied = c.groups.send_message(send("no token")).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let mut stream = c
        .groups
        .subscribe(authed(
            &a,
            SubscribeRequest {
                conversation_id: g.id,
                after_seq: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());

    let text = http_get(metrics_port, "/metrics");
    assert!(
        text.contains(
            r#"chatd_requests_total{method="chatcluster.groups.v1.Groups/SendMessage",code="0"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"chatd_requests_total{method="chatcluster.groups.v1.Groups/SendMessage",code="16"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"chatd_in_flight{method="chatcluster.groups.v1.Groups/Subscribe"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("chatd_request_duration_seconds_bucket"),
        "{text}"
    );

    // Made-up method names are one label, `unknown`: they cannot grow the metrics.
    let mut grpc = tonic::client::Grpc::new(chatd.channel().await);
    for i in 0..300 {
        grpc.ready().await.unwrap();
        let path = format!("/chatcluster.auth.v1.Auth/MadeUp{i}");
        let called = grpc
            .unary(
                tonic::Request::new(()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await;
        assert_eq!(called.unwrap_err().code(), Code::Unimplemented);
    }
    let after = http_get(metrics_port, "/metrics");
    assert!(!after.contains("MadeUp"), "{after}");
    assert!(
        after.contains(r#"chatd_requests_total{method="unknown",code="12"} 300"#),
        "{after}"
    );
    assert!(
        after.lines().count() < text.lines().count() + 40,
        "{} metric lines, {} before",
        after.lines().count(),
        text.lines().count()
    );

    // SIGTERM: the service reports NOT_SERVING while still answering, the stream ends with
    // no error, and the process exits 0.
    chatd.process().terminate();
    let mut health = HealthClient::new(chatd.channel().await);
    let mut not_serving = false;
    for _ in 0..50 {
        let status = health
            .check(HealthCheckRequest {
                service: "chatcluster.groups.v1.Groups".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == 2 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(not_serving, "health went NOT_SERVING during the drain");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "stream ended cleanly: {end:?}");
    let status =
        tokio::task::spawn_blocking(move || chatd.process().wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_replicas_migrating_at_once_apply_each_step_once() {
    let db = Db::start();
    let url_cfg = db_config(&db.primary, Duration::from_secs(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let cfg = url_cfg.clone();
        tasks.push(tokio::spawn(async move {
            let db = chatd::db::Db::connect(cfg).await.unwrap();
            chatd::store::groups::migrate(&db).await.unwrap();
            chatd::store::servers::migrate(&db).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        db.primary
            .sql("SELECT COUNT(*), MAX(version) FROM chat.groups_schema_migrations"),
        "5\t5"
    );
    assert_eq!(
        db.primary
            .sql("SELECT COUNT(*), MAX(version) FROM chat.servers_schema_migrations"),
        "6\t6"
    );
    // Each message table has its seq trigger, once.
    assert_eq!(
        db.primary.sql("SELECT GROUP_CONCAT(trigger_name ORDER BY trigger_name) FROM information_schema.triggers WHERE trigger_schema = 'chat'"),
        "groups_messages_seq,servers_messages_seq"
    );
    // Every service owns its own prefix.
    let tables = db.primary.sql("SELECT GROUP_CONCAT(table_name ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'chat'");
    for t in tables.split(',') {
        assert!(t.starts_with("groups_") || t.starts_with("servers_"), "{t}");
    }
}

/// A pod whose database is not up yet still stops at once: as PID 1 in its image chatd would
/// otherwise ignore SIGTERM, and its wait for the database must not outlast the request.
#[test]
fn sigterm_while_waiting_for_the_database_stops_chatd_at_once() {
    let keys = Keys::new();
    // Nothing listens there: chatd retries the database once a second.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let opts = Options {
        services: "groups",
        primary: nowhere,
        replicas: None,
        broker: None,
        primary_file: None,
        rate: 10.0,
        metrics_port: None,
        drain_seconds: 5.0,
        address_logins_per_minute: 60,
        address_registrations_per_hour: 20,
    };
    let mut chatd = Chatd::spawn(&keys, opts, free_port());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(chatd.running(), "chatd gave up on the database too early");
    let process = chatd.process();
    process.terminate();
    let status = process
        .wait_exit(Duration::from_secs(2))
        .expect("chatd still running 2 s after SIGTERM");
    assert!(status.success(), "{status}");
}

/// chatd's database settings over `db`'s primary, statements bounded by `statement_timeout`.
fn db_config(primary: &MariaDb, statement_timeout: Duration) -> chatd::db::DbConfig {
    chatd::db::DbConfig {
        primary: primary.address(),
        replicas: None,
        database: chatcluster_tests::mariadb::APP_DB.into(),
        user: chatcluster_tests::mariadb::APP_USER.into(),
        password: chatcluster_tests::mariadb::APP_PASSWORD.into(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
        statement_timeout,
        ca_file: None,
    }
}

/// A database that does not trust trigger creators (say one not yet restarted with the
/// operator's configuration after an upgrade) fails the migration with an error saying what
/// it needs, not a bare server error.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_refuses_the_trigger_is_named_in_the_migration_error() {
    let primary = MariaDb::start(1, &["--log-bin-trust-function-creators=OFF"]);
    let db = chatd::db::Db::connect(db_config(&primary, Duration::from_secs(10)))
        .await
        .unwrap();
    let refused = chatd::store::groups::migrate(&db).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("log_bin_trust_function_creators=ON"),
        "{refused}"
    );
    // Once the server trusts it, the migration picks up where it stopped.
    primary.sql("SET GLOBAL log_bin_trust_function_creators = ON");
    chatd::store::groups::migrate(&db).await.unwrap();
    assert_eq!(
        primary.sql("SELECT COUNT(*), MAX(version) FROM chat.groups_schema_migrations"),
        "5\t5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_that_runs_too_long_is_aborted_by_the_server() {
    let db = Db::start();
    let chatd_db = chatd::db::Db::connect(db_config(&db.primary, Duration::from_secs(1)))
        .await
        .unwrap();
    let pool = chatd_db.primary().await;
    let started = std::time::Instant::now();
    let slept = sqlx::query("SELECT SLEEP(20)").fetch_one(&pool).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "ran {took:?}");
    // MariaDB ends the statement: an error, or SLEEP's own "interrupted" result of 1.
    if let Ok(row) = slept {
        use sqlx::Row;
        assert_eq!(row.get::<i64, _>(0), 1, "SLEEP was not interrupted");
    }
    // Migrations are not bound by it: the lock wait and the DDL may take longer.
    let tiny = chatd::db::Db::connect(db_config(&db.primary, Duration::from_millis(1)))
        .await
        .unwrap();
    chatd::store::groups::migrate(&tiny).await.unwrap();
}
