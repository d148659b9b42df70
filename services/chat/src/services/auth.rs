//! Accounts, login and tokens. Passwords are hashed with Argon2id (off the async runtime);
//! access tokens are short-lived and signed; refresh tokens are random, stored hashed, rotated
//! on every use and revoked on logout.

use std::sync::Arc;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, Row, mysql::MySqlRow};
use tonic::{Request, Response, Status};

use super::App;
use crate::{
    db,
    error::{Error, Result, is_duplicate},
    pb::auth::{
        GetProfileRequest, LoginRequest, LogoutRequest, LogoutResponse, Profile, RefreshRequest,
        RegisterRequest, Session, UpdateProfileRequest, auth_server::Auth,
    },
    token::{Claims, Signer, now_ms},
};

/// Schema of the auth service (`auth_` tables).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE auth_users (
       id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
       username VARCHAR(32) NOT NULL,
       password_hash VARCHAR(255) NOT NULL,
       display_name VARCHAR(64) NOT NULL,
       bio VARCHAR(512) NOT NULL DEFAULT '',
       created_at_ms BIGINT NOT NULL,
       UNIQUE KEY username (username)
     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE auth_refresh_tokens (
       token_hash BINARY(32) NOT NULL PRIMARY KEY,
       user_id BIGINT UNSIGNED NOT NULL,
       expires_at_ms BIGINT NOT NULL,
       KEY user_id (user_id)
     ) ENGINE=InnoDB",
];

/// Access tokens live this long.
pub const ACCESS_TTL_MS: i64 = 15 * 60 * 1000;
/// Refresh tokens live this long.
pub const REFRESH_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// The auth service.
pub struct AuthService {
    app: Arc<App>,
    signer: Signer,
    access_ttl_ms: i64,
}

impl AuthService {
    /// Auth over `app`, signing with `signer`.
    pub fn new(app: Arc<App>, signer: Signer, access_ttl_ms: i64) -> Self {
        Self {
            app,
            signer,
            access_ttl_ms,
        }
    }

    /// Apply the `auth_` schema.
    pub async fn migrate(db: &db::Db) -> Result<()> {
        db::migrate(&db.primary().await, "auth", MIGRATIONS).await
    }

    async fn session(&self, conn: &mut MySqlConnection, profile: Profile) -> Result<Session> {
        let now = now_ms();
        let claims = Claims {
            sub: profile.user_id,
            usr: profile.username.clone(),
            iat: now,
            exp: now + self.access_ttl_ms,
        };
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let refresh = B64.encode(raw);
        sqlx::query(
            "INSERT INTO auth_refresh_tokens (token_hash, user_id, expires_at_ms) VALUES (?, ?, ?)",
        )
        .bind(hash_refresh(&refresh))
        .bind(profile.user_id)
        .bind(now + REFRESH_TTL_MS)
        .execute(&mut *conn)
        .await?;
        Ok(Session {
            access_token: self.signer.sign(&claims),
            access_expires_at_ms: claims.exp,
            refresh_token: refresh,
            profile: Some(profile),
        })
    }
}

fn hash_refresh(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn check_username(name: &str) -> Result<()> {
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-'".into(),
        ))
    }
}

fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "password must be 8-128 characters".into(),
        ))
    }
}

fn check_profile_text(what: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n > max {
        return Err(Error::InvalidArgument(format!(
            "{what} is {n} characters, more than {max}"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

async fn verify_password(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&hash).map_err(|e| Error::Internal(format!("stored hash: {e}")))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

fn row_to_profile(row: &MySqlRow) -> Result<Profile> {
    Ok(Profile {
        user_id: row.try_get("id")?,
        username: row.try_get("username")?,
        display_name: row.try_get("display_name")?,
        bio: row.try_get("bio")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

async fn profile_by_id(conn: &mut MySqlConnection, id: u64) -> Result<Option<Profile>> {
    let row = sqlx::query(
        "SELECT id, username, display_name, bio, created_at_ms FROM auth_users WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(row_to_profile).transpose()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Session>, Status> {
        let req = req.into_inner();
        check_username(&req.username)?;
        check_password(&req.password)?;
        let display = if req.display_name.trim().is_empty() {
            req.username.clone()
        } else {
            req.display_name.clone()
        };
        check_profile_text("display_name", &display, 64)?;
        let hash = hash_password(req.password).await?;
        let mut conn = self.app.primary_conn().await?;
        let inserted = sqlx::query(
            "INSERT INTO auth_users (username, password_hash, display_name, created_at_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&req.username)
        .bind(&hash)
        .bind(&display)
        .bind(now_ms())
        .execute(&mut *conn)
        .await;
        let id = match inserted {
            Ok(r) => r.last_insert_id(),
            Err(e) if is_duplicate(&e) => {
                return Err(
                    Error::AlreadyExists(format!("username {} is taken", req.username)).into(),
                );
            }
            Err(e) => return Err(Error::from(e).into()),
        };
        let profile = profile_by_id(&mut conn, id)
            .await?
            .ok_or_else(|| Error::Internal("registered user vanished".into()))?;
        let session = self.session(&mut conn, profile).await?;
        let token = self.app.db.commit_token(&mut conn).await?;
        Ok(self.app.written(id, &token, session))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<Session>, Status> {
        let req = req.into_inner();
        let denied = || Error::Unauthenticated("wrong username or password".into());
        let mut conn = self.app.primary_conn().await?;
        let row = sqlx::query(
            "SELECT id, username, display_name, bio, created_at_ms, password_hash FROM auth_users WHERE username = ?",
        )
        .bind(&req.username)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::from)?
        .ok_or_else(denied)?;
        let hash: String = row.try_get("password_hash").map_err(Error::from)?;
        if !verify_password(req.password, hash).await? {
            return Err(denied().into());
        }
        let profile = row_to_profile(&row)?;
        self.app.limiter.check(profile.user_id)?;
        Ok(Response::new(self.session(&mut conn, profile).await?))
    }

    async fn refresh(&self, req: Request<RefreshRequest>) -> Result<Response<Session>, Status> {
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let hash = hash_refresh(&req.refresh_token);
        // Delete-then-use: a refresh token works once, even when two requests race.
        let row = sqlx::query(
            "SELECT user_id, expires_at_ms FROM auth_refresh_tokens WHERE token_hash = ?",
        )
        .bind(&hash)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::from)?;
        let deleted = sqlx::query("DELETE FROM auth_refresh_tokens WHERE token_hash = ?")
            .bind(&hash)
            .execute(&mut *conn)
            .await
            .map_err(Error::from)?;
        let invalid = || Error::Unauthenticated("invalid or expired refresh token".into());
        let row = row
            .filter(|_| deleted.rows_affected() == 1)
            .ok_or_else(invalid)?;
        let user: u64 = row.try_get("user_id").map_err(Error::from)?;
        let expires: i64 = row.try_get("expires_at_ms").map_err(Error::from)?;
        if expires <= now_ms() {
            return Err(invalid().into());
        }
        let profile = profile_by_id(&mut conn, user).await?.ok_or_else(invalid)?;
        Ok(Response::new(self.session(&mut conn, profile).await?))
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let req = req.into_inner();
        let pool = self.app.db.primary().await;
        sqlx::query("DELETE FROM auth_refresh_tokens WHERE token_hash = ? AND user_id = ?")
            .bind(hash_refresh(&req.refresh_token))
            .bind(caller.sub)
            .execute(&pool)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn get_profile(
        &self,
        req: Request<GetProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let caller = self.app.caller(&req)?;
        let token = self.app.read_token(&req, caller.sub);
        let id = match req.into_inner().user_id {
            0 => caller.sub,
            id => id,
        };
        let mut conn = self.app.db.reader(token.as_deref()).await?;
        let profile = profile_by_id(&mut conn, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {id} not found")))?;
        Ok(Response::new(profile))
    }

    async fn update_profile(
        &self,
        req: Request<UpdateProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let caller = self.app.writer(&req)?;
        let req = req.into_inner();
        if let Some(name) = &req.display_name {
            if name.trim().is_empty() {
                return Err(Error::InvalidArgument("display_name is empty".into()).into());
            }
            check_profile_text("display_name", name, 64)?;
        }
        if let Some(bio) = &req.bio {
            check_profile_text("bio", bio, 512)?;
        }
        let mut conn = self.app.primary_conn().await?;
        sqlx::query(
            "UPDATE auth_users SET display_name = COALESCE(?, display_name), bio = COALESCE(?, bio) WHERE id = ?",
        )
        .bind(&req.display_name)
        .bind(&req.bio)
        .bind(caller.sub)
        .execute(&mut *conn)
        .await
        .map_err(Error::from)?;
        let token = self.app.db.commit_token(&mut conn).await?;
        let profile = profile_by_id(&mut conn, caller.sub)
            .await?
            .ok_or_else(|| Error::NotFound("user not found".into()))?;
        Ok(self.app.written(caller.sub, &token, profile))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_passwords() {
        assert!(check_username("ada.l-1_x").is_ok());
        for bad in ["ab", "Ada", "a b", "ada!", &"a".repeat(33), "émile"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
