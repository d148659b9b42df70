//! One read of a conversation's new messages for every session on this replica that follows
//! it: the first session a hint wakes reads the range, the others find it cached. With each
//! read comes, from the same database snapshot, which of the followers may read it, so a
//! message committed after a member was removed is never handed to them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, Weak},
};

use chatcluster_common::sync::lock;
use sqlx::Connection as _;

use crate::{
    db::{DELIVERY_WAIT, Db},
    error::{Error, Result},
    fanout::Topic,
    pb::chat::Message,
    store::{
        gateway::allowed_among,
        messages::{self, Readable, Tables},
    },
};

/// Messages a feed keeps for followers that wake late, per conversation.
const CACHED: usize = 256;
/// Messages one read takes.
const BATCH: u32 = 200;

/// Who may read the messages of one read.
#[derive(Debug, Default)]
struct Verdicts {
    /// The followers asked.
    asked: HashSet<u64>,
    /// Those the access rule let read.
    allowed: HashSet<u64>,
}

/// What a read said about one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, in the snapshot the messages came from.
    Allowed,
    /// Denied there (the replica may lack a grant: the primary confirms).
    Denied,
    /// Not asked (they followed after the read): check.
    Unknown,
}

#[derive(Default)]
struct Cache {
    /// Consecutive seqs, oldest first, each with the verdicts of the read it came from.
    messages: VecDeque<(Arc<Message>, Arc<Verdicts>)>,
}

impl Cache {
    fn first(&self) -> Option<u64> {
        self.messages.front().map(|(m, _)| m.seq)
    }

    fn last(&self) -> Option<u64> {
        self.messages.back().map(|(m, _)| m.seq)
    }

    /// The cached messages after `after`, when the cache reaches back to it.
    fn after(&self, after: u64, user: u64) -> Option<Vec<(Arc<Message>, Verdict)>> {
        let (first, last) = (self.first()?, self.last()?);
        if after + 1 < first || after > last {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        Some(
            self.messages
                .iter()
                .skip(skip)
                .map(|(m, v)| (m.clone(), verdict(v, user)))
                .collect(),
        )
    }
}

impl Cache {
    /// Add `batch`, read after `from` with `verdicts`, up to its first gap (the replica is
    /// missing a message: the session reads again later); keep the newest [`CACHED`]; and
    /// return what follows `after` for `user` — taken before the trim, so a follower far
    /// behind does not lose its own read.
    fn extend(
        &mut self,
        from: u64,
        batch: Vec<Message>,
        verdicts: &Arc<Verdicts>,
        after: u64,
        user: u64,
    ) -> Vec<(Arc<Message>, Verdict)> {
        for (next, message) in (from + 1..).zip(batch) {
            if message.seq != next {
                break;
            }
            self.messages
                .push_back((Arc::new(message), verdicts.clone()));
        }
        let out = self.after(after, user).unwrap_or_default();
        while self.messages.len() > CACHED {
            self.messages.pop_front();
        }
        out
    }
}

fn verdict(v: &Verdicts, user: u64) -> Verdict {
    if v.allowed.contains(&user) {
        Verdict::Allowed
    } else if v.asked.contains(&user) {
        Verdict::Denied
    } else {
        Verdict::Unknown
    }
}

struct Feed {
    tables: Tables,
    conversation: u64,
    cache: tokio::sync::Mutex<Cache>,
    /// Followers on this replica, by user, with how many of their sessions.
    users: Mutex<HashMap<u64, usize>>,
}

/// The feeds of this replica's followed conversations; a feed lives while a session follows
/// its conversation.
#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<Topic, Weak<Feed>>>,
}

/// One session's place on a feed; dropping it stops following.
pub struct Follow {
    feed: Arc<Feed>,
    user: u64,
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut users = lock(&self.feed.users);
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Feeds {
    /// Follow `topic` (a conversation in `tables`) as `user`.
    pub fn follow(&self, topic: &Topic, tables: Tables, user: u64) -> Follow {
        let mut feeds = lock(&self.feeds);
        let feed = match feeds.get(topic).and_then(Weak::upgrade) {
            Some(feed) => feed,
            None => {
                // Forget the feeds nobody follows any more while we are here.
                feeds.retain(|_, f| f.strong_count() > 0);
                let feed = Arc::new(Feed {
                    tables,
                    conversation: topic.conversation,
                    cache: tokio::sync::Mutex::new(Cache::default()),
                    users: Mutex::new(HashMap::new()),
                });
                feeds.insert(topic.clone(), Arc::downgrade(&feed));
                feed
            }
        };
        *lock(&feed.users).entry(user).or_default() += 1;
        Follow { feed, user }
    }

    /// Conversations with a feed here.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.feeds)
            .values()
            .filter(|f| f.strong_count() > 0)
            .count()
    }
}

impl Follow {
    /// The messages after `after`, up to `upto` at least when the database has them (at most
    /// a batch), each with what the read said of this follower. `token`: a write the read
    /// must see.
    pub async fn read(
        &self,
        db: &Db,
        after: u64,
        upto: u64,
        token: Option<&str>,
    ) -> Result<Vec<(Arc<Message>, Verdict)>> {
        let mut cache = self.feed.cache.lock().await;
        if let Some(hit) = cache.after(after, self.user)
            && cache.last().is_some_and(|last| last >= upto)
        {
            return Ok(hit);
        }
        let (first, last) = (cache.first(), cache.last());
        let from = match (first, last) {
            // The cache reaches back to `after`: read what follows it, once for everyone.
            (Some(first), Some(last)) if first <= after + 1 && after <= last => last,
            // An old cursor (a session resuming): its own read, with its own check.
            (Some(first), _) if after + 1 < first => {
                drop(cache);
                return self.read_alone(db, after, token).await;
            }
            // Nothing cached, or the cache is behind `after`: start it again there.
            _ => {
                cache.messages.clear();
                after
            }
        };
        let mut conn = db.reader_within(token, DELIVERY_WAIT).await?;
        let users: Vec<u64> = lock(&self.feed.users).keys().copied().collect();
        let (t, conv) = (self.feed.tables, self.feed.conversation);
        // One snapshot for the messages and the verdicts (InnoDB's repeatable read).
        let mut tx = conn.begin().await?;
        let batch = messages::range(&mut tx, t, conv, from, BATCH).await?;
        let allowed = allowed_among(&mut tx, t, conv, &users).await?;
        tx.commit().await?;
        let verdicts = Arc::new(Verdicts {
            asked: users.into_iter().collect(),
            allowed,
        });
        Ok(cache.extend(from, batch, &verdicts, after, self.user))
    }

    /// A read for this follower alone, its access checked in the same statement
    /// (PERMISSION_DENIED when the replica denies it).
    async fn read_alone(
        &self,
        db: &Db,
        after: u64,
        token: Option<&str>,
    ) -> Result<Vec<(Arc<Message>, Verdict)>> {
        let mut conn = db.reader_within(token, DELIVERY_WAIT).await?;
        let (t, conv) = (self.feed.tables, self.feed.conversation);
        let read = messages::readable_range(&mut conn, t, conv, self.user, after, BATCH).await?;
        Ok(match read {
            // Up to the first gap, as a shared read does.
            Readable::Allowed(batch) => (after + 1..)
                .zip(batch)
                .take_while(|(next, m)| m.seq == *next)
                .map(|(_, m)| (Arc::new(m), Verdict::Allowed))
                .collect(),
            // The session confirms on the primary, and leaves the conversation.
            Readable::Denied => {
                return Err(Error::PermissionDenied(format!("conversation {conv}")));
            }
            Readable::Nothing => vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Message {
        Message {
            conversation_id: 7,
            seq,
            ..Default::default()
        }
    }

    fn cache(seqs: std::ops::RangeInclusive<u64>, asked: &[u64], allowed: &[u64]) -> Cache {
        let v = Arc::new(Verdicts {
            asked: asked.iter().copied().collect(),
            allowed: allowed.iter().copied().collect(),
        });
        Cache {
            messages: seqs.map(|s| (Arc::new(message(s)), v.clone())).collect(),
        }
    }

    #[test]
    fn the_cache_answers_only_cursors_it_reaches_back_to() {
        let c = cache(5..=9, &[1, 2], &[1]);
        let seqs = |after| {
            c.after(after, 1)
                .map(|v| v.iter().map(|(m, _)| m.seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(4), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(seqs(7), Some(vec![8, 9]));
        assert_eq!(seqs(9), Some(vec![]), "caught up");
        assert_eq!(seqs(3), None, "older than the cache: its own read");
        assert_eq!(seqs(10), None, "past the cache: read again");
        assert_eq!(Cache::default().after(0, 1).map(|v| v.len()), None);
    }

    #[test]
    fn a_follower_far_behind_gets_its_whole_read_though_the_cache_is_trimmed() {
        // Cached 101..=356; a follower at 120 reads 357..=556: the cache keeps the newest 256
        // (301..=556), the follower gets 121..=556, nothing skipped.
        let mut c = cache(101..=356, &[1], &[1]);
        let batch: Vec<Message> = (357..=556).map(message).collect();
        let v = Arc::new(Verdicts::default());
        let got: Vec<u64> = c
            .extend(356, batch, &v, 120, 1)
            .iter()
            .map(|(m, _)| m.seq)
            .collect();
        assert_eq!(got, (121..=556).collect::<Vec<_>>());
        assert_eq!((c.first(), c.last()), (Some(301), Some(556)));
    }

    #[test]
    fn a_read_stops_at_its_first_gap() {
        let mut c = Cache::default();
        let batch = [1, 2, 4, 5].map(message).to_vec();
        let v = Arc::new(Verdicts::default());
        let got: Vec<u64> = c
            .extend(0, batch, &v, 0, 1)
            .iter()
            .map(|(m, _)| m.seq)
            .collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(c.last(), Some(2));
    }

    #[test]
    fn verdicts_say_allowed_denied_or_not_asked() {
        let c = cache(1..=1, &[1, 2], &[1]);
        let of = |user| c.after(0, user).unwrap()[0].1;
        assert_eq!(of(1), Verdict::Allowed);
        assert_eq!(of(2), Verdict::Denied);
        assert_eq!(of(3), Verdict::Unknown);
    }

    #[tokio::test]
    async fn a_feed_lives_while_someone_follows_it() {
        let feeds = Feeds::default();
        let topic = Topic {
            service: "groups",
            conversation: 7,
        };
        let t = crate::store::groups::TABLES;
        let a = feeds.follow(&topic, t, 1);
        let b = feeds.follow(&topic, t, 1);
        let c = feeds.follow(&topic, t, 2);
        assert!(Arc::ptr_eq(&a.feed, &c.feed), "one feed per conversation");
        assert_eq!(lock(&a.feed.users).len(), 2);
        drop(b);
        assert_eq!(lock(&a.feed.users).get(&1), Some(&1));
        drop((a, c));
        assert_eq!(feeds.len(), 0);
    }
}
