//! Users: built-in accounts with argon2id password hashes, External-auth
//! users created on first sight, and logged-out tokens.

use super::{Store, StoreError, StoreResult, UserId, check_no_nul};
pub use crate::protocol::User;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use rand::RngCore;

/// Checks a username: 3 to 32 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn validate_username(name: &str) -> StoreResult<()> {
    let ok = (3..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "username must be 3 to 32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit".into(),
        ))
    }
}

/// Argon2id needs 19 MiB per hash by design; at most this many run at once,
/// so a burst of logins cannot balloon memory.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Hashes a password with argon2id (on a blocking thread: it is slow by design).
pub async fn hash_password(password: String) -> StoreResult<String> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|_| StoreError::Invalid("password hashing is shutting down".into()))?;
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Invalid(format!("password cannot be hashed: {e}")))
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("hashing task failed: {e}")))?
}

/// Verifies a password against a stored hash.
pub async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

impl Store {
    /// Creates a built-in account.
    pub async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> StoreResult<User> {
        validate_username(username)?;
        check_no_nul("display_name", display_name)?;
        let row: Option<User> = sqlx::query_as(
            "INSERT INTO users (username, display_name, password_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO NOTHING RETURNING id, username, display_name",
        )
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or_else(|| StoreError::Conflict(format!("username {username:?} is taken")))
    }

    /// A user and their password hash, by username.
    pub async fn user_with_hash(
        &self,
        username: &str,
    ) -> StoreResult<Option<(User, Option<String>)>> {
        if validate_username(username).is_err() {
            // No stored username looks like this (and PostgreSQL could not
            // even compare one holding a NUL).
            return Ok(None);
        }
        let row: Option<(UserId, String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, username, display_name, password_hash FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, username, display_name, hash)| {
            (
                User {
                    id,
                    username,
                    display_name,
                },
                hash,
            )
        }))
    }

    /// A user by id.
    pub async fn user(&self, id: UserId) -> StoreResult<User> {
        sqlx::query_as("SELECT id, username, display_name FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id} does not exist")))
    }

    /// A user and whether the token id `jti` is revoked, in one round trip
    /// (every WebSocket upgrade and REST call asks both). `NotFound` when
    /// the user does not exist.
    pub async fn user_checking_revoked(
        &self,
        id: UserId,
        jti: Option<&str>,
    ) -> StoreResult<(User, bool)> {
        let row: Option<(UserId, String, String, bool)> = sqlx::query_as(
            "SELECT id, username, display_name, \
             EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $2) FROM users WHERE id = $1",
        )
        .bind(id)
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        let (id, username, display_name, revoked) =
            row.ok_or_else(|| StoreError::NotFound(format!("user {id} does not exist")))?;
        Ok((
            User {
                id,
                username,
                display_name,
            },
            revoked,
        ))
    }

    /// A user by username.
    pub async fn user_by_name(&self, username: &str) -> StoreResult<User> {
        if validate_username(username).is_err() {
            return Err(StoreError::NotFound(format!(
                "user {username:?} does not exist"
            )));
        }
        sqlx::query_as("SELECT id, username, display_name FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {username:?} does not exist")))
    }

    /// The user behind an External token's `sub`, created on first sight.
    /// The username is the preferred name when free, else `ext-<hash>`.
    pub async fn external_user(&self, subject: &str, preferred: Option<&str>) -> StoreResult<User> {
        check_no_nul("sub", subject)?;
        let preferred = preferred.filter(|p| !p.contains('\0'));
        if let Some(u) = sqlx::query_as::<_, User>(
            "SELECT id, username, display_name FROM users WHERE external_subject = $1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?
        {
            return Ok(u);
        }
        let fallback = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(subject.as_bytes());
            format!(
                "ext-{}",
                d.iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        let username = preferred
            .map(str::to_lowercase)
            .filter(|p| validate_username(p).is_ok())
            .unwrap_or_else(|| fallback.clone());
        let display = preferred.unwrap_or(&username).to_string();
        for candidate in [username, fallback] {
            let row: Option<User> = sqlx::query_as(
                "INSERT INTO users (username, display_name, external_subject) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING RETURNING id, username, display_name",
            )
            .bind(&candidate)
            .bind(&display)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(u) = row {
                return Ok(u);
            }
            // Lost a race for the same subject: read the winner.
            if let Some(u) = sqlx::query_as::<_, User>(
                "SELECT id, username, display_name FROM users WHERE external_subject = $1",
            )
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?
            {
                return Ok(u);
            }
        }
        Err(StoreError::Conflict(format!(
            "no free username for external subject {subject:?}"
        )))
    }

    /// Records a logged-out token id until its expiry.
    pub async fn revoke_token(&self, jti: &str, expires_at_unix: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at_unix as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a token id was logged out.
    pub async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM revoked_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

/// A WebSocket ticket that was redeemed (and so is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemedTicket {
    /// The user it was issued to.
    pub user: UserId,
    /// The id of the token it was issued for.
    pub jti: Option<String>,
    /// That token's expiry (Unix seconds).
    pub token_exp: i64,
    /// False when the ticket had expired before it was presented.
    pub fresh: bool,
}

fn ticket_hash(ticket: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(ticket.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Issues a one-time WebSocket ticket for the holder of a token (its
    /// user, id and expiry), good for `ttl`. Only its hash is stored.
    /// Expired tickets are swept here too.
    pub async fn create_ws_ticket(
        &self,
        user: UserId,
        jti: Option<&str>,
        token_exp: i64,
        ttl: std::time::Duration,
    ) -> StoreResult<String> {
        use base64::Engine;
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        sqlx::query("DELETE FROM ws_tickets WHERE expires_at < now() - interval '1 minute'")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO ws_tickets (ticket_hash, user_id, jti, token_exp, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(ticket_hash(&ticket))
        .bind(user)
        .bind(jti)
        .bind(token_exp)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(ticket)
    }

    /// Redeems a ticket: it is deleted whether fresh or expired, so it
    /// works once, on whichever replica sees it first. `None` when unknown
    /// (never issued, or already used).
    pub async fn redeem_ws_ticket(&self, ticket: &str) -> StoreResult<Option<RedeemedTicket>> {
        if ticket.is_empty() || ticket.len() > 128 {
            return Ok(None);
        }
        let row: Option<(UserId, Option<String>, i64, bool)> = sqlx::query_as(
            "DELETE FROM ws_tickets WHERE ticket_hash = $1 \
             RETURNING user_id, jti, token_exp, expires_at > now()",
        )
        .bind(ticket_hash(ticket))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(user, jti, token_exp, fresh)| RedeemedTicket {
            user,
            jti,
            token_exp,
            fresh,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a.b-c_1").is_ok());
        for bad in ["ab", "Alice", "_x", "a b", "a/b", &"x".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), h.clone()).await);
        assert!(!verify_password("wrong".into(), h).await);
    }
}
