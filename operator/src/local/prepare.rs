//! What the runner does before a process starts, and the checks it makes of one: the data
//! directory's secrets (generated on the first run, read back after), the ports checked free,
//! a database's data directory initialised, a port probed.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use chatcluster_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use chatcluster_types::identity::component;
use tracing::info;

use tokio::process::Command;

use super::{
    error::RunError,
    plan::{DbProcess, LOCAL_NAMESPACE, Plan},
};
use crate::{
    build::{
        self,
        secrets::{DbCredentials, TlsMaterial, TokenKey},
    },
    pki::{self, Ca, Issued},
};

pub(super) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RunError + 'a {
    move |source| RunError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Write then rename, so no reader sees half a file.
pub(super) fn write_atomically(path: &Path, text: &str) -> Result<(), RunError> {
    chatcluster_common::fs::write_atomically(path, text).map_err(io("cannot write", path))
}

pub(super) fn write_private(path: &Path, text: &str) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    write_atomically(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot protect", path))
}

/// The credentials of this data directory: generated on first run, then read back (the
/// servers hold these passwords).
pub(super) fn secrets(plan: &Plan) -> Result<DbCredentials, RunError> {
    let f = &plan.files;
    let credentials = if f.credentials.exists() {
        let text =
            std::fs::read_to_string(&f.credentials).map_err(io("cannot read", &f.credentials))?;
        serde_json::from_str(&text).map_err(|e| RunError::Invalid {
            path: f.credentials.clone(),
            message: e.to_string(),
        })?
    } else {
        let c = DbCredentials::generate();
        let text = serde_json::to_string_pretty(&c).map_err(|e| RunError::Invalid {
            path: f.credentials.clone(),
            message: e.to_string(),
        })?;
        write_private(&f.credentials, &text)?;
        c
    };
    if !f.token_private.exists() {
        let key = TokenKey::generate()?;
        write_private(&f.token_private, key.private_pem())?;
        write_atomically(&f.token_public, key.public_pem())?;
    }
    if !f.tls_cert.exists() {
        let tls = TlsMaterial::self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        write_private(&f.tls_key, tls.key_pem())?;
        write_atomically(&f.tls_cert, tls.cert_pem())?;
    }
    Ok(credentials)
}

/// The internal CA (made on the first run, read back after) and every certificate of the
/// plan that is missing or due. Run at start and periodically: a renewal is published as a
/// Secret volume is (below), so chat-xds and Envoy pick it up without a restart.
///
/// `start`: the processes are not running yet, so a missing CA may be made. Later a missing
/// CA is an error: the running processes trust the one they read at start, and a new one
/// would sign certificates none of them accepts.
/// Returns every certificate's dates, the CA's first.
pub(super) fn certificates(
    plan: &Plan,
    now: SystemTime,
    start: bool,
) -> Result<Vec<pki::Dates>, RunError> {
    if plan.certificates.is_empty() {
        return Ok(Vec::new());
    }
    let f = &plan.files;
    std::fs::create_dir_all(&f.pki).map_err(io("cannot create", &f.pki))?;
    let ca = if f.ca_cert().exists() {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(io("cannot read", path));
        Ca::from_pem(&read(&f.ca_cert())?, &read(&f.ca_key())?)?
    } else if !start {
        return Err(RunError::Invalid {
            path: f.ca_cert(),
            message: "the internal CA is gone: stop and start the cluster to make a new one".into(),
        });
    } else {
        let ca = Ca::generate(LOCAL_NAMESPACE, &plan.name, now)?;
        write_private(&f.ca_key(), ca.key_pem())?;
        write_atomically(&f.ca_cert(), ca.cert_pem())?;
        ca
    };
    let mut dates: Vec<pki::Dates> = ca.dates().into_iter().collect();
    for leaf in &plan.certificates {
        let dir = f.tls_dir(&leaf.identity.component);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let held = match (read(CERT_FILE), read(KEY_FILE), read(CA_FILE)) {
            (Some(cert_pem), Some(key_pem), Some(ca_pem)) => Some(Issued {
                cert_pem,
                key_pem,
                ca_pem,
            }),
            _ => None,
        };
        let held = match (pki::renewal(held.as_ref(), &ca, leaf, now), held) {
            (None, Some(held)) => held,
            (why, _) => {
                let issued = ca.issue(leaf, now)?;
                publish(&dir, &issued)?;
                info!(component = %leaf.identity.component, reason = ?why, "issued an internal certificate");
                issued
            }
        };
        dates.extend(pki::dates(leaf, &held));
    }
    let sds = build::internal_tls_sds(&f.tls_dir(component::INGRESS).display().to_string());
    let text = serde_yaml::to_string(&sds).map_err(|e| RunError::Invalid {
        path: f.envoy_internal_sds(),
        message: e.to_string(),
    })?;
    if std::fs::read_to_string(f.envoy_internal_sds())
        .ok()
        .as_deref()
        != Some(text.as_str())
    {
        write_atomically(&f.envoy_internal_sds(), &text)?;
    }
    Ok(dates)
}

/// Publish `issued` into `dir` the way the kubelet updates a Secret volume: the files in a
/// fresh `..<stamp>` directory, the `..data` link swapped to it in one rename, and
/// `tls.crt`, `tls.key`, `ca.crt` links through `..data`. A reader (Envoy watching `dir`,
/// chat-xds re-reading) sees the old pair or the new one, never one file of each.
fn publish(dir: &Path, issued: &Issued) -> Result<(), RunError> {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let stamp = format!(
        "..{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh).map_err(io("cannot create", &fresh))?;
    write_private(&fresh.join(KEY_FILE), &issued.key_pem)?;
    write_atomically(&fresh.join(CERT_FILE), &issued.cert_pem)?;
    write_atomically(&fresh.join(CA_FILE), &issued.ca_pem)?;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(io("cannot link", &tmp))?;
    std::fs::rename(&tmp, &data).map_err(io("cannot link", &data))?;
    for name in [CERT_FILE, KEY_FILE, CA_FILE] {
        let link = dir.join(name);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            symlink(Path::new("..data").join(name), &link).map_err(io("cannot link", &link))?;
        }
    }
    if let Some(old) = previous.filter(|p| p.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

pub(super) fn check_ports(plan: &Plan, ingress: &[u16]) -> Result<(), RunError> {
    let named = plan
        .ports()
        .into_iter()
        .map(|p| (LOOPBACK, p, "internal".to_string()))
        .chain(
            ingress
                .iter()
                .map(|&p| (ingress_address(plan), p, "ingress".to_string())),
        );
    for (address, port, what) in named {
        if std::net::TcpListener::bind((address, port)).is_err() {
            return Err(RunError::PortBusy { port, what });
        }
    }
    Ok(())
}

/// The address Envoy's client listeners bind.
pub(super) fn ingress_address(plan: &Plan) -> IpAddr {
    plan.xds_config.listen_address.unwrap_or(LOOPBACK)
}

pub(super) async fn install_db(plan: &Plan, db: &DbProcess) -> Result<(), RunError> {
    if db.data().join("mysql").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(db.tmp()).map_err(io("cannot create", &db.tmp()))?;
    let mut cmd = Command::new(&plan.binaries().install_db);
    cmd.args([
        "--no-defaults",
        "--skip-test-db",
        "--auth-root-authentication-method=socket",
    ])
    .arg(format!("--datadir={}", db.data().display()))
    .arg(format!("--tmpdir={}", db.tmp().display()))
    .env("TMPDIR", db.tmp());
    if nix::unistd::geteuid().is_root() {
        cmd.arg("--user=root");
    }
    let out = cmd.output().await.map_err(|e| RunError::InstallDb {
        server: db.name.clone(),
        message: format!("cannot run {}: {e}", plan.binaries().install_db.display()),
    })?;
    if !out.status.success() {
        // A half-initialised directory would be taken for a real one next time.
        let _ = std::fs::remove_dir_all(db.data());
        return Err(RunError::InstallDb {
            server: db.name.clone(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Where every process but Envoy's client listeners is reached.
pub(super) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Whether something accepts connections on `address`:`port` (within 300 ms).
pub(super) async fn port_open(address: IpAddr, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect((address, port))
        )
        .await,
        Ok(Ok(_))
    )
}
