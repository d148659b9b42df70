//! Observations → the cluster's state: what each server is, judged by small pure predicates.
//! Nothing here talks to a server; [`super::plan`] decides what to do about it.

use std::collections::BTreeSet;

use super::{
    failover::{self, SOURCE_REFUSED},
    gtid::GtidSet,
    server::{Member, Replication, Report},
    status::{Finding, FindingKind, Role, ServerStatus},
};

/// The applier error of a replica handed a transaction out of order (MariaDB): it diverged.
pub const OUT_OF_ORDER_GTID: u32 = 1950;

/// Everything one tick observed, plus what earlier ticks concluded.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// Every member, in the loop's order.
    pub members: &'a [Member],
    /// Index of the current primary.
    pub primary: usize,
    /// Each member's report; `None`: it did not answer.
    pub reports: &'a [Option<Report>],
    /// Every server as last published.
    pub previous: &'a [ServerStatus],
    /// Members being re-seeded right now.
    pub seeding: Vec<bool>,
    /// Replicas seen receiving from the current primary since it became primary (`None`:
    /// since the loop started, all count).
    pub received_once: Option<&'a BTreeSet<String>>,
    /// Replication should be over TLS (the policy's).
    pub tls: bool,
}

/// How the primary is.
#[derive(Debug, Clone, PartialEq)]
pub enum PrimaryHealth {
    /// Answers; `read_only` until the loop makes it writable.
    Serving {
        /// Refuses writes for now.
        read_only: bool,
        /// Its commits wait for a semi-sync acknowledgement.
        semi_sync: bool,
    },
    /// Answers, but every replica following it lost its connection.
    Isolated,
    /// Did not answer.
    Lost,
}

/// How one other server is, relative to the primary.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaHealth {
    /// Did not answer.
    Unreachable,
    /// Its re-seed is running.
    Seeding,
    /// Holds transactions the primary lacks: never promoted, never read from.
    Diverged(String),
    /// Its replication stopped with an error it cannot recover from by itself.
    Broken(String),
    /// Replicates from the primary.
    Following {
        /// Its receiver is connected (or starting without an error).
        connected: bool,
        /// Transactions it has not received yet (0 when the primary is not observed).
        behind: u64,
        /// The receiver's or applier's last error, if it is retrying.
        error: Option<String>,
    },
    /// Not replicating from the primary: it must be pointed at it.
    Astray,
}

/// One non-primary server, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaView {
    /// Its index among the members.
    pub index: usize,
    /// Its health.
    pub health: ReplicaHealth,
    /// It accepts writes: a second writable server.
    pub writable: bool,
    /// Everything it has (executed and received), as last reported.
    pub has: GtidSet,
    /// Executed GTIDs as it printed them.
    pub gtids: Option<String>,
    /// Its receiver is connected to the primary.
    pub receiving: bool,
    /// Domains whose last transaction it wrote itself (MariaDB): a replica writes nothing,
    /// so unless another server has that transaction too, it is errant.
    pub self_written: Vec<String>,
}

/// The whole cluster, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// The primary.
    pub primary: PrimaryHealth,
    /// The primary's executed GTIDs as it printed them, when it answered.
    pub primary_gtids: Option<String>,
    /// Everything the primary has, when it serves.
    pub primary_has: Option<GtidSet>,
    /// Every other server, in member order.
    pub replicas: Vec<ReplicaView>,
    /// What is wrong.
    pub findings: Vec<Finding>,
}

/// Whether `r` replicates from `m`, over TLS exactly when `tls`: a replica configured the
/// other way (TLS turned on or off, or pointed while it was) is pointed again.
pub fn follows(r: &Replication, m: &Member, tls: bool) -> bool {
    r.source_host == m.host && r.source_port == m.port && r.ssl == tls
}

/// Why `r`'s replication cannot resume by itself, if it cannot: a diverged history
/// (errant), or a source that no longer has what it needs (broken).
pub fn unrecoverable(r: &Replication) -> Option<(Role, String)> {
    if r.sql_errno == OUT_OF_ORDER_GTID
        || (r.io_errno == SOURCE_REFUSED && r.io_error.contains("diverged"))
    {
        return Some((Role::Errant, format!("{}{}", r.sql_error, r.io_error)));
    }
    if r.io_errno == SOURCE_REFUSED {
        return Some((Role::Broken, r.io_error.clone()));
    }
    if r.sql_errno != 0 && !r.sql_running {
        return Some((Role::Broken, r.sql_error.clone()));
    }
    None
}

/// The primary is cut off: it answers, but no replica following it is connected
/// ([`failover::primary_cut_off`]).
///
/// Only replicas that have received from it count: one that never reached the new primary
/// (the old primary, on the far side of the cut that caused the failover) says nothing about
/// it, and counting it would fail over back and forth across that cut.
fn isolated(o: &Observed<'_>) -> bool {
    let primary = &o.members[o.primary];
    let receivers: Vec<failover::Receiver> = o
        .reports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != o.primary)
        .filter(|(i, _)| {
            o.received_once
                .is_none_or(|seen| seen.contains(&o.members[*i].name))
        })
        .filter_map(|(_, r)| r.as_ref()?.replication.as_ref())
        // A receiver stopped (by the loop, before a failover) says nothing about a cut.
        .filter(|r| follows(r, primary, o.tls) && !r.io_stopped)
        .map(|r| failover::Receiver {
            connected: r.io_running,
            errno: r.io_errno,
        })
        .collect();
    failover::primary_cut_off(&receivers)
}

fn replica_health(
    report: &Report,
    primary: &Member,
    primary_has: Option<&GtidSet>,
    tls: bool,
) -> ReplicaHealth {
    if let Some(p) = primary_has
        && let Some(why) = report.has().errant_against(p)
    {
        return ReplicaHealth::Diverged(why);
    }
    let Some(r) = report
        .replication
        .as_ref()
        .filter(|r| follows(r, primary, tls))
    else {
        return ReplicaHealth::Astray;
    };
    match unrecoverable(r) {
        Some((Role::Errant, why)) => return ReplicaHealth::Diverged(why),
        Some((_, why)) => return ReplicaHealth::Broken(why),
        None => {}
    }
    let behind = primary_has.map_or(0, |p| p.count().saturating_sub(report.has().count()));
    if r.io_stopped || !r.sql_running {
        // Stopped (by someone, or by the loop before a failover that did not come): start
        // it again.
        return ReplicaHealth::Astray;
    }
    if !r.io_running && r.io_errno != 0 {
        return ReplicaHealth::Following {
            connected: false,
            behind,
            error: Some(r.io_error.clone()),
        };
    }
    // Connected, or connecting without an error (just started): counts, so a repointed
    // replica does not degrade the new primary.
    ReplicaHealth::Following {
        connected: true,
        behind,
        error: None,
    }
}

/// Classify what one tick observed.
pub fn classify(o: &Observed<'_>) -> Classified {
    let primary_member = &o.members[o.primary];
    let primary_report = o.reports[o.primary].as_ref();
    let mut findings = Vec::new();
    let primary = match primary_report {
        None => {
            findings.push(Finding::about(
                FindingKind::PrimaryLost,
                &primary_member.name,
                "the primary does not answer",
            ));
            PrimaryHealth::Lost
        }
        Some(_) if isolated(o) => {
            findings.push(Finding::about(
                FindingKind::PrimaryIsolated,
                &primary_member.name,
                "no replica reaches the primary",
            ));
            PrimaryHealth::Isolated
        }
        Some(p) => PrimaryHealth::Serving {
            read_only: p.read_only,
            semi_sync: p.semi_sync_source,
        },
    };
    // Divergence and lag are judged against a primary that serves; a lost or isolated
    // primary's last position says nothing about what its replicas legitimately received.
    let primary_has = match primary {
        PrimaryHealth::Serving { .. } => primary_report.map(Report::has),
        _ => None,
    };
    let mut replicas = Vec::new();
    for (index, report) in o.reports.iter().enumerate() {
        if index == o.primary {
            continue;
        }
        let name = &o.members[index].name;
        let (health, writable) = match report {
            None => (ReplicaHealth::Unreachable, false),
            Some(_) if o.seeding[index] => (ReplicaHealth::Seeding, false),
            Some(r) => (
                replica_health(r, primary_member, primary_has.as_ref(), o.tls),
                !r.read_only,
            ),
        };
        if writable {
            findings.push(Finding::about(
                FindingKind::SecondWritable,
                name,
                "accepts writes though it is not the primary",
            ));
        }
        match &health {
            ReplicaHealth::Unreachable => findings.push(Finding::about(
                FindingKind::ReplicaUnreachable,
                name,
                "does not answer",
            )),
            ReplicaHealth::Seeding => findings.push(Finding::about(
                FindingKind::ReplicaSeeding,
                name,
                "being re-seeded from the primary",
            )),
            ReplicaHealth::Diverged(why) => {
                findings.push(Finding::about(FindingKind::ReplicaDiverged, name, why))
            }
            ReplicaHealth::Broken(why) => {
                findings.push(Finding::about(FindingKind::ReplicaBroken, name, why))
            }
            ReplicaHealth::Following { behind, .. } if *behind > super::semisync::CAUGHT_UP => {
                findings.push(Finding::about(
                    FindingKind::ReplicaLagging,
                    name,
                    format!("{behind} transactions behind"),
                ))
            }
            _ => {}
        }
        replicas.push(ReplicaView {
            index,
            health,
            writable,
            has: report.as_ref().map(Report::has).unwrap_or_default(),
            gtids: report.as_ref().map(|r| r.executed_text.clone()),
            receiving: report
                .as_ref()
                .and_then(|r| r.replication.as_ref())
                .is_some_and(|r| r.io_running && follows(r, primary_member, o.tls)),
            self_written: report
                .as_ref()
                .map(|r| {
                    r.executed
                        .ends_written_by(r.server_id)
                        .into_iter()
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Classified {
        primary,
        primary_gtids: primary_report.map(|r| r.executed_text.clone()),
        primary_has,
        replicas,
        findings,
    }
}

/// Whether `view` ends in a transaction it wrote itself that no other reachable server has,
/// nor the primary when last seen: written on a replica directly, or the last commit of a
/// former primary that nobody received. Judged when the primary cannot be asked.
pub fn holds_own_writes_alone(
    view: &ReplicaView,
    all: &[ReplicaView],
    primary_last_seen: &GtidSet,
) -> bool {
    view.self_written.iter().any(|domain| {
        !primary_last_seen.reaches_end_of(&view.has, domain)
            && !all.iter().any(|o| {
                o.index != view.index
                    && o.health != ReplicaHealth::Unreachable
                    && o.has.reaches_end_of(&view.has, domain)
            })
    })
}

/// Whether a replica may be promoted: it served as a replica when last published (or was
/// never published) and its replication can resume. A lost primary's replicas are not
/// compared with its last position: they legitimately received more since.
pub fn promotable(view: &ReplicaView, previous: Option<Role>) -> bool {
    let fit = matches!(
        view.health,
        ReplicaHealth::Following { .. } | ReplicaHealth::Astray
    );
    fit && matches!(previous, Some(Role::Replica) | None)
}
