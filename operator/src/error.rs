//! The operator's error: what its Kubernetes-side entry points — a reconcile, `render`, the
//! leader election — fail with, as controller-rs keeps one `Error` at its crate's root. The
//! steps below it keep their own typed errors (`BuildError`, `PkiError`, `Refused`),
//! which convert into this with `?`; it names no module above them, so no module cycle runs
//! through it. Local mode, a driver of its own, has its own errors (`local::PlanError`,
//! `local::RunError`).

use crate::{
    api::Refused,
    build::{BuildError, secrets},
};

/// Why an operation of the operator failed. The reconciler's error policy requeues a failed
/// reconcile with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ChatCluster is invalid: every problem, naming its field.
    #[error(transparent)]
    Invalid(#[from] Refused),
    /// The desired state could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A generated Secret could not be generated.
    #[error(transparent)]
    Generate(#[from] crate::pki::PkiError),
    /// A built object is not a valid Kubernetes object.
    #[error("invalid object {0}")]
    InvalidObject(String),
    /// The API server refused or failed a request.
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        /// What was attempted.
        verb: &'static str,
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The client's error (boxed: it is the largest of them all).
        #[source]
        source: Box<kube::Error>,
    },
    /// The database topology loop could not be started.
    #[error("database topology: {0}")]
    Topology(String),
    /// A generated Secret exists but holds `chat-operator render`'s placeholders: it was
    /// applied from rendered output. Its values are public, so nothing may use it.
    #[error(
        "Secret {0} holds the placeholders of `chat-operator render` (annotation {ann}), not generated values: delete it and the operator generates it",
        ann = secrets::PLACEHOLDER_ANNOTATION
    )]
    PlaceholderSecret(String),
    /// A Secret the operator generates exists but is not this cluster's (no controller
    /// reference to it): someone else chose its values, so nothing may use it.
    #[error(
        "Secret {0} exists but this ChatCluster did not make it: delete it and the operator generates it"
    )]
    ForeignSecret(String),
    /// `render --namespace` names another namespace than the file (`kubectl` refuses the same).
    #[error("the file's namespace is {file}, and --namespace says {given}")]
    NamespaceMismatch {
        /// `metadata.namespace`.
        file: String,
        /// `--namespace`.
        given: String,
    },
    /// Not a namespace name.
    #[error("namespace {0:?} is not a DNS label (lower-case letters, digits, '-', at most 63)")]
    BadNamespace(String),
    /// Another replica holds the leader Lease now, or it could not be renewed in time.
    #[error("lost the leader Lease {0}")]
    LostLease(String),
}

/// The operator's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Build(_) => "build",
            Self::Generate(_) => "generate",
            Self::InvalidObject(_) => "invalid_object",
            Self::Kube { .. } => "kube",
            Self::Topology(_) => "topology",
            Self::PlaceholderSecret(_) => "placeholder_secret",
            Self::ForeignSecret(_) => "foreign_secret",
            Self::NamespaceMismatch { .. } => "namespace_mismatch",
            Self::BadNamespace(_) => "bad_namespace",
            Self::LostLease(_) => "lost_lease",
        }
    }

    /// A mapper from the client's error for `verb` on `kind` `name`.
    pub(crate) fn kube(
        verb: &'static str,
        kind: &str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> Self {
        let (kind, name) = (kind.to_string(), name.to_string());
        move |source| Self::Kube {
            verb,
            kind,
            name,
            source: Box::new(source),
        }
    }
}
