//! Secrets the operator generates: database credentials, the token-signing key pair and, when
//! the spec names no certificate, a self-signed one for Envoy.
//!
//! They are created once and never re-applied, so a reconcile can never rotate a password the
//! database already holds. Generation (randomness) is kept apart from building the objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use rand::{Rng, distr::Alphanumeric};

use super::{ClusterRef, database, ingress, internal_tls, labels, names};
use crate::api::{ChatClusterSpec, SpecError};
use crate::pki::{self, Ca, PkiError};

/// Key of the database root password.
pub const DB_ROOT_PASSWORD_KEY: &str = "root-password";
/// Key of the password of the operator's admin user (topology, failover).
pub const DB_ADMIN_PASSWORD_KEY: &str = "admin-password";
/// Key of the replication user's password.
pub const DB_REPLICATION_PASSWORD_KEY: &str = "replication-password";
/// Key of the user chatd connects as.
pub const DB_APP_USER_KEY: &str = "app-user";
/// Key of chatd's database password.
pub const DB_APP_PASSWORD_KEY: &str = "app-password";
/// chatd's database user name.
pub const DB_APP_USER: &str = "chat";

/// Passwords of the database users (the local runner keeps them in its data directory).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DbCredentials {
    root: String,
    admin: String,
    replication: String,
    app: String,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbCredentials(<redacted>)")
    }
}

impl DbCredentials {
    /// Fresh random passwords (32 alphanumerics each, ~190 bits).
    pub fn generate() -> Self {
        let password = || {
            rand::rng()
                .sample_iter(&Alphanumeric)
                .take(32)
                .map(char::from)
                .collect::<String>()
        };
        Self {
            root: password(),
            admin: password(),
            replication: password(),
            app: password(),
        }
    }

    /// The topology loop's password ([`database::ADMIN_USER`]).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The replication user's password ([`database::REPL_USER`]).
    pub fn replication(&self) -> &str {
        &self.replication
    }

    /// chatd's password ([`DB_APP_USER`]).
    pub fn app(&self) -> &str {
        &self.app
    }
}

/// A PEM certificate and its private key.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: String,
    key_pem: String,
}

impl TlsMaterial {
    /// A self-signed certificate for `names`.
    pub fn self_signed(names: Vec<String>) -> Result<Self, PkiError> {
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(pki::generate("self-signed certificate"))?;
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Its private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// An Ed25519 key pair in PEM (PKCS#8 private key, SPKI public key).
#[derive(Clone)]
pub struct TokenKey {
    private_pem: String,
    public_pem: String,
}

impl TokenKey {
    /// A fresh Ed25519 key pair.
    pub fn generate() -> Result<Self, PkiError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(pki::generate("token signing key"))?;
        Ok(Self {
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
        })
    }

    /// The signing key (PKCS#8 PEM), for auth.
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The verifying key (SPKI PEM), for every service.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

fn secret(
    owner: &ClusterRef,
    name: String,
    component: &str,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: owner.meta(name, owner.labels(component, "chatcluster")),
        string_data: Some(data),
        // Immutable: nothing, not even a careless apply, can change what the servers hold.
        immutable: Some(true),
        ..Secret::default()
    }
}

/// The database credentials Secret.
pub fn db_secret(owner: &ClusterRef, creds: &DbCredentials) -> Secret {
    secret(
        owner,
        names::db_secret(owner),
        database::COMPONENT,
        BTreeMap::from([
            (DB_ROOT_PASSWORD_KEY.to_string(), creds.root.clone()),
            (DB_ADMIN_PASSWORD_KEY.to_string(), creds.admin.clone()),
            (
                DB_REPLICATION_PASSWORD_KEY.to_string(),
                creds.replication.clone(),
            ),
            (DB_APP_USER_KEY.to_string(), DB_APP_USER.to_string()),
            (DB_APP_PASSWORD_KEY.to_string(), creds.app.clone()),
        ]),
    )
}

/// The token-signing key Secret (`private.pem`, `public.pem`).
pub fn token_key_secret(owner: &ClusterRef, key: &TokenKey) -> Secret {
    secret(
        owner,
        names::token_key_secret(owner),
        "auth",
        BTreeMap::from([
            ("private.pem".to_string(), key.private_pem.clone()),
            ("public.pem".to_string(), key.public_pem.clone()),
        ]),
    )
}

/// DNS names the self-signed certificate covers: the Envoy Service under every name it
/// resolves by inside the cluster, and `localhost` for port-forwarding.
pub fn self_signed_names(owner: &ClusterRef) -> Vec<String> {
    let svc = names::envoy(owner);
    let ns = &owner.namespace;
    vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        "localhost".into(),
    ]
}

/// The type of a Secret holding a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// What is wrong with `secret`, the Secret `spec.ingress.tls.secretName` names (`None`: it
/// does not exist), if anything. chat-xds is granted read access to it and hands it to Envoy,
/// so it must be a certificate: naming any other Secret would let someone who may create a
/// ChatCluster, but not read Secrets, have its contents served.
pub fn tls_secret_problem(name: &str, secret: Option<&Secret>) -> Option<SpecError> {
    // A certificate the operator made — a cluster's internal identity (Envoy's, chat-xds's,
    // a chat service's) or its self-signed listener certificate — is that cluster's alone:
    // served as another cluster's public certificate, its key would let anyone who fetched
    // it pass for that component.
    let operators = secret.is_some_and(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::MANAGED_BY))
            .is_some_and(|m| m == labels::MANAGER)
            || s.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "ChatCluster")
    });
    let message = match secret.map(|s| s.type_.as_deref().unwrap_or("Opaque")) {
        None => format!("Secret {name} does not exist"),
        Some(_) if operators => format!(
            "Secret {name} is one the operator made for a ChatCluster: name a certificate of your own"
        ),
        Some(TLS_SECRET_TYPE) => return None,
        Some(other) => {
            format!(
                "Secret {name} is of type {other}: only a {TLS_SECRET_TYPE} Secret may be named"
            )
        }
    };
    Some(SpecError {
        field: "spec.ingress.tls.secretName".into(),
        message,
    })
}

/// The self-signed `kubernetes.io/tls` Secret.
pub fn tls_secret(owner: &ClusterRef, tls: &TlsMaterial) -> Secret {
    let mut s = secret(
        owner,
        names::self_signed_tls(owner),
        ingress::COMPONENT,
        BTreeMap::from([
            ("tls.crt".to_string(), tls.cert_pem.clone()),
            ("tls.key".to_string(), tls.key_pem.clone()),
        ]),
    );
    s.type_ = Some(TLS_SECRET_TYPE.into());
    s
}

/// Annotation on a Secret as `chat-operator render` shows it: its keys are the real ones, its
/// values stand-ins. The real values are generated in the cluster, once, and never leave it.
pub const PLACEHOLDER_ANNOTATION: &str = "chatcluster.io/render-placeholder";

/// The value every key of a rendered generated Secret carries.
pub const PLACEHOLDER: &str = "generated-in-the-cluster-at-first-reconcile";

/// `secret` marked with [`PLACEHOLDER_ANNOTATION`], as `render` shows what only the cluster
/// can generate.
pub fn placeholder(mut secret: Secret) -> Secret {
    secret.metadata.annotations = Some(BTreeMap::from([(
        PLACEHOLDER_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    secret
}

/// A Secret the cluster needs that the operator generates when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// [`db_secret`].
    DbCredentials,
    /// [`token_key_secret`].
    TokenKey,
    /// [`tls_secret`], only when the spec names no certificate.
    SelfSignedTls,
    /// [`internal_tls::ca_secret`], when internal TLS is on.
    InternalCa,
}

impl Generated {
    /// Name of the Secret.
    pub fn name(self, owner: &ClusterRef) -> String {
        match self {
            Self::DbCredentials => names::db_secret(owner),
            Self::TokenKey => names::token_key_secret(owner),
            Self::SelfSignedTls => names::self_signed_tls(owner),
            Self::InternalCa => names::internal_ca(owner),
        }
    }

    /// The Secret as `render` shows it: the same name, type and keys, placeholder values,
    /// marked with [`PLACEHOLDER_ANNOTATION`].
    pub fn placeholder(self, owner: &ClusterRef) -> Secret {
        let p = || PLACEHOLDER.to_string();
        let secret = match self {
            Self::DbCredentials => db_secret(
                owner,
                &DbCredentials {
                    root: p(),
                    admin: p(),
                    replication: p(),
                    app: p(),
                },
            ),
            Self::TokenKey => token_key_secret(
                owner,
                &TokenKey {
                    private_pem: p(),
                    public_pem: p(),
                },
            ),
            Self::SelfSignedTls => tls_secret(
                owner,
                &TlsMaterial {
                    cert_pem: p(),
                    key_pem: p(),
                },
            ),
            Self::InternalCa => internal_tls::ca_secret(owner, &Ca::placeholder(&p())),
        };
        placeholder(secret)
    }

    /// Generate fresh material and build the Secret.
    pub fn generate(self, owner: &ClusterRef) -> Result<Secret, PkiError> {
        Ok(match self {
            Self::DbCredentials => db_secret(owner, &DbCredentials::generate()),
            Self::TokenKey => token_key_secret(owner, &TokenKey::generate()?),
            Self::SelfSignedTls => {
                tls_secret(owner, &TlsMaterial::self_signed(self_signed_names(owner))?)
            }
            Self::InternalCa => internal_tls::ca_secret(
                owner,
                &Ca::generate(&owner.namespace, &owner.name, std::time::SystemTime::now())?,
            ),
        })
    }
}

/// The generated Secrets `spec` needs.
pub fn generated(spec: &ChatClusterSpec) -> Vec<Generated> {
    let mut out = vec![Generated::DbCredentials, Generated::TokenKey];
    if spec.ingress.tls.is_none() {
        out.push(Generated::SelfSignedTls);
    }
    if spec.internal_tls.enabled {
        out.push(Generated::InternalCa);
    }
    out
}
