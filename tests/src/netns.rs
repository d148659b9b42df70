//! A network namespace joined to the host by a veth pair: a test host whose link can be cut
//! for real (packets dropped, no reset), as a network partition does. Needs root and `ip`
//! (iproute2). Removed when dropped.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A namespace with one link to the host.
pub struct Netns {
    /// Namespace name (for `ip netns exec`).
    pub name: String,
    host_link: String,
    /// The host side's address, reachable from inside.
    pub host_ip: String,
    /// The namespace side's address, reachable from the host.
    pub ns_ip: String,
}

impl Netns {
    /// Create the namespace and its link (a /30 in 10.0.0.0/8 chosen from the process id and
    /// a counter, so parallel tests do not collide).
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xffff);
        let name = format!("cc{tag}");
        let host_link = format!("cch{tag}");
        let ns_link = format!("ccn{tag}");
        // Block = 64 addresses per process, 4 per namespace.
        let block = (pid % 16_000) * 64 + (n % 16) * 4;
        let (b2, b3) = (block / 256 % 256, block % 256);
        let b1 = 100 + block / 65_536 % 100;
        let host_ip = format!("10.{b1}.{b2}.{}", b3 + 1);
        let ns_ip = format!("10.{b1}.{b2}.{}", b3 + 2);
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &name])?;
            ip(&[
                "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
            ])?;
            ip(&["link", "set", &ns_link, "netns", &name])?;
            ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
            ip(&["link", "set", &host_link, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_link,
            ])?;
            ip(&["-n", &name, "link", "set", &ns_link, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])
        };
        let result = setup();
        let ns = Self {
            name,
            host_link,
            host_ip,
            ns_ip,
        };
        if let Err(e) = result {
            // `ns` is dropped: whatever was created is removed.
            panic!("cannot create a network namespace (needs root and iproute2): {e}");
        }
        ns
    }

    /// Cut the link: packets in both directions are dropped.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restore the link.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the host's end.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
