//! `chat-operator render` checked from outside: what it prints for every example and for
//! hundreds of generated specs passes strict validation against Kubernetes 1.37's published
//! schemas, the PodSecurity "restricted" rules, a policy scanner (checkov) with an explicit
//! list of accepted findings, and agrees with itself (selectors meet pods, references meet
//! objects). The README's "what it creates" table is what `render --summary` prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command};

use chat_operator::{api::ChatCluster, render};
use chatcluster_tests::{
    TempDir,
    local::bin_dir,
    objects::{
        consistency_problems, documents, kubernetes_validate, pod_template, restricted_violations,
    },
    repo,
};
use proptest::{
    prelude::*,
    strategy::{Strategy, ValueTree},
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};

/// `chat-operator render` (the real binary) of a file; its standard output.
fn render_file(file: &Path, extra: &[&str]) -> String {
    let out = Command::new(bin_dir().join("chat-operator"))
        .arg("render")
        .arg("-f")
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn examples() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// Secrets that exist without being in the printed objects: the one the user names for TLS,
/// and the ones the operator generates in the cluster (printed commented out).
fn external(resource: &ChatCluster) -> Vec<(&'static str, String)> {
    let generated = render::render(resource, Some("chat"), None)
        .unwrap()
        .into_iter()
        .filter(render::is_placeholder)
        .filter_map(|o| o.metadata.name);
    resource
        .spec
        .ingress
        .tls
        .iter()
        .map(|t| t.secret_name.clone())
        .chain(generated)
        .map(|name| ("Secret", name))
        .collect()
}

/// The restricted-profile and consistency problems of one cluster's objects.
fn problems(resource: &ChatCluster, objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        if let Some(template) = pod_template(o) {
            let what = format!("{} {}", o["kind"], o["metadata"]["name"]);
            out.extend(restricted_violations(&what, &template["spec"]));
        }
    }
    let external = external(resource);
    let external: Vec<(&str, &str)> = external.iter().map(|(k, n)| (*k, n.as_str())).collect();
    out.extend(consistency_problems(objects, &external));
    out
}

#[test]
fn every_example_renders_objects_that_pass_strict_validation_and_restricted_pods() {
    for file in examples() {
        let yaml = render_file(&file, &["--namespace", "chat"]);
        kubernetes_validate(&yaml).unwrap_or_else(|e| panic!("{}:\n{e}", file.display()));
        let resource: ChatCluster =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let objects = documents(&yaml);
        assert!(
            objects.len() > 20,
            "{}: {} objects",
            file.display(),
            objects.len()
        );
        assert_eq!(
            problems(&resource, &objects),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
    }
}

#[test]
fn an_invalid_file_is_refused_naming_the_field() {
    let dir = TempDir::new("render-invalid");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: chatcluster.io/v1alpha1\nkind: ChatCluster\nmetadata: { name: bad }\n\
         spec: { services: { dms: { autoscaling: { minReplicas: 4, maxReplicas: 2 } } } }\n",
    )
    .unwrap();
    let out = Command::new(bin_dir().join("chat-operator"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.services.dms.autoscaling"), "{err}");
    assert!(out.stdout.is_empty(), "nothing printed for an invalid file");
}

/// One chat service: fixed replicas or autoscaling, any policy, optional header, resources
/// and image.
fn service() -> impl Strategy<Value = Value> {
    let scaling = prop_oneof![
        (0..5i32).prop_map(|n| json!({ "replicas": n })),
        (
            1..4i32,
            0..6i32,
            proptest::option::of(1..2000i32),
            proptest::option::of(1..100i32),
            0..3600i32
        )
            .prop_map(|(min, extra, rps, cpu, window)| {
                let mut a = json!({ "minReplicas": min, "maxReplicas": min + extra,
                                    "scaleDownStabilizationSeconds": window });
                if let Some(rps) = rps {
                    a["targetRequestsPerSecond"] = json!(rps);
                }
                if let Some(cpu) = cpu {
                    a["targetCpuUtilization"] = json!(cpu);
                }
                json!({ "autoscaling": a })
            }),
        Just(json!({})),
    ];
    let policy = prop_oneof![
        Just("leastRequest"),
        Just("roundRobin"),
        Just("ringHash"),
        Just("maglev")
    ];
    (
        scaling,
        policy,
        proptest::option::of("x-[a-z]{1,12}"),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut s, policy, header, resources, image)| {
            s["loadBalancing"] = json!(policy);
            if let Some(h) = header {
                s["hashHeader"] = json!(h);
            }
            if resources {
                s["resources"] = json!({ "requests": { "cpu": "100m", "memory": "64Mi" },
                                         "limits": { "memory": "256Mi" } });
            }
            if image {
                s["image"] = json!("registry.example/chatd:1.2.3");
            }
            s
        })
}

/// A whole spec: every optional section present or not.
fn spec() -> impl Strategy<Value = Value> {
    let database = (
        prop_oneof![Just("mysql"), Just("mariadb")],
        0..16i32,
        prop_oneof![Just("1Gi"), Just("10Gi"), Just("500Mi"), Just("2T")],
        proptest::option::of("[a-z]{3,10}"),
        any::<bool>(),
        any::<bool>(),
        1..3600i32,
        any::<bool>(),
    )
        .prop_map(
            |(engine, replicas, size, class, semi, failover, timeout, image)| {
                let mut d = json!({
                    "engine": engine, "replicas": replicas, "semiSync": semi,
                    "storage": { "size": size },
                    "failover": { "enabled": failover, "timeoutSeconds": timeout },
                });
                if let Some(class) = class {
                    d["storage"]["storageClassName"] = json!(class);
                }
                if image {
                    d["image"] = json!("registry.example/db:1");
                }
                d
            },
        );
    let ingress = (
        1..5i32,
        prop_oneof![Just("LoadBalancer"), Just("NodePort"), Just("ClusterIP")],
        1..65535i32,
        any::<bool>(),
        proptest::option::of("[a-z]{1,10}-tls"),
        any::<bool>(),
    )
        .prop_map(|(replicas, kind, port, annotated, tls, web)| {
            let mut i = json!({
                "replicas": replicas, "grpcWeb": web,
                "service": { "type": kind, "port": port },
            });
            if annotated {
                i["service"]["annotations"] =
                    json!({ "service.beta.kubernetes.io/aws-load-balancer-type": "nlb" });
            }
            if let Some(name) = tls {
                i["tls"] = json!({ "secretName": name });
            }
            i
        });
    (
        proptest::option::of(service()),
        proptest::option::of(service()),
        proptest::option::of(service()),
        proptest::option::of(service()),
        proptest::option::of(database),
        proptest::option::of(ingress),
        proptest::option::of(1..4i32),
    )
        .prop_map(|(auth, groups, dms, servers, database, ingress, xds)| {
            let mut spec = json!({});
            for (name, s) in [
                ("auth", auth),
                ("groups", groups),
                ("dms", dms),
                ("servers", servers),
            ] {
                if let Some(s) = s {
                    spec["services"][name] = s;
                }
            }
            if let Some(d) = database {
                spec["database"] = d;
            }
            if let Some(i) = ingress {
                spec["ingress"] = i;
            }
            if let Some(n) = xds {
                spec["xds"] = json!({ "replicas": n });
            }
            spec
        })
}

/// Hundreds of generated specs, each rendered and checked (restricted pods, consistency),
/// then their objects validated strictly in one run of kubernetes-validate. Each cluster is
/// named after its case, so a failing object names the spec that made it. Schema validation
/// costs about 12 ms an object, so an object that only differs from one already validated by
/// its cluster's name is validated once.
#[test]
fn generated_specs_render_valid_consistent_restricted_objects() {
    const CASES: usize = 300;
    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let strategy = spec();
    let mut yaml = String::new();
    let mut seen = std::collections::HashSet::new();
    let mut specs = Vec::new();
    let mut rendered = 0;
    for case in 0..CASES {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        let name = format!("gen-{case}");
        let resource: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "chatcluster.io/v1alpha1",
            "kind": "ChatCluster",
            "metadata": { "name": name },
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("case {case}: {e}: {spec}"));
        let objects = render::render(&resource, Some("chat"), None)
            .unwrap_or_else(|e| panic!("case {case} does not render: {e}: {spec}"));
        // Every object, the generated Secrets too (the YAML prints those as comments).
        let values: Vec<Value> = objects
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        let printed = documents(&render::to_yaml(&objects).unwrap());
        let placeholders = objects.iter().filter(|o| render::is_placeholder(o)).count();
        assert_eq!(printed.len(), values.len() - placeholders);
        assert_eq!(
            problems(&resource, &values),
            Vec::<String>::new(),
            "case {case}: {spec}"
        );
        rendered += values.len();
        for value in values {
            let key = value.to_string().replace(&name, "gen");
            if seen.insert(key) {
                yaml.push_str("---\n");
                yaml.push_str(&serde_yaml::to_string(&value).unwrap());
            }
        }
        specs.push(spec);
    }
    assert!(rendered > 20 * CASES, "{rendered} objects");
    if let Err(report) = kubernetes_validate(&yaml) {
        let named: Vec<String> = (0..CASES)
            .filter(|case| report.contains(&format!("gen-{case}")))
            .map(|case| format!("gen-{case}: {}", specs[case]))
            .collect();
        panic!("{report}\nspecs:\n{}", named.join("\n"));
    }
    eprintln!(
        "{rendered} objects rendered, {} distinct validated",
        seen.len()
    );
}

/// checkov's Kubernetes checks over every example's objects. Each accepted failure is listed
/// with the reason; anything else fails the test, and so does an accepted check that no
/// longer fails (the list must not go stale).
#[test]
fn the_policy_scan_finds_only_accepted_findings() {
    let accepted: &[(&str, &str)] = &[
        // Requests are set everywhere; CPU limits throttle a latency-bound server even when
        // the node has idle cores, so none is set (memory limits are).
        ("CKV_K8S_11", "CPU limits should be set"),
        // Images are pinned by version tag (the operator's own images carry its version);
        // `image` fields take a digest for whoever wants one.
        ("CKV_K8S_43", "Image should use digest"),
        // With pinned tags, IfNotPresent: a restarted pod (say, a new primary after a
        // failover) must not wait for, or depend on, a registry.
        ("CKV_K8S_15", "Image Pull Policy should be Always"),
        // The upstream MySQL and MariaDB entrypoints write into the image's filesystem on
        // first start; every other container has a read-only root.
        (
            "CKV_K8S_22",
            "Use read-only filesystem for containers where possible",
        ),
        // The upstream images' own users (mysql 999, envoy 101) own their files in the
        // images; chatd and chat-xds run as 65532.
        (
            "CKV_K8S_40",
            "Containers should run as a high UID to avoid host conflict",
        ),
        // chatd's database password and the database entrypoint's passwords arrive as
        // secretKeyRef environment variables; moving them to files goes with the internal
        // plane's certificates (issue 16).
        (
            "CKV_K8S_35",
            "Prefer using secrets as files over secrets as environment variables",
        ),
        // chat-xds watches EndpointSlices and reads the TLS Secret through the API: it needs
        // its token (every other pod has none mounted).
        (
            "CKV_K8S_38",
            "Ensure that Service Account Tokens are only mounted where necessary",
        ),
    ];
    // Accepted on some objects only: (check, name, what the resource name contains).
    let accepted_on: &[(&str, &str, &str)] = &[
        // The MariaDB pods' re-seed donor agent has a liveness probe and no readiness probe:
        // it must never take the database out of its Services.
        (
            "CKV_K8S_9",
            "Readiness Probe Should be Configured",
            "StatefulSet.chat.",
        ),
        // The database pods' certificate reloader has no liveness probe: it holds no port
        // and no state, a crash restarts it, and each look it takes is bounded by a timeout,
        // so nothing in it can hang for a probe to find. The builder tests check that every
        // other container of those pods has one.
        (
            "CKV_K8S_8",
            "Liveness Probe Should be Configured",
            "StatefulSet.chat.",
        ),
    ];
    let checkov = repo().join(".tools/checkov/bin/checkov");
    assert!(
        checkov.is_file(),
        "checkov not found at {}: run scripts/setup.sh",
        checkov.display()
    );
    let dir = TempDir::new("checkov");
    for file in examples() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            dir.path().join(&name),
            render_file(&file, &["--namespace", "chat"]),
        )
        .unwrap();
    }
    let out = Command::new(&checkov)
        .args([
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "--output",
            "json",
            "-d",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed = report["results"]["failed_checks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut unexpected = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in &failed {
        let check = f["check_id"].as_str().unwrap_or("");
        seen.insert(check.to_string());
        let resource = f["resource"].as_str().unwrap_or("");
        let narrowly = accepted_on
            .iter()
            .any(|(id, _, on)| *id == check && resource.contains(on));
        if !narrowly && !accepted.iter().any(|(id, _)| *id == check) {
            unexpected.push(format!(
                "{check} {} on {} in {}",
                f["check_name"], f["resource"], f["file_path"]
            ));
        }
    }
    assert_eq!(
        unexpected,
        Vec::<String>::new(),
        "checkov findings not accepted"
    );
    for (id, why) in accepted
        .iter()
        .map(|(id, why)| (*id, *why))
        .chain(accepted_on.iter().map(|(id, why, _)| (*id, *why)))
    {
        assert!(
            seen.contains(id),
            "{id} is accepted ({why}) but no longer fails: remove it"
        );
    }
}

#[test]
fn the_readme_lists_what_render_creates() {
    let table = render_file(&repo().join("examples/minimal.yaml"), &["--summary"]);
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let begin = "<!-- render --summary -f examples/minimal.yaml -->\n";
    let start = readme.find(begin).expect("the README's render marker") + begin.len();
    let end = start
        + readme[start..]
            .find("<!-- end -->")
            .expect("the end marker");
    assert_eq!(
        &readme[start..end],
        table,
        "README is stale: paste `chat-operator render -f examples/minimal.yaml --summary`"
    );
}

/// The Job that re-seeds a MariaDB replica is not among the applied objects (the topology loop
/// creates it when a replica needs a copy), so it is checked here: strict schemas, the
/// restricted profile, and references that meet the rendered cluster — its Secret, the
/// replica's volume claim and pod, the binary's image.
#[test]
fn the_reseed_job_is_valid_restricted_and_meets_the_replica_it_fetches_for() {
    use chat_operator::{
        api::defaults,
        build::{ClusterRef, seed},
        reconcile::topology::members,
    };
    let file = repo().join("examples/laptop.yaml");
    let mut resource: ChatCluster =
        serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let objects = documents(&render_file(&file, &["--namespace", "chat"]));
    resource.metadata.namespace = Some("chat".into());
    resource.metadata.uid = Some(render::PLACEHOLDER_UID.into());
    let c = ClusterRef::new(&resource).unwrap();
    let servers = members(&c, &resource.spec.database);
    let (donor, replica) = (&servers[0], &servers[1]);
    let job = seed::job(
        &c,
        &resource.spec.database,
        &defaults::operator_image(),
        &replica.name,
        &donor.host,
        "c1",
    );
    let yaml = serde_yaml::to_string(&job).unwrap();
    kubernetes_validate(&yaml).unwrap();
    let job = documents(&yaml).remove(0);
    let mut all = objects.clone();
    all.push(job.clone());
    assert_eq!(problems(&resource, &all), Vec::<String>::new());

    // It lands on the replica's node, with the replica's volume.
    let pod = &job["spec"]["template"]["spec"];
    let term = &pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"]["statefulset.kubernetes.io/pod-name"],
        replica.name.as_str()
    );
    let set = objects
        .iter()
        .find(|o| {
            o["kind"] == "StatefulSet"
                && replica
                    .name
                    .starts_with(o["metadata"]["name"].as_str().unwrap())
        })
        .unwrap();
    let claim = set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .unwrap();
    assert_eq!(
        volume,
        format!("{claim}-{}", replica.name),
        "StatefulSet claim naming"
    );
    // The donor it fetches from is the agent every MariaDB pod runs, on the port it listens on.
    let fetch = &pod["containers"][0]["command"];
    let from = fetch
        .as_array()
        .unwrap()
        .iter()
        .skip_while(|a| *a != "--from")
        .nth(1)
        .unwrap();
    let agent = set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "seed-donor")
        .unwrap();
    let port = agent["ports"][0]["containerPort"].as_i64().unwrap();
    assert_eq!(from.as_str().unwrap(), format!("{}:{port}", donor.host));
    assert_eq!(
        job["spec"]["backoffLimit"], 0,
        "the loop retries, with backoff"
    );
}
