//! chat-operator: the `ChatCluster` API and the controller that turns one resource into a
//! running chat backend.
//!
//! - [`api`]: the custom resource types, defaults and validation;
//! - [`Error`]: what the Kubernetes-side entry points (reconcile, render, leader) fail with;
//! - [`build`]: pure functions from a spec to the desired child objects;
//! - [`reconcile`]: the side effects (server-side apply, status, events) and the controller;
//! - [`pki`]: the internal CA and the certificates it issues each component;
//! - [`leader`]: Lease-based leader election so two operator replicas can run;
//! - [`metrics`] and [`http`]: Prometheus metrics and the health endpoint;
//! - [`topology`]: the database topology engine, its own crate (`chatcluster-topology`), which
//!   both drivers run: the reconciler in Kubernetes and the runner in local mode;
//! - [`local`]: the same cluster as supervised processes on one machine (local mode);
//! - [`seed`]: physical copies of a MariaDB server, run beside the database in Kubernetes;
//! - [`tls_reload`]: the agent beside each database server that has it reload a renewed
//!   certificate (a sidecar in Kubernetes, a task of the runner in local mode).

pub mod api;
pub mod autoscale;
pub mod build;
mod error;
pub mod http;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod seed;
pub mod tls_reload;
pub use chatcluster_topology as topology;
pub use error::{Error, Result};
