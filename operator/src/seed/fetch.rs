//! The receiving end, run by the re-seed Job on the replica's node with the replica's volume
//! mounted: the donor's stream is unpacked into a staging directory inside that volume, its
//! MAC checked, the copy prepared, flushed to disk and marked ready with its id and GTID
//! position (which the Job also leaves as its termination message, for the operator). The
//! replica keeps running on its own data the whole time; [`super::swap`] puts the copy in
//! place when the operator restarts the pod and says so.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::info;

use super::{
    Error, STAGING_DIR, io, mariabackup,
    wire::{self, Frame, Trailer},
};

/// How long connecting to the donor may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the donor may stay silent (mariadb-backup can wait a while for its locks).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the staging directory of `data_dir` is.
pub fn staging(data_dir: &Path) -> PathBuf {
    data_dir.join(STAGING_DIR)
}

/// The file marking a complete, prepared copy: `<copy id> <GTID position>`.
pub fn ready_file(data_dir: &Path) -> PathBuf {
    staging(data_dir).join("ready")
}

/// The unpacked copy.
pub fn new_dir(data_dir: &Path) -> PathBuf {
    staging(data_dir).join("new")
}

/// The swap's progress (see [`super::swap`]).
pub fn phase_file(data_dir: &Path) -> PathBuf {
    staging(data_dir).join("phase")
}

/// A copy's id and position, as `ready` and the termination messages spell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Who asked for it (the operator names each attempt).
    pub id: String,
    /// The GTID position it is consistent with (empty: the donor had written nothing).
    pub gtids: String,
}

impl Ready {
    /// `<id> <gtids>`.
    pub fn to_line(&self) -> String {
        format!("{} {}", self.id, self.gtids)
    }

    /// The fetch's termination message: `copy <id> <gtids>`.
    pub fn message(&self) -> String {
        format!("copy {}", self.to_line())
    }

    /// The copy a fetch's termination message names.
    pub fn from_message(message: &str) -> Option<Self> {
        Self::parse(message.trim().strip_prefix("copy ")?)
    }

    /// The inverse of [`to_line`](Self::to_line).
    pub fn parse(line: &str) -> Option<Self> {
        let (id, gtids) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        (!id.is_empty()).then(|| Self {
            id: id.to_string(),
            gtids: gtids.trim().to_string(),
        })
    }
}

/// What to fetch, and where to.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The donor agent's address (`host:port`).
    pub from: String,
    /// The key to prove (the administrative password).
    pub key: Vec<u8>,
    /// The replica's data directory (its volume).
    pub data_dir: PathBuf,
    /// This attempt's id.
    pub copy_id: String,
}

/// Fetch, check, unpack, prepare and flush a copy into the staging directory, then mark it
/// ready. On failure nothing of the copy is left, and the replica's own data is never touched.
pub async fn fetch(f: &Fetch) -> Result<Ready, Error> {
    let staging = staging(&f.data_dir);
    let Some(_lock) = super::try_lock(&f.data_dir)? else {
        return Err(busy(&staging, "a swap or another fetch holds it"));
    };
    if super::swap::clear_finished(&f.data_dir)? {
        return Err(busy(&staging, "a swap is in progress there"));
    }
    let new = new_dir(&f.data_dir);
    // An older ready copy goes first, durably: it must never be taken for this one.
    remove_ready(&f.data_dir)?;
    let _ = tokio::fs::remove_dir_all(&new).await;
    tokio::fs::create_dir_all(&new)
        .await
        .map_err(io("create", &new))?;
    let result = unpack_and_prepare(f, &staging, &new).await;
    if result.is_err() {
        discard(&f.data_dir).await;
    }
    result
}

/// Remove what a fetch that did not finish left (also when the Job is stopped).
pub async fn discard(data_dir: &Path) {
    let _ = tokio::fs::remove_dir_all(new_dir(data_dir)).await;
}

fn busy(staging: &Path, why: &str) -> Error {
    Error::Io {
        what: "stage a copy in",
        path: staging.to_path_buf(),
        source: std::io::Error::other(why.to_string()),
    }
}

fn remove_ready(data_dir: &Path) -> Result<(), Error> {
    super::swap::remove_file(&ready_file(data_dir))?;
    if staging(data_dir).is_dir() {
        super::swap::sync_dir(&staging(data_dir))?;
    }
    Ok(())
}

async fn unpack_and_prepare(f: &Fetch, staging: &Path, new: &Path) -> Result<Ready, Error> {
    let log_path = staging.join("seed.log");
    let log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&f.from))
        .await
        .map_err(|_| Error::Timeout(f.from.clone(), CONNECT_TIMEOUT))?
        .map_err(|e| Error::Wire(wire::Error::Io(e)))?;
    let mut mac = tokio::time::timeout(CONNECT_TIMEOUT, wire::authenticate(&mut stream, &f.key))
        .await
        .map_err(|_| Error::Timeout(f.from.clone(), CONNECT_TIMEOUT))??;
    let mut unpack = mariabackup::start_unpack(new, Stdio::piped(), Stdio::from(log))?;
    let Some(mut input) = unpack.stdin.take() else {
        return Err(Error::Io {
            what: "write to mbstream for",
            path: new.to_path_buf(),
            source: std::io::Error::other("no stdin"),
        });
    };
    let mut received: u64 = 0;
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, wire::read_frame(&mut stream))
            .await
            .map_err(|_| Error::Timeout(format!("the donor {}", f.from), READ_TIMEOUT))??;
        match frame {
            Frame::Data(bytes, tag) => {
                if !mac.open(&bytes, &tag) {
                    return Err(wire::Error::Altered.into());
                }
                input
                    .write_all(&bytes)
                    .await
                    .map_err(io("write to mbstream for", new))?;
                received += bytes.len() as u64;
            }
            Frame::End(Trailer::Complete(tag)) => {
                if !mac.check_end(&tag) {
                    return Err(wire::Error::Altered.into());
                }
                break;
            }
            Frame::End(Trailer::Failed(why)) => return Err(wire::Error::Failed(why).into()),
        }
    }
    drop(input);
    mariabackup::check("mbstream -x", unpack.wait().await, &log_path)?;
    info!(bytes = received, "copy received");
    let gtids = mariabackup::prepare(new, &log_path).await?;
    super::sync_file_system(new)?;
    let ready = Ready {
        id: f.copy_id.clone(),
        gtids,
    };
    write_durably(&ready_file(&f.data_dir), ready.to_line().as_bytes()).await?;
    info!(id = %ready.id, gtids = %ready.gtids, "copy prepared and ready");
    Ok(ready)
}

/// Write `path` so that it either holds `data` or does not exist, after a crash too.
async fn write_durably(path: &Path, data: &[u8]) -> Result<(), Error> {
    let path = path.to_path_buf();
    let data = data.to_vec();
    let at = path.clone();
    tokio::task::spawn_blocking(move || super::swap::write_durably(&path, &data))
        .await
        .map_err(|e| Error::Io {
            what: "write",
            path: at,
            source: std::io::Error::other(e),
        })?
}
