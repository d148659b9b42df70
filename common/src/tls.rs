//! The internal plane's TLS, as its servers and clients use it: a directory holding a key
//! pair and the cluster's CA (the layout of a `kubernetes.io/tls` Secret with `ca.crt`, which
//! is also what the local runner writes), mutual authentication against that CA only, and the
//! peer's [`Identity`] read from its certificate.
//!
//! The key pair is re-read when its files change, so the operator's rotation reaches a
//! running process without a restart: new handshakes get the new certificate, connections
//! already open keep theirs. The CA is read once; it outlives every certificate it signs.

use std::{
    io,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use chatcluster_types::identity::Identity;
use futures::Stream;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{ResolvesClientCert, WebPkiServerVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The certificate chain in a TLS directory.
pub const CERT_FILE: &str = "tls.crt";
/// Its private key.
pub const KEY_FILE: &str = "tls.key";
/// The CA every peer's certificate must chain to.
pub const CA_FILE: &str = "ca.crt";

/// How often the key pair's files are looked at, at most: a handshake costs one `stat` per
/// file per interval, not per connection.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// A peer that has not finished its handshake by then is dropped: TLS 1.3 takes one round
/// trip, so this is generous, and short enough that silent connections free their slot fast.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once; more wait in the kernel's accept queue, so a flood of
/// half-open connections costs bounded memory and never stalls established ones. Only the
/// pods the NetworkPolicies admit can open one at all.
const MAX_HANDSHAKES: usize = 1024;

/// The TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path} holds no {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected in it.
        what: &'static str,
    },
    /// rustls refused the material (a key that does not match its certificate, …).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The CA cannot verify clients.
    #[error("the CA cannot verify peers: {0}")]
    Verifier(String),
    /// Our own certificate names no identity of ours.
    #[error("{0} names no ChatCluster identity")]
    NoIdentity(PathBuf),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A directory with [`CERT_FILE`], [`KEY_FILE`] and [`CA_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir(pub PathBuf);

impl TlsDir {
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The CA's file.
    pub fn ca_file(&self) -> PathBuf {
        self.file(CA_FILE)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, TlsError> {
        let path = self.file(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    }

    fn certificates(&self, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = self.read(name)?;
        // A malformed entry fails the whole file rather than being skipped unseen.
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem {
                path: self.file(name),
                what: "well-formed certificate",
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: self.file(name),
                what: "certificate",
            });
        }
        Ok(certs)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates(CA_FILE)? {
            roots.add(cert).map_err(|source| TlsError::Rustls {
                what: "the CA certificate",
                source,
            })?;
        }
        Ok(Arc::new(roots))
    }

    fn key_pair(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = self.certificates(CERT_FILE)?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.read(KEY_FILE)?).map_err(|_| TlsError::Pem {
                path: self.file(KEY_FILE),
                what: "private key",
            })?;
        CertifiedKey::from_der(chain, key, provider)
            .map(Arc::new)
            .map_err(|source| TlsError::Rustls {
                what: "the key pair",
                source,
            })
    }

    /// The identity our own certificate carries.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        let chain = self.certificates(CERT_FILE)?;
        chain
            .first()
            .and_then(|leaf| identity_of(leaf))
            .ok_or_else(|| TlsError::NoIdentity(self.file(CERT_FILE)))
    }

    /// What identifies the key pair's files as written: a rename (the kubelet's, the local
    /// runner's) changes the inode, an in-place rewrite the time or the size.
    fn modified(&self) -> Option<[Version; 2]> {
        use std::os::unix::fs::MetadataExt;
        let at = |name| {
            let m = std::fs::metadata(self.file(name)).ok()?;
            Some((m.modified().ok()?, m.ino(), m.len()))
        };
        Some([at(CERT_FILE)?, at(KEY_FILE)?])
    }

    /// A server that requires every client to present a certificate of this CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS 1.3",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Reloading::new(self.clone(), provider)?));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client that presents this certificate and trusts servers of this CA only.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS 1.3",
                source,
            })?
            .with_webpki_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Reloading::new(self.clone(), provider)?));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The key pair of a [`TlsDir`], re-read when its files change. A pair that fails to load
/// (half-written by a careless writer) keeps the previous one serving.
#[derive(Debug)]
struct Reloading {
    dir: TlsDir,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

/// One file's modification time, inode and size.
type Version = (SystemTime, u64, u64);

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: Option<[Version; 2]>,
    checked: Instant,
}

impl Reloading {
    fn new(dir: TlsDir, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let modified = dir.modified();
        let key = dir.key_pair(&provider)?;
        Ok(Self {
            dir,
            provider,
            state: Mutex::new(Loaded {
                key,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        // A panic elsewhere while holding the lock leaves a usable state: keep serving.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let modified = self.dir.modified();
            if modified != state.modified {
                match self.dir.key_pair(&self.provider) {
                    Ok(key) => {
                        tracing::info!(dir = %self.dir.0.display(), "internal certificate reloaded");
                        state.key = key;
                        state.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new internal certificate not loaded; the previous one serves")
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// When the first certificate of a PEM chain (the leaf) expires.
pub fn not_after(chain_pem: &str) -> Option<SystemTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The identity a certificate names in its URI subject-alternative names, if any is ours.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ours = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::parse(uri),
            _ => None,
        });
    // The operator writes exactly one; a certificate naming two is no one.
    match (ours.next(), ours.next()) {
        (Some(identity), None) => Some(identity),
        _ => None,
    }
}

/// The identity of the peer that presented `chain` (its first certificate).
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    chain.and_then(|c| c.first()).and_then(identity_of)
}

/// Connections accepted on `listener` whose TLS handshake (with `config`) succeeded.
/// Handshakes run concurrently, each bounded by a timeout, so a slow or silent peer holds up
/// no one; failed ones are dropped and logged at debug.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // The server stopped: release the port at once, not after one more connection.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Chat messages are small and streamed: no Nagle delay (tonic sets this only on
            // listeners it binds itself).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let (acceptor, sender) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// Connects a tonic channel over TLS with `config`, verifying the server as `server_name`
/// (its identity's [`Identity::server_name`]) whatever address it is reached at: a pod IP
/// from DNS or an EndpointSlice, a loopback port.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl Connector {
    /// A connector presenting `dir`'s certificate to servers named `server_name`.
    pub fn new(dir: &TlsDir, server_name: String) -> Result<Self, TlsError> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name)
            .map_err(|_| TlsError::Verifier("the server's identity is not a DNS name".into()))?;
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(dir.client_config()?),
            server_name,
        })
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, name) = (self.tls.clone(), self.server_name.clone());
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
