//! Database topology (issue 5, in progress): the parts that need no server — GTID sets of both
//! engines, each engine's replication statements, and the failover decision as a pure function. The topology loop that observes the
//! servers and carries decisions out will sit beside them, shared by the Kubernetes reconciler
//! and the laptop modes.

pub mod dialect;
pub mod failover;
pub mod gtid;
pub mod semisync;
