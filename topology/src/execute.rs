//! Carrying a [`Plan`] out through [`DbServer`]s, and the one promotion routine failover and
//! switchover share. Decisions stay in [`super::plan`] and [`super::failover`]; what is
//! decided here is only what the servers' answers during a promotion force (which candidate
//! holds the most once its receiver stopped).

use std::time::Duration;

use futures::future::join_all;
use tracing::{Instrument, info, info_span, warn};

use super::{
    db::DbServer,
    dialect::Source,
    gtid::GtidSet,
    manager::{Error, Topology, now_ms},
    plan::{Action, Exposure, Memory, Plan, semi_sync_for},
    semisync::ReplicaState,
    status::{Finding, FindingKind, Promotion, Role, SemiSyncState},
};

/// Longest a re-seed may take: a physical copy of a large database in Kubernetes (its Job
/// may run 30 minutes, the pod's restart 10 more). Each step inside has a shorter bound of its
/// own, so a stuck copy fails long before this.
pub const SEED_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Longest stopping a replica's receiver may take. MariaDB waits in steps of 2 s for a
/// receiver blocked on a source that no longer answers (measured: 2.0 s with the source
/// frozen), longer than the statement timeout; a failover that gave up there failed.
pub const RECEIVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the new primary may take to apply its relay log during a promotion.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before a failed re-seed is tried again; it doubles with each failure.
const SEED_RETRY_MS: u64 = 2_000;
/// How long fencing a failed primary may take before the failover goes on without it.
pub const FENCE_ATTEMPT: Duration = Duration::from_millis(300);
/// Failures in a row after which an action shows as a finding.
const FAILING_AFTER: u32 = 3;
/// The re-seed's name among the actions counted by `note`.
pub(super) const RESEED: &str = "re-seed";

/// An action that keeps failing on one server.
#[derive(Debug, Default)]
pub(super) struct Failing {
    /// Attempts in a row that failed.
    pub(super) times: u32,
    /// The last one's error.
    pub(super) last: String,
}

/// The primary's address and the replication user, owned: a re-seed runs beside the loop.
#[derive(Debug, Clone)]
pub(super) struct PrimarySource {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// The CA's path on the replica, when replication is over TLS.
    tls: Option<String>,
}

impl PrimarySource {
    fn source(&self) -> Source<'_> {
        Source {
            host: &self.host,
            port: self.port,
            user: &self.user,
            password: &self.password,
            tls: self.tls.as_deref(),
        }
    }
}

/// The candidate holding every transaction every other candidate holds.
pub fn most_advanced(held: &[(usize, GtidSet)]) -> Option<usize> {
    held.iter()
        .find(|(_, has)| held.iter().all(|(_, other)| has.contains(other)))
        .map(|(i, _)| *i)
}

/// How the old primary leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// Lost or cut off; the candidates keep what they hold. One that still answers the loop
    /// (cut off from its replicas only) must be fenced first; a lost one is tried briefly.
    Failed {
        /// It answers the loop.
        primary_answers: bool,
    },
    /// Planned: it must be fenced, and the target must apply all it wrote.
    Planned,
}

impl<S: DbServer> Topology<S> {
    pub(super) fn replica_source(&self) -> PrimarySource {
        let m = self.servers[self.primary].member();
        PrimarySource {
            host: m.host.clone(),
            port: m.port,
            user: self.credentials.repl_user.clone(),
            password: self.credentials.repl_password.clone(),
            tls: self.policy.tls_ca.clone(),
        }
    }

    fn name(&self, i: usize) -> String {
        self.servers[i].member().name.clone()
    }

    /// Count a failure (or clear the count on success); a finding once it keeps failing.
    pub(super) fn note(
        &mut self,
        plan: &mut Plan,
        what: &'static str,
        i: usize,
        result: Result<(), String>,
    ) {
        let name = self.name(i);
        let key = (what, name.clone());
        match result {
            Ok(()) => {
                self.failures.remove(&key);
            }
            Err(e) => {
                warn!(server = %name, error = %e, "cannot {what}");
                let failing = self.failures.entry(key).or_default();
                failing.times += 1;
                failing.last.clone_from(&e);
                // A re-seed's finding comes from `keep_seed_findings`, every tick.
                if failing.times >= FAILING_AFTER && what != RESEED {
                    plan.findings.push(Finding::about(
                        FindingKind::ActionFailing,
                        &name,
                        format!("cannot {what} ({} ticks in a row): {e}", failing.times),
                    ));
                }
                if let Some(s) = plan.servers.iter_mut().find(|s| s.name == name) {
                    s.error = Some(format!("cannot {what}: {e}"));
                }
            }
        }
    }

    /// A re-seed fails once an attempt, and attempts back off to a minute apart: its finding
    /// stays from one failure to the next success, so that an alert sees it rather than one
    /// tick a minute. A server that serves again, or is no longer a member, needs no re-seed.
    pub(super) fn keep_seed_findings(&mut self, plan: &mut Plan) {
        let serving = |name: &str| {
            plan.servers
                .iter()
                .find(|s| s.name == name)
                .is_none_or(|s| matches!(s.role, Role::Primary | Role::Replica))
        };
        self.failures
            .retain(|(what, name), _| *what != RESEED || !serving(name));
        for ((what, name), failing) in &self.failures {
            if *what == RESEED && failing.times >= FAILING_AFTER {
                plan.findings.push(Finding::about(
                    FindingKind::ReseedFailing,
                    name,
                    format!(
                        "cannot {what} ({} attempts in a row): {}",
                        failing.times, failing.last
                    ),
                ));
            }
        }
    }

    /// Carry `plan` out, noting in it what failed. Returns whether the primary moved.
    pub(super) async fn execute(&mut self, plan: &mut Plan) -> bool {
        let mut moved = false;
        for action in plan.actions.clone() {
            match action {
                Action::Fence(i) => {
                    warn!(server = %self.name(i), "a second writable server: fencing it");
                    let within = self.policy.query_timeout;
                    let r = self.servers[i]
                        .fence(within)
                        .await
                        .map_err(|e| e.to_string());
                    self.note(plan, "fence", i, r);
                }
                Action::StopReplication(i) => {
                    let r = self.servers[i]
                        .stop_replication()
                        .await
                        .map_err(|e| e.to_string());
                    self.note(plan, "stop replication", i, r);
                }
                Action::Follow(i) => {
                    let source = self.replica_source();
                    let semi_sync = self.policy.semi_sync;
                    let r = self.servers[i]
                        .follow(&source.source(), semi_sync)
                        .await
                        .map_err(|e| e.to_string());
                    self.note(plan, "follow the primary", i, r);
                }
                Action::Reseed(i) => self.start_reseed(i, plan),
                Action::StopReceivers(candidates) => self.stop_receivers(&candidates).await,
                Action::SetSemiSync(state) => {
                    let p = self.primary;
                    if !matches!(state, SemiSyncState::Waiting(_)) {
                        // Switching off releases the commits that were waiting, acknowledged
                        // alone, even if the answer to the statement is lost: assume the worst
                        // first.
                        self.memory.semi_sync = None;
                        self.memory.exposure = Exposure::Unbounded;
                    }
                    match self.servers[p].set_semi_sync(state).await {
                        Ok(()) => {
                            info!(state = ?state, "semi-sync set");
                            let exposure = std::mem::take(&mut self.memory.exposure);
                            self.memory.exposure =
                                exposure.after_switch(self.memory.semi_sync, state);
                            self.memory.semi_sync = Some(state);
                            self.note(plan, "set semi-sync", p, Ok(()));
                        }
                        Err(e) => self.note(plan, "set semi-sync", p, Err(e.to_string())),
                    }
                }
                Action::MakeWritable => {
                    let p = self.primary;
                    match self.servers[p].make_writable().await {
                        Ok(()) => {
                            info!(primary = %self.name(p), "primary made writable");
                            plan.primary_ready = true;
                            self.note(plan, "make the primary writable", p, Ok(()));
                        }
                        Err(e) => {
                            self.note(plan, "make the primary writable", p, Err(e.to_string()))
                        }
                    }
                }
                Action::Failover {
                    promote,
                    repoint,
                    cause,
                    primary_answers,
                } => {
                    let since = plan.memory.down_since_ms.unwrap_or_default();
                    let span = info_span!("failover", from = %self.name(self.primary), to = %self.name(promote));
                    let mut candidates = vec![promote];
                    candidates.extend(repoint);
                    let old = self.primary;
                    match self
                        .hand_over(candidates, Leaving::Failed { primary_answers })
                        .instrument(span)
                        .await
                    {
                        Ok(new) => {
                            self.record(old, new, &cause, now_ms(self).saturating_sub(since));
                            moved = true;
                        }
                        Err(e) => {
                            warn!(error = %e, "failover failed; will retry");
                            plan.failover_pending = Some(format!("{cause}; failover failed: {e}"));
                        }
                    }
                }
            }
        }
        moved
    }

    /// Stop the receivers of `candidates`, all at once; a failure is only logged (what each
    /// holds is read again when the failover comes).
    async fn stop_receivers(&mut self, candidates: &[usize]) {
        let work = self
            .servers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| candidates.contains(i))
            .map(|(_, s)| async move {
                if let Err(e) = s.stop_receiver(RECEIVER_STOP_TIMEOUT).await {
                    warn!(server = %s.member().name, error = %e, "cannot stop receiving");
                }
            });
        join_all(work).await;
    }

    /// Re-seed server `i` beside the loop (a large copy must not stall failover detection),
    /// unless one is running already.
    fn start_reseed(&mut self, i: usize, plan: &mut Plan) {
        let name = self.name(i);
        let retry_at = self.seed_retry_at.get(&name).copied().unwrap_or(0);
        if self.seeding.contains_key(&name) || now_ms(self) < retry_at {
            return;
        }
        info!(replica = %name, "re-seeding from the primary");
        let mut primary = self.servers[self.primary].another();
        let mut replica = self.servers[i].another();
        let source = self.replica_source();
        let semi_sync = self.policy.semi_sync;
        let task = tokio::spawn(
            async move {
                let work = async {
                    replica.reseed_from(&mut primary, &source.source()).await?;
                    replica.follow(&source.source(), semi_sync).await?;
                    Ok::<_, super::seed::Error>(())
                };
                match tokio::time::timeout(SEED_TIMEOUT, work).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("not done within {SEED_TIMEOUT:?}")),
                }
            }
            .instrument(info_span!("reseed", replica = %name)),
        );
        self.seeding.insert(self.name(i), task);
        if let Some(s) = plan.servers.iter_mut().find(|s| s.name == self.name(i)) {
            s.role = Role::Seeding;
        }
    }

    /// Collect finished re-seeds: a failure counts against the server like any action's.
    pub(super) async fn reap_seeds(&mut self) -> Vec<(usize, Result<(), String>)> {
        let done: Vec<String> = self
            .seeding
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for name in done {
            let Some(task) = self.seeding.remove(&name) else {
                continue;
            };
            let result = task.await.unwrap_or_else(|e| Err(e.to_string()));
            match &result {
                Ok(()) => {
                    info!(replica = %name, "re-seeded");
                    self.seed_retry_at.remove(&name);
                    // A copy of the primary, following it: whatever it was before is gone.
                    self.memory.known_roles.insert(name.clone(), Role::Replica);
                }
                Err(e) => {
                    // A copy is costly: retry after 2, 4, … 64 s, not every tick.
                    let failed = self.failures.get(&(RESEED, name.clone())).map(|f| f.times);
                    let backoff = SEED_RETRY_MS << failed.unwrap_or(0).min(5);
                    warn!(replica = %name, error = %e, retry_in_ms = backoff, "re-seed failed");
                    self.seed_retry_at
                        .insert(name.clone(), now_ms(self) + backoff);
                }
            }
            if let Some(i) = self.servers.iter().position(|s| s.member().name == name) {
                out.push((i, result));
            }
        }
        out
    }

    fn record(&mut self, old: usize, new: usize, reason: &str, duration_ms: u64) -> Promotion {
        let record = Promotion {
            at_unix_ms: super::manager::unix_ms(),
            from: self.name(old),
            to: self.name(new),
            reason: reason.to_string(),
            duration_ms,
        };
        info!(from = %record.from, to = %record.to, duration_ms, reason, "primary moved");
        self.last_promotion = Some(record.clone());
        record
    }

    /// The promotion routine: the old primary stops taking writes, the candidate holding the
    /// most applies all it holds and becomes writable with semi-sync sized for the others,
    /// and every other candidate follows it. Returns the new primary's index.
    async fn hand_over(
        &mut self,
        candidates: Vec<usize>,
        leaving: Leaving,
    ) -> Result<usize, Error> {
        let old = self.primary;
        // Re-seeds in flight are left to finish (or fail): one stopped half-way through its
        // swap would leave a replica with neither its data nor the copy.
        // All at once, as each can take seconds against a dead server: fence the old primary
        // (it must not take writes any more) and freeze what every candidate has received.
        // Fencing need not come first: with semi-sync, a commit the old primary makes
        // meanwhile waits for an acknowledgement and its client is cut off by the fence.
        let indices: Vec<usize> = (0..self.servers.len())
            .filter(|i| *i == old || candidates.contains(i))
            .collect();
        // A failed primary most likely does not answer: the attempt must not hold the
        // promotion up (with semi-sync its commits wait for replicas now stopped).
        let (fence_within, must_fence) = match leaving {
            Leaving::Failed {
                primary_answers: false,
            } => (FENCE_ATTEMPT, false),
            Leaving::Failed {
                primary_answers: true,
            }
            | Leaving::Planned => (self.policy.query_timeout, true),
        };
        let work = self
            .servers
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i == old || candidates.contains(i))
            .map(|(i, s)| async move {
                if i == old {
                    return s.fence(fence_within).await.map_err(Error::from);
                }
                if leaving != Leaving::Planned
                    && let Err(e) = s.stop_receiver(RECEIVER_STOP_TIMEOUT).await
                {
                    // Stopped or not, what it holds is re-read below; a receiver stuck on a
                    // dead source receives nothing more.
                    warn!(server = %s.member().name, error = %e, "cannot stop receiving");
                }
                Ok(())
            });
        for (i, result) in indices.into_iter().zip(join_all(work).await) {
            match (result, leaving) {
                (Err(e), _) if i == old && must_fence => return Err(e),
                (Err(e), _) => info!(error = %e, "old primary not fenced (unreachable)"),
                (Ok(()), _) => {}
            }
        }
        let mut held = Vec::new();
        for &i in &candidates {
            let report = self.servers[i].report().await?;
            held.push((i, report));
        }
        let target = match leaving {
            Leaving::Failed { .. } => {
                let sets: Vec<(usize, GtidSet)> = held.iter().map(|(i, r)| (*i, r.has())).collect();
                most_advanced(&sets).ok_or_else(|| {
                    Error::Refused("candidates diverged after stopping their receivers".into())
                })?
            }
            Leaving::Planned => candidates[0],
        };
        // What the target must apply before taking writes: what it received (failover), or
        // everything the fenced old primary wrote (switchover).
        let wanted = match leaving {
            Leaving::Failed { .. } => held
                .iter()
                .find(|(i, _)| *i == target)
                .and_then(|(_, r)| r.replication.as_ref())
                .filter(|r| !r.received.is_empty())
                .map(|r| r.received_text.clone()),
            Leaving::Planned => Some(self.servers[old].report().await?.executed_text),
        };
        if let Some(gtids) = wanted
            && !self.servers[target]
                .wait_applied(&gtids, APPLY_TIMEOUT)
                .await?
        {
            return Err(Error::Refused(format!(
                "{} did not apply {gtids} within {APPLY_TIMEOUT:?}",
                self.name(target)
            )));
        }
        let mut others: Vec<usize> = candidates.into_iter().filter(|&i| i != target).collect();
        if leaving == Leaving::Planned {
            others.push(old);
        }
        // Every follower holds no more than the target: each is caught up at once.
        let state = semi_sync_for(
            &self.policy,
            others.len() + 1,
            &vec![
                ReplicaState {
                    connected: true,
                    behind: 0
                };
                others.len()
            ],
        );
        self.servers[target].set_semi_sync(state).await?;
        self.servers[target].make_writable().await?;
        self.primary = target;
        // Waiting from its first write on, the new primary has acknowledged nothing alone.
        let exposure = match state {
            SemiSyncState::Waiting(_) => {
                let has = held
                    .iter()
                    .find(|(i, _)| *i == target)
                    .map(|(_, r)| r.has());
                Exposure::Within(has.unwrap_or_default())
            }
            _ => Exposure::Unbounded,
        };
        self.memory = Memory {
            down_since_ms: None,
            semi_sync: Some(state),
            exposure,
            known_roles: std::mem::take(&mut self.memory.known_roles),
            primary_seen: held
                .iter()
                .find(|(i, _)| *i == target)
                .map(|(_, r)| r.has())
                .unwrap_or_default(),
            primary_seen_ms: Some(now_ms(self)),
            received_once: Some(Default::default()),
        };
        let source = self.replica_source();
        for i in others {
            if let Err(e) = self.servers[i]
                .follow(&source.source(), self.policy.semi_sync)
                .await
            {
                warn!(server = %self.name(i), error = %e, "cannot repoint; the next tick retries");
            }
        }
        Ok(target)
    }

    /// Planned switchover to replica `target`. Returns the record; its duration is the write
    /// pause (old primary fenced → new one writable).
    pub async fn switchover(&mut self, target: &str) -> Result<Promotion, Error> {
        let t = self.index(target)?;
        let old = self.primary;
        if t == old {
            return Err(Error::Refused(format!("{target} is already the primary")));
        }
        let role = self
            .status
            .borrow()
            .servers
            .iter()
            .find(|s| s.name == target)
            .map(|s| s.role);
        if role != Some(Role::Replica) {
            return Err(Error::Refused(format!(
                "{target} is not a serving replica (it is {})",
                role.map_or("unknown", Role::as_str)
            )));
        }
        let started = now_ms(self);
        let others: Vec<usize> = (0..self.servers.len())
            .filter(|&i| i != t && i != old)
            .collect();
        let mut candidates = vec![t];
        candidates.extend(others);
        if let Err(e) = self.hand_over(candidates, Leaving::Planned).await {
            if self.primary == old {
                // Nothing changed hands: give the writes back to the old primary.
                if let Err(undo) = self.servers[old].make_writable().await {
                    warn!(error = %undo, "cannot make the old primary writable again");
                }
            }
            return Err(e);
        }
        let record = self.record(old, t, "switchover", now_ms(self).saturating_sub(started));
        self.tick().await;
        Ok(record)
    }
}
