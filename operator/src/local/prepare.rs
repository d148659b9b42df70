//! What the runner does before a process starts, and the checks it makes of one: the data
//! directory's secrets (generated on the first run, read back after), the ports checked free,
//! a database's data directory initialised, a port probed.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use tokio::process::Command;

use super::{
    plan::{DbProcess, Plan},
    runner::RunError,
};
use crate::build::secrets::{DbCredentials, TlsMaterial, TokenKey};

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
