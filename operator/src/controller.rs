//! The reconcile loop: validate -> database -> build -> apply -> status, the
//! finalizer that applies `reclaimPolicy`, and the error policy.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tracing::Instrument;

mod referenced;

use crate::{
    apply::{apply_children, apply_one},
    build::{
        Inputs, build_children,
        secret::{build_auth_secret, build_db_secret, generate_jwt_key},
    },
    children::{ChildKind, Children, KindFold},
    crd::{AuthMode, ChatTenant, ReclaimPolicy},
    database::{self, Ident, LoginCheck, PasswordAction, ServerConfig},
    error::{Error, Result},
    metrics::Metrics,
    model::{Slot, Tenant},
    names::{
        AUTH_KEY_ANNOTATION, AUTH_SECRET_KEY, DB_SECRET_PASSWORD_KEY, auth_secret_name,
        db_secret_name, key_checksum, managed_selector, secret_value, slot_name,
    },
    rollout::{self, Phase, Plan, SlotObservation},
    status::{self, DatabaseState, DeploymentObservation, Observations, Problem},
    validate::validate,
};

/// Finalizer that applies `spec.database.reclaimPolicy` on deletion.
pub const FINALIZER: &str = "chorus.dev/cleanup";

/// Operator settings shared by every reconcile.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding the database server Secrets.
    pub server_namespace: String,
    /// Only watch this namespace (all namespaces when `None`).
    pub watch_namespace: Option<String>,
    /// Interval of the idle resync.
    pub resync: Duration,
    /// Identity reported in Events (pod name).
    pub instance: String,
}

/// State shared by reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    gateway_cache: Mutex<Option<(Instant, bool)>>,
    failures: Mutex<HashMap<ObjectRef<ChatTenant>, u32>>,
    /// Reconciles this instance ran (tests use it to prove only the leader works).
    pub reconcile_count: AtomicU64,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "chorus-operator".into(),
                instance: Some(settings.instance.clone()),
            },
        );
        Self {
            client,
            settings,
            metrics,
            recorder,
            gateway_cache: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            reconcile_count: AtomicU64::new(0),
        }
    }

    async fn event(&self, ct: &ChatTenant, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &ct.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Whether the Gateway API HTTPRoute kind is served. A "yes" is cached
    /// for a minute, a "no" for ten seconds, so installing the Gateway API
    /// CRDs takes effect within seconds.
    async fn gateway_api(&self) -> bool {
        if let Ok(cache) = self.gateway_cache.lock()
            && let Some((at, present)) = *cache
            && at.elapsed() < Duration::from_secs(if present { 60 } else { 10 })
        {
            return present;
        }
        let present = match self
            .client
            .list_api_group_resources("gateway.networking.k8s.io/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "httproutes"),
            Err(_) => false,
        };
        if let Ok(mut cache) = self.gateway_cache.lock() {
            *cache = Some((Instant::now(), present));
        }
        present
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ctx.settings.watch_namespace.clone();
    let tenants: Api<ChatTenant> = namespaced_or_all(&client, &ns);
    // Only spec changes (generation), finalizer changes and deletion start a
    // reconcile from the ChatTenant itself, so status writes do not echo back.
    let (reader, writer) = reflector::store();
    let main = watcher(tenants.clone(), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_changes, Default::default());
    let owned = watcher::Config::default().labels(&managed_selector());
    let (referenced, to_tenants) =
        referenced::secret_events(&client, &ctx.settings, reader.clone());
    let controller = Controller::for_stream(main, reader).watches_stream(referenced, to_tenants);
    // Every owned kind, from the one list.
    let Owns { controller, .. } = Children::default().fold(Owns {
        controller,
        client,
        namespace: ns,
        config: owned,
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(tenant = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile stream error"),
            }
        })
        .await;
}

fn namespaced_or_all<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Adds a watch of every owned kind to the controller.
struct Owns {
    controller: Controller<ChatTenant>,
    client: Client,
    namespace: Option<String>,
    config: watcher::Config,
}

impl KindFold<'_> for Owns {
    fn kind<K: ChildKind>(self, _: &[K]) -> Self {
        let api = namespaced_or_all::<K>(&self.client, &self.namespace);
        Self {
            controller: self.controller.owns(api, self.config.clone()),
            ..self
        }
    }

    /// Not watched: the Gateway API may not be served, and a watch of a
    /// kind that is not served fails. A hand-edited route is repaired at the
    /// next resync.
    fn http_route(self, _: Option<&kube::core::DynamicObject>) -> Self {
        self
    }
}

/// The predicate of the main watch: generation, finalizers and the deletion
/// mark. Status and label/annotation writes do not change it.
fn spec_changes(ct: &ChatTenant) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ct.metadata.generation.hash(&mut h);
    ct.metadata.finalizers.hash(&mut h);
    ct.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Reconciles one ChatTenant.
pub async fn reconcile(ct: Arc<ChatTenant>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    ctx.reconcile_count.fetch_add(1, Ordering::Relaxed);
    let ns = ct.namespace().unwrap_or_default();
    let api: Api<ChatTenant> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", tenant = %ct.name_any(), namespace = %ns);
    finalizer(&api, FINALIZER, ct, |event| async {
        match event {
            Finalizer::Apply(ct) => apply(ct, &ctx, &api).await,
            Finalizer::Cleanup(ct) => cleanup(ct, &ctx, &api).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeues failures with exponential backoff (1 s doubling to 5 min) and
/// counts them by reason.
pub fn error_policy(ct: Arc<ChatTenant>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(err.metric_label());
    let key = ObjectRef::from_obj(ct.as_ref());
    let attempts = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = Duration::from_secs(1u64 << attempts.min(9).saturating_sub(1))
        .min(Duration::from_secs(300));
    tracing::warn!(tenant = %ct.name_any(), namespace = ?ct.namespace(), error = %err, reason = err.metric_label(), retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

fn clear_failures(ctx: &Context, ct: &ChatTenant) {
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&ObjectRef::from_obj(ct));
    }
}

async fn write_status(
    ctx: &Context,
    api: &Api<ChatTenant>,
    ct: &ChatTenant,
    new: &crate::crd::ChatTenantStatus,
) -> Result<()> {
    let wrote = status::write(api, &ct.name_any(), ct.status.as_ref(), new)
        .await
        .map_err(Error::kube("writing status"))?;
    if wrote {
        ctx.metrics.status_writes.inc();
    }
    Ok(())
}

async fn apply(cached: Arc<ChatTenant>, ctx: &Context, api: &Api<ChatTenant>) -> Result<Action> {
    // The status carries state (stable slot, rotation handled, drain
    // deadline). The watch cache can lag our own last status write by a few
    // milliseconds, so read the object fresh before deciding anything.
    let Some(ct) = api
        .get_opt(&cached.name_any())
        .await
        .map_err(Error::kube("reading the ChatTenant"))?
    else {
        return Ok(Action::await_change());
    };
    let ct = Arc::new(ct);
    let now = now();
    let generation = ct.metadata.generation.unwrap_or(0);
    let old = ct.status.as_ref();

    if ct.spec.suspend {
        let msg = "spec.suspend is true: the operator changes nothing for this tenant until it is set to false";
        let new = status::compute_blocked(old, generation, Some(msg), None, &now);
        let was = old.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == status::types::SUSPENDED && c.status == "True")
        });
        write_status(ctx, api, &ct, &new).await?;
        if !was {
            ctx.event(&ct, EventType::Normal, "Suspended", msg.into())
                .await;
        }
        clear_failures(ctx, &ct);
        return Ok(Action::await_change());
    }

    let t = match validate(&ct) {
        Ok(t) => t,
        Err(invalid) => {
            let msg = format!("{invalid}; fix the spec and re-apply");
            let new = status::compute_blocked(old, generation, None, Some(&msg), &now);
            write_status(ctx, api, &ct, &new).await?;
            ctx.event(&ct, EventType::Warning, "InvalidSpec", msg).await;
            return Ok(Action::await_change());
        }
    };

    let mut problems: Vec<Problem> = Vec::new();
    let mut first_error: Option<Error> = None;

    // 1. Database: server Secret, connection Secret, role and database.
    let server = load_server(ctx, &t).await;
    let db = match &server {
        Ok(server) => provision_database(ctx, &ct, &t, server).await,
        Err(e) => DbResult {
            state: DatabaseState::NotReady {
                reason: "ServerSecretInvalid",
                message: e.to_string(),
            },
            password_changed_at: old
                .and_then(|s| s.database.as_ref())
                .and_then(|d| d.password_changed_at.clone()),
            rotation_request_handled: old
                .and_then(|s| s.database.as_ref())
                .and_then(|d| d.rotation_request_handled.clone()),
            error: Some(Error::ServerConfig(e.to_string())),
        },
    };
    if let Some(e) = db.error {
        first_error.get_or_insert(e);
    }

    // 2. Authentication material.
    let auth_key_hash = match ensure_auth(ctx, &ct, &t).await {
        Ok(Auth::Key(hash)) => Some(hash),
        Ok(Auth::Invalid(p)) => {
            problems.push(p);
            None
        }
        Ok(Auth::NoKey) => None,
        Err(e) => {
            first_error.get_or_insert(e);
            None
        }
    };

    // 3. Gateway API presence.
    let wants_gateway = t
        .spec
        .exposure
        .as_ref()
        .is_some_and(|e| e.gateway.is_some());
    // Asked even when not wanted, so a route left from an earlier spec is pruned.
    let routes_served = ctx.gateway_api().await;
    let gateway = wants_gateway && routes_served;
    if wants_gateway && !gateway {
        problems.push(Problem {
            reason: "GatewayAPIMissing",
            message: "spec.exposure.gateway is set but the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed; install its CRDs or use spec.exposure.ingress".into(),
        });
    }

    // 4. Observe the slots, plan, build, apply.
    let (blue, green, running_key_hash) = observe_deployments(ctx, &t).await?;
    let by_slot = |s: Slot| if s == Slot::Blue { blue } else { green };
    let observed_other = by_slot(t.stable_slot.other());
    let plan = rollout::plan(
        &t,
        old,
        SlotObservation {
            available: observed_other.available,
        },
        gateway,
        jiff::Timestamp::now().as_second(),
    );
    let (db_host, db_port) = server
        .as_ref()
        .map(|s| (s.host.clone(), s.port))
        .unwrap_or_else(|_| (String::new(), 5432));
    let inputs = Inputs {
        plan: &plan,
        database_host: &db_host,
        database_port: db_port,
        password_changed_at: db.password_changed_at.as_deref(),
        // A key that cannot be read right now keeps the pods as they are.
        auth_key_hash: auth_key_hash.as_deref().or(running_key_hash.as_deref()),
    };
    let children = build_children(&t, &inputs);
    match apply_children(&ctx.client, &t, &children, routes_served).await {
        Ok(applied) => {
            for d in applied.deleted {
                ctx.event(
                    &ct,
                    EventType::Normal,
                    "ChildDeleted",
                    format!("deleted {d}: the spec no longer asks for it"),
                )
                .await;
            }
        }
        Err(e) => {
            problems.push(Problem {
                reason: "ApplyFailed",
                message: format!("{e}; the operator retries with backoff"),
            });
            first_error.get_or_insert(Error::Apply(e));
        }
    }

    // 5. Status and events.
    let obs = Observations {
        database: db.state,
        stable: by_slot(plan.stable.slot),
        other: by_slot(plan.other.slot),
        problems,
        password_changed_at: db.password_changed_at,
        rotation_request_handled: db.rotation_request_handled,
    };
    let new = status::compute(old, &t, &plan, &obs, &now);
    write_status(ctx, api, &ct, &new).await?;
    rollout_events(ctx, &ct, old, &plan).await;

    if let Some(e) = first_error {
        return Err(e);
    }
    clear_failures(ctx, &ct);
    Ok(Action::requeue(next_requeue(ctx, &plan)))
}

fn next_requeue(ctx: &Context, plan: &Plan) -> Duration {
    let mut next = ctx.settings.resync;
    if plan.phase == Phase::Promoting {
        next = next.min(Duration::from_secs(5));
    }
    if let Some(until) = plan.draining_until.as_deref().and_then(rollout::parse_time) {
        let left = until - jiff::Timestamp::now().as_second();
        next = next.min(Duration::from_secs(left.clamp(1, i64::MAX) as u64 + 1));
    }
    next
}

async fn rollout_events(
    ctx: &Context,
    ct: &ChatTenant,
    old: Option<&crate::crd::ChatTenantStatus>,
    plan: &Plan,
) {
    let old_candidate = old.and_then(|s| s.candidate.as_ref());
    if plan.cut_over {
        ctx.event(
            ct,
            EventType::Normal,
            "Promoted",
            format!(
                "{} is now stable in slot {}; slot {} drains until {}",
                plan.stable.image,
                plan.stable.slot.as_str(),
                plan.other.slot.as_str(),
                plan.draining_until.clone().unwrap_or_else(|| "now".into())
            ),
        )
        .await;
    }
    let was_aborted = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::types::PROGRESSING)
        })
        .is_some_and(|c| c.reason == "Aborted");
    if plan.phase == Phase::Aborted && !was_aborted {
        ctx.event(
            ct,
            EventType::Warning,
            "Aborted",
            format!(
                "candidate {} aborted; all traffic on {}",
                plan.other.image, plan.stable.image
            ),
        )
        .await;
    }
    if matches!(plan.phase, Phase::Canary | Phase::Preview)
        && old_candidate.is_none_or(|c| Some(&c.revision) != plan.candidate_revision.as_ref())
    {
        ctx.event(
            ct,
            EventType::Normal,
            "ReleaseStarted",
            format!(
                "candidate {} (revision {}) runs in slot {}",
                plan.other.image,
                plan.candidate_revision.clone().unwrap_or_default(),
                plan.other.slot.as_str()
            ),
        )
        .await;
    }
}

/// Both slots' Deployments, and the auth key checksum their pods run with.
async fn observe_deployments(
    ctx: &Context,
    t: &Tenant,
) -> Result<(DeploymentObservation, DeploymentObservation, Option<String>)> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let mut out = [DeploymentObservation::default(); 2];
    let mut key_hash = None;
    for (i, slot) in [Slot::Blue, Slot::Green].into_iter().enumerate() {
        let name = slot_name(t, slot);
        let d = api
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("reading Deployment {name}")))?;
        if let Some(d) = d {
            key_hash = key_hash.or_else(|| running_auth_key_hash(&d));
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let st = d.status.unwrap_or_default();
            let caught_up =
                st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
            out[i] = DeploymentObservation {
                available: st.available_replicas.unwrap_or(0),
                rolling: !caught_up
                    || st.updated_replicas.unwrap_or(0) < want
                    || st.replicas.unwrap_or(0) > want,
            };
        }
    }
    Ok((out[0], out[1], key_hash))
}

fn running_auth_key_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(AUTH_KEY_ANNOTATION)
        .cloned()
}

async fn load_server(ctx: &Context, t: &Tenant) -> Result<ServerConfig, String> {
    let name = &t.spec.database.server_ref.name;
    let ns = &ctx.settings.server_namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(secret)) => ServerConfig::from_secret_data(name, &secret.data.unwrap_or_default())
            .map_err(|e| format!("{e} (Secret {ns}/{name}, named by spec.database.serverRef)")),
        Ok(None) => Err(format!(
            "Secret {ns}/{name} (spec.database.serverRef) does not exist: create it with keys host, port, username, password"
        )),
        Err(e) => Err(format!("cannot read Secret {ns}/{name}: {e}")),
    }
}

struct DbResult {
    state: DatabaseState,
    password_changed_at: Option<String>,
    rotation_request_handled: Option<String>,
    error: Option<Error>,
}

async fn provision_database(
    ctx: &Context,
    ct: &ChatTenant,
    t: &Tenant,
    server: &ServerConfig,
) -> DbResult {
    let old_db = ct.status.as_ref().and_then(|s| s.database.as_ref());
    let mut changed_at = old_db.and_then(|d| d.password_changed_at.clone());
    let mut handled = old_db.and_then(|d| d.rotation_request_handled.clone());
    let requested = t
        .spec
        .database
        .password_rotation
        .as_ref()
        .map(|r| r.requested_at.clone());
    let fail =
        |reason: &'static str, e: Error, changed_at: Option<String>, handled: Option<String>| {
            DbResult {
                state: DatabaseState::NotReady {
                    reason,
                    message: format!("{e}; the operator retries with backoff"),
                },
                password_changed_at: changed_at,
                rotation_request_handled: handled,
                error: Some(e),
            }
        };

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let existing = match secrets.get_opt(&db_secret_name(t)).await {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "SecretUnreadable",
                Error::kube("reading the database Secret")(e),
                changed_at,
                handled,
            );
        }
    };
    let existing_password = existing
        .as_ref()
        .and_then(|s| secret_value(s, DB_SECRET_PASSWORD_KEY));
    let rotate = requested.is_some() && requested != handled && existing_password.is_some();
    let (password, action, new_secret) = match existing_password {
        None => {
            let p = database::generate_password();
            (p.clone(), PasswordAction::Set(p), true)
        }
        Some(_) if rotate => {
            let p = database::generate_password();
            (p.clone(), PasswordAction::Set(p), false)
        }
        Some(p) => (p, PasswordAction::Keep, false),
    };
    let role = &t.database.name;
    let provisioning_failed = |e: &database::DatabaseError| {
        if e.is_unreachable() {
            "ServerUnreachable"
        } else if matches!(e, database::DatabaseError::Claim(_)) {
            "NameInUse"
        } else {
            "ProvisioningFailed"
        }
    };

    // A name that is not this tenant's gets no Secret.
    if new_secret && let Err(e) = database::check_claim(server, &t.database).await {
        let reason = provisioning_failed(&e);
        ctx.event(ct, EventType::Warning, reason, e.to_string())
            .await;
        return fail(reason, e.into(), changed_at, handled);
    }
    // A new Secret is written before the role gets its password, so the
    // password is never known only to the server.
    if new_secret
        && let Err(e) = apply_one(
            &ctx.client,
            &t.namespace,
            &build_db_secret(t, server, role, &password),
        )
        .await
    {
        return fail("SecretWriteFailed", e.into(), changed_at, handled);
    }
    let outcome = match database::ensure(server, &t.database, &action).await {
        Ok(o) => o,
        Err(e) => {
            let reason = provisioning_failed(&e);
            ctx.event(ct, EventType::Warning, reason, e.to_string())
                .await;
            return fail(reason, e.into(), changed_at, handled);
        }
    };
    ctx.metrics
        .ddl_statements
        .inc_by(outcome.executed.len() as u64);
    if matches!(action, PasswordAction::Set(_)) {
        changed_at = Some(rollout::format_time(jiff::Timestamp::now().as_second()));
        handled = requested.clone();
    }
    // The Secret follows the server (host, port, sslmode); with a rotation
    // it gets the new password only after the role has it.
    if !new_secret
        && let Err(e) = apply_one(
            &ctx.client,
            &t.namespace,
            &build_db_secret(t, server, role, &password),
        )
        .await
    {
        return fail("SecretWriteFailed", e.into(), changed_at, handled);
    }
    if outcome.created_role {
        ctx.event(ct, EventType::Normal, "RoleCreated", format!("created role {role} (LOGIN, no CREATEDB/CREATEROLE/SUPERUSER, connection limit {})", t.database.connection_limit)).await;
    }
    if outcome.created_database {
        ctx.event(
            ct,
            EventType::Normal,
            "DatabaseCreated",
            format!("created database {role} owned by {role}; PUBLIC revoked"),
        )
        .await;
    }
    if new_secret {
        ctx.event(
            ct,
            EventType::Normal,
            "SecretCreated",
            format!("wrote connection details to Secret {}", db_secret_name(t)),
        )
        .await;
        if !outcome.created_role {
            ctx.event(
                ct,
                EventType::Warning,
                "PasswordReset",
                format!(
                    "role {role} existed without Secret {}: set a new password in both",
                    db_secret_name(t)
                ),
            )
            .await;
        }
    }
    if rotate {
        ctx.event(
            ct,
            EventType::Normal,
            "PasswordRotated",
            format!(
                "rotated the password of role {role} (request {}); pods restart to pick it up",
                requested.clone().unwrap_or_default()
            ),
        )
        .await;
    }
    let other_ddl = outcome.executed.len()
        - usize::from(outcome.created_role)
        - usize::from(outcome.created_database) * 2;
    if !outcome.created_role && !outcome.created_database && other_ddl > 0 && !rotate && !new_secret
    {
        ctx.event(
            ct,
            EventType::Normal,
            "DatabaseRepaired",
            format!("repaired drift: {}", outcome.executed.join("; ")),
        )
        .await;
    }

    match database::check_login(server, &t.database, &password).await {
        Ok(LoginCheck::Ok) => DbResult {
            state: DatabaseState::Ready,
            password_changed_at: changed_at,
            rotation_request_handled: handled,
            error: None,
        },
        Ok(LoginCheck::PasswordMismatch) => {
            let message = format!(
                "the password in Secret {} does not match role {role} (changed outside the operator?); set spec.database.passwordRotation.requestedAt to the current time to set a new password in both",
                db_secret_name(t)
            );
            // Said once per occurrence, not at every resync.
            let already_reported = ct.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == status::types::DATABASE_READY && c.reason == "PasswordMismatch"
                })
            });
            if !already_reported {
                ctx.event(ct, EventType::Warning, "PasswordMismatch", message.clone())
                    .await;
            }
            DbResult {
                state: DatabaseState::NotReady {
                    reason: "PasswordMismatch",
                    message,
                },
                password_changed_at: changed_at,
                rotation_request_handled: handled,
                error: None,
            }
        }
        Ok(LoginCheck::Refused(why)) => {
            let message = format!(
                "the server refused role {role}'s login to database {role}: {why}; allow it in the server's pg_hba.conf for the operator and the tenant's pods"
            );
            DbResult {
                state: DatabaseState::NotReady {
                    reason: "LoginRefused",
                    message,
                },
                password_changed_at: changed_at,
                rotation_request_handled: handled,
                error: None,
            }
        }
        Err(e) => fail("ServerUnreachable", e.into(), changed_at, handled),
    }
}

/// What the pods authenticate with.
enum Auth {
    /// A key from a Secret, by checksum (a pod template annotation, so pods
    /// restart when the key is rotated: env from a Secret is read at start).
    Key(String),
    /// No key in a Secret (a JWKS URL).
    NoKey,
    /// The referenced key is missing or unusable.
    Invalid(Problem),
}

/// Builtin: makes sure `<name>-auth` holds a signing key (created once).
/// External: checks the referenced Secret key.
async fn ensure_auth(ctx: &Context, ct: &ChatTenant, t: &Tenant) -> Result<Auth> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &t.namespace);
    match t.spec.auth.mode {
        AuthMode::Builtin => {
            let name = auth_secret_name(t);
            let existing = secrets
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("reading Secret {name}")))?;
            let key = existing
                .as_ref()
                .and_then(|s| secret_value(s, AUTH_SECRET_KEY));
            let created = key.is_none();
            let key = key.unwrap_or_else(generate_jwt_key);
            apply_one(&ctx.client, &t.namespace, &build_auth_secret(t, &key)).await?;
            if created {
                ctx.event(
                    ct,
                    EventType::Normal,
                    "AuthKeyCreated",
                    format!("generated the JWT signing key into Secret {name}"),
                )
                .await;
            }
            Ok(Auth::Key(key_checksum(&key)))
        }
        AuthMode::External => {
            let Some(r) = t
                .spec
                .auth
                .external_jwt
                .as_ref()
                .and_then(|e| e.secret_ref.as_ref())
            else {
                return Ok(Auth::NoKey);
            };
            let secret = secrets
                .get_opt(&r.name)
                .await
                .map_err(Error::kube(format!("reading Secret {}", r.name)))?;
            let problem = match secret.as_ref().map(|s| secret_value(s, &r.key)) {
                None => Some(format!(
                    "Secret {} (spec.auth.externalJwt.secretRef) does not exist; create it",
                    r.name
                )),
                Some(None) => Some(format!(
                    "Secret {} has no key {:?} (spec.auth.externalJwt.secretRef.key)",
                    r.name, r.key
                )),
                Some(Some(v)) if v.len() < 32 => Some(format!(
                    "the HS256 secret in Secret {} key {:?} is {} bytes; use at least 32",
                    r.name,
                    r.key,
                    v.len()
                )),
                Some(Some(key)) => return Ok(Auth::Key(key_checksum(&key))),
            };
            Ok(problem.map_or(Auth::NoKey, |message| {
                Auth::Invalid(Problem {
                    reason: "ExternalAuthInvalid",
                    message,
                })
            }))
        }
    }
}

async fn cleanup(ct: Arc<ChatTenant>, ctx: &Context, api: &Api<ChatTenant>) -> Result<Action> {
    let db_name = &ct.spec.database.name;
    match ct.spec.database.reclaim_policy {
        ReclaimPolicy::Retain => {
            ctx.event(
                &ct,
                EventType::Normal,
                "DatabaseRetained",
                format!("reclaimPolicy Retain: database and role {db_name} are kept"),
            )
            .await;
            Ok(Action::await_change())
        }
        ReclaimPolicy::Delete => {
            if Ident::new(db_name).is_err() {
                // An invalid name was never provisioned.
                return Ok(Action::await_change());
            }
            let result = match validate(&ct) {
                Ok(t) => match load_server(ctx, &t).await {
                    Ok(server) => database::drop_tenant(&server, &t.database)
                        .await
                        .map_err(Error::from),
                    Err(e) => Err(Error::ServerConfig(e)),
                },
                Err(e) => Err(Error::ServerConfig(e.to_string())),
            };
            match result {
                Ok(database::DropOutcome {
                    left_alone: Some(why),
                    ..
                }) => {
                    ctx.event(
                        &ct,
                        EventType::Warning,
                        "DatabaseLeftAlone",
                        format!("reclaimPolicy Delete: dropped nothing: {why}"),
                    )
                    .await;
                    Ok(Action::await_change())
                }
                Ok(outcome) => {
                    ctx.metrics
                        .ddl_statements
                        .inc_by(outcome.executed.len() as u64);
                    ctx.event(&ct, EventType::Normal, "DatabaseDropped", format!("reclaimPolicy Delete: terminated sessions, dropped database and role {db_name}")).await;
                    Ok(Action::await_change())
                }
                Err(e) => {
                    let message = format!(
                        "deletion waits: cannot drop database {db_name} ({e}); the ChatTenant stays until the server is reachable. To keep the data instead, set spec.database.reclaimPolicy to Retain"
                    );
                    let mut new = ct.status.clone().unwrap_or_default();
                    status::set_condition(
                        &mut new.conditions,
                        status::types::DATABASE_READY,
                        false,
                        "DeletionBlocked",
                        &message,
                        ct.metadata.generation.unwrap_or(0),
                        &now(),
                    );
                    status::set_condition(
                        &mut new.conditions,
                        status::types::READY,
                        false,
                        "Deleting",
                        "see condition DatabaseReady",
                        ct.metadata.generation.unwrap_or(0),
                        &now(),
                    );
                    write_status(ctx, api, &ct, &new).await?;
                    ctx.event(&ct, EventType::Warning, "DeletionBlocked", message)
                        .await;
                    Err(e)
                }
            }
        }
    }
}
