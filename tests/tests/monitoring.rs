//! Monitoring: the alert rules through the real `promtool` (checked, and unit-tested with
//! series that fire and that do not), their runbooks, the Grafana dashboards' JSON and queries,
//! and a running local cluster: its Prometheus scrapes every process, every metric a rule or a
//! dashboard names is exported, and freezing the primary fires the primary-unavailable alert,
//! which the failover resolves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use chat_operator::build::monitoring;
use chatcluster_tests::{TempDir, local::LocalCluster, repo};
use promql_parser::{
    parser::Expr,
    util::{ExprVisitor, walk_expr},
};
use serde_json::Value;

fn dir() -> PathBuf {
    repo().join("charts/chat-operator/monitoring")
}

fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The rule files as Prometheus loads them: the cluster's rendered for shop/chat (what the
/// tests in `cluster-rules.test.yaml` are written for), the operator's as they are.
fn rendered_rules(into: &Path) {
    std::fs::write(
        into.join("cluster-rules.yaml"),
        monitoring::cluster_rules("shop", "chat"),
    )
    .unwrap();
    std::fs::write(into.join("operator-rules.yaml"), monitoring::OPERATOR_RULES).unwrap();
    for test in ["cluster-rules.test.yaml", "operator-rules.test.yaml"] {
        std::fs::copy(dir().join(test), into.join(test)).unwrap();
    }
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every alerting rule of a rule file: (name, rule).
fn alerts(rules: &Value) -> Vec<(String, Value)> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r))
        .collect()
}

fn all_alerts() -> Vec<(String, Value)> {
    let cluster: Value = serde_yaml::from_str(&monitoring::cluster_rules("shop", "chat")).unwrap();
    let operator: Value = serde_yaml::from_str(monitoring::OPERATOR_RULES).unwrap();
    let mut out = alerts(&cluster);
    out.extend(alerts(&operator));
    out
}

#[test]
fn promtool_checks_every_rule_and_its_unit_tests_pass() {
    let tmp = TempDir::new("rules");
    rendered_rules(tmp.path());
    let checked = promtool(
        &[
            "check",
            "rules",
            "cluster-rules.yaml",
            "operator-rules.yaml",
        ],
        tmp.path(),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    for test in ["cluster-rules.test.yaml", "operator-rules.test.yaml"] {
        promtool(&["test", "rules", test], tmp.path());
    }
    // As written, the cluster's file is a template, not a rule file: nothing loads it unrendered.
    std::fs::copy(
        dir().join("cluster-rules.yaml"),
        tmp.path().join("template.yaml"),
    )
    .unwrap();
    let raw = Command::new("promtool")
        .args(["check", "rules", "template.yaml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!raw.status.success());
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&raw.stdout),
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(report.contains("parse error"), "{report}");
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in ["cluster-rules.test.yaml", "operator-rules.test.yaml"] {
        let doc = yaml(&dir().join(test));
        for case in doc["tests"].as_array().unwrap() {
            for eval in case["alert_rule_test"].as_array().unwrap() {
                let name = eval["alertname"].as_str().unwrap().to_string();
                if eval["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    fired.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    for (name, _) in all_alerts() {
        assert!(fired.contains(&name), "no promtool test fires {name}");
        assert!(quiet.contains(&name), "no promtool test keeps {name} quiet");
    }
}

#[test]
fn every_alert_has_a_runbook_section_and_a_table_row() {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    let sections: BTreeSet<&str> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let names: BTreeSet<String> = all_alerts().into_iter().map(|(n, _)| n).collect();
    for (name, rule) in all_alerts() {
        assert!(
            sections.contains(name.as_str()),
            "docs/runbooks.md has no section {name}"
        );
        assert!(
            runbooks.contains(&format!("| {name} |")),
            "docs/runbooks.md's table lacks {name}"
        );
        assert_eq!(
            rule["annotations"]["runbook_url"],
            format!("docs/runbooks.md#{}", name.to_lowercase()),
            "{name}'s runbook_url"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} has no {key}"
            );
        }
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}'s severity"
        );
    }
    // No runbook for an alert that no longer exists.
    for section in sections {
        assert!(names.contains(section), "a runbook for no alert: {section}");
    }
}

/// A Grafana dashboard's queries, with its variables given values.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", "shop")
                .replace("$cluster", "chat")
        })
        .collect()
}

fn dashboards() -> BTreeMap<String, Value> {
    std::fs::read_dir(dir().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

#[test]
fn the_dashboards_are_grafana_json_whose_queries_prometheus_accepts() {
    let all = dashboards();
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "chatcluster-autoscaling.json",
            "chatcluster-chat.json",
            "chatcluster-database.json",
            "chatcluster-edge.json"
        ]
    );
    let mut uids = BTreeSet::new();
    let mut recording = Vec::new();
    for (file, d) in &all {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: uid"
        );
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("ChatCluster / "))
        );
        let variables: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(variables, ["datasource", "namespace", "cluster"], "{file}");
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{file}: panel ids");
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}");
            for k in ["h", "w", "x", "y"] {
                assert!(p["gridPos"][k].is_u64(), "{file}: gridPos.{k}");
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    expr.contains(r#"namespace="$namespace",cluster="$cluster""#),
                    "{file}: {expr} is not narrowed to the chosen cluster"
                );
            }
        }
        for (i, q) in dashboard_queries(d).into_iter().enumerate() {
            recording.push(serde_json::json!({
                "record": format!("dashboard:{}:{i}", file.trim_end_matches(".json").replace('-', "_")),
                "expr": q,
            }));
        }
    }
    // Prometheus's own parser on every query: as recording rules, promtool checks them.
    let tmp = TempDir::new("dashboards");
    let rules = serde_json::json!({ "groups": [{ "name": "dashboards", "rules": recording }] });
    std::fs::write(tmp.path().join("queries.yaml"), rules.to_string()).unwrap();
    promtool(&["check", "rules", "queries.yaml"], tmp.path());
}

/// Metric names an expression selects.
fn selected(expr: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            match e {
                Expr::VectorSelector(v) => self.0.extend(v.name.clone()),
                Expr::MatrixSelector(m) => self.0.extend(m.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).unwrap();
    names.0
}

/// Every metric name in the text exposition `text`: each family its `# TYPE` line declares
/// (with the series names its type implies) and each sample's.
fn exported(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            into.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            into.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line
                .split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            into.insert(name.to_string());
        }
    }
}

async fn prometheus_api(port: u16, path: &str) -> Value {
    let body =
        chat_operator::http::fetch(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
    serde_json::from_str(&body).unwrap()
}

fn prometheus_port(cluster: &LocalCluster) -> u16 {
    cluster
        .plan
        .monitor
        .as_ref()
        .expect("the plan runs Prometheus (scripts/setup.sh installs it)")
        .launch
        .port
}

/// What every target in `targets` exports now, added to `names`.
async fn scrape_all(targets: &[Value], names: &mut BTreeSet<String>) {
    for t in targets {
        let url = t["scrapeUrl"].as_str().unwrap();
        let rest = url.strip_prefix("http://").unwrap();
        let (address, path) = rest.split_at(rest.find('/').unwrap());
        let text = chat_operator::http::fetch(address, path, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        exported(&text, names);
    }
}

/// The operator's alerts need a Kubernetes operator (local mode reconciles nothing): its own
/// metrics, as it encodes them, export every name they select.
#[test]
fn the_operators_metrics_export_every_name_its_alerts_select() {
    let metrics = chat_operator::metrics::Metrics::default();
    metrics.observe_reconcile(Duration::from_millis(5), Some("apply"));
    metrics.set_leader(true);
    let mut names = BTreeSet::new();
    exported(&metrics.encode().unwrap(), &mut names);
    let operator: Value = serde_yaml::from_str(monitoring::OPERATOR_RULES).unwrap();
    for (alert, rule) in alerts(&operator) {
        for name in selected(rule["expr"].as_str().unwrap()) {
            assert!(
                names.contains(&name),
                "{alert} selects {name}, not exported"
            );
        }
    }
}

/// One local cluster for both: its failover waits 60 s, so the primary-unavailable alert
/// (30 s) fires before the failover resolves it; groups is autoscaled, so the autoscaler's
/// series exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_clusters_prometheus_sees_every_metric_and_the_primary_frozen() {
    let cluster = LocalCluster::start_edited(
        "examples/laptop.yaml",
        |c| {
            c.spec.database.failover.timeout_seconds = 60;
            c.spec.services.groups.replicas = None;
            c.spec.services.groups.autoscaling = Some(
                serde_json::from_value(serde_json::json!({ "minReplicas": 1, "maxReplicas": 2 }))
                    .unwrap(),
            );
        },
        &[],
    );
    let port = prometheus_port(&cluster);
    let status = cluster.status();
    assert_eq!(
        status["prometheus"],
        format!("http://127.0.0.1:{port}"),
        "{status:#}"
    );

    // Every process is a target, and up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let targets = loop {
        let t = prometheus_api(port, "/api/v1/targets").await;
        let active = t["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = active.iter().filter(|a| a["health"] == "up").count();
        // auth, groups, dms, servers, gateway, chat-xds, Envoy and the runner.
        if active.len() == 8 && up == 8 {
            break active;
        }
        assert!(Instant::now() < deadline, "targets not all up: {t:#}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let components: BTreeSet<&str> = targets
        .iter()
        .filter_map(|t| t["labels"]["component"].as_str())
        .collect();
    assert_eq!(
        components,
        BTreeSet::from([
            "auth", "dms", "gateway", "groups", "ingress", "servers", "xds"
        ])
    );
    assert!(
        targets
            .iter()
            .all(|t| t["labels"]["cluster"] == "laptop" || t["labels"]["job"] == "chat-operator")
    );

    // What the processes export, healthy; more once the primary is lost (findings) and
    // after the failover (the promotion's time): checked at the end.
    let mut names = BTreeSet::new();
    scrape_all(&targets, &mut names).await;

    // Nothing fires on a healthy cluster.
    let quiet = prometheus_api(port, "/api/v1/alerts").await;
    assert!(
        quiet["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] != "firing"),
        "{quiet:#}"
    );
    // A failover is safe (and so not held) once semi-sync waits for the replica.
    cluster.wait_for(
        "semi-sync waiting for the replica",
        Duration::from_secs(30),
        |s| s["database"]["semiSync"]["waiting"].as_u64() >= Some(1),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Frozen, the primary is lost to the loop within a tick and a statement timeout; the
    // alert fires once that has lasted its 30 s, seen within a scrape and an evaluation.
    let primary = status["database"]["primary"].as_str().unwrap().to_string();
    cluster.signal(&primary, "STOP");
    let frozen = Instant::now();
    let firing = |alerts: &Value| {
        alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "ChatClusterPrimaryUnavailable"
                    && a["state"] == "firing"
            })
    };
    let lost = loop {
        if cluster.status()["database"]["primaryReady"] == false {
            scrape_all(&targets, &mut names).await;
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "the loop never saw the primary lost"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fired = loop {
        if firing(&prometheus_api(port, "/api/v1/alerts").await) {
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(58),
            "ChatClusterPrimaryUnavailable did not fire before the failover; status {:#}",
            cluster.status()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let slack = fired.saturating_sub(lost);
    // The rule's `for`, a scrape and an evaluation (each every 5 s), the runner's 1 s tick
    // publishing the loss, this loop's 0.5 s poll, and 2 s for a loaded machine.
    let bound = Duration::from_secs(30)
        + 2 * chat_operator::local::monitor::INTERVAL
        + Duration::from_millis(3_500);
    eprintln!("primary lost to the loop after {lost:?}, alert firing {slack:?} later");
    assert!(
        slack <= bound,
        "fired {slack:?} after the loop lost the primary (at most {bound:?})"
    );
    // The runner's table shows it.
    cluster.wait_for(
        "the status to list the alert",
        Duration::from_secs(10),
        |s| {
            s["alerts"].as_array().into_iter().flatten().any(|a| {
                a["name"] == "ChatClusterPrimaryUnavailable" && a["severity"] == "critical"
            })
        },
    );

    // The failover resolves it, and says it happened.
    cluster.wait_for("the failover", Duration::from_secs(60), |s| {
        s["database"]["primary"] != primary.as_str() && s["database"]["primaryReady"] == true
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prometheus_api(port, "/api/v1/alerts").await;
        let happened = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "ChatClusterFailoverHappened" && a["state"] == "firing"
            });
        if !firing(&alerts) && happened {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not resolved after the failover: {alerts:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.signal(&primary, "CONT");

    // A frozen Prometheus is said to be down, and holds up nothing else the runner reports.
    cluster.signal("prometheus", "STOP");
    cluster.wait_for(
        "the status to say Prometheus is down",
        Duration::from_secs(20),
        |s| s["prometheusDown"].is_string() && s["database"]["primaryReady"] == true,
    );
    cluster.signal("prometheus", "CONT");
    cluster.wait_for("Prometheus to answer again", Duration::from_secs(20), |s| {
        s["prometheusDown"].is_null()
    });

    // Every name the cluster's rules and the dashboards select was exported by some process.
    scrape_all(&targets, &mut names).await;
    let cluster_rules: Value =
        serde_yaml::from_str(&monitoring::cluster_rules("local", "laptop")).unwrap();
    let mut wanted = BTreeSet::new();
    for (_, rule) in alerts(&cluster_rules) {
        wanted.extend(selected(rule["expr"].as_str().unwrap()));
    }
    for d in dashboards().values() {
        for q in dashboard_queries(d) {
            wanted.extend(selected(&q));
        }
    }
    let unknown: Vec<&String> = wanted.iter().filter(|n| !names.contains(*n)).collect();
    assert!(unknown.is_empty(), "named but not exported: {unknown:?}");
}
