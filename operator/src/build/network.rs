//! The cluster's firewall: NetworkPolicies that drop every connection to the cluster's pods
//! but the ones its components make to each other, clients make to Envoy, and scrapers make to
//! the metrics ports.
//!
//! Only arriving traffic is filtered. Limiting what leaves would have to name the API server
//! (chat-xds watches EndpointSlices and Secrets) and the DNS servers by address, which differ
//! per cluster; what arrives can be named by pod labels alone.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};

use super::{ClusterRef, broker, database, ingress, labels, names, pod, ports, xds};
use crate::{
    api::{ChatClusterSpec, ServiceKind},
    seed::DONOR_PORT,
};

/// Label of the operator's pods, as the chart sets it.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "chat-operator");

/// The label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Pods of `component` of this cluster (in its namespace).
fn component(owner: &ClusterRef, component: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pod::label_selector(owner.selector(component))),
        ..NetworkPolicyPeer::default()
    }
}

/// Pods labelled `key=value`, in `namespace` (`None`: any).
fn labelled(key: &str, value: &str, namespace: Option<&str>) -> NetworkPolicyPeer {
    let namespaces = namespace.map_or_else(LabelSelector::default, |ns| {
        pod::label_selector(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            ns.to_string(),
        )]))
    });
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: Some(pod::label_selector(BTreeMap::from([(
            key.into(),
            value.into(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods, in `namespace` only: a pod elsewhere with the same label gains nothing.
fn operator(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(pod::label_selector(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.into(),
            namespace.into(),
        )]))),
        pod_selector: Some(pod::label_selector(BTreeMap::from([(
            OPERATOR_POD_LABEL.0.into(),
            OPERATOR_POD_LABEL.1.into(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

/// Every chat service's pods.
fn chat_services(owner: &ClusterRef) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                labels::CLUSTER.into(),
                owner.name.clone(),
            )])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: labels::COMPONENT.into(),
                operator: "In".into(),
                values: Some(
                    ServiceKind::ALL
                        .iter()
                        .map(|k| k.as_str().to_string())
                        .collect(),
                ),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// A rule admitting `from` (anyone when `None`) on TCP `ports`.
fn rule(ports: &[i32], from: Option<Vec<NetworkPolicyPeer>>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from,
        ports: Some(
            ports
                .iter()
                .map(|&port| NetworkPolicyPort {
                    port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
    }
}

/// The policy admitting `ingress` to the pods of `component`.
fn allow_to(
    owner: &ClusterRef,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    policy(
        owner,
        names::allow_to(owner, component),
        component,
        pod::label_selector(owner.selector(component)),
        ingress,
    )
}

fn policy(
    owner: &ClusterRef,
    name: String,
    guarded: &str,
    pods: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: owner.meta(name, owner.labels(guarded, "chatcluster")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Every NetworkPolicy of the cluster (none when the spec turns them off). `operator_namespace`
/// is where the operator's pods run: they reach the database (the topology loop) and chat-xds
/// (load reports for the autoscaler).
pub fn policies(
    owner: &ClusterRef,
    spec: &ChatClusterSpec,
    operator_namespace: &str,
) -> Vec<NetworkPolicy> {
    if !spec.network_policy.enabled {
        return Vec::new();
    }
    let (key, value) = spec.network_policy.scraper();
    let scraper = || {
        labelled(
            key,
            value,
            spec.network_policy.metrics_scraper_namespace.as_deref(),
        )
    };
    let scrapers = || Some(vec![scraper()]);
    let envoy = || component(owner, ingress::COMPONENT);
    let whole_cluster = pod::label_selector(BTreeMap::from([(
        labels::CLUSTER.into(),
        owner.name.clone(),
    )]));

    let mut out = vec![allow_to(
        owner,
        ingress::COMPONENT,
        vec![
            rule(&[ports::ENVOY_HTTPS], None),
            rule(&[ports::ENVOY_READY], scrapers()),
        ],
    )];
    for kind in ServiceKind::ALL {
        let kind = kind.as_str();
        out.push(allow_to(
            owner,
            kind,
            vec![
                // Envoy's requests and health checks.
                rule(&[ports::CHATD_GRPC], Some(vec![envoy()])),
                rule(&[ports::METRICS], scrapers()),
            ],
        ));
    }
    out.push(allow_to(
        owner,
        xds::COMPONENT,
        vec![
            rule(&[ports::XDS], Some(vec![envoy()])),
            rule(
                &[ports::METRICS],
                Some(vec![operator(operator_namespace), scraper()]),
            ),
        ],
    ));
    // The chat replicas' delivery hints.
    out.push(allow_to(
        owner,
        broker::COMPONENT,
        vec![rule(&[broker::PORT], Some(vec![chat_services(owner)]))],
    ));
    out.push(allow_to(
        owner,
        database::COMPONENT,
        vec![
            rule(
                &[ports::DATABASE],
                Some(vec![
                    chat_services(owner),
                    // Replication, and the re-seed Jobs' pods, which carry the database's labels.
                    component(owner, database::COMPONENT),
                    operator(operator_namespace),
                ]),
            ),
            rule(
                &[i32::from(DONOR_PORT)],
                Some(vec![component(owner, database::COMPONENT)]),
            ),
        ],
    ));
    // Policies add up: a pod admits what any policy selecting it admits. This one selects
    // every pod, so what no other admits is dropped. It comes last, so that applied in
    // order, nothing already allowed is ever cut.
    out.push(policy(
        owner,
        names::deny_all(owner),
        "network",
        whole_cluster,
        Vec::new(),
    ));
    out
}

#[cfg(test)]
mod tests {
    //! The policies read the way the API server's network plugins read them: a small evaluator
    //! of NetworkPolicy semantics, fed the labels of the pods the builders really make.

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use kube::ResourceExt;

    use super::*;
    use crate::{
        api::{ChatCluster, ValidatedCluster},
        build::{Desired, Observed, desired, seed},
    };

    /// A pod: its namespace and labels.
    #[derive(Clone)]
    struct Pod(&'static str, BTreeMap<String, String>);

    fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let exact = selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let expressions = selector.match_expressions.iter().flatten().all(|e| {
            assert_eq!(e.operator, "In", "the evaluator knows In only");
            let values = e.values.clone().unwrap_or_default();
            labels.get(&e.key).is_some_and(|v| values.contains(v))
        });
        exact && expressions
    }

    fn peer_admits(peer: &NetworkPolicyPeer, policy_namespace: &str, from: &Pod) -> bool {
        assert!(peer.ip_block.is_none(), "the evaluator knows no ipBlock");
        let namespace = match &peer.namespace_selector {
            None => from.0 == policy_namespace,
            Some(s) => matches(
                s,
                &BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), from.0.to_string())]),
            ),
        };
        namespace
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| matches(s, &from.1))
    }

    /// Whether `policies` let `from` open a TCP connection to `to` on `port`.
    fn admits(policies: &[NetworkPolicy], from: &Pod, to: &Pod, port: i32) -> bool {
        let selecting: Vec<_> = policies
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(to.0)
                    && matches(
                        p.spec.as_ref().unwrap().pod_selector.as_ref().unwrap(),
                        &to.1,
                    )
            })
            .collect();
        if selecting.is_empty() {
            return true;
        }
        selecting.iter().any(|p| {
            let namespace = p.metadata.namespace.as_deref().unwrap();
            p.spec
                .as_ref()
                .unwrap()
                .ingress
                .iter()
                .flatten()
                .any(|rule| {
                    let port_ok = rule.ports.as_ref().is_none_or(|ports| {
                        ports.iter().any(|p| p.port == Some(IntOrString::Int(port)))
                    });
                    let from_ok = rule.from.as_ref().is_none_or(|peers| {
                        peers.iter().any(|peer| peer_admits(peer, namespace, from))
                    });
                    port_ok && from_ok
                })
        })
    }

    /// ChatCluster `name` in namespace `chat`, as read from the API.
    fn resource_named(name: &str, spec: ChatClusterSpec) -> ChatCluster {
        let mut resource = ChatCluster::new(name, spec);
        resource.metadata.namespace = Some("chat".into());
        resource.metadata.uid = Some(format!("uid-{name}"));
        resource
    }

    fn built(spec: ChatClusterSpec, name: &str) -> Desired {
        let resource = resource_named(name, spec);
        let validated = ValidatedCluster::of(&resource).unwrap();
        let observed = Observed {
            operator_namespace: Some("operators".into()),
            ..Observed::default()
        };
        desired(&ClusterRef::new(&resource).unwrap(), &validated, &observed).unwrap()
    }

    fn labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
        t.metadata.as_ref().unwrap().labels.clone().unwrap()
    }

    /// The pods of `d`'s workload `name`, in namespace `chat`.
    fn pod(d: &Desired, name: &str) -> Pod {
        let template = d
            .deployments
            .iter()
            .find(|x| x.name_any() == name)
            .map(|x| &x.spec.template)
            .or_else(|| {
                d.stateful_sets
                    .iter()
                    .find(|x| x.name_any() == name)
                    .map(|x| &x.spec.template)
            })
            .unwrap_or_else(|| panic!("no workload {name}"));
        Pod("chat", labels(template))
    }

    fn other(namespace: &'static str, labels: &[(&str, &str)]) -> Pod {
        Pod(
            namespace,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn each_component_admits_exactly_who_talks_to_it() {
        let d = built(ChatClusterSpec::default(), "demo");
        let p = &d.network_policies;
        let envoy = pod(&d, "demo-envoy");
        let groups = pod(&d, "demo-groups");
        let auth = pod(&d, "demo-auth");
        let xds = pod(&d, "demo-xds");
        let primary = pod(&d, "demo-db-primary");
        let replica = pod(&d, "demo-db-replica");
        let spec = ChatClusterSpec::default();
        let owner = ClusterRef::new(&resource_named("demo", spec.clone())).unwrap();
        let reseed = Pod(
            "chat",
            labels(
                &seed::job(
                    &owner,
                    &spec.database,
                    "img",
                    "demo-db-replica-0",
                    "host",
                    "id",
                )
                .spec
                .unwrap()
                .template,
            ),
        );
        let stranger = other("chat", &[("app", "debug")]);
        let elsewhere = other("tenant", &[("app", "debug")]);
        let prometheus = other("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
        let the_operator = other("operators", &[OPERATOR_POD_LABEL]);
        let an_impostor = other("tenant", &[OPERATOR_POD_LABEL]);
        let next_door = built(ChatClusterSpec::default(), "next");
        let their_groups = pod(&next_door, "next-groups");

        // Clients reach Envoy's listener, and nothing else.
        for client in [&stranger, &elsewhere] {
            assert!(admits(p, client, &envoy, ports::ENVOY_HTTPS));
            assert!(!admits(p, client, &envoy, ports::ENVOY_READY));
            assert!(!admits(p, client, &envoy, ports::ENVOY_ADMIN));
            assert!(!admits(p, client, &groups, ports::CHATD_GRPC));
            assert!(!admits(p, client, &xds, ports::XDS));
            assert!(!admits(p, client, &primary, ports::DATABASE));
        }
        // Envoy reaches the services and chat-xds; not the database.
        assert!(admits(p, &envoy, &groups, ports::CHATD_GRPC));
        assert!(admits(p, &envoy, &auth, ports::CHATD_GRPC));
        assert!(admits(p, &envoy, &xds, ports::XDS));
        assert!(!admits(p, &envoy, &primary, ports::DATABASE));
        // Services take calls from Envoy only; they exchange hints through the broker, which
        // takes no one else.
        assert!(!admits(p, &groups, &groups, ports::CHATD_GRPC));
        assert!(!admits(p, &auth, &groups, ports::CHATD_GRPC));
        assert!(!admits(p, &groups, &xds, ports::XDS));
        let broker = pod(&d, "demo-broker");
        assert!(admits(p, &groups, &broker, super::broker::PORT));
        assert!(admits(p, &auth, &broker, super::broker::PORT));
        for outsider in [&envoy, &stranger, &their_groups, &prometheus] {
            assert!(!admits(p, outsider, &broker, super::broker::PORT));
        }
        // Services and the operator reach the database; replicas replicate and re-seed.
        assert!(admits(p, &groups, &primary, ports::DATABASE));
        assert!(admits(p, &auth, &replica, ports::DATABASE));
        assert!(admits(p, &the_operator, &primary, ports::DATABASE));
        assert!(admits(p, &replica, &primary, ports::DATABASE));
        assert!(admits(p, &reseed, &primary, i32::from(DONOR_PORT)));
        assert!(!admits(p, &groups, &primary, i32::from(DONOR_PORT)));
        // The operator's label outside its namespace is worth nothing; another cluster's
        // services are strangers.
        assert!(!admits(p, &an_impostor, &primary, ports::DATABASE));
        assert!(!admits(p, &an_impostor, &xds, ports::METRICS));
        assert!(!admits(p, &their_groups, &primary, ports::DATABASE));
        assert!(!admits(p, &their_groups, &groups, ports::CHATD_GRPC));
        // The operator reads chat-xds's load; scrapers read every metrics port, only those.
        assert!(admits(p, &the_operator, &xds, ports::METRICS));
        for target in [&groups, &xds] {
            assert!(admits(p, &prometheus, target, ports::METRICS));
            assert!(!admits(p, &stranger, target, ports::METRICS));
        }
        assert!(admits(p, &prometheus, &envoy, ports::ENVOY_READY));
        assert!(!admits(p, &prometheus, &groups, ports::CHATD_GRPC));
        assert!(!admits(p, &prometheus, &primary, ports::DATABASE));
    }

    #[test]
    fn the_scraper_label_is_the_specs_and_the_policies_can_be_turned_off() {
        let mut spec = ChatClusterSpec::default();
        spec.network_policy.metrics_scraper_label = "team/scraper=".into();
        let d = built(spec.clone(), "demo");
        let (p, groups) = (&d.network_policies, pod(&d, "demo-groups"));
        let scraper = other("ops", &[("team/scraper", "")]);
        let prometheus = other("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
        assert!(admits(p, &scraper, &groups, ports::METRICS));
        assert!(!admits(p, &prometheus, &groups, ports::METRICS));

        // Named, the scrapers' namespace is the only one they are admitted from.
        spec.network_policy.metrics_scraper_namespace = Some("ops".into());
        let d = built(spec.clone(), "demo");
        let p = &d.network_policies;
        let impostor = other("tenant", &[("team/scraper", "")]);
        assert!(admits(p, &scraper, &groups, ports::METRICS));
        assert!(!admits(p, &impostor, &groups, ports::METRICS));
        assert!(!admits(p, &impostor, &pod(&d, "demo-xds"), ports::METRICS));

        spec.network_policy.enabled = false;
        let d = built(spec, "demo");
        assert!(d.network_policies.is_empty());
        let stranger = other("chat", &[("app", "debug")]);
        assert!(admits(
            &d.network_policies,
            &stranger,
            &pod(&d, "demo-db-primary"),
            3306
        ));
    }

    #[test]
    fn every_pod_of_the_cluster_is_behind_the_deny_all() {
        let d = built(ChatClusterSpec::default(), "demo");
        let deny = d.network_policies.last().expect("policies");
        assert_eq!(deny.name_any(), "demo-deny-all");
        let spec = deny.spec.as_ref().unwrap();
        assert!(spec.ingress.is_none());
        let workloads = d
            .deployments
            .iter()
            .map(|x| &x.spec.template)
            .chain(d.stateful_sets.iter().map(|x| &x.spec.template));
        for template in workloads {
            assert!(matches(
                spec.pod_selector.as_ref().unwrap(),
                &labels(template)
            ));
        }
    }
}
