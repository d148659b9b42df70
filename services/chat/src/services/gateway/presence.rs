//! Typing and presence: ephemeral, through the hub and the broker only, never the database.
//! Each carries how long it holds, so a client forgets it by itself when nothing renews it
//! (a gateway that died says nothing more).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chatcluster_common::sync::lock;

use crate::pb::{
    gateway::{ConversationRef, Presence, PresenceState, Typing, session_event},
    internal::{Ephemeral, ephemeral},
};

/// How long "typing" holds unless said again.
pub const TYPING_MS: u32 = 6_000;
/// How long a presence holds unless said again.
pub const PRESENCE_MS: u32 = 90_000;
/// How often a session says its presence again, well within [`PRESENCE_MS`].
pub const PRESENCE_EVERY: Duration = Duration::from_secs(60);
/// A session announces a change of presence at most this often; a later one goes out when
/// the gap has passed (each announcement is one message per conversation of the user).
pub const PRESENCE_CHANGE_GAP: Duration = Duration::from_secs(5);

/// The sessions of each user on this replica: the last to close says "offline".
#[derive(Default)]
pub struct Online {
    sessions: Mutex<HashMap<u64, usize>>,
}

impl Online {
    /// One more session of `user`.
    pub fn enter(&self, user: u64) {
        *lock(&self.sessions).entry(user).or_default() += 1;
    }

    /// One session of `user` fewer: whether it was their last here.
    pub fn leave(&self, user: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(&user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                sessions.remove(&user);
                true
            }
        }
    }
}

/// `user`'s presence, to publish.
pub fn presence(user: u64, state: PresenceState) -> Ephemeral {
    Ephemeral {
        user_id: user,
        kind: Some(ephemeral::Kind::Presence(state as i32)),
    }
}

/// `user` typing, to publish.
pub fn typing(user: u64) -> Ephemeral {
    Ephemeral {
        user_id: user,
        kind: Some(ephemeral::Kind::Typing(true)),
    }
}

/// What the session tells its client of an ephemeral event in `conversation`, if anything:
/// nothing of the user themself, nor a presence told less than half its life ago (a user in
/// several of the client's conversations is announced in each).
pub struct Seen {
    presences: HashMap<u64, (i32, Instant)>,
}

impl Seen {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self {
            presences: HashMap::new(),
        }
    }

    /// The event for `e` heard in `conversation` by `me`'s session, if it is news.
    pub fn event(
        &mut self,
        me: u64,
        conversation: ConversationRef,
        e: &Ephemeral,
    ) -> Option<session_event::Kind> {
        if e.user_id == me {
            return None;
        }
        match e.kind? {
            ephemeral::Kind::Typing(_) => Some(session_event::Kind::Typing(Typing {
                conversation: Some(conversation),
                user_id: e.user_id,
                for_ms: TYPING_MS,
            })),
            ephemeral::Kind::Presence(state) => {
                let fresh = Duration::from_millis(u64::from(PRESENCE_MS) / 2);
                if let Some((told, at)) = self.presences.get(&e.user_id)
                    && *told == state
                    && at.elapsed() < fresh
                {
                    return None;
                }
                if self.presences.len() > 10_000 {
                    self.presences.retain(|_, (_, at)| at.elapsed() < fresh);
                }
                self.presences.insert(e.user_id, (state, Instant::now()));
                Some(session_event::Kind::Presence(Presence {
                    user_id: e.user_id,
                    state,
                    for_ms: PRESENCE_MS,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: u64) -> ConversationRef {
        ConversationRef {
            kind: crate::pb::gateway::Kind::Group as i32,
            id,
        }
    }

    #[test]
    fn a_presence_is_told_once_per_change_not_once_per_shared_conversation() {
        let mut seen = Seen::new();
        let online = presence(2, PresenceState::Online);
        assert!(seen.event(1, group(10), &online).is_some());
        assert!(
            seen.event(1, group(11), &online).is_none(),
            "the same, again"
        );
        let idle = presence(2, PresenceState::Idle);
        assert!(seen.event(1, group(11), &idle).is_some(), "a change");
        assert!(
            seen.event(1, group(10), &presence(1, PresenceState::Idle))
                .is_none(),
            "myself"
        );
    }

    #[test]
    fn typing_is_told_each_time_with_its_lifetime() {
        let mut seen = Seen::new();
        for _ in 0..2 {
            let Some(session_event::Kind::Typing(t)) = seen.event(1, group(10), &typing(2)) else {
                panic!("typing");
            };
            assert_eq!((t.user_id, t.for_ms), (2, TYPING_MS));
        }
        assert!(seen.event(2, group(10), &typing(2)).is_none());
    }

    #[test]
    fn the_last_session_of_a_user_goes_offline() {
        let online = Online::default();
        online.enter(7);
        online.enter(7);
        assert!(!online.leave(7));
        assert!(online.leave(7));
        assert!(online.leave(8), "never entered: nothing to keep");
    }
}
