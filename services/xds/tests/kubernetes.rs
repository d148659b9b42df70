//! Kubernetes discovery against the in-memory API: EndpointSlices of one ChatCluster become
//! endpoints (ready, draining when terminating, absent otherwise), and the TLS Secret the
//! certificate; changes are followed through the watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_xds::{
    discovery::{Discovered, kubernetes},
    model::Endpoint,
};
use chatcluster_testkit::FakeApi;
use chatcluster_types::xds::{KubernetesDiscovery, LoadBalancing, XdsConfig};
use k8s_openapi::api::{core::v1::Secret, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::watch;

mod common;

fn config() -> XdsConfig {
    XdsConfig {
        cluster: "demo".into(),
        listener_port: 8443,
        plaintext_port: None,
        listen_address: None,
        grpc_web: true,
        rate_limit: None,
        services: vec![
            common::service("auth", LoadBalancing::LeastRequest),
            common::service("groups", LoadBalancing::LeastRequest),
        ],
        upstream_tls: None,
        kubernetes: Some(discovery()),
    }
}

fn discovery() -> KubernetesDiscovery {
    KubernetesDiscovery {
        namespace: "chat".into(),
        endpoint_selector: "chatcluster.io/cluster=demo".into(),
        tls_secret: "demo-envoy-tls".into(),
        services: [("auth", "demo-auth"), ("groups", "demo-groups")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    }
}

fn slice(name: &str, service: &str, cluster: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "chat",
            "labels": { "kubernetes.io/service-name": service, "chatcluster.io/cluster": cluster }
        },
        "addressType": "IPv4",
        "ports": [{ "name": "grpc", "port": 50051, "protocol": "TCP" }, { "name": "metrics", "port": 9090 }],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> serde_json::Value {
    json!({ "addresses": [ip], "conditions": { "ready": ready, "serving": serving, "terminating": terminating } })
}

async fn until(
    rx: &mut watch::Receiver<Discovered>,
    f: impl Fn(&Discovered) -> bool,
) -> Discovered {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if f(&rx.borrow_and_update()) {
                return rx.borrow().clone();
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("discovery caught up")
}

#[tokio::test]
async fn endpoint_slices_and_the_tls_secret_are_followed() {
    let api = FakeApi::new();
    let client = api.client();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "chat");
    let pp = PostParams::default();
    // Ours, and (the last) another ChatCluster's in the same namespace, which is not ours.
    for (name, service, cluster, endpoints) in [
        (
            "auth-a",
            "demo-auth",
            "demo",
            json!([
                ep("10.0.0.1", true, true, false),
                ep("10.0.0.2", false, false, false),
            ]),
        ),
        (
            "groups-a",
            "demo-groups",
            "demo",
            json!([ep("10.0.1.1", true, true, false)]),
        ),
        (
            "other-auth",
            "other-auth",
            "other",
            json!([ep("10.9.9.9", true, true, false)]),
        ),
    ] {
        slices
            .create(&pp, &slice(name, service, cluster, endpoints))
            .await
            .unwrap();
    }

    let (tx, mut rx) = watch::channel(Discovered::default());
    let task = tokio::spawn(kubernetes::watch(client.clone(), config(), discovery(), tx));
    let got = until(&mut rx, |d| {
        d.endpoints.get("groups").is_some_and(|e| !e.is_empty())
    })
    .await;
    let endpoint = |ip: &str, ready, terminating| Endpoint {
        address: ip.into(),
        port: 50051,
        ready,
        terminating,
    };
    assert_eq!(
        got.endpoints["auth"],
        vec![endpoint("10.0.0.1", true, false)],
        "not-ready left out"
    );
    assert_eq!(
        got.endpoints["groups"],
        vec![endpoint("10.0.1.1", true, false)]
    );
    assert_eq!(got.endpoints.len(), 2, "{:?}", got.endpoints);

    // A pod shutting down: terminating but still serving → draining.
    slices
        .patch(
            "auth-a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "endpoints": [
                ep("10.0.0.1", false, true, true),
                ep("10.0.0.2", true, true, false),
            ]})),
        )
        .await
        .unwrap();
    let got = until(&mut rx, |d| d.endpoints["auth"].len() == 2).await;
    assert_eq!(
        got.endpoints["auth"],
        vec![
            endpoint("10.0.0.1", false, true),
            endpoint("10.0.0.2", true, false)
        ]
    );

    // The certificate arrives, then rotates.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "chat");
    let tls = |cert: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": "demo-envoy-tls", "namespace": "chat" },
            "stringData": { "tls.crt": cert, "tls.key": "KEY" }
        }))
        .unwrap()
    };
    secrets.create(&pp, &tls("CERT-1")).await.unwrap();
    let got = until(&mut rx, |d| d.certificate.is_some()).await;
    assert_eq!(got.certificate.unwrap().cert_pem, "CERT-1");
    secrets
        .replace("demo-envoy-tls", &pp, &tls("CERT-2"))
        .await
        .unwrap();
    let got = until(&mut rx, |d| {
        d.certificate
            .as_ref()
            .is_some_and(|c| c.cert_pem == "CERT-2")
    })
    .await;
    assert_eq!(got.certificate.unwrap().key_pem, "KEY");

    // A deleted slice takes its endpoints away.
    slices
        .delete("groups-a", &Default::default())
        .await
        .unwrap();
    until(&mut rx, |d| d.endpoints["groups"].is_empty()).await;
    task.abort();
}
