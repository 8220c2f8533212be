//! Deployments `<name>-blue` and `<name>-green`: the chat-runtime pods.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
            TopologySpreadConstraint, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    Inputs,
    meta::{ADMIN_PORT, HTTP_PORT, child_meta, version_label},
};
use crate::{
    crd::{AuthMode, BrokerSpec, BrokerType},
    model::{Slot, Tenant},
    names::{
        AUTH_KEY_ANNOTATION, AUTH_SECRET_KEY, DATABASE_URI_ANNOTATION, DB_SECRET_URI_KEY,
        ENV_REFS_ANNOTATION, PASSWORD_ANNOTATION, auth_secret_name, db_secret_name, slot_labels,
        slot_name, slot_selector,
    },
    rollout::SlotSpec,
};

/// Name of the runtime container.
pub const CONTAINER: &str = "chat-runtime";
/// Seconds between SIGTERM's start of the drain and the kill, kept back from
/// the grace period so the runtime finishes closing sockets before SIGKILL.
pub const DRAIN_MARGIN_SECONDS: i64 = 15;

/// The Deployment of one slot.
pub fn build_deployment(t: &Tenant, slot: &SlotSpec, inputs: &Inputs) -> Deployment {
    let name = slot_name(t, slot.slot);
    let mut labels = slot_labels(t, slot.slot);
    let mut pod_labels = labels.clone();
    pod_labels.insert(
        "app.kubernetes.io/version".into(),
        version_label(&slot.image),
    );
    labels.insert(
        "app.kubernetes.io/version".into(),
        version_label(&slot.image),
    );
    let selector = slot_selector(t, slot.slot);
    let mut annotations = BTreeMap::new();
    annotations.insert("chorus.dev/revision".to_string(), slot.revision.clone());
    if let Some(at) = inputs.password_changed_at {
        annotations.insert(PASSWORD_ANNOTATION.to_string(), at.to_string());
    }
    // Every value the pods read from a Secret or ConfigMap only at start-up
    // is in a checksum here, so a change rolls them.
    for (key, sum) in [
        (AUTH_KEY_ANNOTATION, inputs.auth_key_hash),
        (DATABASE_URI_ANNOTATION, inputs.database_uri_hash),
        (ENV_REFS_ANNOTATION, inputs.env_refs_hash),
    ] {
        if let Some(sum) = sum {
            annotations.insert(key.to_string(), sum.to_string());
        }
    }
    Deployment {
        metadata: child_meta(t, name, labels),
        spec: Some(DeploymentSpec {
            replicas: Some(slot.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(t, slot, selector)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(t: &Tenant, slot: &SlotSpec, selector: BTreeMap<String, String>) -> PodSpec {
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    };
    PodSpec {
        containers: vec![container(t, slot)],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(t.spec.runtime.termination_grace_period_seconds),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        topology_spread_constraints: Some(vec![
            spread("topology.kubernetes.io/zone"),
            spread("kubernetes.io/hostname"),
        ]),
        // The root filesystem is read-only; /tmp is the only writable path.
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

fn container(t: &Tenant, slot: &SlotSpec) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Container {
        name: CONTAINER.into(),
        image: Some(slot.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["serve".into()]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env(t, slot.slot)),
        resources: Some(
            t.spec
                .runtime
                .resources
                .as_deref()
                .cloned()
                .unwrap_or_else(default_resources),
        ),
        startup_probe: Some(probe("/startupz", 2, 60)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("128Mi".into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_string(), Quantity("512Mi".into()))].into()),
        ..ResourceRequirements::default()
    }
}

fn value(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The runtime's configuration (docs/runtime.md), the tracing variables,
/// then the user's variables.
fn env(t: &Tenant, slot: Slot) -> Vec<EnvVar> {
    let spec = &t.spec;
    let limits = &spec.limits;
    let drain = (spec.runtime.termination_grace_period_seconds - DRAIN_MARGIN_SECONDS).max(5);
    let mut env = vec![
        value("CHAT_TENANT_ID", &spec.tenant_id),
        from_secret("CHAT_DATABASE_URL", &db_secret_name(t), DB_SECRET_URI_KEY),
        EnvVar {
            name: "CHAT_POD_NAME".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
        },
        value("CHAT_LISTEN_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
        value("CHAT_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        value("CHAT_MAX_CONNECTIONS", limits.max_connections_per_replica),
        value(
            "CHAT_MESSAGES_PER_SECOND",
            limits.messages_per_second_per_user,
        ),
        value("CHAT_MAX_MESSAGE_BYTES", limits.max_message_bytes),
        value("CHAT_HISTORY_RETENTION_DAYS", limits.history_retention_days),
        value("CHAT_DRAIN_SECONDS", drain),
        value("CHAT_LOG_LEVEL", "info"),
    ];
    match spec.auth.mode {
        AuthMode::Builtin => {
            env.push(value("CHAT_AUTH_MODE", "builtin"));
            env.push(from_secret(
                "CHAT_JWT_SECRET",
                &auth_secret_name(t),
                AUTH_SECRET_KEY,
            ));
        }
        AuthMode::External => {
            env.push(value("CHAT_AUTH_MODE", "external"));
            if let Some(ext) = &spec.auth.external_jwt {
                if let Some(r) = &ext.secret_ref {
                    env.push(from_secret("CHAT_EXTERNAL_JWT_SECRET", &r.name, &r.key));
                }
                if let Some(uri) = &ext.jwks_uri {
                    env.push(value("CHAT_EXTERNAL_JWKS_URL", uri));
                }
                env.push(value("CHAT_EXTERNAL_ISSUER", &ext.issuer));
                env.push(value("CHAT_EXTERNAL_AUDIENCE", &ext.audience));
            }
        }
    }
    env.extend(broker_env(spec.runtime.broker.as_deref()));
    env.extend(tracing_env(t, slot));
    env.extend(spec.runtime.env.iter().cloned());
    env
}

/// `spec.runtime.tracing` as the standard OpenTelemetry variables the
/// runtime reads (docs/operations.md, "Tracing"). Without the field,
/// nothing: the runtime then exports no traces. The resource names the
/// tenant, its namespace, the slot and the pod (`$(CHAT_POD_NAME)`, defined
/// above, is expanded by the kubelet).
fn tracing_env(t: &Tenant, slot: Slot) -> Vec<EnvVar> {
    let Some(tr) = &t.spec.runtime.tracing else {
        return Vec::new();
    };
    let attributes = [
        ("service.namespace", t.namespace.as_str()),
        ("service.instance.id", "$(CHAT_POD_NAME)"),
        ("k8s.namespace.name", t.namespace.as_str()),
        ("k8s.pod.name", "$(CHAT_POD_NAME)"),
        ("chorus.tenant", t.name.as_str()),
        ("chorus.tenant_id", t.spec.tenant_id.as_str()),
        ("chorus.slot", slot.as_str()),
    ]
    .map(|(k, v)| format!("{k}={v}"))
    .join(",");
    vec![
        value("OTEL_EXPORTER_OTLP_ENDPOINT", &tr.endpoint),
        value(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            tr.protocol.unwrap_or_default().as_str(),
        ),
        value("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        value("OTEL_TRACES_SAMPLER_ARG", tr.sampling_ratio),
        value("OTEL_SERVICE_NAME", CONTAINER),
        value("OTEL_RESOURCE_ATTRIBUTES", attributes),
    ]
}

/// `spec.runtime.broker` as the runtime's `CHAT_BROKER`, `CHAT_NATS_URL`,
/// `CHAT_NATS_SUBJECT_PREFIX` and the login (`CHAT_NATS_TOKEN`, or
/// `CHAT_NATS_USER` and `CHAT_NATS_PASSWORD`, from the named Secret, never
/// copied into the pod template). PostgreSQL (the runtime's default) sets
/// nothing, so tenants without the field keep their pod template.
fn broker_env(broker: Option<&BrokerSpec>) -> Vec<EnvVar> {
    match broker {
        Some(BrokerSpec {
            kind: BrokerType::Nats,
            nats: Some(nats),
        }) => {
            let mut env = vec![
                value("CHAT_BROKER", "nats"),
                value("CHAT_NATS_URL", &nats.url),
            ];
            if let Some(prefix) = &nats.subject_prefix {
                env.push(value("CHAT_NATS_SUBJECT_PREFIX", prefix));
            }
            if let Some(auth) = &nats.auth {
                if let Some(token) = &auth.token_secret_ref {
                    env.push(from_secret("CHAT_NATS_TOKEN", &token.name, &token.key));
                }
                if let Some(basic) = &auth.basic_auth_secret_ref {
                    env.push(from_secret("CHAT_NATS_USER", &basic.name, "username"));
                    env.push(from_secret("CHAT_NATS_PASSWORD", &basic.name, "password"));
                }
            }
            env
        }
        // `type: Nats` without `nats` is refused at admission; the runtime
        // would refuse it too (CHAT_NATS_URL is required).
        Some(BrokerSpec {
            kind: BrokerType::Nats,
            nats: None,
        }) => vec![value("CHAT_BROKER", "nats")],
        Some(BrokerSpec {
            kind: BrokerType::Postgres,
            ..
        })
        | None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        build::tests::{inputs, tenant_and_plan},
        model::Slot,
    };

    fn env_value<'a>(d: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
    }

    #[test]
    fn stable_slot_deployment_is_locked_down_and_probed() {
        let (t, plan) = tenant_and_plan(|_| {});
        let d = build_deployment(&t, &plan.stable, &inputs(&plan));
        assert_eq!(d.metadata.name.as_deref(), Some("acme-blue"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].name,
            "acme"
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(120));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        for (probe, path) in [
            (&c.startup_probe, "/startupz"),
            (&c.liveness_probe, "/livez"),
            (&c.readiness_probe, "/readyz"),
        ] {
            assert_eq!(
                probe
                    .as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .as_deref(),
                Some(path)
            );
        }
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
        let selector = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(
            selector.get("chorus.dev/slot").map(String::as_str),
            Some("blue")
        );
        assert_eq!(
            d.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("app.kubernetes.io/version")
                .map(String::as_str),
            Some("0.1.0")
        );
    }

    #[test]
    fn env_wires_secrets_limits_and_drain() {
        let (t, plan) = tenant_and_plan(|_| {});
        let d = build_deployment(&t, &plan.stable, &inputs(&plan));
        let db = env_value(&d, "CHAT_DATABASE_URL").unwrap();
        let r = db
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("acme-db", "uri"));
        let jwt = env_value(&d, "CHAT_JWT_SECRET").unwrap();
        assert_eq!(
            jwt.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "acme-auth"
        );
        assert_eq!(
            env_value(&d, "CHAT_DRAIN_SECONDS")
                .unwrap()
                .value
                .as_deref(),
            Some("105")
        );
        assert_eq!(
            env_value(&d, "CHAT_TENANT_ID").unwrap().value.as_deref(),
            Some("acme")
        );
        assert_eq!(
            env_value(&d, "CHAT_MAX_MESSAGE_BYTES")
                .unwrap()
                .value
                .as_deref(),
            Some("16384")
        );
    }

    #[test]
    fn the_broker_choice_reaches_the_runtime_environment() {
        let broker_vars = |broker: serde_json::Value| {
            let (t, plan) = tenant_and_plan(|ct| {
                ct.spec.runtime.broker = serde_json::from_value(broker).unwrap();
            });
            let d = build_deployment(&t, &plan.stable, &inputs(&plan));
            ["CHAT_BROKER", "CHAT_NATS_URL", "CHAT_NATS_SUBJECT_PREFIX"]
                .map(|n| env_value(&d, n).and_then(|e| e.value.clone()))
        };
        let cases = [
            (serde_json::json!(null), [None, None, None]),
            (serde_json::json!({"type": "Postgres"}), [None, None, None]),
            (
                serde_json::json!({"type": "Nats", "nats": {"url": "nats://nats:4222"}}),
                [Some("nats".into()), Some("nats://nats:4222".into()), None],
            ),
            (
                serde_json::json!({"type": "Nats", "nats": {"url": "tls://a:4222,tls://b:4222", "subjectPrefix": "eu.acme"}}),
                [
                    Some("nats".into()),
                    Some("tls://a:4222,tls://b:4222".into()),
                    Some("eu.acme".into()),
                ],
            ),
            (
                serde_json::json!({"type": "Nats"}),
                [Some("nats".into()), None, None],
            ),
        ];
        for (broker, want) in cases {
            assert_eq!(broker_vars(broker.clone()), want, "{broker}");
        }
    }

    #[test]
    fn the_nats_login_comes_from_the_named_secret() {
        let login = |auth: serde_json::Value| {
            let (t, plan) = tenant_and_plan(|ct| {
                ct.spec.runtime.broker = serde_json::from_value(serde_json::json!(
                    {"type": "Nats", "nats": {"url": "nats://nats:4222", "auth": auth}}
                ))
                .unwrap();
            });
            let d = build_deployment(&t, &plan.stable, &inputs(&plan));
            ["CHAT_NATS_TOKEN", "CHAT_NATS_USER", "CHAT_NATS_PASSWORD"].map(|n| {
                env_value(&d, n).map(|e| {
                    assert!(e.value.is_none(), "{n} is never inlined");
                    let r = e
                        .value_from
                        .as_ref()
                        .unwrap()
                        .secret_key_ref
                        .as_ref()
                        .unwrap();
                    assert_eq!(r.optional, Some(false));
                    format!("{}/{}", r.name, r.key)
                })
            })
        };
        assert_eq!(
            login(serde_json::json!({"tokenSecretRef": {"name": "nats", "key": "token"}})),
            [Some("nats/token".into()), None, None]
        );
        assert_eq!(
            login(serde_json::json!({"basicAuthSecretRef": {"name": "nats-login"}})),
            [
                None,
                Some("nats-login/username".into()),
                Some("nats-login/password".into())
            ]
        );
    }

    #[test]
    fn external_auth_passes_issuer_audience_and_key_refs() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.auth = serde_json::from_value(serde_json::json!({
                "mode": "External",
                "externalJwt": {"secretRef": {"name": "acme-jwt", "key": "hs256"},
                                "jwksUri": "https://id.acme.example/jwks.json",
                                "issuer": "https://id.acme.example", "audience": "chat"}
            }))
            .unwrap();
        });
        let d = build_deployment(&t, &plan.stable, &inputs(&plan));
        assert_eq!(
            env_value(&d, "CHAT_AUTH_MODE").unwrap().value.as_deref(),
            Some("external")
        );
        assert!(env_value(&d, "CHAT_JWT_SECRET").is_none());
        assert_eq!(
            env_value(&d, "CHAT_EXTERNAL_JWT_SECRET")
                .unwrap()
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "acme-jwt"
        );
        assert_eq!(
            env_value(&d, "CHAT_EXTERNAL_AUDIENCE")
                .unwrap()
                .value
                .as_deref(),
            Some("chat")
        );
    }

    #[test]
    fn idle_slot_is_at_zero_and_password_rotation_restarts_pods() {
        let (t, plan) = tenant_and_plan(|_| {});
        let mut i = inputs(&plan);
        i.password_changed_at = Some("2026-11-24T10:00:00Z");
        let d = build_deployment(&t, &plan.other, &i);
        assert_eq!(d.metadata.name.as_deref(), Some("acme-green"));
        assert_eq!(plan.other.slot, Slot::Green);
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(0));
        let ann = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(
            ann.get(PASSWORD_ANNOTATION).map(String::as_str),
            Some("2026-11-24T10:00:00Z")
        );
    }

    #[test]
    fn a_rotated_auth_key_changes_the_pod_template() {
        let (t, plan) = tenant_and_plan(|_| {});
        let template_annotation = |sum: Option<&str>| {
            let mut i = inputs(&plan);
            i.auth_key_hash = sum;
            let d = build_deployment(&t, &plan.stable, &i);
            let ann = d
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap();
            ann.get(AUTH_KEY_ANNOTATION).cloned()
        };
        assert_eq!(template_annotation(None), None);
        assert_eq!(template_annotation(Some("aa11")), Some("aa11".into()));
        assert_ne!(
            template_annotation(Some("aa11")),
            template_annotation(Some("bb22"))
        );
    }

    fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
    }

    /// Each start-up source, changed alone, changes the pod template (so the
    /// Deployment rolls), under its own annotation.
    #[test]
    fn every_start_up_value_changes_the_pod_template() {
        let (t, plan) = tenant_and_plan(|_| {});
        type Set = fn(&mut Inputs<'_>, &'static str);
        let cases: [(&str, Set); 3] = [
            (AUTH_KEY_ANNOTATION, |i, v| i.auth_key_hash = Some(v)),
            (DATABASE_URI_ANNOTATION, |i, v| {
                i.database_uri_hash = Some(v)
            }),
            (ENV_REFS_ANNOTATION, |i, v| i.env_refs_hash = Some(v)),
        ];
        for (annotation, set) in cases {
            let build = |v: &'static str| {
                let mut i = inputs(&plan);
                set(&mut i, v);
                build_deployment(&t, &plan.stable, &i)
            };
            let (a, b) = (build("aa11"), build("bb22"));
            assert_eq!(template_annotations(&a)[annotation], "aa11");
            assert_ne!(
                a.spec.unwrap().template,
                b.spec.unwrap().template,
                "{annotation}"
            );
        }
    }

    /// The kind: every variable the container reads from a Secret or a
    /// ConfigMap is covered by a checksum annotation on the pod template.
    #[test]
    fn every_secret_or_configmap_variable_has_a_checksum_annotation() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.runtime.env = serde_json::from_value(serde_json::json!([
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            ]))
            .unwrap();
        });
        let (t_ext, plan_ext) = tenant_and_plan(|ct| {
            ct.spec.auth = serde_json::from_value(serde_json::json!({
                "mode": "External",
                "externalJwt": {"issuer": "i", "audience": "a", "secretRef": {"name": "jwt", "key": "k"}}
            }))
            .unwrap();
        });
        for (t, plan) in [(&t, &plan), (&t_ext, &plan_ext)] {
            let mut i = inputs(plan);
            i.auth_key_hash = Some("a");
            i.database_uri_hash = Some("d");
            i.env_refs_hash = Some("e");
            let d = build_deployment(t, &plan.stable, &i);
            let annotations = template_annotations(&d);
            let env = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .clone()
                .unwrap();
            for e in env {
                let Some(from) = e.value_from else { continue };
                if from.secret_key_ref.is_none() && from.config_map_key_ref.is_none() {
                    continue;
                }
                let annotation = match e.name.as_str() {
                    "CHAT_DATABASE_URL" => DATABASE_URI_ANNOTATION,
                    "CHAT_JWT_SECRET" | "CHAT_EXTERNAL_JWT_SECRET" => AUTH_KEY_ANNOTATION,
                    n if !n.starts_with("CHAT_") => ENV_REFS_ANNOTATION,
                    n => panic!(
                        "{n} is read from a Secret or ConfigMap at start-up without a checksum annotation"
                    ),
                };
                assert!(annotations.contains_key(annotation), "{}", e.name);
            }
        }
    }

    /// `spec.runtime.tracing` becomes the standard OpenTelemetry variables
    /// (sampler parent-based by trace id ratio, the tenant in the
    /// resource); without it no `OTEL_*` variable is set.
    #[test]
    fn tracing_sets_the_standard_variables_per_slot() {
        let (t, plan) = tenant_and_plan(|_| {});
        let d = build_deployment(&t, &plan.stable, &inputs(&plan));
        let container = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert!(
            container
                .env
                .iter()
                .flatten()
                .all(|e| !e.name.starts_with("OTEL_")),
            "no tracing, no OTEL_ variable"
        );
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.runtime.tracing = Some(
                serde_json::from_value(serde_json::json!({
                    "endpoint": "http://otel-collector.observability:4318",
                    "samplingRatio": 0.25,
                    "protocol": "http/json"
                }))
                .unwrap(),
            );
        });
        for slot in [&plan.stable, &plan.other] {
            let d = build_deployment(&t, slot, &inputs(&plan));
            let get = |name: &str| env_value(&d, name).and_then(|e| e.value.clone());
            assert_eq!(
                get("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
                Some("http://otel-collector.observability:4318")
            );
            assert_eq!(
                get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
                Some("http/json")
            );
            assert_eq!(
                get("OTEL_TRACES_SAMPLER").as_deref(),
                Some("parentbased_traceidratio")
            );
            assert_eq!(get("OTEL_TRACES_SAMPLER_ARG").as_deref(), Some("0.25"));
            assert_eq!(get("OTEL_SERVICE_NAME").as_deref(), Some("chat-runtime"));
            let attrs = get("OTEL_RESOURCE_ATTRIBUTES").unwrap();
            assert!(attrs.contains("chorus.tenant=acme"), "{attrs}");
            assert!(attrs.contains("k8s.namespace.name=tenants"), "{attrs}");
            assert!(attrs.contains("k8s.pod.name=$(CHAT_POD_NAME)"), "{attrs}");
            assert!(
                attrs.contains(&format!("chorus.slot={}", slot.slot.as_str())),
                "{attrs}"
            );
            // $(CHAT_POD_NAME) expands only if CHAT_POD_NAME comes first.
            let env = d
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .clone()
                .unwrap();
            let pos = |n: &str| env.iter().position(|e| e.name == n).unwrap();
            assert!(pos("CHAT_POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"));
        }
        // The default protocol and ratio.
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.runtime.tracing = Some(
                serde_json::from_value(serde_json::json!({"endpoint": "http://c:4318"})).unwrap(),
            );
        });
        let d = build_deployment(&t, &plan.stable, &inputs(&plan));
        let get = |name: &str| env_value(&d, name).and_then(|e| e.value.clone());
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref(),
            Some("http/protobuf")
        );
        assert_eq!(get("OTEL_TRACES_SAMPLER_ARG").as_deref(), Some("0.1"));
    }

    /// Every `spec.limits` field reaches the runtime's environment, each
    /// under its own variable (docs/runtime.md), with its default when left
    /// out. A new field without a row here fails the exhaustive destructure.
    #[test]
    fn every_limit_reaches_the_runtime_environment() {
        let crate::crd::LimitsSpec {
            max_connections_per_replica: _,
            messages_per_second_per_user: _,
            max_message_bytes: _,
            history_retention_days: _,
        } = crate::crd::LimitsSpec::default();
        type Set = fn(&mut crate::crd::LimitsSpec, i32);
        let rows: [(&str, Set, &str, i32); 4] = [
            (
                "maxConnectionsPerReplica",
                |l, v| l.max_connections_per_replica = v,
                "CHAT_MAX_CONNECTIONS",
                10_000,
            ),
            (
                "messagesPerSecondPerUser",
                |l, v| l.messages_per_second_per_user = v,
                "CHAT_MESSAGES_PER_SECOND",
                10,
            ),
            (
                "maxMessageBytes",
                |l, v| l.max_message_bytes = v,
                "CHAT_MAX_MESSAGE_BYTES",
                16_384,
            ),
            (
                "historyRetentionDays",
                |l, v| l.history_retention_days = v,
                "CHAT_HISTORY_RETENTION_DAYS",
                0,
            ),
        ];
        for (field, set, var, default) in rows {
            let (t, plan) = tenant_and_plan(|_| {});
            let d = build_deployment(&t, &plan.stable, &inputs(&plan));
            let got = env_value(&d, var).and_then(|e| e.value.clone());
            assert_eq!(got, Some(default.to_string()), "{field} default");
            let (t, plan) = tenant_and_plan(|ct| set(&mut ct.spec.limits, 777));
            for slot in [&plan.stable, &plan.other] {
                let d = build_deployment(&t, slot, &inputs(&plan));
                let got = env_value(&d, var).and_then(|e| e.value.clone());
                assert_eq!(got.as_deref(), Some("777"), "{field} -> {var}");
            }
        }
    }
}
