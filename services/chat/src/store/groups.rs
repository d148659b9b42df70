//! The groups service's tables: groups (the conversations), their members with roles, and the
//! messages.

use sqlx::{Connection, MySqlConnection, Row};

use super::{Roster, messages::Tables};
use crate::{
    db::Db,
    error::{Error, Result},
    pb::groups::{Group, Invitation, Member, Role},
    token::now_ms,
};

/// The group tables.
pub const TABLES: Tables = Tables {
    conversations: "groups_groups",
    messages: "groups_messages",
    access_rule: "EXISTS (SELECT 1 FROM groups_members WHERE group_id = j.conversation_id AND user_id = j.sender_id)",
};

/// Group membership.
pub(crate) const ROSTER: Roster = Roster {
    parents: "groups_groups",
    members: "groups_members",
    key: "group_id",
    what: "group",
};

fn migrations() -> Vec<String> {
    vec![
        "CREATE TABLE groups_groups (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           name VARCHAR(400) NOT NULL,
           last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
           created_at_ms BIGINT NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            .into(),
        ROSTER.members_ddl(),
        TABLES.messages_ddl(),
        // Nobody is put in a group without consent: whom a manager adds is invited first.
        "CREATE TABLE groups_invitations (
           group_id BIGINT UNSIGNED NOT NULL,
           user_id BIGINT UNSIGNED NOT NULL,
           role TINYINT NOT NULL,
           invited_by BIGINT UNSIGNED NOT NULL,
           created_at_ms BIGINT NOT NULL,
           PRIMARY KEY (group_id, user_id),
           KEY user_id (user_id, created_at_ms)
         ) ENGINE=InnoDB"
            .into(),
        TABLES.seq_trigger_ddl(),
    ]
}

/// Apply the `groups_` schema.
pub async fn migrate(db: &Db) -> Result<()> {
    super::migrate(db, "groups", &migrations()).await
}

/// `user`'s role in `group` (None: not a member); NOT_FOUND when the group does not exist.
pub async fn role(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<Option<Role>> {
    let code = ROSTER.role(conn, group, user).await?;
    Ok(code.and_then(|r| Role::try_from(r).ok()))
}

/// A group with its members.
pub async fn load(conn: &mut MySqlConnection, id: u64) -> Result<Group> {
    let row = sqlx::query("SELECT id, name, last_seq FROM groups_groups WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("group {id} not found")))?;
    let members = ROSTER
        .members(conn, id)
        .await?
        .into_iter()
        .map(|m| Member {
            user_id: m.user_id,
            role: m.role,
        })
        .collect();
    let invited: Vec<(u64, i8)> = sqlx::query_as(
        "SELECT user_id, role FROM groups_invitations WHERE group_id = ? ORDER BY created_at_ms, user_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Group {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        members,
        last_seq: row.try_get("last_seq")?,
        invited: invited
            .into_iter()
            .map(|(user_id, role)| Member {
                user_id,
                role: i32::from(role),
            })
            .collect(),
    })
}

/// Create a group owned by `owner` inviting `members` (neither the owner nor duplicates), in
/// one transaction; returns its id.
pub async fn create(
    conn: &mut MySqlConnection,
    name: &str,
    owner: u64,
    members: &[u64],
) -> Result<u64> {
    let mut tx = conn.begin().await?;
    let now = now_ms();
    let id = sqlx::query("INSERT INTO groups_groups (name, created_at_ms) VALUES (?, ?)")
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .last_insert_id();
    ROSTER
        .add(&mut tx, id, owner, Role::Owner as i32, now)
        .await?;
    for m in members {
        invite(&mut tx, id, *m, Role::Member, owner).await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Invite `user` to `group` as `role` on behalf of `by` (again: the newer role and inviter).
pub async fn invite(
    conn: &mut MySqlConnection,
    group: u64,
    user: u64,
    role: Role,
    by: u64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO groups_invitations (group_id, user_id, role, invited_by, created_at_ms) VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE role = VALUES(role), invited_by = VALUES(invited_by)",
    )
    .bind(group)
    .bind(user)
    .bind(role as i32)
    .bind(by)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many members and invited users `group` has.
pub async fn member_and_invited_count(conn: &mut MySqlConnection, group: u64) -> Result<i64> {
    let invited: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM groups_invitations WHERE group_id = ?")
            .bind(group)
            .fetch_one(&mut *conn)
            .await?;
    Ok(ROSTER.count(conn, group).await? + invited)
}

/// Drop `user`'s invitation to `group`; whether there was one.
pub async fn withdraw(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<bool> {
    let done = sqlx::query("DELETE FROM groups_invitations WHERE group_id = ? AND user_id = ?")
        .bind(group)
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// `user` takes up their invitation to `group`, in one transaction: a member with its role.
/// NOT_FOUND when there is none.
pub async fn accept(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<()> {
    let mut tx = conn.begin().await?;
    let role: Option<i8> = sqlx::query_scalar(
        "SELECT role FROM groups_invitations WHERE group_id = ? AND user_id = ? FOR UPDATE",
    )
    .bind(group)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let role = role.ok_or_else(|| Error::NotFound(format!("no invitation to group {group}")))?;
    withdraw(&mut tx, group, user).await?;
    if ROSTER.role(&mut tx, group, user).await?.is_none() {
        ROSTER
            .add(&mut tx, group, user, i32::from(role), now_ms())
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Invitations shown to one user, at most.
pub const MAX_LISTED_INVITATIONS: u32 = 100;

/// `user`'s pending invitations, newest first.
pub async fn invitations_of(conn: &mut MySqlConnection, user: u64) -> Result<Vec<Invitation>> {
    let rows: Vec<(u64, String, u64, i8, i64)> = sqlx::query_as(
        "SELECT i.group_id, g.name, i.invited_by, i.role, i.created_at_ms
         FROM groups_invitations i JOIN groups_groups g ON g.id = i.group_id
         WHERE i.user_id = ? ORDER BY i.created_at_ms DESC, i.group_id DESC LIMIT ?",
    )
    .bind(user)
    .bind(MAX_LISTED_INVITATIONS)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(group_id, group_name, invited_by, role, created_at_ms)| Invitation {
                group_id,
                group_name,
                invited_by,
                role: i32::from(role),
                created_at_ms,
            },
        )
        .collect())
}

/// Rename `group`.
pub async fn rename(conn: &mut MySqlConnection, group: u64, name: &str) -> Result<()> {
    sqlx::query("UPDATE groups_groups SET name = ? WHERE id = ?")
        .bind(name)
        .bind(group)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Change a member's role.
pub async fn set_role(conn: &mut MySqlConnection, group: u64, user: u64, role: Role) -> Result<()> {
    ROSTER.set_role(conn, group, user, role as i32).await
}

/// Remove `user` from `group`.
pub async fn remove_member(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<()> {
    ROSTER.remove(conn, group, user).await
}

/// `user` leaves `group`, in one transaction; an owner hands the group to the longest-standing
/// admin, else member. PERMISSION_DENIED when `user` is not a member.
pub async fn leave(conn: &mut MySqlConnection, group: u64, user: u64) -> Result<()> {
    let mut tx = conn.begin().await?;
    let mine = role(&mut tx, group, user)
        .await?
        .ok_or_else(|| Error::PermissionDenied(format!("not a member of group {group}")))?;
    ROSTER.remove(&mut tx, group, user).await?;
    if mine == Role::Owner {
        let heir: Option<u64> = sqlx::query_scalar(
            "SELECT user_id FROM groups_members WHERE group_id = ? ORDER BY role DESC, joined_at_ms, user_id LIMIT 1 FOR UPDATE",
        )
        .bind(group)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(heir) = heir {
            ROSTER
                .set_role(&mut tx, group, heir, Role::Owner as i32)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The groups `user` is in, at most 1,000.
pub async fn of_user(conn: &mut MySqlConnection, user: u64) -> Result<Vec<Group>> {
    let mut groups = Vec::new();
    for id in ROSTER.of_user(conn, user).await? {
        groups.push(load(conn, id).await?);
    }
    Ok(groups)
}
