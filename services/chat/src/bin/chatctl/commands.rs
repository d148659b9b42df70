//! The group, DM and server subcommands.

use chatd::{
    client::authed,
    pb::{
        dms::{ListConversationsRequest, OpenRequest, dms_client::DmsClient},
        groups::{
            AcceptInvitationRequest, AddMemberRequest, CreateGroupRequest, Group,
            ListInvitationsRequest, ListMyGroupsRequest, Role, groups_client::GroupsClient,
        },
        servers::{
            CreateInviteRequest, CreateServerRequest, JoinRequest, ListMyServersRequest,
            servers_client::ServersClient,
        },
    },
};
use tonic::Code;

use crate::{
    cli::{DmCmd, GroupCmd, ServerCmd},
    session::{Client, describe, printable},
};

/// A group's one-line summary.
fn describe_group(g: &Group) -> String {
    let mut line = format!(
        "group:{}  {} ({} members",
        g.id,
        printable(&g.name),
        g.members.len()
    );
    if !g.invited.is_empty() {
        line.push_str(&format!(", {} invited", g.invited.len()));
    }
    line.push(')');
    line
}

pub(crate) async fn group(c: &mut Client, cmd: GroupCmd) -> anyhow::Result<()> {
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
            println!("{}", describe_group(&g));
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
            println!("{}", describe_group(&g));
        }
        GroupCmd::Invitations => {
            let invitations = with_refresh!(c, {
                let session = c.session()?;
                GroupsClient::new(c.channel.clone())
                    .list_invitations(authed(&session, ListInvitationsRequest {})?)
                    .await
            })
            .into_inner()
            .invitations;
            for i in invitations {
                println!(
                    "group:{:<6} {} (invited by user {}: chatctl group accept {})",
                    i.group_id,
                    printable(&i.group_name),
                    i.invited_by,
                    i.group_id
                );
            }
        }
        GroupCmd::Accept { group } => {
            let g = with_refresh!(c, {
                let session = c.session()?;
                GroupsClient::new(c.channel.clone())
                    .accept_invitation(authed(
                        &session,
                        AcceptInvitationRequest { group_id: group },
                    )?)
                    .await
            })
            .into_inner();
            println!("{}", describe_group(&g));
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
                    printable(&g.name),
                    g.members.len(),
                    g.last_seq
                );
            }
        }
    }
    Ok(())
}

pub(crate) async fn dm(c: &mut Client, cmd: DmCmd) -> anyhow::Result<()> {
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

pub(crate) async fn server(c: &mut Client, cmd: ServerCmd) -> anyhow::Result<()> {
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
