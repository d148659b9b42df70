//! Which server was the primary when the runner last looked, kept beside the data: a restart
//! brings the cluster up with the same primary, not the plan's first (which may be behind).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{error::RunError, plan::Plan, prepare::write_atomically};
use crate::topology::status::TopologyStatus;

/// What survives a restart besides the servers' data: which server is the primary.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    primary: Option<String>,
}

/// Note the primary, when it takes writes, for the next run to start with it.
pub(super) fn remember_primary(path: &Path, db: &TopologyStatus) -> Result<(), RunError> {
    if !db.primary_ready {
        return Ok(());
    }
    let state = State {
        primary: Some(db.primary.clone()),
    };
    let text = serde_json::to_string(&state).unwrap_or_default();
    if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        write_atomically(path, &text)?;
    }
    Ok(())
}

/// The primary the last run left, if the plan still has it; else the plan's first.
pub(super) fn remembered_primary(plan: &Plan) -> String {
    std::fs::read_to_string(&plan.files.state)
        .ok()
        .and_then(|t| serde_json::from_str::<State>(&t).ok())
        .and_then(|s| s.primary)
        .filter(|p| plan.databases.iter().any(|d| &d.name == p))
        .unwrap_or_else(|| plan.first_primary().to_string())
}
