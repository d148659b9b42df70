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

use chatcluster_common::sync::lock;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::{Value, json};
use tokio::sync::broadcast;

mod patch;
mod read;
mod request;
mod write;

use patch::{apply_patch, merge_patch};
use request::{Target, matches_fields, matches_labels, parse_path, parse_query};

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
    /// API groups with no kinds (their CRDs not installed): every request 404s.
    unserved: HashSet<String>,
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
        lock(&self.inner.store)
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

    /// Serve nothing of API group `group` (say `monitoring.coreos.com`), as a server
    /// without its CRDs: every request to it is 404 Not Found.
    pub fn unserve(&self, group: &str) {
        self.store().unserved.insert(group.into());
    }

    /// Serve API group `group` again, as once its CRDs are installed.
    pub fn serve(&self, group: &str) {
        self.store().unserved.remove(group);
    }

    /// Stop failing writes.
    pub fn heal(&self) {
        self.store().failing.clear();
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
        let group = target.group_version.split_once('/').map(|(g, _)| g);
        if group.is_some_and(|g| self.store().unserved.contains(g)) {
            return reply(Err((
                StatusCode::NOT_FOUND,
                status_body(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                ),
            )));
        }
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
