//! Discovery in Kubernetes: the chat services' EndpointSlices (one ChatCluster's, by namespace
//! and label selector) through a kube-runtime reflector, and the TLS Secret Envoy serves.
//!
//! Endpoint conditions are honoured: ready endpoints take traffic; terminating ones that still
//! serve are sent as DRAINING (no new requests, running ones finish); the rest are left out.

use std::collections::BTreeMap;

use chatcluster_types::xds::{KubernetesDiscovery, XdsConfig};
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Secret, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Discovered, Source};

/// The Kubernetes source: one ChatCluster's EndpointSlices and its TLS Secret.
pub struct KubernetesSource {
    /// The API client.
    pub client: Client,
    /// The services (their ports are the fallback when a slice names none).
    pub config: XdsConfig,
    /// What to watch (namespace, label selector, Secret name, Service names).
    pub discovery: KubernetesDiscovery,
}

impl Source for KubernetesSource {
    async fn run(self, tx: watch::Sender<Discovered>) {
        watch(self.client, self.config, self.discovery, tx).await;
    }
}
use crate::model::{Certificate, Endpoint};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of each service `source` names, in `slices`.
pub fn endpoints_from_slices<'a>(
    config: &XdsConfig,
    source: &KubernetesDiscovery,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<String, Vec<Endpoint>> {
    let by_kubernetes_name: BTreeMap<&str, &str> = source
        .services
        .iter()
        .map(|(name, kubernetes)| (kubernetes.as_str(), name.as_str()))
        .collect();
    let mut out: BTreeMap<String, Vec<Endpoint>> = source
        .services
        .keys()
        .map(|name| (name.clone(), Vec::new()))
        .collect();
    for slice in slices {
        let Some(service) = slice
            .labels()
            .get(SERVICE_NAME_LABEL)
            .and_then(|k| by_kubernetes_name.get(k.as_str()))
        else {
            continue;
        };
        let wanted_port = config
            .services
            .iter()
            .find(|s| s.name == *service)
            .map(|s| s.port);
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .or_else(|| slice.ports.iter().flatten().next())
            .and_then(|p| p.port)
            .or(wanted_port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            let conditions = ep.conditions.clone().unwrap_or_default();
            let terminating = conditions.terminating.unwrap_or(false);
            // `ready` is unset only by old controllers: treat unknown as ready.
            let ready = conditions.ready.unwrap_or(true) && !terminating;
            let serving = conditions.serving.unwrap_or(ready);
            let draining = terminating && serving;
            if !(ready || draining) {
                continue;
            }
            for address in &ep.addresses {
                out.entry((*service).to_string())
                    .or_default()
                    .push(Endpoint {
                        address: address.clone(),
                        port,
                        ready,
                        terminating,
                    });
            }
        }
    }
    for list in out.values_mut() {
        list.sort();
        list.dedup();
    }
    out
}

/// The certificate in a `kubernetes.io/tls` Secret.
pub fn certificate_from_secret(secret: &Secret) -> Option<Certificate> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some(Certificate {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// Keep `tx` at what the cluster holds: EndpointSlices matching `source.endpoint_selector` and
/// the Secret `source.tls_secret`, both in `source.namespace`. Runs until the watches end.
pub async fn watch(
    client: Client,
    config: XdsConfig,
    source: KubernetesDiscovery,
    tx: watch::Sender<Discovered>,
) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &source.namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &source.namespace);
    let (store, writer) = reflector::store();
    let mut slice_events = watcher(
        slices,
        watcher::Config::default().labels(&source.endpoint_selector),
    )
    .default_backoff()
    .reflect(writer)
    .boxed();
    let mut secret_events = watcher(
        secrets,
        watcher::Config::default().fields(&format!("metadata.name={}", source.tls_secret)),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    loop {
        tokio::select! {
            // Every event, not only changed objects: the store takes the initial list only at
            // `InitDone`, and deletions must count too.
            event = slice_events.next() => match event {
                Some(Ok(event)) => {
                    if let watcher::Event::Apply(slice) | watcher::Event::Delete(slice) = &event {
                        debug!(slice = %slice.name_any(), "EndpointSlice changed");
                    }
                    let endpoints = endpoints_from_slices(&config, &source, store.state().iter().map(|s| s.as_ref()));
                    tx.send_if_modified(|d| {
                        let changed = d.endpoints != endpoints;
                        d.endpoints = endpoints;
                        changed
                    });
                }
                Some(Err(e)) => warn!(error = %e, "EndpointSlice watch"),
                None => return,
            },
            event = secret_events.next() => match event {
                Some(Ok(secret)) => {
                    let certificate = certificate_from_secret(&secret);
                    if certificate.is_none() {
                        warn!(secret = %secret.name_any(), "the TLS Secret lacks tls.crt or tls.key");
                        continue;
                    }
                    tx.send_if_modified(|d| {
                        let changed = d.certificate != certificate;
                        d.certificate = certificate;
                        changed
                    });
                }
                Some(Err(e)) => warn!(error = %e, "Secret watch"),
                None => return,
            },
        }
    }
}
