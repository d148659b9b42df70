//! Who may call a gRPC service of the internal plane. With internal TLS on, the handshake
//! already refused every peer without a certificate of the cluster's CA; this decides, per
//! service, which of the cluster's components may use it — in chat-xds, only Envoy receives
//! configuration (with it the listener's private key) or reports load; in chatd, only Envoy
//! calls the chat APIs and only the same service's replicas send fan-out hints. The decision
//! is pure ([`Admit::check`]); the interceptor only reads the peer's certificate.

use crate::tls;
use chatcluster_types::identity::Identity;
use tonic::{Request, Status, service::Interceptor};

/// The rule for one service.
#[derive(Debug, Clone)]
pub struct Admit {
    /// chat-xds's own identity; `None` when internal TLS is off, and every caller is admitted.
    own: Option<Identity>,
    /// Components of the same cluster that may call.
    components: Vec<String>,
}

impl Admit {
    /// Admit `components` of the cluster `own` belongs to.
    pub fn new(own: Option<Identity>, components: &'static [&'static str]) -> Self {
        Self {
            own,
            components: components.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Admit `components` and the same component as `own` (health checks and reflection,
    /// which a service's replicas and Envoy both use).
    pub fn with_peers(own: Option<Identity>, components: &'static [&'static str]) -> Self {
        let mut admit = Self::new(own.clone(), components);
        admit.components.extend(own.map(|o| o.component));
        admit
    }

    /// Whether a peer presenting `peer` may call.
    pub fn check(&self, peer: Option<&Identity>) -> Result<(), Status> {
        let Some(own) = &self.own else {
            return Ok(());
        };
        match peer {
            None => Err(Status::unauthenticated(
                "no ChatCluster identity in the client certificate",
            )),
            Some(peer) if !own.same_cluster(peer) => Err(Status::permission_denied(format!(
                "{peer} belongs to another cluster"
            ))),
            Some(peer) if !self.components.contains(&peer.component) => Err(
                Status::permission_denied(format!("{} may not call this service", peer.component)),
            ),
            Some(_) => Ok(()),
        }
    }
}

impl Interceptor for Admit {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        let peer = tls::peer_identity(certs.as_deref().map(Vec::as_slice));
        if let Err(status) = self.check(peer.as_ref()) {
            tracing::warn!(peer = ?peer, reason = status.message(), "call refused");
            return Err(status);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcluster_types::identity::component;

    const ENVOY_ONLY: &[&str] = &[component::INGRESS];

    #[test]
    fn only_the_clusters_envoy_is_admitted() {
        let own = Identity::new("chat", "demo", component::XDS);
        let admit = Admit::new(Some(own.clone()), ENVOY_ONLY);
        assert!(admit.check(Some(&own.sibling(component::INGRESS))).is_ok());
        let denied = |peer: Option<&Identity>| admit.check(peer).unwrap_err().code();
        assert_eq!(denied(None), tonic::Code::Unauthenticated);
        assert_eq!(
            denied(Some(&own.sibling("auth"))),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            denied(Some(&Identity::new("chat", "other", component::INGRESS))),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn without_internal_tls_everyone_is_admitted() {
        assert!(Admit::new(None, ENVOY_ONLY).check(None).is_ok());
    }
}
