//! The form of a ChatCluster the builders read: one whose spec passed [`validate`]. It can be
//! made only by checking, so no builder can be handed an unchecked spec, and nothing after
//! validation checks again.

use super::{
    spec::ChatClusterSpec,
    validate::{SpecError, validate},
};

/// A ChatCluster's name and its checked spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCluster {
    name: String,
    spec: ChatClusterSpec,
}

impl ValidatedCluster {
    /// Cluster `name` with `spec`, when the spec passes every check; every problem otherwise.
    pub fn new(name: impl Into<String>, spec: &ChatClusterSpec) -> Result<Self, Vec<SpecError>> {
        let problems = validate(spec);
        if problems.is_empty() {
            Ok(Self {
                name: name.into(),
                spec: spec.clone(),
            })
        } else {
            Err(problems)
        }
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
