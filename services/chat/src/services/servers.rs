//! Discord-style servers: members with roles (owner, admin, member) and the permissions they
//! carry, invite codes with expiry and use limits, channels with messages.

use std::sync::Arc;

use sqlx::MySqlConnection;
use tonic::{Request, Response, Status};

use super::{
    App, check_name,
    conversation::{Access, Conversations, Membership},
    conversation_service,
};
use crate::{
    error::{Error, Result},
    pb::servers::{
        Channel, CreateChannelRequest, CreateInviteRequest, CreateServerRequest,
        DeleteChannelRequest, DeleteChannelResponse, GetServerRequest, Invite, JoinRequest,
        KickRequest, KickResponse, LeaveRequest, LeaveResponse, ListMyServersRequest,
        ListMyServersResponse, RenameChannelRequest, Role, Server, SetRoleRequest,
        servers_server::Servers,
    },
    store::servers as store,
};

/// The service's name, in hints to subscribers.
const SERVICE: &str = "servers";

const MAX_INVITE_TTL_S: u32 = 30 * 24 * 3600;
const DEFAULT_INVITE_TTL_S: u32 = 24 * 3600;
const MAX_CHANNELS: i64 = 500;

/// What a role may do beyond reading and writing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create invites.
    ManageInvites,
    /// Remove members.
    Kick,
    /// Create, rename and delete channels.
    ManageChannels,
    /// Delete other people's messages.
    ManageMessages,
    /// Change roles.
    ManageRoles,
}

/// Whether `role` carries `permission`.
pub fn allows(role: Role, permission: Permission) -> bool {
    match role {
        Role::Owner => true,
        Role::Admin => permission != Permission::ManageRoles,
        Role::Member | Role::Unspecified => false,
    }
}

/// `user`'s role in `server` when they are a member and (if given) it carries `permission`;
/// PERMISSION_DENIED otherwise.
async fn require(
    conn: &mut MySqlConnection,
    server: u64,
    user: u64,
    permission: Option<Permission>,
) -> Result<Role> {
    let role = store::role(conn, server, user)
        .await?
        .ok_or_else(|| Error::PermissionDenied(format!("not a member of server {server}")))?;
    if let Some(p) = permission
        && !allows(role, p)
    {
        return Err(Error::PermissionDenied(format!("your role may not {p:?}")));
    }
    Ok(role)
}

/// `user`'s role in the server of a live channel, when it carries `permission`.
async fn require_in_channel(
    conn: &mut MySqlConnection,
    channel: u64,
    user: u64,
    permission: Option<Permission>,
) -> Result<Role> {
    let server = store::channel_server(conn, channel).await?;
    require(conn, server, user, permission).await
}

/// The role of `user` in `server`, who must be a member; NOT_FOUND otherwise.
async fn member_role(conn: &mut MySqlConnection, server: u64, user: u64) -> Result<Role> {
    store::role(conn, server, user)
        .await?
        .ok_or_else(|| Error::NotFound(format!("user {user} is not in server {server}")))
}

/// Members of the channel's server read and write; MANAGE_MESSAGES moderates.
pub struct ChannelMembership;

#[tonic::async_trait]
impl Membership for ChannelMembership {
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access> {
        let role = require_in_channel(conn, conv, user, None).await?;
        Ok(Access {
            moderator: allows(role, Permission::ManageMessages),
        })
    }
}

/// The servers service.
pub struct ServersService {
    app: Arc<App>,
    conversations: Conversations<ChannelMembership>,
}

impl ServersService {
    /// Servers over `app`.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            conversations: Conversations::new(
                app.clone(),
                SERVICE,
                store::TABLES,
                ChannelMembership,
            ),
            app,
        }
    }
}

conversation_service! {
impl Servers for ServersService {
    async fn create_server(
        &self,
        req: Request<CreateServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let name = req.into_inner().name;
        check_name("server", &name)?;
        let mut conn = self.app.primary_conn().await?;
        let id = store::create(&mut conn, &name, caller.sub).await?;
        let server = store::load(&mut conn, id).await?;
        Ok(self.app.committed_telling(&mut conn, caller.sub, &[caller.sub], server).await?)
    }

    async fn get_server(&self, req: Request<GetServerRequest>) -> Result<Response<Server>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let id = req.into_inner().server_id;
        let user = caller.sub;
        let mut conn = self
            .app
            .granted(token.as_deref(), move |conn| {
                Box::pin(async move { require(conn, id, user, None).await.map(|_| ()) })
            })
            .await?;
        Ok(Response::new(store::load(&mut conn, id).await?))
    }

    async fn list_my_servers(
        &self,
        req: Request<ListMyServersRequest>,
    ) -> Result<Response<ListMyServersResponse>, Status> {
        let (caller, mut conn) = self.app.reader(&req).await?;
        let servers = store::of_user(&mut conn, caller.sub).await?;
        Ok(Response::new(ListMyServersResponse { servers }))
    }

    async fn create_invite(
        &self,
        req: Request<CreateInviteRequest>,
    ) -> Result<Response<Invite>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_INVITE_TTL_S,
            t if t > MAX_INVITE_TTL_S => {
                return Err(Error::InvalidArgument(format!(
                    "ttl_seconds is more than {MAX_INVITE_TTL_S}"
                ))
                .into());
            }
            t => t,
        };
        let mut conn = self.app.primary_conn().await?;
        let server = req.server_id;
        require(&mut conn, server, caller.sub, Some(Permission::ManageInvites)).await?;
        let invite = store::create_invite(&mut conn, server, caller.sub, ttl, req.max_uses).await?;
        Ok(self.app.committed(&mut conn, caller.sub, invite).await?)
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let code = req.into_inner().code;
        if code.is_empty() || code.len() > 16 {
            return Err(Error::InvalidArgument("invalid invite code".into()).into());
        }
        let mut conn = self.app.primary_conn().await?;
        let id = store::join(&mut conn, &code, caller.sub).await?;
        let server = store::load(&mut conn, id).await?;
        Ok(self.app.committed_telling(&mut conn, caller.sub, &[caller.sub], server).await?)
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let server = req.into_inner().server_id;
        let mut conn = self.app.primary_conn().await?;
        if require(&mut conn, server, caller.sub, None).await? == Role::Owner {
            return Err(Error::FailedPrecondition(
                "the owner cannot leave: make someone else owner first".into(),
            )
            .into());
        }
        store::remove_member(&mut conn, server, caller.sub).await?;
        let channels = store::channel_ids(&mut conn, server).await?;
        Ok(self
            .app
            .access_changed(
                &mut conn,
                caller.sub,
                (SERVICE, &channels),
                &[caller.sub],
                LeaveResponse {},
            )
            .await?)
    }

    async fn kick(&self, req: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let mine = require(&mut conn, req.server_id, caller.sub, Some(Permission::Kick)).await?;
        let theirs = member_role(&mut conn, req.server_id, req.user_id).await?;
        let allowed = match mine {
            Role::Owner => theirs != Role::Owner,
            _ => theirs == Role::Member,
        };
        if !allowed {
            return Err(Error::PermissionDenied(
                "nobody kicks the owner; admins kick members only".into(),
            )
            .into());
        }
        store::remove_member(&mut conn, req.server_id, req.user_id).await?;
        let channels = store::channel_ids(&mut conn, req.server_id).await?;
        Ok(self
            .app
            .access_changed(
                &mut conn,
                caller.sub,
                (SERVICE, &channels),
                &[req.user_id],
                KickResponse {},
            )
            .await?)
    }

    async fn set_role(&self, req: Request<SetRoleRequest>) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let role = Role::try_from(req.role)
            .ok()
            .filter(|r| *r != Role::Unspecified)
            .ok_or_else(|| Error::InvalidArgument("role must be member, admin or owner".into()))?;
        let mut conn = self.app.primary_conn().await?;
        let mut tx = crate::store::begin(&mut conn).await?;
        let server = req.server_id;
        require(&mut tx, server, caller.sub, Some(Permission::ManageRoles)).await?;
        if req.user_id == caller.sub {
            return Err(Error::InvalidArgument("change someone else's role".into()).into());
        }
        member_role(&mut tx, server, req.user_id).await?;
        store::set_role(&mut tx, server, req.user_id, role).await?;
        if role == Role::Owner {
            // One owner: handing over ownership makes the old owner an admin.
            store::set_role(&mut tx, server, caller.sub, Role::Admin).await?;
        }
        crate::store::commit(tx).await?;
        let loaded = store::load(&mut conn, server).await?;
        Ok(self.app.committed(&mut conn, caller.sub, loaded).await?)
    }

    async fn create_channel(
        &self,
        req: Request<CreateChannelRequest>,
    ) -> Result<Response<Channel>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("channel", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        let server = req.server_id;
        require(&mut conn, server, caller.sub, Some(Permission::ManageChannels)).await?;
        if store::channel_count(&mut conn, server).await? >= MAX_CHANNELS {
            return Err(Error::FailedPrecondition(format!(
                "a server has at most {MAX_CHANNELS} channels"
            ))
            .into());
        }
        let id = store::create_channel(&mut conn, server, &req.name).await?;
        let channel = store::channel(&mut conn, id).await?;
        Ok(self
            .app
            .channel_added(&mut conn, caller.sub, server, channel)
            .await?)
    }

    async fn rename_channel(
        &self,
        req: Request<RenameChannelRequest>,
    ) -> Result<Response<Channel>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("channel", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        let channel = req.channel_id;
        require_in_channel(&mut conn, channel, caller.sub, Some(Permission::ManageChannels)).await?;
        store::rename_channel(&mut conn, channel, &req.name).await?;
        let renamed = store::channel(&mut conn, channel).await?;
        Ok(self.app.committed(&mut conn, caller.sub, renamed).await?)
    }

    async fn delete_channel(
        &self,
        req: Request<DeleteChannelRequest>,
    ) -> Result<Response<DeleteChannelResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let channel = req.into_inner().channel_id;
        let mut conn = self.app.primary_conn().await?;
        require_in_channel(&mut conn, channel, caller.sub, Some(Permission::ManageChannels)).await?;
        store::delete_channel(&mut conn, channel).await?;
        Ok(self
            .app
            .access_changed(
                &mut conn,
                caller.sub,
                (SERVICE, &[channel]),
                &[],
                DeleteChannelResponse {},
            )
            .await?)
    }
}
}
