//! Group chats: an owner, admins and members; messages for members only.

use std::sync::Arc;

use sqlx::{Connection, MySqlConnection, Row};
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
        groups::{
            AddMemberRequest, CreateGroupRequest, GetGroupRequest, Group, LeaveRequest,
            LeaveResponse, ListMyGroupsRequest, ListMyGroupsResponse, Member, RemoveMemberRequest,
            RenameGroupRequest, Role, groups_server::Groups,
        },
    },
    token::now_ms,
};

/// The group tables.
pub const TABLES: Tables = Tables {
    conversations: "groups_groups",
    messages: "groups_messages",
};

/// Most members a group may have.
pub const MAX_MEMBERS: usize = 1000;

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE groups_groups (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           name VARCHAR(400) NOT NULL,
           last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
           created_at_ms BIGINT NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        "CREATE TABLE groups_members (
           group_id BIGINT UNSIGNED NOT NULL,
           user_id BIGINT UNSIGNED NOT NULL,
           role TINYINT NOT NULL,
           joined_at_ms BIGINT NOT NULL,
           PRIMARY KEY (group_id, user_id),
           KEY user_id (user_id)
         ) ENGINE=InnoDB"
            .into(),
        TABLES.messages_ddl(),
    ]
}

/// Members may read and write; owners and admins moderate.
pub struct GroupMembership;

/// `user`'s role in `group` (None: not a member), in one round trip; NOT_FOUND without it.
async fn role_of(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<Option<Role>> {
    let row: Option<(Option<i8>,)> = sqlx::query_as(
        "SELECT m.role FROM groups_groups g
         LEFT JOIN groups_members m ON m.group_id = g.id AND m.user_id = ?
         WHERE g.id = ?",
    )
    .bind(user)
    .bind(group)
    .fetch_optional(&mut *conn)
    .await?;
    let (role,) = row.ok_or_else(|| Error::NotFound(format!("group {group} not found")))?;
    Ok(role.and_then(|r| Role::try_from(i32::from(r)).ok()))
}

async fn require_role(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<Role> {
    role_of(conn, group, user)
        .await?
        .ok_or_else(|| Error::PermissionDenied(format!("not a member of group {group}")))
}

fn is_manager(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin)
}

#[tonic::async_trait]
impl Membership for GroupMembership {
    async fn access(&self, conn: &mut MySqlConnection, user: u64, conv: u64) -> Result<Access> {
        let role = require_role(conn, conv, user).await?;
        Ok(Access {
            moderator: is_manager(role),
        })
    }
}

/// The groups service.
pub struct GroupsService {
    app: Arc<App>,
    conversations: Conversations<GroupMembership>,
}

impl GroupsService {
    /// Groups over `app`.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            conversations: Conversations {
                app: app.clone(),
                service: "groups",
                tables: TABLES,
                membership: Arc::new(GroupMembership),
            },
            app,
        }
    }

    /// Apply the `groups_` schema.
    pub async fn migrate(db: &db::Db) -> Result<()> {
        let steps = migrations();
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        db::migrate(&db.primary().await, "groups", &steps).await
    }
}

async fn load_group(conn: &mut MySqlConnection, id: u64) -> Result<Group> {
    let row = sqlx::query("SELECT id, name, last_seq FROM groups_groups WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("group {id} not found")))?;
    let members = sqlx::query(
        "SELECT user_id, role FROM groups_members WHERE group_id = ? ORDER BY joined_at_ms, user_id",
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
    Ok(Group {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        members,
        last_seq: row.try_get("last_seq")?,
    })
}

fn role_code(role: Role) -> i8 {
    // Role values are 0-3.
    i8::try_from(role as i32).unwrap_or(0)
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn create_group(
        &self,
        req: Request<CreateGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("group", &req.name)?;
        let mut members: Vec<u64> = req
            .member_ids
            .into_iter()
            .filter(|m| *m != caller.sub && *m != 0)
            .collect();
        members.sort_unstable();
        members.dedup();
        if members.len() + 1 > MAX_MEMBERS {
            return Err(Error::InvalidArgument(format!(
                "a group has at most {MAX_MEMBERS} members"
            ))
            .into());
        }
        let mut conn = self.app.primary_conn().await?;
        let mut tx = conn.begin().await.map_err(Error::from)?;
        let now = now_ms();
        let id = sqlx::query("INSERT INTO groups_groups (name, created_at_ms) VALUES (?, ?)")
            .bind(&req.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?
            .last_insert_id();
        sqlx::query("INSERT INTO groups_members (group_id, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(caller.sub)
            .bind(role_code(Role::Owner))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        for m in members {
            sqlx::query("INSERT INTO groups_members (group_id, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(m)
                .bind(role_code(Role::Member))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(Error::from)?;
        }
        tx.commit().await.map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let group = load_group(&mut conn, id).await?;
        Ok(self.app.written(caller.sub, &token, group))
    }

    async fn get_group(&self, req: Request<GetGroupRequest>) -> Result<Response<Group>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let id = req.into_inner().group_id;
        let user = caller.sub;
        let mut conn = self
            .app
            .granted(token.as_deref(), move |conn| {
                Box::pin(async move { require_role(conn, id, user).await.map(|_| ()) })
            })
            .await?;
        Ok(Response::new(load_group(&mut conn, id).await?))
    }

    async fn rename_group(
        &self,
        req: Request<RenameGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("group", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        let role = require_role(&mut conn, req.group_id, caller.sub).await?;
        if !is_manager(role) {
            return Err(Error::PermissionDenied(
                "only the owner or an admin may rename the group".into(),
            )
            .into());
        }
        sqlx::query("UPDATE groups_groups SET name = ? WHERE id = ?")
            .bind(&req.name)
            .bind(req.group_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let group = load_group(&mut conn, req.group_id).await?;
        Ok(self.app.written(caller.sub, &token, group))
    }

    async fn add_member(&self, req: Request<AddMemberRequest>) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let role = match Role::try_from(req.role).unwrap_or(Role::Unspecified) {
            Role::Unspecified | Role::Member => Role::Member,
            Role::Admin => Role::Admin,
            Role::Owner => {
                return Err(Error::InvalidArgument(
                    "a group has one owner; add as member or admin".into(),
                )
                .into());
            }
        };
        if req.user_id == 0 {
            return Err(Error::InvalidArgument("user_id is required".into()).into());
        }
        let mut conn = self.app.primary_conn().await?;
        let mine = require_role(&mut conn, req.group_id, caller.sub).await?;
        if !is_manager(mine) || (role == Role::Admin && mine != Role::Owner) {
            return Err(Error::PermissionDenied(
                "only the owner adds admins; owners and admins add members".into(),
            )
            .into());
        }
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM groups_members WHERE group_id = ?")
                .bind(req.group_id)
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::from)?;
        if count >= MAX_MEMBERS as i64 {
            return Err(Error::FailedPrecondition(format!(
                "the group has {MAX_MEMBERS} members already"
            ))
            .into());
        }
        sqlx::query(
            "INSERT INTO groups_members (group_id, user_id, role, joined_at_ms) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE role = IF(role = ?, role, VALUES(role))",
        )
        .bind(req.group_id)
        .bind(req.user_id)
        .bind(role_code(role))
        .bind(now_ms())
        .bind(role_code(Role::Owner))
        .execute(&mut *conn)
        .await
        .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let group = load_group(&mut conn, req.group_id).await?;
        Ok(self.app.written(caller.sub, &token, group))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let mine = require_role(&mut conn, req.group_id, caller.sub).await?;
        let theirs = role_of(&mut conn, req.group_id, req.user_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "user {} is not in group {}",
                    req.user_id, req.group_id
                ))
            })?;
        let allowed = match mine {
            Role::Owner => theirs != Role::Owner,
            Role::Admin => theirs == Role::Member,
            _ => false,
        };
        if !allowed {
            return Err(Error::PermissionDenied(
                "owners remove admins and members; admins remove members".into(),
            )
            .into());
        }
        sqlx::query("DELETE FROM groups_members WHERE group_id = ? AND user_id = ?")
            .bind(req.group_id)
            .bind(req.user_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let group = load_group(&mut conn, req.group_id).await?;
        Ok(self.app.written(caller.sub, &token, group))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let group = req.into_inner().group_id;
        let mut conn = self.app.primary_conn().await?;
        let mut tx = conn.begin().await.map_err(Error::from)?;
        let mine = require_role(&mut tx, group, caller.sub).await?;
        sqlx::query("DELETE FROM groups_members WHERE group_id = ? AND user_id = ?")
            .bind(group)
            .bind(caller.sub)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        if mine == Role::Owner {
            // Hand the group to the longest-standing admin, else member.
            let heir: Option<u64> = sqlx::query_scalar(
                "SELECT user_id FROM groups_members WHERE group_id = ? ORDER BY role DESC, joined_at_ms, user_id LIMIT 1 FOR UPDATE",
            )
            .bind(group)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::from)?;
            if let Some(heir) = heir {
                sqlx::query(
                    "UPDATE groups_members SET role = ? WHERE group_id = ? AND user_id = ?",
                )
                .bind(role_code(Role::Owner))
                .bind(group)
                .bind(heir)
                .execute(&mut *tx)
                .await
                .map_err(Error::from)?;
            }
        }
        tx.commit().await.map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        Ok(self.app.written(caller.sub, &token, LeaveResponse {}))
    }

    async fn list_my_groups(
        &self,
        req: Request<ListMyGroupsRequest>,
    ) -> Result<Response<ListMyGroupsResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let mut conn = self.app.db.reader(token.as_deref()).await?;
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT group_id FROM groups_members WHERE user_id = ? ORDER BY group_id LIMIT 1000",
        )
        .bind(caller.sub)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let mut groups = Vec::with_capacity(ids.len());
        for id in ids {
            groups.push(load_group(&mut conn, id).await?);
        }
        Ok(Response::new(ListMyGroupsResponse { groups }))
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
