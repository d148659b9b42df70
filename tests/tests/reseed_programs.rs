//! Kubernetes' physical re-seed, its programs run as the pods run them, against real MariaDB
//! servers: the donor agent (`chat-operator seed serve`, a sidecar of every MariaDB pod) beside
//! the primary; the Job's `seed fetch` into the replica's data directory while the replica
//! runs; the init container's `seed swap` once the replica has stopped. The replica comes back
//! on the copy, replicates from the copy's position, and its errant write is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use chat_operator::seed::wire;
use chatcluster_tests::{
    Process, TempDir, free_port,
    local::bin_dir,
    mariadb::{ADMIN_PASSWORD, MariaDb},
};

/// The server settings the operator gives MariaDB pods that matter here.
const IGNORE: [&str; 2] = [
    "--ignore-db-dirs=.chatcluster-seed",
    "--ignore-db-dirs=lost+found",
];

fn operator() -> Command {
    Command::new(bin_dir().join("chat-operator"))
}

/// The donor agent beside `db`, listening on a free loopback port.
fn donor(db: &MariaDb, work: &TempDir) -> (Process, String) {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let process = Process::spawn(
        operator()
            .args(["seed", "serve", "--listen", &address])
            .arg("--data-dir")
            .arg(db.data_dir())
            .arg("--socket")
            .arg(db.socket())
            .arg("--work-dir")
            .arg(work.path())
            .env("CHATCLUSTER_SEED_USER", "admin")
            .env("CHATCLUSTER_SEED_KEY", ADMIN_PASSWORD)
            .env("RUST_LOG", "info"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "the donor agent did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (process, address)
}

fn fetch(from: &str, key: &str, data_dir: &Path, termination_log: &Path) -> Output {
    operator()
        .args(["seed", "fetch", "--from", from, "--copy-id", "c1"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--termination-log")
        .arg(termination_log)
        .env("CHATCLUSTER_SEED_KEY", key)
        .output()
        .unwrap()
}

/// `seed swap` as the init container runs it, `approved` naming the copy the operator
/// approved for the pod (none: no approval).
fn swap(data_dir: &Path, approved: Option<&str>) -> Output {
    let approvals = TempDir::new("seed-approvals");
    if let Some(id) = approved {
        // As the operator writes it: the id, and until when (Unix seconds).
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        std::fs::write(approvals.path().join("db-1"), format!("{id} {until}")).unwrap();
    }
    operator()
        .args(["seed", "swap", "--pod", "db-1", "--data-dir"])
        .arg(data_dir)
        .arg("--approvals")
        .arg(approvals.path())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_replica_is_reseeded_through_the_donor_agent_a_fetch_and_a_swap() {
    let primary = MariaDb::start(1, &IGNORE);
    let mut replica = MariaDb::start(2, &IGNORE);
    replica.replicate_from(&primary);
    primary.sql(
        "USE chat;
         CREATE TABLE t (id INT PRIMARY KEY, body VARBINARY(200)) ENGINE=InnoDB;
         INSERT INTO t SELECT seq, RANDOM_BYTES(100) FROM seq_1_to_5000;",
    );
    replica.wait_caught_up(&primary);
    // Errant: a write of the replica's own, which only a copy of the primary undoes.
    replica.sql("CREATE DATABASE errant");
    let work = TempDir::new("seed-donor");
    let (_agent, address) = donor(&primary, &work);
    let staging = replica.data_dir().join(".chatcluster-seed");
    let log = TempDir::new("seed-termination");
    let termination = log.path().join("termination-log");

    // Without the key: refused, nothing staged, the replica's data untouched.
    let refused = fetch(&address, "not-the-key", &replica.data_dir(), &termination);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not authorised"),
        "{}",
        text(&refused)
    );
    assert!(
        std::fs::read_to_string(&termination)
            .unwrap()
            .contains("not authorised")
    );
    assert!(!staging.join("new").exists(), "no partial copy left");
    assert!(!staging.join("ready").exists());

    // With it: the copy is staged and prepared while the replica runs and the primary writes.
    // Junk in the donor's own staging directory (a copy it once fetched) is not copied.
    let junk = primary.data_dir().join(".chatcluster-seed/new/chat");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("junk.ibd"), b"not a table").unwrap();
    let writing = std::sync::atomic::AtomicBool::new(true);
    let fetched = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut id = 10_000;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                primary.sql(&format!("INSERT INTO chat.t VALUES ({id}, 'during')"));
                id += 1;
            }
            id - 10_000
        });
        let fetched = fetch(&address, ADMIN_PASSWORD, &replica.data_dir(), &termination);
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(written > 0, "the primary wrote during the copy");
        fetched
    });
    assert!(fetched.status.success(), "{}", text(&fetched));
    let message = std::fs::read_to_string(&termination).unwrap();
    assert_eq!(String::from_utf8_lossy(&fetched.stdout).trim(), message);
    let gtids = message
        .strip_prefix("copy c1 ")
        .unwrap_or_else(|| panic!("{message}"))
        .to_string();
    assert!(
        gtids.starts_with("0-1-"),
        "a position of the primary's: {gtids}"
    );
    assert_eq!(
        std::fs::read_to_string(staging.join("ready")).unwrap(),
        format!("c1 {gtids}")
    );
    assert!(
        !staging.join("new/chat/junk.ibd").exists(),
        "the donor's staging directory is not part of its backup"
    );
    assert_eq!(replica.sql("SHOW DATABASES LIKE 'errant'"), "errant");
    assert_eq!(
        replica.sql("SHOW DATABASES LIKE '%seed%'"),
        "",
        "the staging directory is no schema"
    );
    assert!(
        std::fs::read_dir(work.path()).unwrap().next().is_none(),
        "the donor leaves no scratch files (nor the password) behind"
    );
    primary.sql("INSERT INTO chat.t VALUES (5002, 'after the copy')");

    // The pod restarts without the operator's approval (a drain, say): the copy is thrown
    // away and the replica keeps its own data.
    replica.kill();
    let refused = swap(&replica.data_dir(), Some("another-copy"));
    assert!(refused.status.success(), "{}", text(&refused));
    assert_eq!(text(&refused).trim(), "discarded c1");
    assert!(!staging.join("ready").exists() && !staging.join("new").exists());
    replica.start_again();
    assert_eq!(replica.sql("SHOW DATABASES LIKE 'errant'"), "errant");

    // Fetched again and approved: the server stops, the init container swaps, the server
    // starts on the copy.
    let fetched = fetch(&address, ADMIN_PASSWORD, &replica.data_dir(), &termination);
    assert!(fetched.status.success(), "{}", text(&fetched));
    let message = std::fs::read_to_string(&termination).unwrap();
    let gtids = message.strip_prefix("copy c1 ").unwrap().to_string();
    replica.kill();
    let swapped = swap(&replica.data_dir(), Some("c1"));
    assert!(swapped.status.success(), "{}", text(&swapped));
    assert_eq!(text(&swapped).trim(), format!("swapped c1 {gtids}"));
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["phase"],
        "the old data is gone; the phase says what was swapped"
    );
    replica.start_again();
    assert_eq!(
        replica.sql("SHOW DATABASES LIKE 'errant'"),
        "",
        "errant write gone"
    );

    // What the operator does next: the copy's position, then replication from the primary.
    replica.sql(&format!("SET GLOBAL gtid_slave_pos = '{gtids}'"));
    replica.sql(&format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl',
           MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
         START SLAVE;",
        primary.port
    ));
    replica.wait_caught_up(&primary);
    let checksum = "SELECT COUNT(*), SUM(CRC32(body)) FROM chat.t";
    assert_eq!(replica.sql(checksum), primary.sql(checksum));
    assert_eq!(
        replica.sql("SELECT body FROM chat.t WHERE id = 5002"),
        "after the copy"
    );
    // Running the swap again (a later restart) moves nothing and says the same.
    replica.kill();
    let again = swap(&replica.data_dir(), None);
    assert_eq!(text(&again).trim(), format!("swapped c1 {gtids}"));
    replica.start_again();
    assert_eq!(replica.sql(checksum), primary.sql(checksum));
}

#[test]
fn a_donor_drops_a_client_that_never_answers_and_serves_the_next() {
    let primary = MariaDb::start(1, &IGNORE);
    let work = TempDir::new("seed-donor");
    let (_agent, address) = donor(&primary, &work);
    // A client that connects and says nothing holds no backup and is dropped.
    let mut silent = TcpStream::connect(&address).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "dropped after {waited:?}"
    );
    assert!(sink.starts_with(wire::MAGIC), "the greeting came first");
    // A client with the key that stops reading holds the one backup: the next is told the
    // donor is busy. Once it leaves, its backup is killed and the next client is served.
    let mut slow = TcpStream::connect(&address).unwrap();
    let mut greeting = [0u8; 8 + wire::NONCE_LEN];
    slow.read_exact(&mut greeting).unwrap();
    let proof = wire::client_proof(ADMIN_PASSWORD.as_bytes(), &greeting[8..]).unwrap();
    slow.write_all(&proof).unwrap();
    slow.write_all(&wire::nonce()).unwrap();
    let mut donor_proof = [0u8; wire::MAC_LEN];
    slow.read_exact(&mut donor_proof).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let target = TempDir::new("seed-target");
    std::fs::create_dir_all(target.path().join("data")).unwrap();
    let log = target.path().join("termination-log");
    let busy = fetch(&address, ADMIN_PASSWORD, &target.path().join("data"), &log);
    assert!(!busy.status.success());
    assert!(text(&busy).contains("busy"), "{}", text(&busy));
    drop(slow);
    // The agent still serves a client with the key.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fetched = fetch(&address, ADMIN_PASSWORD, &target.path().join("data"), &log);
        if fetched.status.success() {
            break;
        }
        // The slow client's backup ends at the donor's next write.
        assert!(text(&fetched).contains("busy"), "{}", text(&fetched));
        assert!(
            Instant::now() < deadline,
            "the slow client's backup never ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
