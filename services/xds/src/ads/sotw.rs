//! The State-of-the-World protocol state of one stream, as pure functions: a request or a new
//! snapshot in, the responses to send out. Each type is sent whole (or the subset Envoy names);
//! a response is ACKed or NACKed by its nonce; a NACKed version is not sent again.

use std::collections::BTreeSet;

use envoy_types::pb::{
    envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    google::protobuf::Any,
};
use tracing::debug;

use super::{Out, Phase, Protocol, StatusChange, StreamState, next_nonce};
use crate::resources::{Kind, Snapshot};

#[derive(Debug, Default)]
struct TypeState {
    /// None: wildcard.
    names: Option<BTreeSet<String>>,
    requested: bool,
    last_nonce: Option<String>,
    last_sent: Option<String>,
    rejected: Option<String>,
}

/// One SotW stream's subscriptions and what it sent.
#[derive(Debug, Default)]
pub struct Sotw {
    stream: StreamState<TypeState>,
}

impl Sotw {
    fn version(&self, snapshot: &Snapshot, kind: Kind) -> String {
        match self.stream.types.get(&kind).and_then(|t| t.names.as_ref()) {
            Some(names) => snapshot.subset_version(kind, names),
            None => snapshot.kind_version(kind),
        }
    }

    /// `kind`, if Envoy asked for it and does not have (or has not rejected) this version;
    /// `force` answers a changed subscription even when the version is the same.
    fn push(
        &mut self,
        snapshot: &Snapshot,
        kind: Kind,
        force: bool,
        out: &mut Out<DiscoveryResponse>,
    ) {
        let version = self.version(snapshot, kind);
        let Some(t) = self.stream.types.get_mut(&kind) else {
            return;
        };
        if !t.requested
            || t.rejected.as_deref() == Some(version.as_str())
            || (!force && t.last_sent.as_deref() == Some(version.as_str()))
        {
            return;
        }
        let resources: Vec<Any> = match &t.names {
            None => snapshot.of(kind).map(|r| r.body.clone()).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| snapshot.get(kind, n))
                .map(|r| r.body.clone())
                .collect(),
        };
        let nonce = next_nonce(&mut self.stream.nonce);
        t.last_nonce = Some(nonce.clone());
        t.last_sent = Some(version.clone());
        out.status.push(StatusChange::Sent(kind, version.clone()));
        out.responses.push(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: kind.type_url().into(),
            nonce,
            ..DiscoveryResponse::default()
        });
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(&mut self, req: DiscoveryRequest, snapshot: &Snapshot) -> Out<DiscoveryResponse> {
        let mut out = Out::default();
        self.stream.note_node(req.node.as_ref());
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            debug!(type_url = %req.type_url, "ignoring unknown type");
            return out;
        };
        let t = self.stream.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() && t.last_nonce.as_deref() != Some(&req.response_nonce) {
            debug!(?kind, nonce = %req.response_nonce, "ignoring stale nonce");
            return out;
        }
        if let Some(error) = &req.error_detail {
            // NACK: keep serving what Envoy has; never send this version again.
            let rejected = t.last_sent.clone().unwrap_or_default();
            t.rejected = Some(rejected.clone());
            out.status
                .push(StatusChange::Nacked(kind, rejected, error.message.clone()));
        } else if !req.response_nonce.is_empty() {
            out.status
                .push(StatusChange::Acked(kind, req.version_info.clone()));
        }
        let names: Option<BTreeSet<String>> = if kind.wildcard()
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"))
        {
            None
        } else {
            Some(req.resource_names.iter().cloned().collect())
        };
        let changed = !t.requested || t.names != names;
        t.names = names;
        t.requested = true;
        if changed {
            // A new subscription gets an answer even when the version is unchanged.
            self.push(snapshot, kind, true, &mut out);
        }
        out
    }

    fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        kind: Kind,
        phase: Phase,
    ) -> Out<DiscoveryResponse> {
        let mut out = Out::default();
        // State-of-the-World sends each type whole: a removal is part of its update.
        if phase != Phase::Removals {
            self.push(snapshot, kind, false, &mut out);
        }
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

    fn request(kind: Kind, names: &[&str], nonce: &str, version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            ..DiscoveryRequest::default()
        }
    }

    #[test]
    fn a_subscription_is_answered_then_acked_and_only_new_versions_follow() {
        let mut s = Sotw::default();
        let v1 = snapshot(&[(Kind::Cluster, "a", "1"), (Kind::Cluster, "b", "1")]);
        let out = s.on_request(request(Kind::Cluster, &[], "", ""), &v1);
        assert_eq!(out.responses.len(), 1);
        let sent = &out.responses[0];
        assert_eq!(sent.resources.len(), 2, "wildcard: every cluster");
        assert_eq!(
            out.status,
            vec![StatusChange::Sent(Kind::Cluster, sent.version_info.clone())]
        );
        let ack = request(Kind::Cluster, &[], &sent.nonce, &sent.version_info);
        let out = s.on_request(ack, &v1);
        assert!(out.responses.is_empty(), "an ACK asks for nothing new");
        assert_eq!(
            out.status,
            vec![StatusChange::Acked(
                Kind::Cluster,
                sent.version_info.clone()
            )]
        );
        assert!(
            s.on_snapshot(&v1, Kind::Cluster, Phase::Upserts)
                .responses
                .is_empty(),
            "same version"
        );
        let v2 = snapshot(&[(Kind::Cluster, "a", "2")]);
        assert!(
            s.on_snapshot(&v2, Kind::Cluster, Phase::Removals)
                .responses
                .is_empty()
        );
        let out = s.on_snapshot(&v2, Kind::Cluster, Phase::Upserts);
        assert_eq!(out.responses.len(), 1);
        assert_eq!(
            out.responses[0].resources.len(),
            1,
            "b's removal is part of the update"
        );
        assert_ne!(out.responses[0].nonce, sent.nonce);
    }

    #[test]
    fn a_nacked_version_is_never_sent_again_and_stale_nonces_are_ignored() {
        let mut s = Sotw::default();
        let v1 = snapshot(&[(Kind::Endpoint, "a", "1"), (Kind::Endpoint, "b", "1")]);
        let first = s
            .on_request(request(Kind::Endpoint, &["a"], "", ""), &v1)
            .responses;
        assert_eq!(first[0].resources.len(), 1, "by name: only what was named");
        let v2 = snapshot(&[(Kind::Endpoint, "a", "2")]);
        let second = s.on_snapshot(&v2, Kind::Endpoint, Phase::Upserts).responses;
        assert_eq!(second.len(), 1);
        // An answer to the first response is stale now: nothing happens.
        let stale = s.on_request(request(Kind::Endpoint, &["a"], &first[0].nonce, "x"), &v2);
        assert!(stale.responses.is_empty() && stale.status.is_empty());
        let mut nack = request(
            Kind::Endpoint,
            &["a"],
            &second[0].nonce,
            &first[0].version_info,
        );
        nack.error_detail = nack_detail("bad endpoint");
        let out = s.on_request(nack, &v2);
        assert!(
            out.responses.is_empty(),
            "the rejected version is not resent"
        );
        assert_eq!(
            out.status,
            vec![StatusChange::Nacked(
                Kind::Endpoint,
                second[0].version_info.clone(),
                "bad endpoint".into()
            )]
        );
        assert!(
            s.on_snapshot(&v2, Kind::Endpoint, Phase::Upserts)
                .responses
                .is_empty()
        );
        let v3 = snapshot(&[(Kind::Endpoint, "a", "3")]);
        assert_eq!(
            s.on_snapshot(&v3, Kind::Endpoint, Phase::Upserts)
                .responses
                .len(),
            1,
            "a new version goes out"
        );
    }

    #[test]
    fn a_changed_subscription_is_answered_even_at_the_same_version_and_unknown_types_are_ignored() {
        let mut s = Sotw::default();
        let v1 = snapshot(&[(Kind::Route, "r", "1")]);
        let first = s
            .on_request(request(Kind::Route, &["r"], "", ""), &v1)
            .responses;
        let out = s.on_request(
            request(
                Kind::Route,
                &["r", "other"],
                &first[0].nonce,
                &first[0].version_info,
            ),
            &v1,
        );
        assert_eq!(out.responses.len(), 1, "new names, same version: answered");
        let unknown = DiscoveryRequest {
            type_url: "type.googleapis.com/unknown".into(),
            ..DiscoveryRequest::default()
        };
        let out = s.on_request(unknown, &v1);
        assert!(out.responses.is_empty() && out.status.is_empty());
        assert!(
            s.on_snapshot(&v1, Kind::Listener, Phase::Upserts)
                .responses
                .is_empty(),
            "never asked for"
        );
    }
}
