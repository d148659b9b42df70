//! A deterministic model of a MariaDB replication cluster, behind the topology loop's
//! [`DbServer`] trait: binary logs as sequences of GTIDs, relay logs, receiver and applier
//! threads, read-only flags, semi-sync acknowledgement after sync (one replica's, as MariaDB
//! waits for), purged logs, and the faults a real cluster meets: crashes (with or without the
//! commit in flight), freezes, one-way or two-way network cuts, hanging statements.
//!
//! What it keeps of MariaDB's behaviour, each from the server's documentation or from runs
//! against real servers in `tests/tests/topology.rs`:
//! - a receiver refuses (1236) a source whose log does not extend the replica's history:
//!   "diverged" when they differ, "not in the master's binlog" when the replica is ahead or
//!   needs purged logs;
//! - `CHANGE MASTER` and `RESET SLAVE ALL` drop the relay log; a restart recovers what was
//!   in the binary log, starts read-only, replication stopped, semi-sync off;
//! - a fence ends client sessions: their waiting commits stay in the log, unacknowledged;
//!   switching semi-sync off acknowledges the commits still waiting.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod scenario;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chat_operator::topology::{
    db::DbServer,
    dialect::Source,
    gtid::GtidSet,
    seed,
    server::{self, Member, Replication, Report},
    status::SemiSyncState,
};

/// A transaction: MariaDB GTID `0-origin-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tx {
    pub origin: u32,
    pub seq: u64,
}

impl Tx {
    fn text(self) -> String {
        format!("0-{}-{}", self.origin, self.seq)
    }
}

const HOST: &str = "sim";
const BASE_PORT: u16 = 3000;

/// One simulated server.
#[derive(Debug, Clone, Default)]
pub struct Db {
    pub log: Vec<Tx>,
    pub relay: Vec<Tx>,
    /// The first `purged` entries of `log` are gone from its binary log.
    pub purged: usize,
    pub read_only: bool,
    pub source: Option<usize>,
    pub io_on: bool,
    pub io_connected: bool,
    pub sql_on: bool,
    pub io_errno: u32,
    pub io_error: String,
    pub semi_sync_replica: bool,
    /// As a primary: commits wait for one acknowledgement.
    pub semi_sync_source: bool,
    /// Committed, in the log, waiting for an acknowledgement.
    pub pending: Vec<Tx>,
    /// Sent by a client while frozen: committed (if still writable) once thawed.
    pub inflight: usize,
    pub crashed: bool,
    pub frozen: bool,
    /// Statements from the operator hang (and time out); clients and replication work.
    pub hung: bool,
    pub operator_cut: bool,
    /// A copy onto this server fails (its disk is full, say).
    pub seed_fails: bool,
}

/// An acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tx: Tx,
    /// Acknowledged after a replica received it (not degraded).
    pub replicated: bool,
}

/// Every server and link.
#[derive(Debug, Default)]
pub struct World {
    pub dbs: Vec<Db>,
    /// Replication between these two servers is cut (both directions).
    pub cut: BTreeSet<(usize, usize)>,
    pub acked: Vec<Ack>,
    /// Acknowledgements before this index came before a primary stopped waiting for
    /// replicas (semi-sync switched off, or a restart): `allowDataLoss` may give them up.
    pub exposed: usize,
    pub clock_ms: u64,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl World {
    /// `n` servers; server 0 is a writable primary, the others replicate from it.
    pub fn new(n: usize) -> Self {
        let mut dbs = vec![
            Db {
                read_only: true,
                ..Db::default()
            };
            n
        ];
        dbs[0].read_only = false;
        for db in dbs.iter_mut().skip(1) {
            db.source = Some(0);
            db.io_on = true;
            db.sql_on = true;
            db.semi_sync_replica = true;
        }
        Self {
            dbs,
            ..Self::default()
        }
    }

    pub fn port(i: usize) -> u16 {
        BASE_PORT + u16::try_from(i).unwrap()
    }

    pub fn index_of_port(port: u16) -> Option<usize> {
        port.checked_sub(BASE_PORT).map(usize::from)
    }

    fn answers(&self, i: usize) -> bool {
        let d = &self.dbs[i];
        !d.crashed && !d.frozen
    }

    /// The operator can talk to server `i`.
    pub fn reachable(&self, i: usize) -> bool {
        let d = &self.dbs[i];
        self.answers(i) && !d.hung && !d.operator_cut
    }

    fn history(&self, i: usize) -> Vec<Tx> {
        let d = &self.dbs[i];
        d.log.iter().chain(d.relay.iter()).copied().collect()
    }

    /// A client commits on server `i`; false: refused.
    pub fn write(&mut self, i: usize) -> bool {
        let d = &mut self.dbs[i];
        if d.crashed || d.read_only {
            return false;
        }
        if d.frozen {
            d.inflight += 1;
            return true;
        }
        self.commit(i);
        true
    }

    /// Someone with root writes on server `i` directly, read-only or not (an errant
    /// transaction); nobody waits for it.
    pub fn errant_write(&mut self, i: usize) {
        let d = &mut self.dbs[i];
        if d.crashed || d.frozen {
            return;
        }
        let seq = d.log.last().map_or(0, |t| t.seq) + 1;
        d.log.push(Tx {
            origin: u32::try_from(i).unwrap() + 1,
            seq,
        });
    }

    fn commit(&mut self, i: usize) {
        let seq = self.dbs[i].log.last().map_or(0, |t| t.seq) + 1;
        let tx = Tx {
            origin: u32::try_from(i).unwrap() + 1,
            seq,
        };
        let d = &mut self.dbs[i];
        d.log.push(tx);
        if d.semi_sync_source {
            d.pending.push(tx);
        } else {
            self.acked.push(Ack {
                tx,
                replicated: false,
            });
        }
    }

    /// Move replication along until nothing changes: receivers fetch, appliers apply,
    /// waiting commits are acknowledged.
    pub fn settle(&mut self) {
        for _ in 0..4 {
            for r in 0..self.dbs.len() {
                self.receive(r);
                let d = &mut self.dbs[r];
                if d.sql_on && d.answers_self() {
                    let relay = std::mem::take(&mut d.relay);
                    d.log.extend(relay);
                }
            }
            self.acknowledge();
        }
    }

    fn receive(&mut self, r: usize) {
        let Some(s) = self.dbs[r].source else {
            return;
        };
        if !self.answers(r) || !self.dbs[r].io_on {
            return;
        }
        if !self.answers(s) || self.cut.contains(&link(r, s)) || s == r {
            let d = &mut self.dbs[r];
            d.io_connected = false;
            d.io_errno = 2013;
            d.io_error = "Lost connection to server during query".into();
            return;
        }
        let have = self.history(r);
        let log = &self.dbs[s].log;
        let refuse = |why: &str| (1236u32, why.to_string());
        let error = if let Some(j) = (0..have.len().min(log.len())).find(|&j| have[j] != log[j]) {
            Some(refuse(&format!(
                "Got fatal error 1236 from master: requested GTID {} is not in the master's binlog; it probably means that the slave has diverged",
                have[j].text()
            )))
        } else if have.len() > log.len() {
            Some(refuse(
                "Got fatal error 1236 from master: requested GTID is not in the master's binlog",
            ))
        } else if have.len() < self.dbs[s].purged {
            Some(refuse(
                "Got fatal error 1236 from master: could not find GTID state in the binlogs (purged)",
            ))
        } else {
            None
        };
        let fresh: Vec<Tx> = log[have.len().min(log.len())..].to_vec();
        let d = &mut self.dbs[r];
        match error {
            Some((errno, text)) => {
                d.io_on = false;
                d.io_connected = false;
                d.io_errno = errno;
                d.io_error = text;
            }
            None => {
                d.relay.extend(fresh);
                d.io_connected = true;
                d.io_errno = 0;
                d.io_error.clear();
            }
        }
    }

    fn acknowledge(&mut self) {
        for s in 0..self.dbs.len() {
            if !self.answers(s) || self.dbs[s].pending.is_empty() {
                continue;
            }
            let pending = std::mem::take(&mut self.dbs[s].pending);
            let mut still = Vec::new();
            for tx in pending {
                let received = (0..self.dbs.len()).any(|r| {
                    let d = &self.dbs[r];
                    d.source == Some(s)
                        && d.io_connected
                        && d.semi_sync_replica
                        && self.answers(r)
                        && !self.cut.contains(&link(r, s))
                        && self.history(r).contains(&tx)
                });
                if received && still.is_empty() {
                    self.acked.push(Ack {
                        tx,
                        replicated: true,
                    });
                } else {
                    still.push(tx);
                }
            }
            self.dbs[s].pending = still;
        }
    }

    pub fn crash(&mut self, i: usize) {
        let d = &mut self.dbs[i];
        d.crashed = true;
        d.frozen = false;
        d.pending.clear();
        d.inflight = 0;
    }

    /// Start a crashed server again; `keep_last`: its last commit, if nobody was told of
    /// it, survived recovery.
    pub fn restart(&mut self, i: usize, keep_last: bool) {
        if !self.dbs[i].crashed {
            return;
        }
        let acked: BTreeSet<Tx> = self.acked.iter().map(|a| a.tx).collect();
        let d = &mut self.dbs[i];
        if !keep_last
            && let Some(last) = d.log.last()
            && !acked.contains(last)
            && d.log.len() > d.purged
        {
            d.log.pop();
        }
        d.crashed = false;
        d.read_only = true;
        if d.semi_sync_source {
            self.exposed = self.acked.len();
        }
        let d = &mut self.dbs[i];
        d.semi_sync_source = false;
        d.io_on = false;
        d.io_connected = false;
        d.sql_on = false;
        d.io_errno = 0;
        d.io_error.clear();
        d.relay.clear();
    }

    pub fn thaw(&mut self, i: usize) {
        if !self.dbs[i].frozen {
            return;
        }
        self.dbs[i].frozen = false;
        let n = std::mem::take(&mut self.dbs[i].inflight);
        for _ in 0..n {
            if !self.dbs[i].read_only {
                self.commit(i);
            }
        }
    }

    /// Everything back: servers started and thawed, links and the operator reconnected.
    pub fn heal(&mut self) {
        for i in 0..self.dbs.len() {
            self.restart(i, true);
            self.thaw(i);
            let d = &mut self.dbs[i];
            d.hung = false;
            d.operator_cut = false;
        }
        self.cut.clear();
    }
}

impl Db {
    fn answers_self(&self) -> bool {
        !self.crashed && !self.frozen
    }

    /// STOP SLAVE: both threads stop; what was received stays.
    fn stop_threads(&mut self) {
        self.io_on = false;
        self.io_connected = false;
        self.sql_on = false;
    }
}

/// One server of the world, as the loop sees it.
#[derive(Clone)]
pub struct SimServer {
    world: Arc<Mutex<World>>,
    index: usize,
    member: Member,
}

impl SimServer {
    pub fn new(world: Arc<Mutex<World>>, index: usize) -> Self {
        Self {
            world,
            index,
            member: Member {
                name: format!("db-{index}"),
                host: HOST.into(),
                port: World::port(index),
            },
        }
    }

    fn timeout(&self) -> server::Error {
        server::Error::Timeout {
            server: self.member.name.clone(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Run `f` on this server if the operator reaches it.
    fn with<T>(&self, f: impl FnOnce(&mut World, usize) -> T) -> server::Result<T> {
        let mut w = self.world.lock().unwrap();
        if !w.reachable(self.index) {
            return Err(self.timeout());
        }
        Ok(f(&mut w, self.index))
    }
}

fn gtids(log: &[Tx]) -> (String, GtidSet) {
    let text = log.last().map(|t| t.text()).unwrap_or_default();
    let set = GtidSet::parse_mariadb(&text).unwrap();
    (text, set)
}

fn fence(w: &mut World, i: usize) {
    let d = &mut w.dbs[i];
    d.read_only = true;
    d.pending.clear();
    d.inflight = 0;
}

impl DbServer for SimServer {
    fn member(&self) -> &Member {
        &self.member
    }

    async fn report(&mut self) -> server::Result<Report> {
        self.with(|w, i| {
            let d = &w.dbs[i];
            let (executed_text, executed) = gtids(&d.log);
            let replication = d.source.map(|s| {
                let (received_text, received) = gtids(&w.history(i));
                Replication {
                    source_host: HOST.into(),
                    source_port: World::port(s),
                    io_running: d.io_on && d.io_connected,
                    io_stopped: !d.io_on,
                    sql_running: d.sql_on,
                    io_errno: d.io_errno,
                    io_error: d.io_error.clone(),
                    sql_errno: 0,
                    sql_error: String::new(),
                    received,
                    received_text,
                    ssl: false,
                }
            });
            Report {
                version: "11.8.3-MariaDB-sim".into(),
                read_only: d.read_only,
                semi_sync_source: d.semi_sync_source,
                server_id: u32::try_from(i).unwrap() + 1,
                executed_text,
                executed,
                replication,
            }
        })
    }

    async fn fence(&mut self, _within: Duration) -> server::Result<()> {
        self.with(fence)
    }

    async fn stop_receiver(&mut self, _within: Duration) -> server::Result<()> {
        self.with(|w, i| {
            let d = &mut w.dbs[i];
            d.io_on = false;
            d.io_connected = false;
        })
    }

    async fn stop_replication(&mut self) -> server::Result<()> {
        self.with(|w, i| w.dbs[i].stop_threads())
    }

    async fn follow(&mut self, source: &Source<'_>, semi_sync: bool) -> server::Result<()> {
        let s = World::index_of_port(source.port).expect("a simulated source");
        self.with(|w, i| {
            fence(w, i);
            let d = &mut w.dbs[i];
            d.semi_sync_source = false;
            d.source = Some(s);
            d.relay.clear();
            d.io_errno = 0;
            d.io_error.clear();
            d.semi_sync_replica = semi_sync;
            d.io_on = true;
            d.io_connected = false;
            d.sql_on = true;
        })
    }

    async fn set_semi_sync(&mut self, state: SemiSyncState) -> server::Result<()> {
        self.with(|w, i| {
            let on = matches!(state, SemiSyncState::Waiting(_));
            w.dbs[i].semi_sync_source = on;
            if !on {
                // Commits that were waiting go through, acknowledged without a replica.
                for tx in std::mem::take(&mut w.dbs[i].pending) {
                    w.acked.push(Ack {
                        tx,
                        replicated: false,
                    });
                }
                w.exposed = w.acked.len();
            }
        })
    }

    async fn make_writable(&mut self) -> server::Result<()> {
        self.with(|w, i| {
            let d = &mut w.dbs[i];
            d.stop_threads();
            d.source = None;
            d.relay.clear();
            d.io_errno = 0;
            d.io_error.clear();
            d.read_only = false;
        })
    }

    async fn wait_applied(&mut self, gtids_text: &str, _wait: Duration) -> server::Result<bool> {
        let wanted = GtidSet::parse_mariadb(gtids_text).unwrap();
        self.with(|w, i| {
            let d = &mut w.dbs[i];
            if d.sql_on {
                let relay = std::mem::take(&mut d.relay);
                d.log.extend(relay);
            }
            gtids(&d.log).1.contains(&wanted)
        })
    }

    fn another(&self) -> Self {
        self.clone()
    }

    async fn reseed_from(
        &mut self,
        primary: &mut Self,
        _source: &Source<'_>,
    ) -> Result<(), seed::Error> {
        let snapshot = primary.with(|w, p| w.dbs[p].log.clone())?;
        if self.with(|w, i| w.dbs[i].seed_fails)? {
            return Err(server::Error::Sql {
                server: self.member.name.clone(),
                source: sqlx::Error::Protocol("no space left on device".into()),
            }
            .into());
        }
        self.with(|w, i| {
            fence(w, i);
            let d = &mut w.dbs[i];
            d.stop_threads();
            d.source = None;
            d.relay.clear();
            d.log = snapshot;
            // RESET MASTER: its own binary log starts empty after the copy.
            d.purged = d.log.len();
        })?;
        Ok(())
    }
}
