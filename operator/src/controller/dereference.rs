//! Reads what a reconcile decides from, before it changes anything: the
//! ChatTenant itself (fresh, not from the watch cache), the database server
//! Secret it names, both slots' Deployments, and whether the Gateway API is
//! served.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Secret},
};
use kube::{Api, ResourceExt, api::ListParams};

use super::Context;
use crate::{
    build::deployment::CONTAINER,
    cache::cached,
    crd::ChatTenant,
    database::{ServerConfig, ServerConfigError},
    error::{Error, Result},
    model::{Slot, Tenant},
    names::{
        AUTH_KEY_ANNOTATION, DATABASE_URI_ANNOTATION, ENV_REFS_ANNOTATION, key_checksum,
        secret_value, selector_string, slot_name, slot_selector,
    },
    rollout::{PodObservation, SlotObservation},
    status::{DeploymentObservation, Problem},
    validate::InvalidSpec,
};

/// Why the database server Secret (`spec.database.serverRef`) gives no
/// server. Each text names the Secret and says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerSecretError {
    /// Reading the Secret failed.
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    Unreadable {
        /// Namespace of the server Secrets.
        namespace: String,
        /// `spec.database.serverRef.name`.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret does not exist.
    #[error(
        "Secret {namespace}/{name} (spec.database.serverRef) does not exist: create it with keys host, port, username, password"
    )]
    Missing {
        /// Namespace of the server Secrets.
        namespace: String,
        /// `spec.database.serverRef.name`.
        name: String,
    },
    /// A key is missing or invalid.
    #[error("{source} (Secret {namespace}/{name}, named by spec.database.serverRef)")]
    Invalid {
        /// Namespace of the server Secrets.
        namespace: String,
        /// `spec.database.serverRef.name`.
        name: String,
        /// What is wrong with it.
        #[source]
        source: ServerConfigError,
    },
    /// The spec does not validate, so it names no usable server (deletion
    /// of an invalid tenant).
    #[error("{0}")]
    InvalidSpec(#[source] InvalidSpec),
}

/// The ChatTenant as stored now. The status carries state (stable slot,
/// rotation handled, drain deadline) and the watch cache can lag the last
/// status write by a few milliseconds, so every decision starts from a fresh
/// read. `None` when it is gone.
pub(super) async fn fresh_tenant(
    api: &Api<ChatTenant>,
    cached: &ChatTenant,
) -> Result<Option<ChatTenant>> {
    api.get_opt(&cached.name_any())
        .await
        .map_err(Error::kube("reading the ChatTenant"))
}

/// The admin connection settings from the server Secret (its data kept per
/// version the watch saw: [`super::server_secrets`]).
pub(super) async fn load_server(
    ctx: &Context,
    t: &Tenant,
) -> Result<ServerConfig, ServerSecretError> {
    let name = t.spec.database.server_ref.name.clone();
    let namespace = ctx.settings.server_namespace.clone();
    let parse = |data: &super::server_secrets::SecretData, namespace: String, name: String| {
        ServerConfig::from_secret_data(&name, data).map_err(|source| ServerSecretError::Invalid {
            namespace,
            name,
            source,
        })
    };
    // The watch scope covering the tenant (`watches::scopes`).
    let scope = (!ctx.settings.watch_namespaces.is_empty()).then(|| t.namespace.clone());
    if let Some(data) = ctx.server_secrets.current(&scope, &name) {
        return parse(&data, namespace, name);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.get_opt(&name).await {
        Ok(Some(secret)) => {
            let data = secret.data.unwrap_or_default();
            ctx.server_secrets.remember(
                &scope,
                &name,
                secret.metadata.resource_version.as_deref(),
                &data,
            );
            parse(&data, namespace, name)
        }
        Ok(None) => Err(ServerSecretError::Missing { namespace, name }),
        Err(source) => Err(ServerSecretError::Unreadable {
            namespace,
            name,
            source,
        }),
    }
}

/// Whether routes can be used, and a problem when the spec wants them but
/// the Gateway API is not served.
pub(super) struct Gateway {
    /// HTTPRoutes are served (asked even when not wanted, so a route left
    /// from an earlier spec is pruned).
    pub(super) served: bool,
    /// The spec wants a route and routes are served.
    pub(super) use_routes: bool,
    /// Set when the spec wants a route that cannot be made.
    pub(super) problem: Option<Problem>,
}

/// Probes the Gateway API (cached in the context).
pub(super) async fn gateway(ctx: &Context, t: &Tenant) -> Gateway {
    let wants = t
        .spec
        .exposure
        .as_ref()
        .is_some_and(|e| e.gateway.is_some());
    let served = ctx.gateway_api().await;
    let problem = (wants && !served).then(|| Problem {
        reason: "GatewayAPIMissing",
        message: "spec.exposure.gateway is set but the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed; install its CRDs or use spec.exposure.ingress".into(),
    });
    Gateway {
        served,
        use_routes: wants && served,
        problem,
    }
}

/// Both slots' Deployments as observed, and the auth key checksum their
/// pods run with.
#[derive(Clone, Debug, Default)]
pub(super) struct Slots {
    blue: DeploymentObservation,
    green: DeploymentObservation,
    blue_detail: SlotObservation,
    green_detail: SlotObservation,
    /// The `chorus.dev/auth-key-checksum` the running pods have.
    pub(super) running_key_hash: Option<String>,
    /// The `chorus.dev/database-uri-checksum` the running pods have.
    pub(super) running_database_uri_hash: Option<String>,
    /// The `chorus.dev/env-refs-checksum` the running pods have.
    pub(super) running_env_refs_hash: Option<String>,
}

impl Slots {
    /// The observation of `slot`.
    pub(super) fn get(&self, slot: Slot) -> DeploymentObservation {
        match slot {
            Slot::Blue => self.blue,
            Slot::Green => self.green,
        }
    }

    /// What the rollout state machine reads of `slot`.
    pub(super) fn detail(&self, slot: Slot) -> &SlotObservation {
        match slot {
            Slot::Blue => &self.blue_detail,
            Slot::Green => &self.green_detail,
        }
    }
}

/// Reads `<name>-blue` and `<name>-green`.
pub(super) async fn observe_deployments(ctx: &Context, t: &Tenant) -> Result<Slots> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &t.namespace);
    // The watch cache when there is one: the Deployments' own watch starts
    // this reconcile when they change, so it is as fresh as a GET.
    let store = ctx.children.store::<Deployment>(&t.namespace).await;
    let mut slots = Slots::default();
    for slot in [Slot::Blue, Slot::Green] {
        let name = slot_name(t, slot);
        let d = match &store {
            Some(store) => cached(store, &t.namespace, &name).map(|d| d.as_ref().clone()),
            None => api
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("reading Deployment {name}")))?,
        };
        if let Some(d) = d {
            let running = |key| running_annotation(&d, key);
            slots.running_key_hash = slots
                .running_key_hash
                .or_else(|| running(AUTH_KEY_ANNOTATION));
            slots.running_database_uri_hash = slots
                .running_database_uri_hash
                .or_else(|| running(DATABASE_URI_ANNOTATION));
            slots.running_env_refs_hash = slots
                .running_env_refs_hash
                .or_else(|| running(ENV_REFS_ANNOTATION));
            let detail = observe_detail(&d);
            let observed = observe(d);
            match slot {
                Slot::Blue => (slots.blue, slots.blue_detail) = (observed, detail),
                Slot::Green => (slots.green, slots.green_detail) = (observed, detail),
            }
        }
    }
    // While a release is in flight, the candidate slot's pods: their
    // restarts and why they do not serve decide an automatic abort.
    if t.spec.rollout.candidate.is_some() {
        let other = t.stable_slot.other();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &t.namespace);
        let selector = selector_string(&slot_selector(t, other));
        // Best effort: without the pods (no RBAC to list them, a transient
        // error) the release still aborts on its progress deadline, only
        // without naming them or counting restarts.
        let observed: Vec<PodObservation> = match pods
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => list.items.iter().map(observe_pod).collect(),
            Err(e) => {
                tracing::warn!(error = %e, slot = other.as_str(), "cannot list the candidate's pods");
                Vec::new()
            }
        };
        match other {
            Slot::Blue => slots.blue_detail.pods = observed,
            Slot::Green => slots.green_detail.pods = observed,
        }
    }
    Ok(slots)
}

/// What the rollout reads of one Deployment. Pure.
fn observe_detail(d: &Deployment) -> SlotObservation {
    let spec = d.spec.as_ref();
    let st = d.status.clone().unwrap_or_default();
    SlotObservation {
        image: spec
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.image.clone()),
        spec_replicas: spec.and_then(|s| s.replicas).unwrap_or(0),
        caught_up: st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0),
        replicas: st.replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        pods: Vec::new(),
    }
}

/// What the rollout reads of one pod: readiness, restarts and the cause
/// when it does not serve. Pure.
fn observe_pod(p: &Pod) -> PodObservation {
    let status = p.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == CONTAINER);
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let image = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let problem = container.as_ref().and_then(|c| {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            return Some(w.reason.clone().unwrap_or_else(|| "waiting".into()));
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return Some(format!("terminated, exit code {}", t.exit_code));
        }
        if !c.ready {
            let last = c
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| {
                    format!(
                        ", last exit code {} ({})",
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("terminated")
                    )
                })
                .unwrap_or_default();
            return Some(format!("running, not ready{last}"));
        }
        None
    });
    PodObservation {
        name: p.name_any(),
        image,
        ready,
        restarts: container.map_or(0, |c| c.restart_count),
        problem: problem.or_else(|| (!ready).then(|| "not ready".to_string())),
    }
}

/// What one Deployment reports. Pure.
fn observe(d: Deployment) -> DeploymentObservation {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let st = d.status.unwrap_or_default();
    let caught_up = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    DeploymentObservation {
        available: st.available_replicas.unwrap_or(0),
        rolling: !caught_up
            || st.updated_replicas.unwrap_or(0) < want
            || st.replicas.unwrap_or(0) > want,
    }
}

fn running_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// A checksum of every Secret and ConfigMap value `spec.runtime.env` reads
/// through `valueFrom` (in the tenant's namespace), `None` when it reads
/// none. The pods read these only at start-up, so the checksum goes on the
/// pod template. A missing object or key counts as a value of its own.
pub(super) async fn env_refs_hash(ctx: &Context, t: &Tenant) -> Result<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let mut seen = Vec::new();
    for e in &t.spec.runtime.env {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.secret_key_ref {
            let s = secrets.get_opt(&r.name).await.map_err(Error::kube(format!(
                "reading Secret {} (spec.runtime.env)",
                r.name
            )))?;
            let v = s.as_ref().and_then(|s| secret_value(s, &r.key));
            seen.push(format!("secret/{}/{}={v:?}", r.name, r.key));
        }
        if let Some(r) = &from.config_map_key_ref {
            let c = config_maps
                .get_opt(&r.name)
                .await
                .map_err(Error::kube(format!(
                    "reading ConfigMap {} (spec.runtime.env)",
                    r.name
                )))?;
            let v = c.as_ref().and_then(|c| {
                c.data
                    .as_ref()
                    .and_then(|d| d.get(&r.key).cloned())
                    .or_else(|| {
                        c.binary_data
                            .as_ref()
                            .and_then(|d| d.get(&r.key))
                            .map(|b| String::from_utf8_lossy(&b.0).to_string())
                    })
            });
            seen.push(format!("configmap/{}/{}={v:?}", r.name, r.key));
        }
    }
    Ok((!seen.is_empty()).then(|| key_checksum(&seen.join("\n"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(yaml: &str) -> Deployment {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_deployment_is_rolling_until_caught_up_and_updated() {
        let done = deployment(
            "metadata: {name: a, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert_eq!(
            observe(done),
            DeploymentObservation {
                available: 2,
                rolling: false
            }
        );
        let behind = deployment(
            "metadata: {name: a, generation: 3}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert!(observe(behind).rolling);
        let surging = deployment(
            "metadata: {name: a, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 3, updatedReplicas: 2, availableReplicas: 2}",
        );
        assert!(observe(surging).rolling);
    }

    #[test]
    fn server_secret_errors_name_the_secret_and_the_fix() {
        let missing = ServerSecretError::Missing {
            namespace: "chorus-system".into(),
            name: "shared-pg".into(),
        };
        assert_eq!(
            missing.to_string(),
            "Secret chorus-system/shared-pg (spec.database.serverRef) does not exist: create it with keys host, port, username, password"
        );
        let invalid = ServerSecretError::Invalid {
            namespace: "chorus-system".into(),
            name: "shared-pg".into(),
            source: ServerConfigError::MissingKey {
                secret: "shared-pg".into(),
                key: "host",
            },
        };
        assert!(
            invalid
                .to_string()
                .ends_with("(Secret chorus-system/shared-pg, named by spec.database.serverRef)")
        );
    }
}
