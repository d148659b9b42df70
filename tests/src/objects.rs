//! Checks over a set of rendered Kubernetes objects (as JSON values) that no schema makes:
//! the PodSecurity "restricted" profile's rules, and labels, selectors and references that
//! agree across the set. Each returns what is wrong, one sentence per problem.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

use crate::TempDir;

/// Validate multi-document YAML strictly (unknown fields refused) against the published
/// schemas of Kubernetes 1.37 with `kubernetes-validate` (PyPI; `scripts/setup.sh` installs
/// it). The error is its report.
pub fn kubernetes_validate(yaml: &str) -> Result<(), String> {
    let dir = TempDir::new("kubernetes-validate");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            "1.37.0",
        ])
        .arg(&file)
        .output()
        .map_err(|e| format!("kubernetes-validate: {e} (run scripts/setup.sh)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The documents of multi-document YAML, as JSON values (empty documents left out).
pub fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect()
}

/// Labels a controller sets on pods at run time, not in their templates: a selector may name
/// them although no template carries them (the topology loop moves the database role).
const RUN_TIME_LABELS: &[&str] = &["chatcluster.io/db-role"];

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn id(o: &Value) -> String {
    format!("{} {}", kind(o), name(o))
}

/// The pod template of a workload (Deployment, StatefulSet, Job, CronJob, DaemonSet).
pub fn pod_template(o: &Value) -> Option<&Value> {
    match kind(o) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some(&o["spec"]["template"]),
        "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| pod[k].as_array().into_iter().flatten())
}

/// Violations of the PodSecurity "restricted" profile (which includes "baseline") by the pod
/// spec `pod` of `what`.
pub fn restricted_violations(what: &str, pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut no = |problem: String| out.push(format!("{what}: {problem}"));
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            no(format!("{host} is on"));
        }
    }
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod["volumes"].as_array().into_iter().flatten() {
        let types: Vec<&String> = v
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| *k != "name")
            .collect();
        if types.iter().any(|t| !VOLUMES.contains(&t.as_str())) {
            no(format!("volume {} has type {types:?}", v["name"]));
        }
    }
    let pod_sc = &pod["securityContext"];
    if pod_sc["runAsUser"] == 0 {
        no("the pod runs as uid 0".into());
    }
    for sysctl in pod_sc["sysctls"].as_array().into_iter().flatten() {
        no(format!("sets sysctl {}", sysctl["name"]));
    }
    for c in containers(pod) {
        let cname = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            no(format!("container {cname} is privileged"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            no(format!("container {cname} may escalate privileges"));
        }
        let non_root = sc["runAsNonRoot"] == true
            || (sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] == true);
        if !non_root {
            no(format!(
                "container {cname} is not forced to run as non-root"
            ));
        }
        if sc["runAsUser"] == 0 {
            no(format!("container {cname} runs as uid 0"));
        }
        let seccomp = if sc["seccompProfile"].is_null() {
            &pod_sc["seccompProfile"]
        } else {
            &sc["seccompProfile"]
        };
        if !matches!(
            seccomp["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        ) {
            no(format!(
                "container {cname} has no RuntimeDefault or Localhost seccomp profile"
            ));
        }
        let caps = &sc["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            no(format!("container {cname} does not drop ALL capabilities"));
        }
        for add in caps["add"].as_array().into_iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                no(format!("container {cname} adds capability {add}"));
            }
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            if port["hostPort"].as_i64().unwrap_or(0) != 0 {
                no(format!(
                    "container {cname} uses host port {}",
                    port["hostPort"]
                ));
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            no(format!(
                "container {cname} has procMount {}",
                sc["procMount"]
            ));
        }
    }
    out
}

fn labels(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    v.as_object().into_iter().flatten()
}

/// Whether `selector` (a label map) selects `labels`, ignoring [`RUN_TIME_LABELS`].
fn selects(selector: &Value, pod_labels: &Value) -> bool {
    labels(selector)
        .filter(|(k, _)| !RUN_TIME_LABELS.contains(&k.as_str()))
        .all(|(k, v)| &pod_labels[k] == v)
}

fn expressions(selector: &Value) -> impl Iterator<Item = &Value> {
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
}

/// Whether the label selector `selector` (`matchLabels` and `matchExpressions`) selects
/// `pod_labels`, ignoring [`RUN_TIME_LABELS`]. An operator other than the four Kubernetes
/// defines selects nothing.
fn holds(selector: &Value, pod_labels: &Value) -> bool {
    selects(&selector["matchLabels"], pod_labels)
        && expressions(selector).all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let value = &pod_labels[key];
            let listed = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == value);
            RUN_TIME_LABELS.contains(&key)
                || match e["operator"].as_str() {
                    Some("In") => listed,
                    Some("NotIn") => !listed,
                    Some("Exists") => !value.is_null(),
                    Some("DoesNotExist") => value.is_null(),
                    _ => false,
                }
        })
}

/// Whether a label selector selects everything (it names no label at all).
fn selects_all(selector: &Value) -> bool {
    labels(&selector["matchLabels"]).next().is_none() && expressions(selector).next().is_none()
}

/// Labels, selectors and references that must agree across the set `objects`: every
/// workload's selector matches its own template; every Service and PodDisruptionBudget selects
/// the pods of some workload; every NetworkPolicy names labels that pods carry; every
/// ConfigMap, Secret and ServiceAccount a pod names exists in the set or in `external`
/// (objects the user provides, as a named TLS Secret); every RoleBinding binds a Role and a
/// ServiceAccount of the set.
pub fn consistency_problems(objects: &[Value], external: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let have: BTreeSet<(String, String)> = objects
        .iter()
        .map(|o| (kind(o).to_string(), name(o).to_string()))
        .chain(external.iter().map(|(k, n)| (k.to_string(), n.to_string())))
        .collect();
    let exists = |k: &str, n: &str| have.contains(&(k.to_string(), n.to_string()));
    let templates: Vec<(&Value, &Value)> = objects
        .iter()
        .filter_map(|o| Some((o, pod_template(o)?)))
        .collect();
    let any_pod = |selector: &Value| {
        templates
            .iter()
            .any(|(_, t)| holds(selector, &t["metadata"]["labels"]))
    };
    for (o, template) in &templates {
        let what = id(o);
        if kind(o) != "CronJob" && kind(o) != "Job" {
            let selector = &o["spec"]["selector"];
            if selects_all(selector) || !holds(selector, &template["metadata"]["labels"]) {
                out.push(format!(
                    "{what}: its selector does not match its own pod template"
                ));
            }
        }
        let pod = &template["spec"];
        if let Some(sa) = pod["serviceAccountName"].as_str()
            && !exists("ServiceAccount", sa)
        {
            out.push(format!("{what}: ServiceAccount {sa} does not exist"));
        }
        for v in pod["volumes"].as_array().into_iter().flatten() {
            if let Some(cm) = v["configMap"]["name"].as_str()
                && !exists("ConfigMap", cm)
            {
                out.push(format!("{what}: ConfigMap {cm} does not exist"));
            }
            if let Some(s) = v["secret"]["secretName"].as_str()
                && !exists("Secret", s)
            {
                out.push(format!("{what}: Secret {s} does not exist"));
            }
        }
        for c in containers(pod) {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str()
                    && !exists("Secret", s)
                {
                    out.push(format!(
                        "{what}: env {} names missing Secret {s}",
                        e["name"]
                    ));
                }
                if let Some(cm) = e["valueFrom"]["configMapKeyRef"]["name"].as_str()
                    && !exists("ConfigMap", cm)
                {
                    out.push(format!(
                        "{what}: env {} names missing ConfigMap {cm}",
                        e["name"]
                    ));
                }
            }
        }
    }
    for o in objects {
        let what = id(o);
        match kind(o) {
            "Service" => {
                let selector = &o["spec"]["selector"];
                if labels(selector).next().is_some()
                    && !any_pod(&serde_json::json!({ "matchLabels": selector }))
                {
                    out.push(format!("{what}: selects no pod of any workload"));
                }
            }
            "PodDisruptionBudget" if !any_pod(&o["spec"]["selector"]) => {
                out.push(format!("{what}: matches no workload"));
            }
            "NetworkPolicy" => {
                let selector = &o["spec"]["podSelector"];
                if !selects_all(selector) && !any_pod(selector) {
                    out.push(format!("{what}: its podSelector matches no pod"));
                }
                for rules in ["ingress", "egress"] {
                    for rule in o["spec"][rules].as_array().into_iter().flatten() {
                        for peer in rule["from"]
                            .as_array()
                            .into_iter()
                            .chain(rule["to"].as_array())
                            .flatten()
                        {
                            let peer_pods = &peer["podSelector"];
                            if peer_pods.is_null() || !peer["namespaceSelector"].is_null() {
                                continue;
                            }
                            if !selects_all(peer_pods) && !any_pod(peer_pods) {
                                out.push(format!("{what}: a {rules} peer selects no pod"));
                            }
                        }
                    }
                }
            }
            "RoleBinding" => {
                let role = o["roleRef"]["name"].as_str().unwrap_or("");
                if !exists(o["roleRef"]["kind"].as_str().unwrap_or(""), role) {
                    out.push(format!("{what}: binds missing {}", o["roleRef"]["kind"]));
                }
                for s in o["subjects"].as_array().into_iter().flatten() {
                    if s["kind"] == "ServiceAccount"
                        && !exists("ServiceAccount", s["name"].as_str().unwrap_or(""))
                    {
                        out.push(format!(
                            "{what}: binds missing ServiceAccount {}",
                            s["name"]
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn deployment(pod: Value) -> Value {
        json!({
            "kind": "Deployment",
            "metadata": { "name": "d" },
            "spec": {
                "selector": { "matchLabels": { "app": "a" } },
                "template": { "metadata": { "labels": { "app": "a" } }, "spec": pod },
            }
        })
    }

    fn hardened() -> Value {
        json!({
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "c",
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
            }],
        })
    }

    #[test]
    fn the_restricted_rules_catch_each_relaxation() {
        assert_eq!(
            restricted_violations("d", &hardened()),
            Vec::<String>::new()
        );
        let relaxations: &[fn(&mut Value)] = &[
            |p| p["hostNetwork"] = json!(true),
            |p| p["securityContext"]["runAsNonRoot"] = json!(false),
            |p| p["securityContext"]["seccompProfile"]["type"] = json!("Unconfined"),
            |p| p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true),
            |p| p["containers"][0]["securityContext"]["capabilities"]["drop"] = json!([]),
            |p| p["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]),
            |p| p["containers"][0]["securityContext"]["privileged"] = json!(true),
            |p| p["containers"][0]["ports"] = json!([{ "containerPort": 80, "hostPort": 80 }]),
            |p| p["volumes"] = json!([{ "name": "h", "hostPath": { "path": "/" } }]),
            |p| p["containers"][0]["securityContext"]["runAsUser"] = json!(0),
        ];
        for relax in relaxations {
            let mut pod = hardened();
            relax(&mut pod);
            assert_eq!(restricted_violations("d", &pod).len(), 1, "{pod}");
        }
    }

    #[test]
    fn strict_validation_refuses_an_unknown_field() {
        let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\ndata: { a: b }\n";
        assert_eq!(kubernetes_validate(good), Ok(()));
        let typo = good.replace("data:", "dataa:");
        let report = kubernetes_validate(&typo).unwrap_err();
        assert!(report.contains("dataa"), "{report}");
    }

    #[test]
    fn selectors_and_references_must_meet() {
        let d = deployment(json!({ "serviceAccountName": "sa", "containers": [] }));
        let sa = json!({ "kind": "ServiceAccount", "metadata": { "name": "sa" } });
        let svc = |app: &str| json!({ "kind": "Service", "metadata": { "name": "s" }, "spec": { "selector": { "app": app } } });
        assert_eq!(
            consistency_problems(&[d.clone(), sa.clone(), svc("a")], &[]),
            Vec::<String>::new()
        );
        assert_eq!(
            consistency_problems(&[d.clone(), sa.clone(), svc("b")], &[]).len(),
            1
        );
        assert_eq!(
            consistency_problems(&[d.clone(), svc("a")], &[]).len(),
            1,
            "missing ServiceAccount"
        );
        let pdb = json!({ "kind": "PodDisruptionBudget", "metadata": { "name": "p" }, "spec": { "selector": { "matchLabels": { "app": "z" } } } });
        assert_eq!(
            consistency_problems(&[d.clone(), sa.clone(), pdb], &[]).len(),
            1
        );
        // A NetworkPolicy peer by expression: one that selects the pods passes, one that
        // selects none, or uses an operator Kubernetes lacks, is a problem.
        let policy = |operator: &str, value: &str| {
            json!({ "kind": "NetworkPolicy", "metadata": { "name": "n" }, "spec": {
                "podSelector": {},
                "ingress": [{ "from": [{ "podSelector": { "matchExpressions": [
                    { "key": "app", "operator": operator, "values": [value] }
                ] } }] }]
            } })
        };
        let problems = |p: Value| consistency_problems(&[d.clone(), sa.clone(), p], &[]).len();
        assert_eq!(problems(policy("In", "a")), 0);
        assert_eq!(problems(policy("NotIn", "b")), 0);
        assert_eq!(problems(policy("In", "b")), 1);
        assert_eq!(problems(policy("NotIn", "a")), 1);
        assert_eq!(problems(policy("Matches", "a")), 1);
    }
}
