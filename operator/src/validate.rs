//! Turns a `ChatTenant` into a [`Tenant`]: the checked, defaulted view every
//! builder reads. Pure. The apiserver already refused most bad specs at
//! admission (schema + CEL); this re-checks every string that later becomes
//! a child name, a label value, a DNS name, an environment variable name or
//! a PostgreSQL identifier, against its strictest consumer, so an object
//! stored before a CRD upgrade cannot slip through: the controller writes
//! nothing (database, role, Secret, child) for a tenant that fails here.

use std::net::IpAddr;

use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::{
    crd::ChatTenant,
    database::{Ident, Isolation, TenantDatabase},
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
    /// `spec.database.sharedDatabase` is not a safe identifier, or leaves
    /// no room for its members role (`<name>_members`).
    #[error("spec.database.sharedDatabase: {0}")]
    SharedDatabase(crate::database::IdentError),
    /// `spec.tenantId` is malformed.
    #[error("spec.tenantId: {0:?} must be a lowercase DNS label of at most 32 characters")]
    TenantId(String),
    /// Autoscaling bounds reversed.
    #[error("spec.autoscaling: minReplicas ({0}) must be less than or equal to maxReplicas ({1})")]
    AutoscalingBounds(i32, i32),
    /// A string that would make an invalid child name, label, host or
    /// reference downstream.
    #[error("{field}: {value:?} {rule}")]
    Field {
        /// The field path, for example `metadata.name`.
        field: String,
        /// The offending value.
        value: String,
        /// What it must be, and why.
        rule: &'static str,
    },
    /// `spec.backup.schedule` does not parse as a cron schedule.
    #[error(
        "spec.backup.schedule: {0:?} is not a cron schedule of 5 fields (minute hour day-of-month month day-of-week) such as '0 3 * * *', nor @hourly/@daily/@weekly/@monthly/@yearly: {1}"
    )]
    BackupSchedule(String, String),
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
    check_names(&name, &ct.spec)?;
    let owner = ct
        .controller_owner_ref(&())
        .ok_or_else(|| InvalidSpec::Metadata("the ChatTenant has no uid yet".into()))?;
    let spec = ct.spec.clone();
    if !is_tenant_id(&spec.tenant_id) || spec.tenant_id.len() > 32 {
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
    if let Some(b) = &spec.backup {
        check_schedule(&b.schedule)?;
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
    let isolation = match spec.database.shared_database() {
        None => Isolation::Database,
        Some(shared) => Ident::new(shared)
            .and_then(Isolation::schema)
            .map_err(InvalidSpec::SharedDatabase)?,
    };
    let database = TenantDatabase {
        name: db_name,
        connection_limit: spec.database.connection_limit,
        owner: format!("{namespace}/{name}"),
        isolation,
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

/// Checks `spec.backup.schedule` as the CronJob controller reads it: five
/// fields or a predefined `@` schedule (seconds and years are refused here
/// though `croner` parses them: Kubernetes does not).
fn check_schedule(schedule: &str) -> Result<(), InvalidSpec> {
    let err = |why: &str| InvalidSpec::BackupSchedule(schedule.to_string(), why.to_string());
    let fields = schedule.split_whitespace().count();
    if !schedule.starts_with('@') && fields != 5 {
        return Err(err(&format!("it has {fields} fields")));
    }
    schedule
        .parse::<croner::Cron>()
        .map(|_| ())
        .map_err(|e| err(&e.to_string()))
}

/// A short, stable identifier of a runtime version: the first 10 hex digits
/// of SHA-256 over the image reference.
pub fn revision_of(image: &str) -> String {
    let digest = Sha256::digest(image.as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The rule of `metadata.name` (also the CRD's CEL message).
pub const NAME_RULE: &str = "must be a DNS-1035 label of at most 50 characters (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit): the tenant's Services are named <name>, <name>-blue, <name>-preview, ... and Kubernetes before v1.34 accepts only DNS-1035 labels of at most 63 characters as Service names";
const SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 characters): it names a Kubernetes object";
const LABEL_RULE: &str =
    "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)";
const HOST_RULE: &str = "must be a DNS host name (dot-separated labels of lowercase letters, digits and '-', each at most 63 characters, the last starting with a letter; no IP address, no wildcard)";
const SECRET_KEY_RULE: &str = "must be a Secret key (letters, digits, '-', '_' and '.')";
const ENV_NAME_RULE: &str = "must be an environment variable name ([-._a-zA-Z][-._a-zA-Z0-9]*), as every supported Kubernetes version requires";
const ANNOTATION_RULE: &str = "must be an annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters ([A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9])";
const OTEL_ENV_RULE: &str = "is set by the operator from spec.runtime.tracing: remove it, or remove spec.runtime.tracing to set OTEL_* by hand";
const TRACING_ENDPOINT_RULE: &str = "must be an http:// or https:// URL with a host, such as http://otel-collector.observability:4318";
const SAMPLING_RULE: &str = "must be between 0 and 1";
const IMAGE_RULE: &str = "must be a container image reference without spaces";

/// Checks every string the operator turns into an object name, label
/// value, DNS name or reference; the first failure names its field.
fn check_names(name: &str, spec: &crate::crd::ChatTenantSpec) -> Result<(), InvalidSpec> {
    let field = |field: &str, value: &str, rule: &'static str| InvalidSpec::Field {
        field: field.to_string(),
        value: value.to_string(),
        rule,
    };
    let check = |ok: bool, f: &str, value: &str, rule: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(field(f, value, rule))
        }
    };
    check(
        is_dns1035_label(name) && name.len() <= crate::names::MAX_NAME_LEN,
        "metadata.name",
        name,
        NAME_RULE,
    )?;
    for child in crate::names::child_names(name) {
        check(is_dns1035_label(&child), "metadata.name", name, NAME_RULE)?;
    }
    check(
        !spec.runtime.image.is_empty() && !spec.runtime.image.contains(char::is_whitespace),
        "spec.runtime.image",
        &spec.runtime.image,
        IMAGE_RULE,
    )?;
    if let Some(c) = &spec.rollout.candidate {
        check(
            !c.image.is_empty() && !c.image.contains(' '),
            "spec.rollout.candidate.image",
            &c.image,
            IMAGE_RULE,
        )?;
    }
    for (i, e) in spec.runtime.env.iter().enumerate() {
        check(
            is_env_name(&e.name),
            &format!("spec.runtime.env[{i}].name"),
            &e.name,
            ENV_NAME_RULE,
        )?;
        check(
            spec.runtime.tracing.is_none() || !e.name.starts_with("OTEL_"),
            &format!("spec.runtime.env[{i}].name"),
            &e.name,
            OTEL_ENV_RULE,
        )?;
    }
    if let Some(tr) = &spec.runtime.tracing {
        check(
            tr.host_port().is_some() && !tr.endpoint.contains(char::is_whitespace),
            "spec.runtime.tracing.endpoint",
            &tr.endpoint,
            TRACING_ENDPOINT_RULE,
        )?;
        check(
            (0.0..=1.0).contains(&tr.sampling_ratio),
            "spec.runtime.tracing.samplingRatio",
            &tr.sampling_ratio.to_string(),
            SAMPLING_RULE,
        )?;
    }
    check(
        is_dns_subdomain(&spec.database.server_ref.name),
        "spec.database.serverRef.name",
        &spec.database.server_ref.name,
        SUBDOMAIN_RULE,
    )?;
    if let Some(r) = spec
        .auth
        .external_jwt
        .as_ref()
        .and_then(|e| e.secret_ref.as_ref())
    {
        let f = "spec.auth.externalJwt.secretRef";
        check(
            is_dns_subdomain(&r.name),
            &format!("{f}.name"),
            &r.name,
            SUBDOMAIN_RULE,
        )?;
        check(
            is_secret_key(&r.key),
            &format!("{f}.key"),
            &r.key,
            SECRET_KEY_RULE,
        )?;
    }
    if let Some(x) = &spec.exposure {
        check(is_host(&x.host), "spec.exposure.host", &x.host, HOST_RULE)?;
        if let Some(tls) = &x.tls {
            let f = "spec.exposure.tls.secretName";
            check(
                is_dns_subdomain(&tls.secret_name),
                f,
                &tls.secret_name,
                SUBDOMAIN_RULE,
            )?;
        }
        if let Some(ing) = &x.ingress {
            if let Some(class) = &ing.class_name {
                let f = "spec.exposure.ingress.className";
                check(is_dns_subdomain(class), f, class, SUBDOMAIN_RULE)?;
            }
            for key in ing.annotations.keys() {
                let f = "spec.exposure.ingress.annotations";
                check(is_qualified_name(key), f, key, ANNOTATION_RULE)?;
            }
        }
        if let Some(gw) = &x.gateway {
            let p = &gw.parent_ref;
            let f = "spec.exposure.gateway.parentRef";
            check(
                is_dns_subdomain(&p.name),
                &format!("{f}.name"),
                &p.name,
                SUBDOMAIN_RULE,
            )?;
            if let Some(ns) = &p.namespace {
                check(is_dns_label(ns), &format!("{f}.namespace"), ns, LABEL_RULE)?;
            }
            if let Some(section) = &p.section_name {
                let f = format!("{f}.sectionName");
                check(is_dns_subdomain(section), &f, section, SUBDOMAIN_RULE)?;
            }
        }
    }
    if let Some(np) = &spec.network_policy {
        for (list, peers) in [
            ("allowIngressFrom", &np.allow_ingress_from),
            ("allowMetricsFrom", &np.allow_metrics_from),
        ] {
            for (i, peer) in peers.iter().enumerate() {
                let f = format!("spec.networkPolicy.{list}[{i}].namespace");
                check(
                    is_dns_label(&peer.namespace),
                    &f,
                    &peer.namespace,
                    LABEL_RULE,
                )?;
            }
        }
    }
    Ok(())
}

/// RFC 1035 label as Kubernetes checks Service names: lowercase
/// alphanumerics and '-', starting with a letter, ending alphanumeric, at
/// most 63 characters.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// RFC 1123 label (may start with a digit).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain as Kubernetes checks object names: dot-separated
/// labels (no per-label length limit), at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A host name Ingress and HTTPRoute both accept and DNS can hold: labels of
/// at most 63 characters, the last starting with a letter (not an IP
/// address).
fn is_host(s: &str) -> bool {
    is_dns_subdomain(s)
        && s.split('.').all(is_dns_label)
        && s.rsplit('.')
            .next()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_lowercase()))
}

fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(s: &str) -> bool {
    s.len() <= 256
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '-' | '_' | '.'))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label or annotation key: `[prefix/]name`.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

fn is_tenant_id(s: &str) -> bool {
    is_dns1035_label(s)
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
        ct.status = Some(Box::new(ChatTenantStatus {
            stable: Some(SlotStatus {
                revision: "r".into(),
                image: "i".into(),
                slot: "green".into(),
                replicas: 2,
                available_replicas: 0,
            }),
            ..ChatTenantStatus::default()
        }));
        assert_eq!(validate(&ct).unwrap().stable_slot, Slot::Green);
    }

    #[test]
    fn refuses_an_unsafe_database_name() {
        let mut ct = sample();
        ct.spec.database.name = "x\"; DROP ROLE postgres; --".into();
        assert!(matches!(validate(&ct), Err(InvalidSpec::DatabaseName(_))));
    }

    #[test]
    fn schema_isolation_names_the_shared_database_and_its_members() {
        use crate::crd::DatabaseIsolation;
        let mut ct = sample();
        assert_eq!(
            validate(&ct).unwrap().database.isolation,
            Isolation::Database
        );
        ct.spec.database.isolation = DatabaseIsolation::Schema;
        let t = validate(&ct).unwrap();
        assert_eq!(t.database.database().as_str(), "chorus_tenants");
        assert_eq!(t.database.schema().map(Ident::as_str), Some("chat_acme"));
        assert!(matches!(
            &t.database.isolation,
            Isolation::Schema { members, .. } if members.as_str() == "chorus_tenants_members"
        ));
        ct.spec.database.shared_database = Some("small_tenants".into());
        assert_eq!(
            validate(&ct).unwrap().database.database().as_str(),
            "small_tenants"
        );
        for bad in ["x\"; --", "pg_x", &"a".repeat(56)] {
            ct.spec.database.shared_database = Some(bad.to_string());
            assert!(
                matches!(validate(&ct), Err(InvalidSpec::SharedDatabase(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn backup_schedules_are_cron_schedules_of_five_fields() {
        let with = |schedule: &str| {
            let mut ct = sample();
            ct.spec.backup = Some(
                serde_json::from_value(serde_json::json!({
                    "schedule": schedule,
                    "retention": {"count": 3},
                    "destination": {"persistentVolumeClaim": {"claimName": "b"}},
                }))
                .unwrap(),
            );
            validate(&ct).map(|_| ())
        };
        for ok in ["*/5 * * * *", "0 3 * * MON-FRI", "@daily", "30 2 1,15 * *"] {
            assert_eq!(with(ok), Ok(()), "{ok}");
        }
        for bad in [
            "61 * * * *",
            "* * * *",
            "0 0 3 * * *",
            "x * * * *",
            "0 25 * * *",
        ] {
            let err = with(bad).unwrap_err();
            assert!(
                matches!(err, InvalidSpec::BackupSchedule(..)),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().starts_with("spec.backup.schedule: "),
                "{err}"
            );
        }
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

    /// Every string that becomes a child name, label, host, reference or
    /// variable name: (field, edit, accepted). A refusal names the field.
    #[test]
    fn derived_names_are_checked_against_their_strictest_consumer() {
        use serde_json::json;
        type Edit = Box<dyn Fn(&mut ChatTenant)>;
        let name =
            |n: &'static str| -> Edit { Box::new(move |ct| ct.metadata.name = Some(n.into())) };
        let spec = |pointer: &'static str, v: serde_json::Value| -> Edit {
            Box::new(move |ct| {
                let mut doc = serde_json::to_value(&ct.spec).unwrap();
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                let mut target = &mut doc;
                for part in parent.split('/').filter(|p| !p.is_empty()) {
                    target = target
                        .as_object_mut()
                        .unwrap()
                        .entry(part)
                        .or_insert(json!({}));
                }
                target
                    .as_object_mut()
                    .unwrap()
                    .insert(key.into(), v.clone());
                ct.spec = serde_json::from_value(doc).unwrap();
            })
        };
        let long50 = Box::leak("a".repeat(50).into_boxed_str());
        let long51 = Box::leak("a".repeat(51).into_boxed_str());
        let cases: Vec<(&str, Edit, bool)> = vec![
            ("metadata.name", name("acme"), true),
            ("metadata.name", name("a-1"), true),
            ("metadata.name", name(long50), true),
            ("metadata.name", name(long51), false),
            ("metadata.name", name("acme.eu"), false),
            ("metadata.name", name("1acme"), false),
            ("metadata.name", name("acme-"), false),
            ("metadata.name", name("Acme"), false),
            ("metadata.name", name("ac_me"), false),
            (
                "spec.runtime.image",
                spec("/runtime/image", json!("rt:1 x")),
                false,
            ),
            (
                "spec.rollout.candidate.image",
                spec("/rollout/candidate", json!({"image": " rt:2"})),
                false,
            ),
            (
                "spec.runtime.env[0].name",
                spec("/runtime/env", json!([{"name": "MY_VAR", "value": "1"}])),
                true,
            ),
            (
                "spec.runtime.env[0].name",
                spec("/runtime/env", json!([{"name": "1X", "value": "1"}])),
                false,
            ),
            (
                "spec.runtime.env[0].name",
                spec("/runtime/env", json!([{"name": "A=B", "value": "1"}])),
                false,
            ),
            (
                "spec.database.serverRef.name",
                spec("/database/serverRef/name", json!("pg.prod")),
                true,
            ),
            (
                "spec.database.serverRef.name",
                spec("/database/serverRef/name", json!("PG_prod")),
                false,
            ),
            (
                "spec.auth.externalJwt.secretRef.name",
                spec(
                    "/auth",
                    json!({"mode": "External", "externalJwt": {"issuer": "i", "audience": "a", "secretRef": {"name": "jwt key", "key": "k"}}}),
                ),
                false,
            ),
            (
                "spec.auth.externalJwt.secretRef.key",
                spec(
                    "/auth",
                    json!({"mode": "External", "externalJwt": {"issuer": "i", "audience": "a", "secretRef": {"name": "jwt", "key": "k/1"}}}),
                ),
                false,
            ),
            (
                "spec.exposure.host",
                spec("/exposure", json!({"host": "acme.chat.example.com"})),
                true,
            ),
            (
                "spec.exposure.host",
                spec("/exposure", json!({"host": "10.0.0.1"})),
                false,
            ),
            (
                "spec.exposure.host",
                spec("/exposure", json!({"host": "a..example.com"})),
                false,
            ),
            (
                "spec.exposure.host",
                spec("/exposure", json!({"host": "a.-x.example.com"})),
                false,
            ),
            (
                "spec.exposure.host",
                spec(
                    "/exposure",
                    json!({"host": format!("{}.example.com", "a".repeat(64))}),
                ),
                false,
            ),
            (
                "spec.exposure.tls.secretName",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "tls": {"secretName": "Acme_TLS"}}),
                ),
                false,
            ),
            (
                "spec.exposure.ingress.className",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "ingress": {"className": "nginx internal"}}),
                ),
                false,
            ),
            (
                "spec.exposure.ingress.annotations",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"}}}),
                ),
                true,
            ),
            (
                "spec.exposure.ingress.annotations",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "ingress": {"annotations": {"bad key": "1"}}}),
                ),
                false,
            ),
            (
                "spec.exposure.gateway.parentRef.name",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "Public"}}}),
                ),
                false,
            ),
            (
                "spec.exposure.gateway.parentRef.namespace",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "public", "namespace": "gw.x"}}}),
                ),
                false,
            ),
            (
                "spec.exposure.gateway.parentRef.sectionName",
                spec(
                    "/exposure",
                    json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "public", "sectionName": "HTTPS"}}}),
                ),
                false,
            ),
            (
                "spec.networkPolicy.allowMetricsFrom[0].namespace",
                spec(
                    "/networkPolicy",
                    json!({"allowMetricsFrom": [{"namespace": "Monitoring"}]}),
                ),
                false,
            ),
        ];
        for (field, edit, accepted) in cases {
            let mut ct = sample();
            edit(&mut ct);
            match (validate(&ct), accepted) {
                (Ok(_), true) => {}
                (Err(InvalidSpec::Field { field: f, .. }), false) => assert_eq!(f, field),
                (other, _) => panic!("{field}: expected accepted={accepted}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_refused_name_says_which_field_and_why() {
        let mut ct = sample();
        ct.metadata.name = Some("acme.eu".into());
        let e = validate(&ct).unwrap_err().to_string();
        assert!(
            e.starts_with("metadata.name: \"acme.eu\" must be a DNS-1035 label"),
            "{e}"
        );
    }

    #[test]
    fn revisions_are_short_and_stable() {
        assert_eq!(revision_of("a:1"), revision_of("a:1"));
        assert_ne!(revision_of("a:1"), revision_of("a:2"));
        assert_eq!(revision_of("a:1").len(), 10);
    }

    #[test]
    fn tracing_needs_a_url_a_ratio_and_no_otel_variables_by_hand() {
        let with = |tracing: serde_json::Value, env: serde_json::Value| {
            let mut ct = sample();
            ct.spec.runtime.tracing = Some(serde_json::from_value(tracing).unwrap());
            ct.spec.runtime.env = serde_json::from_value(env).unwrap();
            validate(&ct)
        };
        let ok = serde_json::json!({"endpoint": "http://otel-collector.observability:4318"});
        assert!(with(ok.clone(), serde_json::json!([])).is_ok());
        assert!(
            with(
                serde_json::json!({"endpoint": "https://[fd00::1]", "samplingRatio": 1.0}),
                serde_json::json!([])
            )
            .is_ok()
        );
        let field_of = |r: Result<Tenant, InvalidSpec>| match r {
            Err(InvalidSpec::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        for bad in [
            "otel-collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://a b",
        ] {
            assert_eq!(
                field_of(with(
                    serde_json::json!({"endpoint": bad}),
                    serde_json::json!([])
                )),
                "spec.runtime.tracing.endpoint",
                "{bad}"
            );
        }
        assert_eq!(
            field_of(with(
                serde_json::json!({"endpoint": "http://c:4318", "samplingRatio": 1.5}),
                serde_json::json!([])
            )),
            "spec.runtime.tracing.samplingRatio"
        );
        let e = with(
            ok,
            serde_json::json!([{"name": "OTEL_SERVICE_NAME", "value": "x"}]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("spec.runtime.env[0].name: \"OTEL_SERVICE_NAME\" is set by the operator"),
            "{e}"
        );
        // Without spec.runtime.tracing, OTEL_* by hand is the user's business.
        let mut ct = sample();
        ct.spec.runtime.env = serde_json::from_value(
            serde_json::json!([{"name": "OTEL_SERVICE_NAME", "value": "x"}]),
        )
        .unwrap();
        assert!(validate(&ct).is_ok());
    }

    #[test]
    fn cidrs() {
        assert!(is_cidr("10.0.0.0/8"));
        assert!(is_cidr("fd00::/64"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("10.0.0.0"));
    }
}
