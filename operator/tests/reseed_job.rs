//! Kubernetes' physical re-seed from the operator's side, against the in-memory API with the
//! test playing the kubelet: the seeder replaces a stale Job, creates the one the builder
//! makes, reads the copy's position from the finished pod's termination message, removes the
//! Job, and restarts the replica by deleting its pod. (The programs the Job and the pods run
//! are tested against real MariaDB servers in `tests/tests/reseed_programs.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::{
    api::ChatCluster,
    build::{ClusterRef, names, seed},
    reconcile::{seed::PodSeeder, topology::members},
    testkit::FakeApi,
    topology::{
        physical::Seeder,
        server::{Credentials, Server},
    },
};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const NS: &str = "chat";
const IMAGE: &str = "registry.example/chat-operator:1.2.3";

fn cluster() -> (ChatCluster, ClusterRef) {
    let cc: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "chatcluster.io/v1alpha1",
        "kind": "ChatCluster",
        "metadata": { "name": "demo", "namespace": NS, "uid": "uid-1" },
        "spec": { "database": { "engine": "mariadb", "replicas": 1 } },
    }))
    .unwrap();
    let c = ClusterRef::new(&cc).unwrap();
    (cc, c)
}

/// Plays the kubelet for the next re-seed Job of `replica`: once it exists (and is not the
/// stale one marked `stale`), runs "its pod" — a pod owned by the Job, terminated with
/// `message` — and marks the Job succeeded or failed.
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
    let status = json!({ "status": { "containerStatuses": [{
        "name": "fetch", "image": "mariadb", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": { "exitCode": if succeed { 0 } else { 1 }, "message": message } },
    }]}});
    pods.patch_status(
        &format!("{name}-x1"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
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

#[tokio::test]
async fn a_copy_is_fetched_by_a_job_on_the_replicas_node_and_its_position_read() {
    let api = FakeApi::new();
    let client = api.client();
    let (cc, c) = cluster();
    let servers = members(&c, &cc.spec.database);
    let (donor, replica) = (&servers[0], &servers[1]);
    // A Job left by an earlier attempt (the operator restarted during a copy).
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let mut stale = seed::job(&c, &cc.spec.database, IMAGE, &replica.name, &donor.host);
    stale.annotations_mut().insert("stale".into(), "yes".into());
    jobs.create(&PostParams::default(), &stale).await.unwrap();

    let seeder = PodSeeder::new(
        client.clone(),
        c.clone(),
        cc.spec.database.clone(),
        IMAGE.into(),
    );
    let playing = tokio::spawn(kubelet(
        client.clone(),
        replica.name.clone(),
        "0-1-42",
        true,
    ));
    let gtids = tokio::time::timeout(Duration::from_secs(30), seeder.copy(donor, replica))
        .await
        .unwrap()
        .unwrap();
    let job = playing.await.unwrap();
    assert_eq!(gtids, "0-1-42");

    // The Job it ran is the builder's, with the operator's image; it is gone afterwards, and
    // its pod with it.
    let built = seed::job(&c, &cc.spec.database, IMAGE, &replica.name, &donor.host);
    assert_eq!(job.spec, built.spec);
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.init_containers.unwrap()[0].image.as_deref(),
        Some(IMAGE)
    );
    assert!(
        api.names("batch/v1/jobs", NS).is_empty(),
        "the Job is removed"
    );
    assert!(api.names("v1/pods", NS).is_empty(), "and its pod");
}

#[tokio::test]
async fn a_failed_job_fails_the_copy_with_its_message() {
    let api = FakeApi::new();
    let client = api.client();
    let (cc, c) = cluster();
    let servers = members(&c, &cc.spec.database);
    let seeder = PodSeeder::new(
        client.clone(),
        c.clone(),
        cc.spec.database.clone(),
        IMAGE.into(),
    );
    let message = "re-seed copy failed: the donor failed: not authorised";
    let playing = tokio::spawn(kubelet(
        client.clone(),
        servers[1].name.clone(),
        message,
        false,
    ));
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        seeder.copy(&servers[0], &servers[1]),
    )
    .await
    .unwrap()
    .unwrap_err();
    playing.await.unwrap();
    assert!(err.to_string().contains("not authorised"), "{err}");
    assert!(api.names("batch/v1/jobs", NS).is_empty());
}

#[tokio::test]
async fn restarting_on_the_copy_deletes_the_replicas_pod() {
    let api = FakeApi::new();
    let client = api.client();
    let (cc, c) = cluster();
    let servers = members(&c, &cc.spec.database);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": servers[1].name },
        "spec": { "containers": [{ "name": "database", "image": "mariadb" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let seeder = PodSeeder::new(client.clone(), c, cc.spec.database.clone(), IMAGE.into());
    let credentials = Credentials {
        admin_user: "admin".into(),
        admin_password: "x".into(),
        repl_user: "repl".into(),
        repl_password: "y".into(),
    };
    let mut server = Server::new(servers[1].clone(), credentials, Duration::from_secs(1));
    seeder.restart_on_copy(&mut server).await.unwrap();
    assert!(
        api.names("v1/pods", NS).is_empty(),
        "the StatefulSet starts it again"
    );
}
