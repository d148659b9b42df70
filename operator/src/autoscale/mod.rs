//! Autoscaling: the policy as a pure function of load samples ([`policy`]), the load signal and
//! the spec's targets ([`signal`]). The Kubernetes reconciler and the local runner both feed
//! samples to the same [`policy::Autoscaler`] and carry out its decisions.

pub mod policy;
pub mod signal;
