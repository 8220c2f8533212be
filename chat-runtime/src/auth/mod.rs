//! Tokens: issuing built-in JWTs (HS256) and verifying built-in or External
//! ones (HS256 shared secret, RS256/ES256 from a JWKS file or URL). Every
//! token must carry this tenant's id in claim `tid`; `alg: none`, expired,
//! wrongly signed, wrong-issuer/audience and logged-out tokens are refused.

mod jwks;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub use jwks::JwksCache;

use crate::{
    config::{Auth, ExternalAuth},
    store::{Store, StoreError, accounts::User},
};

/// Lifetime of built-in tokens.
pub const TOKEN_TTL_SECONDS: i64 = 24 * 3600;
/// Issuer of built-in tokens.
pub const BUILTIN_ISSUER: &str = "chorus";

/// The claims Chorus reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id (built-in) or the tenant's user id (External).
    pub sub: String,
    /// Tenant id; must equal this runtime's tenant.
    pub tid: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    #[serde(default)]
    pub iat: i64,
    /// Token id (built-in tokens; used by logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Preferred username (External tokens, used on first sight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

/// Why a token was refused. Messages say what to do, never which secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error(
        "missing token: send `Authorization: Bearer <token>` (or ?access_token= on the WebSocket URL)"
    )]
    Missing,
    /// The token is malformed, unsigned, wrongly signed, expired or for
    /// another issuer/audience.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token belongs to another tenant.
    #[error("token is for tenant {0:?}, not this one")]
    WrongTenant(String),
    /// The token was logged out.
    #[error("token was logged out; log in again")]
    Revoked,
    /// The user no longer exists.
    #[error("the token's user does not exist")]
    UnknownUser,
    /// A storage failure.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// Token id, for logout.
    pub jti: Option<String>,
    /// Token expiry.
    pub exp: i64,
}

enum Mode {
    Builtin {
        encoding: EncodingKey,
        decoding: DecodingKey,
    },
    External {
        hs256: Option<DecodingKey>,
        jwks: Option<Box<JwksCache>>,
        issuer: String,
        audience: String,
    },
}

/// Issues and verifies tokens for one tenant.
pub struct Authenticator {
    tenant: String,
    mode: Mode,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => "expired".into(),
        InvalidSignature => "bad signature".into(),
        InvalidAlgorithm | InvalidAlgorithmName => "algorithm not accepted".into(),
        InvalidIssuer => "wrong issuer".into(),
        InvalidAudience => "wrong audience".into(),
        MissingRequiredClaim(c) => format!("missing claim {c}"),
        ImmatureSignature => "not valid yet".into(),
        _ => "malformed".into(),
    }
}

impl Authenticator {
    /// Builds the authenticator from configuration.
    pub fn new(tenant: &str, auth: &Auth) -> Result<Self, String> {
        let mode = match auth {
            Auth::Builtin { secret } => Mode::Builtin {
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            },
            Auth::External(ExternalAuth {
                hs256_secret,
                jwks,
                issuer,
                audience,
            }) => Mode::External {
                hs256: hs256_secret
                    .as_ref()
                    .map(|s| DecodingKey::from_secret(s.as_bytes())),
                jwks: jwks
                    .as_ref()
                    .map(|src| Box::new(JwksCache::new(src.clone()))),
                issuer: issuer.clone(),
                audience: audience.clone(),
            },
        };
        Ok(Self {
            tenant: tenant.to_string(),
            mode,
        })
    }

    /// Loads keys that come from a file or URL, at start. A file that cannot
    /// be read or holds no usable key is an error (start-up stops); a URL
    /// that does not answer yet is only logged and retried on use.
    pub async fn prime(&self) -> Result<(), String> {
        if let Mode::External { jwks: Some(j), .. } = &self.mode {
            match j.refresh(true).await {
                Ok(()) => {}
                Err(e) if j.is_file() => return Err(e),
                Err(e) => tracing::warn!(
                    error = %e,
                    "JWKS not loaded yet; retried when a token needs it (at most every 30 s)"
                ),
            }
        }
        Ok(())
    }

    /// Whether this runtime keeps accounts (signup/login).
    pub fn builtin(&self) -> bool {
        matches!(self.mode, Mode::Builtin { .. })
    }

    /// Issues a built-in token for `user`. Returns the token and its expiry.
    pub fn issue(&self, user: &User) -> Result<(String, i64), AuthError> {
        let Mode::Builtin { encoding, .. } = &self.mode else {
            return Err(AuthError::Invalid(
                "this tenant uses External auth: sign users in with your identity provider".into(),
            ));
        };
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let iat = now();
        let claims = Claims {
            sub: user.id.to_string(),
            tid: self.tenant.clone(),
            exp: iat + TOKEN_TTL_SECONDS,
            iat,
            jti: Some(jti.iter().map(|b| format!("{b:02x}")).collect()),
            iss: Some(BUILTIN_ISSUER.into()),
            aud: Some(serde_json::Value::String(self.tenant.clone())),
            preferred_username: None,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|e| AuthError::Invalid(format!("cannot sign: {e}")))?;
        Ok((token, claims.exp))
    }

    /// Verifies a token's signature and claims (no database access).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(describe(&e)))?;
        let claims = match &self.mode {
            Mode::Builtin { decoding, .. } => {
                let mut v = Validation::new(Algorithm::HS256);
                v.set_issuer(&[BUILTIN_ISSUER]);
                v.set_audience(&[self.tenant.as_str()]);
                v.set_required_spec_claims(&["exp", "sub"]);
                v.leeway = 30;
                decode::<Claims>(token, decoding, &v)
                    .map_err(|e| AuthError::Invalid(describe(&e)))?
                    .claims
            }
            Mode::External {
                hs256,
                jwks,
                issuer,
                audience,
            } => {
                let mut v = Validation::new(header.alg);
                v.set_issuer(&[issuer.as_str()]);
                v.set_audience(&[audience.as_str()]);
                v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
                v.leeway = 30;
                let key = match header.alg {
                    Algorithm::HS256 => hs256.clone().ok_or_else(|| {
                        AuthError::Invalid("HS256 tokens are not accepted by this tenant".into())
                    })?,
                    Algorithm::RS256 | Algorithm::ES256 => {
                        let jwks = jwks.as_ref().ok_or_else(|| {
                            AuthError::Invalid(format!(
                                "{:?} tokens are not accepted by this tenant",
                                header.alg
                            ))
                        })?;
                        jwks.key(header.kid.as_deref(), header.alg)
                            .await
                            .map_err(AuthError::Invalid)?
                    }
                    other => {
                        return Err(AuthError::Invalid(format!(
                            "algorithm {other:?} is not accepted"
                        )));
                    }
                };
                decode::<Claims>(token, &key, &v)
                    .map_err(|e| AuthError::Invalid(describe(&e)))?
                    .claims
            }
        };
        if claims.tid != self.tenant {
            return Err(AuthError::WrongTenant(claims.tid));
        }
        Ok(claims)
    }

    /// Verifies a token and resolves its user (checking logout for built-in
    /// tokens; creating External users on first sight).
    pub async fn authenticate(&self, store: &Store, token: &str) -> Result<Principal, AuthError> {
        let claims = self.verify(token).await?;
        let user = match &self.mode {
            Mode::Builtin { .. } => {
                let id: Result<i64, _> = claims.sub.parse();
                let found = match id {
                    Ok(id) => store.user_checking_revoked(id, claims.jti.as_deref()).await,
                    Err(_) => Err(StoreError::NotFound(String::new())),
                };
                match found {
                    Ok((_, true)) => return Err(AuthError::Revoked),
                    Ok((u, false)) => u,
                    Err(StoreError::NotFound(_)) => {
                        // A revoked token says so even when its user is gone
                        // or its subject unreadable (the order of the checks
                        // before they shared a query).
                        if let Some(jti) = &claims.jti
                            && store.is_revoked(jti).await?
                        {
                            return Err(AuthError::Revoked);
                        }
                        return Err(match id {
                            Ok(_) => AuthError::UnknownUser,
                            Err(_) => AuthError::Invalid("sub is not a user id".into()),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Mode::External { .. } => {
                match store
                    .external_user(&claims.sub, claims.preferred_username.as_deref())
                    .await
                {
                    Ok(u) => u,
                    Err(StoreError::Invalid(m)) => return Err(AuthError::Invalid(m)),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(Principal {
            user,
            jti: claims.jti,
            exp: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(tenant: &str) -> Authenticator {
        Authenticator::new(
            tenant,
            &Auth::Builtin {
                secret: "0123456789abcdef0123456789abcdef".into(),
            },
        )
        .unwrap()
    }

    fn user() -> User {
        User {
            id: 7,
            username: "alice".into(),
            display_name: "Alice".into(),
        }
    }

    #[tokio::test]
    async fn builtin_tokens_round_trip() {
        let a = builtin("acme");
        let (token, exp) = a.issue(&user()).unwrap();
        let claims = a.verify(&token).await.unwrap();
        assert_eq!(claims.sub, "7");
        assert_eq!(claims.tid, "acme");
        assert_eq!(claims.exp, exp);
        assert!(claims.jti.is_some());
    }

    #[tokio::test]
    async fn another_tenants_token_is_refused() {
        let (token, _) = builtin("globex").issue(&user()).unwrap();
        // Same key, other tenant: the audience check refuses it first.
        assert!(matches!(
            builtin("acme").verify(&token).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn unsigned_and_tampered_tokens_are_refused() {
        let a = builtin("acme");
        let (token, _) = a.issue(&user()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // alg: none
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(a.verify(&none).await.is_err());
        // payload swapped, signature kept
        let forged_claims = b64.encode(
            serde_json::json!({"sub": "1", "tid": "acme", "exp": now() + 60, "iss": "chorus", "aud": "acme"}).to_string(),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        match a.verify(&forged).await {
            Err(AuthError::Invalid(m)) => assert_eq!(m, "bad signature"),
            other => panic!("expected a bad signature, got {other:?}"),
        }
    }
}
