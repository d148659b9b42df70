//! Kubernetes' physical re-seed from the operator's side, against the in-memory API with the
//! test playing the kubelet: the seeder replaces a stale Job, creates the one the builder
//! makes, reads the copy's id and position from the finished pod's termination message,
//! removes the Job, approves the copy for the replica and deletes its pod, and takes the
//! restarted pod's word (its swap's termination message) before anything sets a position.
//! (The programs the Job and the pods run are tested against real MariaDB servers in
//! `tests/tests/reseed_programs.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::{
    api::ChatCluster,
    build::{ClusterRef, names, seed},
    reconcile::{seed::PodSeeder, topology::members},
    topology::{
        physical::{Prepared, Seeder},
        server::{Credentials, Member, Server},
    },
};
use chatcluster_testkit::FakeApi;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const NS: &str = "chat";
const IMAGE: &str = "registry.example/chat-operator:1.2.3";

struct World {
    api: FakeApi,
    client: Client,
    resource: ChatCluster,
    owner: ClusterRef,
    donor: Member,
    replica: Member,
    seeder: PodSeeder,
}

/// A MariaDB cluster with one replica, its approvals ConfigMap (the reconciler applies it).
async fn world() -> World {
    let api = FakeApi::new();
    let client = api.client();
    let resource: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "chatcluster.io/v1alpha1",
        "kind": "ChatCluster",
        "metadata": { "name": "demo", "namespace": NS, "uid": "uid-1" },
        "spec": { "database": { "engine": "mariadb", "replicas": 1 } },
    }))
    .unwrap();
    let owner = ClusterRef::new(&resource).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &seed::approvals_config_map(&owner))
        .await
        .unwrap();
    let servers = members(&owner, &resource.spec.database);
    let seeder = PodSeeder::new(
        client.clone(),
        owner.clone(),
        resource.spec.database.clone(),
        IMAGE.into(),
    );
    World {
        api,
        client,
        donor: servers[0].clone(),
        replica: servers[1].clone(),
        resource,
        owner,
        seeder,
    }
}

/// Plays the kubelet for the next re-seed Job of `replica`: once it exists (and is not the
/// stale one marked `stale`), runs "its pod" — a pod owned by the Job, terminated with
/// `message` (`{id}` standing for the attempt's id) — and marks the Job succeeded or failed.
async fn kubelet(client: Client, replica: String, message: &'static str, succeed: bool) -> Job {
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let name = names::db_seed_job(&replica);
    let job = loop {
        if let Some(j) = jobs.get_opt(&name).await.unwrap()
            && !j.annotations().contains_key("stale")
        {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-x1"),
            "labels": job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name,
                "uid": job.uid().unwrap(), "controller": true,
            }],
        },
        "spec": { "containers": [{ "name": "fetch", "image": "mariadb" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let message = message.replace("{id}", &job.labels()[seed::SEED_COPY_LABEL]);
    terminate(
        &pods,
        &format!("{name}-x1"),
        "containerStatuses",
        "fetch",
        &message,
    )
    .await;
    let outcome = if succeed {
        json!({ "succeeded": 1 })
    } else {
        json!({ "failed": 1 })
    };
    jobs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": outcome })),
    )
    .await
    .unwrap();
    job
}

/// Record that container `container` of pod `pod` ended with `message`.
async fn terminate(pods: &Api<Pod>, pod: &str, list: &str, container: &str, message: &str) {
    let status = json!({ "status": { list: [{
        "name": container, "image": "mariadb", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": { "exitCode": 0, "message": message } },
    }]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_copy_is_fetched_by_a_job_on_the_replicas_node_and_its_position_read() {
    let w = world().await;
    // A Job left by an earlier attempt (the operator restarted during a copy).
    let jobs: Api<Job> = Api::namespaced(w.client.clone(), NS);
    let mut stale = seed::job(
        &w.owner,
        &w.resource.spec.database,
        IMAGE,
        &w.replica.name,
        &w.donor.host,
        "old",
    );
    stale.annotations_mut().insert("stale".into(), "yes".into());
    jobs.create(&PostParams::default(), &stale).await.unwrap();

    let playing = tokio::spawn(kubelet(
        w.client.clone(),
        w.replica.name.clone(),
        "copy {id} 0-1-42",
        true,
    ));
    let copy = tokio::time::timeout(Duration::from_secs(30), w.seeder.copy(&w.donor, &w.replica))
        .await
        .unwrap()
        .unwrap();
    let job = playing.await.unwrap();
    assert_eq!(copy.gtids, "0-1-42");
    assert_eq!(copy.id, job.labels()[seed::SEED_COPY_LABEL]);

    // The Job it ran is the builder's, with the operator's image; it is gone afterwards, and
    // its pod with it.
    let built = seed::job(
        &w.owner,
        &w.resource.spec.database,
        IMAGE,
        &w.replica.name,
        &w.donor.host,
        &copy.id,
    );
    assert_eq!(job.spec, built.spec);
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.init_containers.unwrap()[0].image.as_deref(),
        Some(IMAGE)
    );
    assert!(
        w.api.names("batch/v1/jobs", NS).is_empty(),
        "the Job is removed"
    );
    assert!(w.api.names("v1/pods", NS).is_empty(), "and its pod");
}

#[tokio::test]
async fn a_failed_job_or_one_naming_another_copy_fails_the_copy() {
    for (message, succeed, says) in [
        (
            "re-seed copy failed: the donor failed: not authorised",
            false,
            "not authorised",
        ),
        ("copy someone-else 0-1-42", true, "without naming copy"),
        ("", true, "without naming copy"),
    ] {
        let w = world().await;
        let playing = tokio::spawn(kubelet(
            w.client.clone(),
            w.replica.name.clone(),
            message,
            succeed,
        ));
        let err =
            tokio::time::timeout(Duration::from_secs(30), w.seeder.copy(&w.donor, &w.replica))
                .await
                .unwrap()
                .unwrap_err();
        playing.await.unwrap();
        assert!(err.to_string().contains(says), "{message:?}: {err}");
        assert!(w.api.names("batch/v1/jobs", NS).is_empty());
    }
}

#[tokio::test]
async fn the_replica_restarts_on_an_approved_copy_and_only_its_swap_confirms_it() {
    let w = world().await;
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    let replica_pod = || -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": w.replica.name },
            "spec": { "containers": [{ "name": "database", "image": "mariadb" }] },
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &replica_pod())
        .await
        .unwrap();
    let credentials = Credentials {
        admin_user: "admin".into(),
        admin_password: "x".into(),
        repl_user: "repl".into(),
        repl_password: "y".into(),
        ca_pem: None,
    };
    let mut server = Server::new(w.replica.clone(), credentials, Duration::from_secs(1));
    let copy = Prepared {
        id: "c7".into(),
        gtids: "0-1-42".into(),
    };
    w.seeder.restart_on_copy(&mut server, &copy).await.unwrap();
    assert!(
        w.api.names("v1/pods", NS).is_empty(),
        "the StatefulSet starts it again"
    );
    let approvals = || {
        w.api
            .object("v1/configmaps", NS, &names::db_seed_approvals(&w.owner))
            .unwrap()["data"][&w.replica.name]
            .clone()
    };
    let approval = approvals();
    let (id, until) = approval.as_str().unwrap().split_once(' ').unwrap();
    assert_eq!(id, "c7", "approved before the pod went");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until: u64 = until.parse().unwrap();
    assert!(until > now + 600 && until <= now + 900, "for a while only");

    // The StatefulSet's new pod: until its swap says it took this copy, nothing is confirmed.
    pods.create(&PostParams::default(), &replica_pod())
        .await
        .unwrap();
    assert!(
        !w.seeder.confirm(&w.replica, &copy).await.unwrap(),
        "no word yet: ask again"
    );
    for said in ["discarded c7", "busy", "swapped c6 0-1-40"] {
        terminate(
            &pods,
            &w.replica.name,
            "initContainerStatuses",
            "seed-swap",
            said,
        )
        .await;
        let err = w.seeder.confirm(&w.replica, &copy).await.unwrap_err();
        assert!(err.to_string().contains("without copy c7"), "{said}: {err}");
    }
    terminate(
        &pods,
        &w.replica.name,
        "initContainerStatuses",
        "seed-swap",
        "swapped c7 0-1-42",
    )
    .await;
    assert!(w.seeder.confirm(&w.replica, &copy).await.unwrap());
    w.seeder.finish(&w.replica, &copy).await;
    assert_eq!(
        approvals(),
        serde_json::Value::Null,
        "the approval is spent"
    );
}
