//! GTID sets of both engines, compared the way failover needs: does one server have every
//! transaction another has, and which transactions does a replica have that the primary does
//! not (errant ones).
//!
//! - MySQL: `uuid:1-100:200-300,uuid2:1-5` — per source server, intervals of sequence numbers.
//! - MariaDB: `0-1-100,1-2-50` — per replication domain, the last `server-seq` applied; a
//!   domain's history is linear, so position `seq` stands for 1..=seq of that domain.

use std::{collections::BTreeMap, fmt};

/// A GTID set: per stream (MySQL source uuid, or MariaDB domain), sorted disjoint intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    streams: BTreeMap<String, Vec<(u64, u64)>>,
    /// MariaDB only: the server id of each domain's last GTID. Two servers at the same
    /// sequence number with different origins have diverged.
    origins: BTreeMap<String, u32>,
}

/// A GTID set that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GTID set {input:?}: {reason}")]
pub struct ParseError {
    input: String,
    reason: &'static str,
}

fn normalise(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
    for (lo, hi) in intervals {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl GtidSet {
    /// Parse MySQL's `gtid_executed` format.
    pub fn parse_mysql(input: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError {
            input: input.to_string(),
            reason,
        };
        let mut streams: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let uuid = fields.next().ok_or_else(|| err("missing source uuid"))?;
            if uuid.len() != 36 || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err(err("source uuid is not a uuid"));
            }
            let intervals = streams.entry(uuid.to_ascii_lowercase()).or_default();
            let mut any = false;
            for range in fields {
                let (lo, hi) = match range.split_once('-') {
                    Some((a, b)) => (a.parse(), b.parse()),
                    None => (range.parse(), range.parse()),
                };
                let (lo, hi): (u64, u64) = (
                    lo.map_err(|_| err("interval is not a number"))?,
                    hi.map_err(|_| err("interval is not a number"))?,
                );
                if lo == 0 || lo > hi {
                    return Err(err("interval is empty or starts at 0"));
                }
                intervals.push((lo, hi));
                any = true;
            }
            if !any {
                return Err(err("source without an interval"));
            }
        }
        for v in streams.values_mut() {
            *v = normalise(std::mem::take(v));
        }
        Ok(Self {
            streams,
            origins: BTreeMap::new(),
        })
    }

    /// Parse MariaDB's `gtid_current_pos` / `gtid_binlog_pos` format.
    pub fn parse_mariadb(input: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError {
            input: input.to_string(),
            reason,
        };
        let mut streams: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        let mut origins = BTreeMap::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fields: Vec<&str> = part.split('-').collect();
            let [domain, server, seq] = fields.as_slice() else {
                return Err(err("expected domain-server-seq"));
            };
            let domain: u32 = domain.parse().map_err(|_| err("domain is not a number"))?;
            let server: u32 = server
                .parse()
                .map_err(|_| err("server id is not a number"))?;
            let seq: u64 = seq.parse().map_err(|_| err("sequence is not a number"))?;
            if streams
                .insert(
                    domain.to_string(),
                    if seq == 0 { vec![] } else { vec![(1, seq)] },
                )
                .is_some()
            {
                return Err(err("domain listed twice"));
            }
            if seq > 0 {
                origins.insert(domain.to_string(), server);
            }
        }
        streams.retain(|_, v| !v.is_empty());
        Ok(Self { streams, origins })
    }

    /// Whether every transaction of `other` is in `self`.
    /// MariaDB: a domain ending at the same position as `other`'s but written by another
    /// server is a different history, so not contained.
    pub fn contains(&self, other: &GtidSet) -> bool {
        let same_end_other_origin = other.origins.iter().any(|(domain, origin)| {
            self.streams.get(domain).and_then(|v| v.last())
                == other.streams.get(domain).and_then(|v| v.last())
                && self.origins.get(domain).is_some_and(|mine| mine != origin)
        });
        if same_end_other_origin {
            return false;
        }
        other.streams.iter().all(|(stream, intervals)| {
            let mine = self.streams.get(stream).map(Vec::as_slice).unwrap_or(&[]);
            intervals
                .iter()
                .all(|&(lo, hi)| mine.iter().any(|&(a, b)| a <= lo && hi <= b))
        })
    }

    /// The transactions of `self` that are not in `other` (`GTID_SUBTRACT(self, other)`).
    pub fn subtract(&self, other: &GtidSet) -> GtidSet {
        let mut streams = BTreeMap::new();
        for (stream, intervals) in &self.streams {
            let theirs = other.streams.get(stream).map(Vec::as_slice).unwrap_or(&[]);
            let mut rest = Vec::new();
            for &(lo, hi) in intervals {
                let mut start = lo;
                for &(a, b) in theirs {
                    if b < start || a > hi {
                        continue;
                    }
                    if a > start {
                        rest.push((start, a - 1));
                    }
                    start = b.saturating_add(1);
                    if start > hi {
                        break;
                    }
                }
                if start <= hi {
                    rest.push((start, hi));
                }
            }
            if !rest.is_empty() {
                streams.insert(stream.clone(), rest);
            }
        }
        GtidSet {
            streams,
            origins: BTreeMap::new(),
        }
    }

    /// Every transaction of either set. A MariaDB domain keeps the origin of the longer history.
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut out = self.clone();
        for (stream, intervals) in &other.streams {
            let mine = out.streams.entry(stream.clone()).or_default();
            let longer = intervals.last().map(|i| i.1) > mine.last().map(|i| i.1);
            mine.extend(intervals.iter().copied());
            *mine = normalise(std::mem::take(mine));
            if let Some(origin) = other.origins.get(stream).filter(|_| longer) {
                out.origins.insert(stream.clone(), *origin);
            }
        }
        out
    }

    /// What makes a replica holding `self` errant against a primary holding `primary`, if
    /// anything: transactions the primary lacks (`GTID_SUBTRACT`), or — MariaDB, where a
    /// position names only a domain's last GTID — the same position written by another server.
    /// A replica behind the primary on a diverged history is caught by its replication error
    /// instead (MariaDB refuses to resume it).
    pub fn errant_against(&self, primary: &GtidSet) -> Option<String> {
        let extra = self.subtract(primary);
        if !extra.is_empty() {
            return Some(format!("transactions the primary lacks: {extra}"));
        }
        for (domain, origin) in &self.origins {
            let same_end = self.streams.get(domain).and_then(|v| v.last())
                == primary.streams.get(domain).and_then(|v| v.last());
            match primary.origins.get(domain) {
                Some(theirs) if same_end && theirs != origin => {
                    return Some(format!(
                        "domain {domain} ends with a transaction of server {origin}, the primary's with one of server {theirs}"
                    ));
                }
                _ => {}
            }
        }
        None
    }

    /// MariaDB: the domains whose last transaction was written by server `origin`.
    pub fn ends_written_by(&self, origin: u32) -> Vec<&str> {
        self.origins
            .iter()
            .filter(|(_, o)| **o == origin)
            .map(|(d, _)| d.as_str())
            .collect()
    }

    /// MariaDB: whether domain `domain` ends at the same transaction in both sets, or `self`
    /// is past it there.
    pub fn reaches_end_of(&self, other: &GtidSet, domain: &str) -> bool {
        let mine = self.streams.get(domain).and_then(|v| v.last()).map(|i| i.1);
        let theirs = other
            .streams
            .get(domain)
            .and_then(|v| v.last())
            .map(|i| i.1);
        match (mine, theirs) {
            (Some(m), Some(t)) if m == t => self.origins.get(domain) == other.origins.get(domain),
            (Some(m), Some(t)) => m > t,
            (_, None) => true,
            (None, Some(_)) => false,
        }
    }

    /// Whether the set has no transaction.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Number of transactions.
    pub fn count(&self) -> u64 {
        self.streams
            .values()
            .flatten()
            .map(|(lo, hi)| hi - lo + 1)
            .sum()
    }
}

impl fmt::Display for GtidSet {
    /// MySQL's notation (MariaDB sets print as `domain:1-seq`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .streams
            .iter()
            .map(|(s, iv)| {
                let ranges: Vec<String> = iv
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                format!("{s}:{}", ranges.join(":"))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4f22ab58-82db-22f2-8f44-d91bb0530673";

    fn my(s: &str) -> GtidSet {
        GtidSet::parse_mysql(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn maria(s: &str) -> GtidSet {
        GtidSet::parse_mariadb(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn mysql_sets_parse_merge_and_print() {
        let s = my(&format!("{A}:1-5:6-10:20, {B}:3"));
        assert_eq!(s.to_string(), format!("{A}:1-10:20,{B}:3"));
        assert_eq!(s.count(), 12);
        assert!(my("").is_empty());
        for bad in [
            A.to_string(),
            format!("{A}:0-3"),
            format!("{A}:5-3"),
            "nope:1-2".into(),
            format!("{A}:x"),
        ] {
            assert!(GtidSet::parse_mysql(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn containment_and_subtraction() {
        let primary = my(&format!("{A}:1-100"));
        let behind = my(&format!("{A}:1-90"));
        let errant = my(&format!("{A}:1-100,{B}:1-2"));
        assert!(primary.contains(&behind));
        assert!(!behind.contains(&primary));
        assert!(errant.contains(&primary));
        assert_eq!(errant.subtract(&primary).to_string(), format!("{B}:1-2"));
        assert!(behind.subtract(&primary).is_empty());
        assert_eq!(primary.subtract(&behind).to_string(), format!("{A}:91-100"));
        let holes = my(&format!("{A}:1-10:20-30"));
        assert_eq!(
            my(&format!("{A}:1-40")).subtract(&holes).to_string(),
            format!("{A}:11-19:31-40")
        );
    }

    #[test]
    fn mariadb_positions() {
        let primary = maria("0-1-100");
        let replica = maria("0-1-90");
        assert!(primary.contains(&replica));
        assert!(!replica.contains(&primary));
        assert_eq!(primary.subtract(&replica).count(), 10);
        // A replica that wrote in its own domain has errant transactions.
        let errant = maria("0-1-100,1-2-3");
        assert_eq!(errant.subtract(&primary).count(), 3);
        assert!(maria("").is_empty());
        // Same position, written by another server: diverged.
        assert!(maria("0-7-100").errant_against(&primary).is_some());
        assert_eq!(maria("0-1-100").errant_against(&primary), None);
        assert_eq!(replica.errant_against(&primary), None);
        assert!(maria("0-7-101").errant_against(&primary).is_some());
        // The same position written by two servers: neither history contains the other.
        assert!(!maria("0-7-100").contains(&primary) && !primary.contains(&maria("0-7-100")));
        assert_eq!(maria("0-7-100,1-1-3").ends_written_by(7), ["0"]);
        assert!(primary.reaches_end_of(&maria("0-1-100"), "0"));
        assert!(!primary.reaches_end_of(&maria("0-7-100"), "0"));
        assert!(primary.reaches_end_of(&maria("0-7-99"), "0"));
        let both = replica.union(&maria("0-1-95,1-3-4"));
        assert!(both.contains(&maria("0-1-95,1-3-4")) && both.contains(&replica));
        assert_eq!(both.count(), 99);
        for bad in ["0-1", "a-1-2", "0-1-2,0-2-3"] {
            assert!(GtidSet::parse_mariadb(bad).is_err(), "{bad}");
        }
    }
}
