//! chat-xds: the Envoy control plane of a ChatCluster.
//!
//! - [`resources`]: pure functions from the cluster's state to Envoy resources;
//! - [`ads`]: the State-of-the-World and Delta ADS streams, and [`csds`] reporting on them;
//! - [`discovery`]: where endpoints come from;
//! - [`pipeline`]: inputs to snapshots, debounced for configuration, immediate for endpoints;
//! - [`load`] and [`http`]: the load signal (LRS) and the metrics / status endpoint.

pub mod ads;
pub mod csds;
pub mod discovery;
pub mod http;
pub mod load;
pub mod model;
pub mod pipeline;
pub mod resources;
