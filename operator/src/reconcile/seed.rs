//! Physical re-seeding in Kubernetes ([`Seeder`] for pods): a Job on the replica's node
//! fetches a copy of the donor's files into the replica's volume (see [`crate::seed`]) and
//! leaves the copy's GTID position as its termination message; deleting the replica's pod
//! then restarts it, and its init container puts the copy in place first. The operator only
//! creates, watches and deletes objects: no byte of the copy passes through it.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use tracing::{info, warn};

use crate::{
    api::DatabaseSpec,
    build::{ClusterRef, labels, names, seed as build},
    topology::{
        physical::{Error, Seeder},
        server::{Member, Server},
    },
};

/// How often the Job's progress is looked at.
const POLL: Duration = Duration::from_secs(2);
/// How long a replaced Job may take to go away.
const GONE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a replica may take to come back: its pod's grace period, scheduling, the swap.
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);

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

    /// Delete Job `name` (and its pod) if it exists, and wait until it is gone.
    async fn remove_job(&self, name: &str) -> Result<(), Error> {
        let jobs = self.jobs();
        match jobs.delete(name, &DeleteParams::background()).await {
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

    /// The termination message of the Job's fetch container.
    async fn message(&self, replica: &str) -> Result<String, Error> {
        let selector = format!("{}={replica}", build::SEED_FOR_LABEL);
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(platform("list the pods of the re-seed Job for", replica))?;
        Ok(pods
            .items
            .iter()
            .flat_map(|p| p.status.iter())
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter(|c| c.name == "fetch")
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .next()
            .unwrap_or_default())
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
}

impl Seeder for PodSeeder {
    fn copy<'a>(
        &'a self,
        donor: &'a Member,
        replica: &'a Member,
    ) -> BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            let name = names::db_seed_job(&replica.name);
            // A Job of an earlier attempt (the operator restarted during a copy) says nothing
            // about this one.
            self.remove_job(&name).await?;
            let job = build::job(
                &self.cluster,
                &self.db,
                &self.operator_image,
                &replica.name,
                &donor.host,
            );
            self.jobs()
                .patch(
                    &name,
                    &PatchParams::apply(labels::MANAGER).force(),
                    &Patch::Apply(&job),
                )
                .await
                .map_err(platform("create Job", &name))?;
            info!(job = %name, donor = %donor.name, "re-seed Job created");
            let succeeded = self.wait(&name).await;
            let message = self.message(&replica.name).await;
            if let Err(e) = self.remove_job(&name).await {
                warn!(job = %name, error = %e, "cannot remove the re-seed Job");
            }
            let message = message?.trim().to_string();
            match succeeded? {
                true => Ok(message),
                false => Err(Error::Platform(format!("Job {name} failed: {message}"))),
            }
        })
    }

    fn restart_on_copy<'a>(&'a self, replica: &'a mut Server) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // The StatefulSet starts it again; its init container swaps the copy in.
            let name = replica.member.name.clone();
            self.pods()
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(platform("delete pod", &name))?;
            info!(pod = %name, "pod deleted to restart on its copy");
            Ok(())
        })
    }

    fn abandon<'a>(&'a self, replica: &'a Member, _old_still_runs: bool) -> BoxFuture<'a, ()> {
        // The copy stays marked ready in the volume: whenever the pod starts, it runs on it,
        // and the loop sees where it stands then.
        Box::pin(async move {
            warn!(pod = %replica.name, "the pod did not come back on its copy in time");
        })
    }

    fn finish<'a>(&'a self, _replica: &'a Member) -> BoxFuture<'a, ()> {
        // The swap removed the old data before the server started.
        Box::pin(async {})
    }

    fn restart_timeout(&self) -> Duration {
        RESTART_TIMEOUT
    }
}
