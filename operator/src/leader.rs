//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles. The same protocol as client-go's: the holder renews well before the
//! lease expires; anyone may take an expired lease; optimistic concurrency (resourceVersion)
//! makes every take-over a compare-and-swap; a leader that cannot renew in time steps down.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tracing::{info, warn};

use crate::{Error, Result};

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (shorter than the lease).
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for the lease `name`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// A candidate named `identity` (its pod name) for the Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    fn lease_spec(&self, acquired: Timestamp, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Take the lease if it is free or expired, renew it if held. Returns whether this
    /// candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.lease_spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        let expires = spec.renew_time.as_ref().and_then(|t| {
            t.0.checked_add(SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(0),
            )))
            .ok()
        });
        let expired = expires.is_none_or(|e| e < now);
        if held && !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = match (&spec.acquire_time, mine) {
            (Some(t), true) => t.0,
            _ => now,
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(self.lease_spec(acquired, now, transitions)),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote first: they hold it (or renewed it).
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the lease up so another replica can take over at once instead of waiting for it
    /// to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current.metadata.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Wait until elected.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, lease = %self.name, "cannot read the leader Lease"),
            }
            sleep(self.timing.retry_period).await;
        }
    }

    /// Run `work` as leader (call [`acquire`](Self::acquire) first), renewing the lease. If the
    /// lease is lost, `work` is dropped and an error returned: the caller should exit so that
    /// it can never act beside the new leader. When `work` ends the lease is released.
    pub async fn lead<F: Future>(&self, work: F) -> Result<F::Output> {
        let mut tick = interval(self.timing.retry_period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => {
                    if let Err(e) = self.release().await {
                        warn!(error = %e, "cannot release the leader Lease");
                    }
                    return Ok(out);
                }
                _ = tick.tick() => match self.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => return Err(Error::LostLease(self.name.clone())),
                    Err(e) => {
                        warn!(error = %e, "cannot renew the leader Lease");
                        if renewed.elapsed() > self.timing.renew_deadline {
                            return Err(Error::LostLease(self.name.clone()));
                        }
                    }
                },
            }
        }
    }
}
