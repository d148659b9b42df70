//! The logged-in session (saved between runs, refreshed when its access token expires) and how
//! chatctl prints what the cluster says.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use chatd::{
    client::{ConversationRef, authed},
    pb::{
        auth::{GetProfileRequest, RefreshRequest, Session, auth_client::AuthClient},
        chat::Message,
    },
};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status, transport::Channel};

#[derive(Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) endpoint: String,
    pub(crate) username: String,
    pub(crate) user_id: u64,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

pub(crate) struct Client {
    pub(crate) channel: Channel,
    pub(crate) home: PathBuf,
    pub(crate) saved: Option<Saved>,
    pub(crate) names: HashMap<u64, String>,
}

pub(crate) fn home(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".config/chatctl")
    })
}

/// The password: `$CHATCTL_PASSWORD`, else a line read from stdin.
pub(crate) fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("CHATCTL_PASSWORD") {
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
pub(crate) fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub(crate) fn describe(status: &Status) -> anyhow::Error {
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
    pub(crate) async fn connect(endpoint: &str, home: PathBuf) -> anyhow::Result<Self> {
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

    pub(crate) fn session(&self) -> anyhow::Result<Session> {
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

    pub(crate) fn save(
        &mut self,
        endpoint: &str,
        username: &str,
        session: Session,
    ) -> anyhow::Result<()> {
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
    pub(crate) async fn learn_identity(&mut self) -> anyhow::Result<u64> {
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
    pub(crate) async fn refresh(&mut self) -> anyhow::Result<()> {
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

    pub(crate) async fn name(&mut self, user_id: u64) -> String {
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

    /// Print `m` (of `of` when given: a tail of every conversation names it).
    pub(crate) async fn print(&mut self, of: Option<ConversationRef>, m: &Message, updated: bool) {
        let who = printable(&self.name(m.sender_id).await);
        let text = if m.deleted {
            "(deleted)".to_string()
        } else {
            printable(&m.text)
        };
        let mark = if updated || m.edited_at_ms > 0 {
            " (edited)"
        } else {
            ""
        };
        let of = of.map(|of| format!("{of} ")).unwrap_or_default();
        println!(
            "{of}#{:<5} {} {who}: {text}{mark}",
            m.seq,
            clock(m.sent_at_ms)
        );
    }
}

/// `text` safe to print on a terminal: control characters (escape sequences could move the
/// cursor, rewrite earlier lines or set the window title) and the invisible and
/// direction-changing characters names may not carry appear escaped, as `\u{1b}`; newlines
/// and tabs stay.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if (c.is_control() && c != '\n' && c != '\t') || chatd::services::is_deceptive(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(crate) fn session_file(home: &Path) -> PathBuf {
    home.join("session.json")
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(printable("hi\u{1b}[2J\u{7}"), "hi\\u{1b}[2J\\u{7}");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(
            printable("two\nlines\tand tabs, émoji 🎉"),
            "two\nlines\tand tabs, émoji 🎉"
        );
    }
}
