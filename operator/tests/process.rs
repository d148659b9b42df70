//! chat-operator as a process: it stops at once on SIGTERM even while its API server does not
//! answer (in its image it is PID 1, where a signal without a handler is ignored).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn sigterm_stops_the_operator_while_the_api_server_does_not_answer() {
    // Connections are accepted by the kernel and never answered.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = silent.local_addr().unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("operator-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{ name: silent, cluster: {{ server: 'http://{api}' }} }}]
users: [{{ name: nobody, user: {{ token: x }} }}]
contexts: [{{ name: silent, context: {{ cluster: silent, user: nobody }} }}]
current-context: silent
"
        ),
    )
    .unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_chat-operator"))
        .args(["run", "--metrics-addr", &metrics.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let early = operator.try_wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        early.is_none(),
        "the operator exited before the signal: {early:?}"
    );

    Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(status) = operator.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = operator.kill();
            let _ = operator.wait();
            panic!("chat-operator still running 2 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
