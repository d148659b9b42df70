//! From inputs to snapshots, at two speeds (and only consistent ones are published): configuration changes are debounced (100 ms,
//! capped at 1 s) because they rebuild listeners and routes; endpoint changes are applied at
//! once, and since unchanged resources keep their version and encoding, only the affected
//! clusters' endpoints go out.

use std::{sync::Arc, time::Duration};

use chatcluster_types::xds::XdsConfig;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, error};

use crate::{
    discovery::Discovered,
    model::State,
    resources::{Snapshot, snapshot},
};

/// Quiet time before a configuration change is applied.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a configuration change waits while changes keep coming.
pub const DEBOUNCE_CAP: Duration = Duration::from_secs(1);

/// Build a snapshot from the current inputs, reusing what did not change.
pub fn rebuild(
    config: &XdsConfig,
    discovered: &Discovered,
    previous: Option<&Snapshot>,
) -> Snapshot {
    let state = State {
        config: config.clone(),
        endpoints: discovered.endpoints.clone(),
        certificate: discovered.certificate.clone(),
    };
    snapshot(&state, previous)
}

/// The snapshot to start with: that of the first inputs when it is consistent, else an empty
/// one (an Envoy with nothing waits; one with dangling references stalls).
pub fn first(config: &XdsConfig, discovered: &Discovered) -> Snapshot {
    let snapshot = rebuild(config, discovered, None);
    if consistent(&snapshot) {
        snapshot
    } else {
        Snapshot::default()
    }
}

/// Whether `snapshot` may be published; logs what is wrong with it otherwise.
fn consistent(snapshot: &Snapshot) -> bool {
    let problems = snapshot.inconsistencies();
    for problem in &problems {
        error!(%problem, "inconsistent snapshot not published");
    }
    problems.is_empty()
}

/// Keep `out` at the snapshot of the latest inputs until both inputs close.
pub async fn run(
    mut config: watch::Receiver<XdsConfig>,
    mut discovered: watch::Receiver<Discovered>,
    out: watch::Sender<Arc<Snapshot>>,
) {
    loop {
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                // Let a burst of edits settle into one rebuild.
                let started = Instant::now();
                loop {
                    let quiet = tokio::time::sleep(DEBOUNCE);
                    tokio::select! {
                        _ = quiet => break,
                        again = config.changed() => {
                            if again.is_err() || started.elapsed() > DEBOUNCE_CAP {
                                break;
                            }
                        }
                    }
                }
            }
            changed = discovered.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let previous = out.borrow().clone();
        let next = rebuild(
            &config.borrow_and_update(),
            &discovered.borrow_and_update(),
            Some(&previous),
        );
        if next == *previous {
            continue;
        }
        // Envoy would stall on a dangling reference: keep serving the last good snapshot.
        if consistent(&next) {
            debug!("new snapshot");
            out.send_replace(Arc::new(next));
        }
    }
}
