//! The scaling policy: a pure function from load samples to a replica count, the same in
//! Kubernetes and in the laptop runner.
//!
//! Per sample, a *recommendation*: `ceil(current × utilisation)`, where utilisation is the
//! largest of the observed/target ratios of the signals that have a target (requests per
//! second per replica, CPU as a fraction of the request). Inside the tolerance band
//! (±10 %) the recommendation is the current count: noise never moves it.
//!
//! - **Scale up fast**: the decision follows the highest recommendation of the last
//!   `scale_up_window` (one or two sample periods), at most doubling per decision (plus 4 pods,
//!   so small services are not held back) — a spike is met within a sample or two.
//! - **Scale down slow**: the decision is the *highest* recommendation over the
//!   stabilisation window (default 300 s), so replicas are removed only once load has stayed
//!   low for the whole window; a sawtooth keeps the replicas its peaks need.
//! - **Bounds**: always within `[min, max]`.
//!
//! Compared with Kubernetes' HPA (`desiredReplicas = ceil(currentReplicas × currentMetric /
//! desiredMetric)`, 0.1 tolerance, a 300 s scale-down stabilisation window, scale-up limited
//! to max(100 %, 4 pods) per 15 s): the same arithmetic, tolerance and window, with two
//! differences — the load signal is the request rate Envoy reports for the service (not only
//! CPU), and a service with no traffic at all recommends the minimum directly instead of
//! leaving the metric undefined.

use std::{collections::VecDeque, time::Duration};

/// Fraction within which the current count is kept.
pub const TOLERANCE: f64 = 0.1;
/// The most a decision may add: `max(current × 2, current + 4)`.
const UP_FACTOR: f64 = 2.0;
const UP_PODS: i32 = 4;

/// What a replica should carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Requests per second per replica.
    pub requests_per_second: Option<f64>,
    /// CPU utilisation, as a fraction of the request (0.0–1.0).
    pub cpu: Option<f64>,
}

/// One observation of a service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, since any fixed origin.
    pub at: Duration,
    /// Requests per second for the whole service.
    pub requests_per_second: f64,
    /// Average CPU utilisation of its pods (fraction of the request), where measured.
    pub cpu: Option<f64>,
    /// Replicas serving when it was taken.
    pub replicas: i32,
}

/// Bounds and windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Fewest replicas.
    pub min: i32,
    /// Most replicas.
    pub max: i32,
    /// How long load must stay low before replicas are removed.
    pub scale_down_window: Duration,
    /// Recommendations this recent count for scaling up.
    pub scale_up_window: Duration,
}

/// The recommendation for one sample (before windows and bounds).
pub fn recommend(sample: &Sample, targets: &Targets) -> i32 {
    let current = sample.replicas.max(1);
    let mut utilisation: Option<f64> = None;
    if let Some(target) = targets.requests_per_second.filter(|t| *t > 0.0) {
        let per_replica = sample.requests_per_second / f64::from(current);
        utilisation = Some(per_replica / target);
    }
    if let (Some(target), Some(cpu)) = (targets.cpu.filter(|t| *t > 0.0), sample.cpu) {
        let u = cpu / target;
        utilisation = Some(utilisation.map_or(u, |r| r.max(u)));
    }
    match utilisation {
        None => sample.replicas,
        Some(0.0) => 0,
        Some(u) if (u - 1.0).abs() <= TOLERANCE => sample.replicas,
        Some(u) => {
            // Less a hair: 7 × (800 / 7 / 100) must give 8, not 9.
            let wanted = (f64::from(current) * u - 1e-9).ceil();
            if wanted >= f64::from(i32::MAX) {
                i32::MAX
            } else {
                wanted as i32
            }
        }
    }
}

/// Keeps the recent recommendations and decides.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    recent: VecDeque<(Duration, i32)>,
}

/// What the autoscaler decided, and why (for status, events and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted now.
    pub desired: i32,
    /// This sample's recommendation.
    pub recommended: i32,
}

impl Autoscaler {
    /// Record `sample` and decide the replica count for `targets` within `bounds`.
    pub fn decide(&mut self, sample: &Sample, targets: &Targets, bounds: &Bounds) -> Decision {
        let recommended = recommend(sample, targets);
        self.recent.push_back((sample.at, recommended));
        let horizon = bounds.scale_down_window.max(bounds.scale_up_window);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| sample.at.saturating_sub(*at) > horizon)
        {
            self.recent.pop_front();
        }
        let highest_within = |window: Duration| {
            self.recent
                .iter()
                .filter(|(at, _)| sample.at.saturating_sub(*at) <= window)
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended)
        };
        let current = sample.replicas;
        let up = highest_within(bounds.scale_up_window);
        let down = highest_within(bounds.scale_down_window);
        let desired = if up > current {
            let limit = ((f64::from(current.max(1)) * UP_FACTOR) as i32).max(current + UP_PODS);
            up.min(limit)
        } else {
            // Never below what any recommendation in the window asked for.
            down.min(current).max(up)
        };
        Decision {
            desired: desired.clamp(bounds.min, bounds.max.max(bounds.min)),
            recommended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(15);

    fn bounds() -> Bounds {
        Bounds {
            min: 2,
            max: 20,
            scale_down_window: Duration::from_secs(300),
            scale_up_window: PERIOD,
        }
    }

    fn rps(target: f64) -> Targets {
        Targets {
            requests_per_second: Some(target),
            cpu: None,
        }
    }

    /// Play `load` (requests/s per sample period) against a simulated service that gets the
    /// replicas decided; the replica count after each sample.
    fn play(load: &[f64], start: i32) -> Vec<i32> {
        let mut scaler = Autoscaler::default();
        let mut replicas = start;
        let mut out = Vec::new();
        for (i, &r) in load.iter().enumerate() {
            let sample = Sample {
                at: PERIOD * u32::try_from(i).unwrap_or(0),
                requests_per_second: r,
                cpu: None,
                replicas,
            };
            replicas = scaler.decide(&sample, &rps(100.0), &bounds()).desired;
            out.push(replicas);
        }
        out
    }

    fn changes(v: &[i32]) -> usize {
        v.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn step_up_is_met_within_two_samples() {
        let mut load = vec![200.0; 4];
        load.extend([1000.0; 8]);
        let r = play(&load, 2);
        assert_eq!(r[3], 2);
        assert!(r[5] >= 10, "{r:?}");
        assert_eq!(*r.last().unwrap_or(&0), 10, "{r:?}");
    }

    #[test]
    fn a_spike_scales_up_and_down_only_after_the_window() {
        let mut load = vec![200.0; 4];
        load.extend([1500.0; 2]);
        load.extend([200.0; 30]);
        let r = play(&load, 2);
        assert!(r[5] >= 10, "{r:?}");
        // Held for the 300 s window (20 samples), then back to what the load needs.
        assert!(r[6..24].iter().all(|&n| n >= 10), "{r:?}");
        assert_eq!(*r.last().unwrap_or(&0), 2, "{r:?}");
    }

    #[test]
    fn a_slow_ramp_is_followed_without_overshoot() {
        let load: Vec<f64> = (0..40).map(|i| 200.0 + 40.0 * f64::from(i)).collect();
        let r = play(&load, 2);
        for (i, n) in r.iter().enumerate() {
            // Each replica within the tolerance of its target, and no more replicas than needed.
            let needed = (load[i] / 100.0).ceil() as i32;
            let per_replica = load[i] / f64::from(*n);
            assert!(
                per_replica <= 100.0 * (1.0 + TOLERANCE) + 1e-9 && *n <= needed,
                "{i}: {n} for {} rps: {r:?}",
                load[i]
            );
        }
        assert!(
            r.windows(2).all(|w| w[1] >= w[0]),
            "never down on a ramp: {r:?}"
        );
    }

    #[test]
    fn a_sawtooth_keeps_its_peaks_replicas() {
        let load: Vec<f64> = (0..60)
            .map(|i| if i % 4 < 2 { 900.0 } else { 100.0 })
            .collect();
        let r = play(&load, 2);
        assert!(r[10..].iter().all(|&n| n == 9), "{r:?}");
    }

    #[test]
    fn drop_to_zero_goes_to_the_minimum_after_the_window() {
        let mut load = vec![800.0; 5];
        load.extend([0.0; 30]);
        let r = play(&load, 8);
        assert_eq!(r[4], 8);
        assert!(r[5..24].iter().all(|&n| n == 8), "{r:?}");
        assert_eq!(*r.last().unwrap_or(&0), 2);
    }

    #[test]
    fn steady_noisy_load_does_not_flap() {
        // ±8 % noise around 5 replicas' worth.
        let load: Vec<f64> = (0..80)
            .map(|i| 500.0 * (1.0 + 0.08 * (f64::from(i) * 1.7).sin()))
            .collect();
        let r = play(&load, 5);
        assert!(changes(&r) <= 1, "{r:?}");
        assert!(r.iter().all(|&n| (5..=6).contains(&n)), "{r:?}");
    }

    #[test]
    fn bounds_cpu_and_tolerance() {
        let mut s = Autoscaler::default();
        let sample = |rps: f64, cpu: Option<f64>, replicas| Sample {
            at: Duration::ZERO,
            requests_per_second: rps,
            cpu,
            replicas,
        };
        // Never above max, never below min.
        assert_eq!(
            s.decide(&sample(1e9, None, 4), &rps(100.0), &bounds())
                .desired,
            8
        );
        assert_eq!(
            Autoscaler::default()
                .decide(&sample(0.0, None, 2), &rps(100.0), &bounds())
                .desired,
            2
        );
        let tight = Bounds { max: 5, ..bounds() };
        assert_eq!(
            Autoscaler::default()
                .decide(&sample(1e9, None, 4), &rps(100.0), &tight)
                .desired,
            5
        );
        // Inside the tolerance: unchanged.
        assert_eq!(recommend(&sample(4300.0, None, 40), &rps(100.0)), 40);
        assert_eq!(recommend(&sample(4500.0, None, 40), &rps(100.0)), 45);
        // The busier signal wins: CPU at 90 % of a 60 % target.
        let both = Targets {
            requests_per_second: Some(100.0),
            cpu: Some(0.6),
        };
        assert_eq!(recommend(&sample(400.0, Some(0.9), 4), &both), 6);
        // No signal with a target: keep the count.
        let none = Targets {
            requests_per_second: None,
            cpu: Some(0.6),
        };
        assert_eq!(recommend(&sample(400.0, None, 4), &none), 4);
    }
}
