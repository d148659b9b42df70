//! The internal certificates' side effects: observe each component's Secret, let
//! [`pki::renewal`] decide, issue and apply what is due. Runs after the CA Secret exists
//! (a generated Secret) and before the pods that mount the certificates are applied.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tracing::info;

use super::apply;
use crate::{
    Error,
    api::ChatClusterSpec,
    build::{self, ClusterRef, internal_tls, names},
    pki::{self, Ca},
};

/// What [`ensure`] leaves behind.
pub struct Certificates {
    /// How long until the next certificate falls due, so the reconcile comes back in time.
    pub renew_in: Duration,
    /// The CA's fingerprint ([`crate::build::Observed::internal_ca`]).
    pub ca: String,
    /// Every certificate's renewal and expiry, the CA's first.
    pub dates: Vec<pki::Dates>,
}

impl Certificates {
    /// When the broker's certificate expires, in seconds since the epoch
    /// ([`crate::build::Observed::broker_certificate`]).
    pub fn broker_expiry(&self) -> Option<String> {
        let broker = self
            .dates
            .iter()
            .find(|d| d.name == chatcluster_types::identity::component::BROKER)?;
        let secs = broker
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?;
        Some(secs.as_secs().to_string())
    }
}

/// Issue every certificate that is missing or due, under the cluster's CA.
pub async fn ensure(
    client: &Client,
    owner: &ClusterRef,
    spec: &ChatClusterSpec,
    lifetime: Duration,
) -> Result<Certificates, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &owner.namespace);
    let ca_name = names::internal_ca(owner);
    let stored = api
        .get(&ca_name)
        .await
        .map_err(Error::kube("get", "Secret", &ca_name))?;
    let (cert, key) = internal_tls::ca_of(&stored).ok_or_else(|| {
        Error::InvalidObject(format!("Secret {ca_name} holds no CA certificate and key"))
    })?;
    let ca = Ca::from_pem(&cert, &key)?;
    let fingerprint = ca.fingerprint();
    let now = SystemTime::now();
    let mut next = lifetime;
    let mut dates: Vec<pki::Dates> = ca.dates().into_iter().collect();
    for leaf in internal_tls::leaves(owner, spec, lifetime) {
        let name = names::internal_tls(owner, &leaf.identity.component);
        let existing = api
            .get_opt(&name)
            .await
            .map_err(Error::kube("get", "Secret", &name))?;
        if let Some(secret) = &existing
            && !owner.controls(&secret.metadata)
        {
            return Err(Error::ForeignSecret(name));
        }
        let issued = existing.as_ref().and_then(internal_tls::issued_of);
        let issued = match pki::renewal(issued.as_ref(), &ca, &leaf, now) {
            None => issued,
            Some(why) => {
                let fresh = ca.issue(&leaf, now)?;
                let secret = internal_tls::leaf_secret(owner, &leaf, &fresh);
                let object = build::to_dynamic(&secret)?;
                apply::apply(client, &owner.namespace, &object).await?;
                info!(secret = %name, reason = ?why, "issued an internal certificate");
                Some(fresh)
            }
        };
        if let Some(d) = issued.as_ref().and_then(|i| pki::dates(&leaf, i)) {
            if let Some(at) = d.renew_at {
                next = next.min(at.duration_since(now).unwrap_or_default());
            }
            dates.push(d);
        }
    }
    Ok(Certificates {
        renew_in: next,
        ca: fingerprint,
        dates,
    })
}
