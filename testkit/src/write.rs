//! Writes: create, replace, patch and apply (with resource versions, generations, immutable
//! fields and injected failures), and delete with owner-reference garbage collection.

use std::{collections::HashMap, sync::Arc};

use base64::Engine;
use http::{Method, StatusCode};
use k8s_openapi::jiff::{Timestamp, Unit};
use serde_json::{Value, json};

use super::*;

impl FakeApi {
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

    pub(crate) fn write(
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

    pub(crate) fn delete(&self, target: &Target) -> Reply {
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
}
