//! The database topology loops of the ChatClusters this operator reconciles: one per cluster,
//! started by the reconciler and kept in step with the spec, running beside it. A loop's status
//! changes wake the reconciler (through the Controller's `reconcile_on`), which publishes them:
//! the pods' role labels (which the `-primary` and `-replicas` Services select), the status,
//! and an event per failover or switchover.

use chatcluster_common::sync::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::seed::PodSeeder;
use crate::Error;
use crate::{
    api::{ChatCluster, DatabaseEngine, DatabaseSpec},
    build::{ClusterRef, database, internal_tls, labels, names, ports, secrets},
    topology::{
        manager::{self, Handle},
        physical::Seeder,
        plan::Policy,
        server::{Credentials, Member, Server},
        status::{Role, TopologyStatus},
    },
};
use chatcluster_types::identity::component;

/// How often a loop looks at its servers when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// Annotation asking for a planned switchover to the named pod.
pub const SWITCHOVER_ANNOTATION: &str = "chatcluster.io/switchover-to";

struct Entry {
    handle: Handle,
    members: Vec<Member>,
    policy: Policy,
    /// The CA the loop verifies the servers with (its credentials).
    ca: Option<String>,
    switchover: Option<String>,
}

/// Every running loop.
pub struct Topologies {
    loops: Mutex<HashMap<ObjectRef<ChatCluster>, Entry>>,
    changed: mpsc::UnboundedSender<ObjectRef<ChatCluster>>,
}

/// The CA the database servers' certificate was issued by, which the loop verifies them
/// with. `None` without internal TLS, or before the certificate is issued (the reconciler
/// issues it before the pods that mount it).
async fn server_ca(
    client: &Client,
    owner: &ClusterRef,
    resource: &ChatCluster,
) -> Result<Option<String>, Error> {
    if !resource.spec.internal_tls.enabled {
        return Ok(None);
    }
    let name = names::internal_tls(owner, component::DATABASE);
    let secret = Api::<Secret>::namespaced(client.clone(), &owner.namespace)
        .get_opt(&name)
        .await
        .map_err(Error::kube("get", "Secret", &name))?;
    Ok(secret
        .as_ref()
        .and_then(internal_tls::issued_of)
        .map(|issued| issued.ca_pem))
}

/// The members of a cluster's database: the primary set's pod, then the replica set's, each
/// at its stable address under the headless Service.
pub fn members(owner: &ClusterRef, db: &DatabaseSpec) -> Vec<Member> {
    let pod = |name: String| Member {
        host: format!("{name}.{}", owner.service_host(&names::db_headless(owner))),
        name,
        port: u16::try_from(ports::DATABASE).unwrap_or(3306),
    };
    let mut out = vec![pod(names::db_initial_primary_pod(owner))];
    for i in 0..db.replicas.max(0) {
        out.push(pod(format!("{}-{i}", names::db_replicas_set(owner))));
    }
    out
}

/// The role label each pod should carry; `None`: no label (serves neither Service).
pub fn role_labels(status: &TopologyStatus) -> BTreeMap<String, Option<String>> {
    status
        .servers
        .iter()
        .map(|s| {
            let label = match s.role {
                Role::Primary if status.primary_ready => Some("primary"),
                Role::Replica if s.error.is_none() => Some("replica"),
                // Errant, broken, seeding, unreachable, starting: out of both Services.
                Role::Primary | Role::Replica => None,
                other => Some(other.as_str()),
            };
            (s.name.clone(), label.map(String::from))
        })
        .collect()
}

impl Topologies {
    /// No loops yet; each status change of a loop is sent on `changed`.
    pub fn new(changed: mpsc::UnboundedSender<ObjectRef<ChatCluster>>) -> Self {
        Self {
            loops: Mutex::new(HashMap::new()),
            changed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ChatCluster>, Entry>> {
        lock(&self.loops)
    }

    /// Start the cluster's loop, or bring it in step with the spec; the loop's status as it
    /// changes (the metrics read it at each scrape, so they stay live between reconciles).
    pub async fn ensure(
        &self,
        client: &Client,
        resource: &ChatCluster,
        owner: &ClusterRef,
        operator_image: &str,
    ) -> Result<watch::Receiver<TopologyStatus>, Error> {
        let key = ObjectRef::from_obj(resource);
        let members = members(owner, &resource.spec.database);
        let mut policy = database::topology_policy(&resource.spec.database);
        let ca = server_ca(client, owner, resource).await?;
        policy.tls_ca = ca.as_ref().map(|_| database::pod_tls().ca());
        let update = {
            let mut loops = self.lock();
            // A loop's credentials are fixed: internal TLS turned on or off, or a new CA,
            // starts a new loop (dropping the old one's last handle ends it).
            if loops.get(&key).is_some_and(|e| e.ca != ca) {
                loops.remove(&key);
            }
            loops.get(&key).map(|e| {
                (
                    e.handle.clone(),
                    (e.members != members).then(|| members.clone()),
                    e.policy != policy,
                )
            })
        };
        if let Some((handle, new_members, new_policy)) = update {
            if let Some(m) = new_members {
                handle.set_members(m).await;
            }
            if new_policy {
                handle.set_policy(policy.clone()).await;
            }
            if let Some(e) = self.lock().get_mut(&key) {
                e.members = members;
                e.policy = policy;
            }
            return Ok(handle.status.clone());
        }

        let secret_name = names::db_secret(owner);
        let secret = Api::<Secret>::namespaced(client.clone(), &owner.namespace)
            .get(&secret_name)
            .await
            .map_err(Error::kube("get", "Secret", &secret_name))?;
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        let credentials = Credentials {
            admin_user: database::ADMIN_USER.into(),
            admin_password: field(secrets::DB_ADMIN_PASSWORD_KEY),
            repl_user: database::REPL_USER.into(),
            repl_password: field(secrets::DB_REPLICATION_PASSWORD_KEY),
            ca_pem: ca.clone(),
        };
        // The primary the status recorded (a failover happened before a restart), else pod 0.
        let primary = resource
            .status
            .as_ref()
            .and_then(|s| s.database.as_ref())
            .and_then(|d| d.primary.clone())
            .filter(|p| members.iter().any(|m| &m.name == p))
            .unwrap_or_else(|| names::db_initial_primary_pod(owner));
        // MariaDB pods re-seed physically, through a Job; MySQL clones itself over SQL.
        let seeder: Option<Arc<dyn Seeder>> =
            (resource.spec.database.engine == DatabaseEngine::Mariadb).then(|| {
                Arc::new(PodSeeder::new(
                    client.clone(),
                    owner.clone(),
                    resource.spec.database.clone(),
                    operator_image.to_string(),
                )) as Arc<dyn Seeder>
            });
        let servers = members
            .iter()
            .map(|m| {
                let server = Server::new(m.clone(), credentials.clone(), policy.query_timeout);
                match &seeder {
                    Some(s) => server.with_seeder(s.clone()),
                    None => server,
                }
            })
            .collect();
        let (topology, status) = manager::Topology::with_servers(
            servers,
            &primary,
            credentials,
            policy.clone(),
            manager::monotonic_clock(),
        )
        .map_err(|e| Error::Topology(e.to_string()))?;
        let handle = manager::spawn(topology, status, TICK);
        let mut watch = handle.status.clone();
        let changed = self.changed.clone();
        let wake = key.clone();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                if changed.send(wake.clone()).is_err() {
                    break;
                }
            }
        });
        let current = handle.status.clone();
        self.lock().insert(
            key,
            Entry {
                handle,
                members,
                policy,
                ca,
                switchover: None,
            },
        );
        Ok(current)
    }

    /// Stop the loops of clusters `keep` rejects (deleted ones); dropping a loop's last
    /// handle ends it.
    /// The latest status of `resource`'s loop, when one runs, without touching it.
    pub fn current(&self, resource: &ChatCluster) -> Option<TopologyStatus> {
        self.lock()
            .get(&ObjectRef::from_obj(resource))
            .map(|e| e.handle.status.borrow().clone())
    }

    pub fn retain(&self, keep: impl Fn(&ObjectRef<ChatCluster>) -> bool) {
        self.lock().retain(|key, _| keep(key));
    }

    /// Carry out the switchover the annotation asks for, once; the annotation is removed when
    /// it is done (or refused), and the outcome sent to `done`.
    pub fn switchover(
        &self,
        client: &Client,
        resource: &ChatCluster,
        done: impl FnOnce(Result<String, String>) + Send + 'static,
    ) {
        let Some(target) = resource.annotations().get(SWITCHOVER_ANNOTATION).cloned() else {
            return;
        };
        let key = ObjectRef::from_obj(resource);
        let handle = {
            let mut loops = self.lock();
            let Some(entry) = loops.get_mut(&key) else {
                return;
            };
            if entry.switchover.as_deref() == Some(target.as_str()) {
                return;
            }
            entry.switchover = Some(target.clone());
            entry.handle.clone()
        };
        let api: Api<ChatCluster> =
            Api::namespaced(client.clone(), &resource.namespace().unwrap_or_default());
        let name = resource.name_any();
        tokio::spawn(async move {
            let outcome = handle
                .switchover(&target)
                .await
                .map(|p| {
                    format!(
                        "switched over from {} to {} (write pause {} ms)",
                        p.from, p.to, p.duration_ms
                    )
                })
                .map_err(|e| format!("switchover to {target} refused: {e}"));
            let patch = json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: null}}});
            if let Err(e) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                warn!(error = %e, "cannot remove the switchover annotation");
            }
            done(outcome);
        });
    }

    /// A switchover finished: the next annotation may ask again.
    pub fn switchover_done(&self, resource: &ChatCluster) {
        if let Some(e) = self.lock().get_mut(&ObjectRef::from_obj(resource)) {
            e.switchover = None;
        }
    }
}

/// Move the role labels to where the loop says; only pods whose label differs are patched.
pub async fn label_pods(
    client: &Client,
    owner: &ClusterRef,
    status: &TopologyStatus,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace);
    let selector = owner.selector_query(database::COMPONENT);
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list", "Pod", &owner.name))?;
    let wanted = role_labels(status);
    for pod in pods {
        let name = pod.name_any();
        let Some(want) = wanted.get(&name) else {
            continue;
        };
        if pod.labels().get(labels::DB_ROLE) == want.as_ref() {
            continue;
        }
        let patch = json!({"metadata": {"labels": {labels::DB_ROLE: want}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("patch", "Pod", &name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::status::{SemiSyncState, ServerStatus};

    fn server(name: &str, role: Role, error: Option<&str>) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            address: format!("{name}:3306"),
            role,
            gtids: String::new(),
            behind: 0,
            error: error.map(String::from),
        }
    }

    #[test]
    fn labels_follow_roles_and_keep_unfit_servers_out_of_both_services() {
        let status = TopologyStatus {
            primary: "p".into(),
            primary_address: "p:3306".into(),
            primary_ready: true,
            servers: vec![
                server("p", Role::Primary, None),
                server("r0", Role::Replica, None),
                server("r1", Role::Replica, Some("replication starting")),
                server("r2", Role::Errant, Some("transactions the primary lacks")),
                server("r3", Role::Unreachable, None),
            ],
            semi_sync: SemiSyncState::Waiting(1),
            last_promotion: None,
            failover_pending: None,
            findings: vec![],
        };
        let labels = role_labels(&status);
        assert_eq!(labels["p"].as_deref(), Some("primary"));
        assert_eq!(labels["r0"].as_deref(), Some("replica"));
        assert_eq!(labels["r1"], None);
        assert_eq!(labels["r2"].as_deref(), Some("errant"));
        assert_eq!(labels["r3"].as_deref(), Some("unreachable"));
        // A primary not yet writable takes no writes through the Service.
        let not_ready = TopologyStatus {
            primary_ready: false,
            ..status
        };
        assert_eq!(role_labels(&not_ready)["p"], None);
    }

    #[test]
    fn members_and_policy_come_from_the_spec() {
        let mut resource = ChatCluster::new("demo", Default::default());
        resource.metadata.namespace = Some("chat".into());
        resource.metadata.uid = Some("uid".into());
        let owner = ClusterRef::new(&resource).expect("ref");
        let m = members(&owner, &resource.spec.database);
        assert_eq!(
            m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            [
                "demo-db-primary-0",
                "demo-db-replica-0",
                "demo-db-replica-1"
            ]
        );
        assert!(
            m[1].host.starts_with("demo-db-replica-0.demo-db.chat.svc"),
            "{}",
            m[1].host
        );
        assert_eq!(m[0].port, 3306);
        let p = database::topology_policy(&resource.spec.database);
        assert!(p.failover && p.semi_sync);
        assert_eq!(p.failover_timeout, Duration::from_secs(10));
        resource.spec.database.replicas = 0;
        assert!(!database::topology_policy(&resource.spec.database).semi_sync);
    }
}
