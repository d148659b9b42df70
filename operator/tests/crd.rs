//! The CRD file is the generator's output, and it refuses what it should: objects are checked
//! the way the API server checks them, against the OpenAPI constraints of the schema (types,
//! enums, ranges, patterns) and its CEL rules (evaluated by kube's CEL library), by the
//! operator's admission check run on the file's schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chat_operator::api::ChatCluster;
use kube::CustomResourceExt;
use serde_json::{Value, json};

const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatcluster.yaml");

fn crd_file() -> Value {
    let text = std::fs::read_to_string(CRD_FILE).expect("crds/chatcluster.yaml");
    serde_yaml::from_str(&text).expect("CRD YAML")
}

fn schema() -> Value {
    crd_file()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crd_file_is_up_to_date() {
    let generated = serde_yaml::to_string(&ChatCluster::crd()).unwrap();
    let on_disk = std::fs::read_to_string(CRD_FILE).unwrap();
    assert!(
        generated == on_disk,
        "crds/chatcluster.yaml is stale: run `cargo run -p chat-operator --bin crdgen > crds/chatcluster.yaml`"
    );
}

#[test]
fn crd_has_names_columns_status_and_rules() {
    let crd = crd_file();
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "chatcluster.io");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["shortNames"], json!(["chat"]));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Services", "Primary", "Replicas", "Age"]);
    let text = std::fs::read_to_string(CRD_FILE).unwrap();
    for rule in [
        "self.minReplicas <= self.maxReplicas",
        "!(has(self.replicas) && has(self.autoscaling))",
        "isQuantity(self)",
    ] {
        assert!(text.contains(rule), "CRD lacks the rule {rule}");
    }
}

/// Every error the API server would report for `spec` under the CRD file's schema: the
/// operator's own admission check, the same code the reconciler runs.
fn admission_errors(spec: Value) -> Vec<String> {
    chat_operator::api::admission(&schema(), &spec, None)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn assert_refused(spec: Value, field: &str, words: &str) {
    let errors = admission_errors(spec.clone());
    assert!(
        errors
            .iter()
            .any(|e| e.contains(field) && e.contains(words)),
        "{spec} should be refused naming {field} ({words}); got {errors:?}"
    );
}

#[test]
fn valid_specs_are_admitted() {
    for spec in [
        json!({}),
        json!({ "services": { "groups": { "autoscaling": { "minReplicas": 2, "maxReplicas": 20, "targetRequestsPerSecond": 400 } } } }),
        json!({ "services": { "servers": { "replicas": 2, "loadBalancing": "ringHash", "hashHeader": "x-user" } } }),
        json!({ "database": { "engine": "mariadb", "replicas": 0, "storage": { "size": "500Mi" }, "semiSync": false } }),
        json!({ "ingress": { "replicas": 3, "service": { "type": "NodePort", "port": 30443 }, "tls": { "secretName": "demo-tls" } } }),
        json!({ "services": { "auth": { "resources": { "requests": { "cpu": "250m", "memory": 1073741824 } } } } }),
    ] {
        assert_eq!(
            admission_errors(spec.clone()),
            Vec::<String>::new(),
            "{spec}"
        );
    }
}

/// The errors of an update of `old` to `new`, with the transition rules.
fn update_errors(old: Value, new: Value) -> Vec<String> {
    chat_operator::api::admission(&schema(), &new, Some(&old))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_database_engine_cannot_change_once_the_cluster_exists() {
    let maria = json!({ "database": { "engine": "mariadb" } });
    let mysql = json!({ "database": { "engine": "mysql", "replicas": 1 } });
    let errors = update_errors(maria.clone(), mysql);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("engine") && e.contains("cannot change")),
        "{errors:?}"
    );
    // Anything else may change, the engine staying.
    let more = json!({ "database": { "engine": "mariadb", "replicas": 3 } });
    assert_eq!(update_errors(maria, more), Vec::<String>::new());
}

#[test]
fn invalid_specs_are_refused_naming_the_field() {
    assert_refused(
        json!({ "services": { "groups": { "autoscaling": { "minReplicas": 5, "maxReplicas": 2 } } } }),
        "maxReplicas",
        "must be greater than or equal to autoscaling.minReplicas",
    );
    assert_refused(
        json!({ "services": { "auth": { "replicas": -1 } } }),
        "spec.services.auth.replicas",
        "greater than or equal to 0",
    );
    assert_refused(
        json!({ "services": { "dms": { "replicas": 2, "autoscaling": { "maxReplicas": 4 } } } }),
        "replicas",
        "mutually exclusive",
    );
    assert_refused(
        json!({ "database": { "engine": "postgres" } }),
        "spec.database.engine",
        "Unsupported value",
    );
    assert_refused(
        json!({ "database": { "replicas": -2 } }),
        "spec.database.replicas",
        "greater than or equal to 0",
    );
    assert_refused(
        json!({ "database": { "storage": { "size": "a lot" } } }),
        "size",
        "must be a positive Kubernetes quantity",
    );
    assert_refused(
        json!({ "ingress": { "service": { "type": "Ingress" } } }),
        "spec.ingress.service.type",
        "Unsupported value",
    );
    assert_refused(
        json!({ "ingress": { "service": { "port": 0 } } }),
        "spec.ingress.service.port",
        "greater than or equal to 1",
    );
    assert_refused(
        json!({ "services": { "servers": { "loadBalancing": "random" } } }),
        "spec.services.servers.loadBalancing",
        "Unsupported value",
    );
    assert_refused(
        json!({ "services": { "servers": { "hashHeader": "X-User Id" } } }),
        "spec.services.servers.hashHeader",
        "should match",
    );
}

#[test]
fn examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["kind"], "ChatCluster", "{}", path.display());
        assert_eq!(
            admission_errors(doc["spec"].clone()),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        let typed: ChatCluster = serde_yaml::from_str(&text).unwrap();
        assert!(
            chat_operator::api::validate(&typed.spec).is_empty(),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 1, "no example in examples/");
}
