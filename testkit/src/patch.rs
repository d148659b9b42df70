//! JSON merge patch and server-side apply, on plain JSON.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
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
pub(crate) fn apply_patch(target: &mut Value, last: Option<&Value>, patch: &Value) {
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

pub(crate) fn deep_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                deep_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}
