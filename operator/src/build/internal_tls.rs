//! The internal plane's certificates as Kubernetes holds them: the CA in a Secret created
//! once (like the other generated Secrets), and one `kubernetes.io/tls` Secret per component
//! with `ca.crt` beside the key pair, which the reconciler issues and renews
//! ([`crate::pki::renewal`]) and the component's pod mounts. Secret volumes are updated in
//! place, so a renewal reaches chat-xds and Envoy without a restart.

use std::{collections::BTreeMap, time::Duration};

use chatcluster_common::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use chatcluster_types::identity::{Identity, component};
use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::{
    ClusterRef, database, ingress, names,
    secrets::{self, TLS_SECRET_TYPE},
    xds,
};
use crate::{
    api::ChatClusterSpec,
    pki::{Ca, Issued, Leaf},
};

/// Key of the CA's private key in its Secret (its certificate is under [`CA_FILE`]).
pub const CA_KEY: &str = "ca.key";

/// The identity of `component` of this cluster.
pub fn identity(owner: &ClusterRef, component: &str) -> Identity {
    Identity::new(&owner.namespace, &owner.name, component)
}

/// The certificates the cluster's components need: chat-xds serves under its Service's
/// names; Envoy is its client and chatd's; each chat service's replicas serve Envoy and are
/// the broker's clients; the broker serves under its Service's names.
pub fn leaves(owner: &ClusterRef, spec: &ChatClusterSpec, lifetime: Duration) -> Vec<Leaf> {
    let svc = names::xds(owner);
    let ns = &owner.namespace;
    vec![
        Leaf {
            identity: identity(owner, component::XDS),
            dns_names: vec![
                svc.clone(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
            ],
            lifetime,
        },
        Leaf {
            identity: identity(owner, component::INGRESS),
            dns_names: Vec::new(),
            lifetime,
        },
        Leaf {
            identity: identity(owner, component::DATABASE),
            dns_names: database_names(owner, spec.database.replicas),
            lifetime,
        },
        Leaf {
            identity: identity(owner, component::BROKER),
            dns_names: super::broker::dns_names(owner),
            lifetime,
        },
    ]
    .into_iter()
    .chain(spec.services.iter().map(|(kind, _)| Leaf {
        identity: identity(owner, kind.as_str()),
        dns_names: Vec::new(),
        lifetime,
    }))
    .collect()
}

/// Every name a database server is reached by: the loop and the replicas use each pod's
/// name under the headless Service, chatd the `-primary` and `-replicas` Services. A
/// change in the number of replicas changes the names, and so renews the certificate.
fn database_names(owner: &ClusterRef, replicas: i32) -> Vec<String> {
    let headless = owner.service_host(&names::db_headless(owner));
    let pods = std::iter::once(names::db_initial_primary_pod(owner))
        .chain((0..replicas.max(0)).map(|i| format!("{}-{i}", names::db_replicas_set(owner))));
    pods.map(|pod| format!("{pod}.{headless}"))
        .chain([
            owner.service_host(&names::db_primary(owner)),
            owner.service_host(&names::db_replicas(owner)),
        ])
        .flat_map(|name| [format!("{name}.cluster.local"), name])
        .collect()
}

/// The Kubernetes component label of the pods holding `identity`'s certificate.
fn component_label(identity: &Identity) -> &str {
    match identity.component.as_str() {
        component::XDS => xds::COMPONENT,
        component::INGRESS => ingress::COMPONENT,
        component::DATABASE => database::COMPONENT,
        other => other,
    }
}

/// The CA's Secret.
pub fn ca_secret(owner: &ClusterRef, ca: &Ca) -> Secret {
    Secret {
        metadata: owner.meta(
            names::internal_ca(owner),
            owner.labels("pki", "chatcluster"),
        ),
        string_data: Some(BTreeMap::from([
            (CA_FILE.to_string(), ca.cert_pem().to_string()),
            (CA_KEY.to_string(), ca.key_pem().to_string()),
        ])),
        // Every certificate hangs on it: nothing may replace it under a running cluster.
        immutable: Some(true),
        ..Secret::default()
    }
}

/// `leaf`'s certificate Secret, holding `issued`. Not immutable: renewals replace it.
pub fn leaf_secret(owner: &ClusterRef, leaf: &Leaf, issued: &Issued) -> Secret {
    Secret {
        metadata: owner.meta(
            names::internal_tls(owner, &leaf.identity.component),
            owner.labels(component_label(&leaf.identity), "chatcluster"),
        ),
        type_: Some(TLS_SECRET_TYPE.into()),
        string_data: Some(BTreeMap::from([
            (CERT_FILE.to_string(), issued.cert_pem.clone()),
            (KEY_FILE.to_string(), issued.key_pem.clone()),
            (CA_FILE.to_string(), issued.ca_pem.clone()),
        ])),
        ..Secret::default()
    }
}

/// The component Secrets as `render` shows them: real names, type and keys, stand-in values.
pub fn placeholders(owner: &ClusterRef, spec: &ChatClusterSpec, lifetime: Duration) -> Vec<Secret> {
    let p = || secrets::PLACEHOLDER.to_string();
    let stand_in = Issued {
        cert_pem: p(),
        key_pem: p(),
        ca_pem: p(),
    };
    leaves(owner, spec, lifetime)
        .iter()
        .map(|leaf| secrets::placeholder(leaf_secret(owner, leaf, &stand_in)))
        .collect()
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let ByteString(bytes) = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.clone()).ok()
}

/// The CA a Secret read from the API holds.
pub fn ca_of(secret: &Secret) -> Option<(String, String)> {
    Some((text(secret, CA_FILE)?, text(secret, CA_KEY)?))
}

/// The certificate a leaf Secret read from the API holds.
pub fn issued_of(secret: &Secret) -> Option<Issued> {
    Some(Issued {
        cert_pem: text(secret, CERT_FILE)?,
        key_pem: text(secret, KEY_FILE)?,
        ca_pem: text(secret, CA_FILE)?,
    })
}
