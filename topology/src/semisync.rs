//! How many replica acknowledgements a commit waits for.
//!
//! Only replicas that are connected and caught up count: a new replica still copying, or one
//! that fell behind, must not stall every write. Among those, a commit waits for a majority
//! (`⌈n/2⌉`): then a failover needs `n - ⌈n/2⌉ + 1` reachable replicas to be lossless (see
//! [`super::failover`]) — all of them for 1 or 2 replicas, a majority from 3 on — so losing a
//! minority of replicas neither blocks writes nor a safe failover.

/// What the primary's semi-sync should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemiSync {
    /// Wait for this many acknowledgements.
    Wait(u32),
    /// No replica is caught up: waiting would stall every write. Commits fall back to
    /// asynchronous replication until one catches up; the cluster reports it (a condition).
    Degraded,
}

/// A replica as the sizing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    /// Its IO thread is connected to the primary.
    pub connected: bool,
    /// Transactions it has not yet received from the primary.
    pub behind: u64,
}

/// Replicas this many transactions behind or fewer count as caught up.
pub const CAUGHT_UP: u64 = 100;

/// The wait count for these replicas.
pub fn wait_count(replicas: &[ReplicaState]) -> SemiSync {
    let caught_up = replicas
        .iter()
        .filter(|r| r.connected && r.behind <= CAUGHT_UP)
        .count();
    match u32::try_from(caught_up.div_ceil(2)).unwrap_or(u32::MAX) {
        0 => SemiSync::Degraded,
        n => SemiSync::Wait(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(states: &[(bool, u64)]) -> Vec<ReplicaState> {
        states
            .iter()
            .map(|&(connected, behind)| ReplicaState { connected, behind })
            .collect()
    }

    #[test]
    fn a_majority_of_the_caught_up_replicas() {
        assert_eq!(wait_count(&replicas(&[(true, 0)])), SemiSync::Wait(1));
        assert_eq!(
            wait_count(&replicas(&[(true, 0), (true, 5)])),
            SemiSync::Wait(1)
        );
        assert_eq!(
            wait_count(&replicas(&[(true, 0), (true, 0), (true, 0)])),
            SemiSync::Wait(2)
        );
        assert_eq!(wait_count(&replicas(&[(true, 0); 5])), SemiSync::Wait(3));
    }

    #[test]
    fn a_new_or_lagging_replica_does_not_raise_the_count() {
        // Two caught up, one still seeding from the primary: still one acknowledgement.
        assert_eq!(
            wait_count(&replicas(&[(true, 0), (true, 0), (true, 1_000_000)])),
            SemiSync::Wait(1)
        );
        // A disconnected replica does not count either.
        assert_eq!(
            wait_count(&replicas(&[(true, 0), (false, 0)])),
            SemiSync::Wait(1)
        );
    }

    #[test]
    fn no_caught_up_replica_degrades_instead_of_stalling() {
        assert_eq!(wait_count(&[]), SemiSync::Degraded);
        assert_eq!(
            wait_count(&replicas(&[(false, 0), (true, 5_000)])),
            SemiSync::Degraded
        );
    }

    #[test]
    fn sized_counts_keep_failover_lossless_with_a_minority_lost() {
        // With n caught-up replicas waiting for ⌈n/2⌉, failover needs n - ⌈n/2⌉ + 1 reachable.
        for n in 3..=9u32 {
            let SemiSync::Wait(k) = wait_count(&vec![
                ReplicaState {
                    connected: true,
                    behind: 0
                };
                n as usize
            ]) else {
                panic!("degraded with {n} replicas");
            };
            let needed = n - k + 1;
            assert!(
                needed <= n / 2 + 1,
                "{n} replicas: {needed} needed for failover"
            );
        }
    }
}
