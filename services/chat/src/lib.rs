//! chatd: the chat services of a ChatCluster (auth, groups, dms, servers) in one binary; its
//! configuration names the services a process runs.
//!
//! - [`services`]: the gRPC services (identity, access rules, validation), over [`store`]
//!   (each service's tables and SQL, and the messages every kind shares) and [`db`]
//!   (primary/replica routing with read-your-writes);
//! - [`group_commit`]: concurrent sends written by one statement and one commit;
//! - [`fanout`]: delivery of new messages to subscribers on every replica;
//! - [`token`]: signed access tokens, verified by every service;
//! - [`server`]: assembling a process from its configuration;
//! - [`client`]: helpers for callers (chatctl, tests).

pub mod client;
pub mod db;
pub mod deadline;
pub mod error;
pub mod fanout;
pub mod group_commit;
pub mod pb;
pub mod server;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod token;
