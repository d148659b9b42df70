//! Who a certificate of the internal plane belongs to. The operator (or the local runner)
//! writes an [`Identity`] into every certificate its internal CA issues, as a URI
//! subject-alternative name in SPIFFE form; chat-xds and chatd read it back from the peer's
//! certificate and decide what that peer may do. The CA is the cluster's own, so a
//! certificate of another cluster never verifies; the identity says which component it is.

use std::fmt;

/// The URI scheme and trust domain every identity starts with.
const PREFIX: &str = "spiffe://chatcluster.io/";

/// Components that hold an internal certificate.
pub mod component {
    /// Envoy, the ingress: the only client chat-xds serves configuration and secrets to.
    pub const INGRESS: &str = "ingress";
    /// chat-xds, the control plane: the server Envoy verifies.
    pub const XDS: &str = "xds";
    /// The database servers, which chatd, the topology loop and the replicas verify.
    pub const DATABASE: &str = "db";
    /// The broker (NATS) the chatd replicas exchange delivery hints through.
    pub const BROKER: &str = "broker";
}

/// One component of one ChatCluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The ChatCluster's namespace (`local` in local mode).
    pub namespace: String,
    /// The ChatCluster's name.
    pub cluster: String,
    /// Its component: one of [`component`], or a chat service's name.
    pub component: String,
}

impl Identity {
    /// `component` of the cluster `namespace/cluster`.
    pub fn new(namespace: &str, cluster: &str, component: &str) -> Self {
        Self {
            namespace: namespace.into(),
            cluster: cluster.into(),
            component: component.into(),
        }
    }

    /// Another component of the same cluster.
    pub fn sibling(&self, component: &str) -> Self {
        Self::new(&self.namespace, &self.cluster, component)
    }

    /// Whether `other` belongs to the same cluster.
    pub fn same_cluster(&self, other: &Self) -> bool {
        self.namespace == other.namespace && self.cluster == other.cluster
    }

    /// The URI SAN form: `spiffe://chatcluster.io/ns/<namespace>/cluster/<name>/<component>`.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// The DNS name its certificate also carries, so a client can verify a server by
    /// identity with ordinary name checks (SNI, webpki) wherever it reaches it — a pod IP
    /// from an EndpointSlice, a loopback port: `<component>.<name>.<namespace>.chatcluster.internal`.
    pub fn server_name(&self) -> String {
        format!(
            "{}.{}.{}.chatcluster.internal",
            self.component, self.cluster, self.namespace
        )
    }

    /// The identity a URI SAN names, if it is one of ours. Each part must be a non-empty DNS
    /// label's characters, so no part can smuggle a `/`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(PREFIX)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let ["ns", namespace, "cluster", cluster, component] = parts.as_slice() else {
            return None;
        };
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (label(namespace) && label(cluster) && label(component))
            .then(|| Self::new(namespace, cluster, component))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}ns/{}/cluster/{}/{}",
            self.namespace, self.cluster, self.component
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_its_uri() {
        let id = Identity::new("chat", "demo", component::INGRESS);
        assert_eq!(
            id.uri(),
            "spiffe://chatcluster.io/ns/chat/cluster/demo/ingress"
        );
        assert_eq!(Identity::parse(&id.uri()), Some(id.clone()));
        assert_eq!(id.server_name(), "ingress.demo.chat.chatcluster.internal");
    }

    #[test]
    fn foreign_or_malformed_uris_are_no_identity() {
        for uri in [
            "spiffe://example.org/ns/chat/cluster/demo/ingress",
            "spiffe://chatcluster.io/ns/chat/cluster/demo",
            "spiffe://chatcluster.io/ns/chat/cluster/demo/ingress/extra",
            "spiffe://chatcluster.io/ns//cluster/demo/ingress",
            "spiffe://chatcluster.io/ns/Chat/cluster/demo/ingress",
            "spiffe://chatcluster.io/namespace/chat/cluster/demo/ingress",
            "https://chatcluster.io/ns/chat/cluster/demo/ingress",
        ] {
            assert_eq!(Identity::parse(uri), None, "{uri}");
        }
    }

    #[test]
    fn siblings_share_the_cluster_and_strangers_do_not() {
        let envoy = Identity::new("chat", "demo", component::INGRESS);
        assert!(envoy.same_cluster(&envoy.sibling(component::XDS)));
        assert!(!envoy.same_cluster(&Identity::new("chat", "other", component::INGRESS)));
        assert!(!envoy.same_cluster(&Identity::new("other", "demo", component::INGRESS)));
    }
}
