//! The operator's own check of a spec: the API server's checks, run again.
//!
//! The CRD schema refuses invalid objects at admission, but an object can still reach the
//! operator invalid (an older CRD, a schema-less apply, a direct etcd write, a file in local
//! mode). So the operator runs what the API server runs — the OpenAPI constraints of the
//! schema (types, enums, ranges, lengths, patterns) and its CEL rules — read from the schema
//! generated from the spec types. Each bound and rule is written once, on those types; nothing
//! here repeats one. The reconciler validates first and touches no child when it fails.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{ChatCluster, spec::ChatClusterSpec};

/// One problem with a spec, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path of the field, e.g. `spec.services.groups.autoscaling.maxReplicas`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The generated CRD's `openAPIV3Schema`, as JSON.
fn generated_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        ChatCluster::crd()
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    })
}

/// Every problem with `spec`, empty when it can be carried out.
pub fn validate(spec: &ChatClusterSpec) -> Vec<SpecError> {
    match serde_json::to_value(spec) {
        Ok(value) => admission(generated_schema(), &value, None),
        Err(e) => vec![SpecError {
            field: "spec".into(),
            message: format!("cannot be encoded: {e}"),
        }],
    }
}

/// Every error the API server would report for a ChatCluster with `spec` (and, for an update,
/// the `old` spec) under `schema` (a CRD's `openAPIV3Schema`): OpenAPI constraints, then CEL
/// rules; sorted by field.
pub fn admission(schema: &Value, spec: &Value, old: Option<&Value>) -> Vec<SpecError> {
    let mut errors = Vec::new();
    openapi(&schema["properties"]["spec"], spec, "spec", &mut errors);
    let object = json!({ "spec": spec });
    let old = old.map(|o| json!({ "spec": o }));
    if let Err(cel) = kube::core::cel::Validator::new().validate(schema, &object, old.as_ref()) {
        errors.extend(cel.as_slice().iter().map(|e| SpecError {
            field: e.field_path.clone(),
            message: e.message.clone(),
        }));
    }
    errors.sort();
    errors.dedup();
    errors
}

/// The OpenAPI part of the API server's validation of `value` at `path`, with its messages.
fn openapi(schema: &Value, value: &Value, path: &str, out: &mut Vec<SpecError>) {
    let mut fail = |field: String, message: String| out.push(SpecError { field, message });
    if value.is_null() {
        if schema["nullable"] != true {
            fail(path.into(), "Required value".into());
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            fail(
                path.into(),
                "Invalid value: must be an integer or a string".into(),
            );
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        fail(
            path.into(),
            format!("Invalid value: must be of type {}", schema["type"]),
        );
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(
            path.into(),
            format!("Unsupported value: {value}: supported values: {allowed:?}"),
        );
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            fail(
                path.into(),
                format!("Invalid value: {n}: should be greater than or equal to {min}"),
            );
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            fail(
                path.into(),
                format!("Invalid value: {n}: should be less than or equal to {max}"),
            );
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64()
            && chars < min
        {
            fail(
                path.into(),
                format!("Invalid value: should be at least {min} chars long"),
            );
        }
        if let Some(max) = schema["maxLength"].as_u64()
            && chars > max
        {
            fail(
                path.into(),
                format!("Too long: may not be more than {max} chars"),
            );
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(s) => {}
                Ok(_) => fail(
                    path.into(),
                    format!("Invalid value: {s:?}: should match '{pattern}'"),
                ),
                Err(e) => fail(
                    path.into(),
                    format!("the schema's pattern does not compile: {e}"),
                ),
            }
        }
    }
    if let Some(map) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            if let Some(key) = required.as_str()
                && !map.contains_key(key)
            {
                fail(format!("{path}.{key}"), "Required value".into());
            }
        }
        for (key, child) in map {
            let child_path = format!("{path}.{key}");
            if let Some(child_schema) = schema["properties"].get(key) {
                openapi(child_schema, child, &child_path, out);
            } else if schema["additionalProperties"].is_object() {
                openapi(&schema["additionalProperties"], child, &child_path, out);
            } else if schema["properties"].is_object() {
                out.push(SpecError {
                    field: child_path,
                    message: "unknown field".into(),
                });
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            openapi(&schema["items"], item, &format!("{path}[{i}]"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AutoscalingSpec, TlsSpec};

    fn autoscaling(min: i32, max: i32) -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_requests_per_second: None,
            target_cpu_utilization: None,
            scale_down_stabilization_seconds: 300,
        }
    }

    #[test]
    fn empty_spec_is_valid() {
        assert_eq!(validate(&ChatClusterSpec::default()), vec![]);
    }

    #[test]
    fn a_scraper_label_must_be_a_label() {
        let mut spec = ChatClusterSpec::default();
        for good in ["app=prometheus", "example.com/scrape=", "a.b/c-d_e.f=G-h"] {
            spec.network_policy.metrics_scraper_label = good.into();
            assert_eq!(validate(&spec), vec![], "{good}");
        }
        for bad in ["prometheus", "=x", "app=two words", "-app=x", "App.com/x=y"] {
            spec.network_policy.metrics_scraper_label = bad.into();
            let fields: Vec<_> = validate(&spec).into_iter().map(|e| e.field).collect();
            assert_eq!(fields, ["spec.networkPolicy.metricsScraperLabel"], "{bad}");
        }
        spec.network_policy.metrics_scraper_label = "app=prometheus".into();
        spec.network_policy.metrics_scraper_namespace = Some("monitoring".into());
        assert_eq!(validate(&spec), vec![]);
        spec.network_policy.metrics_scraper_namespace = Some("Not_A_Namespace".into());
        let fields: Vec<_> = validate(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.networkPolicy.metricsScraperNamespace"]);
    }

    #[test]
    fn min_above_max_names_the_field() {
        let mut spec = ChatClusterSpec::default();
        spec.services.groups.autoscaling = Some(autoscaling(5, 2));
        let errors = validate(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].field,
            "spec.services.groups.autoscaling.maxReplicas"
        );
        assert!(errors[0].message.contains("minReplicas (5)"));
    }

    #[test]
    fn negative_and_conflicting_replicas_are_refused() {
        let mut spec = ChatClusterSpec::default();
        spec.services.auth.replicas = Some(-1);
        spec.services.dms.replicas = Some(3);
        spec.services.dms.autoscaling = Some(autoscaling(1, 4));
        spec.database.replicas = -2;
        let fields: Vec<_> = validate(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            // Sorted by field.
            [
                "spec.database.replicas",
                "spec.services.auth.replicas",
                "spec.services.dms.replicas",
            ]
        );
    }

    #[test]
    fn bad_storage_header_port_and_secret_are_refused() {
        let mut spec = ChatClusterSpec::default();
        spec.database.storage.size = "ten gigs".into();
        spec.services.servers.hash_header = Some("X-Bad Header".into());
        spec.ingress.service.port = 70000;
        spec.ingress.tls = Some(TlsSpec {
            secret_name: "Not_A_Name".into(),
        });
        let fields: Vec<_> = validate(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.database.storage.size",
                "spec.ingress.service.port",
                "spec.ingress.tls.secretName",
                "spec.services.servers.hashHeader",
            ]
        );
    }
}
