//! What the topology loop can ask of one database server. The loop only talks through this
//! trait, so the same planner and executor drive real servers over SQL
//! ([`super::server::Server`]) and the test suite's simulated ones, where thousands of fault
//! sequences run in seconds.

use std::{future::Future, time::Duration};

use super::{
    dialect::Source,
    seed,
    server::{Member, Report, Result},
    status::SemiSyncState,
};

/// One database server of a cluster, as the topology loop drives it. Every call is bounded in
/// time by the implementation: a frozen server answers with an error, never by hanging.
pub trait DbServer: Send + Sized + 'static {
    /// Who it is.
    fn member(&self) -> &Member;

    /// What it says about itself.
    fn report(&mut self) -> impl Future<Output = Result<Report>> + Send;

    /// Refuse ordinary users' writes and end their sessions, so no commit that was waiting
    /// for a semi-sync acknowledgement is ever acknowledged; each step within `within`.
    fn fence(&mut self, within: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Stop the receiver (keeping what it received), within `within`.
    fn stop_receiver(&mut self, within: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Stop replicating altogether: an errant or broken replica acknowledges nothing.
    fn stop_replication(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Fence it, then replicate from `source` (acknowledging commits when `semi_sync`),
    /// resuming from everything it has, its own former writes included.
    fn follow(
        &mut self,
        source: &Source<'_>,
        semi_sync: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Set what its commits wait for, as a primary.
    fn set_semi_sync(&mut self, state: SemiSyncState) -> impl Future<Output = Result<()>> + Send;

    /// Stop replicating, forget its source, and take writes.
    fn make_writable(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Wait up to `wait` until it has applied `gtids` (as servers print them); whether it has.
    fn wait_applied(
        &mut self,
        gtids: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Another handle on the same server with a connection of its own, for work that runs
    /// beside the loop (re-seeding).
    fn another(&self) -> Self;

    /// Replace its data with a consistent copy of `primary`'s, ready to replicate from the
    /// copy's position (the caller then points it at the primary).
    fn reseed_from(
        &mut self,
        primary: &mut Self,
        source: &Source<'_>,
    ) -> impl Future<Output = Result<(), seed::Error>> + Send;
}
