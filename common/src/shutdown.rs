//! Stopping on SIGTERM or SIGINT, the same way in every binary.
//!
//! In a `FROM scratch` image the binary is PID 1, and the kernel gives PID 1 no default action
//! for SIGTERM: without a handler the signal is ignored and Kubernetes waits out the whole
//! termination grace period before killing the pod. So every binary installs this handler
//! first thing, before any work that could wait (a database that is not up yet, an API server
//! that does not answer), and races that work against [`Shutdown::wait`].

use std::future::Future;

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// A handle on "a stop was asked for". Cheap to clone; every clone sees the same signals.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Signals received so far.
    signals: watch::Receiver<u32>,
}

impl Shutdown {
    /// Install the SIGTERM and SIGINT handlers now. Must be called inside a Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (tx, signals) = watch::channel(0);
        tokio::spawn(async move {
            for n in 1..=2 {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                };
                if n == 1 {
                    tracing::info!(signal = name, "stopping (again to stop at once)");
                } else {
                    tracing::warn!(signal = name, "stopping at once");
                }
                // Every handle may be gone already: then nobody is left to tell.
                let _ = tx.send(n);
            }
        });
        Ok(Self { signals })
    }

    /// Whether a stop has been asked for.
    pub fn requested(&self) -> bool {
        *self.signals.borrow() >= 1
    }

    /// Completes once `n` signals have arrived.
    fn after(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut signals = self.signals.clone();
        async move {
            // An error means the signal task is gone, which happens only after its last send.
            let _ = signals.wait_for(|got| *got >= n).await;
        }
    }

    /// Completes once a stop is asked for (at once if it already was). The future owns its
    /// own handle, so it can be handed to a server's graceful-shutdown hook.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.after(1)
    }

    /// Completes on a second signal: whoever is stopping gracefully should give up and stop
    /// now (a second Ctrl-C while a slow stop goes on).
    pub fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.after(2)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{Signal, raise};

    use super::*;

    /// One test for both signals: signal handlers are per process, so two tests raising
    /// signals in parallel would see each other's.
    #[tokio::test]
    async fn a_signal_completes_every_wait_and_a_second_one_forces() {
        for (first, second) in [
            (Signal::SIGTERM, Signal::SIGINT),
            (Signal::SIGINT, Signal::SIGTERM),
        ] {
            let shutdown = Shutdown::install().unwrap();
            let before = tokio::spawn(shutdown.wait());
            let forced = tokio::spawn(shutdown.forced());
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!shutdown.requested());
            assert!(!before.is_finished());

            raise(first).unwrap();
            tokio::time::timeout(Duration::from_secs(2), before)
                .await
                .expect("a waiting task sees the signal")
                .unwrap();
            assert!(shutdown.requested());
            tokio::time::timeout(Duration::from_millis(100), shutdown.clone().wait())
                .await
                .expect("a wait after the signal completes at once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!forced.is_finished(), "one signal does not force");

            raise(second).unwrap();
            tokio::time::timeout(Duration::from_secs(2), forced)
                .await
                .expect("a second signal forces")
                .unwrap();
        }
    }
}
