//! The operator's Helm chart, checked by the real `helm` (installed by scripts/setup.sh): it
//! lints, renders with default and non-default values, every rendered object parses as the
//! Kubernetes type it claims to be (and round-trips without losing a field), the values schema
//! refuses bad values, and the chart's CRD is the generated one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::Deployment,
    core::v1::{Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn root() -> PathBuf {
    chatcluster_tests::repo()
}

fn chart() -> PathBuf {
    root().join("charts/chat-operator")
}

fn helm() -> Command {
    let bin = std::env::var_os("HELM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/helm"));
    assert!(
        bin.exists(),
        "helm not found at {}: run scripts/setup.sh",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    // No user state: helm's caches and config in a throwaway place.
    let home = std::env::temp_dir().join(format!("helm-home-{}", std::process::id()));
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `helm template` of the chart in namespace `ops` with `args`: its YAML, or its error.
fn template_yaml(args: &[&str]) -> Result<String, String> {
    let out = helm()
        .args(["template", "demo"])
        .arg(chart())
        .args(["--namespace", "ops"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let text = template_yaml(args)?;
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect())
}

use serde::Deserialize;

/// Parse `doc` as `K` and back: a misspelt or misplaced field is dropped by the typed parse,
/// so the round trip would differ.
fn round_trip<K: DeserializeOwned + Serialize>(doc: &Value) {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{} lost or changed fields in a round trip",
        doc["kind"]
    );
}

fn check_objects(docs: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "ServiceAccount" => round_trip::<ServiceAccount>(doc),
            "ClusterRole" => round_trip::<ClusterRole>(doc),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
            "Deployment" => round_trip::<Deployment>(doc),
            "Service" => round_trip::<Service>(doc),
            "ValidatingAdmissionPolicy" => round_trip::<ValidatingAdmissionPolicy>(doc),
            "ValidatingAdmissionPolicyBinding" => {
                round_trip::<ValidatingAdmissionPolicyBinding>(doc)
            }
            "ChatCluster" => {
                let resource: chat_operator::api::ChatCluster =
                    serde_json::from_value(doc.clone()).unwrap();
                assert_eq!(chat_operator::api::validate(&resource.spec), vec![]);
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    kinds
}

#[test]
fn chart_lints() {
    let out = helm()
        .arg("lint")
        .arg(chart())
        .args(["--strict"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_values_render_valid_objects() {
    let docs = template(&[]).unwrap();
    assert_eq!(
        check_objects(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(dep["spec"]["replicas"], 2);
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "chatcluster/chat-operator:0.1.0");
    assert_eq!(container["args"], serde_json::json!(["run"]));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for wanted in [
        "POD_NAME",
        "POD_NAMESPACE",
        "CHAT_OPERATOR_LEASE",
        "CHAT_OPERATOR_METRICS_ADDR",
        "CHAT_OPERATOR_IMAGE",
        "CHAT_OPERATOR_ALLOW_IMAGE_OVERRIDES",
    ] {
        assert!(env.contains(&wanted), "{wanted} missing: {env:?}");
    }
    // The role covers what the operator applies and what it grants chat-xds.
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        missing_permissions(&role["rules"], true),
        Vec::<String>::new()
    );
}

/// Whether `rules` let `verb` on `group`/`resource`.
fn allows(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    let has = |list: &Value, x: &str| list.as_array().unwrap().iter().any(|v| v == x);
    rules.as_array().unwrap().iter().any(|r| {
        has(&r["apiGroups"], group) && has(&r["resources"], resource) && has(&r["verbs"], verb)
    })
}

/// What the operator needs that `rules` (a ClusterRole's, or a watched namespace's Role's)
/// do not grant, and what they grant that it must not have; `lease`: the rules of the
/// namespace of its Lease.
fn missing_permissions(rules: &Value, lease: bool) -> Vec<String> {
    let mut needed = vec![
        ("chatcluster.io", "chatclusters", "watch"),
        ("chatcluster.io", "chatclusters/status", "patch"),
        ("apps", "deployments", "patch"),
        ("apps", "statefulsets", "patch"),
        ("", "secrets", "create"),
        // Renewing the internal certificates (server-side apply).
        ("", "secrets", "patch"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("rbac.authorization.k8s.io", "roles", "patch"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("events.k8s.io", "events", "create"),
        ("", "pods", "list"),
        ("metrics.k8s.io", "pods", "list"),
        // A physical re-seed: a Job fetches the copy, then the replica's pod is restarted.
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("", "pods", "delete"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v))
    .collect::<Vec<_>>();
    // Every kind the reconciler applies and prunes, as the builders list them: a kind added
    // there without its permission here fails this test, not a cluster.
    for kind in chat_operator::build::Desired::kinds() {
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            needed.push((kind.group.clone(), kind.plural.clone(), verb));
        }
    }
    // Each ChatCluster's PodMonitor and PrometheusRule: applied, and deleted when turned off.
    for kind in chat_operator::build::monitoring::kinds() {
        for verb in ["get", "create", "patch", "delete"] {
            needed.push((kind.group.clone(), kind.plural.clone(), verb));
        }
    }
    if lease {
        needed.push(("coordination.k8s.io".into(), "leases".into(), "update"));
    }
    let mut out: Vec<String> = needed
        .iter()
        .filter(|(g, r, v)| !allows(rules, g, r, v))
        .map(|(g, r, v)| format!("cannot {v} {g}/{r}"))
        .collect();
    // Least privilege: never replaces or deletes a Secret, no wildcards.
    for verb in ["update", "delete"] {
        if allows(rules, "", "secrets", verb) {
            out.push(format!("may {verb} Secrets"));
        }
    }
    if !lease && allows(rules, "coordination.k8s.io", "leases", "update") {
        out.push("a Lease permission outside the Lease's namespace".into());
    }
    if rules.to_string().contains("\"*\"") {
        out.push("a wildcard".into());
    }
    out
}

#[test]
fn a_namespaced_install_holds_roles_in_its_namespaces_only() {
    let docs = template(&["--set", "watchNamespaces={team,chat}"]).unwrap();
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "no cluster-wide role"
    );
    let in_namespace = |kind: &str, ns: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no {kind} in {ns}"))
    };
    for ns in ["team", "chat"] {
        let role = in_namespace("Role", ns);
        assert_eq!(
            missing_permissions(&role["rules"], false),
            Vec::<String>::new(),
            "{ns}"
        );
        let binding = in_namespace("RoleBinding", ns);
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
        round_trip::<k8s_openapi::api::rbac::v1::Role>(role);
        round_trip::<k8s_openapi::api::rbac::v1::RoleBinding>(binding);
    }
    // The release namespace holds only the Lease's permission.
    let lease = in_namespace("Role", "ops");
    assert_eq!(lease["rules"].as_array().unwrap().len(), 1);
    assert!(allows(
        &lease["rules"],
        "coordination.k8s.io",
        "leases",
        "update"
    ));
    assert!(!allows(
        &lease["rules"],
        "chatcluster.io",
        "chatclusters",
        "watch"
    ));
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = &dep["spec"]["template"]["spec"]["containers"][0]["env"];
    let watched = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CHAT_OPERATOR_WATCH_NAMESPACES")
        .expect("the operator is told what to watch");
    assert_eq!(watched["value"], "team,chat");
    // Without the list, the operator is not told to narrow its watch.
    let docs = template(&[]).unwrap();
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(!dep.to_string().contains("CHAT_OPERATOR_WATCH_NAMESPACES"));
}

#[test]
fn non_default_values_render_valid_objects() {
    let docs = template(&[
        "--set",
        "replicas=1",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "metrics.service.enabled=false",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=preexisting",
        "--set",
        "example.enabled=true",
        "--set",
        "example.name=laptop",
        "--set",
        "example.spec.database.engine=mariadb",
        "--set",
        "example.spec.database.replicas=1",
        "--set-string",
        "nodeSelector.disk=ssd",
    ])
    .unwrap();
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    let condition = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        condition.contains("system:serviceaccount:ops:preexisting"),
        "{condition}"
    );
    assert_eq!(
        check_objects(&docs),
        [
            "ChatCluster",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "preexisting"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["nodeSelector"]["disk"],
        "ssd"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "chatcluster/chat-operator:9.9.9"
    );
    let resource = docs.iter().find(|d| d["kind"] == "ChatCluster").unwrap();
    assert_eq!(resource["metadata"]["name"], "laptop");
    assert_eq!(resource["spec"]["database"]["engine"], "mariadb");
}

#[test]
fn the_monitoring_values_render_the_operators_monitor_and_alerts_and_the_dashboards() {
    let docs = template(&[
        "--set",
        "monitoring.enabled=true",
        "--set",
        "monitoring.labels.release=kps",
        "--set",
        "monitoring.dashboards.enabled=true",
        "--set",
        "monitoring.dashboards.namespace=grafana",
    ])
    .unwrap();
    let of = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let monitor = of("PodMonitor");
    assert_eq!(monitor.len(), 1);
    assert_eq!(monitor[0]["metadata"]["labels"]["release"], "kps");
    let endpoint = &monitor[0]["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["honorLabels"], true);
    let deployment = of("Deployment")[0];
    for (k, v) in monitor[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v);
    }
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "metrics")
    );
    // The operator's alerts, as the rules file holds them.
    let rule = of("PrometheusRule");
    assert_eq!(rule.len(), 1);
    let file: Value =
        serde_yaml::from_str(chat_operator::build::monitoring::OPERATOR_RULES).unwrap();
    assert_eq!(rule[0]["spec"]["groups"], file["groups"]);
    // Every dashboard, in Grafana's namespace, wearing its sidecar's label.
    let maps = of("ConfigMap");
    assert_eq!(maps.len(), 4);
    for m in maps {
        assert_eq!(m["metadata"]["namespace"], "grafana");
        assert_eq!(m["metadata"]["labels"]["grafana_dashboard"], "1");
        let (name, json) = m["data"].as_object().unwrap().iter().next().unwrap();
        let shipped =
            std::fs::read_to_string(chart().join("monitoring/dashboards").join(name)).unwrap();
        let parsed: Value = serde_json::from_str(json.as_str().unwrap()).unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<Value>(&shipped).unwrap(),
            "{name}"
        );
    }
    // By default ("auto"), only where the Prometheus Operator's kinds are served: a cluster
    // without them gets nothing it cannot take, one with them gets the operator scraped.
    let monitors = |args: &[&str]| {
        template(args)
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "PodMonitor" || d["kind"] == "PrometheusRule")
            .count()
    };
    assert_eq!(monitors(&[]), 0);
    let pods = ["--api-versions", "monitoring.coreos.com/v1/PodMonitor"];
    let rules = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"];
    // A stack serving monitors but not rules would refuse the PrometheusRule.
    assert_eq!(monitors(&pods), 0);
    let served = [pods, rules].concat();
    assert_eq!(monitors(&served), 2);
    assert_eq!(
        monitors(&[served.as_slice(), &["--set", "monitoring.enabled=false"]].concat()),
        0
    );
    assert!(
        template(&[])
            .unwrap()
            .iter()
            .all(|d| d["kind"] != "ConfigMap")
    );
}

#[test]
fn the_values_schema_refuses_bad_values() {
    for bad in [
        vec!["--set", "replicas=0"],
        vec!["--set", "image.pullPolicy=Sometimes"],
        vec!["--set", "metrics.port=70000"],
        vec!["--set", "leaderElection.leaseName=Not_A_Name"],
        vec!["--set", "unknownKey=1"],
        vec!["--set", "monitoring.enabled=sometimes"],
    ] {
        let err = template(&bad).expect_err(&format!("{bad:?} was accepted"));
        assert!(err.contains("schema"), "{bad:?}: {err}");
    }
}

#[test]
fn chart_crd_is_the_generated_one() {
    let chart_crd = std::fs::read_to_string(chart().join("crds/chatcluster.yaml")).unwrap();
    let generated = std::fs::read_to_string(root().join("crds/chatcluster.yaml")).unwrap();
    assert!(
        chart_crd == generated,
        "charts/chat-operator/crds/chatcluster.yaml is stale: cp crds/chatcluster.yaml charts/chat-operator/crds/"
    );
}

/// The chart's objects (with its CRD, default and non-default values) and the generated CRD
/// pass strict validation against Kubernetes 1.37's published schemas. (A ChatCluster has no
/// published schema: its own checks are the CRD's and `check_objects`'.)
#[test]
fn the_chart_and_the_crd_pass_strict_kubernetes_validation() {
    for values in [
        &["--include-crds"][..],
        &[
            "--set",
            "replicas=1",
            "--set",
            "serviceAccount.create=false",
            "--set",
            "serviceAccount.name=x",
        ][..],
    ] {
        let yaml = template_yaml(values).unwrap();
        chatcluster_tests::objects::kubernetes_validate(&yaml)
            .unwrap_or_else(|e| panic!("helm template {values:?}:\n{e}"));
    }
    let crd = std::fs::read_to_string(root().join("crds/chatcluster.yaml")).unwrap();
    chatcluster_tests::objects::kubernetes_validate(&crd).unwrap();
}

/// Evaluate the admission policy `policy` (as rendered) on an update from `old` to `new` by
/// `user`: `None` when it does not apply to the request, else the messages of the
/// validations that fail.
fn admit(policy: &Value, user: &str, old: &Value, new: &Value) -> Option<Vec<String>> {
    use cel::{Context, Program, Value as Cel};
    let spec = &policy["spec"];
    let mut ctx = Context::default();
    ctx.add_variable("object", new.clone()).unwrap();
    ctx.add_variable("oldObject", old.clone()).unwrap();
    ctx.add_variable(
        "request",
        serde_json::json!({ "userInfo": { "username": user } }),
    )
    .unwrap();
    let eval = |ctx: &Context, expression: &Value| {
        let source = expression.as_str().unwrap();
        Program::compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
    };
    for condition in spec["matchConditions"].as_array().unwrap() {
        if eval(&ctx, &condition["expression"]) != Cel::Bool(true) {
            return None;
        }
    }
    let mut variables = std::collections::HashMap::new();
    for variable in spec["variables"].as_array().unwrap() {
        variables.insert(
            variable["name"].as_str().unwrap().to_string(),
            eval(&ctx, &variable["expression"]),
        );
    }
    ctx.add_variable_from_value("variables", variables);
    Some(
        spec["validations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| eval(&ctx, &v["expression"]) != Cel::Bool(true))
            .map(|v| v["message"].as_str().unwrap().to_string())
            .collect(),
    )
}

#[test]
fn the_operator_may_change_only_the_database_role_label_of_a_pod() {
    let docs = template(&[]).unwrap();
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["resources"], serde_json::json!(["pods"]));
    assert_eq!(rule["operations"], serde_json::json!(["UPDATE"]));

    let operator = "system:serviceaccount:ops:demo-chat-operator";
    let pod = serde_json::json!({
        "metadata": {
            "name": "demo-db-replica-0",
            "labels": { "chatcluster.io/db-role": "replica", "chatcluster.io/cluster": "demo" },
            "annotations": { "a": "b" },
        },
        "spec": { "containers": [{ "name": "db", "image": "mariadb" }] },
    });
    let changed = |edit: fn(&mut Value)| {
        let mut new = pod.clone();
        edit(&mut new);
        new
    };
    let promoted =
        changed(|p| p["metadata"]["labels"]["chatcluster.io/db-role"] = "primary".into());
    assert_eq!(admit(policy, operator, &pod, &promoted), Some(vec![]));
    let unlabelled = changed(|p| {
        p["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("chatcluster.io/db-role");
    });
    assert_eq!(admit(policy, operator, &pod, &unlabelled), Some(vec![]));
    for (edit, refusal) in [
        (
            (|p: &mut Value| p["metadata"]["labels"]["chatcluster.io/cluster"] = "other".into())
                as fn(&mut Value),
            "only the chatcluster.io/db-role label",
        ),
        (
            |p| p["metadata"]["labels"]["app"] = "mine".into(),
            "only the chatcluster.io/db-role label",
        ),
        (
            |p| {
                p["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("chatcluster.io/cluster");
            },
            "only the chatcluster.io/db-role label",
        ),
        (
            |p| p["metadata"]["annotations"]["a"] = "c".into(),
            "annotations",
        ),
        (
            |p| p["metadata"]["finalizers"] = serde_json::json!(["example.com/hold"]),
            "finalizers",
        ),
        (
            |p| {
                p["metadata"]["ownerReferences"] =
                    serde_json::json!([{ "kind": "ReplicaSet", "name": "x", "uid": "u" }])
            },
            "owner references",
        ),
        (
            |p| p["spec"]["containers"][0]["image"] = "evil".into(),
            "spec",
        ),
    ] {
        let refused = admit(policy, operator, &pod, &changed(edit)).unwrap();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains(refusal), "{refused:?}");
    }
    // Anyone else's updates are not this policy's business.
    let other = "system:serviceaccount:kube-system:replicaset-controller";
    assert_eq!(
        admit(policy, other, &pod, &changed(|p| p["spec"] = "x".into())),
        None
    );
    // And the chart can leave it out.
    let docs = template(&["--set", "podPatchPolicy.enabled=false"]).unwrap();
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ValidatingAdmissionPolicy")
    );
}
