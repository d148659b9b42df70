//! The `ChatCluster` custom resource, `chatcluster.io/v1alpha1`.
//!
//! Every field has a default, so `spec: {}` describes a complete, redundant cluster. What the
//! API server can refuse on its own (ranges, enums, cross-field rules) is declared here as
//! OpenAPI constraints and CEL rules (`x-kubernetes-validations`), each message naming its
//! field; [`validate`] runs those same checks, read from the generated schema, for objects
//! that slipped past the API server.

mod broker;
pub mod defaults;
pub mod file;
pub mod quantity;
mod spec;
mod status;
mod validate;
mod validated;

pub use broker::BrokerSpec;
pub use defaults::*;
pub use spec::*;
pub use status::*;
pub use validate::{SpecError, admission, validate};
pub use validated::{Refused, ValidatedCluster};
