//! The operator's own check of a spec.
//!
//! The CRD schema refuses invalid objects at admission, but an object can still reach the
//! operator invalid (an older CRD, a schema-less apply, a direct etcd write). The reconciler runs
//! [`validate`] first and touches no child when it fails.

use super::spec::{ChatClusterSpec, ChatServiceSpec};

/// One problem with a spec, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path of the field, e.g. `spec.services.groups.autoscaling.maxReplicas`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Every problem with `spec`, empty when it can be carried out.
pub fn validate(spec: &ChatClusterSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, field: String, message: String| {
        if !ok {
            errors.push(SpecError { field, message });
        }
    };

    for (kind, svc) in spec.services.iter() {
        validate_service(&format!("spec.services.{kind}"), svc, &mut check);
    }

    let db = &spec.database;
    check(
        (0..=15).contains(&db.replicas),
        "spec.database.replicas".into(),
        format!("must be between 0 and 15, got {}", db.replicas),
    );
    check(
        parse_quantity(&db.storage.size).is_some_and(|q| q > 0.0),
        "spec.database.storage.size".into(),
        format!(
            "must be a positive Kubernetes quantity such as 10Gi, got {:?}",
            db.storage.size
        ),
    );
    check(
        (1..=3600).contains(&db.failover.timeout_seconds),
        "spec.database.failover.timeoutSeconds".into(),
        format!(
            "must be between 1 and 3600, got {}",
            db.failover.timeout_seconds
        ),
    );

    let ingress = &spec.ingress;
    check(
        (1..=100).contains(&ingress.replicas),
        "spec.ingress.replicas".into(),
        format!("must be between 1 and 100, got {}", ingress.replicas),
    );
    check(
        (1..=65535).contains(&ingress.service.port),
        "spec.ingress.service.port".into(),
        format!("must be between 1 and 65535, got {}", ingress.service.port),
    );
    if let Some(tls) = &ingress.tls {
        check(
            is_dns_subdomain(&tls.secret_name),
            "spec.ingress.tls.secretName".into(),
            format!("must name a Secret, got {:?}", tls.secret_name),
        );
    }
    check(
        (1..=5).contains(&spec.xds.replicas),
        "spec.xds.replicas".into(),
        format!("must be between 1 and 5, got {}", spec.xds.replicas),
    );
    errors
}

fn validate_service(
    path: &str,
    svc: &ChatServiceSpec,
    check: &mut impl FnMut(bool, String, String),
) {
    if let Some(replicas) = svc.replicas {
        check(
            (0..=1000).contains(&replicas),
            format!("{path}.replicas"),
            format!("must be between 0 and 1000, got {replicas}"),
        );
    }
    if let Some(auto) = &svc.autoscaling {
        check(
            svc.replicas.is_none(),
            format!("{path}.replicas"),
            "replicas and autoscaling are mutually exclusive: with autoscaling, the autoscaler sets the replica count".into(),
        );
        check(
            (1..=1000).contains(&auto.min_replicas),
            format!("{path}.autoscaling.minReplicas"),
            format!("must be between 1 and 1000, got {}", auto.min_replicas),
        );
        check(
            auto.min_replicas <= auto.max_replicas,
            format!("{path}.autoscaling.maxReplicas"),
            format!(
                "must be greater than or equal to autoscaling.minReplicas ({}), got {}",
                auto.min_replicas, auto.max_replicas
            ),
        );
        check(
            auto.target_requests_per_second.is_none_or(|t| t >= 1),
            format!("{path}.autoscaling.targetRequestsPerSecond"),
            "must be at least 1".into(),
        );
        check(
            auto.target_cpu_utilization
                .is_none_or(|t| (1..=100).contains(&t)),
            format!("{path}.autoscaling.targetCpuUtilization"),
            "must be between 1 and 100".into(),
        );
    }
    if let Some(header) = &svc.hash_header {
        let valid = !header.is_empty()
            && header.len() <= 253
            && header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        check(
            valid,
            format!("{path}.hashHeader"),
            format!("must be a lower-case HTTP header name, got {header:?}"),
        );
    }
}

/// A DNS-1123 subdomain, the rule for most Kubernetes object names.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The value of a Kubernetes quantity (`10Gi`, `500M`, `1.5`, `1e3`), or `None` when malformed.
pub(crate) fn parse_quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .or_else(|| q.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| q.strip_suffix('E').map(|n| (n, 1e18)))
        .unwrap_or((q, 1.0));
    let plain = number.trim_start_matches(['+', '-']);
    let digits_ok = !plain.is_empty()
        && plain.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && plain
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !digits_ok {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
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
            [
                "spec.services.auth.replicas",
                "spec.services.dms.replicas",
                "spec.database.replicas"
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
                "spec.services.servers.hashHeader",
                "spec.database.storage.size",
                "spec.ingress.service.port",
                "spec.ingress.tls.secretName"
            ]
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(
            parse_quantity("10Gi"),
            Some(10.0 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_quantity("500M"), Some(5e8));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        for bad in ["", "Gi", "ten", "1 Gi", "1Gb", "--1"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }
}
