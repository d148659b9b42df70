//! Autoscaling (issue 8, in progress): the policy as a pure function of load samples
//! ([`policy`]). Its actuation — the operator setting each Deployment's replicas, the laptop
//! runner starting and stopping chatd processes — builds on it.

pub mod policy;
