//! Reads: get, list and watch (resumable from a resourceVersion).

use std::{collections::HashMap, convert::Infallible, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;

impl FakeApi {
    pub(crate) fn get_or_list(&self, target: &Target, query: &HashMap<String, String>) -> Reply {
        let store = self.store();
        if let Some(name) = &target.name {
            let key = target.key(name);
            return store
                .objects
                .get(&key)
                .map(|o| (StatusCode::OK, o.clone()))
                .ok_or_else(|| not_found(&key));
        }
        let resource = target.resource();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|(k, o)| {
                k.resource == resource
                    && (target.namespace.is_none() || k.namespace == target.namespace)
                    && matches_labels(o, query.get("labelSelector"))
                    && matches_fields(o, query.get("fieldSelector"))
            })
            .map(|(_, o)| o.clone())
            .collect();
        Ok((
            StatusCode::OK,
            json!({
                "apiVersion": target.group_version,
                "kind": "List",
                "metadata": { "resourceVersion": store.rv.to_string() },
                "items": items,
            }),
        ))
    }

    /// A watch: replays changes after the given resourceVersion (or the current objects, for
    /// none), then streams new ones until `timeoutSeconds`.
    pub(crate) fn watch(&self, target: &Target, query: &HashMap<String, String>) -> Body {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290);
        let resource = target.resource();
        let namespace = target.namespace.clone();
        let labels = query.get("labelSelector").cloned();
        let fields = query.get("fieldSelector").cloned();
        let wanted = move |key: &Key, obj: &Value| {
            key.resource == resource
                && (namespace.is_none() || key.namespace == namespace)
                && matches_labels(obj, labels.as_ref())
                && matches_fields(obj, fields.as_ref())
        };
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let line = |type_: &str, obj: &Value| {
            let mut l =
                serde_json::to_vec(&json!({ "type": type_, "object": obj })).unwrap_or_default();
            l.push(b'\n');
            Bytes::from(l)
        };
        // Subscribe and snapshot under one lock, so nothing falls between replay and live.
        let (mut live, replay_upto) = {
            let store = self.store();
            let live = self.inner.changes.subscribe();
            if since == 0 {
                for (k, o) in &store.objects {
                    if wanted(k, o) {
                        let _ = tx.send(line("ADDED", o));
                    }
                }
            } else {
                for c in store.history.iter().filter(|c| c.rv > since) {
                    if wanted(&c.key, &c.object) {
                        let _ = tx.send(line(c.type_, &c.object));
                    }
                }
            }
            (live, store.rv)
        };
        tokio::spawn(async move {
            let forward = async {
                loop {
                    match live.recv().await {
                        Ok(c) if c.rv <= replay_upto => {}
                        Ok(c) => {
                            if wanted(&c.key, &c.object)
                                && tx.send(line(c.type_, &c.object)).is_err()
                            {
                                return;
                            }
                        }
                        // A lagging watcher is ended; the client relists, as with a real server.
                        Err(_) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(timeout), forward).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        BodyExt::boxed_unsync(StreamBody::new(stream))
    }
}
