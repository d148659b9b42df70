//! The load report: what chat-xds serves on `/load` from Envoy's load reports, and the
//! autoscaler reads from every chat-xds replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The load of one service, summed over the Envoys reporting to one chat-xds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLoad {
    /// Requests issued per second.
    pub requests_per_second: f64,
    /// Requests in progress.
    pub in_flight: u64,
    /// Envoys reporting.
    pub envoys: usize,
}

/// The body of chat-xds's `/load`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Load by service name.
    pub services: BTreeMap<String, ServiceLoad>,
}

impl LoadReport {
    /// The whole cluster's load from every chat-xds replica's report: each Envoy reports to
    /// one replica, so the reports add up.
    pub fn sum(reports: impl IntoIterator<Item = LoadReport>) -> Self {
        let mut out = Self::default();
        for r in reports {
            for (name, l) in r.services {
                let t = out.services.entry(name).or_default();
                t.requests_per_second += l.requests_per_second;
                t.in_flight += l.in_flight;
                t.envoys += l.envoys;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_of_every_xds_replica_add_up() {
        let one = |rps: f64, envoys| LoadReport {
            services: BTreeMap::from([(
                "groups".to_string(),
                ServiceLoad {
                    requests_per_second: rps,
                    in_flight: 2,
                    envoys,
                },
            )]),
        };
        let total = LoadReport::sum([one(100.0, 1), one(50.0, 2), LoadReport::default()]);
        assert_eq!(
            total.services["groups"],
            ServiceLoad {
                requests_per_second: 150.0,
                in_flight: 4,
                envoys: 3
            }
        );
    }
}
