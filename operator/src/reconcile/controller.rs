//! The kube-runtime Controller: watches ChatClusters and, through owner references, every
//! child kind, so drift (a deleted Deployment, a hand-edited replica count) is repaired.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::runtime::reflector::ObjectRef;
use kube::{
    Api, Client,
    runtime::{Controller, watcher},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Context, error_policy, reconcile};
use crate::{api::ChatCluster, build::labels};

/// Run the controller until `shutdown` completes; reconciles in flight finish first. Each
/// ChatCluster sent on `wake` is reconciled again (the topology loops send theirs when what
/// they see changes).
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    wake: mpsc::UnboundedReceiver<ObjectRef<ChatCluster>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let wake = futures::stream::unfold(wake, |mut rx| async move {
        rx.recv().await.map(|obj| (obj, rx))
    });
    // Watch only the operator's own children, not every Secret and Service in the cluster.
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let controller = Controller::new(
        Api::<ChatCluster>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    // Loops of deleted ChatClusters stop (no finalizer: the Controller never sees a deletion).
    let store = controller.store();
    let topologies = ctx.topologies.clone();
    let autoscalers = ctx.autoscalers.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            every.tick().await;
            let exists = |key: &_| store.get(key).is_some();
            if let Some(t) = &topologies {
                t.retain(exists);
            }
            if let Some(a) = &autoscalers {
                a.retain(exists);
            }
        }
    });
    controller
        .reconcile_on(wake)
        .owns(Api::<Deployment>::all(client.clone()), children.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
        .owns(Api::<Service>::all(client.clone()), children.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
        .owns(Api::<Secret>::all(client.clone()), children.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), children.clone())
        .owns(Api::<Role>::all(client.clone()), children.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), children.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            children.clone(),
        )
        .owns(Api::<NetworkPolicy>::all(client), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(cluster = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile error"),
            }
        })
        .await;
}
