//! An in-memory Kubernetes API server for tests and benchmarks (no real API server can run on
//! the machines this project is developed on; see DESIGN.md §5).
//!
//! It speaks enough of the REST protocol for the kube client and the controller runtime:
//! get, list (label and name selectors), watch (with resume from a resourceVersion), create,
//! replace (optimistic concurrency), merge patch, server-side apply (field removal tracked per
//! field manager; lists are atomic), status subresources, delete with owner-reference garbage
//! collection, Secret `stringData` and immutability. Writes can be made to fail on purpose.
//!
//! It is a `tower::Service`, so `kube::Client::new(fake, ns)` talks to it with no sockets.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use k8s_openapi::jiff::{Timestamp, Unit};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Where an object lives: `group/version/plural`, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `group/version/plural`, e.g. `apps/v1/deployments` or `v1/secrets`.
    pub resource: String,
    /// Namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

/// One write the server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// HTTP verb.
    pub method: String,
    /// The object written.
    pub key: Key,
}

#[derive(Debug)]
struct Change {
    rv: u64,
    type_: &'static str,
    key: Key,
    object: Value,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    /// Last applied configuration per (object, field manager, status?), for SSA field removal.
    applied: HashMap<(Key, String, bool), Value>,
    rv: u64,
    uid: u64,
    history: Vec<Arc<Change>>,
    writes: Vec<Write>,
    requests: u64,
    failing: HashSet<String>,
}

struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Arc<Change>>,
}

/// The in-memory API server. Clones share state.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

struct Target {
    group_version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn resource(&self) -> String {
        format!("{}/{}", self.group_version, self.plural)
    }
    fn key(&self, name: &str) -> Key {
        Key {
            resource: self.resource(),
            namespace: self.namespace.clone(),
            name: name.into(),
        }
    }
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => (Some((*ns).to_string()), {
            let mut v = vec![*plural];
            v.extend_from_slice(rest);
            v
        }),
        _ => (None, rest.to_vec()),
    };
    let plural = (*rest.first()?).to_string();
    Some(Target {
        group_version,
        plural,
        namespace,
        name: rest.get(1).map(|s| (*s).to_string()),
        subresource: rest.get(2).map(|s| (*s).to_string()),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether `obj`'s labels satisfy a selector of `k=v`, `k==v`, `k!=v`, `k` and `!k` terms.
fn matches_labels(obj: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn matches_fields(obj: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => {
            obj.pointer("/metadata/name").and_then(Value::as_str) == Some(v)
        }
        Some(("metadata.namespace", v)) => {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(v)
        }
        _ => true,
    })
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (_, Some(_)) => {
            *target = Value::Object(Map::new());
            merge_patch(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

/// Server-side apply from one manager: remove what it applied last time and no longer applies,
/// then merge what it applies now (maps merge, lists and scalars are replaced).
fn apply_patch(target: &mut Value, last: Option<&Value>, patch: &Value) {
    if let (Some(t), Some(last), Some(p)) = (
        target.as_object_mut(),
        last.and_then(Value::as_object),
        patch.as_object(),
    ) {
        for (k, old) in last {
            match p.get(k) {
                None => {
                    t.remove(k);
                }
                Some(new) if old.is_object() && new.is_object() => {
                    if let Some(child) = t.get_mut(k) {
                        apply_patch(child, Some(old), new);
                        // Already merged below; avoid re-merging into a removed subtree.
                    }
                }
                Some(_) => {}
            }
        }
    }
    deep_merge(target, patch);
}

fn deep_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                deep_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}

fn status_body(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

type Reply = Result<(StatusCode, Value), (StatusCode, Value)>;

fn not_found(key: &Key) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        status_body(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{}\" not found", key.resource, key.name),
        ),
    )
}

impl FakeApi {
    /// An empty API server.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                changes,
            }),
        }
    }

    /// A kube client talking to this server, with `default` as its default namespace.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread cannot leave the map half-written: every change is one insert.
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored object at `resource` (`apps/v1/deployments`), `namespace`, `name`.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store()
            .objects
            .get(&Key {
                resource: resource.into(),
                namespace: Some(namespace.into()),
                name: name.into(),
            })
            .cloned()
    }

    /// Names of all objects of `resource` in `namespace`.
    pub fn names(&self, resource: &str, namespace: &str) -> Vec<String> {
        self.store()
            .objects
            .keys()
            .filter(|k| k.resource == resource && k.namespace.as_deref() == Some(namespace))
            .map(|k| k.name.clone())
            .collect()
    }

    /// Every write accepted so far.
    pub fn writes(&self) -> Vec<Write> {
        self.store().writes.clone()
    }

    /// Number of requests served so far.
    pub fn requests(&self) -> u64 {
        self.store().requests
    }

    /// Make every write to `resource` fail with 500 until [`heal`](Self::heal).
    pub fn fail_writes(&self, resource: &str) {
        self.store().failing.insert(resource.into());
    }

    /// Stop failing writes.
    pub fn heal(&self) {
        self.store().failing.clear();
    }

    fn commit(&self, store: &mut Store, type_: &'static str, key: Key, object: Value) {
        let change = Arc::new(Change {
            rv: store.rv,
            type_,
            key,
            object,
        });
        store.history.push(change.clone());
        // Nobody listening is fine.
        let _ = self.inner.changes.send(change);
    }

    fn next_rv(store: &mut Store) -> u64 {
        store.rv += 1;
        store.rv
    }

    /// Normalise an incoming object: identity from the URL, Secret `stringData` into `data`.
    fn normalise(target: &Target, key: &Key, mut obj: Value) -> Value {
        if let Some(m) = obj.as_object_mut() {
            m.entry("apiVersion")
                .or_insert_with(|| target.group_version.clone().into());
            if let Some(meta) = m
                .entry("metadata")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            {
                meta.insert("name".into(), key.name.clone().into());
                if let Some(ns) = &key.namespace {
                    meta.insert("namespace".into(), ns.clone().into());
                }
            }
            if target.plural == "secrets"
                && target.group_version == "v1"
                && let Some(Value::Object(string_data)) = m.remove("stringData")
                && let Some(data) = m.entry("data").or_insert_with(|| json!({})).as_object_mut()
            {
                for (k, v) in string_data {
                    let raw = v.as_str().unwrap_or_default().as_bytes().to_vec();
                    data.insert(
                        k,
                        base64::engine::general_purpose::STANDARD.encode(raw).into(),
                    );
                }
            }
        }
        obj
    }

    fn stamp_new(store: &mut Store, obj: &mut Value) {
        store.uid += 1;
        let rv = Self::next_rv(store);
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("uid".into(), format!("uid-{}", store.uid).into());
            meta.insert("resourceVersion".into(), rv.to_string().into());
            meta.insert("generation".into(), 1.into());
            let now = Timestamp::now()
                .round(Unit::Second)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            meta.insert("creationTimestamp".into(), now.to_string().into());
        }
    }

    /// Carry the server-owned metadata from `old` into `new`, bump the resourceVersion, and the
    /// generation when anything but metadata and status changed.
    fn stamp_update(store: &mut Store, old: &Value, new: &mut Value) {
        let rv = Self::next_rv(store);
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            + i64::from(spec_part(old) != spec_part(new));
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in ["uid", "creationTimestamp"] {
                if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                    meta.insert(field.into(), v.clone());
                }
            }
            meta.insert("resourceVersion".into(), rv.to_string().into());
            meta.insert("generation".into(), generation.into());
        }
    }

    fn check_immutable(old: &Value, new: &Value, key: &Key) -> Result<(), (StatusCode, Value)> {
        if old.get("immutable") == Some(&Value::Bool(true))
            && (old.get("data") != new.get("data") || new.get("immutable") != old.get("immutable"))
        {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                status_body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{} \"{}\" is invalid: data: Forbidden: field is immutable when `immutable` is set",
                        key.resource, key.name
                    ),
                ),
            ));
        }
        Ok(())
    }

    fn write(
        &self,
        method: &Method,
        target: &Target,
        query: &HashMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Reply {
        let mut store = self.store();
        if store.failing.contains(&target.resource()) {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                status_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("injected failure writing {}", target.resource()),
                ),
            ));
        }
        let status_only = target.subresource.as_deref() == Some("status");
        let name = target
            .name
            .clone()
            .or_else(|| {
                body.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    status_body(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "name is required".into(),
                    ),
                )
            })?;
        let key = target.key(&name);
        let existing = store.objects.get(&key).cloned();
        let (code, type_, object) = match *method {
            Method::POST => {
                if existing.is_some() {
                    return Err((
                        StatusCode::CONFLICT,
                        status_body(
                            StatusCode::CONFLICT,
                            "AlreadyExists",
                            format!("{} \"{name}\" already exists", key.resource),
                        ),
                    ));
                }
                let mut obj = Self::normalise(target, &key, body);
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
                Self::stamp_new(&mut store, &mut obj);
                (StatusCode::CREATED, "ADDED", obj)
            }
            Method::PUT => {
                let Some(old) = existing else {
                    return Err(not_found(&key));
                };
                let sent_rv = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let current_rv = old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if sent_rv.is_some() && sent_rv != current_rv {
                    return Err((
                        StatusCode::CONFLICT,
                        status_body(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                                key.resource
                            ),
                        ),
                    ));
                }
                let incoming = Self::normalise(target, &key, body);
                let mut obj = if status_only {
                    let mut o = old.clone();
                    o["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
                    o
                } else {
                    let mut o = incoming;
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                    o
                };
                Self::check_immutable(&old, &obj, &key)?;
                Self::stamp_update(&mut store, &old, &mut obj);
                (StatusCode::OK, "MODIFIED", obj)
            }
            Method::PATCH => {
                let is_apply = content_type.starts_with("application/apply-patch");
                let manager = query.get("fieldManager").cloned().unwrap_or_default();
                let scope = |v: &Value| -> Value {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        if status_only {
                            let status = m.remove("status");
                            m.clear();
                            if let Some(s) = status {
                                m.insert("status".into(), s);
                            }
                        } else {
                            m.remove("status");
                        }
                    }
                    v
                };
                let patch = scope(&Self::normalise(target, &key, body));
                match existing {
                    None if is_apply && !status_only => {
                        let mut obj = patch.clone();
                        Self::stamp_new(&mut store, &mut obj);
                        store.applied.insert((key.clone(), manager, false), patch);
                        (StatusCode::CREATED, "ADDED", obj)
                    }
                    None => return Err(not_found(&key)),
                    Some(old) => {
                        let mut obj = old.clone();
                        if is_apply {
                            let slot = (key.clone(), manager, status_only);
                            apply_patch(&mut obj, store.applied.get(&slot), &patch);
                            store.applied.insert(slot, patch);
                        } else {
                            merge_patch(&mut obj, &patch);
                        }
                        Self::check_immutable(&old, &obj, &key)?;
                        if obj == old {
                            return Ok((StatusCode::OK, obj));
                        }
                        Self::stamp_update(&mut store, &old, &mut obj);
                        (StatusCode::OK, "MODIFIED", obj)
                    }
                }
            }
            _ => {
                return Err((
                    StatusCode::METHOD_NOT_ALLOWED,
                    status_body(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        method.to_string(),
                    ),
                ));
            }
        };
        store.objects.insert(key.clone(), object.clone());
        store.writes.push(Write {
            method: method.to_string(),
            key: key.clone(),
        });
        self.commit(&mut store, type_, key, object.clone());
        Ok((code, object))
    }

    fn delete(&self, target: &Target) -> Reply {
        let mut store = self.store();
        let name = target.name.clone().unwrap_or_default();
        let key = target.key(&name);
        if store.failing.contains(&key.resource) {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                status_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "injected failure".into(),
                ),
            ));
        }
        let Some(obj) = store.objects.remove(&key) else {
            return Err(not_found(&key));
        };
        store.writes.push(Write {
            method: "DELETE".into(),
            key: key.clone(),
        });
        Self::next_rv(&mut store);
        self.commit(&mut store, "DELETED", key, obj.clone());
        // Garbage-collect dependents, as the API server's collector does (in the background).
        let mut owners: Vec<Value> = obj.pointer("/metadata/uid").cloned().into_iter().collect();
        while let Some(uid) = owners.pop() {
            let dependents: Vec<Key> = store
                .objects
                .iter()
                .filter(|(_, o)| {
                    o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| refs.iter().any(|r| r.get("uid") == Some(&uid)))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for dep in dependents {
                if let Some(o) = store.objects.remove(&dep) {
                    owners.extend(o.pointer("/metadata/uid").cloned());
                    Self::next_rv(&mut store);
                    self.commit(&mut store, "DELETED", dep, o);
                }
            }
        }
        Ok((StatusCode::OK, obj))
    }

    fn get_or_list(&self, target: &Target, query: &HashMap<String, String>) -> Reply {
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
    fn watch(&self, target: &Target, query: &HashMap<String, String>) -> Body {
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

    async fn handle(self, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let query = parse_query(parts.uri.query());
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.store().requests += 1;
        let Some(target) = parse_path(parts.uri.path()) else {
            return reply(Err((
                StatusCode::NOT_FOUND,
                status_body(StatusCode::NOT_FOUND, "NotFound", parts.uri.path().into()),
            )));
        };
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return reply(Err((
                    StatusCode::BAD_REQUEST,
                    status_body(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                )));
            }
        };
        let parsed = if bytes.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(&bytes)
                .or_else(|_| serde_yaml::from_slice::<Value>(&bytes).map_err(|e| e.to_string()))
        };
        let body = match parsed {
            Ok(v) => v,
            Err(e) => {
                return reply(Err((
                    StatusCode::BAD_REQUEST,
                    status_body(StatusCode::BAD_REQUEST, "BadRequest", e),
                )));
            }
        };
        match parts.method {
            Method::GET if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                let mut resp = Response::new(self.watch(&target, &query));
                *resp.status_mut() = StatusCode::OK;
                resp
            }
            Method::GET => reply(self.get_or_list(&target, &query)),
            Method::DELETE => reply(self.delete(&target)),
            ref m => reply(self.write(m, &target, &query, &content_type, body)),
        }
    }
}

fn reply(result: Reply) -> Response<Body> {
    let (code, value) = result.unwrap_or_else(|e| e);
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    let mut resp = Response::new(BodyExt::boxed_unsync(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

impl tower::Service<Request<kube::client::Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
