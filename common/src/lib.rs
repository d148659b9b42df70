//! What ChatCluster's binaries (chat-operator, chatd, chat-xds) share at run time.

pub mod fs;
pub mod procfs;
pub mod shutdown;
pub mod sync;
pub mod tls;

pub use shutdown::Shutdown;
