//! What ChatCluster's binaries exchange, and nothing else: the contracts between the operator
//! (and its local runner), chat-xds and chatd. Each is a plain serde type or a list of names,
//! so a binary that speaks one contract depends on this small crate, not on the others.
//!
//! - [`xds`]: chat-xds's configuration, which the operator writes (a ConfigMap, or a file in
//!   local mode) and chat-xds reads;
//! - [`load`]: the load report chat-xds serves on `/load`, which the autoscaler reads;
//! - [`identity`]: who an internal certificate belongs to, which the operator's CA writes and
//!   chat-xds and chatd check;
//! - [`chatd`]: chatd's settings, which the operator's builders and the local runner both
//!   produce and chatd reads from its environment — each variable spelled here only.

pub mod chatd;
pub mod identity;
pub mod load;
pub mod xds;
