//! Autoscaling in Kubernetes: one sampling loop per ChatCluster with autoscaled services. Every
//! period it reads the load signal (chat-xds's `/load` from every chat-xds pod, summed: each
//! Envoy reports to one of them), runs the shared policy per service and, when a desired count
//! changes, wakes the reconciler — which sets the Deployment's replicas (the operator owns that
//! field; no HorizontalPodAutoscaler fights it), records an event, and shows the decision and
//! the signal in the status and the metrics.

use chatcluster_common::sync::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams},
    runtime::reflector::ObjectRef,
};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info_span, warn};

use crate::{
    api::{AutoscalingSpec, AutoscalingStatus, ChatCluster, ServiceKind},
    autoscale::{
        policy::{Autoscaler, Sample},
        signal::{self, LoadReport},
    },
    build::{ClusterRef, ports},
    metrics::AutoscalingFeed,
};

/// How often the signal is sampled (the HPA's default sync period).
pub const PERIOD: Duration = Duration::from_secs(15);

/// One sample of the signals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Request rate and in-flight requests per service, from Envoy.
    pub load: LoadReport,
    /// Average CPU of each service's pods as a fraction of their request, where the cluster
    /// has the metrics API.
    pub cpu: BTreeMap<ServiceKind, f64>,
}

/// Where the signals come from.
pub trait LoadSource: Send + Sync + 'static {
    /// The owner's load, or why it cannot be had.
    fn load<'a>(
        &'a self,
        client: &'a Client,
        owner: &'a ClusterRef,
    ) -> BoxFuture<'a, Result<Observation, String>>;
}

/// The production source: `/load` of every running chat-xds pod of the owner, and the pods'
/// CPU from the metrics API (`metrics.k8s.io`, served by metrics-server) when it exists.
pub struct XdsPods;

impl LoadSource for XdsPods {
    fn load<'a>(
        &'a self,
        client: &'a Client,
        owner: &'a ClusterRef,
    ) -> BoxFuture<'a, Result<Observation, String>> {
        Box::pin(async move {
            let load = xds_load(client, owner).await?;
            let mut cpu = BTreeMap::new();
            for kind in ServiceKind::ALL {
                if let Some(u) = cpu_utilisation(client, owner, kind).await {
                    cpu.insert(kind, u);
                }
            }
            Ok(Observation { load, cpu })
        })
    }
}

async fn xds_load(client: &Client, owner: &ClusterRef) -> Result<LoadReport, String> {
    let selector = owner.selector_query(crate::build::XDS_COMPONENT);
    let pods = Api::<Pod>::namespaced(client.clone(), &owner.namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("cannot list chat-xds pods: {e}"))?;
    let ips: Vec<String> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    if ips.is_empty() {
        return Err("no chat-xds pod is running".into());
    }
    let mut reports = Vec::new();
    for ip in ips {
        let address = format!("{ip}:{}", ports::METRICS);
        reports.push(signal::fetch(&address).await.map_err(|e| e.to_string())?);
    }
    Ok(LoadReport::sum(reports))
}

/// Average CPU use over request of `kind`'s pods; `None` without the metrics API, metrics or
/// requests (a missing signal, not zero load).
async fn cpu_utilisation(client: &Client, owner: &ClusterRef, kind: ServiceKind) -> Option<f64> {
    let selector = owner.selector_query(kind.as_str());
    let params = ListParams::default().labels(&selector);
    let pods = Api::<Pod>::namespaced(client.clone(), &owner.namespace)
        .list(&params)
        .await
        .ok()?;
    let resource = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let metrics =
        Api::<DynamicObject>::namespaced_with(client.clone(), &owner.namespace, &resource)
            .list(&params)
            .await
            .ok()?;
    let requested: BTreeMap<String, f64> = pods
        .items
        .iter()
        .filter_map(|p| {
            let cores: f64 = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .filter_map(|c| {
                    signal::cpu_cores(&c.resources.as_ref()?.requests.as_ref()?.get("cpu")?.0)
                })
                .sum();
            (cores > 0.0).then(|| (p.metadata.name.clone().unwrap_or_default(), cores))
        })
        .collect();
    let ratios: Vec<f64> = metrics
        .items
        .iter()
        .filter_map(|m| {
            let request = requested.get(m.metadata.name.as_deref()?)?;
            let used: f64 = m.data["containers"]
                .as_array()?
                .iter()
                .filter_map(|c| signal::cpu_cores(c["usage"]["cpu"].as_str()?))
                .sum();
            Some(used / request)
        })
        .collect();
    (!ratios.is_empty()).then(|| ratios.iter().sum::<f64>() / ratios.len() as f64)
}

struct ServiceState {
    spec: AutoscalingSpec,
    autoscaler: Autoscaler,
    status: AutoscalingStatus,
}

type Shared = Arc<Mutex<BTreeMap<ServiceKind, ServiceState>>>;

struct Entry {
    services: Shared,
    published: watch::Sender<BTreeMap<String, AutoscalingStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// Publish every service's status.
fn publish(
    services: &BTreeMap<ServiceKind, ServiceState>,
    to: &watch::Sender<BTreeMap<String, AutoscalingStatus>>,
) {
    to.send_replace(
        services
            .iter()
            .map(|(k, s)| (k.as_str().to_string(), s.status.clone()))
            .collect(),
    );
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every sampling loop.
pub struct Autoscalers {
    loops: Mutex<HashMap<ObjectRef<ChatCluster>, Entry>>,
    changed: mpsc::UnboundedSender<ObjectRef<ChatCluster>>,
    source: Arc<dyn LoadSource>,
    period: Duration,
}

impl Autoscalers {
    /// No loops yet; a loop whose decision changes sends its cluster on `changed`.
    pub fn new(
        changed: mpsc::UnboundedSender<ObjectRef<ChatCluster>>,
        source: Arc<dyn LoadSource>,
        period: Duration,
    ) -> Self {
        Self {
            loops: Mutex::new(HashMap::new()),
            changed,
            source,
            period,
        }
    }

    /// Start the cluster's loop or bring it in step with the spec; `current` holds the
    /// replicas the Deployments have now. The desired replicas of every autoscaled service
    /// with the signal behind them.
    pub fn ensure(
        &self,
        client: &Client,
        resource: &ChatCluster,
        owner: &ClusterRef,
        current: &BTreeMap<ServiceKind, i32>,
    ) -> BTreeMap<ServiceKind, AutoscalingStatus> {
        let key = ObjectRef::from_obj(resource);
        let specs: BTreeMap<ServiceKind, AutoscalingSpec> = resource
            .spec
            .services
            .iter()
            .filter_map(|(k, s)| Some((k, s.autoscaling.clone()?)))
            .collect();
        let mut loops = lock(&self.loops);
        if specs.is_empty() {
            loops.remove(&key);
            return BTreeMap::new();
        }
        let entry = loops.entry(key.clone()).or_insert_with(|| {
            let services: Shared = Arc::default();
            let published = watch::Sender::new(BTreeMap::new());
            let task = tokio::spawn(sample_loop(
                Sampling {
                    client: client.clone(),
                    owner: owner.clone(),
                    key: key.clone(),
                    services: services.clone(),
                    published: published.clone(),
                },
                self.source.clone(),
                self.changed.clone(),
                self.period,
            ));
            Entry {
                services,
                published,
                task,
            }
        });
        let mut services = lock(&entry.services);
        services.retain(|k, _| specs.contains_key(k));
        for (kind, spec) in specs {
            let replicas = current.get(&kind).copied().unwrap_or(spec.min_replicas);
            let state = services.entry(kind).or_insert_with(|| ServiceState {
                spec: spec.clone(),
                autoscaler: Autoscaler::default(),
                status: AutoscalingStatus {
                    current_replicas: replicas,
                    desired_replicas: replicas,
                    ..AutoscalingStatus::default()
                },
            });
            state.spec = spec;
            state.status.current_replicas = replicas;
            state.status.max_replicas = state.spec.max_replicas;
            // The bounds may have changed since the last decision.
            state.status.desired_replicas = state.status.desired_replicas.clamp(
                state.spec.min_replicas,
                state.spec.max_replicas.max(state.spec.min_replicas),
            );
        }
        publish(&services, &entry.published);
        services
            .iter()
            .map(|(k, s)| (*k, s.status.clone()))
            .collect()
    }

    /// The cluster's autoscalers as they decide, between reconciles too; `None` when it has
    /// none.
    pub fn published(&self, resource: &ChatCluster) -> Option<AutoscalingFeed> {
        lock(&self.loops)
            .get(&ObjectRef::from_obj(resource))
            .map(|e| e.published.subscribe())
    }

    /// Stop the loops of clusters `keep` rejects (deleted ones).
    pub fn retain(&self, keep: impl Fn(&ObjectRef<ChatCluster>) -> bool) {
        lock(&self.loops).retain(|key, _| keep(key));
    }
}

/// One cluster's sampling loop: what it reads from and writes to.
struct Sampling {
    client: Client,
    owner: ClusterRef,
    key: ObjectRef<ChatCluster>,
    services: Shared,
    published: watch::Sender<BTreeMap<String, AutoscalingStatus>>,
}

async fn sample_loop(
    Sampling {
        client,
        owner,
        key,
        services,
        published,
    }: Sampling,
    source: Arc<dyn LoadSource>,
    changed: mpsc::UnboundedSender<ObjectRef<ChatCluster>>,
    period: Duration,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let span = info_span!("autoscale", cluster = %owner.name, namespace = %owner.namespace);
        let load = source.load(&client, &owner).instrument(span.clone()).await;
        let at = started.elapsed();
        let changes = {
            let mut services = lock(&services);
            let changes = apply_sample(&mut services, load, at, period);
            publish(&services, &published);
            changes
        };
        if changes {
            span.in_scope(|| tracing::info!("desired replicas changed"));
            if changed.send(key.clone()).is_err() {
                return;
            }
        }
    }
}

/// Feed one sample to every service's policy; whether a desired count changed. Pure apart from
/// the state it updates, so it is tested without a owner.
fn apply_sample(
    services: &mut BTreeMap<ServiceKind, ServiceState>,
    observation: Result<Observation, String>,
    at: Duration,
    period: Duration,
) -> bool {
    let mut changed = false;
    match observation {
        Err(e) => {
            // No signal, no decision: keep the replicas rather than act on a guess.
            warn!(error = %e, "no load signal: not scaling");
            for s in services.values_mut() {
                s.status.signal_error = Some(e.clone());
            }
        }
        Ok(observation) => {
            for (kind, s) in services.iter_mut() {
                let l = observation
                    .load
                    .services
                    .get(kind.as_str())
                    .copied()
                    .unwrap_or_default();
                let cpu = observation.cpu.get(kind).copied();
                let sample = Sample {
                    at,
                    requests_per_second: l.requests_per_second,
                    cpu,
                    replicas: s.status.current_replicas,
                };
                let decision = s.autoscaler.decide(
                    &sample,
                    &signal::targets(&s.spec),
                    &signal::bounds(&s.spec, period),
                );
                changed |= decision.desired != s.status.desired_replicas;
                s.status.desired_replicas = decision.desired;
                s.status.recommended_replicas = decision.recommended;
                s.status.requests_per_second = format!("{:.1}", l.requests_per_second);
                s.status.in_flight = i64::try_from(l.in_flight).unwrap_or(i64::MAX);
                s.status.cpu_utilization_percent = cpu.map(|c| (c * 100.0).round() as i32);
                s.status.signal_error = None;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::autoscale::signal::ServiceLoad;

    fn state(min: i32, max: i32, current: i32) -> ServiceState {
        ServiceState {
            spec: AutoscalingSpec {
                min_replicas: min,
                max_replicas: max,
                target_requests_per_second: Some(100),
                target_cpu_utilization: None,
                scale_down_stabilization_seconds: 60,
            },
            autoscaler: Autoscaler::default(),
            status: AutoscalingStatus {
                current_replicas: current,
                desired_replicas: current,
                ..AutoscalingStatus::default()
            },
        }
    }

    fn load(rps: f64) -> Result<Observation, String> {
        Ok(Observation {
            load: LoadReport {
                services: BTreeMap::from([(
                    "groups".to_string(),
                    ServiceLoad {
                        requests_per_second: rps,
                        in_flight: 3,
                        envoys: 2,
                    },
                )]),
            },
            cpu: BTreeMap::new(),
        })
    }

    #[test]
    fn a_load_step_raises_the_desired_count_and_reports_the_signal() {
        let mut services = BTreeMap::from([(ServiceKind::Groups, state(2, 10, 2))]);
        assert!(!apply_sample(
            &mut services,
            load(150.0),
            Duration::ZERO,
            PERIOD
        ));
        assert!(apply_sample(&mut services, load(600.0), PERIOD, PERIOD));
        let s = &services[&ServiceKind::Groups].status;
        assert_eq!((s.desired_replicas, s.recommended_replicas), (6, 6));
        assert_eq!((s.requests_per_second.as_str(), s.in_flight), ("600.0", 3));
    }

    #[test]
    fn cpu_over_its_target_scales_out_even_at_a_low_request_rate() {
        let mut services = BTreeMap::from([(ServiceKind::Groups, state(2, 10, 2))]);
        services
            .get_mut(&ServiceKind::Groups)
            .unwrap()
            .spec
            .target_cpu_utilization = Some(50);
        let mut busy = load(10.0).unwrap();
        busy.cpu.insert(ServiceKind::Groups, 1.5);
        assert!(apply_sample(
            &mut services,
            Ok(busy),
            Duration::ZERO,
            PERIOD
        ));
        let s = &services[&ServiceKind::Groups].status;
        assert_eq!(
            (s.desired_replicas, s.cpu_utilization_percent),
            (6, Some(150))
        );
    }

    #[test]
    fn without_a_signal_nothing_changes_and_the_status_says_why() {
        let mut services = BTreeMap::from([(ServiceKind::Groups, state(2, 10, 4))]);
        assert!(!apply_sample(
            &mut services,
            Err("no chat-xds pod is running".into()),
            Duration::ZERO,
            PERIOD
        ));
        let s = &services[&ServiceKind::Groups].status;
        assert_eq!(s.desired_replicas, 4);
        assert_eq!(
            s.signal_error.as_deref(),
            Some("no chat-xds pod is running")
        );
    }

    #[test]
    fn load_dropping_to_zero_scales_in_only_after_the_window() {
        let mut services = BTreeMap::from([(ServiceKind::Groups, state(1, 10, 5))]);
        apply_sample(&mut services, load(500.0), Duration::ZERO, PERIOD);
        let mut at = PERIOD;
        while at < Duration::from_secs(60) {
            apply_sample(&mut services, load(0.0), at, PERIOD);
            assert_eq!(
                services[&ServiceKind::Groups].status.desired_replicas,
                5,
                "held at {at:?}"
            );
            at += PERIOD;
        }
        apply_sample(&mut services, load(0.0), at + PERIOD, PERIOD);
        assert_eq!(services[&ServiceKind::Groups].status.desired_replicas, 1);
    }
}
