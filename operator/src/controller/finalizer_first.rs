//! A new ChatTenant gets the finalizer and its provisioning in one
//! reconcile. kube-runtime's `finalizer` helper adds the finalizer and
//! returns, leaving the rest to the reconcile the finalizer's own watch
//! event starts; in a burst of new tenants that event queues behind every
//! other new tenant's first reconcile, so no tenant's database or
//! Deployment was started before all of them had their finalizer (the
//! first Ready of 1,000 tenants waited about 4 s for it, `make
//! bench-operator`). Here the finalizer is added with the same JSON patch
//! (a `test` of the list as read, then an `add`), and the reconcile goes on
//! with the tenant the patch returned, the finalizer in place before
//! anything outside the ChatTenant is made.

use std::sync::Arc;

use json_patch::{
    AddOperation, Patch as JsonPatch, PatchOperation, TestOperation, jsonptr::PointerBuf,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::Value;

use crate::{
    crd::ChatTenant,
    error::{Error, Result},
};

#[cfg(test)]
use serde_json::json;

/// The JSON patch (RFC 6902) that adds `finalizer` to `ct`, or `None` when
/// it has it already or is being deleted (nothing is added then). The
/// `test` makes the patch fail, rather than drop or double a finalizer, when
/// the list changed since it was read. Pure.
pub(super) fn add_patch(ct: &ChatTenant, finalizer: &str) -> Option<JsonPatch> {
    if ct.metadata.deletion_timestamp.is_some() || ct.finalizers().iter().any(|f| f == finalizer) {
        return None;
    }
    let list = PointerBuf::from_tokens(["metadata", "finalizers"]);
    let (seen, path, value) = match ct.metadata.finalizers.as_deref() {
        None | Some([]) => (Value::Null, list.clone(), Value::from(vec![finalizer])),
        Some(seen) => (
            Value::from(seen),
            PointerBuf::from_tokens(["metadata", "finalizers", "-"]),
            Value::from(finalizer),
        ),
    };
    Some(JsonPatch(vec![
        PatchOperation::Test(TestOperation {
            path: list,
            value: seen,
        }),
        PatchOperation::Add(AddOperation { path, value }),
    ]))
}

/// `ct` with `finalizer`: as it is when it has it (or is being deleted),
/// else as the apiserver returned it after the patch.
///
/// Errors: the patch failing (the list changed meanwhile, the tenant is
/// gone, no RBAC `patch` on chattenants); the reconcile retries.
pub(super) async fn ensure(
    api: &Api<ChatTenant>,
    ct: Arc<ChatTenant>,
    finalizer: &str,
) -> Result<Arc<ChatTenant>> {
    let Some(patch) = add_patch(&ct, finalizer) else {
        return Ok(ct);
    };
    let patched = api
        .patch(
            &ct.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .map_err(Error::kube("adding the finalizer"))?;
    Ok(Arc::new(patched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::sample;

    const F: &str = "chorus.dev/cleanup";

    #[test]
    fn a_new_tenant_gets_the_finalizer_after_a_test_of_its_list() {
        let ct = sample();
        let json = |p: Option<JsonPatch>| serde_json::to_value(p.unwrap()).unwrap();
        assert_eq!(
            json(add_patch(&ct, F)),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [F]},
            ])
        );
        let mut other = sample();
        other.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        assert_eq!(
            json(add_patch(&other, F)),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": F},
            ])
        );
    }

    #[test]
    fn nothing_is_added_when_it_is_there_or_the_tenant_is_being_deleted() {
        let mut ct = sample();
        ct.metadata.finalizers = Some(vec!["example.com/keep".into(), F.into()]);
        assert!(add_patch(&ct, F).is_none());
        let mut deleting = sample();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            ));
        assert!(add_patch(&deleting, F).is_none());
    }
}
