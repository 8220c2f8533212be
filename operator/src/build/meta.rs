//! Metadata and ports shared by the builders. Names, labels and Secret keys
//! that other steps read too are in [`crate::names`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::Tenant;

/// Public (chat) port of the runtime.
pub const HTTP_PORT: i32 = 8080;
/// Admin (health, metrics) port of the runtime.
pub const ADMIN_PORT: i32 = 9090;

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
}
