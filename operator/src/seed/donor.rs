//! The donor agent: a sidecar of every MariaDB pod that streams a hot backup of its server
//! ([`super::wire`]) to a client proving it holds the key. Every cost is bounded: at most
//! [`MAX_GREETINGS`] clients in the challenge at once (more are closed at once), one backup at
//! a time (a second client is told the donor is busy), and every wait has a limit — a client
//! that does not answer, or stops reading, is dropped and its backup killed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Error, io, mariabackup,
    wire::{self, Session, Trailer},
};

/// How long a client may take to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients in the challenge at once; a flood of connections costs no more than this.
pub const MAX_GREETINGS: usize = 8;
/// How long one frame may take to leave: a client that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long mariadb-backup may stay silent (it waits at most a minute for its locks).
const BACKUP_SILENCE: Duration = Duration::from_secs(600);
/// Lines of mariadb-backup's log a failure trailer carries.
const LOG_TAIL_LINES: usize = 20;

/// What the agent backs up, and who may ask.
#[derive(Debug, Clone)]
pub struct Donor {
    /// The key clients prove they hold (the administrative password).
    pub key: Vec<u8>,
    /// mariadb-backup's user.
    pub user: String,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// The server's Unix socket.
    pub socket: PathBuf,
    /// The server's whole configuration, if mariadb-backup should read only that; otherwise
    /// it reads the server's usual option files (the upstream image's `/etc/mysql`).
    pub config: Option<PathBuf>,
    /// Where each backup gets a scratch directory (mariadb-backup's files, its log, the
    /// options file with the password), removed when it ends.
    pub work_dir: PathBuf,
}

/// Serve backups on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    donor: Donor,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let donor = Arc::new(donor);
    let greeting = Arc::new(Semaphore::new(MAX_GREETINGS));
    let busy = Arc::new(Semaphore::new(1));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, a connection reset while queued: the next one
                // may well work, and the agent must outlive a flood.
                warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = greeting.clone().try_acquire_owned() else {
            debug!(%peer, "too many clients in the challenge: closed");
            continue;
        };
        let (donor, busy) = (donor.clone(), busy.clone());
        tokio::spawn(
            async move {
                if let Err(e) = session(stream, &donor, &busy, permit).await {
                    warn!(error = %e, "re-seed session ended");
                }
            }
            .instrument(info_span!("seed", %peer)),
        );
    }
}

async fn session(
    mut stream: TcpStream,
    donor: &Donor,
    busy: &Semaphore,
    greeting: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), Error> {
    let donor_nonce = wire::nonce();
    let mut answer = [0u8; wire::MAC_LEN + wire::NONCE_LEN];
    let greeted = async {
        stream.write_all(wire::MAGIC).await?;
        stream.write_all(&donor_nonce).await?;
        stream.read_exact(&mut answer).await.map(|_| ())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, greeted).await {
        Ok(Ok(())) => {}
        // The kubelet's TCP probe connects and leaves: nothing worth a warning.
        Ok(Err(e)) => {
            debug!(error = %e, "a client left before answering");
            return Ok(());
        }
        Err(_) => return Err(Error::Timeout("the client".into(), HANDSHAKE_TIMEOUT)),
    }
    drop(greeting);
    let (proof, client_nonce) = answer.split_at(wire::MAC_LEN);
    if !wire::verify_client(&donor.key, &donor_nonce, proof) {
        warn!("refused a client without the key");
        stream
            .write_all(&[0u8; wire::MAC_LEN])
            .await
            .map_err(wire::Error::Io)?;
        return refuse(&mut stream, "not authorised").await;
    }
    stream
        .write_all(&wire::donor_proof(&donor.key, client_nonce, &donor_nonce)?)
        .await
        .map_err(wire::Error::Io)?;
    let Ok(_permit) = busy.try_acquire() else {
        return refuse(&mut stream, "busy: a copy is being taken already").await;
    };
    let mac = Session::new(&donor.key, &donor_nonce, client_nonce)?;
    // One backup at a time: one scratch directory, whatever a killed agent left there gone.
    let scratch = donor.work_dir.join("seed-donor");
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(io("create", &scratch))?;
    let result = stream_backup(&mut stream, donor, &scratch, mac).await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    result
}

async fn refuse(stream: &mut TcpStream, why: &str) -> Result<(), Error> {
    wire::write_trailer(stream, &Trailer::Failed(why.into())).await?;
    Ok(())
}

async fn stream_backup(
    stream: &mut TcpStream,
    donor: &Donor,
    scratch: &Path,
    mut mac: Session,
) -> Result<(), Error> {
    let password = String::from_utf8_lossy(&donor.key).into_owned();
    let options =
        mariabackup::options_file(scratch, donor.config.as_deref(), &donor.user, &password).await?;
    let backup_dir = scratch.join("backup");
    tokio::fs::create_dir_all(&backup_dir)
        .await
        .map_err(io("create", &backup_dir))?;
    let log_path = scratch.join("backup.log");
    let log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
    info!("backup started");
    let mut child = mariabackup::start_backup(
        &mariabackup::Source {
            options: &options,
            options_complete: donor.config.is_some(),
            data_dir: &donor.data_dir,
            socket: &donor.socket,
            scratch: &backup_dir,
        },
        Stdio::from(log),
    )?;
    let Some(mut out) = child.stdout.take() else {
        return refuse(stream, "mariadb-backup gave no output").await;
    };
    let mut buf = vec![0u8; 256 << 10];
    let mut sent: u64 = 0;
    loop {
        let n = tokio::time::timeout(BACKUP_SILENCE, out.read(&mut buf))
            .await
            .map_err(|_| Error::Timeout("mariadb-backup".into(), BACKUP_SILENCE))?
            .map_err(io("read", &log_path))?;
        if n == 0 {
            break;
        }
        // A client that stops reading is dropped, which kills the backup (kill_on_drop).
        let tag = mac.seal(&buf[..n])?;
        tokio::time::timeout(WRITE_TIMEOUT, wire::write_frame(stream, &buf[..n], &tag))
            .await
            .map_err(|_| Error::Timeout("the client reading the copy".into(), WRITE_TIMEOUT))??;
        sent += n as u64;
    }
    let ended = mariabackup::check("mariadb-backup --backup", child.wait().await, &log_path);
    let trailer = match &ended {
        Ok(()) => Trailer::Complete(mac.end()?),
        Err(e) => Trailer::Failed(format!("{e}: {}", tail(&log_path).await)),
    };
    info!(bytes = sent, complete = ended.is_ok(), "backup ended");
    wire::write_trailer(stream, &trailer).await?;
    ended
}

/// The last lines of a log, for a failure message the receiving side can show.
async fn tail(path: &Path) -> String {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
