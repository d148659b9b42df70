//! Discord-style servers: members with roles (owner, admin, member) and the permissions they
//! carry, invite codes with expiry and use limits, channels with messages.

use std::sync::Arc;

use rand::{Rng, distr::Alphanumeric};
use sqlx::{Connection, MySqlConnection, Row, mysql::MySqlRow};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    App, check_name,
    conversation::{Access, Conversations, Membership},
};
use crate::{
    db,
    error::{Error, Result},
    messages::Tables,
    pb::{
        chat::{
            DeleteMessageRequest, EditMessageRequest, Event, HistoryRequest, HistoryResponse,
            Message, SendMessageRequest, SubscribeRequest,
        },
        servers::{
            Channel, CreateChannelRequest, CreateInviteRequest, CreateServerRequest,
            DeleteChannelRequest, DeleteChannelResponse, GetServerRequest, Invite, JoinRequest,
            KickRequest, KickResponse, LeaveRequest, LeaveResponse, ListMyServersRequest,
            ListMyServersResponse, Member, RenameChannelRequest, Role, Server, SetRoleRequest,
            servers_server::Servers,
        },
    },
    token::now_ms,
};

/// The server tables; channels are the conversations.
pub const TABLES: Tables = Tables {
    conversations: "servers_channels",
    messages: "servers_messages",
};

const MAX_INVITE_TTL_S: u32 = 30 * 24 * 3600;
const DEFAULT_INVITE_TTL_S: u32 = 24 * 3600;
const MAX_CHANNELS: i64 = 500;

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE servers_servers (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           name VARCHAR(400) NOT NULL,
           created_at_ms BIGINT NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        "CREATE TABLE servers_members (
           server_id BIGINT UNSIGNED NOT NULL,
           user_id BIGINT UNSIGNED NOT NULL,
           role TINYINT NOT NULL,
           joined_at_ms BIGINT NOT NULL,
           PRIMARY KEY (server_id, user_id),
           KEY user_id (user_id)
         ) ENGINE=InnoDB"
            .into(),
        "CREATE TABLE servers_channels (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           server_id BIGINT UNSIGNED NOT NULL,
           name VARCHAR(400) NOT NULL,
           last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
           deleted TINYINT(1) NOT NULL DEFAULT 0,
           created_at_ms BIGINT NOT NULL,
           KEY server_id (server_id)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        "CREATE TABLE servers_invites (
           code VARCHAR(16) NOT NULL PRIMARY KEY,
           server_id BIGINT UNSIGNED NOT NULL,
           created_by BIGINT UNSIGNED NOT NULL,
           expires_at_ms BIGINT NOT NULL,
           max_uses INT UNSIGNED NOT NULL,
           uses INT UNSIGNED NOT NULL DEFAULT 0
         ) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin"
            .into(),
        TABLES.messages_ddl(),
    ]
}

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

fn role_code(role: Role) -> i8 {
    i8::try_from(role as i32).unwrap_or(0)
}

/// `user`'s role in `server` (None: not a member), in one round trip; NOT_FOUND without it.
async fn role_of(conn: &mut MySqlConnection, server: u64, user: u64) -> Result<Option<Role>> {
    let row: Option<(Option<i8>,)> = sqlx::query_as(
        "SELECT m.role FROM servers_servers s
         LEFT JOIN servers_members m ON m.server_id = s.id AND m.user_id = ?
         WHERE s.id = ?",
    )
    .bind(user)
    .bind(server)
    .fetch_optional(&mut *conn)
    .await?;
    let (role,) = row.ok_or_else(|| Error::NotFound(format!("server {server} not found")))?;
    Ok(role.and_then(|r| Role::try_from(i32::from(r)).ok()))
}

async fn require(
    conn: &mut MySqlConnection,
    server: u64,
    user: u64,
    permission: Option<Permission>,
) -> Result<Role> {
    let role = role_of(conn, server, user)
        .await?
        .ok_or_else(|| Error::PermissionDenied(format!("not a member of server {server}")))?;
    if let Some(p) = permission
        && !allows(role, p)
    {
        return Err(Error::PermissionDenied(format!("your role may not {p:?}")));
    }
    Ok(role)
}

async fn channel_server(conn: &mut MySqlConnection, channel: u64) -> Result<u64> {
    sqlx::query_scalar("SELECT server_id FROM servers_channels WHERE id = ? AND deleted = 0")
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("channel {channel} not found")))
}

/// Members of the channel's server read and write; MANAGE_MESSAGES moderates.
pub struct ChannelMembership;

#[tonic::async_trait]
impl Membership for ChannelMembership {
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access> {
        let server = channel_server(conn, conv).await?;
        let role = require(conn, server, user, None).await?;
        Ok(Access {
            moderator: allows(role, Permission::ManageMessages),
        })
    }
}

fn row_to_channel(row: &MySqlRow) -> Result<Channel> {
    Ok(Channel {
        id: row.try_get("id")?,
        server_id: row.try_get("server_id")?,
        name: row.try_get("name")?,
        last_seq: row.try_get("last_seq")?,
    })
}

async fn load_channel(conn: &mut MySqlConnection, id: u64) -> Result<Channel> {
    let row = sqlx::query(
        "SELECT id, server_id, name, last_seq FROM servers_channels WHERE id = ? AND deleted = 0",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NotFound(format!("channel {id} not found")))?;
    row_to_channel(&row)
}

async fn load_server(conn: &mut MySqlConnection, id: u64) -> Result<Server> {
    let name: String = sqlx::query_scalar("SELECT name FROM servers_servers WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("server {id} not found")))?;
    let members = sqlx::query(
        "SELECT user_id, role FROM servers_members WHERE server_id = ? ORDER BY joined_at_ms, user_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Member {
            user_id: r.try_get("user_id")?,
            role: i32::from(r.try_get::<i8, _>("role")?),
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let channels = sqlx::query(
        "SELECT id, server_id, name, last_seq FROM servers_channels WHERE server_id = ? AND deleted = 0 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(row_to_channel)
    .collect::<Result<Vec<_>>>()?;
    Ok(Server {
        id,
        name,
        members,
        channels,
    })
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
            conversations: Conversations {
                app: app.clone(),
                service: "servers",
                tables: TABLES,
                membership: Arc::new(ChannelMembership),
            },
            app,
        }
    }

    /// Apply the `servers_` schema.
    pub async fn migrate(db: &db::Db) -> Result<()> {
        let steps = migrations();
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        db::migrate(&db.primary().await, "servers", &steps).await
    }
}

#[tonic::async_trait]
impl Servers for ServersService {
    async fn create_server(
        &self,
        req: Request<CreateServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let name = req.into_inner().name;
        check_name("server", &name)?;
        let mut conn = self.app.primary_conn().await?;
        let mut tx = conn.begin().await.map_err(Error::from)?;
        let now = now_ms();
        let id = sqlx::query("INSERT INTO servers_servers (name, created_at_ms) VALUES (?, ?)")
            .bind(&name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?
            .last_insert_id();
        sqlx::query("INSERT INTO servers_members (server_id, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(caller.sub)
            .bind(role_code(Role::Owner))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        sqlx::query("INSERT INTO servers_channels (server_id, name, created_at_ms) VALUES (?, 'general', ?)")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let server = load_server(&mut conn, id).await?;
        Ok(self.app.written(caller.sub, &token, server))
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
        Ok(Response::new(load_server(&mut conn, id).await?))
    }

    async fn list_my_servers(
        &self,
        req: Request<ListMyServersRequest>,
    ) -> Result<Response<ListMyServersResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let mut conn = self.app.db.reader(token.as_deref()).await?;
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT server_id FROM servers_members WHERE user_id = ? ORDER BY server_id LIMIT 1000",
        )
        .bind(caller.sub)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let mut servers = Vec::with_capacity(ids.len());
        for id in ids {
            servers.push(load_server(&mut conn, id).await?);
        }
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
        require(
            &mut conn,
            req.server_id,
            caller.sub,
            Some(Permission::ManageInvites),
        )
        .await?;
        let code: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        let expires = now_ms() + i64::from(ttl) * 1000;
        sqlx::query(
            "INSERT INTO servers_invites (code, server_id, created_by, expires_at_ms, max_uses) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&code)
        .bind(req.server_id)
        .bind(caller.sub)
        .bind(expires)
        .bind(req.max_uses)
        .execute(&mut *conn)
        .await
        .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let invite = Invite {
            code,
            server_id: req.server_id,
            expires_at_ms: expires,
            max_uses: req.max_uses,
            uses: 0,
        };
        Ok(self.app.written(caller.sub, &token, invite))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let code = req.into_inner().code;
        if code.is_empty() || code.len() > 16 {
            return Err(Error::InvalidArgument("invalid invite code".into()).into());
        }
        let mut conn = self.app.primary_conn().await?;
        let mut tx = conn.begin().await.map_err(Error::from)?;
        let invite = sqlx::query(
            "SELECT server_id, expires_at_ms, max_uses, uses FROM servers_invites WHERE code = ? FOR UPDATE",
        )
        .bind(&code)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?
        .ok_or_else(|| Error::NotFound("no such invite".into()))?;
        let server: u64 = invite.try_get("server_id").map_err(Error::from)?;
        let expires: i64 = invite.try_get("expires_at_ms").map_err(Error::from)?;
        let (max_uses, uses): (u32, u32) = (
            invite.try_get("max_uses").map_err(Error::from)?,
            invite.try_get("uses").map_err(Error::from)?,
        );
        if expires <= now_ms() {
            return Err(Error::FailedPrecondition("the invite has expired".into()).into());
        }
        if max_uses != 0 && uses >= max_uses {
            return Err(Error::FailedPrecondition("the invite has been used up".into()).into());
        }
        let joined = sqlx::query(
            "INSERT IGNORE INTO servers_members (server_id, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(server)
        .bind(caller.sub)
        .bind(role_code(Role::Member))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
        // Joining again uses nothing up.
        if joined.rows_affected() == 1 {
            sqlx::query("UPDATE servers_invites SET uses = uses + 1 WHERE code = ?")
                .bind(&code)
                .execute(&mut *tx)
                .await
                .map_err(Error::from)?;
        }
        tx.commit().await.map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let loaded = load_server(&mut conn, server).await?;
        Ok(self.app.written(caller.sub, &token, loaded))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let server = req.into_inner().server_id;
        let mut conn = self.app.primary_conn().await?;
        let role = require(&mut conn, server, caller.sub, None).await?;
        if role == Role::Owner {
            return Err(Error::FailedPrecondition(
                "the owner cannot leave: make someone else owner first".into(),
            )
            .into());
        }
        sqlx::query("DELETE FROM servers_members WHERE server_id = ? AND user_id = ?")
            .bind(server)
            .bind(caller.sub)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        Ok(self.app.written(caller.sub, &token, LeaveResponse {}))
    }

    async fn kick(&self, req: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let mine = require(&mut conn, req.server_id, caller.sub, Some(Permission::Kick)).await?;
        let theirs = role_of(&mut conn, req.server_id, req.user_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "user {} is not in server {}",
                    req.user_id, req.server_id
                ))
            })?;
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
        sqlx::query("DELETE FROM servers_members WHERE server_id = ? AND user_id = ?")
            .bind(req.server_id)
            .bind(req.user_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        Ok(self.app.written(caller.sub, &token, KickResponse {}))
    }

    async fn set_role(&self, req: Request<SetRoleRequest>) -> Result<Response<Server>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let role = Role::try_from(req.role)
            .ok()
            .filter(|r| *r != Role::Unspecified)
            .ok_or_else(|| Error::InvalidArgument("role must be member, admin or owner".into()))?;
        let mut conn = self.app.primary_conn().await?;
        let mut tx = conn.begin().await.map_err(Error::from)?;
        require(
            &mut tx,
            req.server_id,
            caller.sub,
            Some(Permission::ManageRoles),
        )
        .await?;
        if req.user_id == caller.sub {
            return Err(Error::InvalidArgument("change someone else's role".into()).into());
        }
        role_of(&mut tx, req.server_id, req.user_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "user {} is not in server {}",
                    req.user_id, req.server_id
                ))
            })?;
        sqlx::query("UPDATE servers_members SET role = ? WHERE server_id = ? AND user_id = ?")
            .bind(role_code(role))
            .bind(req.server_id)
            .bind(req.user_id)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        if role == Role::Owner {
            // One owner: handing over ownership makes the old owner an admin.
            sqlx::query("UPDATE servers_members SET role = ? WHERE server_id = ? AND user_id = ?")
                .bind(role_code(Role::Admin))
                .bind(req.server_id)
                .bind(caller.sub)
                .execute(&mut *tx)
                .await
                .map_err(Error::from)?;
        }
        tx.commit().await.map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let server = load_server(&mut conn, req.server_id).await?;
        Ok(self.app.written(caller.sub, &token, server))
    }

    async fn create_channel(
        &self,
        req: Request<CreateChannelRequest>,
    ) -> Result<Response<Channel>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("channel", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        require(
            &mut conn,
            req.server_id,
            caller.sub,
            Some(Permission::ManageChannels),
        )
        .await?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM servers_channels WHERE server_id = ? AND deleted = 0",
        )
        .bind(req.server_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::from)?;
        if count >= MAX_CHANNELS {
            return Err(Error::FailedPrecondition(format!(
                "a server has at most {MAX_CHANNELS} channels"
            ))
            .into());
        }
        let id = sqlx::query(
            "INSERT INTO servers_channels (server_id, name, created_at_ms) VALUES (?, ?, ?)",
        )
        .bind(req.server_id)
        .bind(&req.name)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(Error::from)?
        .last_insert_id();
        let token = self.app.db.commit_token(&mut conn).await?;
        let channel = load_channel(&mut conn, id).await?;
        Ok(self.app.written(caller.sub, &token, channel))
    }

    async fn rename_channel(
        &self,
        req: Request<RenameChannelRequest>,
    ) -> Result<Response<Channel>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("channel", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        let server = channel_server(&mut conn, req.channel_id).await?;
        require(
            &mut conn,
            server,
            caller.sub,
            Some(Permission::ManageChannels),
        )
        .await?;
        sqlx::query("UPDATE servers_channels SET name = ? WHERE id = ?")
            .bind(&req.name)
            .bind(req.channel_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let channel = load_channel(&mut conn, req.channel_id).await?;
        Ok(self.app.written(caller.sub, &token, channel))
    }

    async fn delete_channel(
        &self,
        req: Request<DeleteChannelRequest>,
    ) -> Result<Response<DeleteChannelResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let channel = req.into_inner().channel_id;
        let mut conn = self.app.primary_conn().await?;
        let server = channel_server(&mut conn, channel).await?;
        require(
            &mut conn,
            server,
            caller.sub,
            Some(Permission::ManageChannels),
        )
        .await?;
        sqlx::query("UPDATE servers_channels SET deleted = 1 WHERE id = ?")
            .bind(channel)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        Ok(self
            .app
            .written(caller.sub, &token, DeleteChannelResponse {}))
    }

    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.send(req).await
    }

    async fn edit_message(
        &self,
        req: Request<EditMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.edit(req).await
    }

    async fn delete_message(
        &self,
        req: Request<DeleteMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        self.conversations.delete(req).await
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.conversations.history(req).await
    }

    type SubscribeStream = ReceiverStream<Result<Event, Status>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.conversations.subscribe(req).await
    }
}
