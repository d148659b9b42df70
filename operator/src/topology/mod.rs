//! Database topology: who is primary, who replicates from whom, and failover.
//!
//! Pure parts need no server: GTID sets of both engines ([`gtid`]), each engine's statements
//! ([`dialect`]), semi-sync sizing ([`semisync`]) and the failover decision ([`failover`]). The
//! loop ([`manager`]) observes real servers ([`server`]), carries decisions out and re-seeds
//! replicas ([`seed`]); the Kubernetes reconciler and the laptop runner ([`publish`]) both run it and publish
//! what it concludes their own way.

pub mod dialect;
pub mod failover;
pub mod gtid;
pub mod manager;
pub mod publish;
pub mod seed;
pub mod semisync;
pub mod server;
