//! The operator against a real kube-apiserver and a real PostgreSQL: from a
//! ChatTenant to every child object, the database and a Ready status; spec
//! changes, hand edits, idle resyncs, reclaim policies, a server that is down,
//! password drift and rotation, suspend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    catalog,
    operator::{
        OperatorEnv, condition, create_tenant, put_server_secret, secret_text, tenant_yaml,
        wait_condition, wait_gone, wait_present,
    },
    wait_for, with_database,
};
use chorus_operator::crd::ChatTenant;
use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Secret, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};

/// Real pods start, migrate and pass their probes before Ready.
const T: Duration = Duration::from_secs(120);

async fn admin_db() -> PgConnection {
    catalog::admin_connection().await.unwrap()
}

async fn role_exists(db: &str) -> bool {
    catalog::role_exists(db).await.unwrap()
}

async fn database_exists(db: &str) -> bool {
    catalog::database_exists(db).await.unwrap()
}

async fn events(env: &OperatorEnv, name: &str) -> Vec<String> {
    let events = env.events(name).await.unwrap();
    events.into_iter().map(|(reason, _)| reason).collect()
}

#[tokio::test]
async fn a_tenant_gets_every_child_its_database_and_becomes_ready() {
    let env = OperatorEnv::new("op-provision", Duration::from_secs(300))
        .await
        .unwrap();
    let (yaml, db) = tenant_yaml("acme", "");
    let (yaml_b, db_b) = tenant_yaml("beta", "");
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    create_tenant(&env.client, &env.ns, &yaml_b).await.unwrap();

    let ct = wait_condition(&env.client, &env.ns, "acme", "Ready", "True", None, T)
        .await
        .unwrap();
    wait_condition(&env.client, &env.ns, "beta", "Ready", "True", None, T)
        .await
        .unwrap();
    let uid = ct.uid().unwrap();

    // Every child exists, is owned by the ChatTenant and carries the labels.
    let deployments = env.api::<Deployment>();
    let blue = deployments.get("acme-blue").await.unwrap();
    let green = deployments.get("acme-green").await.unwrap();
    assert_eq!(blue.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(green.spec.as_ref().unwrap().replicas, Some(0));
    let mut metas = vec![blue.metadata.clone(), green.metadata.clone()];
    for svc in ["acme", "acme-blue", "acme-green", "acme-preview"] {
        metas.push(env.api::<Service>().get(svc).await.unwrap().metadata);
    }
    metas.push(
        env.api::<PodDisruptionBudget>()
            .get("acme")
            .await
            .unwrap()
            .metadata,
    );
    metas.push(env.api::<Secret>().get("acme-db").await.unwrap().metadata);
    metas.push(env.api::<Secret>().get("acme-auth").await.unwrap().metadata);
    for m in &metas {
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, uid, "{:?} owned by the ChatTenant", m.name);
        assert_eq!(owner.controller, Some(true));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["chorus.dev/tenant"], "acme");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "chorus-operator");
    }
    // No autoscaling asked: no HPA.
    assert!(
        env.api::<HorizontalPodAutoscaler>()
            .get_opt("acme")
            .await
            .unwrap()
            .is_none()
    );

    // Status tells the admin where and what.
    let status = ct.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, ct.metadata.generation);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://acme.{}.svc:8080", env.ns).as_str())
    );
    assert_eq!(status.replicas, Some(2));
    assert_eq!(status.stable.as_ref().unwrap().slot, "blue");
    assert_eq!(status.database.as_ref().unwrap().name, db);
    for t in ["DatabaseReady", "Available"] {
        assert_eq!(condition(&ct, t).unwrap().status, "True", "{t}");
    }
    assert_eq!(condition(&ct, "Degraded").unwrap().status, "False");

    // The role: LOGIN, no privileges, the connection limit; PUBLIC revoked.
    let mut conn = admin_db().await;
    let row = sqlx::query(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolconnlimit FROM pg_roles WHERE rolname = $1",
    )
    .bind(&db)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(row.get::<bool, _>("rolcanlogin"));
    assert!(!row.get::<bool, _>("rolsuper"));
    assert!(!row.get::<bool, _>("rolcreatedb"));
    assert!(!row.get::<bool, _>("rolcreaterole"));
    assert_eq!(row.get::<i32, _>("rolconnlimit"), 50);
    let (owner, acl): (String, String) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text, array_to_string(datacl, ',') FROM pg_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(owner, db);
    assert!(
        !acl.split(',').any(|a| a.starts_with('=')),
        "PUBLIC has no rights: {acl}"
    );

    // The Secret works for its own database and not for the other tenant's.
    let uri = secret_text(&env.client, &env.ns, "acme-db", "uri")
        .await
        .unwrap()
        .unwrap();
    for key in ["username", "password", "host", "port", "dbname"] {
        assert!(
            secret_text(&env.client, &env.ns, "acme-db", key)
                .await
                .unwrap()
                .is_some()
        );
    }
    let mut own = PgConnection::connect(&uri).await.unwrap();
    let (one,): (i32,) = sqlx::query_as("SELECT 1")
        .fetch_one(&mut own)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let other = PgConnection::connect(&with_database(uri.split('?').next().unwrap(), &db_b)).await;
    match other {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("42501"), "permission denied: {e}")
        }
        Ok(_) => panic!("tenant acme must not connect to tenant beta's database"),
        Err(e) => panic!("unexpected error: {e}"),
    }

    // Events tell the provisioning story.
    let reasons = events(&env, "acme").await;
    for r in [
        "RoleCreated",
        "DatabaseCreated",
        "SecretCreated",
        "AuthKeyCreated",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "missing Event {r} in {reasons:?}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn children_follow_the_spec_and_hand_edits_are_reverted() {
    let env = OperatorEnv::new("op-follow", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant("acme", "").await.unwrap();
    let cts = env.api::<ChatTenant>();
    let deployments = env.api::<Deployment>();

    // Spec change: replicas and autoscaling.
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runtime": {"replicas": 4}, "autoscaling": {"minReplicas": 3, "maxReplicas": 7}}})),
    )
    .await
    .unwrap();
    wait_for("blue at 4 replicas", T, || {
        let d = deployments.clone();
        async move {
            let d = d.get("acme-blue").await.ok()?;
            (d.spec?.replicas == Some(4)).then_some(())
        }
    })
    .await
    .unwrap();
    let hpas = env.api::<HorizontalPodAutoscaler>();
    let hpa = wait_present(&hpas, "acme").await.unwrap();
    assert_eq!(hpa.spec.min_replicas, Some(3));
    assert_eq!(hpa.spec.max_replicas, 7);
    assert_eq!(hpa.spec.scale_target_ref.kind, "ChatTenant");

    // The HPA writes /scale: the operator follows it.
    cts.patch_scale(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 6}})),
    )
    .await
    .unwrap();
    wait_for("blue at 6 replicas after /scale", T, || {
        let d = deployments.clone();
        async move {
            let d = d.get("acme-blue").await.ok()?;
            (d.spec?.replicas == Some(6)).then_some(())
        }
    })
    .await
    .unwrap();
    let scale = cts.get_scale("acme").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(6));

    // Turning autoscaling off deletes the HPA.
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": null}})),
    )
    .await
    .unwrap();
    wait_gone(&hpas, "acme").await.unwrap();

    // A child deleted by hand comes back.
    env.api::<Service>()
        .delete("acme-preview", &DeleteParams::default())
        .await
        .unwrap();
    let services = env.api::<Service>();
    wait_present(&services, "acme-preview").await.unwrap();

    // A field the operator owns, edited by hand, is reverted.
    deployments
        .patch(
            "acme-blue",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {"template": {"spec": {"containers": [{"name": "chat-runtime", "image": "evil:latest"}]}}}
            })),
        )
        .await
        .unwrap();
    wait_for("the image edit to be reverted", T, || {
        let d = deployments.clone();
        async move {
            let d = d.get("acme-blue").await.ok()?;
            let image = d.spec?.template.spec?.containers[0].image.clone()?;
            (image == "ghcr.io/chorus-dev/chat-runtime:0.1.0").then_some(())
        }
    })
    .await
    .unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_second_reconcile_issues_no_ddl_and_an_idle_resync_writes_nothing() {
    let env = OperatorEnv::new("op-idle", Duration::from_secs(1))
        .await
        .unwrap();
    env.ready_tenant("acme", "").await.unwrap();
    // Let the Deployment simulator and the status settle, then take a snapshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cts = env.api::<ChatTenant>();
    let snapshot = |api: Api<ChatTenant>, deps: Api<Deployment>, secrets: Api<Secret>| async move {
        (
            api.get("acme").await.unwrap().resource_version(),
            deps.get("acme-blue").await.unwrap().resource_version(),
            secrets.get("acme-db").await.unwrap().resource_version(),
        )
    };
    let before = snapshot(cts.clone(), env.api(), env.api()).await;
    // Several resyncs (every second) happen here.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = snapshot(cts.clone(), env.api(), env.api()).await;
    assert_eq!(
        before, after,
        "idle resyncs must not write the ChatTenant, its Deployment or its Secret"
    );
    let ctx = env.stop().await;
    let reconciles = ctx
        .reconcile_count
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(reconciles >= 4, "resyncs ran ({reconciles})");
    let metrics = ctx.metrics.render();
    // Creating the tenant took role (with its ownership comment, one
    // transaction) + database + its comment + revoke + schema revoke; later
    // reconciles issued none.
    assert!(
        metrics.contains("chorus_database_ddl_statements_total 5"),
        "exactly the first reconcile's DDL:\n{metrics}"
    );
}

#[tokio::test]
async fn reclaim_retain_keeps_the_database_and_delete_drops_it() {
    let env = OperatorEnv::new("op-reclaim", Duration::from_secs(300))
        .await
        .unwrap();
    let (keep_yaml, keep_db) = tenant_yaml("keep", "");
    let keep_yaml = keep_yaml.replace("reclaimPolicy: Delete", "reclaimPolicy: Retain");
    let (drop_yaml, drop_db) = tenant_yaml("drop", "");
    create_tenant(&env.client, &env.ns, &keep_yaml)
        .await
        .unwrap();
    create_tenant(&env.client, &env.ns, &drop_yaml)
        .await
        .unwrap();
    for n in ["keep", "drop"] {
        wait_condition(&env.client, &env.ns, n, "Ready", "True", None, T)
            .await
            .unwrap();
    }
    // An open session of the tenant does not block the drop.
    let uri = secret_text(&env.client, &env.ns, "drop-db", "uri")
        .await
        .unwrap()
        .unwrap();
    let _session = PgConnection::connect(&uri).await.unwrap();

    let cts = env.api::<ChatTenant>();
    for n in ["keep", "drop"] {
        cts.delete(n, &DeleteParams::default()).await.unwrap();
    }
    for n in ["keep", "drop"] {
        wait_gone(&cts, n).await.unwrap();
    }
    assert!(
        database_exists(&keep_db).await && role_exists(&keep_db).await,
        "Retain keeps both"
    );
    assert!(
        !database_exists(&drop_db).await,
        "Delete drops the database"
    );
    assert!(!role_exists(&drop_db).await, "Delete drops the role");
    env.stop().await;
}

#[tokio::test]
async fn deletion_waits_while_the_database_server_is_down() {
    let env = OperatorEnv::new("op-down", Duration::from_secs(300))
        .await
        .unwrap();
    let (_, db) = env.ready_tenant("acme", "").await.unwrap();
    // The server "goes down": its Secret now points at a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    put_server_secret(&env.client, &env.ns, "shared-pg", Some(closed))
        .await
        .unwrap();
    let cts = env.api::<ChatTenant>();
    cts.delete("acme", &DeleteParams::default()).await.unwrap();
    let blocked = wait_condition(
        &env.client,
        &env.ns,
        "acme",
        "DatabaseReady",
        "False",
        Some("DeletionBlocked"),
        T,
    )
    .await
    .unwrap();
    assert!(
        blocked
            .finalizers()
            .iter()
            .any(|f| f == "chorus.dev/cleanup")
    );
    assert!(
        condition(&blocked, "DatabaseReady")
            .unwrap()
            .message
            .contains("stays until the server is reachable"),
    );
    // Still there a moment later: the finalizer is not dropped silently.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(cts.get_opt("acme").await.unwrap().is_some());
    assert!(database_exists(&db).await);

    // The server comes back: deletion completes.
    put_server_secret(&env.client, &env.ns, "shared-pg", None)
        .await
        .unwrap();
    wait_for(
        "the ChatTenant to be deleted",
        Duration::from_secs(90),
        || {
            let api = cts.clone();
            async move {
                api.get_opt("acme")
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    assert!(!database_exists(&db).await);
    env.stop().await;
}

#[tokio::test]
async fn password_drift_is_reported_and_a_rotation_request_fixes_it() {
    let env = OperatorEnv::new("op-rotate", Duration::from_secs(1))
        .await
        .unwrap();
    let (_, db) = env.ready_tenant("acme", "").await.unwrap();
    let first = secret_text(&env.client, &env.ns, "acme-db", "password")
        .await
        .unwrap()
        .unwrap();

    // Someone changes the role's password behind the operator's back.
    let mut conn = admin_db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{db}\" PASSWORD 'changed-by-hand'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let drifted = wait_condition(
        &env.client,
        &env.ns,
        "acme",
        "DatabaseReady",
        "False",
        Some("PasswordMismatch"),
        T,
    )
    .await
    .unwrap();
    assert!(
        condition(&drifted, "DatabaseReady")
            .unwrap()
            .message
            .contains("passwordRotation.requestedAt")
    );
    // Never silently regenerated.
    assert_eq!(
        secret_text(&env.client, &env.ns, "acme-db", "password")
            .await
            .unwrap()
            .unwrap(),
        first
    );

    // An explicit, timestamped rotation request sets a new password in both.
    env.api::<ChatTenant>()
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"database": {"passwordRotation": {"requestedAt": "2026-11-24T12:00:00Z"}}}})),
        )
        .await
        .unwrap();
    let rotated = wait_condition(
        &env.client,
        &env.ns,
        "acme",
        "DatabaseReady",
        "True",
        None,
        T,
    )
    .await
    .unwrap();
    let second = secret_text(&env.client, &env.ns, "acme-db", "password")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    let uri = secret_text(&env.client, &env.ns, "acme-db", "uri")
        .await
        .unwrap()
        .unwrap();
    PgConnection::connect(&uri).await.unwrap();
    let handled = rotated
        .status
        .unwrap()
        .database
        .unwrap()
        .rotation_request_handled;
    assert_eq!(handled.as_deref(), Some("2026-11-24T12:00:00Z"));
    // Pods restart to pick up the new Secret value.
    let d = env.api::<Deployment>().get("acme-blue").await.unwrap();
    let ann = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert!(ann.contains_key("chorus.dev/db-password-changed-at"));
    // The same request value again does not rotate again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secret_text(&env.client, &env.ns, "acme-db", "password")
            .await
            .unwrap()
            .unwrap(),
        second
    );
    assert!(
        events(&env, "acme")
            .await
            .iter()
            .any(|r| r == "PasswordRotated")
    );
    env.stop().await;
}

#[tokio::test]
async fn suspend_stops_reconciling_and_says_so() {
    let env = OperatorEnv::new("op-suspend", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant("acme", "").await.unwrap();
    let cts = env.api::<ChatTenant>();
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    wait_condition(
        &env.client,
        &env.ns,
        "acme",
        "Suspended",
        "True",
        Some("SuspendedBySpec"),
        T,
    )
    .await
    .unwrap();
    let services = env.api::<Service>();
    services
        .delete("acme-preview", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        services.get_opt("acme-preview").await.unwrap().is_none(),
        "suspended: nothing is recreated"
    );

    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    wait_present(&services, "acme-preview").await.unwrap();
    wait_condition(&env.client, &env.ns, "acme", "Suspended", "False", None, T)
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_missing_external_jwt_key_is_reported_and_creating_it_heals_at_once() {
    // A resync of 5 minutes: only the watch on referenced Secrets can make
    // the operator notice the new Secret within the test's deadline.
    let env = OperatorEnv::new("op-extauth", Duration::from_secs(300))
        .await
        .unwrap();
    let (yaml, _) = tenant_yaml(
        "acme",
        "  auth:\n    mode: External\n    externalJwt: {secretRef: {name: acme-idp, key: hs256}, issuer: \"https://id.acme.example\", audience: chat}",
    );
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    let ct = env
        .wait_condition("acme", "Degraded", "True", Some("ExternalAuthInvalid"))
        .await
        .unwrap();
    let message = condition(&ct, "Degraded").unwrap().message;
    assert!(
        message.contains("acme-idp") && message.contains("spec.auth.externalJwt.secretRef"),
        "the condition names the Secret and the field: {message}"
    );

    let secrets = env.api::<Secret>();
    let put = |value: &'static str| {
        let secrets = secrets.clone();
        async move {
            let secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "acme-idp"},
                "stringData": {"hs256": value},
            }))
            .unwrap();
            secrets
                .patch(
                    "acme-idp",
                    &PatchParams::apply("tenant-admin").force(),
                    &Patch::Apply(&secret),
                )
                .await
                .unwrap();
        }
    };
    // Too short a key is named as such...
    put("short").await;
    wait_for("the short key to be reported", T, || {
        let cts = env.api::<ChatTenant>();
        async move {
            let ct = cts.get("acme").await.ok()?;
            let c = condition(&ct, "Degraded")?;
            c.message.contains("is 5 bytes").then_some(())
        }
    })
    .await
    .unwrap();
    // ...and a good one clears the condition and the tenant becomes Ready.
    put("0123456789abcdef0123456789abcdef-tenant-shared").await;
    env.wait_condition("acme", "Degraded", "False", None)
        .await
        .unwrap();
    let ct = env
        .wait_condition("acme", "Ready", "True", None)
        .await
        .unwrap();
    let stable = format!(
        "acme-{}",
        ct.status.unwrap().stable.unwrap().slot.to_lowercase()
    );
    let deployments = env.api::<Deployment>();
    let blue = deployments.get(&stable).await.unwrap();
    let pod = blue.spec.unwrap().template.spec.unwrap();
    let env_vars = serde_json::to_string(&pod.containers[0].env).unwrap();
    assert!(
        env_vars.contains("acme-idp"),
        "the runtime reads the key from the tenant's Secret: {env_vars}"
    );
    // Env from a Secret is read when a pod starts: rotating the key changes
    // the pod template's checksum annotation, so the pods roll.
    let checksum_of = |d: Deployment| {
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("chorus.dev/auth-key-checksum")
            .cloned()
    };
    let before = deployments.get(&stable).await.unwrap();
    let before = checksum_of(before).expect("the pod template carries the key checksum");
    put("fedcba9876543210fedcba9876543210-rotated-key").await;
    wait_for("the rotated key to reach the pod template", T, || {
        let (deployments, stable, before) = (deployments.clone(), stable.clone(), before.clone());
        async move {
            let d = deployments.get(&stable).await.ok()?;
            (checksum_of(d)? != before).then_some(())
        }
    })
    .await
    .unwrap();
    env.stop().await;
}
