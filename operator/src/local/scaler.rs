//! Autoscaling in local mode: every sample period, the request rate Envoy reports for each
//! autoscaled service (summed over the chat-xds replicas) and the CPU its chatd processes use
//! (from `/proc`, as a share of one core) go through the same policy as in Kubernetes; the
//! runner starts or stops chatd processes to match, and reports the same status and metrics.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chatcluster_common::procfs;
use tracing::warn;

use super::plan::Plan;
use crate::{
    api::{AutoscalingStatus, ServiceKind},
    autoscale::{
        policy::{Autoscaler, Bounds, Sample, Targets},
        signal::{self, LoadReport},
    },
};

/// How often the signal is sampled.
pub const PERIOD: Duration = Duration::from_secs(1);

struct Service {
    autoscaler: Autoscaler,
    targets: Targets,
    bounds: Bounds,
    status: Option<AutoscalingStatus>,
}

/// The autoscaled services of a plan.
pub struct Scaler {
    started: Instant,
    xds: Vec<String>,
    services: BTreeMap<ServiceKind, Service>,
    cpu: CpuMeter,
}

impl Scaler {
    /// The autoscaled services of `plan` (none: nothing to do).
    pub fn new(plan: &Plan) -> Self {
        let services = plan
            .services
            .iter()
            .filter_map(|s| {
                let spec = s.autoscaling.as_ref()?;
                Some((
                    s.kind,
                    Service {
                        autoscaler: Autoscaler::default(),
                        targets: signal::targets(spec),
                        bounds: signal::bounds(spec, PERIOD),
                        status: None,
                    },
                ))
            })
            .collect();
        Self {
            started: Instant::now(),
            xds: plan
                .xds_http
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
            services,
            cpu: CpuMeter::default(),
        }
    }

    /// Whether any service scales.
    pub fn active(&self) -> bool {
        !self.services.is_empty()
    }

    /// Take a sample; `running` gives each service's replica pids. The desired replica count
    /// of every service the policy wants changed.
    pub async fn sample(
        &mut self,
        running: &BTreeMap<ServiceKind, Vec<Option<u32>>>,
    ) -> BTreeMap<ServiceKind, i32> {
        let mut reports = Vec::new();
        let mut error = None;
        for address in &self.xds {
            match signal::fetch(address).await {
                Ok(r) => reports.push(r),
                Err(e) => error = Some(e.to_string()),
            }
        }
        // One chat-xds answering is enough only if it is the only one: otherwise the Envoys
        // reporting to the silent one would be missing from the sum.
        let complete = error.is_none();
        let load = LoadReport::sum(reports);
        let at = self.started.elapsed();
        let mut changes = BTreeMap::new();
        for (kind, svc) in &mut self.services {
            let pids = running.get(kind).cloned().unwrap_or_default();
            let replicas = i32::try_from(pids.len()).unwrap_or(i32::MAX);
            let cpu = self.cpu.average(&pids);
            let l = load
                .services
                .get(kind.as_str())
                .copied()
                .unwrap_or_default();
            let last = svc.status.as_ref();
            let mut status = AutoscalingStatus {
                current_replicas: replicas,
                desired_replicas: last.map_or(replicas, |s| s.desired_replicas),
                recommended_replicas: last.map_or(replicas, |s| s.recommended_replicas),
                max_replicas: svc.bounds.max,
                requests_per_second: format!("{:.1}", l.requests_per_second),
                in_flight: i64::try_from(l.in_flight).unwrap_or(i64::MAX),
                cpu_utilization_percent: cpu.map(|c| (c * 100.0).round() as i32),
                signal_error: error.clone(),
            };
            if complete {
                let sample = Sample {
                    at,
                    requests_per_second: l.requests_per_second,
                    cpu: cpu.filter(|_| svc.targets.cpu.is_some()),
                    replicas,
                };
                let decision = svc.autoscaler.decide(&sample, &svc.targets, &svc.bounds);
                status.desired_replicas = decision.desired;
                status.recommended_replicas = decision.recommended;
                if decision.desired != replicas {
                    changes.insert(*kind, decision.desired);
                }
            } else {
                warn!(service = %kind, error = ?error, "no load signal: not scaling");
            }
            svc.status = Some(status);
        }
        changes
    }

    /// The latest status of every autoscaled service (the same shape as the Kubernetes status).
    pub fn status(&self) -> BTreeMap<String, AutoscalingStatus> {
        self.services
            .iter()
            .filter_map(|(k, s)| Some((k.to_string(), s.status.clone()?)))
            .collect()
    }
}

/// CPU time of processes between samples, from `/proc/<pid>/stat`.
#[derive(Default)]
struct CpuMeter {
    last: BTreeMap<u32, (f64, Instant)>,
}

impl CpuMeter {
    /// Average cores used per process since the last call (`None` before a second sample).
    fn average(&mut self, pids: &[Option<u32>]) -> Option<f64> {
        let now = Instant::now();
        let mut used = Vec::new();
        for pid in pids.iter().flatten() {
            let Some(cpu) = procfs::cpu_seconds(*pid) else {
                continue;
            };
            if let Some((before, at)) = self.last.insert(*pid, (cpu, now)) {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    used.push((cpu - before).max(0.0) / seconds);
                }
            }
        }
        self.last.retain(|pid, _| pids.contains(&Some(*pid)));
        (!used.is_empty()).then(|| used.iter().sum::<f64>() / used.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cpu_of_a_busy_process_is_measured() {
        let mut meter = CpuMeter::default();
        let me = std::process::id();
        assert_eq!(meter.average(&[Some(me)]), None, "one sample is no rate");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let cores = meter.average(&[Some(me)]).unwrap();
        assert!(
            cores > 0.3,
            "a spinning thread uses most of a core: {cores}"
        );
        assert_eq!(meter.average(&[None]), None);
    }
}
