//! Server-side apply of the built children with one field manager, then
//! deletion of children the spec no longer asks for. Hand edits to fields the
//! operator sets are reverted because every apply forces ownership.

use std::{collections::BTreeSet, fmt::Debug};

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DynamicObject,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    build::http_route::http_route_resource,
    children::{ChildKind, Children, KindFold},
    model::Tenant,
    names::{FIELD_MANAGER, tenant_children_selector},
};

/// A failed apply or delete, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}: {}", api_message(.source))]
pub struct ApplyError {
    /// `apply` or `delete`.
    pub verb: &'static str,
    /// Object kind.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// API error.
    #[source]
    pub source: kube::Error,
}

/// What an apply pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `Kind/name` of children deleted because the spec no longer asks for them.
    pub deleted: Vec<String>,
}

/// The apiserver's own message for API errors (not the Debug dump of the
/// whole Status), the error's Display otherwise.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies one typed object.
pub async fn apply_one<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.name_any();
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|source| ApplyError {
            verb: "apply",
            kind: K::kind(&()).to_string(),
            name,
            source,
        })
}

/// Applies every child and deletes the ones no longer wanted, kind by kind
/// in the order of [`Children::fold`]: all applies first, then all prunes.
/// `gateway_api` says whether the HTTPRoute CRD is served (routes are then
/// applied when built, and pruned when not).
pub async fn apply_children(
    client: &Client,
    t: &Tenant,
    children: &Children,
    gateway_api: bool,
) -> Result<Applied, ApplyError> {
    let pass = children.fold(Pass {
        client,
        t,
        gateway_api,
        applies: Vec::new(),
        prunes: Vec::new(),
    });
    for apply in pass.applies {
        apply.await?;
    }
    let mut applied = Applied::default();
    for prune in pass.prunes {
        applied.deleted.extend(prune.await?);
    }
    Ok(applied)
}

/// A request (or a few) of one apply pass, not started yet.
type Step<'c, T> = BoxFuture<'c, Result<T, ApplyError>>;

/// The applies and prunes of one pass, collected from the one list of kinds.
struct Pass<'c> {
    client: &'c Client,
    t: &'c Tenant,
    gateway_api: bool,
    applies: Vec<Step<'c, ()>>,
    /// Each returns the `Kind/name` of what it deleted.
    prunes: Vec<Step<'c, Vec<String>>>,
}

impl<'c> KindFold<'c> for Pass<'c> {
    fn kind<K: ChildKind>(mut self, built: &'c [K]) -> Self {
        let (client, t) = (self.client, self.t);
        self.applies.push(Box::pin(async move {
            for obj in built {
                apply_one(client, &t.namespace, obj).await?;
            }
            Ok(())
        }));
        if K::PRUNED {
            let keep = built.iter().filter_map(|o| o.meta().name.clone()).collect();
            self.prunes.push(Box::pin(prune::<K>(client, t, keep)));
        }
        self
    }

    fn http_route(mut self, built: Option<&'c DynamicObject>) -> Self {
        if !self.gateway_api {
            return self;
        }
        let (client, t) = (self.client, self.t);
        if let Some(route) = built {
            self.applies.push(Box::pin(async move {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &t.namespace, &http_route_resource());
                api.patch(&t.name, &params(), &Patch::Apply(route))
                    .await
                    .map_err(|source| ApplyError {
                        verb: "apply",
                        kind: "HTTPRoute".into(),
                        name: t.name.clone(),
                        source,
                    })?;
                Ok(())
            }));
        }
        self.prunes
            .push(Box::pin(prune_routes(client, t, built.is_some())));
        self
    }
}

fn selector(t: &Tenant) -> ListParams {
    ListParams::default().labels(&tenant_children_selector(t))
}

fn owned_by(t: &Tenant, meta: &kube::api::ObjectMeta) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == t.owner.uid))
}

async fn prune<K: ChildKind>(
    client: &Client,
    t: &Tenant,
    keep: BTreeSet<String>,
) -> Result<Vec<String>, ApplyError> {
    let api: Api<K> = Api::namespaced(client.clone(), &t.namespace);
    let kind = K::kind(&()).to_string();
    let list = api
        .list_metadata(&selector(t))
        .await
        .map_err(|source| ApplyError {
            verb: "list",
            kind: kind.clone(),
            name: String::new(),
            source,
        })?;
    let mut deleted = Vec::new();
    for obj in list.items {
        let name = obj.name_any();
        if keep.contains(&name) || !owned_by(t, &obj.metadata) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ApplyError {
                    verb: "delete",
                    kind,
                    name,
                    source,
                });
            }
        }
        tracing::info!(kind = %kind, name = %name, "deleted child no longer in the spec");
        deleted.push(format!("{kind}/{name}"));
    }
    Ok(deleted)
}

async fn prune_routes(client: &Client, t: &Tenant, keep: bool) -> Result<Vec<String>, ApplyError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &t.namespace, &http_route_resource());
    let err = |verb, source| ApplyError {
        verb,
        kind: "HTTPRoute".into(),
        name: t.name.clone(),
        source,
    };
    let list = api
        .list_metadata(&selector(t))
        .await
        .map_err(|e| err("list", e))?;
    let mut deleted = Vec::new();
    for obj in list.items {
        if (keep && obj.name_any() == t.name) || !owned_by(t, &obj.metadata) {
            continue;
        }
        match api
            .delete(&obj.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err("delete", e)),
        }
        deleted.push(format!("HTTPRoute/{}", obj.name_any()));
    }
    Ok(deleted)
}
