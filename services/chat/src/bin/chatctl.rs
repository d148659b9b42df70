//! chatctl: a command-line chat client. It talks gRPC to a ChatCluster's Envoy (or to one
//! chatd) and keeps the logged-in session in `$CHATCTL_HOME/session.json` (default
//! `~/.config/chatctl`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, anyhow};
use chatd::{
    client::{ConversationRef, Kind, authed},
    pb::{
        auth::{
            GetProfileRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
            Session, auth_client::AuthClient,
        },
        chat::{Event, HistoryRequest, Message, SendMessageRequest, SubscribeRequest, event},
        dms::{ListConversationsRequest, OpenRequest, dms_client::DmsClient},
        groups::{
            AddMemberRequest, CreateGroupRequest, ListMyGroupsRequest, Role,
            groups_client::GroupsClient,
        },
        servers::{
            CreateChannelRequest, CreateInviteRequest, CreateServerRequest, JoinRequest,
            ListMyServersRequest, servers_client::ServersClient,
        },
    },
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status, transport::Channel};

#[derive(Parser)]
#[command(version, about = "Chat from the command line with a ChatCluster")]
struct Cli {
    /// Envoy's address (`chat-operator local` prints it), or one chatd's.
    #[arg(
        long,
        env = "CHATCTL_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    endpoint: String,
    /// Where the session is kept.
    #[arg(long, env = "CHATCTL_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an account and log in.
    Register {
        /// User name.
        username: String,
        /// Display name (default: the user name).
        #[arg(long)]
        display_name: Option<String>,
        /// Password (default: $CHATCTL_PASSWORD, or read from stdin).
        #[arg(long, env = "CHATCTL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in.
    Login {
        /// User name.
        username: String,
        /// Password (default: $CHATCTL_PASSWORD, or read from stdin).
        #[arg(long, env = "CHATCTL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log out (the refresh token is revoked).
    Logout,
    /// Who is logged in.
    Whoami,
    /// Group chats.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Direct messages.
    #[command(subcommand)]
    Dm(DmCmd),
    /// Discord-style servers.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Channels of a server.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Every conversation you are in.
    List,
    /// Send a message to `group:<id>`, `dm:<id>` or `channel:<id>`.
    Send {
        /// The conversation.
        to: ConversationRef,
        /// The text.
        text: String,
    },
    /// Recent messages of a conversation, oldest first.
    History {
        /// The conversation.
        of: ConversationRef,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print messages as they arrive (Ctrl-C to stop).
    Tail {
        /// The conversation.
        of: ConversationRef,
        /// Start after this sequence number (default: only new messages).
        #[arg(long)]
        after: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Create a group, optionally with members (user ids).
    Create {
        /// Its name.
        name: String,
        /// Members' user ids.
        #[arg(long = "member")]
        members: Vec<u64>,
    },
    /// Add a member.
    Add {
        /// Group id.
        group: u64,
        /// User id.
        user: u64,
    },
    /// Your groups.
    List,
}

#[derive(Subcommand)]
enum DmCmd {
    /// Open (or find) the conversation with a user.
    Open {
        /// Their user id.
        user: u64,
    },
    /// Your conversations.
    List,
}

#[derive(Subcommand)]
enum ServerCmd {
    /// Create a server (you own it).
    Create {
        /// Its name.
        name: String,
    },
    /// An invite code others join with.
    Invite {
        /// Server id.
        server: u64,
        /// How many may use it (0: no limit).
        #[arg(long, default_value_t = 0)]
        uses: u32,
        /// Seconds it stays valid (0: the server's default).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// Join with an invite code.
    Join {
        /// The code.
        code: String,
    },
    /// Your servers and their channels.
    List,
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Create a channel in a server.
    Create {
        /// Server id.
        server: u64,
        /// Channel name.
        name: String,
    },
}

/// The saved session.
#[derive(Serialize, Deserialize)]
struct Saved {
    endpoint: String,
    username: String,
    user_id: u64,
    access_token: String,
    refresh_token: String,
}

struct Client {
    channel: Channel,
    home: PathBuf,
    saved: Option<Saved>,
    names: HashMap<u64, String>,
}

fn home(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".config/chatctl")
    })
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn describe(status: &Status) -> anyhow::Error {
    let what = match status.code() {
        Code::Unauthenticated => "not logged in or session expired (chatctl login <user>)",
        Code::PermissionDenied => "not allowed",
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid request",
        Code::AlreadyExists => "already exists",
        Code::ResourceExhausted => "slow down",
        Code::Unavailable => "the cluster is unavailable (is it running? see --endpoint)",
        _ => "failed",
    };
    anyhow!("{what}: {}", status.message())
}

impl Client {
    async fn connect(endpoint: &str, home: PathBuf) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(endpoint.to_string())
            .with_context(|| format!("invalid endpoint {endpoint}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach {endpoint}: is the cluster running?"))?;
        let saved = std::fs::read_to_string(session_file(&home))
            .ok()
            .and_then(|t| serde_json::from_str::<Saved>(&t).ok())
            .filter(|s| s.endpoint == endpoint);
        Ok(Self {
            channel,
            home,
            saved,
            names: HashMap::new(),
        })
    }

    fn session(&self) -> anyhow::Result<Session> {
        let s = self
            .saved
            .as_ref()
            .ok_or_else(|| anyhow!("not logged in: chatctl login <user> (or register)"))?;
        Ok(Session {
            access_token: s.access_token.clone(),
            refresh_token: s.refresh_token.clone(),
            ..Session::default()
        })
    }

    fn save(&mut self, endpoint: &str, username: &str, session: Session) -> anyhow::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let user_id = self.saved.as_ref().map(|s| s.user_id).unwrap_or(0);
        let saved = Saved {
            endpoint: endpoint.to_string(),
            username: username.to_string(),
            user_id,
            access_token: session.access_token,
            refresh_token: session.refresh_token,
        };
        std::fs::create_dir_all(&self.home)
            .with_context(|| format!("cannot create {}", self.home.display()))?;
        let path = session_file(&self.home);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        serde_json::to_writer_pretty(&mut file, &saved)?;
        self.saved = Some(saved);
        Ok(())
    }

    /// After login: remember who we are.
    async fn learn_identity(&mut self) -> anyhow::Result<u64> {
        let me = AuthClient::new(self.channel.clone())
            .get_profile(authed(&self.session()?, GetProfileRequest { user_id: 0 })?)
            .await
            .map_err(|e| describe(&e))?
            .into_inner();
        if let Some(s) = self.saved.as_mut() {
            s.user_id = me.user_id;
            let (endpoint, username) = (s.endpoint.clone(), s.username.clone());
            let session = self.session()?;
            self.save(&endpoint, &username, session)?;
        }
        Ok(me.user_id)
    }

    /// Exchange the refresh token for a new session (access tokens are short-lived).
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let session = self.session()?;
        let fresh = AuthClient::new(self.channel.clone())
            .refresh(RefreshRequest {
                refresh_token: session.refresh_token,
            })
            .await
            .map_err(|e| describe(&e))?
            .into_inner();
        let (endpoint, username) = match &self.saved {
            Some(s) => (s.endpoint.clone(), s.username.clone()),
            None => return Err(anyhow!("not logged in")),
        };
        self.save(&endpoint, &username, fresh)
    }

    async fn name(&mut self, user_id: u64) -> String {
        if let Some(n) = self.names.get(&user_id) {
            return n.clone();
        }
        let name = match self.session() {
            Ok(session) => match authed(&session, GetProfileRequest { user_id }) {
                Ok(req) => AuthClient::new(self.channel.clone())
                    .get_profile(req)
                    .await
                    .map(|p| p.into_inner().username)
                    .unwrap_or_else(|_| format!("user#{user_id}")),
                Err(_) => format!("user#{user_id}"),
            },
            Err(_) => format!("user#{user_id}"),
        };
        self.names.insert(user_id, name.clone());
        name
    }

    async fn print(&mut self, m: &Message, updated: bool) {
        let who = self.name(m.sender_id).await;
        let text = if m.deleted {
            "(deleted)".to_string()
        } else {
            m.text.clone()
        };
        let mark = if updated || m.edited_at_ms > 0 {
            " (edited)"
        } else {
            ""
        };
        println!("#{:<5} {} {who}: {text}{mark}", m.seq, clock(m.sent_at_ms));
    }
}

fn session_file(home: &Path) -> PathBuf {
    home.join("session.json")
}

async fn send(c: &Client, to: ConversationRef, text: String) -> Result<Message, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = SendMessageRequest {
        conversation_id: to.id,
        text,
        // A retried send with the same key is stored once.
        client_key: format!("chatctl-{:016x}", rand::random::<u64>()),
    };
    let ch = c.channel.clone();
    Ok(match to.kind {
        Kind::Group => {
            GroupsClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
        Kind::Dm => {
            DmsClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
        Kind::Channel => {
            ServersClient::new(ch)
                .send_message(authed(&session, req)?)
                .await
        }
    }?
    .into_inner())
}

async fn history(c: &Client, of: ConversationRef, limit: u32) -> Result<Vec<Message>, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = HistoryRequest {
        conversation_id: of.id,
        limit,
        ..HistoryRequest::default()
    };
    let ch = c.channel.clone();
    let mut messages = match of.kind {
        Kind::Group => GroupsClient::new(ch).history(authed(&session, req)?).await,
        Kind::Dm => DmsClient::new(ch).history(authed(&session, req)?).await,
        Kind::Channel => ServersClient::new(ch).history(authed(&session, req)?).await,
    }?
    .into_inner()
    .messages;
    messages.reverse();
    Ok(messages)
}

async fn subscribe(
    c: &Client,
    of: ConversationRef,
    after_seq: u64,
) -> Result<tonic::Streaming<Event>, Status> {
    let session = c
        .session()
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let req = SubscribeRequest {
        conversation_id: of.id,
        after_seq,
    };
    let ch = c.channel.clone();
    Ok(match of.kind {
        Kind::Group => {
            GroupsClient::new(ch)
                .subscribe(authed(&session, req)?)
                .await
        }
        Kind::Dm => DmsClient::new(ch).subscribe(authed(&session, req)?).await,
        Kind::Channel => {
            ServersClient::new(ch)
                .subscribe(authed(&session, req)?)
                .await
        }
    }?
    .into_inner())
}

/// Run `call`; when the access token has expired, refresh the session once and retry.
macro_rules! with_refresh {
    ($client:expr, $call:expr) => {{
        match $call {
            Err(e) if e.code() == Code::Unauthenticated && $client.saved.is_some() => {
                $client.refresh().await?;
                $call.map_err(|e| describe(&e))?
            }
            other => other.map_err(|e| describe(&e))?,
        }
    }};
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let endpoint = cli.endpoint.clone();
    let mut c = Client::connect(&endpoint, home(cli.home)).await?;
    match cli.command {
        Cmd::Register {
            username,
            display_name,
            password: p,
        } => {
            let session = AuthClient::new(c.channel.clone())
                .register(RegisterRequest {
                    username: username.clone(),
                    password: password(p)?,
                    display_name: display_name.unwrap_or_else(|| username.clone()),
                })
                .await
                .map_err(|e| describe(&e))?
                .into_inner();
            c.save(&endpoint, &username, session)?;
            let id = c.learn_identity().await?;
            println!("registered and logged in as {username} (user id {id})");
        }
        Cmd::Login {
            username,
            password: p,
        } => {
            let session = AuthClient::new(c.channel.clone())
                .login(LoginRequest {
                    username: username.clone(),
                    password: password(p)?,
                })
                .await
                .map_err(|e| describe(&e))?
                .into_inner();
            c.save(&endpoint, &username, session)?;
            let id = c.learn_identity().await?;
            println!("logged in as {username} (user id {id})");
        }
        Cmd::Logout => {
            let session = c.session()?;
            AuthClient::new(c.channel.clone())
                .logout(LogoutRequest {
                    refresh_token: session.refresh_token,
                })
                .await
                .map_err(|e| describe(&e))?;
            std::fs::remove_file(session_file(&c.home))?;
            println!("logged out");
        }
        Cmd::Whoami => {
            let s = c.saved.as_ref().ok_or_else(|| anyhow!("not logged in"))?;
            println!("{} (user id {}) at {}", s.username, s.user_id, s.endpoint);
        }
        Cmd::Group(cmd) => group(&mut c, cmd).await?,
        Cmd::Dm(cmd) => dm(&mut c, cmd).await?,
        Cmd::Server(cmd) => server(&mut c, cmd).await?,
        Cmd::Channel(ChannelCmd::Create { server, name }) => {
            let ch = with_refresh!(c, {
                let session = c.session()?;
                ServersClient::new(c.channel.clone())
                    .create_channel(authed(
                        &session,
                        CreateChannelRequest {
                            server_id: server,
                            name: name.clone(),
                        },
                    )?)
                    .await
            })
            .into_inner();
            println!("channel:{}  #{} in server {}", ch.id, ch.name, ch.server_id);
        }
        Cmd::List => {
            group(&mut c, GroupCmd::List).await?;
            dm(&mut c, DmCmd::List).await?;
            server(&mut c, ServerCmd::List).await?;
        }
        Cmd::Send { to, text } => {
            let m = with_refresh!(c, send(&c, to, text.clone()).await);
            println!("sent #{} to {to}", m.seq);
        }
        Cmd::History { of, limit } => {
            let messages = with_refresh!(c, history(&c, of, limit).await);
            if messages.is_empty() {
                println!("(no messages in {of})");
            }
            for m in &messages {
                c.print(m, false).await;
            }
        }
        Cmd::Tail { of, after, count } => {
            let after = match after {
                Some(a) => a,
                None => with_refresh!(c, history(&c, of, 1).await)
                    .last()
                    .map(|m| m.seq)
                    .unwrap_or(0),
            };
            let mut stream = with_refresh!(c, subscribe(&c, of, after).await);
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let Some(event) = stream.message().await.map_err(|e| describe(&e))? else {
                    break;
                };
                match event.kind {
                    Some(event::Kind::Message(m)) => {
                        c.print(&m, false).await;
                        seen += 1;
                    }
                    Some(event::Kind::Updated(m)) => c.print(&m, true).await,
                    None => {}
                }
            }
        }
    }
    Ok(())
}

async fn group(c: &mut Client, cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::Create { name, members } => {
            let g = with_refresh!(c, {
                let session = c.session()?;
                GroupsClient::new(c.channel.clone())
                    .create_group(authed(
                        &session,
                        CreateGroupRequest {
                            name: name.clone(),
                            member_ids: members.clone(),
                        },
                    )?)
                    .await
            })
            .into_inner();
            println!("group:{}  {} ({} members)", g.id, g.name, g.members.len());
        }
        GroupCmd::Add { group, user } => {
            let g = with_refresh!(c, {
                let session = c.session()?;
                GroupsClient::new(c.channel.clone())
                    .add_member(authed(
                        &session,
                        AddMemberRequest {
                            group_id: group,
                            user_id: user,
                            role: Role::Member as i32,
                        },
                    )?)
                    .await
            })
            .into_inner();
            println!("group:{}  {} ({} members)", g.id, g.name, g.members.len());
        }
        GroupCmd::List => {
            let groups = with_refresh!(c, {
                let session = c.session()?;
                GroupsClient::new(c.channel.clone())
                    .list_my_groups(authed(&session, ListMyGroupsRequest {})?)
                    .await
            })
            .into_inner()
            .groups;
            for g in groups {
                println!(
                    "group:{:<6} {} ({} members, {} messages)",
                    g.id,
                    g.name,
                    g.members.len(),
                    g.last_seq
                );
            }
        }
    }
    Ok(())
}

async fn dm(c: &mut Client, cmd: DmCmd) -> anyhow::Result<()> {
    match cmd {
        DmCmd::Open { user } => {
            let conv = with_refresh!(c, {
                let session = c.session()?;
                DmsClient::new(c.channel.clone())
                    .open(authed(&session, OpenRequest { user_id: user })?)
                    .await
            })
            .into_inner();
            let with = c.name(user).await;
            println!("dm:{}  with {with}", conv.id);
        }
        DmCmd::List => {
            let convs = with_refresh!(c, {
                let session = c.session()?;
                DmsClient::new(c.channel.clone())
                    .list_conversations(authed(&session, ListConversationsRequest {})?)
                    .await
            })
            .into_inner()
            .conversations;
            let me = c.saved.as_ref().map(|s| s.user_id).unwrap_or(0);
            for conv in convs {
                let other = conv
                    .user_ids
                    .iter()
                    .copied()
                    .find(|u| *u != me)
                    .unwrap_or(me);
                let with = c.name(other).await;
                println!("dm:{:<9} with {with} ({} messages)", conv.id, conv.last_seq);
            }
        }
    }
    Ok(())
}

async fn server(c: &mut Client, cmd: ServerCmd) -> anyhow::Result<()> {
    match cmd {
        ServerCmd::Create { name } => {
            let s = with_refresh!(c, {
                let session = c.session()?;
                ServersClient::new(c.channel.clone())
                    .create_server(authed(
                        &session,
                        CreateServerRequest { name: name.clone() },
                    )?)
                    .await
            })
            .into_inner();
            println!("server {}  {}", s.id, s.name);
            for ch in s.channels {
                println!("  channel:{:<6} #{}", ch.id, ch.name);
            }
        }
        ServerCmd::Invite { server, uses, ttl } => {
            let invite = with_refresh!(c, {
                let session = c.session()?;
                ServersClient::new(c.channel.clone())
                    .create_invite(authed(
                        &session,
                        CreateInviteRequest {
                            server_id: server,
                            ttl_seconds: ttl,
                            max_uses: uses,
                        },
                    )?)
                    .await
            })
            .into_inner();
            println!("{}", invite.code);
        }
        ServerCmd::Join { code } => {
            let s = with_refresh!(c, {
                let session = c.session()?;
                ServersClient::new(c.channel.clone())
                    .join(authed(&session, JoinRequest { code: code.clone() })?)
                    .await
            })
            .into_inner();
            println!("joined server {}  {}", s.id, s.name);
            for ch in s.channels {
                println!("  channel:{:<6} #{}", ch.id, ch.name);
            }
        }
        ServerCmd::List => {
            let servers = with_refresh!(c, {
                let session = c.session()?;
                ServersClient::new(c.channel.clone())
                    .list_my_servers(authed(&session, ListMyServersRequest {})?)
                    .await
            })
            .into_inner()
            .servers;
            for s in servers {
                println!(
                    "server {:<6} {} ({} members)",
                    s.id,
                    s.name,
                    s.members.len()
                );
                for ch in s.channels {
                    println!(
                        "  channel:{:<6} #{} ({} messages)",
                        ch.id, ch.name, ch.last_seq
                    );
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
