//! Real MariaDB servers for tests: each in its own temp dir, on a free loopback port, with
//! binary logs and GTIDs, killed and removed when dropped. `scripts/setup.sh` installs the
//! Debian `mariadb-server` package that provides the binaries.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chat_operator::topology::dialect::MARIADB;

use crate::{Process, TempDir, free_port};

/// Password of the `admin` user on every test server: the topology loop's user, with the
/// operator's least privileges ([`Dialect::admin_privileges`](chat_operator::topology::dialect::Dialect::admin_privileges)).
pub const ADMIN_PASSWORD: &str = "admin-pw";
/// Password of the `repl` replication user.
pub const REPL_PASSWORD: &str = "repl-pw";
/// The application user chatd connects as, and its password and schema.
pub const APP_USER: &str = "chat";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "chat-pw";
/// Schema the application uses.
pub const APP_DB: &str = "chat";

/// `statement` run as root over the server's Unix `socket`, as an administrator on the
/// machine would, with the client's `options` (`-N -B` for bare values, `-E` for one
/// `name: value` line per column); its output. Panics when the client fails.
pub fn root_sql(socket: &Path, options: &[&str], statement: &str) -> String {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-uroot"])
        .args(options)
        .arg(format!("--socket={}", socket.display()))
        .args(["-e", statement])
        .output()
        .unwrap_or_else(|e| panic!("mariadb: {e}"));
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running MariaDB server.
pub struct MariaDb {
    dir: TempDir,
    /// Loopback port it listens on.
    pub port: u16,
    /// Its `server_id`.
    pub server_id: u32,
    extra: Vec<String>,
    /// Address it listens on.
    bind: String,
    /// Address others reach it at.
    pub host: String,
    /// Network namespace it runs in (`None`: the host's).
    netns: Option<String>,
    process: Option<Process>,
}

fn socket(dir: &TempDir) -> PathBuf {
    dir.path().join("mysqld.sock")
}

impl MariaDb {
    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Send the server `signal` (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else {
            panic!("kill -{signal}: the server does not run");
        };
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Initialise a data directory and start a server with `server_id`, binary logging,
    /// strict GTIDs, the semi-sync settings given and the users tests need.
    pub fn start(server_id: u32, extra: &[&str]) -> Self {
        Self::start_at(server_id, extra, "127.0.0.1", "127.0.0.1", None)
    }

    /// As [`start`](Self::start), listening on `bind`, reached at `host`, inside network
    /// namespace `netns` if given.
    pub fn start_at(
        server_id: u32,
        extra: &[&str],
        bind: &str,
        host: &str,
        netns: Option<&str>,
    ) -> Self {
        let dir = TempDir::new(&format!("mariadb-{server_id}"));
        let data = dir.path().join("data");
        // Each server its own tmpdir: nothing shared between servers started side by side.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .env("TMPDIR", &tmp)
            .output()
            .unwrap_or_else(|e| panic!("mariadb-install-db (run scripts/setup.sh): {e}"));
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = Self {
            dir,
            port: free_port(),
            server_id,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            bind: bind.to_string(),
            host: host.to_string(),
            netns: netns.map(String::from),
            process: None,
        };
        db.spawn();
        // Set up outside the binary log, as every server gets the same: a replica must hold no
        // transaction of its own (it would be errant).
        let admin_privileges = MARIADB.admin_privileges;
        db.sql(&format!(
            "SET SESSION sql_log_bin = 0;
             CREATE USER 'admin'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}';
             GRANT {admin_privileges} ON *.* TO 'admin'@'%';
             CREATE USER 'repl'@'%' IDENTIFIED BY '{REPL_PASSWORD}';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
             CREATE DATABASE {APP_DB};
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             GRANT ALL PRIVILEGES ON {APP_DB}.* TO '{APP_USER}'@'%';"
        ));
        db
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        // `ip netns exec` execs the server: the process killed is the server itself.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "mariadbd"]);
                c
            }
            None => Command::new("mariadbd"),
        };
        cmd.args(["--no-defaults", "--user=root", "--skip-name-resolve"])
            .arg(format!("--bind-address={}", self.bind))
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .env("TMPDIR", d.join("tmp"))
            .arg(format!("--socket={}", socket(&self.dir).display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--log-bin=binlog",
                "--binlog-format=ROW",
                "--log-slave-updates=ON",
                "--gtid-strict-mode=ON",
                // As the operator's configuration: chatd's migrations create a trigger.
                "--log-bin-trust-function-creators=ON",
                "--skip-slave-start",
                "--relay-log-recovery=ON",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--max-connections=500",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(Process::spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.try_sql("SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mariadbd did not start: {}", self.error_log());
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its Unix socket.
    pub fn socket(&self) -> PathBuf {
        socket(&self.dir)
    }

    /// Start it again after [`kill`](Self::kill), on whatever its data directory holds now.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// The server's error log, for assertion messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The client command running `sql` as root over the socket (not started): to run a
    /// statement that blocks, as a child process.
    pub fn sql_command(&self, sql: &str) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", socket(&self.dir).display()))
            .arg("-e")
            .arg(sql);
        cmd
    }

    /// Run `sql` as root over the socket; tab-separated rows.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = self.sql_command(sql).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Run `sql` as root; panics on error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `mysql://` URL for `user`:`password` on the application schema.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "mysql://{user}:{password}@{}:{}/{APP_DB}",
            self.host, self.port
        )
    }

    /// URL of the application user.
    pub fn app_url(&self) -> String {
        self.url(APP_USER, APP_PASSWORD)
    }

    /// `host:port` of this server.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Make this server a read-only GTID replica of `primary`, starting from nothing (both
    /// servers were created empty, so the primary's whole binlog applies).
    pub fn replicate_from(&self, primary: &MariaDb) {
        self.sql(&format!(
            "SET GLOBAL gtid_slave_pos = '';
             CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl',
               MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
             START SLAVE;
             SET GLOBAL read_only = ON;",
            primary.port
        ));
    }

    /// The GTIDs this server has applied.
    pub fn gtid_current_pos(&self) -> String {
        self.sql("SELECT @@gtid_current_pos")
    }

    /// Wait (30 s at most) until this replica has applied everything `primary` has. One
    /// second at a time: a waiting MASTER_GTID_WAIT is woken only by replicated transactions,
    /// not by a re-seed that sets `gtid_slave_pos` past the target (a wait begun before such
    /// a re-seed would otherwise sleep out its whole timeout).
    pub fn wait_caught_up(&self, primary: &MariaDb) {
        let target = primary.sql("SELECT @@gtid_binlog_pos");
        let mut result = String::new();
        for _ in 0..30 {
            result = self.sql(&format!("SELECT MASTER_GTID_WAIT('{target}', 1)"));
            if result == "0" {
                return;
            }
        }
        panic!("replica did not catch up to {target}: {result:?}");
    }

    /// Stop applying replicated changes (the replica lags from now on).
    pub fn pause_apply(&self) {
        self.sql("STOP SLAVE SQL_THREAD");
    }

    /// Resume applying.
    pub fn resume_apply(&self) {
        self.sql("START SLAVE SQL_THREAD");
    }

    /// Kill the server with SIGKILL.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Start it again on the same data and port.
    pub fn restart(&mut self) {
        self.process = None;
        self.spawn();
    }
}
