//! Accounts, login and tokens. Passwords are hashed with Argon2id (off the async runtime);
//! access tokens are short-lived and signed; refresh tokens are random, stored hashed, rotated
//! on every use and revoked on logout.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::MySqlConnection;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::{App, RateLimiter, address_key, client_address, passwords::Passwords};
use crate::{
    error::{Error, Result},
    pb::auth::{
        GetProfileRequest, LoginRequest, LogoutRequest, LogoutResponse, Profile, RefreshRequest,
        RegisterRequest, Session, UpdateProfileRequest, auth_server::Auth,
    },
    store::{auth as store, sessions},
    token::{Claims, Signer, now_ms},
};

/// Access tokens live this long.
pub const ACCESS_TTL_MS: i64 = 15 * 60 * 1000;
/// Refresh tokens live this long.
pub const REFRESH_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// What one client address may do, whatever the accounts: guessing many accounts' passwords
/// and making accounts in bulk are throttled where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimits {
    /// Login attempts per minute (all at once, then evenly).
    pub logins_per_minute: u32,
    /// Registrations per hour (all at once, then evenly).
    pub registrations_per_hour: u32,
}

impl Default for AddressLimits {
    /// Enough for a household or an office behind one address, far too few for a script.
    fn default() -> Self {
        Self {
            logins_per_minute: 60,
            registrations_per_hour: 20,
        }
    }
}

/// Token buckets per client address.
struct ByAddress {
    logins: RateLimiter,
    registrations: RateLimiter,
}

impl ByAddress {
    fn new(limits: AddressLimits) -> Self {
        let bucket = |n: u32, window_s: f64| {
            let n = f64::from(n.max(1));
            RateLimiter::new(n / window_s, n)
        };
        Self {
            logins: bucket(limits.logins_per_minute, 60.0),
            registrations: bucket(limits.registrations_per_hour, 3600.0),
        }
    }

    /// Charge `req`'s address in `bucket` (`what` names it in the refusal).
    fn charge<T>(bucket: &RateLimiter, req: &Request<T>, what: &str) -> Result<()> {
        let Some(address) = client_address(req) else {
            return Ok(());
        };
        bucket.check(address_key(address)).map_err(|_| {
            Error::ResourceExhausted(format!("too many {what} from this address: try later"))
        })
    }
}

/// The auth service.
pub struct AuthService {
    app: Arc<App>,
    signer: Signer,
    access_ttl_ms: i64,
    passwords: Passwords,
    by_address: ByAddress,
}

impl AuthService {
    /// Auth over `app`, signing with `signer`.
    pub fn new(
        app: Arc<App>,
        signer: Signer,
        access_ttl_ms: i64,
        limits: AddressLimits,
    ) -> Result<Self> {
        Ok(Self {
            app,
            signer,
            access_ttl_ms,
            passwords: Passwords::new()?,
            by_address: ByAddress::new(limits),
        })
    }

    /// A new access token and refresh token for `profile`; the refresh token continues
    /// session `family`, or starts a new one.
    async fn session(
        &self,
        conn: &mut MySqlConnection,
        profile: Profile,
        family: Option<Vec<u8>>,
    ) -> Result<Session> {
        let now = now_ms();
        let family = family.unwrap_or_else(|| {
            let mut fresh = vec![0u8; 16];
            rand::rng().fill_bytes(&mut fresh);
            fresh
        });
        let claims = Claims {
            sub: profile.user_id,
            usr: profile.username.clone(),
            iat: now,
            exp: now + self.access_ttl_ms,
            kid: String::new(),
            sid: B64.encode(&family),
        };
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let refresh = B64.encode(raw);
        store::insert_refresh(
            conn,
            &hash_refresh(&refresh),
            profile.user_id,
            &family,
            now + REFRESH_TTL_MS,
        )
        .await?;
        Ok(Session {
            access_token: self.signer.sign(&claims),
            access_expires_at_ms: claims.exp,
            refresh_token: refresh,
            profile: Some(profile),
        })
    }
}

impl AuthService {
    /// Revoke every access token of session `family` until the last it may have been given
    /// expires (see [`Revocations`](super::revocations::Revocations)).
    async fn end_session(&self, conn: &mut MySqlConnection, family: &[u8]) -> Result<()> {
        sessions::revoke(conn, family, now_ms() + self.access_ttl_ms).await
    }
}

fn hash_refresh(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub(crate) fn check_username(name: &str) -> Result<()> {
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

pub(crate) fn check_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "password must be 8-128 characters".into(),
        ))
    }
}

pub(crate) fn check_profile_text(what: &str, value: &str, max: usize) -> Result<()> {
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

/// A display name: profile text that also must not pass for someone else's name.
pub(crate) fn check_display_name(value: &str) -> Result<()> {
    check_profile_text("display_name", value, 64)?;
    if value.chars().any(super::is_deceptive) {
        return Err(Error::InvalidArgument(
            "display_name contains invisible or direction-changing characters".into(),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Session>, Status> {
        ByAddress::charge(&self.by_address.registrations, &req, "registrations")?;
        let req = req.into_inner();
        check_username(&req.username)?;
        check_password(&req.password)?;
        let display = if req.display_name.trim().is_empty() {
            req.username.clone()
        } else {
            req.display_name.clone()
        };
        check_display_name(&display)?;
        self.passwords.attempt(&req.username)?;
        let hash = self.passwords.hash(req.password).await?;
        let mut conn = self.app.primary_conn().await?;
        let id = store::create_user(&mut conn, &req.username, &hash, &display).await?;
        let profile = store::profile(&mut conn, id)
            .await?
            .ok_or_else(|| Error::Internal("registered user vanished".into()))?;
        let session = self.session(&mut conn, profile, None).await?;
        Ok(self.app.committed(&mut conn, id, session).await?)
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<Session>, Status> {
        ByAddress::charge(&self.by_address.logins, &req, "login attempts")?;
        let req = req.into_inner();
        let denied = || Error::Unauthenticated("wrong username or password".into());
        // Charged before any work, right or wrong: guessing is throttled per account.
        self.passwords.attempt(&req.username)?;
        // No connection is held while the hash waits for its slot: a flood of logins must
        // not drain the pool the other calls need.
        let found = {
            let mut conn = self.app.primary_conn().await?;
            store::credentials(&mut conn, &req.username).await?
        };
        let (profile, hash) = found.map(|(p, h)| (Some(p), Some(h))).unwrap_or_default();
        if !self.passwords.verify(req.password, hash).await? {
            return Err(denied().into());
        }
        let profile = profile.ok_or_else(denied)?;
        let mut conn = self.app.primary_conn().await?;
        self.app.limiter.check(profile.user_id)?;
        Ok(Response::new(self.session(&mut conn, profile, None).await?))
    }

    async fn refresh(&self, req: Request<RefreshRequest>) -> Result<Response<Session>, Status> {
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        let invalid = || Error::Unauthenticated("invalid or expired refresh token".into());
        let (user, family) =
            match store::take_refresh(&mut conn, &hash_refresh(&req.refresh_token)).await? {
                store::Refresh::Fresh {
                    user,
                    expires_at_ms,
                    family,
                } if expires_at_ms > now_ms() => (user, family),
                store::Refresh::Fresh { .. } | store::Refresh::Unknown => {
                    return Err(invalid().into());
                }
                store::Refresh::Reused { family } => {
                    warn!("a used refresh token was presented again: its session is revoked");
                    self.end_session(&mut conn, &family).await?;
                    return Err(Error::Unauthenticated(
                    "this refresh token was used before, so the session is revoked: log in again"
                        .into(),
                )
                .into());
                }
            };
        let profile = store::profile(&mut conn, user).await?.ok_or_else(invalid)?;
        Ok(Response::new(
            self.session(&mut conn, profile, Some(family)).await?,
        ))
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let caller = self.app.caller(&req)?;
        let req = req.into_inner();
        let mut conn = self.app.primary_conn().await?;
        store::revoke_refresh(&mut conn, &hash_refresh(&req.refresh_token), caller.sub).await?;
        // The access token's own session ends too, on every replica, although the token has
        // not expired (its refresh token may belong to another session, or be missing).
        if let Ok(family) = B64.decode(&caller.sid) {
            store::revoke_family(&mut conn, &family, caller.sub).await?;
            self.end_session(&mut conn, &family).await?;
        }
        Ok(Response::new(LogoutResponse {}))
    }

    async fn get_profile(
        &self,
        req: Request<GetProfileRequest>,
    ) -> Result<Response<Profile>, Status> {
        let (caller, mut conn) = self.app.reader(&req).await?;
        let id = match req.into_inner().user_id {
            0 => caller.sub,
            id => id,
        };
        let profile = store::profile(&mut conn, id)
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
            check_display_name(name)?;
        }
        if let Some(bio) = &req.bio {
            check_profile_text("bio", bio, 512)?;
        }
        let mut conn = self.app.primary_conn().await?;
        store::update_profile(
            &mut conn,
            caller.sub,
            req.display_name.as_deref(),
            req.bio.as_deref(),
        )
        .await?;
        let profile = store::profile(&mut conn, caller.sub)
            .await?
            .ok_or_else(|| Error::NotFound("user not found".into()))?;
        Ok(self.app.committed(&mut conn, caller.sub, profile).await?)
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
