//! Access tokens: `base64url(claims JSON) "." base64url(Ed25519 signature)`. Auth signs them
//! with the private key; every service verifies them with the public key, without calling auth.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{DecodePrivateKey, DecodePublicKey},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, metadata::MetadataMap};

use crate::error::{Error, Result};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: u64,
    /// Username.
    pub usr: String,
    /// Issued at, Unix milliseconds.
    pub iat: i64,
    /// Expires at, Unix milliseconds.
    pub exp: i64,
}

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the token {what} key: {message}")]
pub struct KeyError {
    what: &'static str,
    message: String,
}

/// Checks tokens.
#[derive(Clone)]
pub struct Verifier {
    key: VerifyingKey,
}

impl Verifier {
    /// From a PEM `PUBLIC KEY` (SPKI).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| KeyError {
                what: "public",
                message: e.to_string(),
            })
    }

    /// The claims of `token` if it is genuine and not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims> {
        let invalid = || Error::Unauthenticated("invalid access token".into());
        let (payload, sig) = token.split_once('.').ok_or_else(invalid)?;
        let sig = B64.decode(sig).map_err(|_| invalid())?;
        let sig = Signature::from_slice(&sig).map_err(|_| invalid())?;
        self.key
            .verify_strict(payload.as_bytes(), &sig)
            .map_err(|_| invalid())?;
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).map_err(|_| invalid())?)
            .map_err(|_| invalid())?;
        if claims.exp <= now_ms {
            return Err(Error::Unauthenticated("access token expired".into()));
        }
        Ok(claims)
    }

    /// The caller of a request, from its `authorization: Bearer <token>` header.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Claims> {
        self.authenticate_metadata(req.metadata())
    }

    /// As [`authenticate`](Self::authenticate), from bare metadata.
    pub fn authenticate_metadata(&self, md: &MetadataMap) -> Result<Claims> {
        let header = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Unauthenticated("missing authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Error::Unauthenticated("authorization is not a Bearer token".into()))?;
        self.verify(token.trim(), now_ms())
    }
}

/// Issues tokens (auth only).
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// From a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| KeyError {
                what: "private",
                message: e.to_string(),
            })
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            key: self.key.verifying_key(),
        }
    }

    /// A token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serializing a struct of integers and a string cannot fail.
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = self.key.sign(payload.as_bytes());
        format!("{payload}.{}", B64.encode(sig.to_bytes()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer {
            key: SigningKey::from_bytes(&[7; 32]),
        }
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: 42,
            usr: "ada".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let s = signer();
        let token = s.sign(&claims(now_ms() + 60_000));
        assert_eq!(
            s.verifier().verify(&token, now_ms()).map(|c| c.sub).ok(),
            Some(42)
        );
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let s = signer();
        let v = s.verifier();
        let expired = s.sign(&claims(1_000));
        assert!(
            matches!(v.verify(&expired, 2_000), Err(Error::Unauthenticated(m)) if m.contains("expired"))
        );

        // Same payload, signed by another key.
        let other = Signer {
            key: SigningKey::from_bytes(&[9; 32]),
        };
        assert!(v.verify(&other.sign(&claims(i64::MAX)), 0).is_err());

        // A payload swapped under a genuine signature.
        let genuine = s.sign(&claims(i64::MAX));
        let sig = genuine.split_once('.').map(|(_, s)| s).unwrap_or_default();
        let mut forged = claims(i64::MAX);
        forged.sub = 1;
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap_or_default());
        assert!(v.verify(&format!("{forged_payload}.{sig}"), 0).is_err());

        for garbage in ["", ".", "abc", "a.b", "a.b.c", "💥.💥"] {
            assert!(v.verify(garbage, 0).is_err(), "{garbage:?}");
        }
    }
}
