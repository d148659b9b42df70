//! `chat-operator render`: every object the reconciler would apply for a `ChatCluster` file,
//! from the same pure builders, without a cluster — for reviewers and GitOps, and so the
//! objects can be checked against Kubernetes' own schemas and policy scanners.
//!
//! What only the cluster knows is shown as a placeholder: the ChatCluster's uid (in every
//! owner reference) and the values of the Secrets the operator generates (their names, types
//! and keys are the real ones; they carry [`PLACEHOLDER_ANNOTATION`]).

use kube::api::DynamicObject;

use crate::{
    Error, Result,
    api::{ChatCluster, ValidatedCluster},
    build::{
        self, BuildError, ClusterRef, Observed, internal_tls,
        secrets::{self, PLACEHOLDER_ANNOTATION},
    },
};

/// The uid owner references carry in rendered objects; the API server assigns the real one.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// The objects for `resource` in `namespace` (default: the file's, else `default`), in the
/// order the reconciler applies them: the generated Secrets (created first), then the
/// NetworkPolicies, configuration and identities, Services, workloads and their disruption
/// budgets, then the PodMonitor and PrometheusRule. `operator_namespace` is where the operator runs (default: `namespace`).
pub fn render(
    resource: &ChatCluster,
    namespace: Option<&str>,
    operator_namespace: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let validated = ValidatedCluster::of(resource)?;
    let mut resource = resource.clone();
    if let (Some(file), Some(given)) = (&resource.metadata.namespace, namespace)
        && file != given
    {
        return Err(Error::NamespaceMismatch {
            file: file.clone(),
            given: given.into(),
        });
    }
    let namespace = namespace
        .map(str::to_string)
        .or_else(|| resource.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    if !crate::api::file::is_dns_label(&namespace, 63) {
        return Err(Error::BadNamespace(namespace));
    }
    resource.metadata.namespace = Some(namespace);
    resource.metadata.uid = Some(PLACEHOLDER_UID.into());
    let owner = ClusterRef::new(&resource)?;

    let mut out = Vec::new();
    for what in secrets::generated(validated.spec()) {
        out.push(build::to_dynamic(&what.placeholder(&owner))?);
    }
    // Issued and renewed by the reconciler before the pods that mount them.
    if let Some(lifetime) = validated.spec().internal_tls.lifetime() {
        for secret in internal_tls::placeholders(&owner, validated.spec(), lifetime) {
            out.push(build::to_dynamic(&secret)?);
        }
    }
    out.extend(
        build::desired(
            &owner,
            &validated,
            &Observed {
                operator_namespace: operator_namespace.map(str::to_string),
                ..Observed::default()
            },
        )?
        .objects()?,
    );
    // Applied by the operator only where the Prometheus Operator's CRDs exist.
    let monitoring = &validated.spec().monitoring;
    if monitoring.enabled {
        out.extend(build::monitoring::objects(&owner, monitoring)?);
    }
    Ok(out)
}

/// Whether `obj` is a generated Secret shown with placeholder values.
pub fn is_placeholder(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(PLACEHOLDER_ANNOTATION))
}

/// The objects as multi-document YAML, with a header saying what is a placeholder. The
/// generated Secrets are printed commented out: applying rendered output must not create
/// Secrets whose values everyone knows (the operator refuses such a Secret, naming it).
pub fn to_yaml(objects: &[DynamicObject]) -> Result<String, BuildError> {
    let mut out = format!(
        "# Rendered by chat-operator {}: what the operator applies for this ChatCluster.\n\
         # Placeholders: ownerReferences carry uid {PLACEHOLDER_UID} (the API server assigns\n\
         # the real one). The Secrets the operator generates in the cluster at the first\n\
         # reconcile are shown commented out, with stand-in values. Autoscaled services show\n\
         # their minReplicas; in the cluster the autoscaler sets their replicas.\n",
        env!("CARGO_PKG_VERSION")
    );
    for obj in objects {
        let yaml = serde_yaml::to_string(obj).map_err(|e| BuildError::Encode {
            what: "rendered object",
            message: e.to_string(),
        })?;
        if is_placeholder(obj) {
            out.push_str("# generated in the cluster, not applied from here:\n# ---\n");
            for line in yaml.lines() {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
        } else {
            out.push_str("---\n");
            out.push_str(&yaml);
        }
    }
    Ok(out)
}

/// A Markdown table of the objects by kind, in apply order (the README's "what it creates").
pub fn summary(objects: &[DynamicObject]) -> String {
    let mut kinds: Vec<(String, Vec<String>)> = Vec::new();
    for obj in objects {
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let name = format!("`{}`", obj.metadata.name.clone().unwrap_or_default());
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, names)) => names.push(name),
            None => kinds.push((kind, vec![name])),
        }
    }
    let mut out = String::from("| kind | count | objects |\n| --- | --- | --- |\n");
    for (kind, names) in &kinds {
        out.push_str(&format!(
            "| {kind} | {} | {} |\n",
            names.len(),
            names.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::api::file::from_yaml;

    const MINIMAL: &str = "
apiVersion: chatcluster.io/v1alpha1
kind: ChatCluster
metadata: { name: demo }
spec: {}
";

    #[test]
    fn secrets_come_first_as_marked_placeholders_and_everything_is_namespaced() {
        let objects = render(&from_yaml(MINIMAL).unwrap(), Some("chat"), None).unwrap();
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| o.types.as_ref().unwrap().kind.clone())
            .collect();
        assert_eq!(&kinds[..3], ["Secret", "Secret", "Secret"]);
        // The Prometheus Operator's last: the rest runs without them.
        assert_eq!(
            &kinds[kinds.len() - 3..],
            ["PodDisruptionBudget", "PodMonitor", "PrometheusRule"]
        );
        for o in &objects {
            assert_eq!(o.metadata.namespace.as_deref(), Some("chat"));
            let owner = &o.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.uid, PLACEHOLDER_UID);
            assert_eq!(owner.name, "demo");
        }
        for secret in &objects[..3] {
            assert_eq!(
                secret.metadata.annotations.as_ref().unwrap()[PLACEHOLDER_ANNOTATION],
                "true"
            );
            // Every generated value is a stand-in; only the user name is not generated.
            let data = secret.data["stringData"].as_object().unwrap();
            assert!(!data.is_empty());
            for (key, value) in data {
                assert!(
                    key == "app-user" || value == secrets::PLACEHOLDER,
                    "{key}: {value}"
                );
            }
        }
        // The file's namespace, else `default`; never both disagreeing.
        let objects = render(&from_yaml(MINIMAL).unwrap(), None, None).unwrap();
        assert_eq!(objects[0].metadata.namespace.as_deref(), Some("default"));
        let mut in_file = from_yaml(MINIMAL).unwrap();
        in_file.metadata.namespace = Some("team".into());
        let objects = render(&in_file, None, None).unwrap();
        assert_eq!(objects[0].metadata.namespace.as_deref(), Some("team"));
        assert!(render(&in_file, Some("team"), None).is_ok());
        let e = render(&in_file, Some("other"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("team") && e.contains("other"), "{e}");
        let e = render(&from_yaml(MINIMAL).unwrap(), Some("BAD NS!"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a DNS label"), "{e}");
    }

    #[test]
    fn a_named_certificate_generates_none() {
        let with_tls = MINIMAL.replace(
            "spec: {}",
            "spec: { ingress: { tls: { secretName: my-cert } } }",
        );
        let objects = render(&from_yaml(&with_tls).unwrap(), None, None).unwrap();
        let secrets = objects
            .iter()
            .filter(|o| o.types.as_ref().unwrap().kind == "Secret")
            .count();
        assert_eq!(
            secrets, 12,
            "database credentials, the token key, the internal CA and nine component certificates"
        );
    }

    #[test]
    fn an_invalid_spec_is_refused_naming_the_field() {
        let invalid = MINIMAL.replace(
            "spec: {}",
            "spec: { services: { groups: { autoscaling: { minReplicas: 5, maxReplicas: 2 } } } }",
        );
        let e = render(&from_yaml(&invalid).unwrap(), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.services.groups.autoscaling"), "{e}");
    }

    #[test]
    fn yaml_has_one_document_per_object_and_the_summary_one_row_per_kind() {
        let objects = render(&from_yaml(MINIMAL).unwrap(), None, None).unwrap();
        let yaml = to_yaml(&objects).unwrap();
        let placeholders = objects.iter().filter(|o| is_placeholder(o)).count();
        // Database credentials, token key, Envoy's certificate, the internal CA, and the
        // internal certificates of chat-xds, Envoy, the database, the broker and the five chat
        // services.
        assert_eq!(placeholders, 13);
        assert_eq!(
            yaml.lines().filter(|l| *l == "---").count(),
            objects.len() - placeholders,
            "the generated Secrets are comments"
        );
        assert_eq!(yaml.lines().filter(|l| *l == "# ---").count(), placeholders);
        assert!(
            !yaml.contains("\nstringData"),
            "no Secret data outside comments"
        );
        let table = summary(&objects);
        assert!(table.contains("| Secret | 13 | `demo-db`"), "{table}");
        assert!(table.contains("| Deployment | 8 |"), "{table}");
    }
}
