//! What ChatCluster's binaries (chat-operator, chatd, chat-xds) share at run time: how a
//! process stops, what it costs, and the internal plane's mutual TLS ([`tls`], [`admit`]).

pub mod admit;
pub mod fs;
pub mod procfs;
pub mod shutdown;
pub mod sync;
pub mod tls;

pub use shutdown::Shutdown;
