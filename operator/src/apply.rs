//! Server-side apply of the built children with one field manager, then
//! deletion of children the spec no longer asks for. Hand edits to fields the
//! operator sets are reverted because every apply forces ownership.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::Service,
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DynamicObject,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    build::{Children, http_route::http_route_resource},
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

/// Applies every child and deletes the ones no longer wanted.
/// `gateway_api` says whether the HTTPRoute CRD is served (routes are then
/// applied when built, and pruned when not).
pub async fn apply_children(
    client: &Client,
    t: &Tenant,
    children: &Children,
    gateway_api: bool,
) -> Result<Applied, ApplyError> {
    let ns = t.namespace.as_str();
    for d in &children.deployments {
        apply_one(client, ns, d).await?;
    }
    for s in &children.services {
        apply_one(client, ns, s).await?;
    }
    apply_one(client, ns, &children.pdb).await?;
    for np in &children.network_policies {
        apply_one(client, ns, np).await?;
    }
    if let Some(hpa) = &children.hpa {
        apply_one(client, ns, hpa).await?;
    }
    if let Some(ing) = &children.ingress {
        apply_one(client, ns, ing).await?;
    }
    if let (Some(route), true) = (&children.http_route, gateway_api) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &http_route_resource());
        api.patch(&t.name, &params(), &Patch::Apply(route))
            .await
            .map_err(|source| ApplyError {
                verb: "apply",
                kind: "HTTPRoute".into(),
                name: t.name.clone(),
                source,
            })?;
    }

    let mut applied = Applied::default();
    let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<BTreeSet<_>>();
    prune::<Deployment>(
        client,
        t,
        &names(
            children
                .deployments
                .iter()
                .map(|d| d.metadata.name.clone())
                .collect(),
        ),
        &mut applied,
    )
    .await?;
    prune::<Service>(
        client,
        t,
        &names(
            children
                .services
                .iter()
                .map(|d| d.metadata.name.clone())
                .collect(),
        ),
        &mut applied,
    )
    .await?;
    prune::<PodDisruptionBudget>(
        client,
        t,
        &names(vec![children.pdb.metadata.name.clone()]),
        &mut applied,
    )
    .await?;
    prune::<NetworkPolicy>(
        client,
        t,
        &names(
            children
                .network_policies
                .iter()
                .map(|d| d.metadata.name.clone())
                .collect(),
        ),
        &mut applied,
    )
    .await?;
    prune::<HorizontalPodAutoscaler>(
        client,
        t,
        &names(
            children
                .hpa
                .iter()
                .map(|d| d.metadata.name.clone())
                .collect(),
        ),
        &mut applied,
    )
    .await?;
    prune::<Ingress>(
        client,
        t,
        &names(
            children
                .ingress
                .iter()
                .map(|d| d.metadata.name.clone())
                .collect(),
        ),
        &mut applied,
    )
    .await?;
    if gateway_api {
        prune_routes(client, t, children.http_route.is_some(), &mut applied).await?;
    }
    Ok(applied)
}

fn selector(t: &Tenant) -> ListParams {
    ListParams::default().labels(&tenant_children_selector(t))
}

fn owned_by(t: &Tenant, meta: &kube::api::ObjectMeta) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == t.owner.uid))
}

async fn prune<K>(
    client: &Client,
    t: &Tenant,
    keep: &BTreeSet<String>,
    applied: &mut Applied,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
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
        applied.deleted.push(format!("{kind}/{name}"));
    }
    Ok(())
}

async fn prune_routes(
    client: &Client,
    t: &Tenant,
    keep: bool,
    applied: &mut Applied,
) -> Result<(), ApplyError> {
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
        applied
            .deleted
            .push(format!("HTTPRoute/{}", obj.name_any()));
    }
    Ok(())
}
