//! Physical re-seeding in Kubernetes ([`Seeder`] for pods): a Job on the replica's node
//! fetches a copy of the donor's files into the replica's volume (see [`crate::seed`]) and
//! leaves the copy's id and GTID position as its termination message. The loop then approves
//! that copy for the pod (the approvals ConfigMap) and deletes the pod; its `seed-swap` init
//! container puts the approved copy in place before the server starts and says so in its own
//! termination message, which the loop reads before it sets the replica's position. The
//! operator only creates, watches and deletes objects: no byte of the copy passes through it.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use rand::RngCore;
use serde_json::json;
use tracing::{info, warn};

use crate::{
    api::DatabaseSpec,
    build::{ClusterRef, labels, names, seed as build},
    seed::{
        fetch::Ready,
        swap::{self, Outcome},
    },
    topology::{
        physical::{Error, Prepared, Seeder},
        server::{Member, Server},
    },
};

/// How often the Job's progress is looked at.
const POLL: Duration = Duration::from_secs(2);
/// How long a replaced Job (and its pod) may take to go away.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a replica may take to come back: its pod's grace period, scheduling, the swap.
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);
/// The field manager of the approvals (the reconciler applies the ConfigMap without data).
const APPROVALS_MANAGER: &str = "chat-operator-seed";
/// How long an approval holds: past it, a pod's start throws the copy away (an attempt cut
/// short, or an operator that died, never withdrew it). Longer than the restart may take,
/// with room for clocks that disagree.
const APPROVAL_TTL: Duration = Duration::from_secs(900);

/// Re-seeds the MariaDB pods of one cluster.
#[derive(Clone)]
pub struct PodSeeder {
    client: Client,
    cluster: ClusterRef,
    db: DatabaseSpec,
    operator_image: String,
}

impl std::fmt::Debug for PodSeeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSeeder")
            .field("cluster", &self.cluster.name)
            .field("namespace", &self.cluster.namespace)
            .finish()
    }
}

fn platform(what: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let what = format!("{what} {name}");
    move |e| Error::Platform(format!("cannot {what}: {e}"))
}

/// A fresh id for one attempt.
fn copy_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PodSeeder {
    /// The seeder of `cluster`'s database pods; its Jobs copy the re-seed programs from
    /// `operator_image`.
    pub fn new(
        client: Client,
        cluster: ClusterRef,
        db: DatabaseSpec,
        operator_image: String,
    ) -> Self {
        Self {
            client,
            cluster,
            db,
            operator_image,
        }
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.cluster.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.cluster.namespace)
    }

    /// Delete Job `name` and its pod if it exists, and wait until both are gone: an older
    /// fetch must not still run when a new one starts.
    async fn remove_job(&self, name: &str) -> Result<(), Error> {
        let jobs = self.jobs();
        match jobs.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(platform("delete Job", name)(e)),
        }
        let deadline = Instant::now() + GONE_TIMEOUT;
        while jobs
            .get_opt(name)
            .await
            .map_err(platform("get Job", name))?
            .is_some()
        {
            if Instant::now() > deadline {
                return Err(Error::Platform(format!(
                    "Job {name} still exists {GONE_TIMEOUT:?} after its deletion"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// The termination message of attempt `id`'s fetch container.
    async fn message(&self, id: &str) -> Result<Option<String>, Error> {
        let selector = format!("{}={id}", build::SEED_COPY_LABEL);
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(platform("list the pods of re-seed attempt", id))?;
        Ok(pods
            .items
            .iter()
            .flat_map(|p| p.status.iter())
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter(|c| c.name == "fetch")
            .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone()))
    }

    /// Wait for Job `name` to end; whether it succeeded.
    async fn wait(&self, name: &str) -> Result<bool, Error> {
        let deadline = Instant::now()
            + Duration::from_secs(u64::try_from(build::JOB_DEADLINE_SECONDS).unwrap_or(1800))
            + GONE_TIMEOUT;
        loop {
            let job = self
                .jobs()
                .get_opt(name)
                .await
                .map_err(platform("get Job", name))?
                .ok_or_else(|| Error::Platform(format!("Job {name} disappeared")))?;
            let status = job.status.unwrap_or_default();
            if status.succeeded.unwrap_or(0) > 0 {
                return Ok(true);
            }
            let failed_condition = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Failed" && c.status == "True");
            if status.failed.unwrap_or(0) > 0 || failed_condition {
                return Ok(false);
            }
            if Instant::now() > deadline {
                return Err(Error::Platform(format!("Job {name} never ended")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Name the copy `pod`'s next start may swap in, until [`APPROVAL_TTL`] from now
    /// (`None`: none).
    async fn approve(&self, pod: &str, id: Option<&str>) -> Result<(), Error> {
        let name = names::db_seed_approvals(&self.cluster);
        let until = swap::unix_now() + APPROVAL_TTL.as_secs();
        let patch = json!({ "data": { pod: id.map(|id| swap::approval(id, until)) } });
        let params = PatchParams {
            field_manager: Some(APPROVALS_MANAGER.into()),
            ..PatchParams::default()
        };
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.cluster.namespace)
            .patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(platform("update ConfigMap", &name))?;
        Ok(())
    }

    /// Withdraw `pod`'s approval (it expires anyway, should this fail).
    async fn withdraw(&self, pod: &str) {
        if let Err(e) = self.approve(pod, None).await {
            warn!(%pod, error = %e, "cannot withdraw the copy's approval");
        }
    }

    /// What the running pod's swap said when it started.
    async fn swap_outcome(&self, pod: &str) -> Result<Option<Outcome>, Error> {
        let Some(p) = self
            .pods()
            .get_opt(pod)
            .await
            .map_err(platform("get pod", pod))?
        else {
            return Ok(None);
        };
        Ok(p.status
            .iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten())
            .filter(|c| c.name == "seed-swap")
            .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .and_then(|m| Outcome::parse(&m)))
    }
}

impl Seeder for PodSeeder {
    fn copy<'a>(
        &'a self,
        donor: &'a Member,
        replica: &'a Member,
    ) -> BoxFuture<'a, Result<Prepared, Error>> {
        Box::pin(async move {
            let name = names::db_seed_job(&replica.name);
            // A Job of an earlier attempt (the operator restarted during a copy) says nothing
            // about this one, and must not write beside it.
            self.remove_job(&name).await?;
            let id = copy_id();
            let job = build::job(
                &self.cluster,
                &self.db,
                &self.operator_image,
                &replica.name,
                &donor.host,
                &id,
            );
            self.jobs()
                .patch(
                    &name,
                    &PatchParams::apply(labels::MANAGER).force(),
                    &Patch::Apply(&job),
                )
                .await
                .map_err(platform("create Job", &name))?;
            info!(job = %name, %id, donor = %donor.name, "re-seed Job created");
            let succeeded = self.wait(&name).await;
            let message = self.message(&id).await;
            if let Err(e) = self.remove_job(&name).await {
                warn!(job = %name, error = %e, "cannot remove the re-seed Job");
            }
            let message = message?.unwrap_or_default();
            if !succeeded? {
                return Err(Error::Platform(format!("Job {name} failed: {message}")));
            }
            match Ready::from_message(&message) {
                Some(ready) if ready.id == id => Ok(Prepared {
                    id: ready.id,
                    gtids: ready.gtids,
                }),
                _ => Err(Error::Platform(format!(
                    "Job {name} succeeded without naming copy {id}: {message:?}"
                ))),
            }
        })
    }

    fn restart_on_copy<'a>(
        &'a self,
        replica: &'a mut Server,
        copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let name = replica.member.name.clone();
            self.approve(&name, Some(&copy.id)).await?;
            // The StatefulSet starts it again; its init container swaps the copy in.
            self.pods()
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(platform("delete pod", &name))?;
            info!(pod = %name, id = %copy.id, "pod deleted to restart on its copy");
            Ok(())
        })
    }

    fn confirm<'a>(
        &'a self,
        replica: &'a Member,
        copy: &'a Prepared,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            match self.swap_outcome(&replica.name).await {
                Ok(Some(Outcome::Swapped(r))) if r.id == copy.id => Ok(true),
                // The kubelet has not reported yet, or the API did not answer: ask again.
                Ok(None) => Ok(false),
                Err(e) => {
                    warn!(pod = %replica.name, error = %e, "cannot read the pod's swap yet");
                    Ok(false)
                }
                Ok(Some(other)) => Err(Error::Platform(format!(
                    "{} restarted without copy {}: its swap said {:?}",
                    replica.name,
                    copy.id,
                    other.message()
                ))),
            }
        })
    }

    fn abandon<'a>(
        &'a self,
        replica: &'a Member,
        _copy: &'a Prepared,
        _old_still_runs: bool,
    ) -> BoxFuture<'a, ()> {
        // Withdrawn, the approval lets no later start swap the copy in: it is thrown away.
        Box::pin(async move {
            warn!(pod = %replica.name, "the pod did not come back on its copy");
            self.withdraw(&replica.name).await;
        })
    }

    fn finish<'a>(&'a self, replica: &'a Member, _copy: &'a Prepared) -> BoxFuture<'a, ()> {
        // The swap removed the old data before the server started; the approval is spent.
        Box::pin(async move { self.withdraw(&replica.name).await })
    }

    fn restart_timeout(&self) -> Duration {
        RESTART_TIMEOUT
    }
}
