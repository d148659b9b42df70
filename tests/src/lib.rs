//! Helpers for the multi-process tests of whole clusters: real MariaDB servers, local clusters,
//! network namespaces, chat clients, writers that count acknowledgements, object checks. The
//! basics (free ports, temp dirs, child processes killed when the test ends, Envoy's binary)
//! come from `chatcluster-harness`, re-exported here.

pub mod chat;
pub mod load;
pub mod local;
pub mod mariadb;
pub mod nats;
pub mod netns;
pub mod objects;
pub mod sends;
pub mod writer;

pub use chatcluster_harness::{
    Process, TempDir, envoy_binary, envoy_stat, free_port, http_get, listening_addresses,
    peak_rss_mib, repo,
};
