//! A chat cluster for tests: a MariaDB primary and GTID replica, and chatd processes (the real
//! binary) on free ports, all removed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use chatcluster_tests::{
    Process, TempDir, free_port,
    mariadb::{APP_PASSWORD, APP_USER, MariaDb},
};
use chatd::pb::{
    auth::{RegisterRequest, Session, auth_client::AuthClient},
    dms::dms_client::DmsClient,
    groups::{AcceptInvitationRequest, CreateGroupRequest, Group, groups_client::GroupsClient},
    servers::servers_client::ServersClient,
};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding},
};
use tonic::{Request, transport::Channel};

pub struct Keys {
    pub dir: TempDir,
}

impl Keys {
    pub fn new() -> Self {
        let dir = TempDir::new("chatd-keys");
        let key = SigningKey::from_bytes(&rand_bytes());
        std::fs::write(
            dir.path().join("private.pem"),
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("public.pem"),
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        Self { dir }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (std::process::id() as u8)
            .wrapping_mul(31)
            .wrapping_add(i as u8 * 7 + 1);
    }
    b
}

pub struct Db {
    pub primary: MariaDb,
    pub replica: MariaDb,
}

impl Db {
    pub fn start() -> Self {
        let primary = MariaDb::start(1, &[]);
        let replica = MariaDb::start(2, &[]);
        replica.replicate_from(&primary);
        Self { primary, replica }
    }
}

pub struct Chatd {
    pub port: u16,
    process: Process,
}

pub struct Options<'a> {
    pub services: &'a str,
    pub primary: String,
    pub replicas: Option<String>,
    /// `host:port` of the broker the replicas share; none: a single replica.
    pub broker: Option<String>,
    pub primary_file: Option<std::path::PathBuf>,
    pub rate: f64,
    pub metrics_port: Option<u16>,
    pub drain_seconds: f64,
    /// Per client address (tests all come from 127.0.0.1): unlimited unless a test says.
    pub address_logins_per_minute: u32,
    pub address_registrations_per_hour: u32,
}

impl<'a> Options<'a> {
    /// `services` over `db`'s primary and replica, no broker, generous rate limit.
    pub fn new(services: &'a str, db: &Db) -> Self {
        Self {
            services,
            primary: db.primary.address(),
            replicas: Some(db.replica.address()),
            broker: None,
            primary_file: None,
            rate: 1000.0,
            metrics_port: None,
            drain_seconds: 0.2,
            address_logins_per_minute: 1_000_000,
            address_registrations_per_hour: 1_000_000,
        }
    }
}

impl Chatd {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Start chatd and wait until it serves.
    pub fn start(keys: &Keys, opts: Options<'_>, port: u16) -> Self {
        let me = Self::spawn(keys, opts, port);
        me.wait_serving();
        me
    }

    /// Start chatd without waiting for it.
    pub fn spawn(keys: &Keys, opts: Options<'_>, port: u16) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // CHATD_TEST_LOG=info (or debug) to see what the chatd processes do.
            .env(
                "RUST_LOG",
                std::env::var("CHATD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("CHATD_SERVICES", opts.services)
            .env("CHATD_LISTEN", format!("127.0.0.1:{port}"))
            .env("CHATD_DB_PRIMARY", &opts.primary)
            .env("CHATD_DB_USER", APP_USER)
            .env("CHATD_DB_PASSWORD", APP_PASSWORD)
            .env(
                "CHATD_TOKEN_PUBLIC_KEY_FILE",
                keys.dir.path().join("public.pem"),
            )
            .env(
                "CHATD_TOKEN_PRIVATE_KEY_FILE",
                keys.dir.path().join("private.pem"),
            )
            .env("CHATD_POD_NAME", format!("chatd-{port}"))
            .env("CHATD_RATE_PER_SECOND", opts.rate.to_string())
            .env("CHATD_RATE_BURST", (opts.rate * 2.0).to_string())
            .env("CHATD_DRAIN_SECONDS", opts.drain_seconds.to_string())
            .env(
                "CHATD_ADDRESS_LOGINS_PER_MINUTE",
                opts.address_logins_per_minute.to_string(),
            )
            .env(
                "CHATD_ADDRESS_REGISTRATIONS_PER_HOUR",
                opts.address_registrations_per_hour.to_string(),
            );
        if let Some(p) = opts.metrics_port {
            cmd.env("CHATD_METRICS_LISTEN", format!("127.0.0.1:{p}"));
        }
        if let Some(r) = &opts.replicas {
            cmd.env("CHATD_DB_REPLICAS", r);
        }
        if let Some(b) = &opts.broker {
            cmd.env("CHATD_BROKER", b);
        }
        if let Some(f) = &opts.primary_file {
            cmd.env("CHATD_DB_PRIMARY_FILE", f);
        }
        let process = Process::spawn(&mut cmd);
        Self { port, process }
    }

    /// Blocks until chatd reports SERVING; on its own thread and runtime, so it can be called
    /// from sync and async tests alike.
    fn wait_serving(&self) {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.wait_serving_on_this_thread())
                .join()
                .unwrap();
        });
    }

    fn wait_serving_on_this_thread(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..300 {
                if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await
                    && let Ok(r) = tonic_health::pb::health_client::HealthClient::new(channel)
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                    && r.into_inner().status == 1
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("chatd on {} did not become healthy", self.port);
        });
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// One chatd with every service over a primary and a replica.
pub struct Setup {
    pub keys: Keys,
    pub db: Db,
    pub chatd: Chatd,
}

impl Setup {
    pub fn new() -> Self {
        Self::with_rate(1000.0)
    }

    pub fn with_rate(rate: f64) -> Self {
        Self::with(|o| o.rate = rate)
    }

    /// Every service, with the options `edit` leaves.
    pub fn with(edit: impl FnOnce(&mut Options<'_>)) -> Self {
        let keys = Keys::new();
        let db = Db::start();
        let mut opts = Options::new("auth,groups,dms,servers", &db);
        edit(&mut opts);
        let chatd = Chatd::start(&keys, opts, free_port());
        Self { keys, db, chatd }
    }
}

pub struct Clients {
    pub auth: AuthClient<Channel>,
    pub groups: GroupsClient<Channel>,
    pub dms: DmsClient<Channel>,
    pub servers: ServersClient<Channel>,
}

impl Clients {
    pub async fn new(chatd: &Chatd) -> Self {
        let ch = chatd.channel().await;
        Self {
            auth: AuthClient::new(ch.clone()),
            groups: GroupsClient::new(ch.clone()),
            dms: DmsClient::new(ch.clone()),
            servers: ServersClient::new(ch),
        }
    }
}

impl Clients {
    /// `owner` creates group `name` inviting `members`, who accept.
    pub async fn group(&mut self, owner: &Session, name: &str, members: &[&Session]) -> Group {
        let group = self
            .groups
            .create_group(authed(
                owner,
                CreateGroupRequest {
                    name: name.into(),
                    member_ids: members.iter().map(|m| uid(m)).collect(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let mut joined = group;
        for member in members {
            joined = self.accept(member, joined.id).await;
        }
        joined
    }

    /// `who`'s stream of group `group`'s events from its first message.
    pub async fn subscribe_group(
        &mut self,
        who: &Session,
        group: u64,
    ) -> tonic::Streaming<chatd::pb::chat::Event> {
        let from_start = chatd::pb::chat::SubscribeRequest {
            conversation_id: group,
            after_seq: 0,
        };
        self.groups
            .subscribe(authed(who, from_start))
            .await
            .unwrap()
            .into_inner()
    }

    /// `owner` creates server `name` (with its first channel).
    pub async fn server(&mut self, owner: &Session, name: &str) -> chatd::pb::servers::Server {
        let request = chatd::pb::servers::CreateServerRequest { name: name.into() };
        self.servers
            .create_server(authed(owner, request))
            .await
            .unwrap()
            .into_inner()
    }

    /// An invite code to `server` made by `owner`: no expiry beyond the default, any uses.
    pub async fn invite(&mut self, owner: &Session, server: u64) -> String {
        let request = chatd::pb::servers::CreateInviteRequest {
            server_id: server,
            ttl_seconds: 0,
            max_uses: 0,
        };
        self.servers
            .create_invite(authed(owner, request))
            .await
            .unwrap()
            .into_inner()
            .code
    }

    /// `who` accepts their invitation to `group`.
    pub async fn accept(&mut self, who: &Session, group: u64) -> Group {
        self.groups
            .accept_invitation(authed(who, AcceptInvitationRequest { group_id: group }))
            .await
            .unwrap()
            .into_inner()
    }
}

pub async fn register(auth: &mut AuthClient<Channel>, name: &str) -> Session {
    auth.register(RegisterRequest {
        username: name.into(),
        password: "correct horse battery".into(),
        display_name: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A new session of `name`, registered by [`register`].
pub async fn login(auth: &mut AuthClient<Channel>, name: &str) -> Session {
    auth.login(chatd::pb::auth::LoginRequest {
        username: name.into(),
        password: "correct horse battery".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A send of `text` to `conv` with client key `key` (empty: none).
pub fn send(conv: u64, text: &str, key: &str) -> chatd::pb::chat::SendMessageRequest {
    chatd::pb::chat::SendMessageRequest {
        conversation_id: conv,
        text: text.into(),
        client_key: key.into(),
    }
}

/// The seq of the newest message of group `conv`, as `reader`'s history shows it.
pub async fn newest_group_seq(c: &mut Clients, reader: &Session, conv: u64) -> u64 {
    let page = c
        .groups
        .history(authed(
            reader,
            chatd::pb::chat::HistoryRequest {
                conversation_id: conv,
                limit: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    page.messages[0].seq
}

/// A request carrying `session`'s access token.
pub fn authed<T>(session: &Session, body: T) -> Request<T> {
    chatcluster_tests::chat::authed(session, body).unwrap()
}

pub fn uid(s: &Session) -> u64 {
    s.profile.as_ref().unwrap().user_id
}

/// The first value `read` returns that `done` accepts, reading again for up to 5 s; the last
/// value read otherwise, for the caller's assertion to show. For reads of what *another* user
/// just wrote: a replica applies it a few milliseconds later (a user's own writes are waited
/// for by chatd itself).
pub async fn eventually<T, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value = read().await;
        if done(&value) || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SELECTs `db` has run so far.
pub fn selects(db: &MariaDb) -> u64 {
    let row = db.sql("SHOW GLOBAL STATUS LIKE 'Com_select'");
    row.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Com_select in {row:?}"))
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// Microseconds processes `pids` (all their threads) have run on a CPU.
pub fn cpu_us(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // After the command, which is in parentheses and may hold spaces: utime and
            // stime are fields 14 and 15, the 12th and 13th after it.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<u64> = after
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|v| v.parse().unwrap())
                .collect();
            (f[0] + f[1]) * 1_000_000 / TICKS_PER_SECOND
        })
        .sum()
}
