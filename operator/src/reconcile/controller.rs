//! The kube-runtime Controllers: watch ChatClusters and, through owner references, every
//! child kind, so drift (a deleted Deployment, a hand-edited replica count) is repaired. One
//! Controller watches every namespace, or one runs per watched namespace (a namespaced
//! install, whose Roles grant nothing elsewhere).

use std::{future::Future, sync::Arc};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{
    Api, Client,
    runtime::{Controller, watcher},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Context, error_policy, reconcile};
use crate::{api::ChatCluster, build::labels};

/// What one operator watches: every namespace (a ClusterRole), or a list of them (a Role in
/// each, for a namespaced install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// These namespaces only; ChatClusters elsewhere are not seen.
    Namespaces(Vec<String>),
}

impl Scope {
    /// The scope a list of namespaces names (empty names and repeats left out): all of them
    /// when it is empty.
    pub fn of(namespaces: Vec<String>) -> Self {
        let mut namespaces: Vec<String> =
            namespaces.into_iter().filter(|n| !n.is_empty()).collect();
        // One controller per namespace: a name given twice would start two.
        namespaces.sort();
        namespaces.dedup();
        if namespaces.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(namespaces)
        }
    }

    /// What each controller watches: `None` for every namespace.
    fn namespaces(&self) -> Vec<Option<String>> {
        match self {
            Self::Cluster => vec![None],
            Self::Namespaces(list) => list.iter().cloned().map(Some).collect(),
        }
    }
}

/// `K` in `namespace`, or in every namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        None => Api::all(client.clone()),
        Some(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// Run one controller per namespace of `scope` until `shutdown` completes; reconciles in
/// flight finish first. Each ChatCluster sent on `wake` is reconciled again (the topology
/// loops send theirs when what they see changes).
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    scope: Scope,
    mut wake: mpsc::UnboundedReceiver<ObjectRef<ChatCluster>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let mut routes = Vec::new();
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in scope.namespaces() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (store, controller) = watch(
            client.clone(),
            namespace.clone(),
            ctx.clone(),
            rx,
            shutdown.clone(),
        );
        routes.push((namespace, tx));
        stores.push(store);
        controllers.push(controller);
    }
    // A wake goes to the controller of its namespace.
    tokio::spawn(async move {
        while let Some(obj) = wake.recv().await {
            let route = routes
                .iter()
                .find(|(ns, _)| ns.is_none() || *ns == obj.namespace);
            if let Some((_, tx)) = route {
                let _ = tx.send(obj);
            }
        }
    });
    // Loops of deleted ChatClusters stop (no finalizer: the Controller never sees a deletion).
    let topologies = ctx.topologies.clone();
    let autoscalers = ctx.autoscalers.clone();
    let metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            every.tick().await;
            let exists = |key: &_| stores.iter().any(|s| s.get(key).is_some());
            if let Some(t) = &topologies {
                t.retain(exists);
            }
            if let Some(a) = &autoscalers {
                a.retain(exists);
            }
            metrics.retain(|namespace, name| {
                exists(&ObjectRef::<ChatCluster>::new(name).within(namespace))
            });
        }
    });
    futures::future::join_all(controllers).await;
}

/// One Controller over the ChatClusters of `namespace` (`None`: all) and the children they
/// own: its store of ChatClusters, and the future that runs it.
fn watch(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    wake: mpsc::UnboundedReceiver<ObjectRef<ChatCluster>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Store<ChatCluster>, impl Future<Output = ()>) {
    let wake = futures::stream::unfold(wake, |mut rx| async move {
        rx.recv().await.map(|obj| (obj, rx))
    });
    // Watch only the operator's own children, not every Secret and Service in the cluster.
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let (client, namespace) = (&client, namespace.as_deref());
    let controller = Controller::new(
        api::<ChatCluster>(client, namespace),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    let run = controller
        .reconcile_on(wake)
        .owns(api::<Deployment>(client, namespace), children.clone())
        .owns(api::<StatefulSet>(client, namespace), children.clone())
        .owns(api::<Service>(client, namespace), children.clone())
        .owns(api::<ConfigMap>(client, namespace), children.clone())
        .owns(api::<Secret>(client, namespace), children.clone())
        .owns(api::<ServiceAccount>(client, namespace), children.clone())
        .owns(api::<Role>(client, namespace), children.clone())
        .owns(api::<RoleBinding>(client, namespace), children.clone())
        .owns(
            api::<PodDisruptionBudget>(client, namespace),
            children.clone(),
        )
        .owns(api::<NetworkPolicy>(client, namespace), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(cluster = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        });
    (store, run)
}
