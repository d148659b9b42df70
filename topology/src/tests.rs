//! The pure pipeline, classify → plan, on hand-written observations. The simulator in
//! `operator/tests/topology_sim.rs` runs it on thousands of generated ones.

use super::{
    classify::{Observed, PrimaryHealth, ReplicaHealth, classify, holds_own_writes_alone},
    gtid::GtidSet,
    plan::{Action, Exposure, Memory, Policy, plan},
    server::{Member, Replication, Report},
    status::{FindingKind, Role, SemiSyncState, ServerStatus},
};

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("db-{i}"),
            host: format!("db-{i}"),
            port: 3306,
        })
        .collect()
}

fn report(gtids: &str, server_id: u32) -> Report {
    Report {
        version: "11.8.3-MariaDB".into(),
        read_only: true,
        semi_sync_source: false,
        server_id,
        executed_text: gtids.into(),
        executed: GtidSet::parse_mariadb(gtids).unwrap_or_default(),
        replication: None,
    }
}

fn primary(gtids: &str) -> Option<Report> {
    Some(Report {
        read_only: false,
        semi_sync_source: true,
        ..report(gtids, 1)
    })
}

/// A replica of `db-0` with receiver `io` (connected), its last error, applier running.
fn replica(gtids: &str, server_id: u32, io: bool, io_errno: u32) -> Option<Report> {
    Some(Report {
        replication: Some(Replication {
            source_host: "db-0".into(),
            source_port: 3306,
            io_running: io,
            sql_running: true,
            io_errno,
            io_error: if io_errno == 1236 {
                "the slave has diverged".into()
            } else if io_errno != 0 {
                "lost connection".into()
            } else {
                String::new()
            },
            received: GtidSet::parse_mariadb(gtids).unwrap_or_default(),
            received_text: gtids.into(),
            ..Replication::default()
        }),
        ..report(gtids, server_id)
    })
}

fn observed<'a>(
    members: &'a [Member],
    reports: &'a [Option<Report>],
    previous: &'a [ServerStatus],
) -> Observed<'a> {
    Observed {
        members,
        primary: 0,
        reports,
        previous,
        seeding: vec![false; members.len()],
        received_once: None,
        tls: false,
    }
}

fn waiting() -> Memory {
    Memory {
        semi_sync: Some(SemiSyncState::Waiting(1)),
        exposure: Exposure::Within(GtidSet::default()),
        ..Memory::default()
    }
}

#[test]
fn a_primary_no_replica_reaches_is_isolated_but_a_refused_replica_does_not_count() {
    let m = members(3);
    let cut = [
        primary("0-1-10"),
        replica("0-1-10", 2, false, 2013),
        replica("0-1-10", 3, false, 2013),
    ];
    assert_eq!(
        classify(&observed(&m, &cut, &[])).primary,
        PrimaryHealth::Isolated
    );
    let refused = [
        primary("0-1-10"),
        replica("0-1-10", 2, false, 1236),
        replica("0-1-10", 3, true, 0),
    ];
    let c = classify(&observed(&m, &refused, &[]));
    assert!(matches!(c.primary, PrimaryHealth::Serving { .. }));
    assert!(matches!(c.replicas[0].health, ReplicaHealth::Diverged(_)));
    assert!(
        c.findings
            .iter()
            .any(|f| f.kind == FindingKind::ReplicaDiverged)
    );
}

#[test]
fn replicas_are_judged_against_the_serving_primary() {
    let m = members(4);
    let mut stopped = replica("0-1-9", 3, false, 0);
    if let Some(r) = stopped.as_mut().and_then(|r| r.replication.as_mut()) {
        r.sql_running = false;
    }
    let reports = [
        primary("0-1-10"),
        // Same position, written by itself: diverged.
        replica("0-2-10", 2, true, 0),
        stopped,
        None,
    ];
    let c = classify(&observed(&m, &reports, &[]));
    assert!(matches!(c.replicas[0].health, ReplicaHealth::Diverged(_)));
    assert_eq!(c.replicas[1].health, ReplicaHealth::Astray);
    assert_eq!(c.replicas[2].health, ReplicaHealth::Unreachable);
}

#[test]
fn a_replica_configured_for_the_other_transport_is_pointed_again() {
    let m = members(2);
    let plain = [primary("0-1-10"), replica("0-1-10", 2, true, 0)];
    let mut tls = observed(&m, &plain, &[]);
    assert!(matches!(
        classify(&tls).replicas[0].health,
        ReplicaHealth::Following { .. }
    ));
    // TLS turned on: the plain-text replica no longer counts as following.
    tls.tls = true;
    assert_eq!(classify(&tls).replicas[0].health, ReplicaHealth::Astray);
    let mut over_tls = plain.clone();
    if let Some(r) = over_tls[1].as_mut().and_then(|r| r.replication.as_mut()) {
        r.ssl = true;
    }
    let mut o = observed(&m, &over_tls, &[]);
    o.tls = true;
    assert!(matches!(
        classify(&o).replicas[0].health,
        ReplicaHealth::Following { .. }
    ));
    // And turned off again.
    o.tls = false;
    assert_eq!(classify(&o).replicas[0].health, ReplicaHealth::Astray);
}

#[test]
fn a_read_only_primary_becomes_writable_last() {
    let m = members(3);
    let mut writable_replica = replica("0-1-10", 2, true, 0);
    if let Some(r) = writable_replica.as_mut() {
        r.read_only = false;
    }
    let mut restarted = primary("0-1-10");
    if let Some(r) = restarted.as_mut() {
        r.read_only = true;
        r.semi_sync_source = false;
    }
    let reports = [restarted, writable_replica, report("0-1-10", 3).into()];
    let o = observed(&m, &reports, &[]);
    let p = plan(&o, &classify(&o), &Policy::default(), &waiting(), 0);
    assert_eq!(
        p.actions,
        [
            Action::Fence(1),
            Action::Follow(2),
            // It restarted: its semi-sync setting is gone, and it must be set again first.
            Action::SetSemiSync(SemiSyncState::Waiting(1)),
            Action::MakeWritable,
        ]
    );
    assert_eq!(p.memory.exposure, Exposure::Unbounded);
    assert!(!p.primary_ready);
}

#[test]
fn what_was_acknowledged_alone_is_measured_once_semi_sync_waits() {
    let m = members(2);
    let reports = [primary("0-1-42"), replica("0-1-42", 2, true, 0)];
    let o = observed(&m, &reports, &[]);
    let memory = Memory {
        exposure: Exposure::Unmeasured,
        ..waiting()
    };
    let p = plan(&o, &classify(&o), &Policy::default(), &memory, 0);
    assert_eq!(
        p.memory.exposure,
        Exposure::Within(GtidSet::parse_mariadb("0-1-42").unwrap_or_default())
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        Exposure::Unbounded.after_switch(None, SemiSyncState::Waiting(1)),
        Exposure::Unmeasured
    );
    assert_eq!(
        Exposure::Within(GtidSet::default())
            .after_switch(Some(SemiSyncState::Waiting(1)), SemiSyncState::Degraded),
        Exposure::Unbounded
    );
}

#[test]
fn a_lost_primary_is_waited_for_then_replaced_and_a_returning_writer_fenced() {
    let m = members(3);
    let previous: Vec<ServerStatus> = m
        .iter()
        .enumerate()
        .map(|(i, x)| ServerStatus {
            name: x.name.clone(),
            address: String::new(),
            role: if i == 0 { Role::Primary } else { Role::Replica },
            gtids: String::new(),
            behind: 0,
            error: None,
        })
        .collect();
    let reports = [
        None,
        replica("0-1-10", 2, false, 2013),
        replica("0-1-9", 3, false, 2013),
    ];
    let o = observed(&m, &reports, &previous);
    let c = classify(&o);
    let early = plan(&o, &c, &Policy::default(), &waiting(), 1_000);
    assert!(early.actions.is_empty());
    assert!(
        early
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::FailoverHeld)
    );
    let memory = Memory {
        down_since_ms: Some(1_000),
        ..waiting()
    };
    let due = plan(&o, &c, &Policy::default(), &memory, 11_000);
    assert_eq!(
        due.actions,
        [Action::Failover {
            promote: 1,
            repoint: vec![2],
            cause: "primary unreachable".into(),
            primary_answers: false,
        }]
    );
    // db-2 comes back writable (a former primary) while db-0 is still lost.
    let mut writer = replica("0-1-9", 3, false, 2013);
    if let Some(r) = writer.as_mut() {
        r.read_only = false;
    }
    let reports = [None, replica("0-1-10", 2, false, 2013), writer];
    let o = observed(&m, &reports, &previous);
    let p = plan(&o, &classify(&o), &Policy::default(), &memory, 2_000);
    assert_eq!(p.actions, [Action::Fence(2)]);
}

#[test]
fn a_replica_ending_in_its_own_write_nobody_else_has_holds_it_alone() {
    let m = members(3);
    let reports = [
        None,
        replica("0-2-11", 2, false, 2013),
        replica("0-1-10", 3, false, 2013),
    ];
    let o = observed(&m, &reports, &[]);
    let c = classify(&o);
    let seen = GtidSet::parse_mariadb("0-1-10").unwrap_or_default();
    assert!(holds_own_writes_alone(&c.replicas[0], &c.replicas, &seen));
    assert!(!holds_own_writes_alone(&c.replicas[1], &c.replicas, &seen));
    // The primary had it when last seen (a former primary's write, replicated): not alone.
    let seen = GtidSet::parse_mariadb("0-2-11").unwrap_or_default();
    assert!(!holds_own_writes_alone(&c.replicas[0], &c.replicas, &seen));
}
