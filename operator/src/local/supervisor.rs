//! Supervised processes: each [`Launch`] runs in a task that restarts it when it exits (with
//! backoff), logs its output to a file, and on request stops it gracefully (SIGTERM, then
//! SIGKILL after a grace period).
//!
//! Children get their own process group: Ctrl-C in the terminal reaches only the runner, which
//! then stops them in order (Envoy before chatd before the databases), as Kubernetes would.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Serialize;
use tokio::{process::Command, sync::watch};
use tracing::{info, warn};

use super::plan::Launch;

/// First restart delay; doubles on each quick crash.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A process that ran this long before exiting restarts without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// What a supervised process is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ProcessState {
    /// Not started yet.
    Starting,
    /// Running with this pid.
    Running {
        /// Its process id.
        pid: u32,
    },
    /// Exited (or could not start); restarting soon.
    Restarting {
        /// Why it stopped.
        reason: String,
    },
    /// Stopped on request.
    Stopped,
}

/// A process's state and how often it was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    /// Its state.
    #[serde(flatten)]
    pub state: ProcessState,
    /// Restarts after an exit nobody asked for.
    pub restarts: u32,
}

/// A supervised process.
pub struct Supervised {
    /// Its name.
    pub name: String,
    /// Its port (answers once it is up).
    pub port: u16,
    /// Its latest status.
    pub status: watch::Receiver<ProcessStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    /// Start `launch`, writing its output to `logs/<name>.log`, and keep it running.
    pub fn start(launch: Launch, logs: &Path, grace: Duration) -> Self {
        let (status_tx, status) = watch::channel(ProcessStatus {
            state: ProcessState::Starting,
            restarts: 0,
        });
        let (stop, stop_rx) = watch::channel(false);
        let name = launch.name.clone();
        let port = launch.port;
        let log = logs.join(format!("{name}.log"));
        let task = tokio::spawn(supervise(launch, log, grace, status_tx, stop_rx));
        Self {
            name,
            port,
            status,
            stop,
            task,
        }
    }

    /// Its pid, while running.
    pub fn pid(&self) -> Option<u32> {
        match self.status.borrow().state {
            ProcessState::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// Stop it (SIGTERM, SIGKILL after the grace period) and wait until it has exited.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(process = %self.name, error = %e, "supervisor task failed");
        }
    }
}

fn command(launch: &Launch, log: &Path) -> std::io::Result<Command> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

async fn supervise(
    launch: Launch,
    log: std::path::PathBuf,
    grace: Duration,
    status: watch::Sender<ProcessStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut restarts = 0;
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let reason = match command(&launch, &log).and_then(|mut c| c.spawn()) {
            Err(e) => format!("cannot start {}: {e}", launch.program.display()),
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                info!(process = %launch.name, pid, "started");
                status.send_replace(ProcessStatus {
                    state: ProcessState::Running { pid },
                    restarts,
                });
                tokio::select! {
                    exit = child.wait() => match exit {
                        Ok(s) => format!("exited: {s}"),
                        Err(e) => format!("lost: {e}"),
                    },
                    _ = stopped(&mut stop) => {
                        terminate(&launch.name, &mut child, pid, grace).await;
                        status.send_replace(ProcessStatus { state: ProcessState::Stopped, restarts });
                        return;
                    }
                }
            }
        };
        warn!(process = %launch.name, %reason, "restarting");
        status.send_replace(ProcessStatus {
            state: ProcessState::Restarting { reason },
            restarts,
        });
        if started.elapsed() > HEALTHY_RUN {
            backoff = BACKOFF_START;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => {
                status.send_replace(ProcessStatus { state: ProcessState::Stopped, restarts });
                return;
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        restarts += 1;
    }
}

/// Completes once a stop is requested (or the [`Supervised`] is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
async fn terminate(name: &str, child: &mut tokio::process::Child, pid: u32, grace: Duration) {
    if let Ok(pid) = i32::try_from(pid)
        && let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM)
    {
        warn!(process = %name, error = %e, "cannot signal");
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => info!(process = %name, "stopped"),
        Err(_) => {
            warn!(process = %name, "did not stop in time: killed");
            let _ = child.kill().await;
        }
    }
}
