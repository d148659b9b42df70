//! chat-xds driving a real Envoy (State-of-the-World and Delta): gRPC routed by package to each
//! service's backends, spread over them, following endpoint changes, and a malformed endpoints
//! file refused with the last good state kept. Asserted through traffic and Envoy's admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chatcluster_types::xds::LoadBalancing;
use common::{Backend, Inputs, Stack, call, eventually, healthy_ports, service, write_endpoints};

async fn routes_spreads_and_follows_endpoints(api_type: &str) {
    let (b1, b2, bg) = (
        Backend::start("auth-1").await,
        Backend::start("auth-2").await,
        Backend::start("groups-1").await,
    );
    let (a1, a2) = (b1.port, b2.port);
    let mut inputs = Inputs {
        services: BTreeMap::from([
            ("auth".to_string(), vec![a1, a2]),
            ("groups".to_string(), vec![bg.port]),
        ]),
        certificate: None,
    };
    let mut stack = Stack::start(
        api_type,
        vec![
            service("auth", LoadBalancing::RoundRobin),
            service("groups", LoadBalancing::LeastRequest),
        ],
        &inputs,
    );
    let admin = stack.admin;
    eventually(
        "both auth endpoints healthy in Envoy",
        Duration::from_secs(20),
        || async move {
            healthy_ports(admin, "auth").await.len() == 2
                && healthy_ports(admin, "groups").await.len() == 1
        },
    )
    .await;
    assert!(stack.envoy.running());
    let channel = stack.channel().await;

    // Routed by package; round robin spreads over both auth backends.
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let who = call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap();
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["auth-1", "auth-2"],
        "{seen:?}"
    );
    assert!(
        seen.values().all(|n| *n >= 8),
        "round robin is even: {seen:?}"
    );
    assert_eq!(
        call(&channel, "/chatcluster.groups.v1.Groups/SendMessage")
            .await
            .unwrap(),
        "groups-1"
    );
    // A package no service owns is not routed.
    let unrouted = call(&channel, "/chatcluster.billing.v1.Billing/Pay")
        .await
        .unwrap_err();
    assert_eq!(unrouted.code(), tonic::Code::Unimplemented, "{unrouted:?}");

    // Remove auth-1: traffic follows within moments, with no failed call.
    inputs.services.insert("auth".into(), vec![a2]);
    write_endpoints(&stack.endpoints, &inputs);
    eventually(
        "auth-1 gone from Envoy",
        Duration::from_secs(10),
        || async move { healthy_ports(admin, "auth").await == vec![a2] },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            call(&channel, "/chatcluster.auth.v1.Auth/Login")
                .await
                .unwrap(),
            "auth-2"
        );
    }

    // A malformed endpoints file is refused; Envoy keeps the last good configuration.
    let tmp = stack.endpoints.with_extension("tmp");
    std::fs::write(&tmp, "services: [this is not a map").unwrap();
    std::fs::rename(&tmp, &stack.endpoints).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(healthy_ports(admin, "auth").await, vec![a2]);
    assert_eq!(
        call(&channel, "/chatcluster.auth.v1.Auth/Login")
            .await
            .unwrap(),
        "auth-2"
    );

    // Adding endpoints back: both take traffic again.
    inputs.services.insert("auth".into(), vec![a1, a2]);
    write_endpoints(&stack.endpoints, &inputs);
    eventually("auth-1 back", Duration::from_secs(10), || async move {
        healthy_ports(admin, "auth").await.len() == 2
    })
    .await;
    // Envoy's admin view is its main thread's; workers follow a moment later.
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 && Instant::now() < deadline {
        *seen
            .entry(
                call(&channel, "/chatcluster.auth.v1.Auth/Login")
                    .await
                    .unwrap(),
            )
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sotw_routes_spreads_and_follows_endpoints() {
    routes_spreads_and_follows_endpoints("GRPC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_routes_spreads_and_follows_endpoints() {
    routes_spreads_and_follows_endpoints("DELTA_GRPC").await;
}
