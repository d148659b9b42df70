//! Database topology: who is primary, who replicates from whom, and failover.
//!
//! One loop per cluster ([`manager`]) goes observe → classify → plan → execute. Its pure parts
//! need no server: GTID sets of both engines ([`gtid`]), each engine's statements
//! ([`dialect`]), the cluster's state ([`classify`]), what to do about it ([`plan`]), semi-sync
//! sizing ([`semisync`]) and the failover decision ([`failover`]). The executor ([`execute`])
//! acts through the [`db::DbServer`] trait: real servers over SQL ([`server`]; re-seeding in
//! [`seed`], or from a physical copy in [`physical`] where the files are at hand) or the test
//! suite's simulator. The Kubernetes reconciler and the laptop runner ([`publish`]) both run
//! the loop and publish its [`status`] their own way. With an internal CA, the servers serve
//! TLS, which the loop and replication verify; reloading a renewed certificate is left to
//! an agent beside each server, which needs none to reach it.

pub mod classify;
pub mod db;
pub mod dialect;
pub mod execute;
pub mod failover;
pub mod gtid;
pub mod manager;
pub mod physical;
pub mod plan;
pub mod publish;
pub mod seed;
pub mod semisync;
pub mod server;
pub mod status;

#[cfg(test)]
mod tests;
