//! Test seam for the controller (kube's `tower-test` pattern, as in
//! controller-rs's `fixtures.rs`): a [`kube::Client`] whose requests go to an
//! in-memory [`ApiServerVerifier`] instead of a cluster, and a stand-in
//! [`Provisioner`] instead of PostgreSQL.
//!
//! The verifier answers like a small apiserver (GET, list, server-side apply,
//! status apply, the finalizer's JSON patch, Event POSTs, DELETE) and records
//! every request, so a test runs real reconciles and then checks the exact
//! sequence of writes they sent.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use crate::{
    controller::{Context, Settings},
    crd::ChatTenant,
    database::{
        DatabaseError, DropOutcome, EnsureOutcome, LoginCheck, PasswordAction, Provisioner,
        ServerConfig, TenantDatabase,
    },
    metrics::Metrics,
};

/// One request the controller sent.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// `GET`, `PATCH`, ...
    pub(crate) method: String,
    /// Path and query.
    pub(crate) uri: String,
    /// The body, `Null` when empty.
    pub(crate) body: Value,
}

impl Seen {
    /// Whether the request changes something (anything but a GET).
    pub(crate) fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `METHOD path` without the query, for short assertions.
    pub(crate) fn line(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

#[derive(Default)]
struct State {
    /// Objects by path (`/api/v1/namespaces/ns/secrets/name`).
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    next_uid: u64,
}

/// The in-memory apiserver behind a test [`Client`].
#[derive(Clone, Default)]
pub(crate) struct ApiServerVerifier {
    state: Arc<Mutex<State>>,
}

/// The path of a ChatTenant in the verifier.
pub(crate) fn tenant_path(namespace: &str, name: &str) -> String {
    format!("/apis/chorus.dev/v1alpha1/namespaces/{namespace}/chattenants/{name}")
}

impl ApiServerVerifier {
    /// A client answered by a new verifier (served until the client is
    /// dropped).
    pub(crate) fn client() -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let verifier = Self::default();
        let server = verifier.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = server.answer(request).await;
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), verifier)
    }

    /// Stores `obj` at `path`.
    pub(crate) fn insert(&self, path: &str, obj: Value) {
        if let Ok(mut s) = self.state.lock() {
            s.objects.insert(path.to_string(), obj);
        }
    }

    /// Deletes the object at `path` (a hand deletion).
    pub(crate) fn remove(&self, path: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.objects.remove(path);
        }
    }

    /// The object at `path`.
    pub(crate) fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().ok()?.objects.get(path).cloned()
    }

    /// The ChatTenant at `path`.
    pub(crate) fn tenant(&self, path: &str) -> Arc<ChatTenant> {
        let obj = self.get(path).unwrap_or_default();
        Arc::new(serde_json::from_value(obj).expect("a stored ChatTenant"))
    }

    /// Every request so far; clears the record.
    pub(crate) fn take(&self) -> Vec<Seen> {
        self.state
            .lock()
            .map(|mut s| std::mem::take(&mut s.seen))
            .unwrap_or_default()
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let path = request.uri().path().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Ok(mut s) = self.state.lock() else {
            return respond(StatusCode::INTERNAL_SERVER_ERROR, json!({}));
        };
        s.seen.push(Seen {
            method: method.clone(),
            uri,
            body: body.clone(),
        });
        let (key, status_subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), true),
            None => (path.clone(), false),
        };
        match method.as_str() {
            "GET" if is_collection(&key) => {
                let prefix = format!("{key}/");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, o)| json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": o["metadata"]}))
                    .collect();
                let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items});
                respond(StatusCode::OK, list)
            }
            "GET" => match s.objects.get(&key) {
                Some(obj) => respond(StatusCode::OK, obj.clone()),
                None => not_found(&key),
            },
            "PATCH" if content_type.contains("json-patch") => {
                let Some(obj) = s.objects.get_mut(&key) else {
                    return not_found(&key);
                };
                json_patch_finalizers(obj, &body);
                respond(StatusCode::OK, obj.clone())
            }
            "PATCH" if status_subresource => {
                let Some(obj) = s.objects.get_mut(&key) else {
                    return not_found(&key);
                };
                obj["status"] = body["status"].clone();
                respond(StatusCode::OK, obj.clone())
            }
            "PATCH" => {
                s.next_uid += 1;
                let uid = format!("uid-{}", s.next_uid);
                let mut obj = body;
                match s.objects.get(&key) {
                    Some(old) => obj["metadata"]["uid"] = old["metadata"]["uid"].clone(),
                    None => obj["metadata"]["uid"] = json!(uid),
                }
                s.objects.insert(key, obj.clone());
                respond(StatusCode::OK, obj)
            }
            "POST" => respond(StatusCode::CREATED, body),
            "DELETE" => match s.objects.remove(&key) {
                Some(_) => respond(
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                None => not_found(&key),
            },
            _ => respond(StatusCode::METHOD_NOT_ALLOWED, json!({})),
        }
    }
}

/// `/api/v1/namespaces/ns/plural` or `/apis/g/v/namespaces/ns/plural`.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .iter()
        .position(|p| *p == "namespaces")
        .is_some_and(|i| parts.len() == i + 3)
}

/// Applies the finalizer helper's JSON patch (test, then add).
fn json_patch_finalizers(obj: &mut Value, patch: &Value) {
    for op in patch.as_array().into_iter().flatten() {
        match (op["op"].as_str(), op["path"].as_str()) {
            (Some("add"), Some("/metadata/finalizers")) => {
                obj["metadata"]["finalizers"] = op["value"].clone();
            }
            (Some("add"), Some("/metadata/finalizers/-")) => {
                if let Some(list) = obj["metadata"]["finalizers"].as_array_mut() {
                    list.push(op["value"].clone());
                }
            }
            _ => {}
        }
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
}

fn not_found(path: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}

/// A database server that always works: the first `ensure` creates the role
/// and database, later ones find nothing to do.
#[derive(Default)]
pub(crate) struct FakeDatabases {
    provisioned: Mutex<bool>,
}

impl Provisioner for FakeDatabases {
    fn check_claim<'a>(
        &'a self,
        _: &'a ServerConfig,
        _: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<(), DatabaseError>> {
        Box::pin(async { Ok(()) })
    }

    fn ensure<'a>(
        &'a self,
        _: &'a ServerConfig,
        db: &'a TenantDatabase,
        _: &'a PasswordAction,
    ) -> BoxFuture<'a, Result<EnsureOutcome, DatabaseError>> {
        Box::pin(async move {
            let mut provisioned = self
                .provisioned
                .lock()
                .map_err(|_| DatabaseError::Timeout {
                    server: "fake".into(),
                })?;
            if *provisioned {
                return Ok(EnsureOutcome::default());
            }
            *provisioned = true;
            let name = db.name.as_str();
            Ok(EnsureOutcome {
                executed: vec![
                    format!("CREATE ROLE {name}"),
                    format!("CREATE DATABASE {name}"),
                    format!("REVOKE ALL ON DATABASE {name} FROM PUBLIC"),
                ],
                created_role: true,
                created_database: true,
            })
        })
    }

    fn check_login<'a>(
        &'a self,
        _: &'a ServerConfig,
        _: &'a TenantDatabase,
        _: &'a str,
    ) -> BoxFuture<'a, Result<LoginCheck, DatabaseError>> {
        Box::pin(async { Ok(LoginCheck::Ok) })
    }

    fn drop_tenant<'a>(
        &'a self,
        _: &'a ServerConfig,
        _: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<DropOutcome, DatabaseError>> {
        Box::pin(async { Ok(DropOutcome::default()) })
    }
}

/// A context over a fresh verifier and [`FakeDatabases`], with the server
/// Secret `chorus-system/shared-pg` and the sample ChatTenant `tenants/acme`
/// stored (finalizer not yet added).
pub(crate) fn context() -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = ApiServerVerifier::client();
    let settings = Settings {
        server_namespace: "chorus-system".into(),
        watch_namespaces: Vec::new(),
        resync: Duration::from_secs(300),
        instance: "test".into(),
        concurrency: 0,
    };
    let ctx = Context::with_provisioner(
        client,
        settings,
        Arc::new(Metrics::default()),
        Arc::new(FakeDatabases::default()),
    );
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    verifier.insert(
        "/api/v1/namespaces/chorus-system/secrets/shared-pg",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "shared-pg", "namespace": "chorus-system"},
               "data": {"host": b64("pg.db.svc"), "port": b64("5432"),
                        "username": b64("admin"), "password": b64("admin-pw")}}),
    );
    let tenant = serde_json::to_value(crate::validate::tests::sample()).unwrap_or_default();
    verifier.insert(&tenant_path("tenants", "acme"), tenant);
    (Arc::new(ctx), verifier)
}
