//! The donor agent: a sidecar of every MariaDB pod that streams a hot backup of its server
//! ([`super::wire`]) to a client proving it holds the key. One backup at a time (a second
//! client is told the donor is busy), every wait bounded: a client that does not answer the
//! challenge, or stops reading, is dropped and its backup killed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use rand::RngCore;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Error, io, mariabackup,
    wire::{self, Trailer},
};

/// How long a client may take to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take to leave: a client that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
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
    let busy = Arc::new(Semaphore::new(1));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(io("accept on", Path::new("donor socket")))?,
            () = &mut stop => return Ok(()),
        };
        let (donor, busy) = (donor.clone(), busy.clone());
        tokio::spawn(
            async move {
                if let Err(e) = session(stream, &donor, &busy).await {
                    warn!(error = %e, "re-seed session ended");
                }
            }
            .instrument(info_span!("seed", %peer)),
        );
    }
}

async fn session(mut stream: TcpStream, donor: &Donor, busy: &Semaphore) -> Result<(), Error> {
    let mut nonce = [0u8; wire::NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut mac = [0u8; wire::NONCE_LEN];
    let greeted = async {
        stream.write_all(wire::MAGIC).await?;
        stream.write_all(&nonce).await?;
        stream.read_exact(&mut mac).await.map(|_| ())
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
    if !wire::verify(&donor.key, &nonce, &mac) {
        warn!("refused a client without the key");
        return refuse(&mut stream, "not authorised").await;
    }
    let Ok(_permit) = busy.try_acquire() else {
        return refuse(&mut stream, "busy: a copy is being taken already").await;
    };
    // One backup at a time: one scratch directory, whatever a killed agent left there gone.
    let scratch = donor.work_dir.join("seed-donor");
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(io("create", &scratch))?;
    let result = stream_backup(&mut stream, donor, &scratch).await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    result
}

async fn refuse(stream: &mut TcpStream, why: &str) -> Result<(), Error> {
    wire::write_trailer(stream, &Trailer::Failed(why.into())).await?;
    Ok(())
}

async fn stream_backup(stream: &mut TcpStream, donor: &Donor, scratch: &Path) -> Result<(), Error> {
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
        let n = out.read(&mut buf).await.map_err(io("read", &log_path))?;
        if n == 0 {
            break;
        }
        // A client that stops reading is dropped, which kills the backup (kill_on_drop).
        tokio::time::timeout(WRITE_TIMEOUT, wire::write_frame(stream, &buf[..n]))
            .await
            .map_err(|_| Error::Timeout("the client reading the copy".into(), WRITE_TIMEOUT))??;
        sent += n as u64;
    }
    let ended = mariabackup::check("mariadb-backup --backup", child.wait().await, &log_path);
    let trailer = match &ended {
        Ok(()) => Trailer::Complete,
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
