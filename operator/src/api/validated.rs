//! The form of a ChatCluster the builders read: one whose spec passed [`validate`]. It can be
//! made only by checking, so no builder can be handed an unchecked spec, and nothing after
//! validation checks again.

use kube::ResourceExt;

use super::{
    ChatCluster,
    spec::ChatClusterSpec,
    validate::{SpecError, validate},
};

/// A ChatCluster the operator will not act on, with every problem, each naming its field: the
/// one refusal the reconciler, `render`, local mode and file reading share.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid ChatCluster: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Refused(pub Vec<SpecError>);

/// A ChatCluster's name and its checked spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCluster {
    name: String,
    spec: ChatClusterSpec,
}

impl ValidatedCluster {
    /// Cluster `name` with `spec`, when the spec passes every check; every problem otherwise.
    pub fn new(name: impl Into<String>, spec: &ChatClusterSpec) -> Result<Self, Refused> {
        let problems = validate(spec);
        if problems.is_empty() {
            Ok(Self {
                name: name.into(),
                spec: spec.clone(),
            })
        } else {
            Err(Refused(problems))
        }
    }

    /// `resource` checked, as read from a file (which may lack a name, unlike one read from
    /// the API).
    pub fn of(resource: &ChatCluster) -> Result<Self, Refused> {
        if resource.metadata.name.is_none() {
            return Err(Refused(vec![SpecError {
                field: "metadata.name".into(),
                message: "a ChatCluster needs a name".into(),
            }]));
        }
        Self::new(resource.name_any(), &resource.spec)
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec, checked.
    pub fn spec(&self) -> &ChatClusterSpec {
        &self.spec
    }
}
