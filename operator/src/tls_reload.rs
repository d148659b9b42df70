//! A database server reads its certificate only at start, or when told to. This agent runs
//! beside every server — a sidecar in Kubernetes, a task of the runner in local mode — and
//! tells its server to reload whenever the files change.
//!
//! It reaches the server on loopback, over TLS that it does not verify: nothing else can be
//! on the pod's (or the machine's) loopback at the server's port, so there is nothing to
//! verify against, and a server whose certificate has already expired (its operator was
//! down past the renewal) still takes the renewed one — which the topology loop, verifying
//! every server by its certificate, could not tell it to do. Not the Unix socket: there,
//! MySQL's `caching_sha2_password` wants the password in the clear when its cache is cold
//! (after every restart), and the driver sends it in the clear only over TLS.
//!
//! An idle agent reads three small files a period and sends the server nothing.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use sqlx::{
    Connection, Executor, MySqlConnection,
    mysql::{MySqlConnectOptions, MySqlSslMode},
};
use tracing::{debug, info, warn};

use chatcluster_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};

use crate::topology::dialect::Dialect;

/// How often the agent reads the files. Kubernetes takes up to a minute or so to bring a
/// renewed Secret into a pod, so this adds little to a renewal's delay.
pub const PERIOD: Duration = Duration::from_secs(5);
/// Longest wait for the server: a frozen one must not stall the agent.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server that refuses connections counts as starting (not worth a warning).
const STARTING: Duration = Duration::from_secs(120);

/// Why a look at the files did not end with the server serving them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (a Secret volume mid-update, a missing file).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or refused the login.
    #[error("cannot log in to the server at {address}: {source}")]
    Connect {
        /// Where it listens.
        address: SocketAddr,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The server refused the files (say a key that is not the certificate's); it goes on
    /// serving the ones it had.
    #[error("the server refused to reload its certificate: {0}")]
    Reload(#[source] sqlx::Error),
    /// The server did not answer in time.
    #[error("the server did not answer within {TIMEOUT:?}")]
    Timeout,
}

/// One server's certificate files and how to reach it.
pub struct Reloader {
    /// Directory holding the certificate, its key and the CA.
    pub dir: PathBuf,
    /// The server's port on loopback.
    pub port: u16,
    /// An administrative user and its password.
    pub user: String,
    /// The user's password.
    pub password: String,
    /// The engine's statements.
    pub dialect: &'static Dialect,
    /// The files' contents when the server last reloaded them.
    loaded: Option<Vec<u8>>,
}

impl Reloader {
    /// An agent that has told the server nothing yet: its first look reloads, in case the
    /// files changed between the server's start and the agent's.
    pub fn new(
        dir: PathBuf,
        port: u16,
        user: String,
        password: String,
        dialect: &'static Dialect,
    ) -> Self {
        Self {
            dir,
            port,
            user,
            password,
            dialect,
            loaded: None,
        }
    }

    /// Read the files and, if they differ from what the server reloaded last, tell it to
    /// reload them. `Ok(true)`: it did.
    pub async fn check(&mut self) -> Result<bool, Error> {
        let mut files = Vec::new();
        for name in [CERT_FILE, KEY_FILE, CA_FILE] {
            let path = self.dir.join(name);
            match tokio::fs::read(&path).await {
                Ok(bytes) => files.extend(bytes),
                Err(source) => return Err(Error::Read { path, source }),
            }
        }
        if self.loaded.as_ref() == Some(&files) {
            return Ok(false);
        }
        tokio::time::timeout(TIMEOUT, self.reload())
            .await
            .map_err(|_| Error::Timeout)??;
        self.loaded = Some(files);
        Ok(true)
    }

    async fn reload(&self) -> Result<(), Error> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let options = MySqlConnectOptions::new()
            .host(&address.ip().to_string())
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .ssl_mode(MySqlSslMode::Required);
        let mut connection = MySqlConnection::connect_with(&options)
            .await
            .map_err(|source| Error::Connect { address, source })?;
        let outcome = connection
            .execute(self.dialect.reload_tls)
            .await
            .map(drop)
            .map_err(Error::Reload);
        // The reload stands whether or not the goodbye arrives.
        let _ = connection.close().await;
        outcome
    }
}

/// Whether `e` only says the server is not listening yet.
fn starting(e: &Error) -> bool {
    matches!(
        e,
        Error::Connect {
            source: sqlx::Error::Io(_),
            ..
        }
    )
}

/// Look every [`PERIOD`] until `stop` resolves. A failure is logged once until a look
/// succeeds again; a server that refuses connections in the agent's first minutes is only
/// starting, but a refused login is said at once.
pub async fn run(mut reloader: Reloader, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let began = Instant::now();
    let (mut reached, mut failing) = (false, false);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => match reloader.check().await {
                Ok(reloaded) => {
                    // The first reload only confirms what the server read at its start.
                    if reloaded && reached {
                        info!(dir = %reloader.dir.display(), "the server reloaded its certificate");
                    }
                    (reached, failing) = (true, false);
                }
                Err(e) if !reached && starting(&e) && began.elapsed() < STARTING => {
                    debug!(error = %e, "waiting for the server");
                }
                Err(e) if !failing => {
                    warn!(error = %e, "cannot reload the server's certificate");
                    failing = true;
                }
                Err(e) => debug!(error = %e, "cannot reload the server's certificate, still"),
            },
        }
    }
}
