//! Password checks with a bounded cost. One Argon2id hash takes about 19 MiB and tens of
//! milliseconds of a core, so a flood of logins must not run them all at once (64 at once once
//! took the auth chatd from 218 MiB to 1.2 GiB): hashes run on [`slots`] threads of their own,
//! started once (so the memory each hash uses is reused, not left in a new thread's heap), a
//! request waits at most [`QUEUE_WAIT`] for its hash to start (in a bounded queue), then is
//! refused as RESOURCE_EXHAUSTED.
//! Before any hash, each account's attempts are charged to its own token bucket, so guessing
//! one account's password is throttled whether the guesses are right or wrong, and an unknown
//! account costs the same hash as a known one (its answer says nothing about existence).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use chatcluster_common::sync::lock;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::RateLimiter;
use crate::error::{Error, Result};

/// Longest a request waits for a hashing slot.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Attempts one account may make at once, then one per [`ATTEMPT_EVERY`].
pub const ATTEMPT_BURST: f64 = 10.0;
/// How often an account earns another attempt once its burst is spent.
pub const ATTEMPT_EVERY: Duration = Duration::from_secs(6);

/// Hashes waiting for a thread, at most.
const QUEUE: usize = 64;

/// How many hashes may run together: one per core, at most 4. A hash needs 19 MiB, and a
/// thread's allocator may keep a few times that between hashes (measured: about 60-75 MiB per
/// thread with glibc), so 4 stay well inside the auth pod's 512 MiB.
pub fn slots() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(2)
        .clamp(1, 4)
}

type Job = Box<dyn FnOnce() + Send>;

/// Hashing threads, per-account attempt buckets, and a hash to check unknown accounts against.
pub struct Passwords {
    jobs: mpsc::Sender<Job>,
    attempts: RateLimiter,
    unknown: String,
}

fn account_key(username: &str) -> u64 {
    let digest = Sha256::digest(username.to_lowercase().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

fn busy() -> Error {
    Error::ResourceExhausted("too many password checks at once: retry".into())
}

impl Passwords {
    /// Ready to check passwords (hashes one throwaway password, for unknown accounts).
    pub fn new() -> Result<Self> {
        let unknown = Argon2::default()
            .hash_password(b"no account has this password")
            .map_err(|e| Error::Internal(format!("argon2: {e}")))?
            .to_string();
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..slots() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // Ends when the service (the sender) is dropped.
                    loop {
                        let next = lock(&queue).blocking_recv();
                        match next {
                            Some(job) => job(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("hashing thread: {e}")))?;
        }
        Ok(Self {
            jobs,
            attempts: RateLimiter::new(1.0 / ATTEMPT_EVERY.as_secs_f64(), ATTEMPT_BURST),
            unknown,
        })
    }

    /// Charge one attempt to `username`'s bucket: RESOURCE_EXHAUSTED when it is empty.
    pub fn attempt(&self, username: &str) -> Result<()> {
        self.attempts.check(account_key(username)).map_err(|_| {
            Error::ResourceExhausted(format!(
                "too many attempts for this account: one more every {} s",
                ATTEMPT_EVERY.as_secs()
            ))
        })
    }

    async fn in_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, done) = oneshot::channel();
        // A request that waited its whole QUEUE_WAIT in the queue is answered, not hashed:
        // nobody waits longer than that for a hash to start.
        let deadline = std::time::Instant::now() + QUEUE_WAIT;
        let job: Job = Box::new(move || {
            let result = if std::time::Instant::now() > deadline {
                Err(busy())
            } else {
                work()
            };
            let _ = reply.send(result);
        });
        match tokio::time::timeout(QUEUE_WAIT, self.jobs.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Internal("the hashing threads are gone".into())),
            Err(_) => return Err(busy()),
        }
        done.await
            .map_err(|_| Error::Internal("a hashing thread failed".into()))?
    }

    /// The PHC string of `password`'s hash.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.in_slot(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("argon2: {e}")))
        })
        .await
    }

    /// Whether `password` matches `hash`; `None` (no such account) costs the same and is false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.unknown.clone());
        let matches = self
            .in_slot(move || {
                let parsed = PasswordHash::new(&hash)
                    .map_err(|e| Error::Internal(format!("stored hash: {e}")))?;
                Ok(Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attempts_are_counted_per_account_and_unknown_accounts_never_match() {
        let p = Passwords::new().unwrap();
        for _ in 0..ATTEMPT_BURST as usize {
            assert!(p.attempt("Ada").is_ok());
        }
        assert!(
            matches!(p.attempt("ada"), Err(Error::ResourceExhausted(_))),
            "case folded"
        );
        assert!(p.attempt("grace").is_ok(), "per account");
        let hash = p.hash("correct horse".into()).await.unwrap();
        assert!(
            p.verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!p.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(
            !p.verify("no account has this password".into(), None)
                .await
                .unwrap()
        );
    }
}
