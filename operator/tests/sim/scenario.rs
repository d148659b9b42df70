//! Fault sequences against the simulated world: what can happen ([`Event`]), a sequence
//! ([`Scenario`]) and its generator, and a run of the real topology loop through it with the
//! checks after every step ([`run`]). Shared by the property tests and the benchmark.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use chat_operator::topology::{
    manager::{Clock, Topology},
    plan::Policy,
    server::Credentials,
    status::TopologyStatus,
};
use proptest::prelude::*;

use super::{SimServer, Tx, World};

/// Loop milliseconds per tick.
const TICK_MS: u64 = 1_000;
/// Ticks after the faults stop within which the cluster must be Ready: the failover timeout
/// (10 ticks) twice over, and a re-seed.
const HEAL_TICKS: usize = 30;

#[derive(Debug, Clone)]
pub enum Event {
    /// A client writes to the published primary.
    Write,
    /// A client with an old connection writes to this server.
    StrayWrite(usize),
    /// Someone with root writes on this server, read-only or not.
    ErrantWrite(usize),
    Crash(usize),
    /// Start a crashed server; whether its unacknowledged last commit survived.
    Restart(usize, bool),
    Freeze(usize),
    Thaw(usize),
    /// The loop cannot reach this server (clients and replication still can).
    CutOperator(usize),
    HealOperator(usize),
    /// Replication between these two servers is cut.
    Cut(usize, usize),
    HealCut(usize, usize),
    /// The loop's statements to this server hang.
    Hang(usize),
    Unhang(usize),
    /// The server purges its binary logs.
    Purge(usize),
    /// Nothing happens for a tick.
    Quiet,
}

fn event(n: usize) -> impl Strategy<Value = Event> {
    let s = 0..n;
    prop_oneof![
        6 => Just(Event::Write),
        4 => Just(Event::Quiet),
        1 => s.clone().prop_map(Event::StrayWrite),
        1 => s.clone().prop_map(Event::ErrantWrite),
        1 => s.clone().prop_map(Event::Crash),
        2 => (s.clone(), any::<bool>()).prop_map(|(i, keep)| Event::Restart(i, keep)),
        1 => s.clone().prop_map(Event::Freeze),
        2 => s.clone().prop_map(Event::Thaw),
        1 => s.clone().prop_map(Event::CutOperator),
        2 => s.clone().prop_map(Event::HealOperator),
        1 => (s.clone(), s.clone()).prop_map(|(a, b)| Event::Cut(a, b)),
        2 => (s.clone(), s.clone()).prop_map(|(a, b)| Event::HealCut(a, b)),
        1 => s.clone().prop_map(Event::Hang),
        2 => s.clone().prop_map(Event::Unhang),
        1 => s.prop_map(Event::Purge),
    ]
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub replicas: usize,
    pub allow_data_loss: bool,
    pub events: Vec<Event>,
}

pub fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=4, any::<bool>()).prop_flat_map(|(replicas, allow_data_loss)| {
        prop::collection::vec(event(replicas + 1), 1..80).prop_map(move |events| Scenario {
            replicas,
            allow_data_loss,
            events,
        })
    })
}

pub fn apply(w: &mut World, e: &Event) {
    match *e {
        Event::Write | Event::Quiet => {}
        Event::StrayWrite(i) => {
            w.write(i);
        }
        Event::ErrantWrite(i) => w.errant_write(i),
        Event::Crash(i) => w.crash(i),
        Event::Restart(i, keep) => w.restart(i, keep),
        Event::Freeze(i) => {
            if !w.dbs[i].crashed {
                w.dbs[i].frozen = true;
            }
        }
        Event::Thaw(i) => w.thaw(i),
        Event::CutOperator(i) => w.dbs[i].operator_cut = true,
        Event::HealOperator(i) => w.dbs[i].operator_cut = false,
        Event::Cut(a, b) if a != b => {
            w.cut.insert((a.min(b), a.max(b)));
        }
        Event::HealCut(a, b) => {
            w.cut.remove(&(a.min(b), a.max(b)));
        }
        Event::Cut(..) => {}
        Event::Hang(i) => w.dbs[i].hung = true,
        Event::Unhang(i) => w.dbs[i].hung = false,
        Event::Purge(i) => w.dbs[i].purged = w.dbs[i].log.len(),
    }
}

pub struct Run {
    pub world: Arc<Mutex<World>>,
    topology: Topology<SimServer>,
    pub status: TopologyStatus,
    allow_data_loss: bool,
    /// Every distinct state the loop published: its view, not the world's.
    pub states: BTreeSet<String>,
}

fn primary_index(status: &TopologyStatus) -> usize {
    let port = status.primary_address.rsplit(':').next().unwrap();
    World::index_of_port(port.parse().unwrap()).unwrap()
}

impl Run {
    pub fn new(sc: &Scenario) -> Self {
        let n = sc.replicas + 1;
        let world = Arc::new(Mutex::new(World::new(n)));
        let clock: Clock = {
            let w = world.clone();
            Arc::new(move || w.lock().unwrap().clock_ms)
        };
        let servers = (0..n).map(|i| SimServer::new(world.clone(), i)).collect();
        let policy = Policy {
            allow_data_loss: sc.allow_data_loss,
            ..Policy::default()
        };
        let credentials = Credentials {
            admin_user: "admin".into(),
            admin_password: "a".into(),
            repl_user: "repl".into(),
            repl_password: "r".into(),
            ca_pem: None,
        };
        let (topology, rx) =
            Topology::with_servers(servers, "db-0", credentials, policy, clock).unwrap();
        let status = rx.borrow().clone();
        Self {
            world,
            topology,
            status,
            allow_data_loss: sc.allow_data_loss,
            states: BTreeSet::new(),
        }
    }

    /// One tick of the loop between two rounds of replication, then the checks.
    pub async fn step(&mut self, write: bool) -> Result<(), String> {
        self.world.lock().unwrap().settle();
        self.status = self.topology.tick().await;
        self.states.insert(state_of(&self.status));
        // Re-seeds run as tasks beside the loop.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut w = self.world.lock().unwrap();
        w.settle();
        if write && self.status.primary_ready {
            w.write(primary_index(&self.status));
            w.settle();
        }
        w.clock_ms += TICK_MS;
        if std::env::var_os("SIM_TRACE").is_some() {
            trace(&self.status, &w);
        }
        self.check(&w)
    }

    /// The acknowledged writes that must never be lost.
    fn protected(&self, w: &World) -> Vec<Tx> {
        if !self.allow_data_loss {
            return w.acked.iter().map(|a| a.tx).collect();
        }
        w.acked[w.exposed..]
            .iter()
            .filter(|a| a.replicated)
            .map(|a| a.tx)
            .collect()
    }

    fn check(&self, w: &World) -> Result<(), String> {
        let writable: Vec<usize> = (0..w.dbs.len())
            .filter(|&i| w.reachable(i) && !w.dbs[i].read_only)
            .collect();
        if writable.len() > 1 {
            return Err(format!("servers {writable:?} all take writes"));
        }
        let protected = self.protected(w);
        let mut positions = BTreeSet::new();
        for tx in &protected {
            if !positions.insert(tx.seq) {
                return Err(format!(
                    "two acknowledged writes at position {}: {protected:?}",
                    tx.seq
                ));
            }
        }
        if self.status.primary_ready {
            let p = primary_index(&self.status);
            let log: BTreeSet<Tx> = w.dbs[p].log.iter().copied().collect();
            if let Some(lost) = protected.iter().find(|tx| !log.contains(tx)) {
                return Err(format!(
                    "acknowledged write {lost:?} is not on the primary db-{p}"
                ));
            }
        }
        Ok(())
    }

    /// Every server replicates from the primary, semi-sync waits, and the loop says Ready.
    pub fn healed(&self) -> bool {
        let w = self.world.lock().unwrap();
        let p = primary_index(&self.status);
        self.status.ready()
            && w.dbs[p].semi_sync_source
            && (0..w.dbs.len()).filter(|&i| i != p).all(|i| {
                let d = &w.dbs[i];
                d.source == Some(p) && d.io_connected && d.sql_on && d.read_only
            })
    }
}

/// The loop's view, without names, positions or reasons: roles, readiness, semi-sync and
/// the kinds of finding.
fn state_of(s: &TopologyStatus) -> String {
    let mut roles: Vec<&str> = s.servers.iter().map(|x| x.role.as_str()).collect();
    roles.sort_unstable();
    let mut kinds: Vec<&str> = s.findings.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    format!(
        "{roles:?} ready={} {:?} {kinds:?}",
        s.primary_ready, s.semi_sync
    )
}

/// One line per server and the loop's view: `SIM_TRACE=1` with a replayed sequence.
fn trace(status: &TopologyStatus, w: &World) {
    eprintln!(
        "t={} primary={} ready={} semi={:?} pending={:?}",
        w.clock_ms, status.primary, status.primary_ready, status.semi_sync, status.failover_pending
    );
    for (i, d) in w.dbs.iter().enumerate() {
        let role = status.servers.iter().find(|s| s.name == format!("db-{i}"));
        eprintln!(
            "  db-{i} {:?} last={:?} relay={} ro={} src={:?} io={}/{} err={} sql={} ss={} pend={} {}{}{}",
            role.map(|r| r.role),
            d.log.last(),
            d.relay.len(),
            d.read_only,
            d.source,
            d.io_on,
            d.io_connected,
            d.io_errno,
            d.sql_on,
            d.semi_sync_source,
            d.pending.len(),
            if d.crashed { "CRASHED " } else { "" },
            if d.frozen { "FROZEN " } else { "" },
            if d.hung || d.operator_cut {
                "UNREACHABLE"
            } else {
                ""
            },
        );
    }
}

/// Drive `f` on a single-threaded runtime: re-seed tasks and the loop interleave the same
/// way on every run.
pub fn deterministic<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

impl Run {
    /// A new world for `sc`, three steps in (a healthy cluster, with writes).
    pub async fn started(sc: &Scenario) -> Result<Self, String> {
        let mut run = Run::new(sc);
        for _ in 0..3 {
            run.step(true).await?;
        }
        Ok(run)
    }
}

pub fn run(sc: &Scenario) -> Result<BTreeSet<String>, String> {
    deterministic(async {
        let mut run = Run::started(sc).await?;
        if !run.healed() {
            return Err(format!("a new cluster is not Ready: {:#?}", run.status));
        }
        for (n, e) in sc.events.iter().enumerate() {
            apply(&mut run.world.lock().unwrap(), e);
            run.step(matches!(e, Event::Write))
                .await
                .map_err(|why| format!("after event {n} ({e:?}): {why}"))?;
        }
        run.world.lock().unwrap().heal();
        for _ in 0..HEAL_TICKS {
            run.step(true)
                .await
                .map_err(|why| format!("while healing: {why}"))?;
            if run.healed() {
                return Ok(run.states);
            }
        }
        Err(format!(
            "not Ready {HEAL_TICKS} ticks after the faults stopped: {:#?}\n{:#?}",
            run.status,
            run.world.lock().unwrap()
        ))
    })
}
