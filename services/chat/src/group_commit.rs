//! Group commit: concurrent sends of one service written by one statement and one commit.
//!
//! A send hands its checked message to the service's [`Committer`] and waits. Each of
//! [`WRITERS`] tasks takes the first message waiting and every one queued behind it (at most
//! [`MAX_BATCH`]), writes them with one INSERT ([`store::batch`]), and answers each sender
//! after the commit returned — with semi-sync, after a replica acknowledged it — never
//! before. There is no timer: a lone send goes at once, and while the writers wait on the
//! database new sends queue, so the next batch takes them all and batches grow with the
//! load, as the database's own group commit does. Two sends of one sender to one
//! conversation never share a batch (the second waits for the next one), so every row the
//! INSERT returns names its message.

use std::{collections::HashSet, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{Instrument, info_span, warn};

use crate::{
    db::Db,
    error::{Error, Result},
    store::{
        batch::{Insert, InsertError},
        messages::{NewMessage, Tables, Written},
    },
    token::now_ms,
};

/// Most messages one INSERT writes.
pub const MAX_BATCH: usize = 64;
/// Batches in flight at once per service: while one waits for its commit the next gathers.
/// Two, measured: four split the queue into small batches (more commits, more fsyncs, and
/// about half the throughput at 16 senders); one leaves the queue idle during each commit.
pub const WRITERS: usize = 2;
/// Sends waiting for a writer, at most; more wait to enqueue (within their deadline).
const QUEUE: usize = 1024;

/// What became of a send handed to the [`Committer`].
#[derive(Debug)]
pub enum Outcome {
    /// Stored and committed.
    Written(Written),
    /// Not written: the batch left it out (no access, no conversation, a client key already
    /// used) or the server refused the batch. Send it by itself, which says why.
    Alone(NewMessage),
}

struct Pending {
    message: NewMessage,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// The group commit of one service's sends.
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Writers for the sends of the service with tables `t`; None when the database cannot
    /// write a batch in one statement (see `Dialect::insert_returning`). The writers end
    /// when the committer is dropped.
    pub fn start(db: Arc<Db>, t: Tables) -> Option<Self> {
        if !db.dialect().insert_returning {
            return None;
        }
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let insert = Insert::new(t);
        for _ in 0..WRITERS {
            tokio::spawn(write_batches(
                db.clone(),
                t,
                insert.clone(),
                waiting.clone(),
            ));
        }
        Some(Self { queue })
    }

    /// Write `message` with whichever sends are waiting too.
    pub async fn send(&self, message: NewMessage) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { message, reply })
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("a batch writer stopped without answering".into()))?
    }
}

/// One writer: gather a batch, write it, answer its senders; until the committer is dropped.
async fn write_batches(
    db: Arc<Db>,
    t: Tables,
    insert: Insert,
    waiting: Arc<Mutex<mpsc::Receiver<Pending>>>,
) {
    let mut held = Vec::new();
    while let Some(batch) = gather(&waiting, &mut held).await {
        let span = info_span!("group_commit", table = t.messages, messages = batch.len());
        write(&db, &insert, batch).instrument(span).await;
    }
}

/// The next batch: the messages `held` back from the last one first, then whatever is queued
/// (waiting for one when there is nothing), leaving in `held` those whose sender already has
/// a message to the same conversation in this batch. None when the committer is gone and
/// nothing is held.
async fn gather(
    waiting: &Mutex<mpsc::Receiver<Pending>>,
    held: &mut Vec<Pending>,
) -> Option<Vec<Pending>> {
    let mut batch = Batch::default();
    for p in std::mem::take(held) {
        batch.admit(p, held);
    }
    let mut queue = if batch.sends.is_empty() {
        let mut queue = waiting.lock().await;
        let first = queue.recv().await?;
        batch.admit(first, held);
        queue
    } else {
        // Messages in hand go now: another writer may hold the queue, waiting for a send.
        match waiting.try_lock() {
            Ok(queue) => queue,
            Err(_) => return Some(batch.sends),
        }
    };
    while batch.sends.len() + held.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(p) => batch.admit(p, held),
            Err(_) => break,
        }
    }
    Some(batch.sends)
}

#[derive(Default)]
struct Batch {
    sends: Vec<Pending>,
    pairs: HashSet<(u64, u64)>,
}

impl Batch {
    /// Take `p` into the batch, or into `held` when its sender and conversation are already
    /// in; a send whose caller has gone (cancelled, deadline passed) is dropped unwritten.
    fn admit(&mut self, p: Pending, held: &mut Vec<Pending>) {
        if p.reply.is_closed() {
            return;
        }
        if self
            .pairs
            .insert((p.message.conversation_id, p.message.sender_id))
        {
            self.sends.push(p);
        } else {
            held.push(p);
        }
    }
}

/// Answer every one of `sends` UNAVAILABLE, with `why`.
fn unavailable(sends: Vec<Pending>, why: &str) {
    for p in sends {
        let _ = p.reply.send(Err(Error::Unavailable(why.into())));
    }
}

/// Write `sends` with one statement and answer each.
async fn write(db: &Db, insert: &Insert, sends: Vec<Pending>) {
    let mut conn = match db.primary().await.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            // Each alone would wait for the pool again: tell them now.
            warn!(error = %e, "no primary connection for a batch");
            return unavailable(sends, "database unavailable, retry");
        }
    };
    let outcome = async {
        let messages: Vec<&NewMessage> = sends.iter().map(|p| &p.message).collect();
        let sent_at_ms = now_ms();
        let seqs = insert.run(&mut conn, &messages, sent_at_ms).await?;
        // Committed: a token that cannot be read only costs readers their wait for it.
        let token = if seqs.iter().any(Option::is_some) {
            db.commit_token(&mut conn).await.unwrap_or_else(|e| {
                warn!(error = %e, "no token after a batch");
                String::new()
            })
        } else {
            String::new()
        };
        Ok((seqs, sent_at_ms, token))
    }
    .await;
    match outcome {
        Ok((seqs, sent_at_ms, token)) => {
            for (p, seq) in sends.into_iter().zip(seqs) {
                let answer = match seq {
                    Some(seq) => {
                        Outcome::Written(p.message.written(seq, sent_at_ms, token.clone()))
                    }
                    None => Outcome::Alone(p.message),
                };
                let _ = p.reply.send(Ok(answer));
            }
        }
        Err(InsertError::Refused(e)) => {
            warn!(error = %e, "batch refused: its messages are sent one by one");
            for p in sends {
                let _ = p.reply.send(Ok(Outcome::Alone(p.message)));
            }
        }
        Err(InsertError::Unknown(e)) => {
            warn!(error = %e, "batch outcome unknown");
            unavailable(
                sends,
                "the database connection broke during the write: retry with the same client_key",
            );
        }
    }
}
