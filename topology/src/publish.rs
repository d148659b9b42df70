//! Publishing the loop's conclusions where no Kubernetes API exists (laptop modes): the
//! primary's address in a file that chatd follows (`CHATD_DB_PRIMARY_FILE`).

use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tracing::warn;

use super::status::TopologyStatus;

/// Replace `path`'s content with `text` atomically (readers never see a partial file).
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Keep `path` holding the address of the primary while it takes writes, until the loop stops.
/// Only a ready primary is published: clients keep the old address (and fail over their
/// retries) rather than follow a server not yet writable.
pub async fn primary_file(mut status: watch::Receiver<TopologyStatus>, path: PathBuf) {
    let mut written = String::new();
    loop {
        let (ready, address) = {
            let s = status.borrow_and_update();
            (s.primary_ready, s.primary_address.clone())
        };
        if ready && address != written {
            match write_atomically(&path, &address).await {
                Ok(()) => written = address,
                Err(e) => warn!(path = %path.display(), error = %e, "cannot publish the primary"),
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
