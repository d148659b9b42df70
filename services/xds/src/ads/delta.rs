//! The Delta (incremental) protocol state of one stream, as pure functions: a request or a new
//! snapshot in, the responses to send out. It tracks what Envoy has of each type (name →
//! version), sends only what differs, undoes what a NACK refused and never resends a refused
//! version.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use tracing::debug;

use super::{Out, Phase, Protocol, StatusChange, StreamState, next_nonce};
use crate::resources::{Kind, Snapshot};

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What Envoy has: name → version.
    known: BTreeMap<String, String>,
    last_nonce: Option<String>,
    /// What the last response sent, to undo on NACK.
    in_flight: BTreeMap<String, Option<String>>,
    /// Versions Envoy rejected: not sent again.
    rejected: BTreeMap<String, String>,
}

/// One Delta stream's subscriptions and what Envoy has.
#[derive(Debug, Default)]
pub struct Delta {
    stream: StreamState<TypeState>,
}

impl Delta {
    fn push(
        &mut self,
        snapshot: &Snapshot,
        kind: Kind,
        phase: Phase,
        out: &mut Out<DeltaDiscoveryResponse>,
    ) {
        let Some(t) = self.stream.types.get_mut(&kind) else {
            return;
        };
        if !t.subscribed {
            return;
        }
        let wanted: BTreeSet<String> = if t.wildcard {
            snapshot
                .of(kind)
                .map(|r| r.name.clone())
                .chain(t.names.iter().cloned())
                .collect()
        } else {
            t.names.clone()
        };
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut in_flight = BTreeMap::new();
        let upserts = phase != Phase::Removals;
        let removals = phase != Phase::Upserts;
        for name in &wanted {
            match snapshot.get(kind, name) {
                Some(r) => {
                    if upserts
                        && t.known.get(name) != Some(&r.version)
                        && t.rejected.get(name) != Some(&r.version)
                    {
                        resources.push(DeltaResource {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            resource: Some(r.body.clone()),
                            ..DeltaResource::default()
                        });
                        in_flight.insert(name.clone(), t.known.get(name).cloned());
                        t.known.insert(name.clone(), r.version.clone());
                    }
                }
                None => {
                    if removals && t.known.remove(name).is_some() {
                        removed.push(name.clone());
                    }
                }
            }
        }
        // Resources Envoy has that no longer exist (wildcard kinds).
        let gone: Vec<String> = t
            .known
            .keys()
            .filter(|n| removals && snapshot.get(kind, n).is_none())
            .cloned()
            .collect();
        for name in gone {
            t.known.remove(&name);
            removed.push(name);
        }
        if resources.is_empty() && removed.is_empty() {
            return;
        }
        let nonce = next_nonce(&mut self.stream.nonce);
        t.last_nonce = Some(nonce.clone());
        t.in_flight = in_flight;
        let version = snapshot.kind_version(kind);
        out.status.push(StatusChange::Sent(kind, version.clone()));
        out.responses.push(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: kind.type_url().into(),
            removed_resources: removed,
            nonce,
            ..DeltaDiscoveryResponse::default()
        });
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Out<DeltaDiscoveryResponse> {
        let mut out = Out::default();
        self.stream.note_node(req.node.as_ref());
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            return out;
        };
        let t = self.stream.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() {
            if t.last_nonce.as_deref() != Some(&req.response_nonce) {
                debug!(?kind, nonce = %req.response_nonce, "ignoring stale nonce");
                return out;
            }
            let version = snapshot.kind_version(kind);
            if let Some(error) = &req.error_detail {
                // Undo what Envoy refused; remember it so it is not sent again.
                for (name, before) in std::mem::take(&mut t.in_flight) {
                    if let Some(v) = t.known.get(&name).cloned() {
                        t.rejected.insert(name.clone(), v);
                    }
                    match before {
                        Some(v) => t.known.insert(name, v),
                        None => t.known.remove(&name),
                    };
                }
                out.status
                    .push(StatusChange::Nacked(kind, version, error.message.clone()));
            } else {
                t.in_flight.clear();
                out.status.push(StatusChange::Acked(kind, version));
            }
        }
        if !t.subscribed {
            t.subscribed = true;
            // Envoy reconnecting after a restart of chat-xds tells what it already has.
            t.known = req.initial_resource_versions.clone().into_iter().collect();
            t.wildcard = kind.wildcard() && req.resource_names_subscribe.is_empty();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                t.wildcard = true;
            } else {
                t.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.names.remove(name);
                t.known.remove(name);
            }
        }
        self.push(snapshot, kind, Phase::All, &mut out);
        out
    }

    fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        kind: Kind,
        phase: Phase,
    ) -> Out<DeltaDiscoveryResponse> {
        let mut out = Out::default();
        self.push(snapshot, kind, phase, &mut out);
        out
    }

    fn node(&self) -> &str {
        &self.stream.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::tests::{nack_detail, snapshot};

    fn subscribe(kind: Kind, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn answer(kind: Kind, nonce: &str, error: Option<&str>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            response_nonce: nonce.into(),
            error_detail: error.and_then(nack_detail),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn only_what_changed_goes_out_and_removals_wait_for_their_phase() {
        let mut d = Delta::default();
        let v1 = snapshot(&[(Kind::Cluster, "a", "1"), (Kind::Cluster, "b", "1")]);
        let out = d.on_request(subscribe(Kind::Cluster, &[]), &v1);
        assert_eq!(names(&out.responses[0]), ["a", "b"], "wildcard");
        let nonce = out.responses[0].nonce.clone();
        let out = d.on_request(answer(Kind::Cluster, &nonce, None), &v1);
        assert!(out.responses.is_empty());
        assert!(matches!(
            out.status[..],
            [StatusChange::Acked(Kind::Cluster, _)]
        ));
        let v2 = snapshot(&[(Kind::Cluster, "a", "2"), (Kind::Cluster, "c", "1")]);
        let up = d.on_snapshot(&v2, Kind::Cluster, Phase::Upserts).responses;
        assert_eq!(names(&up[0]), ["a", "c"], "b unchanged is not resent");
        assert!(
            up[0].removed_resources.is_empty(),
            "removals come after every upsert"
        );
        let down = d.on_snapshot(&v2, Kind::Cluster, Phase::Removals).responses;
        assert_eq!(down[0].removed_resources, ["b"]);
        assert!(down[0].resources.is_empty());
        assert!(
            d.on_snapshot(&v2, Kind::Cluster, Phase::Upserts)
                .responses
                .is_empty()
        );
    }

    #[test]
    fn a_nack_undoes_what_was_refused_and_the_refused_version_is_not_resent() {
        let mut d = Delta::default();
        let v1 = snapshot(&[(Kind::Endpoint, "a", "1")]);
        let first = d
            .on_request(subscribe(Kind::Endpoint, &["a"]), &v1)
            .responses;
        d.on_request(answer(Kind::Endpoint, &first[0].nonce, None), &v1);
        let v2 = snapshot(&[(Kind::Endpoint, "a", "2")]);
        let second = d.on_snapshot(&v2, Kind::Endpoint, Phase::Upserts).responses;
        let out = d.on_request(answer(Kind::Endpoint, &second[0].nonce, Some("bad")), &v2);
        assert!(
            out.responses.is_empty(),
            "version 2 of a is refused: not sent again"
        );
        assert!(
            matches!(&out.status[..], [StatusChange::Nacked(Kind::Endpoint, _, m)] if m == "bad")
        );
        assert!(
            d.on_snapshot(&v2, Kind::Endpoint, Phase::Upserts)
                .responses
                .is_empty()
        );
        // Back to version 1: Envoy still has it (the NACK was undone), so nothing to send.
        assert!(
            d.on_snapshot(&v1, Kind::Endpoint, Phase::Upserts)
                .responses
                .is_empty()
        );
        let v3 = snapshot(&[(Kind::Endpoint, "a", "3")]);
        let third = d.on_snapshot(&v3, Kind::Endpoint, Phase::Upserts).responses;
        assert_eq!(third[0].resources[0].version, "3");
    }

    #[test]
    fn a_reconnecting_envoy_gets_only_what_it_lacks_and_unsubscribing_forgets() {
        let mut d = Delta::default();
        let v1 = snapshot(&[(Kind::Endpoint, "a", "1"), (Kind::Endpoint, "b", "1")]);
        let mut req = subscribe(Kind::Endpoint, &["a", "b"]);
        req.initial_resource_versions = [("a".to_string(), "1".to_string())].into();
        let out = d.on_request(req, &v1).responses;
        assert_eq!(names(&out[0]), ["b"], "a is already there");
        let nonce = out[0].nonce.clone();
        let unsubscribe = DeltaDiscoveryRequest {
            type_url: Kind::Endpoint.type_url().into(),
            response_nonce: nonce,
            resource_names_unsubscribe: vec!["b".into()],
            ..DeltaDiscoveryRequest::default()
        };
        assert!(d.on_request(unsubscribe, &v1).responses.is_empty());
        let v2 = snapshot(&[(Kind::Endpoint, "a", "1"), (Kind::Endpoint, "b", "2")]);
        assert!(
            d.on_snapshot(&v2, Kind::Endpoint, Phase::All)
                .responses
                .is_empty(),
            "b is not wanted any more"
        );
    }
}
