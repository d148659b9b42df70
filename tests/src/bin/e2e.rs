//! End-to-end test of a ChatCluster running in Kubernetes (k3d on a laptop or a CI runner; no
//! cluster can run where this project is developed). Run by `k3d/e2e.sh` after `k3d/up.sh`:
//!
//! 1. two users sign up through the Envoy LoadBalancer (TLS, the cluster's self-signed
//!    certificate) and chat in a group, one receiving the other's messages live;
//! 2. the database primary's pod is deleted under continuous sends (retried with the same
//!    client key until acknowledged): writes resume, every acknowledged message is in the
//!    history once, in order;
//! 3. the groups service is scaled to two replicas: both new pods serve calls through Envoy;
//! 4. the firewall: a pod of the namespace with no component's labels cannot open a connection
//!    to the database primary, while one labelled as a chat service can.
//!
//! Exits non-zero with the failed step's message.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use chatcluster_tests::chat::{authed, group_history};
use chatd::pb::{
    auth::{RegisterRequest, Session, auth_client::AuthClient},
    chat::{HistoryRequest, SendMessageRequest, SubscribeRequest},
    groups::{AcceptInvitationRequest, CreateGroupRequest, groups_client::GroupsClient},
};
use clap::Parser;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Parser)]
struct Args {
    /// Envoy's address as clients reach it.
    #[arg(long, default_value = "https://localhost:8443")]
    endpoint: String,
    /// Namespace of the ChatCluster.
    #[arg(long, default_value = "chat")]
    namespace: String,
    /// Name of the ChatCluster.
    #[arg(long, default_value = "laptop")]
    cluster: String,
}

fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .context("kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn register(auth: &mut AuthClient<Channel>, name: &str) -> Result<Session> {
    Ok(auth
        .register(RegisterRequest {
            username: name.into(),
            password: "correct horse battery".into(),
            display_name: String::new(),
        })
        .await
        .with_context(|| format!("register {name}"))?
        .into_inner())
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ns = args.namespace.as_str();
    let cert = kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        &format!("{}-envoy-tls", args.cluster),
        "-o",
        "jsonpath={.data.tls\\.crt}",
    ])?;
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD.decode(cert)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(args.endpoint.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connect to {}", args.endpoint))?;
    let mut auth = AuthClient::new(channel.clone());
    let mut groups = GroupsClient::new(channel.clone());

    // 1. Two users chat; Bob receives Alice's message live.
    let suffix = std::process::id();
    let alice = register(&mut auth, &format!("alice{suffix}")).await?;
    let bob = register(&mut auth, &format!("bob{suffix}")).await?;
    let bob_id = bob
        .profile
        .as_ref()
        .map(|p| p.user_id)
        .context("bob's profile")?;
    let group = groups
        .create_group(authed(
            &alice,
            CreateGroupRequest {
                name: "e2e".into(),
                member_ids: vec![bob_id],
            },
        )?)
        .await?
        .into_inner();
    groups
        .accept_invitation(authed(
            &bob,
            AcceptInvitationRequest { group_id: group.id },
        )?)
        .await?;
    let mut events = groups
        .subscribe(authed(
            &bob,
            SubscribeRequest {
                conversation_id: group.id,
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    groups
        .send_message(authed(
            &alice,
            SendMessageRequest {
                conversation_id: group.id,
                text: "hello bob".into(),
                client_key: "hello".into(),
            },
        )?)
        .await?;
    let event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .context("bob received nothing")??
        .context("bob's stream ended")?;
    println!("e2e: chat ok (bob got {event:?})");

    // 2. The primary's pod is deleted under continuous sends.
    let current_primary = || {
        kubectl(&[
            "-n",
            ns,
            "get",
            "chatcluster",
            &args.cluster,
            "-o",
            "jsonpath={.status.database.primary}",
        ])
    };
    let primary = current_primary()?;
    ensure!(!primary.is_empty(), "the status names no primary");
    let mut acked: Vec<(String, u64)> = vec![("hello bob".into(), 1)];
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.len() < 200 {
        ensure!(
            Instant::now() < deadline,
            "writes did not resume after deleting {primary}"
        );
        if acked.len() == 50 {
            kubectl(&[
                "-n",
                ns,
                "delete",
                "pod",
                &primary,
                "--grace-period=0",
                "--force",
            ])?;
            println!("e2e: deleted the primary pod {primary}");
        }
        let text = format!("m{n}");
        let send = groups.send_message(authed(
            &alice,
            SendMessageRequest {
                conversation_id: group.id,
                text: text.clone(),
                client_key: text.clone(),
            },
        )?);
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(m)) => {
                acked.push((text, m.into_inner().seq));
                n += 1;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let history = group_history(&mut groups, &alice, group.id).await?;
    ensure!(
        history == acked,
        "history differs from the acknowledged sends:\n{history:?}\n{acked:?}"
    );
    let now = current_primary()?;
    println!(
        "e2e: {} acknowledged messages kept; primary {primary} → {now}",
        acked.len()
    );

    // 3. Scale groups to two replicas: both pods serve calls through Envoy.
    let patch = r#"{"spec":{"services":{"groups":{"replicas":2}}}}"#;
    kubectl(&[
        "-n",
        ns,
        "patch",
        "chatcluster",
        &args.cluster,
        "--type",
        "merge",
        "-p",
        patch,
    ])?;
    let deployment = format!("{}-groups", args.cluster);
    wait_until("two ready groups pods", Duration::from_secs(300), || {
        Ok(kubectl(&[
            "-n",
            ns,
            "get",
            "deployment",
            &deployment,
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])? == "2")
    })
    .await?;
    let selector = format!(
        "chatcluster.io/cluster={},chatcluster.io/component=groups",
        args.cluster
    );
    let pods = kubectl(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &selector,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let pods: Vec<&str> = pods.split_whitespace().collect();
    ensure!(pods.len() == 2, "groups pods: {pods:?}");
    let served = |pod: &str| -> Result<f64> {
        let metrics = kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}:9090/proxy/metrics"),
        ])?;
        Ok(metrics
            .lines()
            .filter(|l| l.starts_with("chatd_requests_total") && l.contains("groups"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    };
    let before: Vec<f64> = pods.iter().map(|p| served(p)).collect::<Result<_>>()?;
    let mut grew = vec![false; pods.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while grew.iter().any(|g| !g) {
        ensure!(
            Instant::now() < deadline,
            "Envoy did not send calls to both groups pods: {pods:?}"
        );
        for _ in 0..20 {
            groups
                .history(authed(
                    &alice,
                    HistoryRequest {
                        conversation_id: group.id,
                        limit: 1,
                        ..Default::default()
                    },
                )?)
                .await?;
        }
        for (i, pod) in pods.iter().enumerate() {
            grew[i] = served(pod)? > before[i];
        }
    }
    println!("e2e: both groups pods serve calls through Envoy");

    // 4. The firewall, with the database image (it has bash) as a probe.
    let image = kubectl(&[
        "-n",
        ns,
        "get",
        "statefulset",
        &format!("{}-db-primary", args.cluster),
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    let target = format!("{}-db-primary", args.cluster);
    let stranger = probe(ns, &image, "probe-stranger", "app=probe", &target).await?;
    let service = probe(
        ns,
        &image,
        "probe-service",
        &format!(
            "chatcluster.io/cluster={},chatcluster.io/component=groups",
            args.cluster
        ),
        &target,
    )
    .await?;
    ensure!(
        (stranger.as_str(), service.as_str()) == ("closed", "open"),
        "the database is {stranger} to an unlabelled pod and {service} to a chat service's"
    );
    println!("e2e: the database refuses pods outside its allowed set");
    println!("e2e: ok");
    Ok(())
}

/// Whether a pod labelled `labels` in `ns` can open a TCP connection to `host`:3306: `open`
/// or `closed`, as the pod prints it.
async fn probe(ns: &str, image: &str, name: &str, labels: &str, host: &str) -> Result<String> {
    // Restricted, as the namespace may enforce: no root, no privilege, no capability.
    let overrides = serde_json::json!({ "spec": {
        "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": { "type": "RuntimeDefault" } },
        "containers": [{
            "name": name,
            "image": image,
            "command": ["bash", "-c", format!("if timeout 5 bash -c '</dev/tcp/{host}/3306'; then echo open; else echo closed; fi")],
            "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
        }],
    }});
    let _ = kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        name,
        "--ignore-not-found",
        "--wait",
    ]);
    kubectl(&[
        "-n",
        ns,
        "run",
        name,
        "--image",
        image,
        "--restart=Never",
        "--labels",
        labels,
        "--overrides",
        &overrides.to_string(),
    ])?;
    wait_until(
        &format!("probe {name} done"),
        Duration::from_secs(120),
        || {
            Ok(kubectl(&[
                "-n",
                ns,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase}",
            ])? == "Succeeded")
        },
    )
    .await?;
    let said = kubectl(&["-n", ns, "logs", name])?;
    let _ = kubectl(&["-n", ns, "delete", "pod", name, "--wait=false"]);
    Ok(said.trim().to_string())
}
