//! The command line: what chatctl can be asked to do.

use std::path::PathBuf;

use chatd::client::ConversationRef;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Chat from the command line with a ChatCluster")]
pub(crate) struct Cli {
    /// Envoy's address (`chat-operator local` prints it), or one chatd's.
    #[arg(
        long,
        env = "CHATCTL_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(crate) endpoint: String,
    /// Where the session is kept.
    #[arg(long, env = "CHATCTL_HOME", global = true)]
    pub(crate) home: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Create an account and log in (the password from $CHATCTL_PASSWORD, else read from
    /// stdin: never from the command line, where `ps` shows it to everyone).
    Register {
        /// User name.
        username: String,
        /// Display name (default: the user name).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Log in.
    Login {
        /// User name.
        username: String,
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
    /// Print messages as they arrive, of every conversation you are in, or of one (Ctrl-C to
    /// stop). Joining and leaving conversations shows as it happens.
    Tail {
        /// One conversation only.
        of: Option<ConversationRef>,
        /// With a conversation: start after this sequence number (default: only new messages).
        #[arg(long, requires = "of")]
        after: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Mark a conversation read, up to a message (default: all of it); your other sessions
    /// see it.
    Read {
        /// The conversation.
        of: ConversationRef,
        /// The last message read.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Conversations with messages you have not read, and how many.
    Unread,
}

#[derive(Subcommand)]
pub(crate) enum GroupCmd {
    /// Create a group, optionally inviting members (user ids).
    Create {
        /// Its name.
        name: String,
        /// User ids to invite.
        #[arg(long = "member")]
        members: Vec<u64>,
    },
    /// Invite someone (they join with `chatctl group accept`).
    Add {
        /// Group id.
        group: u64,
        /// User id.
        user: u64,
    },
    /// The groups you are invited to.
    Invitations,
    /// Join a group you are invited to.
    Accept {
        /// Group id.
        group: u64,
    },
    /// Your groups.
    List,
}

#[derive(Subcommand)]
pub(crate) enum DmCmd {
    /// Open (or find) the conversation with a user.
    Open {
        /// Their user id.
        user: u64,
    },
    /// Your conversations.
    List,
}

#[derive(Subcommand)]
pub(crate) enum ServerCmd {
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
pub(crate) enum ChannelCmd {
    /// Create a channel in a server.
    Create {
        /// Server id.
        server: u64,
        /// Channel name.
        name: String,
    },
}
