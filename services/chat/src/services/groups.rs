//! Group chats: an owner, admins and members; messages for members only.

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
    pb::groups::{
        AcceptInvitationRequest, AddMemberRequest, CreateGroupRequest, DeclineInvitationRequest,
        DeclineInvitationResponse, GetGroupRequest, Group, LeaveRequest, LeaveResponse,
        ListInvitationsRequest, ListInvitationsResponse, ListMyGroupsRequest, ListMyGroupsResponse,
        RemoveMemberRequest, RenameGroupRequest, Role, groups_server::Groups,
    },
    store::groups as store,
};

/// Most members a group may have.
pub const MAX_MEMBERS: usize = 1000;

/// The service's name, in hints to subscribers.
const SERVICE: &str = "groups";

/// Members may read and write; owners and admins moderate.
pub struct GroupMembership;

async fn require_role(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<Role> {
    store::role(conn, group, user)
        .await?
        .ok_or_else(|| Error::PermissionDenied(format!("not a member of group {group}")))
}

fn is_manager(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin)
}

/// Whether a member with role `mine` may remove one with role `theirs`.
fn may_remove(mine: Role, theirs: Role) -> bool {
    match mine {
        Role::Owner => theirs != Role::Owner,
        Role::Admin => theirs == Role::Member,
        _ => false,
    }
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
            conversations: Conversations::new(app.clone(), SERVICE, store::TABLES, GroupMembership),
            app,
        }
    }
}

conversation_service! {
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
        let id = store::create(&mut conn, &req.name, caller.sub, &members).await?;
        let group = store::load(&mut conn, id).await?;
        Ok(self.app.committed_telling(&mut conn, caller.sub, &[caller.sub], group).await?)
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
        Ok(Response::new(store::load(&mut conn, id).await?))
    }

    async fn rename_group(
        &self,
        req: Request<RenameGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        check_name("group", &req.name)?;
        let mut conn = self.app.primary_conn().await?;
        if !is_manager(require_role(&mut conn, req.group_id, caller.sub).await?) {
            return Err(Error::PermissionDenied(
                "only the owner or an admin may rename the group".into(),
            )
            .into());
        }
        store::rename(&mut conn, req.group_id, &req.name).await?;
        let group = store::load(&mut conn, req.group_id).await?;
        Ok(self.app.committed(&mut conn, caller.sub, group).await?)
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
        // Adding someone already in the group changes their role: only the owner may (an
        // admin could otherwise demote another admin by adding them as a member).
        let theirs = store::role(&mut conn, req.group_id, req.user_id).await?;
        match theirs {
            Some(theirs) if theirs != role && mine != Role::Owner => {
                return Err(Error::PermissionDenied(
                    "only the owner changes a member's role".into(),
                )
                .into());
            }
            // The owner stays owner (ownership passes only by leaving).
            Some(Role::Owner) => {}
            Some(_) => store::set_role(&mut conn, req.group_id, req.user_id, role).await?,
            None => {
                if store::member_and_invited_count(&mut conn, req.group_id).await?
                    >= MAX_MEMBERS as i64
                {
                    return Err(Error::FailedPrecondition(format!(
                        "the group has {MAX_MEMBERS} members and invitations already"
                    ))
                    .into());
                }
                store::invite(&mut conn, req.group_id, req.user_id, role, caller.sub).await?;
            }
        }
        let group = store::load(&mut conn, req.group_id).await?;
        Ok(self.app.committed(&mut conn, caller.sub, group).await?)
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let mine = require_role(&mut conn, req.group_id, caller.sub).await?;
        let Some(theirs) = store::role(&mut conn, req.group_id, req.user_id).await? else {
            // Not a member: a manager may withdraw their invitation.
            if is_manager(mine) && store::withdraw(&mut conn, req.group_id, req.user_id).await? {
                let group = store::load(&mut conn, req.group_id).await?;
                return Ok(self.app.committed(&mut conn, caller.sub, group).await?);
            }
            return Err(Error::NotFound(format!(
                "user {} is not in group {}",
                req.user_id, req.group_id
            ))
            .into());
        };
        if !may_remove(mine, theirs) {
            return Err(Error::PermissionDenied(
                "owners remove admins and members; admins remove members".into(),
            )
            .into());
        }
        store::remove_member(&mut conn, req.group_id, req.user_id).await?;
        let group = store::load(&mut conn, req.group_id).await?;
        Ok(self
            .app
            .access_changed(
                &mut conn,
                caller.sub,
                (SERVICE, &[req.group_id]),
                &[req.user_id],
                group,
            )
            .await?)
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let group = req.into_inner().group_id;
        let mut conn = self.app.primary_conn().await?;
        store::leave(&mut conn, group, caller.sub).await?;
        Ok(self
            .app
            .access_changed(
                &mut conn,
                caller.sub,
                (SERVICE, &[group]),
                &[caller.sub],
                LeaveResponse {},
            )
            .await?)
    }

    async fn list_invitations(
        &self,
        req: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        let (caller, mut conn) = self.app.reader(&req).await?;
        let invitations = store::invitations_of(&mut conn, caller.sub).await?;
        Ok(Response::new(ListInvitationsResponse { invitations }))
    }

    async fn accept_invitation(
        &self,
        req: Request<AcceptInvitationRequest>,
    ) -> Result<Response<Group>, Status> {
        let caller = self.app.writer(&req)?;
        let group = req.into_inner().group_id;
        let mut conn = self.app.primary_conn().await?;
        store::accept(&mut conn, group, caller.sub).await?;
        let loaded = store::load(&mut conn, group).await?;
        Ok(self.app.committed_telling(&mut conn, caller.sub, &[caller.sub], loaded).await?)
    }

    async fn decline_invitation(
        &self,
        req: Request<DeclineInvitationRequest>,
    ) -> Result<Response<DeclineInvitationResponse>, Status> {
        let caller = self.app.writer(&req)?;
        let group = req.into_inner().group_id;
        let mut conn = self.app.primary_conn().await?;
        if !store::withdraw(&mut conn, group, caller.sub).await? {
            return Err(Error::NotFound(format!("no invitation to group {group}")).into());
        }
        Ok(self
            .app
            .committed(&mut conn, caller.sub, DeclineInvitationResponse {})
            .await?)
    }

    async fn list_my_groups(
        &self,
        req: Request<ListMyGroupsRequest>,
    ) -> Result<Response<ListMyGroupsResponse>, Status> {
        let (caller, mut conn) = self.app.reader(&req).await?;
        let groups = store::of_user(&mut conn, caller.sub).await?;
        Ok(Response::new(ListMyGroupsResponse { groups }))
    }
}
}
