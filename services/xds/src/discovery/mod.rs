//! Where endpoints (and the certificate) come from: in Kubernetes, EndpointSlices and a Secret
//! ([`kubernetes`]); in the laptop modes, a file, watched for changes, where a malformed file
//! is refused with a clear error and the last good state is kept. Both publish [`Discovered`].

pub mod kubernetes;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::model::{Certificate, Endpoint};

/// What a discovery source reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    /// Endpoints by service name.
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// The serving certificate.
    pub certificate: Option<Certificate>,
}

/// A place endpoints (and the certificate) come from. A source runs until it cannot go on,
/// keeping `tx` at what it last saw; the pipeline turns that into snapshots.
pub trait Source: Send + 'static {
    /// Publish into `tx` until done.
    fn run(self, tx: watch::Sender<Discovered>) -> impl std::future::Future<Output = ()> + Send;
}

/// The laptop modes' source: a YAML file (see [`parse_file`]), followed as it changes.
pub struct FileSource {
    /// The file.
    pub path: PathBuf,
    /// Fallback re-read interval when no change notification arrives.
    pub every: Duration,
}

impl Source for FileSource {
    async fn run(self, tx: watch::Sender<Discovered>) {
        watch_file(self.path, self.every, tx).await;
    }
}

/// The static file's format.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticFile {
    #[serde(default)]
    services: BTreeMap<String, Vec<Endpoint>>,
    #[serde(default)]
    certificate: Option<CertificateFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CertificateFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("{path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parse the static endpoints file (and read the certificate files it names).
pub fn parse_file(path: &Path) -> Result<Discovered, FileError> {
    parse_naming_files(path).0
}

/// Every endpoint has an address and a port.
fn check_endpoints(services: &BTreeMap<String, Vec<Endpoint>>) -> Result<(), String> {
    for (service, endpoints) in services {
        for e in endpoints {
            if e.address.is_empty() || e.port == 0 {
                return Err(format!(
                    "service {service}: endpoint {e:?} needs an address and a port"
                ));
            }
        }
    }
    Ok(())
}

/// [`parse_file`], and the certificate files the file names, also when reading them failed
/// (they may appear later, and must then be noticed).
fn parse_naming_files(path: &Path) -> (Result<Discovered, FileError>, Option<CertificateFiles>) {
    let invalid = |message: String| FileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let parsed: StaticFile = match read(path)
        .and_then(|text| serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string())))
    {
        Ok(parsed) => parsed,
        Err(e) => return (Err(e), None),
    };
    let discovered = check_endpoints(&parsed.services)
        .map_err(invalid)
        .and_then(|()| {
            let certificate = match &parsed.certificate {
                None => None,
                Some(files) => Some(Certificate {
                    cert_pem: read(&files.cert_file)?,
                    key_pem: read(&files.key_file)?,
                }),
            };
            Ok(Discovered {
                endpoints: parsed.services,
                certificate,
            })
        });
    let files = parsed.certificate;
    (discovered, files)
}

/// Wakes when something in `path`'s directory changes (inotify: writes, atomic renames and
/// Kubernetes' ConfigMap symlink swaps) and at least every `every` as a fallback.
///
/// Only changes wake it: notify also reports opening and closing a file, so a watcher that
/// woke on those would wake itself by reading the file, as would every other reader of the
/// directory (chatd reads the primary's address there every second).
struct Wake {
    _watcher: Option<notify::RecommendedWatcher>,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
    tick: tokio::time::Interval,
}

/// Whether an event can mean a file's content changed.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

impl Wake {
    fn new(path: &Path, every: Duration) -> Self {
        use notify::Watcher;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // An error may hide a change: look.
            if event.as_ref().map_or(true, |e| is_change(&e.kind)) {
                // A closed receiver means the watch loop ended: nothing to wake.
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "no file notifications, polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            _watcher: watcher,
            events,
            tick,
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.events.recv() => {
                // Take the whole burst (write, rename, chmod) as one wake-up.
                while self.events.try_recv().is_ok() {}
            }
            _ = self.tick.tick() => {}
        }
    }
}

/// What says a file changed without reading it: modification time, size and inode (a
/// renamed-over or re-linked file has a new one even within the same timestamp).
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The stamps of the endpoints file and of the certificate files it names: the certificate
/// may be rotated in another directory, without the endpoints file changing.
fn stamps(
    path: &Path,
    certificate: Option<&CertificateFiles>,
) -> Vec<Option<(SystemTime, u64, u64)>> {
    let mut out = vec![stamp(path)];
    if let Some(files) = certificate {
        out.push(stamp(&files.cert_file));
        out.push(stamp(&files.key_file));
    }
    out
}

/// Watch the static file, publishing every valid version of it. Nothing is read unless a
/// stamp of the file or of the certificate files changed, whatever woke the loop.
pub async fn watch_file(path: PathBuf, every: Duration, tx: watch::Sender<Discovered>) {
    // Nothing seen yet: the first wake-up (at once) reads the file.
    let mut certificate = None;
    let mut last = Vec::new();
    let mut wake = Wake::new(&path, every);
    loop {
        wake.next().await;
        let now = stamps(&path, certificate.as_ref());
        if now == last {
            continue;
        }
        let (discovered, files) = parse_naming_files(&path);
        // Stamped whether they could be read or not: one that appears later is noticed.
        certificate = files;
        match discovered {
            Ok(discovered) => {
                if tx.send_if_modified(|current| {
                    let changed = *current != discovered;
                    if changed {
                        *current = discovered;
                    }
                    changed
                }) {
                    info!(path = %path.display(), "endpoints file loaded");
                }
            }
            Err(e) => warn!(error = %e, "keeping the last good endpoints"),
        }
        // Stamped before the read, so a change during it is read at the next wake-up (and
        // when the file now names other certificate files, they are stamped then).
        last = now;
    }
}

/// Watch a YAML file of type `T` (the operator's configuration), publishing valid versions.
pub async fn watch_yaml<T>(path: PathBuf, every: Duration, tx: watch::Sender<T>)
where
    T: for<'de> Deserialize<'de> + PartialEq + Send + Sync + 'static,
{
    let mut last_stamp = stamp(&path);
    let mut wake = Wake::new(&path, every);
    loop {
        wake.next().await;
        let now = stamp(&path);
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        match read(&path).and_then(|text| {
            serde_yaml::from_str::<T>(&text).map_err(|e| FileError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })
        }) {
            Ok(value) => {
                info!(path = %path.display(), "configuration reloaded");
                tx.send_if_modified(|current| {
                    let changed = *current != value;
                    if changed {
                        *current = value;
                    }
                    changed
                });
            }
            Err(e) => warn!(error = %e, "keeping the last good configuration"),
        }
    }
}
