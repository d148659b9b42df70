//! A real NATS server (Debian's `nats-server`, installed by `scripts/setup.sh`), the broker
//! chatd replicas exchange delivery hints through: on a free port, its files in a temp dir,
//! stopped when dropped; stopped and started again on the same port to test an outage.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Process, TempDir, free_port};

/// A running (or stopped) broker.
pub struct Nats {
    dir: TempDir,
    /// Its client port.
    pub port: u16,
    /// Its monitoring port (`/connz?subs=1` lists each client's subscriptions).
    pub monitor_port: u16,
    process: Option<Process>,
}

impl Nats {
    /// A plain-text broker.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A broker with `config` (nats-server's configuration syntax) added to its listen
    /// address: TLS blocks, limits.
    pub fn start_with(config: &str) -> Self {
        let dir = TempDir::new("nats");
        let (port, monitor_port) = (free_port(), free_port());
        let file = dir.path().join("nats.conf");
        let listen = format!("listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}");
        std::fs::write(&file, format!("{listen}\n{config}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let mut nats = Self {
            dir,
            port,
            monitor_port,
            process: None,
        };
        nats.start_again();
        nats
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    /// `host:port` chatd's `CHATD_BROKER` takes.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start it (again, after [`stop`](Self::stop)) and wait until it takes connections.
    pub fn start_again(&mut self) {
        let log = self.dir.path().join("nats.log");
        let process = Process::spawn(
            Command::new("nats-server")
                .arg("-c")
                .arg(self.config())
                .arg("-l")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server (run scripts/setup.sh) not listening on {} within 10 s: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it: a broker outage.
    pub fn stop(&mut self) {
        self.process = None;
    }
}
