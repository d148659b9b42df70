//! Lease-based leader election between operator replicas, against the in-memory API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_operator::{
    Error,
    leader::{LeaderElector, Timing},
};
use chatcluster_testkit::FakeApi;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

fn timing(lease_ms: u64) -> Timing {
    Timing {
        lease_duration: Duration::from_millis(lease_ms),
        renew_deadline: Duration::from_millis(lease_ms * 2 / 3),
        retry_period: Duration::from_millis(lease_ms / 5),
    }
}

fn holder(api: &FakeApi) -> Option<String> {
    api.object("coordination.k8s.io/v1/leases", "ops", "chat-operator")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

#[tokio::test]
async fn one_leader_at_a_time_and_release_hands_over() {
    let api = FakeApi::new();
    let a = LeaderElector::new(api.client(), "ops", "chat-operator", "a", timing(15_000));
    let b = LeaderElector::new(api.client(), "ops", "chat-operator", "b", timing(15_000));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    assert_eq!(holder(&api).as_deref(), Some("a"));

    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(!a.try_acquire_or_renew().await.unwrap());
    let lease: Lease = Api::namespaced(api.client(), "ops")
        .get("chat-operator")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(15));
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let api = FakeApi::new();
    let a = LeaderElector::new(api.client(), "ops", "chat-operator", "a", timing(1_000));
    let b = LeaderElector::new(api.client(), "ops", "chat-operator", "b", timing(1_000));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // `a` stops renewing (crashed); after the lease duration `b` takes over.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&api).as_deref(), Some("b"));
}

#[tokio::test]
async fn a_leader_that_loses_the_lease_stops_its_work() {
    let api = FakeApi::new();
    let a = LeaderElector::new(api.client(), "ops", "chat-operator", "a", timing(1_000));
    a.acquire().await;
    // Someone overwrites the lease (a partition healed the other way, an admin edit).
    let leases: Api<Lease> = Api::namespaced(api.client(), "ops");
    let mut lease = leases.get("chat-operator").await.unwrap();
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        spec.lease_duration_seconds = Some(3600);
    }
    leases
        .replace("chat-operator", &Default::default(), &lease)
        .await
        .unwrap();

    let never = std::future::pending::<()>();
    let outcome = tokio::time::timeout(Duration::from_secs(5), a.lead(never)).await;
    assert!(
        matches!(outcome, Ok(Err(Error::LostLease(_)))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn finished_work_releases_the_lease() {
    let api = FakeApi::new();
    let a = LeaderElector::new(api.client(), "ops", "chat-operator", "a", timing(15_000));
    a.acquire().await;
    let out = a.lead(async { 42 }).await.unwrap();
    assert_eq!(out, 42);
    assert_eq!(holder(&api), None);
}
