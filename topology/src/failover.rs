//! The failover decision: a pure function from what the topology loop observed to what it
//! should do, so every topology can be unit-tested without a server.
//!
//! Promote only when it is safe and lossless:
//! - the primary has been unreachable (or cut off from every replica) past the timeout — a
//!   primary that flaps back within it is left alone;
//! - the candidate is a reachable replica with no errant transaction whose executed GTIDs
//!   contain every other reachable candidate's (so it has everything any of them has);
//! - with semi-sync waiting for `k` acknowledgements out of `r` replicas, an acknowledged write
//!   is on at least `k` replicas, so at least `r - k + 1` must be reachable for one of them to
//!   be certain to have it; with fewer, promoting could lose acknowledged writes: refuse.

use std::collections::BTreeSet;

use super::gtid::GtidSet;

/// One database server as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Pod (or process) name.
    pub name: String,
    /// Answered the topology loop's queries.
    pub reachable: bool,
    /// Executed GTIDs (last known when unreachable).
    pub executed: GtidSet,
    /// For replicas: may not be promoted (errant, broken, being re-seeded, or not serving
    /// when last seen).
    pub errant: bool,
    /// For replicas: known to have diverged from the primary before it was lost (and stopped
    /// replicating then), so it holds no write acknowledged since.
    pub diverged: bool,
}

/// The receiver error a source sends when it refuses a replica: the replica diverged, or needs
/// binary logs the source has purged (MariaDB and MySQL: 1236).
pub const SOURCE_REFUSED: u32 = 1236;

/// A replica's receiver (IO thread) replicating from the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    /// Connected to the primary.
    pub connected: bool,
    /// Its last error (0: none).
    pub errno: u32,
}

/// Whether the primary, though it answers the loop, is cut off from its replicas: every
/// replica following it has lost its receiver's connection with an error. A receiver stopped
/// without an error is not a cut, and neither is one the primary refused
/// ([`SOURCE_REFUSED`]): that replica diverged or fell behind the purged logs, re-seeding
/// mends it, and failing over because of it would never end (a one-replica cluster whose
/// thawed old primary kept an unacknowledged commit).
pub fn primary_cut_off(receivers: &[Receiver]) -> bool {
    let reaching: Vec<&Receiver> = receivers
        .iter()
        .filter(|r| r.errno != SOURCE_REFUSED)
        .collect();
    !reaching.is_empty() && reaching.iter().all(|r| !r.connected && r.errno != 0)
}

/// What the loop saw, and the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The current primary.
    pub primary: Server,
    /// The replicas.
    pub replicas: Vec<Server>,
    /// Milliseconds the primary has been unreachable or isolated (0: it is fine).
    pub primary_down_for_ms: u64,
    /// How long it must be down before a failover.
    pub timeout_ms: u64,
    /// Semi-sync acknowledgements a commit waited for when the primary was last seen (0:
    /// none: degraded, off, or not known).
    pub semi_sync_wait_count: u32,
    /// Every write acknowledged without a replica's acknowledgement is within this set: the
    /// promoted replica must have it.
    pub must_have: Option<GtidSet>,
    /// Promote even when a replica may lack acknowledged writes.
    pub allow_data_loss: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: the primary is serving.
    Healthy,
    /// The primary looks gone, but not for long enough yet.
    Wait {
        /// Milliseconds left before a failover.
        remaining_ms: u64,
    },
    /// Promote `promote`; fence the old primary where reachable (read-only, connections
    /// killed) and point `repoint` at the new one.
    Failover {
        /// The replica to promote.
        promote: String,
        /// Reachable replicas to follow it.
        repoint: Vec<String>,
        /// Replicas left out, and why (errant, unreachable).
        excluded: Vec<(String, String)>,
    },
    /// A failover is needed but cannot be done safely; the reason says why.
    Blocked(String),
}

/// Decide what to do about the primary (`primary.reachable`: it serves, cut off from no
/// replica).
pub fn decide(obs: &Observation) -> Decision {
    if obs.primary.reachable || obs.primary_down_for_ms == 0 {
        return Decision::Healthy;
    }
    if obs.primary_down_for_ms < obs.timeout_ms {
        return Decision::Wait {
            remaining_ms: obs.timeout_ms - obs.primary_down_for_ms,
        };
    }

    let mut excluded = Vec::new();
    let mut candidates = Vec::new();
    for r in &obs.replicas {
        if !r.reachable {
            excluded.push((r.name.clone(), "unreachable".to_string()));
        } else if r.errant {
            excluded.push((r.name.clone(), "errant transactions".to_string()));
        } else {
            candidates.push(r);
        }
    }
    if candidates.is_empty() {
        return Decision::Blocked("no reachable replica without errant transactions".into());
    }

    // Lossless: with k acknowledgements out of r replicas, r - k + 1 must be reachable.
    let k = obs.semi_sync_wait_count as usize;
    if k == 0 && !obs.allow_data_loss {
        return Decision::Blocked(
            "semi-sync was not waiting for a replica (degraded, off, or unknown since the loop started), so writes acknowledged meanwhile may exist only on the old primary; bring it back, or set database.failover.allowDataLoss to promote anyway".into(),
        );
    }
    // Writes acknowledged while semi-sync waited were promised to survive: allowing data
    // loss never gives them up. Nor may a replica out of reach keep following the old
    // primary, still writable, and acknowledge its writes after the failover: with one
    // acknowledgement enough (MariaDB), every replica must be reachable to be repointed.
    let k = k.max(1);
    let reachable = obs.replicas.iter().filter(|r| r.reachable).count();
    let needed = obs.replicas.len().saturating_sub(k) + 1;
    if reachable < needed {
        return Decision::Blocked(format!(
            "only {reachable} of {} replicas reachable; {needed} are needed to be sure no acknowledged write is lost",
            obs.replicas.len()
        ));
    }

    // The candidate that has everything every other candidate has.
    let Some(best) = candidates
        .iter()
        .find(|c| candidates.iter().all(|o| c.executed.contains(&o.executed)))
    else {
        let names: BTreeSet<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        return Decision::Blocked(format!(
            "replicas {names:?} have diverged: none has every transaction of the others"
        ));
    };
    // A replica that may not be promoted can still be the one that acknowledged a write.
    if let Some(other) = obs
        .replicas
        .iter()
        .find(|o| o.reachable && !o.diverged && !best.executed.contains(&o.executed))
    {
        return Decision::Blocked(format!(
            "{} holds writes {} lacks ({}) but cannot be promoted",
            other.name,
            best.name,
            other.executed.subtract(&best.executed)
        ));
    }
    if let Some(e) = &obs.must_have
        && !obs.allow_data_loss
        && !best.executed.contains(e)
    {
        return Decision::Blocked(format!(
            "{} lacks writes acknowledged while semi-sync was degraded ({}); bring the primary back, or set database.failover.allowDataLoss to promote anyway",
            best.name,
            e.subtract(&best.executed)
        ));
    }
    Decision::Failover {
        promote: best.name.clone(),
        repoint: candidates
            .iter()
            .filter(|c| c.name != best.name)
            .map(|c| c.name.clone())
            .collect(),
        excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_is_cut_off_only_when_every_receiver_lost_its_connection() {
        let lost = Receiver {
            connected: false,
            errno: 2013,
        };
        let up = Receiver {
            connected: true,
            errno: 0,
        };
        let stopped = Receiver {
            connected: false,
            errno: 0,
        };
        let refused = Receiver {
            connected: false,
            errno: SOURCE_REFUSED,
        };
        assert!(primary_cut_off(&[lost, lost]));
        assert!(
            !primary_cut_off(&[lost, up]),
            "one replica still reaches it"
        );
        assert!(
            !primary_cut_off(&[lost, stopped]),
            "a stopped receiver is no cut"
        );
        assert!(!primary_cut_off(&[]), "nobody follows it");
        // The one-replica cluster after a failover: the old primary kept a commit nobody
        // else has, and the new primary refuses it. That is the replica's problem.
        assert!(!primary_cut_off(&[refused]));
        assert!(
            primary_cut_off(&[refused, lost]),
            "the other replica is cut off"
        );
    }

    const P: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const X: &str = "4f22ab58-82db-22f2-8f44-d91bb0530673";

    fn gtid(s: &str) -> GtidSet {
        GtidSet::parse_mysql(s).unwrap_or_default()
    }

    fn server(name: &str, executed: &str) -> Server {
        Server {
            name: name.into(),
            reachable: true,
            executed: gtid(executed),
            errant: false,
            diverged: false,
        }
    }

    fn observation(primary_down_for_ms: u64, replicas: Vec<Server>) -> Observation {
        let mut primary = server("db-0", &format!("{P}:1-100"));
        primary.reachable = primary_down_for_ms == 0;
        Observation {
            primary,
            replicas,
            primary_down_for_ms,
            timeout_ms: 10_000,
            semi_sync_wait_count: 1,
            must_have: None,
            allow_data_loss: false,
        }
    }

    fn failover(promote: &str, repoint: &[&str]) -> Decision {
        Decision::Failover {
            promote: promote.into(),
            repoint: repoint.iter().map(|s| s.to_string()).collect(),
            excluded: vec![],
        }
    }

    #[test]
    fn a_serving_primary_is_left_alone() {
        let obs = observation(0, vec![server("db-1", &format!("{P}:1-100"))]);
        assert_eq!(decide(&obs), Decision::Healthy);
    }

    #[test]
    fn a_flapping_primary_waits_out_the_timeout() {
        let replicas = vec![server("db-1", &format!("{P}:1-99"))];
        assert_eq!(
            decide(&observation(3_000, replicas.clone())),
            Decision::Wait {
                remaining_ms: 7_000
            }
        );
        // Back before the timeout: nothing happens.
        assert_eq!(decide(&observation(0, replicas.clone())), Decision::Healthy);
        assert_eq!(
            decide(&observation(10_000, replicas)),
            failover("db-1", &[])
        );
    }

    #[test]
    fn the_most_advanced_replica_is_promoted_and_the_lagging_one_follows_it() {
        let obs = observation(
            15_000,
            vec![
                server("db-1", &format!("{P}:1-90")),
                server("db-2", &format!("{P}:1-100")),
            ],
        );
        assert_eq!(decide(&obs), failover("db-2", &["db-1"]));
    }

    #[test]
    fn an_errant_replica_is_never_promoted() {
        let mut errant = server("db-2", &format!("{P}:1-100,{X}:1-3"));
        errant.errant = true;
        errant.diverged = true;
        let obs = observation(15_000, vec![server("db-1", &format!("{P}:1-100")), errant]);
        assert_eq!(
            decide(&obs),
            Decision::Failover {
                promote: "db-1".into(),
                repoint: vec![],
                excluded: vec![("db-2".into(), "errant transactions".into())],
            }
        );
        // Only errant replicas left: no promotion.
        let mut only = server("db-1", &format!("{P}:1-100,{X}:1"));
        only.errant = true;
        assert!(matches!(
            decide(&observation(15_000, vec![only])),
            Decision::Blocked(_)
        ));
    }

    #[test]
    fn all_replicas_down_blocks() {
        let mut down = server("db-1", &format!("{P}:1-100"));
        down.reachable = false;
        assert!(matches!(
            decide(&observation(15_000, vec![down])),
            Decision::Blocked(reason) if reason.contains("no reachable replica")
        ));
    }

    #[test]
    fn too_few_reachable_replicas_could_lose_acknowledged_writes() {
        // Semi-sync waits for 1 ack of 2 replicas: the one that acked may be the one down.
        let mut down = server("db-2", &format!("{P}:1-100"));
        down.reachable = false;
        let obs = observation(
            15_000,
            vec![server("db-1", &format!("{P}:1-99")), down.clone()],
        );
        assert!(
            matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("acknowledged write"))
        );
        // Waiting for 2 acks of 2: every acked write is on db-1 too, so it is safe.
        let mut obs = observation(15_000, vec![server("db-1", &format!("{P}:1-100")), down]);
        obs.semi_sync_wait_count = 2;
        assert!(matches!(decide(&obs), Decision::Failover { promote, .. } if promote == "db-1"));
    }

    #[test]
    fn diverged_replicas_block() {
        let obs = observation(
            15_000,
            vec![
                server("db-1", &format!("{P}:1-90:95")),
                server("db-2", &format!("{P}:1-93")),
            ],
        );
        assert!(matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("diverged")));
    }

    #[test]
    fn a_possible_loss_of_acknowledged_writes_is_held_unless_allowed() {
        // Semi-sync degraded (or off) when the primary went: writes acknowledged meanwhile may
        // be on no replica.
        let mut obs = observation(15_000, vec![server("db-1", &format!("{P}:1-100"))]);
        obs.semi_sync_wait_count = 0;
        assert!(
            matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("allowDataLoss"))
        );
        obs.allow_data_loss = true;
        assert_eq!(decide(&obs), failover("db-1", &[]));
        // Too few replicas answer to be sure a write acknowledged while semi-sync waited is
        // kept: that promise holds even then.
        let mut down = server("db-2", &format!("{P}:1-100"));
        down.reachable = false;
        let mut obs = observation(15_000, vec![server("db-1", &format!("{P}:1-99")), down]);
        obs.allow_data_loss = true;
        assert!(
            matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("acknowledged write"))
        );
    }

    #[test]
    fn a_replica_that_cannot_be_promoted_but_holds_more_blocks() {
        // db-1 acknowledged the last writes but was not serving when last seen: promoting
        // db-2 would lose them.
        let mut ahead = server("db-1", &format!("{P}:1-100"));
        ahead.errant = true;
        let obs = observation(15_000, vec![ahead, server("db-2", &format!("{P}:1-97"))]);
        assert!(
            matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("db-1 holds writes db-2 lacks"))
        );
    }

    #[test]
    fn writes_acknowledged_while_degraded_must_be_on_the_promoted_replica() {
        let mut obs = observation(15_000, vec![server("db-1", &format!("{P}:1-90"))]);
        obs.must_have = Some(gtid(&format!("{P}:1-95")));
        assert!(matches!(decide(&obs), Decision::Blocked(reason) if reason.contains("91-95")));
        obs.must_have = Some(gtid(&format!("{P}:1-90")));
        assert_eq!(decide(&obs), failover("db-1", &[]));
    }
}
