//! Turns a `ChatTenant` into a [`Tenant`]: the checked, defaulted view every
//! builder reads. Pure. The apiserver already refused most bad specs at
//! admission (schema + CEL); this re-checks what SQL and object names depend
//! on, so an object stored before a CRD upgrade cannot slip through.

use std::net::IpAddr;

use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::{
    crd::ChatTenant,
    database::{Ident, TenantDatabase},
    model::{Slot, Tenant},
};

/// Why a ChatTenant cannot be reconciled until its spec changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSpec {
    /// metadata.name too long or missing pieces of metadata.
    #[error("metadata: {0}")]
    Metadata(String),
    /// `spec.database.name` is not a safe identifier.
    #[error("spec.database.name: {0}")]
    DatabaseName(#[from] crate::database::IdentError),
    /// `spec.tenantId` is malformed.
    #[error("spec.tenantId: {0:?} must be a lowercase DNS label of at most 32 characters")]
    TenantId(String),
    /// Autoscaling bounds reversed.
    #[error("spec.autoscaling: minReplicas ({0}) must be less than or equal to maxReplicas ({1})")]
    AutoscalingBounds(i32, i32),
    /// A CIDR that does not parse.
    #[error("spec.networkPolicy.allowEgressTo[{0}].cidr: {1:?} is not a CIDR such as 10.0.0.0/16")]
    Cidr(usize, String),
}

/// Validates `ct`.
pub fn validate(ct: &ChatTenant) -> Result<Tenant, InvalidSpec> {
    let name = ct.name_any();
    let namespace = ct
        .namespace()
        .ok_or_else(|| InvalidSpec::Metadata("the ChatTenant has no namespace".into()))?;
    if name.is_empty() || name.len() > 50 {
        return Err(InvalidSpec::Metadata(format!(
            "name {name:?} must be 1 to 50 characters"
        )));
    }
    let owner = ct
        .controller_owner_ref(&())
        .ok_or_else(|| InvalidSpec::Metadata("the ChatTenant has no uid yet".into()))?;
    let spec = ct.spec.clone();
    if !is_dns_label(&spec.tenant_id) || spec.tenant_id.len() > 32 {
        return Err(InvalidSpec::TenantId(spec.tenant_id.clone()));
    }
    let db_name = Ident::new(&spec.database.name)?;
    if let Some(a) = &spec.autoscaling
        && a.min_replicas > a.max_replicas
    {
        return Err(InvalidSpec::AutoscalingBounds(
            a.min_replicas,
            a.max_replicas,
        ));
    }
    if let Some(np) = &spec.network_policy {
        for (i, peer) in np.allow_egress_to.iter().enumerate() {
            if !is_cidr(&peer.cidr) {
                return Err(InvalidSpec::Cidr(i, peer.cidr.clone()));
            }
        }
    }
    let stable_slot = ct
        .status
        .as_ref()
        .and_then(|s| s.stable.as_ref())
        .and_then(|s| Slot::parse(&s.slot))
        .unwrap_or(Slot::Blue);
    let database = TenantDatabase {
        name: db_name,
        connection_limit: spec.database.connection_limit,
        owner: format!("{namespace}/{name}"),
    };
    Ok(Tenant {
        name,
        namespace,
        generation: ct.meta().generation.unwrap_or(0),
        database,
        spec,
        owner,
        stable_slot,
    })
}

/// A short, stable identifier of a runtime version: the first 10 hex digits
/// of SHA-256 over the image reference.
pub fn revision_of(image: &str) -> String {
    let digest = Sha256::digest(image.as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ChatTenantStatus, SlotStatus};

    /// A minimal valid ChatTenant as the apiserver would store it.
    pub(crate) fn sample() -> ChatTenant {
        let yaml = r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {name: acme, namespace: tenants, uid: 1234-abcd, generation: 3}
spec:
  tenantId: acme
  runtime: {image: "ghcr.io/chorus-dev/chat-runtime:0.1.0"}
  database: {serverRef: {name: shared-pg}, name: chat_acme}
"#;
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn accepts_the_minimal_tenant_with_defaults() {
        let t = validate(&sample()).unwrap();
        assert_eq!(t.name, "acme");
        assert_eq!(t.namespace, "tenants");
        assert_eq!(t.generation, 3);
        assert_eq!(t.spec.runtime.replicas, 2);
        assert_eq!(t.database.name.as_str(), "chat_acme");
        assert_eq!(t.database.connection_limit, 50);
        assert_eq!(t.stable_slot, Slot::Blue);
        assert_eq!(t.owner.kind, "ChatTenant");
        assert_eq!(t.owner.controller, Some(true));
    }

    #[test]
    fn keeps_the_stable_slot_from_status() {
        let mut ct = sample();
        ct.status = Some(ChatTenantStatus {
            stable: Some(SlotStatus {
                revision: "r".into(),
                image: "i".into(),
                slot: "green".into(),
                replicas: 2,
                available_replicas: 0,
            }),
            ..ChatTenantStatus::default()
        });
        assert_eq!(validate(&ct).unwrap().stable_slot, Slot::Green);
    }

    #[test]
    fn refuses_an_unsafe_database_name() {
        let mut ct = sample();
        ct.spec.database.name = "x\"; DROP ROLE postgres; --".into();
        assert!(matches!(validate(&ct), Err(InvalidSpec::DatabaseName(_))));
    }

    #[test]
    fn refuses_reversed_autoscaling_bounds_and_bad_cidrs() {
        let mut ct = sample();
        ct.spec.autoscaling =
            serde_json::from_value(serde_json::json!({"minReplicas": 5, "maxReplicas": 2}))
                .unwrap();
        assert_eq!(
            validate(&ct).unwrap_err(),
            InvalidSpec::AutoscalingBounds(5, 2)
        );
        let mut ct = sample();
        ct.spec.network_policy = serde_json::from_value(
            serde_json::json!({"allowEgressTo": [{"cidr": "10.0.0.0/8"}, {"cidr": "nope"}]}),
        )
        .unwrap();
        assert_eq!(
            validate(&ct).unwrap_err().to_string(),
            "spec.networkPolicy.allowEgressTo[1].cidr: \"nope\" is not a CIDR such as 10.0.0.0/16"
        );
    }

    #[test]
    fn refuses_a_long_name() {
        let mut ct = sample();
        ct.metadata.name = Some("a".repeat(51));
        assert!(matches!(validate(&ct), Err(InvalidSpec::Metadata(_))));
    }

    #[test]
    fn revisions_are_short_and_stable() {
        assert_eq!(revision_of("a:1"), revision_of("a:1"));
        assert_ne!(revision_of("a:1"), revision_of("a:2"));
        assert_eq!(revision_of("a:1").len(), 10);
    }

    #[test]
    fn cidrs() {
        assert!(is_cidr("10.0.0.0/8"));
        assert!(is_cidr("fd00::/64"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("10.0.0.0"));
    }
}
