//! chatctl: a command-line chat client. It talks gRPC to a ChatCluster's Envoy (or to one
//! chatd) and keeps the logged-in session in `$CHATCTL_HOME/session.json` (default
//! `~/.config/chatctl`).

use std::process::ExitCode;

use anyhow::anyhow;
use chatd::{
    client::{ConversationRef, authed},
    pb::{
        auth::{LoginRequest, LogoutRequest, RegisterRequest, auth_client::AuthClient},
        gateway::{ConversationMessage, session_event},
        servers::{CreateChannelRequest, servers_client::ServersClient},
    },
};
use clap::Parser;
use tonic::Code;

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

mod calls;
mod cli;
mod commands;
mod session;

use calls::{history, mark_read, open_session, send};
use cli::{ChannelCmd, Cli, Cmd, DmCmd, GroupCmd, ServerCmd};
use commands::{dm, group, server};
use session::{Client, describe, home, password, session_file};

async fn run(cli: Cli) -> anyhow::Result<()> {
    let endpoint = cli.endpoint.clone();
    let mut c = Client::connect(&endpoint, home(cli.home)).await?;
    match cli.command {
        Cmd::Register {
            username,
            display_name,
        } => {
            let session = AuthClient::new(c.channel.clone())
                .register(RegisterRequest {
                    username: username.clone(),
                    password: password()?,
                    display_name: display_name.unwrap_or_else(|| username.clone()),
                })
                .await
                .map_err(|e| describe(&e))?
                .into_inner();
            c.save(&endpoint, &username, session)?;
            let id = c.learn_identity().await?;
            println!("registered and logged in as {username} (user id {id})");
        }
        Cmd::Login { username } => {
            let session = AuthClient::new(c.channel.clone())
                .login(LoginRequest {
                    username: username.clone(),
                    password: password()?,
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
                c.print(None, m, false).await;
            }
        }
        Cmd::Tail { of, after, count } => tail(&mut c, of, after, count).await?,
        Cmd::Read { of, seq } => {
            let marker = with_refresh!(c, mark_read(&c, of, seq.unwrap_or(u64::MAX)).await);
            println!("{of} read up to #{}", marker.read_seq);
        }
        Cmd::Unread => {
            let mut stream = with_refresh!(c, open_session(&c, vec![]).await);
            let first = stream.message().await.map_err(|e| describe(&e))?;
            let Some(session_event::Kind::Snapshot(snapshot)) = first.and_then(|e| e.kind) else {
                return Err(anyhow!("the session did not open with a snapshot"));
            };
            let unread: Vec<_> = snapshot
                .conversations
                .iter()
                .filter(|s| s.unread > 0)
                .filter_map(|s| Some((ConversationRef::of(s.conversation.as_ref()?)?, s)))
                .collect();
            if unread.is_empty() {
                println!("(nothing unread)");
            }
            for (of, s) in unread {
                println!("{of:<16} {} unread (newest #{})", s.unread, s.last_seq);
            }
        }
    }
    Ok(())
}

/// Print what the session stream delivers, of every conversation or of `only`.
async fn tail(
    c: &mut Client,
    only: Option<ConversationRef>,
    after: Option<u64>,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let cursors = only.zip(after).into_iter().collect::<Vec<_>>();
    let mut stream = with_refresh!(c, open_session(c, cursors.clone()).await);
    let shown = |of: Option<ConversationRef>| of.is_some() && (only.is_none() || of == only);
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(event) = stream.message().await.map_err(|e| describe(&e))? else {
            break;
        };
        let label = |of: ConversationRef| match only {
            Some(_) => None,
            None => Some(of),
        };
        match event.kind {
            Some(session_event::Kind::Message(ConversationMessage {
                kind,
                message: Some(m),
            })) => {
                let of = ConversationRef::in_kind(kind, m.conversation_id);
                if shown(of) {
                    c.print(of.and_then(label), &m, false).await;
                    seen += 1;
                }
            }
            Some(session_event::Kind::Updated(ConversationMessage {
                kind,
                message: Some(m),
            })) => {
                let of = ConversationRef::in_kind(kind, m.conversation_id);
                if shown(of) {
                    c.print(of.and_then(label), &m, true).await;
                }
            }
            Some(session_event::Kind::Joined(state)) => {
                let of = state.conversation.as_ref().and_then(ConversationRef::of);
                if let Some(of) = of.filter(|_| only.is_none()) {
                    println!("(joined {of})");
                }
            }
            Some(session_event::Kind::Left(r)) => {
                if let Some(of) = ConversationRef::of(&r).filter(|of| shown(Some(*of))) {
                    println!("(left {of})");
                    if only.is_some() {
                        break;
                    }
                }
            }
            _ => {}
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
