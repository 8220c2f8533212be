//! Secrets a ChatTenant names but does not own: the database server's admin
//! Secret (`spec.database.serverRef`, in the operator's namespace), the
//! external JWT key (`spec.auth.externalJwt.secretRef`) and the Secrets
//! `spec.runtime.env` reads (both in the tenant's namespace). Creating, fixing or rotating one reconciles the tenants that
//! name it at once, instead of at the next resync or backoff. Only metadata is
//! watched: the operator never caches Secret data it does not own. Watching
//! every namespace, only the server namespace is watched: cluster-wide RBAC
//! grants no list/watch on Secrets (see `docs/operations.md`), so a tenant
//! namespace's Secret change is picked up at the next resync.

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt, predicates,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use std::sync::Arc;

use super::{Settings, server_secrets::ServerSecrets};
use crate::crd::ChatTenant;

type SecretMeta = PartialObjectMeta<Secret>;
type SecretEvents = BoxStream<'static, Result<SecretMeta, watcher::Error>>;

/// The metadata events of the Secrets tenants may name, and the mapper from
/// one Secret to the tenants naming it (for `Controller::watches_stream`).
pub(super) fn secret_events(
    client: &Client,
    settings: &Settings,
    namespace: Option<&str>,
    tenants: Store<ChatTenant>,
    server_secrets: Arc<ServerSecrets>,
) -> (
    SecretEvents,
    impl Fn(SecretMeta) -> Vec<ObjectRef<ChatTenant>> + Send + Sync + 'static,
) {
    let server_ns = settings.server_namespace.clone();
    let watch = |ns: &str| {
        let api = Api::namespaced(client.clone(), ns);
        // The server namespace's versions keep this scope's server Secret
        // reads.
        let follow = (ns == server_ns).then(|| server_secrets.clone());
        let scope = namespace.map(str::to_string);
        watcher(api, watcher::Config::default())
            .default_backoff()
            .inspect(move |event| {
                if let (Some(s), Ok(event)) = (&follow, event) {
                    s.follow(&scope, event);
                }
            })
            .touched_objects()
            .predicate_filter(predicates::resource_version, Default::default())
            .boxed()
    };
    let stream = match secret_watch_namespaces(namespace, &server_ns).as_slice() {
        [one] => watch(one),
        many => futures::stream::select_all(many.iter().map(|ns| watch(ns))).boxed(),
    };
    let mapper = move |secret: SecretMeta| {
        let (name, ns) = (secret.name_any(), secret.namespace().unwrap_or_default());
        tenants
            .state()
            .iter()
            .filter(|ct| names_secret(ct, &ns, &name, &server_ns))
            .map(|ct| ObjectRef::from_obj(ct.as_ref()))
            .collect()
    };
    (stream, mapper)
}

/// The namespaces whose Secrets a controller watching `namespace` (`None`:
/// every namespace) watches: its own and the server namespace; watching
/// every namespace, the server namespace only (no cluster-wide Secret
/// list/watch). Pure.
pub(super) fn secret_watch_namespaces(namespace: Option<&str>, server_ns: &str) -> Vec<String> {
    match namespace {
        Some(ns) if ns != server_ns => vec![ns.to_string(), server_ns.to_string()],
        _ => vec![server_ns.to_string()],
    }
}

/// Whether `ct` names Secret `ns/name` (the server Secret lives in
/// `server_ns`, the external JWT key in the tenant's namespace).
fn names_secret(ct: &ChatTenant, ns: &str, name: &str, server_ns: &str) -> bool {
    let server = ns == server_ns && ct.spec.database.server_ref.name == name;
    let external = ct.namespace().as_deref() == Some(ns)
        && ct
            .spec
            .auth
            .external_jwt
            .as_ref()
            .and_then(|e| e.secret_ref.as_ref())
            .is_some_and(|r| r.name == name);
    // Secrets `spec.runtime.env` reads (a change rolls the pods).
    let env = ct.namespace().as_deref() == Some(ns)
        && ct.spec.runtime.env.iter().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == name)
        });
    server || external || env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuthMode, AuthSpec, ExternalJwt, SecretKeyRef};
    use crate::validate::tests::sample;

    const SERVER_NS: &str = "chorus-system";

    #[test]
    fn a_tenant_names_its_server_secret_only_in_the_server_namespace() {
        let ct = sample();
        assert!(names_secret(&ct, SERVER_NS, "shared-pg", SERVER_NS));
        assert!(!names_secret(&ct, "tenants", "shared-pg", SERVER_NS));
        assert!(!names_secret(&ct, SERVER_NS, "other-pg", SERVER_NS));
    }

    #[test]
    fn a_tenant_names_its_external_key_in_its_own_namespace() {
        let mut ct = sample();
        assert!(!names_secret(&ct, "tenants", "jwt", SERVER_NS));
        ct.spec.auth = AuthSpec {
            mode: AuthMode::External,
            external_jwt: Some(Box::new(ExternalJwt {
                secret_ref: Some(SecretKeyRef {
                    name: "jwt".into(),
                    key: "hs256".into(),
                }),
                jwks_uri: None,
                issuer: "https://id.example.com".into(),
                audience: "chat".into(),
            })),
        };
        assert!(names_secret(&ct, "tenants", "jwt", SERVER_NS));
        assert!(!names_secret(&ct, "elsewhere", "jwt", SERVER_NS));
    }

    #[test]
    fn secrets_are_never_watched_cluster_wide() {
        assert_eq!(secret_watch_namespaces(None, SERVER_NS), [SERVER_NS]);
        assert_eq!(
            secret_watch_namespaces(Some(SERVER_NS), SERVER_NS),
            [SERVER_NS]
        );
        assert_eq!(
            secret_watch_namespaces(Some("tenants"), SERVER_NS),
            ["tenants", SERVER_NS]
        );
    }

    #[test]
    fn a_tenant_names_the_secrets_its_env_reads() {
        let mut ct = sample();
        ct.spec.runtime.env = serde_json::from_value(serde_json::json!([
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "app", "key": "k"}}}
        ]))
        .unwrap();
        assert!(names_secret(&ct, "tenants", "app", SERVER_NS));
        assert!(!names_secret(&ct, "elsewhere", "app", SERVER_NS));
    }
}
