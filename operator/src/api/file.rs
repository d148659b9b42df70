//! A `ChatCluster` read from a file (`render`, `local`), held to what the API server would
//! hold it to before the operator ever sees it: the right apiVersion and kind, no unknown
//! field (a typo would otherwise silently mean the default), and a name every derived object
//! name can be built from.

use serde_json::Value;

use super::{ChatCluster, Refused, SpecError};

/// The API version files must name.
pub const API_VERSION: &str = "chatcluster.io/v1alpha1";

/// Longest cluster name: derived names stay within their limits (`-db-replicas` on a
/// Service, limited to 63; `-db-replica` on a StatefulSet, whose pods' revision label limits
/// it to 52).
pub const MAX_NAME: usize = 41;

/// Why a file is not a ChatCluster that could be applied.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not YAML, or not the shape of a ChatCluster.
    #[error("not a ChatCluster: {0}")]
    Parse(String),
    /// Fields the API server would refuse.
    #[error(transparent)]
    Invalid(#[from] Refused),
}

fn problem(field: &str, message: String) -> SpecError {
    SpecError {
        field: field.into(),
        message,
    }
}

/// Whether `s` is a DNS-1035 label (what Service names must be) of at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Paths of the fields of `original` that `parsed` (the same document after a typed round
/// trip) no longer has: fields the types do not know.
fn unknown_fields(original: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(o), Value::Object(p)) = (original, parsed) else {
        return;
    };
    for (key, value) in o {
        // A null is an absent field, which the round trip leaves out.
        if value.is_null() {
            continue;
        }
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match p.get(key) {
            None => out.push(here),
            Some(inner) => unknown_fields(value, inner, &here, out),
        }
    }
}

/// Parse `text` as a ChatCluster file.
pub fn from_yaml(text: &str) -> Result<ChatCluster, FileError> {
    let original: Value =
        serde_yaml::from_str(text).map_err(|e| FileError::Parse(e.to_string()))?;
    let mut problems = Vec::new();
    if original["apiVersion"] != API_VERSION {
        problems.push(problem(
            "apiVersion",
            format!("must be {API_VERSION}, got {}", original["apiVersion"]),
        ));
    }
    if original["kind"] != "ChatCluster" {
        problems.push(problem(
            "kind",
            format!("must be ChatCluster, got {}", original["kind"]),
        ));
    }
    if !problems.is_empty() {
        return Err(Refused(problems).into());
    }
    let resource: ChatCluster =
        serde_json::from_value(original.clone()).map_err(|e| FileError::Parse(e.to_string()))?;
    let parsed = serde_json::to_value(&resource).map_err(|e| FileError::Parse(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields(&original, &parsed, "", &mut unknown);
    problems.extend(
        unknown
            .into_iter()
            .map(|field| problem(&field, "unknown field".into())),
    );
    match resource.metadata.name.as_deref() {
        None => problems.push(problem("metadata.name", "a ChatCluster needs a name".into())),
        Some(name) if !is_dns_label(name, MAX_NAME) => problems.push(problem(
            "metadata.name",
            format!(
                "must be lower-case letters, digits and '-', start with a letter, end with a letter or digit, at most {MAX_NAME} characters; got {name:?}"
            ),
        )),
        Some(_) => {}
    }
    if problems.is_empty() {
        Ok(resource)
    } else {
        Err(Refused(problems).into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn err(text: &str) -> String {
        from_yaml(text).unwrap_err().to_string()
    }

    const HEAD: &str = "apiVersion: chatcluster.io/v1alpha1\nkind: ChatCluster\n";

    #[test]
    fn a_good_file_parses() {
        let resource = from_yaml(&format!(
            "{HEAD}metadata: {{ name: demo, namespace: chat, labels: {{ a: b }} }}\nspec: {{ services: {{ auth: {{ replicas: 3 }} }} }}\n"
        ))
        .unwrap();
        assert_eq!(resource.spec.services.auth.replicas, Some(3));
    }

    #[test]
    fn wrong_kind_unknown_fields_and_bad_names_are_refused_naming_the_field() {
        let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web }\n");
        assert!(
            e.contains("apiVersion: must be") && e.contains("kind: must be"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}metadata: {{ name: demo }}\nspec: {{ bogus: 1, services: {{ auth: {{ replicaz: 3 }} }} }}\n"
        ));
        assert!(e.contains("spec.bogus: unknown field"), "{e}");
        assert!(
            e.contains("spec.services.auth.replicaz: unknown field"),
            "{e}"
        );
        for bad in ["Bad_Name", "-x", "x-", "9lives", &"a".repeat(MAX_NAME + 1)] {
            let e = err(&format!(
                "{HEAD}metadata: {{ name: {bad:?} }}\nspec: {{}}\n"
            ));
            assert!(e.contains("metadata.name: must be"), "{bad}: {e}");
        }
        let e = err(&format!("{HEAD}metadata: {{}}\nspec: {{}}\n"));
        assert!(
            e.contains("metadata.name: a ChatCluster needs a name"),
            "{e}"
        );
        assert!(
            from_yaml(&format!(
                "{HEAD}metadata: {{ name: {} }}\nspec: {{}}\n",
                "a".repeat(MAX_NAME)
            ))
            .is_ok()
        );
    }
}
