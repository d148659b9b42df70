//! The reconciler against the in-memory Kubernetes API: children appear, status follows them,
//! spec changes propagate, drift is repaired, invalid specs touch nothing, failures back off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use base64::Engine;
use chat_operator::{
    api::{ChatCluster, Phase, condition},
    metrics::Metrics,
    reconcile::{self, Context, error_policy, reconcile},
};
use chat_operator::{
    build::internal_tls,
    pki::{self, Ca, Issued, Leaf},
};
use chatcluster_testkit::FakeApi;
use chatcluster_types::identity::Identity;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service},
    rbac::v1::Role,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;

const NS: &str = "chat";

struct Harness {
    api: FakeApi,
    client: Client,
    ctx: Arc<Context>,
}

impl Harness {
    fn new() -> Self {
        let api = FakeApi::new();
        let client = api.client();
        let ctx = Arc::new(Self::context(&client));
        Self { api, client, ctx }
    }

    fn context(client: &Client) -> Context {
        Context::new(
            client.clone(),
            Arc::new(Metrics::default()),
            Some("test".into()),
        )
    }

    /// This operator lets ChatClusters set their images (the chart's `allowImageOverrides`).
    fn allow_image_overrides(&mut self) {
        self.ctx = Arc::new(Self::context(&self.client).with_image_overrides(true));
    }

    /// Create Secret `name` of `type_` in the test namespace, as a user would.
    async fn put_secret(&self, name: &str, type_: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": NS },
            "type": type_,
            "stringData": { "tls.crt": "cert", "tls.key": "key" },
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// The whole controller over `scope`, running until the returned sender is used or dropped.
    fn run_controller(
        &self,
        scope: reconcile::Scope,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (_wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        let controller = tokio::spawn(reconcile::run(
            self.client.clone(),
            self.ctx.clone(),
            scope,
            wake_rx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        (stop_tx, controller)
    }

    fn clusters(&self) -> Api<ChatCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn create(&self, name: &str, spec: serde_json::Value) -> ChatCluster {
        self.create_in(NS, name, spec).await
    }

    async fn create_in(&self, namespace: &str, name: &str, spec: serde_json::Value) -> ChatCluster {
        let resource: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chatcluster.io/v1alpha1",
            "kind": "ChatCluster",
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        }))
        .unwrap();
        Api::<ChatCluster>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &resource)
            .await
            .unwrap()
    }

    async fn reconcile(&self, name: &str) -> Result<Action, chat_operator::Error> {
        let resource = self.clusters().get(name).await.unwrap();
        reconcile(Arc::new(resource), self.ctx.clone()).await
    }

    async fn status(&self, name: &str) -> chat_operator::api::ChatClusterStatus {
        self.clusters()
            .get(name)
            .await
            .unwrap()
            .status
            .expect("status written")
    }

    async fn set_spec(&self, name: &str, spec: serde_json::Value) {
        self.clusters()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// Play the workload controllers: every Deployment and StatefulSet reports all replicas
    /// ready at its current generation.
    async fn mark_children_ready(&self) {
        for d in self.deployments().list(&Default::default()).await.unwrap() {
            let n = d.spec.replicas.unwrap_or(1);
            let status = json!({ "status": {
                "observedGeneration": d.metadata.generation,
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
            }});
            self.deployments()
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await
                .unwrap();
        }
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        for s in sets.list(&Default::default()).await.unwrap() {
            let n = s.spec.replicas.unwrap_or(1);
            let status = json!({ "status": {
                "observedGeneration": s.metadata.generation,
                "replicas": n, "readyReplicas": n, "currentReplicas": n, "updatedReplicas": n,
            }});
            sets.patch_status(
                &s.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .unwrap();
        }
    }

    fn condition(
        status: &chat_operator::api::ChatClusterStatus,
        type_: &str,
    ) -> (String, String, String) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn child_writes(&self) -> usize {
        self.api
            .writes()
            .iter()
            .filter(|w| {
                !w.key.resource.starts_with("chatcluster.io/")
                    && !w.key.resource.starts_with("events.k8s.io/")
            })
            .count()
    }
}

#[tokio::test]
async fn create_builds_every_child_and_reports_progressing() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    let action = h.reconcile("demo").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));

    let mut deployments = h.api.names("apps/v1/deployments", NS);
    deployments.sort();
    assert_eq!(
        deployments,
        [
            "demo-auth",
            "demo-broker",
            "demo-dms",
            "demo-envoy",
            "demo-gateway",
            "demo-groups",
            "demo-servers",
            "demo-xds"
        ]
    );
    assert_eq!(h.api.names("apps/v1/statefulsets", NS).len(), 2);
    assert_eq!(h.api.names("v1/services", NS).len(), 11);
    assert_eq!(h.api.names("v1/configmaps", NS).len(), 4);
    assert_eq!(h.api.names("policy/v1/poddisruptionbudgets", NS).len(), 8);
    assert_eq!(h.api.names("v1/serviceaccounts", NS), ["demo-xds"]);
    assert_eq!(
        h.api.names("rbac.authorization.k8s.io/v1/roles", NS),
        ["demo-xds"]
    );
    assert_eq!(
        h.api.names("rbac.authorization.k8s.io/v1/rolebindings", NS),
        ["demo-xds"]
    );
    let mut secrets = h.api.names("v1/secrets", NS);
    secrets.sort();
    assert_eq!(
        secrets,
        [
            "demo-auth-internal-tls",
            "demo-broker-internal-tls",
            "demo-db",
            "demo-db-internal-tls",
            "demo-dms-internal-tls",
            "demo-envoy-tls",
            "demo-gateway-internal-tls",
            "demo-groups-internal-tls",
            "demo-ingress-internal-tls",
            "demo-internal-ca",
            "demo-servers-internal-tls",
            "demo-token-key",
            "demo-xds-internal-tls"
        ]
    );

    // The broker's pod names its certificate's expiry, so a renewal rolls it.
    let broker = h.deployments().get("demo-broker").await.unwrap();
    let marks = broker.spec.template.metadata.unwrap().annotations.unwrap();
    let expiry: u64 = marks["chatcluster.io/broker-certificate"].parse().unwrap();
    assert!(expiry > 1_700_000_000, "{marks:?}");

    // Children carry the owner reference of the live object.
    let resource = h.clusters().get("demo").await.unwrap();
    let dep = h.deployments().get("demo-auth").await.unwrap();
    assert_eq!(dep.owner_references()[0].uid, resource.uid().unwrap());

    let status = h.status("demo").await;
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(Harness::condition(&status, condition::READY).0, "False");
    assert_eq!(
        Harness::condition(&status, condition::PROGRESSING).0,
        "True"
    );
    assert_eq!(Harness::condition(&status, condition::DEGRADED).0, "False");
    assert_eq!(
        Harness::condition(&status, condition::DATABASE_READY).0,
        "False"
    );
    assert!(
        Harness::condition(&status, condition::READY)
            .2
            .contains("waiting for service auth 0/2")
    );
    assert_eq!(status.services_ready.as_deref(), Some("0/5"));
    assert_eq!(
        status
            .database
            .as_ref()
            .and_then(|d| d.primary.clone())
            .as_deref(),
        Some("demo-db-primary-0")
    );

    // Events tell the story.
    let events = h.api.names("events.k8s.io/v1/events", NS);
    // The recorder folds repeats of a reason into one event series.
    assert!(events.len() >= 2, "{events:?}");
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| h.api.object("events.k8s.io/v1/events", NS, e))
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SecretGenerated"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Progressing"), "{reasons:?}");
}

#[tokio::test]
async fn ready_children_make_the_cluster_ready() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    h.mark_children_ready().await;
    let action = h.reconcile("demo").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    let status = h.status("demo").await;
    assert_eq!(status.phase, Phase::Ready);
    let (ready, reason, _) = Harness::condition(&status, condition::READY);
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("True", "AllComponentsReady")
    );
    assert_eq!(
        Harness::condition(&status, condition::PROGRESSING).0,
        "False"
    );
    assert_eq!(
        Harness::condition(&status, condition::DATABASE_READY).0,
        "True"
    );
    assert_eq!(status.services_ready.as_deref(), Some("5/5"));
    assert_eq!(status.services["groups"].ready, 2);
    assert_eq!(status.endpoint.as_deref(), Some("demo-envoy.chat.svc:443"));

    // The load balancer's address becomes the endpoint once it has one.
    let services: Api<Service> = Api::namespaced(h.client.clone(), NS);
    services
        .patch_status(
            "demo-envoy",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }] } } }),
            ),
        )
        .await
        .unwrap();
    h.reconcile("demo").await.unwrap();
    assert_eq!(
        h.status("demo").await.endpoint.as_deref(),
        Some("203.0.113.7:443")
    );

    // A steady cluster's reconcile writes nothing: no status churn, no transition-time churn.
    let before = h.api.writes().len();
    h.reconcile("demo").await.unwrap();
    assert_eq!(
        h.api.writes().len(),
        before,
        "{:?}",
        &h.api.writes()[before..]
    );
}

#[tokio::test]
async fn spec_changes_reach_the_children() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    h.mark_children_ready().await;
    h.reconcile("demo").await.unwrap();
    let root_password = |s: Secret| s.data.unwrap()["root-password"].0.clone();
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    let password_before = root_password(secrets.get("demo-db").await.unwrap());
    // The user's certificate, which a spec may name only once it exists.
    h.put_secret("my-cert", "kubernetes.io/tls").await;

    h.set_spec(
        "demo",
        json!({
            "services": { "auth": { "replicas": 4 } },
            "database": { "engine": "mariadb", "replicas": 3 },
            "ingress": { "tls": { "secretName": "my-cert" } },
        }),
    )
    .await;
    h.reconcile("demo").await.unwrap();

    assert_eq!(
        h.deployments()
            .get("demo-auth")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(4)
    );
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), NS);
    let replica_set = sets.get("demo-db-replica").await.unwrap();
    assert_eq!(replica_set.spec.replicas, Some(3));
    let pod = replica_set.spec.template.spec.unwrap();
    assert!(
        pod.containers[0]
            .image
            .as_deref()
            .unwrap()
            .starts_with("mariadb:")
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), NS);
    let db_config = config_maps
        .get("demo-db-config")
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(db_config["chatcluster.cnf"].contains("[mariadb]"));
    let xds = config_maps.get("demo-xds").await.unwrap().data.unwrap();
    assert!(
        xds["xds.yaml"].contains("tlsSecret: my-cert"),
        "{}",
        xds["xds.yaml"]
    );
    let roles: Api<Role> = Api::namespaced(h.client.clone(), NS);
    let rules = roles.get("demo-xds").await.unwrap().rules.unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r.resource_names.as_ref() == Some(&vec!["my-cert".to_string()]))
    );

    // Generated credentials are never rotated by a reconcile.
    assert_eq!(
        root_password(secrets.get("demo-db").await.unwrap()),
        password_before
    );

    // The children have not caught up with the new spec: the cluster is progressing again.
    let status = h.status("demo").await;
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(status.observed_generation, Some(2));
    h.mark_children_ready().await;
    h.reconcile("demo").await.unwrap();
    assert_eq!(h.status("demo").await.phase, Phase::Ready);

    // Removing an applied field removes it from the child (server-side apply semantics).
    h.set_spec(
        "demo",
        json!({ "ingress": { "service": { "annotations": { "lb": "internal" } } } }),
    )
    .await;
    h.reconcile("demo").await.unwrap();
    let services: Api<Service> = Api::namespaced(h.client.clone(), NS);
    assert_eq!(
        services
            .get("demo-envoy")
            .await
            .unwrap()
            .annotations()
            .get("lb")
            .map(String::as_str),
        Some("internal")
    );
    h.set_spec(
        "demo",
        json!({ "ingress": { "service": { "annotations": null } } }),
    )
    .await;
    h.reconcile("demo").await.unwrap();
    assert!(
        services
            .get("demo-envoy")
            .await
            .unwrap()
            .annotations()
            .get("lb")
            .is_none()
    );
}

#[tokio::test]
async fn drift_is_repaired() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();

    h.deployments()
        .delete("demo-dms", &Default::default())
        .await
        .unwrap();
    h.deployments()
        .patch(
            "demo-groups",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 7 } })),
        )
        .await
        .unwrap();
    assert!(
        h.api
            .object("apps/v1/deployments", NS, "demo-dms")
            .is_none()
    );
    h.reconcile("demo").await.unwrap();
    assert_eq!(
        h.deployments().get("demo-dms").await.unwrap().spec.replicas,
        Some(2)
    );
    assert_eq!(
        h.deployments()
            .get("demo-groups")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(2)
    );
}

#[tokio::test]
async fn an_invalid_spec_degrades_and_touches_no_child() {
    let h = Harness::new();
    // Written straight to the API, as if the CRD's validation had been bypassed.
    h.create(
        "bad",
        json!({ "services": { "groups": { "autoscaling": { "minReplicas": 5, "maxReplicas": 2 } } } }),
    )
    .await;
    let action = h.reconcile("bad").await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(h.child_writes(), 0, "{:?}", h.api.writes());
    let status = h.status("bad").await;
    assert_eq!(status.phase, Phase::Degraded);
    let (degraded, reason, message) = Harness::condition(&status, condition::DEGRADED);
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        message.contains("spec.services.groups.autoscaling.maxReplicas"),
        "{message}"
    );
    assert!(message.contains("minReplicas (5)"), "{message}");
    assert_eq!(Harness::condition(&status, condition::READY).0, "False");

    // A healthy cluster made invalid keeps its children as they were.
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    let writes = h.child_writes();
    h.set_spec("demo", json!({ "services": { "auth": { "replicas": -3 } }, "database": { "storage": { "size": "lots" } } }))
        .await;
    h.reconcile("demo").await.unwrap();
    assert_eq!(h.child_writes(), writes);
    let (_, _, message) = Harness::condition(&h.status("demo").await, condition::DEGRADED);
    assert!(message.contains("spec.services.auth.replicas"), "{message}");
    assert!(message.contains("spec.database.storage.size"), "{message}");

    // Fixing the spec clears the condition.
    h.set_spec("demo", json!({ "services": { "auth": { "replicas": 3 } }, "database": { "storage": { "size": "20Gi" } } }))
        .await;
    h.reconcile("demo").await.unwrap();
    let status = h.status("demo").await;
    assert_eq!(Harness::condition(&status, condition::DEGRADED).0, "False");
    assert_eq!(
        h.deployments()
            .get("demo-auth")
            .await
            .unwrap()
            .spec
            .replicas,
        Some(3)
    );
}

#[tokio::test]
async fn apply_failures_degrade_and_back_off() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.api.fail_writes("apps/v1/statefulsets");
    let err = h.reconcile("demo").await.unwrap_err();
    assert!(
        err.to_string().contains("StatefulSet demo-db-primary"),
        "{err}"
    );
    let status = h.status("demo").await;
    assert_eq!(status.phase, Phase::Degraded);
    let (_, reason, message) = Harness::condition(&status, condition::DEGRADED);
    assert_eq!(reason, "ApplyFailed");
    assert!(message.contains("injected failure"), "{message}");

    let resource = Arc::new(h.clusters().get("demo").await.unwrap());
    let delays: Vec<Action> = (0..4)
        .map(|_| error_policy(resource.clone(), &err, h.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20, 40].map(|s| Action::requeue(Duration::from_secs(s)))
    );

    h.api.heal();
    h.reconcile("demo").await.unwrap();
    assert_eq!(h.status("demo").await.phase, Phase::Progressing);
    // Success resets the backoff.
    assert_eq!(
        error_policy(resource, &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    let text = h.ctx.metrics.encode().unwrap();
    assert!(
        text.contains("chat_operator_reconcile_failures_total{error=\"kube\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn generated_secrets_are_created_once() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    let before = secrets.get("demo-token-key").await.unwrap();
    h.reconcile("demo").await.unwrap();
    h.reconcile("demo").await.unwrap();
    let after = secrets.get("demo-token-key").await.unwrap();
    assert_eq!(before.data, after.data);
    assert_eq!(before.resource_version(), after.resource_version());
    let public = &after.data.unwrap()["public.pem"].0;
    assert!(String::from_utf8_lossy(public).starts_with("-----BEGIN PUBLIC KEY-----"));
    // The fake stores what a real API server would: base64 in `data`, not `stringData`.
    let raw = h.api.object("v1/secrets", NS, "demo-db").unwrap();
    let encoded = raw["data"]["app-user"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
        b"chat"
    );
}

/// `chat-operator render` output applied as is (its generated Secrets uncommented): the
/// operator refuses to run a cluster on passwords everyone knows, says which Secret, and
/// applies nothing.
#[tokio::test]
async fn a_rendered_placeholder_secret_is_refused() {
    let h = Harness::new();
    let resource = h.create("demo", json!({})).await;
    let rendered = chat_operator::render::render(&resource, Some(NS), None).unwrap();
    let placeholder = rendered
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some("demo-db"))
        .unwrap();
    assert!(chat_operator::render::is_placeholder(placeholder));
    let secret: Secret =
        serde_json::from_value(serde_json::to_value(placeholder).unwrap()).unwrap();
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), NS);
    secrets.create(&Default::default(), &secret).await.unwrap();

    let e = h.reconcile("demo").await.unwrap_err().to_string();
    assert!(e.contains("demo-db") && e.contains("placeholders"), "{e}");
    let sets: Api<StatefulSet> = Api::namespaced(h.client.clone(), NS);
    assert!(
        sets.get_opt("demo-db-primary").await.unwrap().is_none(),
        "nothing applied"
    );
}

/// The Secrets chat-xds's Role lets it read.
async fn granted_secrets(h: &Harness) -> Vec<String> {
    let role = Api::<Role>::namespaced(h.client.clone(), NS)
        .get("demo-xds")
        .await
        .unwrap();
    role.rules
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
        .flat_map(|r| r.resource_names.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_named_tls_secret_must_be_one_before_chat_xds_is_granted_it() {
    let h = Harness::new();
    h.put_secret("billing-db", "Opaque").await;
    h.put_secret("site", "kubernetes.io/tls").await;
    let degraded_for = |message: &str| {
        let message = message.to_string();
        move |status: chat_operator::api::ChatClusterStatus| {
            let (degraded, reason, text) = Harness::condition(&status, condition::DEGRADED);
            assert_eq!(
                (degraded.as_str(), reason.as_str()),
                ("True", "InvalidSpec")
            );
            assert!(text.contains("spec.ingress.tls.secretName"), "{text}");
            assert!(text.contains(&message), "{text}");
        }
    };
    let tls = |name: &str| json!({ "ingress": { "tls": { "secretName": name } } });

    // Not a certificate: the cluster is built, chat-xds is granted no Secret, and the
    // operator looks again soon.
    h.create("demo", tls("billing-db")).await;
    let action = h.reconcile("demo").await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert!(
        h.deployments()
            .get_opt("demo-auth")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(granted_secrets(&h).await, Vec::<String>::new());
    degraded_for("is of type Opaque")(h.status("demo").await);

    // A certificate is granted; pointing the spec at another Secret takes the grant back,
    // whether that one is missing or of another type.
    h.set_spec("demo", tls("site")).await;
    h.reconcile("demo").await.unwrap();
    assert_eq!(granted_secrets(&h).await, ["site"]);
    assert_eq!(
        Harness::condition(&h.status("demo").await, condition::DEGRADED).0,
        "False"
    );
    h.set_spec("demo", tls("missing")).await;
    h.reconcile("demo").await.unwrap();
    assert_eq!(granted_secrets(&h).await, Vec::<String>::new());
    degraded_for("does not exist")(h.status("demo").await);
}

#[tokio::test]
async fn a_generated_secret_someone_else_made_is_never_adopted() {
    let h = Harness::new();
    // Planted before the cluster exists: passwords, or a certificate, of someone's choosing.
    h.put_secret("demo-envoy-tls", "kubernetes.io/tls").await;
    h.create("demo", json!({})).await;
    let e = h.reconcile("demo").await.unwrap_err().to_string();
    assert!(
        e.contains("demo-envoy-tls") && e.contains("did not make"),
        "{e}"
    );
    assert!(h.deployments().get_opt("demo-xds").await.unwrap().is_none());
    // Its own are reused across reconciles.
    Api::<Secret>::namespaced(h.client.clone(), NS)
        .delete("demo-envoy-tls", &Default::default())
        .await
        .unwrap();
    h.reconcile("demo").await.unwrap();
    h.reconcile("demo").await.unwrap();
    assert_eq!(granted_secrets(&h).await, ["demo-envoy-tls"]);
}

/// The internal certificate `component`'s Secret holds, and the cluster's CA.
async fn internal_certificate(h: &Harness, component: &str) -> (Issued, Ca, Secret) {
    let secrets = Api::<Secret>::namespaced(h.client.clone(), NS);
    let ca = secrets.get("demo-internal-ca").await.unwrap();
    let (cert, key) = internal_tls::ca_of(&ca).unwrap();
    let leaf = secrets
        .get(&format!("demo-{component}-internal-tls"))
        .await
        .unwrap();
    let issued = internal_tls::issued_of(&leaf).unwrap();
    (issued, Ca::from_pem(&cert, &key).unwrap(), leaf)
}

#[tokio::test]
async fn internal_certificates_are_kept_and_replaced_when_due_or_not_the_cas() {
    let h = Harness::new();
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    let day = Duration::from_secs(24 * 3600);
    let leaf = |component: &str| Leaf {
        identity: Identity::new(NS, "demo", component),
        dns_names: Vec::new(),
        lifetime: 30 * day,
    };
    let now = std::time::SystemTime::now();
    let (xds, ca, secret) = internal_certificate(&h, "xds").await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let wanted = Leaf {
        dns_names: vec!["demo-xds.chat.svc".into()],
        ..leaf("xds")
    };
    assert_eq!(pki::renewal(Some(&xds), &ca, &wanted, now), None);
    let (envoy, _, _) = internal_certificate(&h, "ingress").await;
    assert_eq!(pki::renewal(Some(&envoy), &ca, &leaf("ingress"), now), None);

    // Kept while valid: reconciles do not reissue.
    h.reconcile("demo").await.unwrap();
    let (again, _, kept) = internal_certificate(&h, "xds").await;
    assert_eq!(again, xds);
    assert_eq!(kept.resource_version(), secret.resource_version());

    // Due (issued 21 of 30 days ago), or signed by another CA: replaced by a fresh one.
    let stranger = Ca::generate(NS, "demo", now).unwrap();
    for planted in [
        ca.issue(&wanted, now - 21 * day).unwrap(),
        stranger.issue(&wanted, now).unwrap(),
    ] {
        let mut replaced = kept.clone();
        replaced.data = None;
        replaced.string_data = Some(
            [
                ("tls.crt", planted.cert_pem.clone()),
                ("tls.key", planted.key_pem.clone()),
                ("ca.crt", ca.cert_pem().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        replaced.metadata.resource_version = None;
        Api::<Secret>::namespaced(h.client.clone(), NS)
            .replace("demo-xds-internal-tls", &PostParams::default(), &replaced)
            .await
            .unwrap();
        h.reconcile("demo").await.unwrap();
        let (renewed, _, _) = internal_certificate(&h, "xds").await;
        assert_ne!(renewed.cert_pem, planted.cert_pem);
        assert_eq!(pki::renewal(Some(&renewed), &ca, &wanted, now), None);
    }

    // The pods that trust the CA carry its fingerprint; a replaced CA (its Secret deleted and
    // made again) changes it, so they roll onto the new one.
    let marked = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("chatcluster.io/internal-ca").cloned())
    };
    let before = marked(&h.deployments().get("demo-groups").await.unwrap());
    assert_eq!(before.as_deref(), Some(ca.fingerprint().as_str()));
    let secrets = Api::<Secret>::namespaced(h.client.clone(), NS);
    secrets
        .delete("demo-internal-ca", &Default::default())
        .await
        .unwrap();
    h.reconcile("demo").await.unwrap();
    let (_, new_ca, _) = internal_certificate(&h, "xds").await;
    for name in ["demo-xds", "demo-envoy", "demo-groups"] {
        let now = marked(&h.deployments().get(name).await.unwrap());
        assert_eq!(
            now.as_deref(),
            Some(new_ca.fingerprint().as_str()),
            "{name}"
        );
        assert_ne!(now, before, "{name}");
    }

    // One this cluster did not make is never overwritten: the reconcile fails, naming it.
    secrets
        .delete("demo-ingress-internal-tls", &Default::default())
        .await
        .unwrap();
    h.put_secret("demo-ingress-internal-tls", "kubernetes.io/tls")
        .await;
    let e = h.reconcile("demo").await.unwrap_err().to_string();
    assert!(e.contains("demo-ingress-internal-tls"), "{e}");
}

#[tokio::test]
async fn images_of_the_specs_own_are_refused_unless_the_operator_allows_them() {
    let mut h = Harness::new();
    h.create(
        "demo",
        json!({ "services": { "auth": { "image": "evil/chatd:1" } }, "xds": { "image": "evil/xds:1" } }),
    )
    .await;
    let action = h.reconcile("demo").await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(h.child_writes(), 0, "nothing applied");
    let (degraded, reason, message) =
        Harness::condition(&h.status("demo").await, condition::DEGRADED);
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    for field in ["spec.services.auth.image", "spec.xds.image"] {
        assert!(message.contains(field), "{message}");
    }
    assert!(message.contains("allowImageOverrides"), "{message}");

    h.allow_image_overrides();
    h.reconcile("demo").await.unwrap();
    let auth = h.deployments().get("demo-auth").await.unwrap();
    let image = auth.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("evil/chatd:1"));
}

/// The whole controller, with its watches: children appear by themselves, and a deleted or
/// hand-edited child is put back without anyone calling reconcile.
#[tokio::test]
async fn controller_watches_and_repairs_children() {
    let h = Harness::new();
    let (stop_tx, controller) = h.run_controller(reconcile::Scope::Cluster);
    h.create("demo", json!({})).await;

    async fn eventually<F: Fn() -> bool>(what: &str, f: F) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }
    eventually("children", || {
        h.api.names("apps/v1/deployments", NS).len() == 8
    })
    .await;

    h.deployments()
        .delete("demo-envoy", &Default::default())
        .await
        .unwrap();
    eventually("envoy recreated", || {
        h.api
            .object("apps/v1/deployments", NS, "demo-envoy")
            .is_some()
    })
    .await;

    h.deployments()
        .patch(
            "demo-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 9 } })),
        )
        .await
        .unwrap();
    eventually("replicas reverted", || {
        h.api
            .object("apps/v1/deployments", NS, "demo-auth")
            .is_some_and(|d| d["spec"]["replicas"] == 2)
    })
    .await;

    // Status follows the children's status through the watch, too.
    h.mark_children_ready().await;
    let clusters = h.clusters();
    let mut phase = Phase::Progressing;
    for _ in 0..200 {
        phase = clusters
            .get("demo")
            .await
            .unwrap()
            .status
            .map(|s| s.phase)
            .unwrap_or_default();
        if phase == Phase::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(phase, Phase::Ready);

    // Deleting the ChatCluster garbage-collects every child.
    clusters.delete("demo", &Default::default()).await.unwrap();
    assert!(h.api.names("apps/v1/deployments", NS).is_empty());
    assert!(h.api.names("v1/secrets", NS).is_empty());

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("controller stops on shutdown")
        .unwrap();
}

/// A load signal the test sets: the groups service's request rate.
struct Scripted(std::sync::Mutex<f64>);

impl reconcile::autoscaling::LoadSource for Scripted {
    fn load<'a>(
        &'a self,
        _client: &'a Client,
        _owner: &'a chat_operator::build::ClusterRef,
    ) -> futures::future::BoxFuture<'a, Result<reconcile::autoscaling::Observation, String>> {
        let rps = *self.0.lock().unwrap();
        Box::pin(async move {
            Ok(reconcile::autoscaling::Observation {
                load: chat_operator::autoscale::signal::LoadReport {
                    services: [(
                        "groups".to_string(),
                        chat_operator::autoscale::signal::ServiceLoad {
                            requests_per_second: rps,
                            in_flight: 1,
                            envoys: 2,
                        },
                    )]
                    .into(),
                },
                cpu: Default::default(),
            })
        })
    }
}

#[tokio::test]
async fn the_autoscaler_sets_the_deployment_replicas_and_reports_them() {
    let api = FakeApi::new();
    let client = api.client();
    let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel();
    let source = Arc::new(Scripted(std::sync::Mutex::new(50.0)));
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some("test".into())).with_autoscalers(
            Arc::new(reconcile::autoscaling::Autoscalers::new(
                wake_tx,
                source.clone(),
                Duration::from_millis(50),
            )),
        ),
    );
    let h = Harness { api, client, ctx };
    h.create(
        "demo",
        json!({ "services": { "groups": { "autoscaling": {
            "minReplicas": 2, "maxReplicas": 10, "targetRequestsPerSecond": 100,
            "scaleDownStabilizationSeconds": 0
        }}}}),
    )
    .await;
    h.reconcile("demo").await.unwrap();
    let replicas = |d: Deployment| d.spec.replicas;
    assert_eq!(
        replicas(h.deployments().get("demo-groups").await.unwrap()),
        Some(2)
    );
    assert_eq!(
        h.status("demo").await.autoscaling["groups"].desired_replicas,
        2
    );

    // Set the signal, wait until the autoscaler wakes the reconciler, reconcile; the groups
    // Deployment's replicas.
    let step = async |rps: f64, wake: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        *source.0.lock().unwrap() = rps;
        tokio::time::timeout(Duration::from_secs(5), wake.recv())
            .await
            .expect("the autoscaler wakes the reconciler")
            .unwrap();
        h.reconcile("demo").await.unwrap();
        replicas(h.deployments().get("demo-groups").await.unwrap())
    };

    // A load step: 600 requests/s against 100 per replica.
    assert_eq!(step(600.0, &mut wake).await, Some(6));
    let status = h.status("demo").await;
    let groups = &status.autoscaling["groups"];
    assert_eq!(
        (groups.desired_replicas, groups.requests_per_second.as_str()),
        (6, "600.0")
    );
    assert!(
        h.api
            .writes()
            .iter()
            .any(|w| w.key.resource.starts_with("events.k8s.io/")),
        "a Scaled event"
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("chat_operator_autoscaler_desired_replicas{")
                && l.contains("service=\"groups\"")
                && l.ends_with(" 6")
        ),
        "{text}"
    );

    // Past the maximum the desired count stays at 10, so nothing wakes a reconcile; each
    // scrape still sees the recommendation grow (what ChatClusterAutoscalerAtMax reads). The
    // reconcile the new Deployment's watch event would bring tells the loop it has 6.
    h.reconcile("demo").await.unwrap();
    assert_eq!(step(1400.0, &mut wake).await, Some(10));
    *source.0.lock().unwrap() = 2000.0;
    let recommended = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("chat_operator_autoscaler_recommended_replicas{")
                    && l.contains("service=\"groups\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recommended(&metrics.encode().unwrap()).as_deref() != Some("20") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            metrics.encode().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wake.try_recv().is_err(),
        "a reconcile was woken at the maximum"
    );

    // Load gone, window 0: back to the minimum.
    assert_eq!(step(0.0, &mut wake).await, Some(2));
}

/// A child that is no longer desired (an earlier release made it, or the spec no longer asks
/// for it) is deleted once everything desired is applied; what the cluster does not control —
/// a user's object with the same labels, the generated Secrets — is kept.
#[tokio::test]
async fn children_no_longer_desired_are_pruned_and_nothing_else() {
    let mut h = Harness::new();
    let resource = h
        .create("demo", json!({ "database": { "engine": "mariadb" } }))
        .await;
    h.reconcile("demo").await.unwrap();
    let labels = json!({
        "chatcluster.io/cluster": "demo",
        "app.kubernetes.io/managed-by": "chat-operator",
    });
    let owner = json!([{
        "apiVersion": "chatcluster.io/v1alpha1", "kind": "ChatCluster", "name": "demo",
        "uid": resource.uid().unwrap(), "controller": true,
    }]);
    let config_maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), NS);
    for (name, owned) in [("demo-retired", true), ("demo-users-own", false)] {
        let mut meta = json!({ "name": name, "labels": labels });
        if owned {
            meta["ownerReferences"] = owner.clone();
        }
        let cm: ConfigMap = serde_json::from_value(json!({ "metadata": meta })).unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let retired_service: Service = serde_json::from_value(json!({
        "metadata": { "name": "demo-retired", "labels": labels, "ownerReferences": owner },
        "spec": { "ports": [{ "port": 80 }] },
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(h.client.clone(), NS);
    services
        .create(&PostParams::default(), &retired_service)
        .await
        .unwrap();
    let secrets_before = h.api.names("v1/secrets", NS);

    // A new release of the operator starts (pruning runs once per generation and process).
    h.ctx = Arc::new(Context::new(
        h.client.clone(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    ));
    h.reconcile("demo").await.unwrap();
    let cms = h.api.names("v1/configmaps", NS);
    assert!(!cms.contains(&"demo-retired".to_string()), "{cms:?}");
    assert!(
        cms.contains(&"demo-users-own".to_string()),
        "not ours: kept"
    );
    assert!(
        cms.contains(&"demo-db-seed".to_string()),
        "still desired: kept"
    );
    assert!(
        !h.api
            .names("v1/services", NS)
            .contains(&"demo-retired".to_string())
    );
    assert_eq!(h.api.names("v1/secrets", NS), secrets_before);
    // Reconciles at the same generation do not list every kind again.
    let pruning = h.api.requests();
    h.reconcile("demo").await.unwrap();
    let steady = h.api.requests() - pruning;
    h.ctx = Arc::new(Context::new(
        h.client.clone(),
        Arc::new(Metrics::default()),
        Some("test".into()),
    ));
    let before = h.api.requests();
    h.reconcile("demo").await.unwrap();
    let with_pruning = h.api.requests() - before;
    assert!(
        steady + 8 <= with_pruning,
        "steady {steady} requests, with pruning {with_pruning}"
    );

    // The spec no longer asks for a child: MySQL has no re-seed approvals. (The API server
    // refuses this change of engine — a CEL rule, tested in crd.rs — and the in-memory API
    // does not run CEL: here it only stands for any child the spec stops asking for.)
    h.set_spec("demo", json!({ "database": { "engine": "mysql" } }))
        .await;
    h.reconcile("demo").await.unwrap();
    assert!(
        !h.api
            .names("v1/configmaps", NS)
            .contains(&"demo-db-seed".to_string())
    );
    assert!(
        h.api
            .names("v1/configmaps", NS)
            .contains(&"demo-db-config".to_string())
    );
}

/// A namespaced install: the controllers watch their namespaces, and a ChatCluster anywhere
/// else is never seen, so the operator needs no permission there.
#[tokio::test]
async fn a_namespaced_operator_reconciles_only_its_namespaces() {
    let h = Harness::new();
    let (stop_tx, controller) =
        h.run_controller(reconcile::Scope::Namespaces(vec![NS.into(), "team".into()]));
    h.create_in(NS, "demo", json!({})).await;
    h.create_in("team", "theirs", json!({})).await;
    h.create_in("other", "unseen", json!({})).await;
    let mut waited = 0;
    while h.api.names("apps/v1/deployments", NS).len() < 6
        || h.api.names("apps/v1/deployments", "team").len() < 6
    {
        assert!(waited < 200, "the watched namespaces' children never came");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    // Long enough for the unwatched one to have been reconciled too, were it seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.api.names("apps/v1/deployments", "other").is_empty());
    assert!(h.api.names("v1/secrets", "other").is_empty());

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .expect("controllers stop")
        .unwrap();
}

#[tokio::test]
async fn monitoring_follows_the_spec_and_a_missing_prometheus_operator_is_only_a_condition() {
    const GROUP: &str = "monitoring.coreos.com";
    let h = Harness::new();
    h.api.unserve(GROUP);
    h.create("demo", json!({})).await;
    h.reconcile("demo").await.unwrap();
    h.mark_children_ready().await;
    h.reconcile("demo").await.unwrap();
    let s = h.status("demo").await;
    let (status, reason, message) = Harness::condition(&s, condition::MONITORING);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NoPrometheusOperator")
    );
    assert!(message.contains("spec.monitoring.enabled"), "{message}");
    // The cluster itself is not held back by it.
    assert_eq!(s.phase, Phase::Ready);
    assert_eq!(Harness::condition(&s, condition::DEGRADED).0, "False");

    // Once the CRDs are installed, the next reconcile applies both.
    h.api.serve(GROUP);
    h.reconcile("demo").await.unwrap();
    let monitor = h.api.object(
        "monitoring.coreos.com/v1/podmonitors",
        NS,
        "demo-chatcluster",
    );
    let rule = h.api.object(
        "monitoring.coreos.com/v1/prometheusrules",
        NS,
        "demo-chatcluster",
    );
    assert_eq!(
        monitor.unwrap()["spec"]["selector"]["matchLabels"]["chatcluster.io/cluster"],
        "demo"
    );
    let groups = rule.unwrap()["spec"]["groups"].as_array().unwrap().len();
    assert!(groups >= 3, "{groups} rule groups");
    let s = h.status("demo").await;
    assert_eq!(Harness::condition(&s, condition::MONITORING).1, "Applied");

    // Turned off, they are deleted.
    h.set_spec("demo", json!({ "monitoring": { "enabled": false } }))
        .await;
    h.reconcile("demo").await.unwrap();
    assert!(
        h.api
            .names("monitoring.coreos.com/v1/podmonitors", NS)
            .is_empty()
    );
    assert!(
        h.api
            .names("monitoring.coreos.com/v1/prometheusrules", NS)
            .is_empty()
    );
    let s = h.status("demo").await;
    assert_eq!(Harness::condition(&s, condition::MONITORING).1, "Disabled");

    // An invalid label is refused, naming the field.
    h.set_spec(
        "demo",
        json!({ "monitoring": { "enabled": true, "labels": { "bad key!": "x" } } }),
    )
    .await;
    h.reconcile("demo").await.unwrap();
    let s = h.status("demo").await;
    let (_, reason, message) = Harness::condition(&s, condition::DEGRADED);
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.monitoring.labels"), "{message}");
}
