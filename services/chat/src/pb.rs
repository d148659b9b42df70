//! Generated gRPC code of the chat API (`services/proto`), in modules mirroring the protobuf
//! packages (the generated code refers to its siblings by those paths), with short aliases.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `chatcluster.*` packages.
pub mod chatcluster {
    pub mod chat {
        pub mod v1 {
            tonic::include_proto!("chatcluster.chat.v1");
        }
    }
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("chatcluster.auth.v1");
        }
    }
    pub mod groups {
        pub mod v1 {
            tonic::include_proto!("chatcluster.groups.v1");
        }
    }
    pub mod dms {
        pub mod v1 {
            tonic::include_proto!("chatcluster.dms.v1");
        }
    }
    pub mod servers {
        pub mod v1 {
            tonic::include_proto!("chatcluster.servers.v1");
        }
    }
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("chatcluster.gateway.v1");
        }
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("chatcluster.internal.v1");
        }
    }
}

pub use chatcluster::{
    auth::v1 as auth, chat::v1 as chat, dms::v1 as dms, gateway::v1 as gateway,
    groups::v1 as groups, internal::v1 as internal, servers::v1 as servers,
};

/// Encoded descriptors of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chatcluster");
