//! Whether a snapshot hangs together before it is published, as go-control-plane's
//! `Snapshot.Consistent` checks: every endpoint assignment an EDS cluster names, every route
//! table an ingress listener names, every secret its TLS context names, and every cluster a
//! route sends to is in the same snapshot. An Envoy handed a listener whose route table is
//! missing would stall on it; a broken snapshot is refused instead, and the last good one
//! stays in service.
//!
//! References are read from the encoded resources themselves, not from the builders' inputs,
//! so the check holds whatever built them.

use std::collections::BTreeSet;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster,
                cluster::{ClusterDiscoveryType, DiscoveryType},
            },
            listener::v3::{Listener, filter::ConfigType as FilterConfig},
            route::v3::{RouteConfiguration, route::Action, route_action::ClusterSpecifier},
        },
        extensions::{
            filters::network::http_connection_manager::v3::{
                HttpConnectionManager, http_connection_manager::RouteSpecifier,
            },
            transport_sockets::tls::v3::DownstreamTlsContext,
        },
    },
    google::protobuf::Any,
};
use prost::{Message, Name};

use super::{Kind, Snapshot};

/// A snapshot that refers to what it does not contain, or holds what cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Inconsistent {
    /// A resource names one the snapshot lacks.
    #[error("{from_kind:?} {from} refers to {kind:?} {name}, which the snapshot lacks")]
    Missing {
        /// The kind of the resource that refers.
        from_kind: Kind,
        /// Its name.
        from: String,
        /// The kind referred to.
        kind: Kind,
        /// The name referred to.
        name: String,
    },
    /// A resource's body is not the message its kind says.
    #[error("{kind:?} {name} does not decode: {reason}")]
    Undecodable {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

fn decode<M: Message + Name + Default>(any: &Any) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!(
            "type {} where {} was expected",
            any.type_url,
            M::type_url()
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| e.to_string())
}

/// The resources `body` (of `kind`) refers to.
fn references(kind: Kind, body: &Any) -> Result<Vec<(Kind, String)>, String> {
    let mut refs = Vec::new();
    match kind {
        Kind::Cluster => {
            let cluster: Cluster = decode(body)?;
            let eds = cluster.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            if eds {
                let named = cluster
                    .eds_cluster_config
                    .map(|c| c.service_name)
                    .filter(|n| !n.is_empty());
                refs.push((Kind::Endpoint, named.unwrap_or(cluster.name)));
            }
        }
        Kind::Listener => {
            let listener: Listener = decode(body)?;
            for chain in listener.filter_chains {
                for filter in chain.filters {
                    let Some(FilterConfig::TypedConfig(any)) = filter.config_type else {
                        continue;
                    };
                    if any.type_url != HttpConnectionManager::type_url() {
                        continue;
                    }
                    let hcm: HttpConnectionManager = decode(&any)?;
                    if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                        refs.push((Kind::Route, rds.route_config_name));
                    }
                }
                if let Some(socket) = chain.transport_socket
                    && let Some(
                        envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any),
                    ) = socket.config_type
                {
                    let tls: DownstreamTlsContext = decode(&any)?;
                    for sds in tls
                        .common_tls_context
                        .into_iter()
                        .flat_map(|c| c.tls_certificate_sds_secret_configs)
                    {
                        refs.push((Kind::Secret, sds.name));
                    }
                }
            }
        }
        Kind::Route => {
            let table: RouteConfiguration = decode(body)?;
            for route in table.virtual_hosts.into_iter().flat_map(|h| h.routes) {
                if let Some(Action::Route(action)) = route.action
                    && let Some(ClusterSpecifier::Cluster(cluster)) = action.cluster_specifier
                {
                    refs.push((Kind::Cluster, cluster));
                }
            }
        }
        Kind::Endpoint | Kind::Secret => {}
    }
    Ok(refs)
}

impl Snapshot {
    /// Every problem that makes this snapshot unfit to publish (none: consistent).
    pub fn inconsistencies(&self) -> Vec<Inconsistent> {
        let mut problems = BTreeSet::new();
        for kind in Kind::ALL {
            for r in self.of(kind) {
                match references(kind, &r.body) {
                    Ok(refs) => {
                        for (to, name) in refs {
                            if self.get(to, &name).is_none() {
                                problems.insert(Inconsistent::Missing {
                                    from_kind: kind,
                                    from: r.name.clone(),
                                    kind: to,
                                    name,
                                });
                            }
                        }
                    }
                    Err(reason) => {
                        problems.insert(Inconsistent::Undecodable {
                            kind,
                            name: r.name.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        problems.into_iter().collect()
    }
}
