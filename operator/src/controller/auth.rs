//! Step 2 of a reconcile: the key the pods authenticate with. Builtin mode
//! keeps a generated HS256 key in `<name>-auth` (created once, never
//! regenerated); external mode checks the Secret key the spec names. The
//! pods get the key's checksum as a template annotation, so they restart
//! when it changes (env from a Secret is read at start only).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{Context, events::Event};
use crate::{
    apply::{Observed, apply_one},
    build::secret::{build_auth_secret, generate_jwt_key},
    crd::{AuthMode, ChatTenant, SecretKeyRef},
    error::{Error, Result},
    model::Tenant,
    names::{AUTH_SECRET_KEY, auth_secret_name, key_checksum, secret_value},
    status::Problem,
};

/// What the pods authenticate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Auth {
    /// A key from a Secret, by checksum (a pod template annotation, so pods
    /// restart when the key is rotated: env from a Secret is read at start).
    Key(String),
    /// No key in a Secret (a JWKS URL).
    NoKey,
    /// The referenced key is missing or unusable.
    Invalid(Problem),
}

/// Builtin: makes sure `<name>-auth` holds a signing key (created once).
/// External: checks the referenced Secret key.
pub(super) async fn ensure_auth(ctx: &Context, ct: &ChatTenant, t: &Tenant) -> Result<Auth> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &t.namespace);
    match t.spec.auth.mode {
        AuthMode::Builtin => {
            let name = auth_secret_name(t);
            let existing = secrets
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("reading Secret {name}")))?;
            let key = existing
                .as_ref()
                .and_then(|s| secret_value(s, AUTH_SECRET_KEY));
            let created = key.is_none();
            let key = key.unwrap_or_else(generate_jwt_key);
            let secret = build_auth_secret(t, &key);
            let observed = Observed::Known(existing.map(std::sync::Arc::new));
            apply_one(&ctx.client, &t.namespace, &secret, observed).await?;
            if created {
                ctx.publish(ct, Event::AuthKeyCreated { secret: name })
                    .await;
            }
            Ok(Auth::Key(key_checksum(&key)))
        }
        AuthMode::External => {
            let Some(r) = t
                .spec
                .auth
                .external_jwt
                .as_ref()
                .and_then(|e| e.secret_ref.as_ref())
            else {
                return Ok(Auth::NoKey);
            };
            let secret = secrets
                .get_opt(&r.name)
                .await
                .map_err(Error::kube(format!("reading Secret {}", r.name)))?;
            Ok(external_key(secret.as_ref(), r))
        }
    }
}

/// Checks the external HS256 key `r` in `secret` (`None`: no such Secret).
/// Pure.
fn external_key(secret: Option<&Secret>, r: &SecretKeyRef) -> Auth {
    let message = match secret.map(|s| secret_value(s, &r.key)) {
        None => format!(
            "Secret {} (spec.auth.externalJwt.secretRef) does not exist; create it",
            r.name
        ),
        Some(None) => format!(
            "Secret {} has no key {:?} (spec.auth.externalJwt.secretRef.key)",
            r.name, r.key
        ),
        Some(Some(v)) if v.len() < 32 => format!(
            "the HS256 secret in Secret {} key {:?} is {} bytes; use at least 32",
            r.name,
            r.key,
            v.len()
        ),
        Some(Some(key)) => return Auth::Key(key_checksum(&key)),
    };
    Auth::Invalid(Problem {
        reason: "ExternalAuthInvalid",
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn key_ref() -> SecretKeyRef {
        SecretKeyRef {
            name: "jwt".into(),
            key: "hs256".into(),
        }
    }

    fn secret(value: &str) -> Secret {
        Secret {
            data: Some([("hs256".to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn an_external_key_is_used_by_checksum() {
        let key = "k".repeat(32);
        assert_eq!(
            external_key(Some(&secret(&key)), &key_ref()),
            Auth::Key(key_checksum(&key))
        );
    }

    #[test]
    fn a_missing_or_short_external_key_is_a_problem_saying_what_to_do() {
        let message = |auth| match auth {
            Auth::Invalid(p) => p.message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            message(external_key(None, &key_ref())),
            "Secret jwt (spec.auth.externalJwt.secretRef) does not exist; create it"
        );
        assert_eq!(
            message(external_key(Some(&Secret::default()), &key_ref())),
            "Secret jwt has no key \"hs256\" (spec.auth.externalJwt.secretRef.key)"
        );
        assert_eq!(
            message(external_key(Some(&secret("short")), &key_ref())),
            "the HS256 secret in Secret jwt key \"hs256\" is 5 bytes; use at least 32"
        );
    }
}
