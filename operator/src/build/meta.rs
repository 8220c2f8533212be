//! Names, labels and metadata shared by every child object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Slot, Tenant};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "chorus-operator";
/// Label naming the ChatTenant a child belongs to.
pub const TENANT_LABEL: &str = "chorus.dev/tenant";
/// Label naming the slot (`blue`/`green`) of slot-specific children.
pub const SLOT_LABEL: &str = "chorus.dev/slot";
/// `app.kubernetes.io/managed-by` value of every child.
pub const MANAGED_BY: &str = "chorus-operator";
/// Public (chat) port of the runtime.
pub const HTTP_PORT: i32 = 8080;
/// Admin (health, metrics) port of the runtime.
pub const ADMIN_PORT: i32 = 9090;

/// Labels every child carries.
pub fn labels(t: &Tenant) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "chat-runtime"),
        ("app.kubernetes.io/instance", t.name.as_str()),
        ("app.kubernetes.io/component", "chat"),
        ("app.kubernetes.io/part-of", "chorus"),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        (TENANT_LABEL, t.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Labels of a slot-specific child.
pub fn slot_labels(t: &Tenant, slot: Slot) -> BTreeMap<String, String> {
    let mut l = labels(t);
    l.insert(SLOT_LABEL.into(), slot.as_str().into());
    l
}

/// The label selector of every pod of the tenant.
pub fn tenant_selector(t: &Tenant) -> BTreeMap<String, String> {
    [(TENANT_LABEL.to_string(), t.name.clone())].into()
}

/// The label selector of the pods of one slot.
pub fn slot_selector(t: &Tenant, slot: Slot) -> BTreeMap<String, String> {
    let mut s = tenant_selector(t);
    s.insert(SLOT_LABEL.into(), slot.as_str().into());
    s
}

/// `key=value,...` form of a selector (status.selector, label queries).
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of a child named `name` with `labels`, owned by the ChatTenant.
pub fn child_meta(t: &Tenant, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(t.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![t.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// A label-safe form of an image tag (for `app.kubernetes.io/version`).
pub fn version_label(image: &str) -> String {
    let tail = image.rsplit('/').next().unwrap_or(image);
    let tag = tail
        .split_once('@')
        .map(|(_, d)| d.trim_start_matches("sha256:"))
        .or_else(|| tail.split_once(':').map(|(_, t)| t))
        .unwrap_or("latest");
    let cleaned: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_labels() {
        assert_eq!(version_label("ghcr.io/a/chat-runtime:0.1.0"), "0.1.0");
        assert_eq!(version_label("localhost:5000/rt"), "latest");
        assert_eq!(version_label("rt@sha256:abcdef"), "abcdef");
        assert!(version_label(&format!("rt:{}", "x".repeat(100))).len() <= 63);
    }

    #[test]
    fn selector_strings_are_sorted() {
        let s: BTreeMap<_, _> =
            [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into();
        assert_eq!(selector_string(&s), "a=1,b=2");
    }
}
