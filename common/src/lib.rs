//! What ChatCluster's binaries (chat-operator, chatd, chat-xds) share at run time.

pub mod procfs;
pub mod shutdown;

pub use shutdown::Shutdown;
