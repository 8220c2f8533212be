//! `--floor`: what the control plane alone spends on a burst of tenants.
//!
//! No operator and no database. For each tenant the bench creates the
//! ChatTenant (so the children's owner references resolve, as in the real
//! run), builds its children with the operator's own pure builders
//! (`build::build_children`, the two Secrets of `build::secret`) and
//! server-side applies each of them once, with the operator's field manager,
//! in the operator's order. That is the fewest writes any operator could
//! send for these objects: no reads, no status, no second pass. Then it waits
//! until every tenant's Deployment has an available pod (kube-controller-
//! manager made the ReplicaSet and the pod, kube-scheduler bound it, kwok
//! ran it) and prints the wall time and the CPU each component used.
//!
//! The figure bounds from below what the operator's burst can reach on the
//! same machine: the time to "all Ready" can be no shorter than this time to
//! "all available", and the control plane's CPU here is CPU the operator's
//! run cannot avoid.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chorus_operator::{
    apply::{ApplyError, Observed, apply_one},
    build::{
        Inputs, build_children,
        secret::{build_auth_secret, build_db_secret, generate_jwt_key},
    },
    children::{ChildKind, KindFold},
    crd::ChatTenant,
    database::{ident::Ident, server::ServerConfig},
    model::Tenant,
    rollout::{SlotObservation, plan},
    validate::validate,
};
use futures::{StreamExt, TryStreamExt, future::BoxFuture};
use kube::{Api, Client, api::PostParams, core::DynamicObject};

use crate::{
    Args, CpuSample, Error, PROGRESS_EVERY, Seen, apiserver_requests, namespace_of,
    print_apiserver_requests, print_times, sorted_since, spawn_deployment_watch, tenant_manifest,
};

/// One server-side apply per built child, in the order of `Children::fold`.
struct Applies<'c> {
    client: &'c Client,
    namespace: &'c str,
    steps: Vec<BoxFuture<'c, Result<bool, ApplyError>>>,
}

impl<'c> KindFold<'c> for Applies<'c> {
    fn kind<K: ChildKind>(mut self, built: &'c [K]) -> Self {
        for obj in built {
            let (client, namespace) = (self.client, self.namespace);
            self.steps.push(Box::pin(apply_one(
                client,
                namespace,
                obj,
                Observed::Known(None),
            )));
        }
        self
    }

    fn http_route(self, _built: Option<&'c DynamicObject>) -> Self {
        self
    }
}

/// Creates tenant `i` and applies what the operator would apply for it.
async fn provision(client: &Client, args: &Args, i: usize) -> Result<(), Error> {
    let ns = namespace_of(i, args.namespaces);
    let tenants: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
    let manifest = tenant_manifest(i, &ns, args.replicas, args.isolation.spec_value())?;
    let created = tenants.create(&PostParams::default(), &manifest).await?;
    let t: Tenant = validate(&created).map_err(|e| format!("tenant t-{i}: {e}"))?;
    let layout = plan(&t, None, &SlotObservation::default(), false, 0, None);
    let server = ServerConfig {
        host: "127.0.0.1".into(),
        port: 5432,
        username: "postgres".into(),
        password: "unused".into(),
        ssl_mode: "disable".into(),
    };
    // The same Secrets as the database and auth steps (a password of the
    // operator's length; nothing logs in with it).
    let role = Ident::new(&format!("chat_bench_{i}"))?;
    let db_secret = build_db_secret(&t, &server, &role, &"x".repeat(32));
    let auth_secret = build_auth_secret(&t, &generate_jwt_key());
    let inputs = Inputs {
        plan: &layout,
        database_host: &server.host,
        database_port: server.port,
        password_changed_at: None,
        auth_key_hash: None,
        database_uri_hash: None,
        env_refs_hash: None,
    };
    let children = build_children(&t, &inputs);
    for secret in [&db_secret, &auth_secret] {
        apply_one(client, &ns, secret, Observed::Known(None)).await?;
    }
    let applies = children.fold(Applies {
        client,
        namespace: &ns,
        steps: Vec::new(),
    });
    for step in applies.steps {
        step.await?;
    }
    Ok(())
}

/// The `--floor` run: prints the time until every tenant's Deployment has
/// an available pod and the CPU of each component until then.
pub async fn run(client: &Client, args: &Args) -> Result<(), Error> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let deployments = spawn_deployment_watch(client, seen.clone());
    println!(
        "floor: {} tenants' children applied directly (no operator, no database) in {} namespace(s), {} pods each, {} tenants in flight",
        args.tenants, args.namespaces, args.replicas, args.concurrency
    );
    let cpu0 = CpuSample::take(args, None);
    let requests0 = apiserver_requests(client).await;
    let start = Instant::now();
    futures::stream::iter(0..args.tenants)
        .map(|i| provision(client, args, i))
        .buffer_unordered(usize::from(args.concurrency))
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "applied {} tenants' children in {:.1} s",
        args.tenants,
        start.elapsed().as_secs_f64()
    );
    let deadline = start + Duration::from_secs(args.timeout_seconds);
    let mut progress_at = Instant::now() + PROGRESS_EVERY;
    loop {
        let available = seen
            .lock()
            .map(|s| s.available_at.len())
            .unwrap_or_default();
        if available >= args.tenants || Instant::now() > deadline {
            break;
        }
        if Instant::now() >= progress_at {
            progress_at += PROGRESS_EVERY;
            eprintln!(
                "  {:.0} s: available {available}/{}",
                start.elapsed().as_secs_f64(),
                args.tenants
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = start.elapsed();
    let times = seen
        .lock()
        .map(|s| sorted_since(&s.available_at, start))
        .unwrap_or_default();
    print_times("a pod available", &times, args.tenants);
    println!(
        "CPU until all available: {}",
        CpuSample::take(args, None).since(&cpu0, wall)
    );
    print_apiserver_requests(
        "apiserver requests until all available",
        &requests0,
        &apiserver_requests(client).await,
    );
    deployments.abort();
    Ok(())
}
