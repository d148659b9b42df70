//! Desired state: pure functions from a `ChatCluster` (plus the little the reconciler observed)
//! to the Kubernetes objects that should exist. No client, no clock, no randomness here, so every
//! object can be unit-tested field by field.

pub mod broker;
mod chat;
pub mod database;
mod ingress;
pub mod internal_tls;
pub mod monitoring;
pub mod names;
mod network;
mod pod;
pub mod secrets;
pub mod seed;
mod xds;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
};
use serde::Serialize;

use crate::api::{ChatCluster, ServiceKind, ValidatedCluster};

pub use chat::replicas;
pub use database::DB_NAME;
pub use ingress::{
    COMPONENT as INGRESS_COMPONENT, EnvoyInternalTls, EnvoyPlace, envoy_bootstrap, internal_tls_sds,
};
pub use xds::{COMPONENT as XDS_COMPONENT, RateLimit, XdsConfig, XdsService, config as xds_config};

/// Ports the workloads listen on, shared by builders, probes and Services.
pub mod ports {
    /// chatd gRPC.
    pub const CHATD_GRPC: i32 = 50051;
    /// chatd and chat-xds Prometheus metrics.
    pub const METRICS: i32 = 9090;
    /// MySQL / MariaDB.
    pub const DATABASE: i32 = 3306;
    /// chat-xds ADS (gRPC).
    pub const XDS: i32 = 18000;
    /// Envoy's TLS listener (the Service maps the user's port onto it).
    pub const ENVOY_HTTPS: i32 = 8443;
    /// Envoy's readiness and metrics listener (proxies a safe subset of the admin API).
    pub const ENVOY_READY: i32 = 19001;
    /// Envoy admin, bound to loopback only.
    pub const ENVOY_ADMIN: i32 = 19000;
}

/// Label keys. Selectors use only the `chatcluster.io/` ones, so no other app can collide.
pub mod labels {
    /// The ChatCluster an object belongs to.
    pub const CLUSTER: &str = "chatcluster.io/cluster";
    /// The part of the cluster: a service name, `database`, `ingress` or `xds`.
    pub const COMPONENT: &str = "chatcluster.io/component";
    /// Which database StatefulSet a pod belongs to (`primary` or `replica`); fixed per pod.
    pub const DB_SET: &str = "chatcluster.io/db-set";
    /// The database role a pod has now (`primary`, `replica`, or why it serves neither:
    /// `errant`, `broken`, `seeding`, `unreachable`); set by the topology loop, moved by failover.
    pub const DB_ROLE: &str = "chatcluster.io/db-role";
    /// Who manages an object; the operator watches only its own children.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The operator's name in `app.kubernetes.io/managed-by`.
    pub const MANAGER: &str = "chat-operator";
}

/// Annotation on pod templates carrying the hash of the configuration the pods read, so a
/// configuration change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "chatcluster.io/config-hash";

/// Errors that stop a build: the object lacks what every child needs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The ChatCluster has no namespace, name or uid (it was not read from the API).
    #[error("ChatCluster lacks metadata.{0}")]
    MissingMetadata(&'static str),
    /// An object could not be turned into its generic form.
    #[error("cannot serialize {kind} {name}: {source}")]
    Serialize {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A configuration file could not be encoded.
    #[error("cannot encode the {what}: {message}")]
    Encode {
        /// Which file.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// What the builders need to know beyond the spec: state only the cluster holds.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Current replicas of each autoscaled service's Deployment; the autoscaler owns that
    /// number, so a rebuild keeps it (clamped to the spec's bounds).
    pub current_replicas: BTreeMap<ServiceKind, i32>,
    /// The image the operator runs (MariaDB pods copy the re-seed programs from it);
    /// `None`: this release's default.
    pub operator_image: Option<String>,
    /// The namespace the operator's pods run in, which the NetworkPolicies admit to the
    /// database and chat-xds; `None`: the cluster's own.
    pub operator_namespace: Option<String>,
    /// The Secret `ingress.tls.secretName` names failed its check (not a `kubernetes.io/tls`
    /// Secret, or none): chat-xds is granted no Secret.
    pub tls_secret_withheld: bool,
    /// When the broker's internal certificate expires (seconds since the epoch), when internal
    /// TLS is on: it marks the broker's pod, which reads its certificate only at start, so a
    /// renewal rolls it.
    pub broker_certificate: Option<String>,
    /// A fingerprint of the internal CA the certificates are signed by, when internal TLS is
    /// on. It marks the pods that trust it, so a replaced CA (a deleted Secret made again)
    /// rolls them: a process reads its CA once.
    pub internal_ca: Option<String>,
}

/// The identity of a ChatCluster, from which every child's name, labels and owner derive.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    owner: OwnerReference,
}

impl ClusterRef {
    /// The identity of `resource`, which must have been read from the API (namespace, name, uid).
    pub fn new(resource: &ChatCluster) -> Result<Self, BuildError> {
        let namespace = resource
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        if resource.meta().name.is_none() {
            return Err(BuildError::MissingMetadata("name"));
        }
        let owner = resource
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            name: resource.name_any(),
            namespace,
            owner,
        })
    }

    /// Labels that select one component of this cluster.
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::CLUSTER.to_string(), self.name.clone()),
            (labels::COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// [`selector`](Self::selector) as a label-selector query (`k=v,k=v`).
    pub fn selector_query(&self, component: &str) -> String {
        self.selector(component)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every label a child of `component` carries: its selector plus the well-known
    /// `app.kubernetes.io` ones.
    pub fn labels(&self, component: &str, app: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.extend([
            ("app.kubernetes.io/name".to_string(), app.to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_string(),
                component.to_string(),
            ),
            (
                "app.kubernetes.io/part-of".to_string(),
                "chatcluster".into(),
            ),
            (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        ]);
        labels
    }

    /// The ChatCluster's uid: what its children's controller owner reference names.
    pub fn uid(&self) -> &str {
        &self.owner.uid
    }

    /// Whether the object with `meta` is this cluster's: it names the cluster as its
    /// controller. What someone else made (or planted) is never pruned, adopted or rewritten.
    pub fn controls(&self, meta: &ObjectMeta) -> bool {
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == self.owner.uid)
    }

    /// Labels every child carries (its cluster, and the operator as manager): how pruning
    /// lists the children of one cluster.
    pub fn children_query(&self) -> String {
        format!(
            "{}={},{}={}",
            labels::CLUSTER,
            self.name,
            labels::MANAGED_BY,
            labels::MANAGER
        )
    }

    /// Metadata of a child: name, namespace, labels and the controller owner reference, so
    /// deleting the ChatCluster deletes it and a change to it wakes the reconciler.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// DNS name of a Service of this cluster, valid from any namespace.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }
}

/// Every object a ChatCluster should have, except the generated Secrets (see [`secrets`]),
/// which are created once and never re-applied.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Configuration: database server config, Envoy bootstrap, chat-xds config.
    pub config_maps: Vec<ConfigMap>,
    /// chat-xds identity.
    pub service_accounts: Vec<ServiceAccount>,
    /// chat-xds permissions.
    pub roles: Vec<Role>,
    /// chat-xds permissions, bound.
    pub role_bindings: Vec<RoleBinding>,
    /// Services of the chat services, database, chat-xds and Envoy.
    pub services: Vec<Service>,
    /// Database primary and replicas.
    pub stateful_sets: Vec<StatefulSet>,
    /// Chat services, chat-xds and Envoy.
    pub deployments: Vec<Deployment>,
    /// One per Deployment and StatefulSet with more than one pod.
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    /// The firewall: what may reach each component.
    pub network_policies: Vec<NetworkPolicy>,
}

/// Build every desired object of `validated`, the cluster `cluster` identifies.
pub fn desired(
    owner: &ClusterRef,
    validated: &ValidatedCluster,
    observed: &Observed,
) -> Result<Desired, BuildError> {
    let spec = validated.spec();
    let mut out = Desired::default();

    for (kind, svc) in spec.services.iter() {
        let replicas = chat::replicas(svc, observed.current_replicas.get(&kind).copied());
        out.deployments
            .push(chat::deployment(owner, spec, kind, svc, replicas));
        out.services.push(chat::service(owner, kind));
        out.pod_disruption_budgets.push(pod::disruption_budget(
            owner,
            &names::service(owner, kind),
            kind.as_str(),
        ));
    }

    let operator_image = observed
        .operator_image
        .clone()
        .unwrap_or_else(crate::api::defaults::operator_image);
    if spec.database.engine == crate::api::DatabaseEngine::Mariadb {
        out.config_maps.push(seed::approvals_config_map(owner));
    }
    let db_config = database::config_map(owner, &spec.database, spec.internal_tls.enabled);
    let db_hash = pod::config_hash(&db_config);
    out.config_maps.push(db_config);
    for set in [database::Set::Primary, database::Set::Replica] {
        out.stateful_sets.push(database::stateful_set(
            owner,
            &spec.database,
            set,
            &db_hash,
            &operator_image,
            spec.internal_tls.enabled,
        ));
    }
    out.services.extend(database::services(owner));
    out.pod_disruption_budgets.push(pod::disruption_budget(
        owner,
        &names::db_budget(owner),
        database::COMPONENT,
    ));

    let internal_tls = spec.internal_tls.enabled;
    let broker_config = broker::config_map(owner, internal_tls);
    let broker_hash = pod::config_hash(&broker_config);
    out.config_maps.push(broker_config);
    // With internal TLS the pod waits for its certificate's Secret, as every other does.
    let certificate =
        internal_tls.then(|| observed.broker_certificate.as_deref().unwrap_or("pending"));
    out.deployments.push(broker::deployment(
        owner,
        &spec.broker,
        &broker_hash,
        certificate,
    ));
    out.services.push(broker::service(owner));

    let xds_config = xds::config_map(owner, validated)?;
    let xds_hash = pod::config_hash(&xds_config);
    out.config_maps.push(xds_config);
    out.service_accounts.push(xds::service_account(owner));
    out.roles
        .push(xds::role(owner, spec, !observed.tls_secret_withheld));
    out.role_bindings.push(xds::role_binding(owner));
    out.deployments
        .push(xds::deployment(owner, &spec.xds, &xds_hash, internal_tls));
    out.services.push(xds::service(owner));
    out.pod_disruption_budgets.push(pod::disruption_budget(
        owner,
        &names::xds(owner),
        xds::COMPONENT,
    ));

    let bootstrap = ingress::bootstrap_config_map(owner, internal_tls)?;
    let bootstrap_hash = pod::config_hash(&bootstrap);
    out.config_maps.push(bootstrap);
    out.deployments.push(ingress::deployment(
        owner,
        &spec.ingress,
        &bootstrap_hash,
        internal_tls,
    ));
    out.services.push(ingress::service(owner, &spec.ingress));
    out.pod_disruption_budgets.push(pod::disruption_budget(
        owner,
        &names::envoy(owner),
        ingress::COMPONENT,
    ));

    out.network_policies = network::policies(
        owner,
        spec,
        observed
            .operator_namespace
            .as_deref()
            .unwrap_or(&owner.namespace),
    );
    if let Some(ca) = observed.internal_ca.as_deref().filter(|_| internal_tls) {
        for deployment in &mut out.deployments {
            pod::annotate_template(&mut deployment.spec.template, INTERNAL_CA_ANNOTATION, ca);
        }
        // The servers too: a replication connection verifies its source with the CA file
        // as it stood when the connection opened, so a restart moves every server and its
        // replication to the new CA together.
        for set in &mut out.stateful_sets {
            pod::annotate_template(&mut set.spec.template, INTERNAL_CA_ANNOTATION, ca);
        }
    }

    Ok(out)
}

/// Pod-template annotation naming the internal CA the pod trusts ([`Observed::internal_ca`]).
pub const INTERNAL_CA_ANNOTATION: &str = "chatcluster.io/internal-ca";

impl Desired {
    /// Every object in apply order: the NetworkPolicies, then what others reference
    /// (configuration and identities, then Services, then the workloads that use them, then
    /// their budgets).
    /// Destructured without `..`: a kind added to [`Desired`] does not compile until it is
    /// applied here, and listed in [`kinds`](Self::kinds) for pruning.
    pub fn objects(&self) -> Result<Vec<DynamicObject>, BuildError> {
        let Desired {
            config_maps,
            service_accounts,
            roles,
            role_bindings,
            services,
            stateful_sets,
            deployments,
            pod_disruption_budgets,
            network_policies,
        } = self;
        let mut out = Vec::new();
        // The firewall first: no pod of a new cluster ever runs unprotected.
        push_all(&mut out, network_policies)?;
        push_all(&mut out, config_maps)?;
        push_all(&mut out, service_accounts)?;
        push_all(&mut out, roles)?;
        push_all(&mut out, role_bindings)?;
        push_all(&mut out, services)?;
        push_all(&mut out, stateful_sets)?;
        push_all(&mut out, deployments)?;
        push_all(&mut out, pod_disruption_budgets)?;
        Ok(out)
    }

    /// Every kind of object [`objects`](Self::objects) applies: the kinds whose children
    /// that are no longer desired are pruned. (The generated Secrets are not among them: they
    /// are created once and kept, as are the database's volumes.)
    pub fn kinds() -> Vec<ApiResource> {
        // The same destructuring as `objects`: a new field fails to compile here too.
        let Desired {
            config_maps: _,
            service_accounts: _,
            roles: _,
            role_bindings: _,
            services: _,
            stateful_sets: _,
            deployments: _,
            pod_disruption_budgets: _,
            network_policies: _,
        } = Desired::default();
        vec![
            ApiResource::erase::<ConfigMap>(&()),
            ApiResource::erase::<ServiceAccount>(&()),
            ApiResource::erase::<Role>(&()),
            ApiResource::erase::<RoleBinding>(&()),
            ApiResource::erase::<Service>(&()),
            ApiResource::erase::<StatefulSet>(&()),
            ApiResource::erase::<Deployment>(&()),
            ApiResource::erase::<PodDisruptionBudget>(&()),
            ApiResource::erase::<NetworkPolicy>(&()),
        ]
    }
}

fn push_all<K>(out: &mut Vec<DynamicObject>, objects: &[K]) -> Result<(), BuildError>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    for obj in objects {
        out.push(to_dynamic(obj)?);
    }
    Ok(())
}

/// The generic form of a typed object, with `apiVersion` and `kind` filled in.
pub fn to_dynamic<K>(obj: &K) -> Result<DynamicObject, BuildError>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let err = |source| BuildError::Serialize {
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap_or_default(),
        source,
    };
    let mut value = serde_json::to_value(obj).map_err(err)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    serde_json::from_value(value).map_err(err)
}

#[cfg(test)]
mod tests;
