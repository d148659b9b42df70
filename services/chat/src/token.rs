//! Access tokens: `base64url(claims JSON) "." base64url(Ed25519 signature)`. Auth signs them
//! with the private key; every service verifies them with the public key, without calling auth.
//!
//! The claims name the signing key (`kid`, from its public key), and a verifier holds every
//! public key of its PEM file, so keys rotate without logging anyone out: publish the new
//! public key beside the old one, switch auth to the new private key, and drop the old public
//! key once the last token it signed has expired.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use chatcluster_common::sync::lock;
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
    /// The signing key's id (set by [`Signer::sign`]; empty in tokens from before key ids).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    /// The session (login) the token belongs to, base64url: logging out revokes it on every
    /// replica (empty in tokens from before sessions were named, which cannot be revoked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
}

/// A public key's id: the start of its SHA-256, base64url.
fn key_id(key: &VerifyingKey) -> String {
    use sha2::{Digest, Sha256};
    B64.encode(&Sha256::digest(key.as_bytes())[..8])
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
    keys: Vec<(String, VerifyingKey)>,
    /// Tokens whose signature was found genuine, with their claims: a client sends every
    /// request with the same token, and an Ed25519 verification was about a quarter of
    /// chatd's own CPU per message. A hit still checks expiry. Shared by the clones.
    verified: Arc<Mutex<HashMap<String, Claims>>>,
}

/// Most tokens [`Verifier`] remembers; when full it forgets the expired ones, or all (a
/// forgotten token only costs its next request a verification).
const VERIFIED_TOKENS: usize = 4096;

impl Verifier {
    /// From one or more PEM `PUBLIC KEY` (SPKI) blocks, one after the other.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        const END: &str = "-----END PUBLIC KEY-----";
        let bad = |message: String| KeyError {
            what: "public",
            message,
        };
        let keys = pem
            .split_inclusive(END)
            .filter(|block| block.contains("-----BEGIN"))
            .map(|block| {
                VerifyingKey::from_public_key_pem(block.trim())
                    .map(|key| (key_id(&key), key))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(bad("no PUBLIC KEY block".into()));
        }
        Ok(Self::with_keys(keys))
    }

    /// The ids of the keys this verifier accepts.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn with_keys(keys: Vec<(String, VerifyingKey)>) -> Self {
        Self {
            keys,
            verified: Arc::default(),
        }
    }

    /// The claims of `token` if it is genuine and not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims> {
        let remembered = lock(&self.verified).get(token).cloned();
        let claims = match remembered {
            Some(claims) => claims,
            None => {
                let claims = self.genuine(token)?;
                if claims.exp > now_ms {
                    let mut verified = lock(&self.verified);
                    if verified.len() >= VERIFIED_TOKENS {
                        verified.retain(|_, c| c.exp > now_ms);
                        if verified.len() >= VERIFIED_TOKENS {
                            verified.clear();
                        }
                    }
                    verified.insert(token.to_string(), claims.clone());
                }
                claims
            }
        };
        if claims.exp <= now_ms {
            return Err(Error::Unauthenticated("access token expired".into()));
        }
        Ok(claims)
    }

    /// The claims of `token` if its signature is genuine (expired or not).
    fn genuine(&self, token: &str) -> Result<Claims> {
        let invalid = || Error::Unauthenticated("invalid access token".into());
        let (payload, sig) = token.split_once('.').ok_or_else(invalid)?;
        let sig = B64.decode(sig).map_err(|_| invalid())?;
        let sig = Signature::from_slice(&sig).map_err(|_| invalid())?;
        // The (still unverified) claims only say which key to check the signature with.
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).map_err(|_| invalid())?)
            .map_err(|_| invalid())?;
        let genuine = self
            .keys
            .iter()
            .filter(|(id, _)| claims.kid.is_empty() || *id == claims.kid)
            .any(|(_, key)| key.verify_strict(payload.as_bytes(), &sig).is_ok());
        if !genuine {
            return Err(invalid());
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
        let key = self.key.verifying_key();
        Verifier::with_keys(vec![(key_id(&key), key)])
    }

    /// A token carrying `claims`, naming this key.
    pub fn sign(&self, claims: &Claims) -> String {
        let claims = Claims {
            kid: key_id(&self.key.verifying_key()),
            ..claims.clone()
        };
        // Serializing a struct of integers and strings cannot fail.
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
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
            kid: String::new(),
            sid: String::new(),
        }
    }

    #[test]
    fn keys_rotate_by_id_and_an_unknown_id_is_refused() {
        use ed25519_dalek::pkcs8::{EncodePublicKey, spki::der::pem::LineEnding};
        let (old, new) = (
            signer(),
            Signer {
                key: SigningKey::from_bytes(&[8; 32]),
            },
        );
        let pem = |s: &Signer| {
            s.key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap_or_default()
        };
        let both = Verifier::from_pem(&format!("{}{}", pem(&old), pem(&new))).unwrap();
        assert_eq!(both.key_ids().len(), 2);
        for s in [&old, &new] {
            let token = s.sign(&claims(i64::MAX));
            assert_eq!(both.verify(&token, 0).map(|c| c.sub).ok(), Some(42));
        }
        // A token names its key: only that key is tried.
        let only_new = Verifier::from_pem(&pem(&new)).unwrap();
        assert!(only_new.verify(&old.sign(&claims(i64::MAX)), 0).is_err());
        assert!(Verifier::from_pem("no key here").is_err());
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

    #[test]
    fn a_remembered_token_still_expires_and_the_memory_is_bounded() {
        let s = signer();
        let v = s.verifier();
        let token = s.sign(&claims(1_000));
        assert!(v.verify(&token, 0).is_ok());
        assert!(lock(&v.verified).contains_key(&token), "remembered");
        assert!(
            matches!(v.verify(&token, 1_000), Err(Error::Unauthenticated(m)) if m.contains("expired"))
        );
        // Refused tokens are never remembered; genuine ones up to the bound.
        let other = Signer {
            key: SigningKey::from_bytes(&[9; 32]),
        };
        assert!(v.verify(&other.sign(&claims(i64::MAX)), 0).is_err());
        assert_eq!(lock(&v.verified).len(), 1);
        // Full: the expired go first; full of live tokens, it starts over rather than grow.
        let fill = |exp: i64| {
            let mut verified = lock(&v.verified);
            verified.clear();
            for i in 0..VERIFIED_TOKENS {
                verified.insert(format!("t{i}"), claims(exp));
            }
        };
        let fresh = s.sign(&claims(i64::MAX));
        fill(1_000);
        assert!(v.verify(&fresh, 2_000).is_ok());
        assert_eq!(lock(&v.verified).len(), 1);
        fill(i64::MAX);
        let another = s.sign(&claims(i64::MAX - 1));
        assert!(v.verify(&another, 2_000).is_ok());
        assert_eq!(lock(&v.verified).len(), 1);
    }
}
