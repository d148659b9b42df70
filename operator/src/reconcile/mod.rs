//! The reconciler: read → validate → build → apply → status, for one ChatCluster at a time.
//!
//! Building is pure ([`crate::build`]); this module holds the side effects: generated Secrets,
//! server-side apply, status and events, and the error policy with per-object backoff.

pub mod apply;
pub mod autoscaling;
mod certificates;
mod controller;
mod events;
mod monitoring;
pub mod seed;
pub mod status;
pub mod topology;

use chatcluster_common::sync::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
    },
};
use serde_json::json;
use std::sync::Mutex;
use tracing::{Instrument, field, info, info_span, warn};

pub use apply::FIELD_MANAGER;
pub use controller::{Scope, run};

use crate::{
    api::{ChatCluster, ChatClusterStatus, Phase, Refused, SpecError, ValidatedCluster},
    build::{self, ClusterRef, Observed, names, secrets},
    error::{Error, Result},
    metrics::Metrics,
};
use events::{record, record_scaling};
use status::{Children, Degradation};

/// Everything a reconcile needs besides the object.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes events on ChatClusters.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per ChatCluster, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ChatCluster>, u32>>,
    /// The generation of each ChatCluster last pruned by this process: what is desired
    /// changes only with the spec (or a new operator), while reconciles run on every child's
    /// change — pruning lists every kind, so it runs once per generation, not per reconcile.
    pruned: Mutex<HashMap<ObjectRef<ChatCluster>, i64>>,
    /// The database topology loops, when this operator runs them (not in the in-memory API
    /// tests: no database server answers there).
    pub topologies: Option<Arc<topology::Topologies>>,
    /// The autoscalers' sampling loops, when this operator runs them.
    pub autoscalers: Option<Arc<autoscaling::Autoscalers>>,
    /// The image this operator runs: MariaDB pods and re-seed Jobs copy the binary from it.
    pub operator_image: String,
    /// The namespace this operator runs in, which the NetworkPolicies admit to the database
    /// and chat-xds; `None`: each cluster's own.
    pub operator_namespace: Option<String>,
    /// Whether a ChatCluster may set its components' images (off: such a spec is refused).
    pub image_overrides: bool,
}

impl Context {
    /// A context for `client`, reporting events as `instance` (the pod name).
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            pruned: Mutex::new(HashMap::new()),
            topologies: None,
            autoscalers: None,
            operator_image: crate::api::defaults::operator_image(),
            operator_namespace: None,
            image_overrides: false,
        }
    }

    /// Name the image this operator runs (from the chart), for what copies the binary.
    pub fn with_operator_image(mut self, image: String) -> Self {
        self.operator_image = image;
        self
    }

    /// Let ChatClusters set their components' images (the chart's `allowImageOverrides`).
    pub fn with_image_overrides(mut self, allowed: bool) -> Self {
        self.image_overrides = allowed;
        self
    }

    /// Name the namespace this operator runs in, for the NetworkPolicies.
    pub fn with_operator_namespace(mut self, namespace: String) -> Self {
        self.operator_namespace = Some(namespace);
        self
    }

    /// Scale autoscaled services with their load (see [`autoscaling`]).
    pub fn with_autoscalers(mut self, autoscalers: Arc<autoscaling::Autoscalers>) -> Self {
        self.autoscalers = Some(autoscalers);
        self
    }

    /// Run database topology loops (see [`topology`]).
    pub fn with_topologies(mut self, topologies: Arc<topology::Topologies>) -> Self {
        self.topologies = Some(topologies);
        self
    }

    fn pruned_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ChatCluster>, i64>> {
        // One insert or read at a time: consistent even if a holder panicked.
        lock(&self.pruned)
    }

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ChatCluster>, u32>> {
        // The map stays consistent even if a holder panicked: every update is one operation.
        lock(&self.failures)
    }
}

/// How soon to look again at a cluster that is fine: status follows children through the
/// watches, this is only a safety net.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon to look again at a cluster still converging, in case a child's watch event is lost.
const CONVERGING_RESYNC: Duration = Duration::from_secs(15);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How soon a ChatCluster refused for its TLS Secret is looked at again.
const TLS_SECRET_RECHECK: Duration = Duration::from_secs(30);
/// The soonest a reconcile comes back for a certificate due now (a renewal that failed is
/// retried by the error policy, not in a tight loop).
const CERTIFICATE_RECHECK_FLOOR: Duration = Duration::from_secs(5);

/// Publish that `resource` is refused for `problems`; no child is applied. The database
/// keeps its failover: a running topology loop's roles still move to the pods (the
/// `-primary` Service follows a promotion). With `valid` (the spec passed validation, only
/// a policy refuses it) the loop is also started, or brought in step, as in a reconcile.
async fn refuse(
    ctx: &Context,
    resource: &ChatCluster,
    owner: &ClusterRef,
    problems: Vec<SpecError>,
    valid: bool,
) -> Result<()> {
    let children = Children::fetch(&ctx.client, owner)
        .await
        .map_err(Error::kube("get", "children of ChatCluster", &owner.name))?;
    let topology = match &ctx.topologies {
        Some(t) if valid && children.db_primary.is_some() => {
            Some(database_topology(ctx, t, resource, owner).await?)
        }
        Some(t) => match t.current(resource) {
            Some(now) => {
                topology::label_pods(&ctx.client, owner, &now).await?;
                Some(now)
            }
            None => None,
        },
        None => None,
    };
    let status = status::compute(
        resource,
        owner,
        &children,
        Some(&Degradation::InvalidSpec(problems)),
        topology.as_ref(),
        Timestamp::now(),
    );
    publish_status(ctx, resource, &status).await
}

/// Reconcile one ChatCluster.
pub async fn reconcile(resource: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        cluster = %resource.name_any(),
        namespace = resource.namespace().unwrap_or_default(),
        generation = resource.metadata.generation.unwrap_or_default(),
        phase = field::Empty,
    );
    let started = std::time::Instant::now();
    let result = reconcile_inner(&resource, &ctx)
        .instrument(span.clone())
        .await;
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    match &result {
        Ok(_) => {
            ctx.failures_lock().remove(&ObjectRef::from_obj(&*resource));
        }
        Err(e) => span.in_scope(|| warn!(error = %e, "reconcile failed")),
    }
    result
}

async fn reconcile_inner(resource: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let owner = ClusterRef::new(resource)?;

    // Validate: an invalid spec touches no child.
    let validated = match ValidatedCluster::new(&owner.name, &resource.spec) {
        Ok(v) => v,
        Err(Refused(problems)) => {
            refuse(ctx, resource, &owner, problems, false).await?;
            // Nothing to retry until the user changes the spec.
            return Ok(Action::await_change());
        }
    };
    // An image of the spec's own runs with the component's secrets: only where allowed.
    if !ctx.image_overrides {
        let refused: Vec<SpecError> = validated
            .spec()
            .image_overrides()
            .into_iter()
            .map(|(field, image)| SpecError {
                field,
                message: format!(
                    "{image}: this operator runs only its own images (the chart's allowImageOverrides is off)"
                ),
            })
            .collect();
        if !refused.is_empty() {
            refuse(ctx, resource, &owner, refused, true).await?;
            return Ok(Action::await_change());
        }
    }
    // A Secret the spec names is checked before chat-xds is granted read access to it; until
    // it passes, the rest is applied as usual without that grant (one given before is taken
    // back), and the cluster is degraded, naming the field.
    let tls_problem = match &validated.spec().ingress.tls {
        Some(tls) => {
            let secret = Api::<Secret>::namespaced(client.clone(), &owner.namespace)
                .get_opt(&tls.secret_name)
                .await
                .map_err(Error::kube("get", "Secret", &tls.secret_name))?;
            secrets::tls_secret_problem(&tls.secret_name, secret.as_ref())
        }
        None => None,
    };

    // Generated Secrets, created once.
    for what in secrets::generated(validated.spec()) {
        if apply::ensure_generated(client, &owner, what).await? {
            info!(secret = what.name(&owner), "generated Secret");
            record(
                ctx,
                resource,
                EventType::Normal,
                "SecretGenerated",
                format!("generated Secret {}", what.name(&owner)),
            )
            .await;
        }
    }

    // Internal certificates, before the pods that mount them.
    let certificates = match validated.spec().internal_tls.lifetime() {
        Some(lifetime) => {
            Some(certificates::ensure(client, &owner, validated.spec(), lifetime).await?)
        }
        None => None,
    };
    let renew_in = certificates.as_ref().map(|c| c.renew_in);
    ctx.metrics.observe_certificates(
        &owner.namespace,
        &owner.name,
        certificates
            .as_ref()
            .map(|c| c.dates.clone())
            .unwrap_or_default(),
    );

    // Build, then apply in dependency order; autoscaled services get the replicas the
    // autoscaler decided.
    let mut observed = observe(client, resource, &owner).await?;
    observed.operator_image = Some(ctx.operator_image.clone());
    observed.operator_namespace = ctx.operator_namespace.clone();
    observed.tls_secret_withheld = tls_problem.is_some();
    observed.broker_certificate = certificates.as_ref().and_then(|c| c.broker_expiry());
    observed.internal_ca = certificates.map(|c| c.ca);
    let scaling = match &ctx.autoscalers {
        Some(a) => {
            let scaling = a.ensure(client, resource, &owner, &observed.current_replicas);
            ctx.metrics
                .watch_autoscaling(&owner.namespace, &owner.name, a.published(resource));
            scaling
        }
        None => BTreeMap::new(),
    };
    for (kind, s) in &scaling {
        observed.current_replicas.insert(*kind, s.desired_replicas);
    }
    let desired = build::desired(&owner, &validated, &observed)?.objects()?;
    let mut apply_error = None;
    for obj in &desired {
        if let Err(e) = apply::apply(client, &owner.namespace, obj).await {
            apply_error = Some(e);
            break;
        }
    }
    // Only once everything desired is in place: what replaces an old child comes first.
    let key = ObjectRef::from_obj(resource);
    let generation = resource.metadata.generation.unwrap_or(0);
    let pruned_already = ctx.pruned_lock().get(&key) == Some(&generation);
    if apply_error.is_none() && !pruned_already {
        match apply::prune(client, &owner, &desired).await {
            Ok(pruned) => {
                ctx.pruned_lock().insert(key, generation);
                for what in pruned {
                    info!(child = %what, "pruned a child no longer desired");
                    record(
                        ctx,
                        resource,
                        EventType::Normal,
                        "Pruned",
                        format!("deleted {what}, no longer desired"),
                    )
                    .await;
                }
            }
            Err(e) => apply_error = Some(e),
        }
    }

    // Monitoring, where the Prometheus Operator is installed: its absence is a condition.
    let monitoring = monitoring::ensure(client, &owner, &validated.spec().monitoring).await;

    // Status from the children's own status.
    let children = Children::fetch(client, &owner).await.map_err(Error::kube(
        "get",
        "children of ChatCluster",
        &owner.name,
    ))?;
    let degradation = match (&apply_error, &tls_problem) {
        (Some(e), _) => Some(Degradation::ApplyFailed(e.to_string())),
        (None, Some(problem)) => Some(Degradation::InvalidSpec(vec![problem.clone()])),
        (None, None) => None,
    };
    let topology = match &ctx.topologies {
        Some(t) => Some(database_topology(ctx, t, resource, &owner).await?),
        None => None,
    };
    let now = Timestamp::now();
    let mut status = status::compute(
        resource,
        &owner,
        &children,
        degradation.as_ref(),
        topology.as_ref(),
        now,
    );
    status.autoscaling = scaling
        .into_iter()
        .map(|(kind, s)| (kind.to_string(), s))
        .collect();
    status.conditions.push(status::monitoring_condition(
        &resource
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        &monitoring,
        resource.metadata.generation,
        now,
    ));
    record_scaling(ctx, resource, &status).await;
    tracing::Span::current().record("phase", status.phase.as_str());
    publish_status(ctx, resource, &status).await?;

    match apply_error {
        Some(e) => Err(e),
        // The Secret may be created or fixed without the spec changing.
        None if tls_problem.is_some() => Ok(Action::requeue(TLS_SECRET_RECHECK)),
        None => {
            let resync = match status.phase {
                Phase::Ready => RESYNC,
                _ => CONVERGING_RESYNC,
            };
            // Back in time to renew the next certificate (it has a third of its life left).
            Ok(Action::requeue(renew_in.map_or(resync, |r| {
                resync.min(r.max(CERTIFICATE_RECHECK_FLOOR))
            })))
        }
    }
}

/// Keep the cluster's topology loop in step, publish its view on the pods, announce
/// failovers, and start a switchover the annotation asks for.
async fn database_topology(
    ctx: &Context,
    topologies: &Arc<topology::Topologies>,
    resource: &ChatCluster,
    owner: &ClusterRef,
) -> Result<crate::topology::status::TopologyStatus, Error> {
    let watch = topologies
        .ensure(&ctx.client, resource, owner, &ctx.operator_image)
        .await?;
    let now = watch.borrow().clone();
    ctx.metrics
        .watch_database(&owner.namespace, &owner.name, watch);
    topology::label_pods(&ctx.client, owner, &now).await?;
    let recorded = resource
        .status
        .as_ref()
        .and_then(|s| s.database.as_ref())
        .and_then(|d| d.last_failover.as_ref())
        .map(|f| (f.from.clone(), f.to.clone(), f.reason.clone()));
    if let Some(p) = &now.last_promotion
        && recorded != Some((p.from.clone(), p.to.clone(), p.reason.clone()))
    {
        let (reason, type_) = if p.reason == "switchover" {
            ("Switchover", EventType::Normal)
        } else {
            ("Failover", EventType::Warning)
        };
        record(
            ctx,
            resource,
            type_,
            reason,
            format!(
                "primary moved from {} to {} ({}) in {} ms",
                p.from, p.to, p.reason, p.duration_ms
            ),
        )
        .await;
    }
    // A held failover needs a person: say so once per reason.
    let recorded_pending = resource
        .status
        .as_ref()
        .and_then(|s| s.database.as_ref())
        .and_then(|d| d.failover_pending.as_deref());
    if let Some(why) = now.failover_held()
        && recorded_pending != Some(why)
    {
        record(
            ctx,
            resource,
            EventType::Warning,
            "FailoverHeld",
            why.to_string(),
        )
        .await;
    }
    let recorder = ctx.recorder.clone();
    let reference = resource.object_ref(&());
    let done_topologies = topologies.clone();
    let done_cc = resource.clone();
    topologies.switchover(&ctx.client, resource, move |outcome| {
        done_topologies.switchover_done(&done_cc);
        let (type_, note) = match outcome {
            Ok(note) => (EventType::Normal, note),
            Err(note) => (EventType::Warning, note),
        };
        tokio::spawn(async move {
            let event = Event {
                type_,
                reason: "SwitchoverRequest".into(),
                note: Some(note),
                action: "Switchover".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "cannot publish event");
            }
        });
    });
    Ok(now)
}

/// What the builders need from the cluster: the current replica counts of autoscaled services.
async fn observe(
    client: &Client,
    resource: &ChatCluster,
    owner: &ClusterRef,
) -> Result<Observed, Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &owner.namespace);
    let mut observed = Observed::default();
    for (kind, svc) in resource.spec.services.iter() {
        if svc.autoscaling.is_none() {
            continue;
        }
        let name = names::service(owner, kind);
        let current = api
            .get_opt(&name)
            .await
            .map_err(Error::kube("get", "Deployment", &name))?
            .and_then(|d| d.spec.replicas);
        if let Some(replicas) = current {
            observed.current_replicas.insert(kind, replicas);
        }
    }
    Ok(observed)
}

/// Write the status when it changed, and announce phase changes as events.
async fn publish_status(
    ctx: &Context,
    resource: &ChatCluster,
    status: &ChatClusterStatus,
) -> Result<(), Error> {
    let previous = resource.status.as_ref();
    if previous == Some(status) {
        return Ok(());
    }
    let name = resource.name_any();
    let api: Api<ChatCluster> = Api::namespaced(
        ctx.client.clone(),
        &resource.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": ChatCluster::api_version(&()),
        "kind": ChatCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch status of", "ChatCluster", &name))?;

    let previous_phase = previous.map(|s| s.phase);
    if previous_phase != Some(status.phase) {
        let message = status
            .conditions
            .iter()
            .find(|c| {
                c.type_
                    == match status.phase {
                        Phase::Degraded => crate::api::condition::DEGRADED,
                        Phase::Ready | Phase::Progressing => crate::api::condition::READY,
                    }
            })
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let type_ = match status.phase {
            Phase::Degraded => EventType::Warning,
            Phase::Ready | Phase::Progressing => EventType::Normal,
        };
        record(ctx, resource, type_, status.phase.as_str(), message).await;
    }
    Ok(())
}

/// Requeue a failed reconcile with exponential backoff per ChatCluster (5 s doubling to 5 min).
pub fn error_policy(resource: Arc<ChatCluster>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(backoff(&resource, &ctx))
}

fn backoff(resource: &ChatCluster, ctx: &Context) -> Duration {
    let mut failures = ctx.failures_lock();
    let count = failures.entry(ObjectRef::from_obj(resource)).or_insert(0);
    let delay = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(*count))
        .min(BACKOFF_MAX);
    *count = count.saturating_add(1);
    delay
}
