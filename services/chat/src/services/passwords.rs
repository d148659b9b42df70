//! Password checks with a bounded cost. One Argon2id hash takes 19 MiB and tens of
//! milliseconds of a core, so a flood of logins must not run them all at once (64 at once once
//! took the auth chatd from 218 MiB to 1.2 GiB): hashes run on [`slots`] threads of their own,
//! started once, each hashing in one block of memory it allocates once and reuses (so the
//! allocator keeps nothing more between hashes); a request waits at most [`QUEUE_WAIT`] for
//! its hash to start in a bounded queue, and one that finds the queue full is refused as
//! RESOURCE_EXHAUSTED at once.
//! Before any hash, each account's attempts are charged to its own token bucket, so guessing
//! one account's password is throttled whether the guesses are right or wrong, and an unknown
//! account costs the same hash as a known one (its answer says nothing about existence).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use chatcluster_common::sync::lock;
use rand::RngCore;
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

/// Argon2id's memory, in KiB: OWASP's first recommended setting (19 MiB, 2 passes, 1 lane),
/// written out so that a library upgrade cannot change what a hash costs.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id's passes over its memory.
pub const PASSES: u32 = 2;
/// The most memory a stored hash may ask for (hashes made with other settings still verify).
const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// Bytes of the hash and of its salt.
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// How many hashes may run together: one per core, at most 4, each in its own 19 MiB.
pub fn slots() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(2)
        .clamp(1, 4)
}

/// Work for a hashing thread, given the thread's reused memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// Run `argon` over `password` and `salt` into `out`, in `memory` (grown once, then reused).
fn compute(
    argon: &Argon2<'_>,
    memory: &mut Vec<Block>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if argon.params().m_cost() > MAX_MEMORY_KIB {
        return Err(Error::Internal(
            "a stored password hash asks for more memory than allowed".into(),
        ));
    }
    let blocks = argon.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let used = memory.get_mut(..blocks).unwrap_or_default();
    argon
        .hash_password_into_with_memory(password, salt, out, used)
        .map_err(|e| internal("argon2", e))
}

/// The PHC string of `password`'s hash with this module's parameters and a fresh salt.
fn hash_with(memory: &mut Vec<Block>, password: &[u8]) -> Result<String> {
    let params = Params::new(MEMORY_KIB, PASSES, 1, Some(OUTPUT_LEN))
        .map_err(|e| internal("argon2 parameters", e))?;
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let mut out = [0u8; OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    compute(&argon, memory, password, &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| internal("argon2 parameters", e))?,
        salt: Some(Salt::new(&salt).map_err(|e| internal("salt", e))?),
        hash: Some(Output::new(&out).map_err(|e| internal("hash", e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (whatever Argon2 parameters made it).
fn verify_with(memory: &mut Vec<Block>, password: &[u8], stored: &str) -> Result<bool> {
    let bad = |e: &dyn std::fmt::Display| internal("stored hash", e);
    let parsed = PasswordHash::new(stored).map_err(|e| bad(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(|e| bad(&e))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| bad(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| bad(&e))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(bad(&"no salt or no hash"));
    };
    let mut out = vec![0u8; expected.len()];
    compute(
        &Argon2::new(algorithm, version, params),
        memory,
        password,
        &salt,
        &mut out,
    )?;
    // Output's comparison takes the same time wherever the bytes differ.
    Ok(Output::new(&out).map_err(|e| bad(&e))? == expected)
}

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
        let unknown = hash_with(&mut Vec::new(), b"no account has this password")?;
        let (jobs, queue) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..slots() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    // Ends when the service (the sender) is dropped.
                    loop {
                        let next = lock(&queue).blocking_recv();
                        match next {
                            Some(job) => job(&mut memory),
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
        work: impl FnOnce(&mut Vec<Block>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, done) = oneshot::channel();
        // A request that waited its whole QUEUE_WAIT in the queue is answered, not hashed:
        // nobody waits longer than that for a hash to start.
        let deadline = std::time::Instant::now() + QUEUE_WAIT;
        let job: Job = Box::new(move |memory| {
            let result = if std::time::Instant::now() > deadline {
                Err(busy())
            } else {
                work(memory)
            };
            let _ = reply.send(result);
        });
        // A full queue refuses at once: waiting for a place would only pile up callers.
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(busy()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::Internal("the hashing threads are gone".into()));
            }
        }
        done.await
            .map_err(|_| Error::Internal("a hashing thread failed".into()))?
    }

    /// The PHC string of `password`'s hash.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.in_slot(move |memory| hash_with(memory, password.as_bytes()))
            .await
    }

    /// Whether `password` matches `hash`; `None` (no such account) costs the same and is false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.unknown.clone());
        let matches = self
            .in_slot(move |memory| verify_with(memory, password.as_bytes(), &hash))
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

    #[test]
    fn hashes_carry_their_parameters_and_older_ones_still_verify() {
        use argon2::{PasswordHasher, password_hash::PasswordVerifier};
        let mut memory = Vec::new();
        let mine = hash_with(&mut memory, b"correct horse").unwrap();
        assert!(
            mine.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{mine}"
        );
        assert!(verify_with(&mut memory, b"correct horse", &mine).unwrap());
        assert!(!verify_with(&mut memory, b"wrong horse", &mine).unwrap());
        // The library agrees with the hash made in reused memory.
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", mine.as_str())
                .is_ok()
        );
        // A hash made elsewhere with other settings (here: the library's, smaller) verifies.
        let params = Params::new(8 * 1024, 3, 1, None).unwrap();
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, b"correct horse", &other).unwrap());
        assert!(verify_with(&mut memory, b"x", "not a hash").is_err());
        // A stored hash may not make the thread allocate without bound.
        let greedy = other.replace("m=8192", "m=1048576");
        assert!(verify_with(&mut memory, b"correct horse", &greedy).is_err());
        assert_eq!(
            memory.len(),
            19 * 1024,
            "the memory grew once, to the largest hash"
        );
    }
}
