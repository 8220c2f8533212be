//! Server-side apply of the built children with one field manager, then
//! deletion of children the spec no longer asks for. Hand edits to fields the
//! operator sets are reverted because every apply forces ownership.
//!
//! An apply that would change nothing is not sent ([`up_to_date`]), so an
//! idle resync writes nothing. Every applied object carries
//! [`APPLIED_ANNOTATION`], a checksum of the object as built. The apply is
//! skipped only when the observed object (from the watch cache, or read by
//! the caller) both carries the checksum of what is built now and holds
//! every value that was built, field by field. The checksum catches a field
//! the operator stopped setting (an apply would remove it); the field check
//! catches a hand edit or deletion of any field the operator sets (drift is
//! repaired at the next reconcile, which the child's watch starts at once).
//! Fields the apiserver or others add are not compared: an apply would not
//! touch them either.

use std::{collections::BTreeSet, fmt::Debug, sync::Arc};

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    core::DynamicObject,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tracing::Instrument;

use crate::{
    build::http_route::http_route_resource,
    cache::{ChildCache, cached, labelled},
    children::{ChildKind, Children, KindFold},
    model::Tenant,
    names::{
        FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, TENANT_LABEL, key_checksum,
        tenant_children_selector,
    },
    telemetry::TRACE_TARGET,
};

/// Annotation on every applied object: [`key_checksum`] of the object as
/// built (without this annotation).
pub const APPLIED_ANNOTATION: &str = "chorus.dev/applied-checksum";

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
    /// How many objects were applied (the others were up to date).
    pub written: usize,
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

/// What the caller knows of the object as it is now.
#[derive(Debug)]
pub enum Observed<K> {
    /// Read from a cache or by the caller (`None`: it does not exist).
    Known(Option<Arc<K>>),
    /// Not known: read it before deciding.
    Unknown,
}

/// The object as it is applied: built, plus [`APPLIED_ANNOTATION`]. Pure.
pub fn desired<K: Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let left = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .map(|a| {
                a.remove(APPLIED_ANNOTATION);
                a.len()
            });
        if left == Some(0) {
            meta.remove("annotations");
        }
    }
    let checksum = key_checksum(&v.to_string());
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_ANNOTATION.into(), Value::String(checksum));
        }
    }
    v
}

/// Whether `live` already is what applying `desired` (from [`desired`])
/// would make it: it carries the same [`APPLIED_ANNOTATION`] and holds every
/// value of `desired`. Pure.
pub fn up_to_date(desired: &Value, live: &Value) -> bool {
    let checksum = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(APPLIED_ANNOTATION))
            .cloned()
    };
    checksum(desired).is_some() && checksum(desired) == checksum(live) && holds(live, desired, "")
}

/// Whether `have` holds every value of `want`. Absent, `null`, `[]` and `{}`
/// are the same; lists must have the same length and hold element by
/// element (the apiserver adds defaults inside elements, never elements);
/// resource quantities compare by value (the apiserver stores `0.5` as
/// `500m`). `key` is the key `want` is found under.
fn holds(have: &Value, want: &Value, key: &str) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match (want, have) {
        (w, _) if empty(w) => true,
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, wv)| match h.get(k) {
            // Inside `limits`/`requests` every value is a quantity.
            Some(hv) => holds(
                hv,
                wv,
                if QUANTITY_PARENTS.contains(&key) {
                    key
                } else {
                    k
                },
            ),
            None => empty(wv),
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(wv, hv)| holds(hv, wv, key))
        }
        (Value::Number(w), Value::Number(h)) => w.as_f64() == h.as_f64(),
        (Value::String(w), Value::String(h)) if w != h => {
            QUANTITY_PARENTS.contains(&key)
                && matches!((quantity(w), quantity(h)), (Some(a), Some(b)) if (a - b).abs() <= a.abs() * 1e-9)
        }
        (w, h) => w == h,
    }
}

/// Keys whose string values (or values of their map) are resource
/// quantities.
const QUANTITY_PARENTS: [&str; 3] = ["requests", "limits", "averageValue"];

/// A Kubernetes resource quantity (`500m`, `1.5Gi`, `1e3`) as a number.
fn quantity(s: &str) -> Option<f64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * scale)
}

/// Applies one typed object unless [`up_to_date`] with what is observed.
/// Returns whether a request was sent.
pub async fn apply_one<K>(
    client: &Client,
    namespace: &str,
    obj: &K,
    observed: Observed<K>,
) -> Result<bool, ApplyError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.name_any();
    let kind = K::kind(&()).to_string();
    let live = match observed {
        Observed::Known(live) => live,
        Observed::Unknown => api
            .get_opt(&name)
            .await
            .map_err(|source| ApplyError {
                verb: "get",
                kind: kind.clone(),
                name: name.clone(),
                source,
            })?
            .map(Arc::new),
    };
    let live = live.and_then(|l| serde_json::to_value(l.as_ref()).ok());
    apply_value(&api, &kind, &name, &desired(obj), live.as_ref()).await
}

/// Applies `desired` unless `live` is [`up_to_date`] with it.
async fn apply_value<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    desired: &Value,
    live: Option<&Value>,
) -> Result<bool, ApplyError>
where
    K: Clone + DeserializeOwned + Debug,
{
    // Traces: one span per child object (`apply Deployment/acme-blue`),
    // whether it was written or found up to date.
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "apply",
        otel.name = %format_args!("apply {kind}/{name}"),
        kind,
        name,
        written = tracing::field::Empty,
    );
    if live.is_some_and(|l| up_to_date(desired, l)) {
        span.record("written", false);
        return Ok(false);
    }
    api.patch(name, &params(), &Patch::Apply(desired))
        .instrument(span.clone())
        .await
        .map_err(|source| ApplyError {
            verb: "apply",
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        })?;
    span.record("written", true);
    Ok(true)
}

/// Applies every child and deletes the ones no longer wanted, kind by kind
/// in the order of [`Children::fold`] (the objects of one kind at once,
/// unless [`ChildKind::APPLIED_IN_ORDER`]): all applies first, then all
/// prunes.
/// Children are looked up in `cache` (read from the apiserver for kinds it
/// has no store of). `gateway_api` says whether the HTTPRoute CRD is served
/// (routes are then applied when built, and pruned when not).
pub async fn apply_children(
    client: &Client,
    cache: &ChildCache,
    t: &Tenant,
    children: &Children,
    gateway_api: bool,
) -> Result<Applied, ApplyError> {
    let pass = children.fold(Pass {
        client,
        cache,
        t,
        gateway_api,
        applies: Vec::new(),
        prunes: Vec::new(),
    });
    let mut applied = Applied::default();
    for apply in pass.applies {
        applied.written += apply.await?;
    }
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
    cache: &'c ChildCache,
    t: &'c Tenant,
    gateway_api: bool,
    /// Each returns how many objects it applied.
    applies: Vec<Step<'c, usize>>,
    /// Each returns the `Kind/name` of what it deleted.
    prunes: Vec<Step<'c, Vec<String>>>,
}

impl<'c> KindFold<'c> for Pass<'c> {
    fn kind<K: ChildKind>(mut self, built: &'c [K]) -> Self {
        let (client, cache, t) = (self.client, self.cache, self.t);
        if !built.is_empty() {
            self.applies.push(Box::pin(async move {
                let store = cache.store::<K>(&t.namespace).await;
                let applies = built.iter().map(|obj| {
                    let observed = match &store {
                        Some(s) => Observed::Known(cached(s, &t.namespace, &obj.name_any())),
                        None => Observed::Unknown,
                    };
                    apply_one(client, &t.namespace, obj, observed)
                });
                let mut written = 0;
                if K::APPLIED_IN_ORDER {
                    for apply in applies {
                        written += usize::from(apply.await?);
                    }
                } else {
                    // At once: a tenant's four Services cost one round
                    // trip, not four.
                    for w in futures::future::try_join_all(applies).await? {
                        written += usize::from(w);
                    }
                }
                Ok(written)
            }));
        }
        if K::PRUNED {
            let keep = built.iter().filter_map(|o| o.meta().name.clone()).collect();
            self.prunes
                .push(Box::pin(prune::<K>(client, cache, t, keep)));
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
                let err = |verb, source| ApplyError {
                    verb,
                    kind: "HTTPRoute".into(),
                    name: t.name.clone(),
                    source,
                };
                // Not watched (the kind may not be served): read it.
                let live = api.get_opt(&t.name).await.map_err(|e| err("get", e))?;
                let live = live.and_then(|l| serde_json::to_value(l).ok());
                let written =
                    apply_value(&api, "HTTPRoute", &t.name, &desired(route), live.as_ref()).await?;
                Ok(usize::from(written))
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

/// The names of `t`'s children of kind `K`: from the cache, or listed.
async fn children_of<K: ChildKind>(
    client: &Client,
    cache: &ChildCache,
    t: &Tenant,
) -> Result<Vec<String>, kube::Error> {
    if let Some(store) = cache.store::<K>(&t.namespace).await {
        let labels = [
            (TENANT_LABEL, t.name.as_str()),
            (MANAGED_BY_LABEL, MANAGED_BY),
        ];
        return Ok(labelled(&store, &t.namespace, &labels)
            .iter()
            .filter(|o| owned_by(t, o.meta()))
            .map(|o| o.name_any())
            .collect());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &t.namespace);
    Ok(api
        .list_metadata(&selector(t))
        .await?
        .items
        .into_iter()
        .filter(|o| owned_by(t, &o.metadata))
        .map(|o| o.name_any())
        .collect())
}

async fn prune<K: ChildKind>(
    client: &Client,
    cache: &ChildCache,
    t: &Tenant,
    keep: BTreeSet<String>,
) -> Result<Vec<String>, ApplyError> {
    let api: Api<K> = Api::namespaced(client.clone(), &t.namespace);
    let kind = K::kind(&()).to_string();
    let names = children_of::<K>(client, cache, t)
        .await
        .map_err(|source| ApplyError {
            verb: "list",
            kind: kind.clone(),
            name: String::new(),
            source,
        })?;
    let mut deleted = Vec::new();
    for name in names {
        if keep.contains(&name) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn built() -> Value {
        desired(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "acme-blue", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "chat", "image": "img:1", "env": [],
                 "resources": {"requests": {"cpu": "0.5", "memory": "64Mi"}}}
            ]}}}
        }))
    }

    /// `built()` as the apiserver returns it: defaults added, quantities
    /// canonical, status and metadata of its own.
    fn live() -> Value {
        let mut v = built();
        v["metadata"]["uid"] = json!("u1");
        v["metadata"]["labels"]["added-by-someone"] = json!("x");
        v["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        v["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
            json!("500m");
        v["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("env");
        v["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        v["status"] = json!({"replicas": 2});
        v
    }

    #[test]
    fn the_checksum_is_stable_and_follows_the_object() {
        let a = built();
        let sum = &a["metadata"]["annotations"][APPLIED_ANNOTATION];
        assert_eq!(sum.as_str().map(str::len), Some(16));
        assert_eq!(
            desired(&a),
            a,
            "re-deriving from an applied object keeps it"
        );
        let mut b = a.clone();
        b["spec"]["replicas"] = json!(3);
        assert_ne!(
            desired(&b)["metadata"]["annotations"],
            a["metadata"]["annotations"]
        );
    }

    #[test]
    fn an_object_the_apiserver_defaulted_is_up_to_date() {
        assert!(up_to_date(&built(), &live()));
    }

    #[test]
    fn drift_or_a_new_build_is_not_up_to_date() {
        type Edit = fn(&mut Value);
        let cases: [(&str, Edit); 6] = [
            ("a hand edit", |v| v["spec"]["replicas"] = json!(5)),
            ("a removed label", |v| {
                v["metadata"]["labels"].as_object_mut().unwrap().remove("a");
            }),
            ("an edited list element", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2")
            }),
            ("an added list element", |v| {
                v["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "sidecar"}))
            }),
            ("another quantity", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
                    json!("600m")
            }),
            ("another build (its checksum)", |v| {
                v["metadata"]["annotations"][APPLIED_ANNOTATION] = json!("0000000000000000")
            }),
        ];
        for (what, edit) in cases {
            let mut l = live();
            edit(&mut l);
            assert!(!up_to_date(&built(), &l), "{what}");
        }
        // An object applied before the checksum existed.
        let mut l = live();
        l["metadata"].as_object_mut().unwrap().remove("annotations");
        assert!(!up_to_date(&built(), &l));
    }

    #[test]
    fn quantities_compare_by_value() {
        for (a, b) in [
            ("0.5", "500m"),
            ("1", "1000m"),
            ("1Gi", "1024Mi"),
            ("1e3", "1k"),
        ] {
            assert_eq!(quantity(a), quantity(b), "{a} {b}");
        }
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("x"), None);
        assert_eq!(quantity("1Zi"), None);
        // Only under resource keys: "1" and "1.0" differ as an env value.
        assert!(!holds(&json!({"value": "1.0"}), &json!({"value": "1"}), ""));
        assert!(holds(
            &json!({"limits": {"cpu": "1"}}),
            &json!({"limits": {"cpu": "1000m"}}),
            ""
        ));
    }
}
