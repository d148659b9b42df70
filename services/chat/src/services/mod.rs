//! The gRPC services and what they share: the caller's identity, read-your-writes tokens, rate
//! limits, and the message operations every conversation kind offers.

pub mod auth;
pub mod conversation;
pub mod dms;
#[cfg(test)]
mod fuzz;
pub mod gateway;
pub mod groups;
pub mod passwords;
pub mod revocations;
pub mod servers;

use chatcluster_common::sync::lock;
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::future::BoxFuture;
use sqlx::{MySql, MySqlConnection, pool::PoolConnection};
use tokio::sync::watch;
use tonic::{Request, Response, metadata::MetadataValue};

use self::revocations::Revocations;
use crate::{
    db::Db,
    error::{Error, Result},
    fanout::{Hub, Topic},
    token::{Claims, Verifier},
};

/// What a call or stream of a revoked session is told.
pub const LOGGED_OUT: &str = "this session was logged out: log in again";

/// A pooled database connection.
pub type PooledConn = PoolConnection<MySql>;

/// Response and request header carrying a consistency token (see [`crate::db`]).
pub const CONSISTENCY_HEADER: &str = "x-chat-consistency";

/// A per-user token bucket.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_second` sustained, up to `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request's worth for `user`, or refuse.
    pub fn check(&self, user: u64) -> Result<()> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() > 100_000 {
            // Forget full buckets (idle users) so the map stays bounded.
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (level, at)| (*level + at.elapsed().as_secs_f64() * rate) < burst);
        }
        let (level, at) = buckets.entry(user).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *level < 1.0 {
            return Err(Error::ResourceExhausted(format!(
                "rate limit: at most {} requests per second",
                self.per_second
            )));
        }
        *level -= 1.0;
        Ok(())
    }
}

/// What every service needs.
pub struct App {
    /// The database.
    pub db: Arc<Db>,
    /// Checks access tokens.
    pub verifier: Verifier,
    /// Local subscribers and peer hints.
    pub hub: Arc<Hub>,
    /// Limits writes per user.
    pub limiter: RateLimiter,
    /// Sessions logged out before their tokens expire.
    pub revocations: Arc<Revocations>,
    /// The last consistency token of each user who wrote through this replica.
    tokens: Mutex<HashMap<u64, String>>,
    /// Open streams per user and kind on this replica.
    subscriptions: Mutex<HashMap<(u64, StreamKind), u32>>,
    /// The services whose safety poll runs on this replica (see
    /// [`conversation::start_safety_poll`]).
    safety_polls: Mutex<HashSet<&'static str>>,
    /// Turns true when the server drains: streams end.
    pub shutdown: watch::Receiver<bool>,
}

impl App {
    /// The shared state.
    pub fn new(
        db: Arc<Db>,
        verifier: Verifier,
        hub: Arc<Hub>,
        limiter: RateLimiter,
        revocations: Arc<Revocations>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            verifier,
            hub,
            limiter,
            revocations,
            tokens: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            safety_polls: Mutex::new(HashSet::new()),
            shutdown,
        })
    }

    /// A place for one more of `user`'s subscriptions, held while the stream lives;
    /// RESOURCE_EXHAUSTED beyond [`MAX_SUBSCRIPTIONS_PER_USER`] (each open stream costs this
    /// replica a task and the database a query every few seconds).
    pub fn subscription_slot(self: &Arc<Self>, user: u64) -> Result<SubscriptionSlot> {
        self.slot(user, StreamKind::Subscription)
    }

    /// A place for one more of `user`'s sessions, held while the stream lives;
    /// RESOURCE_EXHAUSTED beyond [`MAX_SESSIONS_PER_USER`] (each follows every conversation of
    /// the user).
    pub fn session_slot(self: &Arc<Self>, user: u64) -> Result<SubscriptionSlot> {
        self.slot(user, StreamKind::Session)
    }

    fn slot(self: &Arc<Self>, user: u64, kind: StreamKind) -> Result<SubscriptionSlot> {
        let (limit, what) = match kind {
            StreamKind::Subscription => (MAX_SUBSCRIPTIONS_PER_USER, "subscriptions"),
            StreamKind::Session => (MAX_SESSIONS_PER_USER, "sessions"),
        };
        let mut open = lock(&self.subscriptions);
        let count = open.entry((user, kind)).or_default();
        if *count >= limit {
            return Err(Error::ResourceExhausted(format!(
                "at most {limit} open {what} per user"
            )));
        }
        *count += 1;
        Ok(SubscriptionSlot {
            app: self.clone(),
            key: (user, kind),
        })
    }

    /// A connection to the primary, for writes.
    pub async fn primary_conn(&self) -> Result<PooledConn> {
        Ok(self.db.primary().await.acquire().await?)
    }

    /// The authenticated caller, whose session has not been logged out.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Claims> {
        let claims = self.verifier.authenticate(req)?;
        if self.revocations.is_revoked(&claims.sid) {
            return Err(Error::Unauthenticated(LOGGED_OUT.into()));
        }
        Ok(claims)
    }

    /// The caller, after charging one write to their rate limit.
    pub fn writer<T>(&self, req: &Request<T>) -> Result<Claims> {
        let claims = self.caller(req)?;
        self.limiter.check(claims.sub)?;
        Ok(claims)
    }

    /// A connection on which `check` (an access check) passed: a replica that has applied
    /// `token` when it grants access; when it denies, the primary decides, since the replica may
    /// lack what was created a moment ago through another chatd replica. Reads that follow use
    /// the returned connection, so they see what the check saw.
    pub async fn granted<F>(&self, token: Option<&str>, check: F) -> Result<PooledConn>
    where
        F: for<'c> Fn(&'c mut MySqlConnection) -> BoxFuture<'c, Result<()>>,
    {
        let mut conn = self.db.reader(token).await?;
        match check(&mut conn).await {
            Ok(()) => Ok(conn),
            Err(Error::NotFound(_) | Error::PermissionDenied(_)) => {
                drop(conn);
                let mut primary = self.primary_conn().await?;
                check(&mut primary).await?;
                Ok(primary)
            }
            Err(e) => Err(e),
        }
    }

    /// How a read begins: the authenticated caller and a replica connection that has applied
    /// the caller's own last write (or the request's token), so nobody misses what they did.
    pub async fn reader<T>(&self, req: &Request<T>) -> Result<(Claims, PooledConn)> {
        let caller = self.caller(req)?;
        let token = self.read_token(req, caller.sub);
        let conn = self.db.reader(token.as_deref()).await?;
        Ok((caller, conn))
    }

    /// The token a read by `user` must observe: the request's, else the user's last write here.
    pub fn read_token<T>(&self, req: &Request<T>, user: u64) -> Option<String> {
        req.metadata()
            .get(CONSISTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| lock(&self.tokens).get(&user).cloned())
    }

    /// The reply to a write `user` just committed on `conn`: `body` with the commit's token
    /// (see [`written`](Self::written)).
    pub async fn committed<T>(
        &self,
        conn: &mut MySqlConnection,
        user: u64,
        body: T,
    ) -> Result<Response<T>> {
        let token = self.db.commit_token(conn).await?;
        Ok(self.written(user, &token, body))
    }

    /// As [`committed`](Self::committed), for a write that changed who may read
    /// `conversations` of `service`, taking them from `losing`: their open streams check
    /// access again at once, and the sessions of `losing` read their conversations again.
    pub async fn access_changed<T>(
        &self,
        conn: &mut MySqlConnection,
        user: u64,
        (service, conversations): (&'static str, &[u64]),
        losing: &[u64],
        body: T,
    ) -> Result<Response<T>> {
        let token = self.db.commit_token(conn).await?;
        for &conversation in conversations {
            let topic = Topic {
                service,
                conversation,
            };
            self.hub.access_changed(&topic, &token);
        }
        self.memberships_changed(losing, &token);
        Ok(self.written(user, &token, body))
    }

    /// As [`committed`](Self::committed), for a write that changed what each of `told`
    /// belongs to (they joined a conversation) or has read: their sessions read their
    /// conversations again.
    pub async fn committed_telling<T>(
        &self,
        conn: &mut MySqlConnection,
        user: u64,
        told: &[u64],
        body: T,
    ) -> Result<Response<T>> {
        let token = self.db.commit_token(conn).await?;
        self.memberships_changed(told, &token);
        Ok(self.written(user, &token, body))
    }

    /// As [`committed`](Self::committed), for a new channel of `server`: the sessions of its
    /// members start following it.
    pub async fn channel_added<T>(
        &self,
        conn: &mut MySqlConnection,
        user: u64,
        server: u64,
        body: T,
    ) -> Result<Response<T>> {
        let token = self.db.commit_token(conn).await?;
        self.hub.access_changed(&Topic::server(server), &token);
        Ok(self.written(user, &token, body))
    }

    /// The conversations each of `users` belongs to changed at `token` (they joined, left or
    /// were removed): their sessions, here and on every gateway, read their list again.
    fn memberships_changed(&self, users: &[u64], token: &str) {
        for &user in users {
            self.hub.access_changed(&Topic::user(user), token);
        }
    }

    /// Remember `user`'s write and return `body` with the token in its header.
    pub fn written<T>(&self, user: u64, token: &str, body: T) -> Response<T> {
        if !token.is_empty() {
            let mut tokens = lock(&self.tokens);
            if tokens.len() > 100_000 {
                tokens.clear();
            }
            tokens.insert(user, token.to_string());
        }
        let mut resp = Response::new(body);
        if let Ok(v) = MetadataValue::try_from(token) {
            resp.metadata_mut().insert(CONSISTENCY_HEADER, v);
        }
        resp
    }
}

/// The address a request came from: the last `x-forwarded-for` entry, which Envoy (with
/// `use_remote_address`, trusting no hop before it) appends from the connection it accepted,
/// else the connection's own peer. chatd is reached only through Envoy, so a client cannot
/// choose it.
pub fn client_address<T>(req: &Request<T>) -> Option<IpAddr> {
    req.metadata()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .or_else(|| req.remote_addr().map(|a| a.ip()))
        .map(|ip: IpAddr| ip.to_canonical())
}

/// A client address as a bucket key: an IPv4 address, or the /64 network of an IPv6 one
/// (one subscriber is given a whole /64, so its addresses are one client).
pub fn address_key(address: IpAddr) -> u64 {
    match address {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let network = (u128::from(v6) >> 64) as u64;
            // Apart from every IPv4 key, which fits in 32 bits.
            network | (1 << 63)
        }
    }
}

/// Subscriptions one user may hold open on one replica.
pub const MAX_SUBSCRIPTIONS_PER_USER: u32 = 256;
/// Sessions one user may hold open on one replica (their devices and tabs).
pub const MAX_SESSIONS_PER_USER: u32 = 16;

/// The kinds of stream counted per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StreamKind {
    Subscription,
    Session,
}

/// One of a user's open streams (a subscription or a session); its place is given back when
/// it is dropped.
pub struct SubscriptionSlot {
    app: Arc<App>,
    key: (u64, StreamKind),
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.app.subscriptions);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Implements a conversation service's gRPC trait: the methods given, plus the five message
/// RPCs every conversation kind offers (send, edit, delete, history, subscribe), delegated to
/// the service's `conversations` field. The generated traits differ only in name, so the five
/// are written here once.
macro_rules! conversation_service {
    (impl $service:ident for $ty:ident { $($methods:tt)* }) => {
        #[tonic::async_trait]
        impl $service for $ty {
            $($methods)*

            async fn send_message(
                &self,
                req: tonic::Request<$crate::pb::chat::SendMessageRequest>,
            ) -> Result<tonic::Response<$crate::pb::chat::Message>, tonic::Status> {
                self.conversations.send(req).await
            }

            async fn edit_message(
                &self,
                req: tonic::Request<$crate::pb::chat::EditMessageRequest>,
            ) -> Result<tonic::Response<$crate::pb::chat::Message>, tonic::Status> {
                self.conversations.edit(req).await
            }

            async fn delete_message(
                &self,
                req: tonic::Request<$crate::pb::chat::DeleteMessageRequest>,
            ) -> Result<tonic::Response<$crate::pb::chat::Message>, tonic::Status> {
                self.conversations.delete(req).await
            }

            async fn history(
                &self,
                req: tonic::Request<$crate::pb::chat::HistoryRequest>,
            ) -> Result<tonic::Response<$crate::pb::chat::HistoryResponse>, tonic::Status> {
                self.conversations.history(req).await
            }

            type SubscribeStream = $crate::services::conversation::EventStream;

            async fn subscribe(
                &self,
                req: tonic::Request<$crate::pb::chat::SubscribeRequest>,
            ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
                self.conversations.subscribe(req).await
            }
        }
    };
}
pub(crate) use conversation_service;

/// Check a name (group, server, channel): 1–100 characters, not blank, no control characters.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{what} name is empty")));
    }
    let chars = name.chars().count();
    if chars > 100 {
        return Err(Error::InvalidArgument(format!(
            "{what} name is {chars} characters, more than 100"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{what} name contains control characters"
        )));
    }
    if name.chars().any(is_deceptive) {
        return Err(Error::InvalidArgument(format!(
            "{what} name contains invisible or direction-changing characters"
        )));
    }
    Ok(())
}

/// Characters that make a name look like another: bidirectional controls (which reorder what
/// is shown) and invisible ones. The zero-width joiner stays: emoji sequences need it.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'
            | '\u{200c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_refuses_bursts_and_refills() {
        let limiter = RateLimiter::new(1000.0, 3.0);
        assert!(limiter.check(1).is_ok());
        assert!(limiter.check(1).is_ok());
        assert!(limiter.check(1).is_ok());
        assert!(matches!(limiter.check(1), Err(Error::ResourceExhausted(_))));
        assert!(limiter.check(2).is_ok(), "per user");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limiter.check(1).is_ok(), "refilled");
    }

    #[test]
    fn client_addresses_come_from_envoys_entry_and_ipv6_counts_by_network() {
        let with = |xff: &str| {
            let mut req = Request::new(());
            req.metadata_mut().insert(
                "x-forwarded-for",
                xff.parse().unwrap_or_else(|_| unreachable!()),
            );
            client_address(&req)
        };
        // The client's own claim comes first; Envoy's entry is the last.
        assert_eq!(with("6.6.6.6, 10.0.0.7"), "10.0.0.7".parse().ok());
        assert_eq!(with("::ffff:10.0.0.7"), "10.0.0.7".parse().ok());
        assert_eq!(with("garbage"), None);
        assert_eq!(client_address(&Request::new(())), None);
        let v6 = |a: &str| address_key(a.parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_ne!(v6("::1"), v6("0.0.0.1"));
    }

    #[test]
    fn names() {
        assert!(check_name("group", "Friends 🎉").is_ok());
        assert!(check_name("group", " ").is_err());
        assert!(check_name("group", &"x".repeat(101)).is_err());
        assert!(check_name("group", "a\u{0}b").is_err());
        assert!(check_name("group", "admin\u{202e}nimda").is_err());
        assert!(check_name("group", "team\u{200b}").is_err());
        assert!(check_name("group", "family 👨\u{200d}👩\u{200d}👧").is_ok());
    }
}
