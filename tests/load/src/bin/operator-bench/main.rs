//! `operator-bench`: the operator's scale figures on a control plane of its
//! own (`chorus-cluster --kwok-only`: the runtime pods land on kwok fake
//! nodes and never run). It installs the CRD, a server Secret for the given
//! PostgreSQL, starts the operator binary as a host process, applies
//! `--tenants` ChatTenants at once and prints:
//!
//! - time to the first Ready, p50, p99 and all Ready (from the first create);
//! - the operator's RSS before the first ChatTenant (its base), its peak
//!   RSS and PostgreSQL's peak client connections;
//! - the operator's requests during one idle resync interval, counted at the
//!   apiserver (API Priority and Fairness, `chorus_e2e::requests`): the
//!   operator impersonates a ServiceAccount of its own for that;
//! - with `--hold`, the operator's RSS after that resync;
//! - with `--restart`, how long a restarted operator takes to reconcile every
//!   tenant, and how many tenants' DatabaseReady left True meanwhile.
//!
//! PostgreSQL needs about 8 MB of disk per tenant (each database is a copy
//! of `template1`): 8 GB for 1,000 tenants. With `--isolation schema` the
//! tenants get `spec.database.isolation: Schema` (a role and a schema each
//! in one shared database), which is how 10,000 tenants fit on one disk.
//!
//! ```text
//! operator-bench --kubeconfig K --database-url postgres://... --operator target/release/chorus-operator --tenants 1000
//! ```

#![allow(clippy::print_stdout)] // a CLI that prints its report

mod floor;
mod probe;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chorus_e2e::requests::{Counts, RequestCounter};
use chorus_operator::crd::ChatTenant;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the wait for Ready prints a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "Scale figures of the Chorus operator on a kwok control plane")]
struct Args {
    /// Kubeconfig of a control plane of the bench's own (`chorus-cluster --kwok-only`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Admin URL of a fresh PostgreSQL server (roles `chat_bench_*` are made there).
    #[arg(long)]
    database_url: String,
    /// The chorus-operator binary (a release build).
    #[arg(long)]
    operator: PathBuf,
    /// ChatTenants applied at once.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// The operator's resync interval; one idle interval is measured.
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
    /// The operator's `--max-concurrent-reconciles`.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Print the RSS held after the idle resync.
    #[arg(long)]
    hold: bool,
    /// Restart the operator after the idle resync and measure it converging.
    #[arg(long)]
    restart: bool,
    /// `spec.database.isolation` of every tenant: `database` (a database
    /// each) or `schema` (a schema each in one shared database).
    #[arg(long, value_enum, default_value_t = Isolation::Database)]
    isolation: Isolation,
    /// Namespaces the tenants are spread over, round robin: `bench` alone
    /// (1), or `bench-0` .. `bench-<N-1>`. The control plane's own
    /// controllers match each pod and ReplicaSet against every Deployment,
    /// Service and PodDisruptionBudget of its namespace, so their work per
    /// tenant grows with the tenants in that namespace (the operator's own
    /// work does not change; README, "Operator at scale").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    namespaces: u32,
    /// `spec.runtime.replicas` of every tenant (kwok pods; the control plane's
    /// 4 fake nodes take 3,000 pods each).
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Give up waiting for Ready after this long.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
    /// Processes whose CPU time to report per phase, `name=pid` (the
    /// control plane's components, PostgreSQL's postmaster); repeatable.
    #[arg(long = "cpu", value_parser = parse_process)]
    cpu: Vec<(String, u32)>,
    /// The CRD manifest.
    #[arg(long, default_value = "crds/chattenants.chorus.dev.yaml")]
    crd: PathBuf,
    /// Measure the control plane alone: apply each tenant's children
    /// directly (the operator's builders, one apply each; no operator, no
    /// database) and time every Deployment to an available pod
    /// (`floor.rs`). `--concurrency` tenants are applied at a time.
    #[arg(long)]
    floor: bool,
}

/// `--isolation`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Isolation {
    /// `Database`.
    Database,
    /// `Schema`.
    Schema,
}

impl Isolation {
    fn spec_value(self) -> &'static str {
        match self {
            Isolation::Database => "Database",
            Isolation::Schema => "Schema",
        }
    }
}

fn parse_process(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected name=pid")?;
    Ok((name.to_string(), pid.parse().map_err(|e| format!("{e}"))?))
}

/// CPU seconds of the watched processes (and the operator, and this
/// bench) at one moment.
struct CpuSample(Vec<(String, f64)>);

impl CpuSample {
    fn take(args: &Args, operator: Option<u32>) -> Self {
        let mut v: Vec<(String, f64)> = args
            .cpu
            .iter()
            .map(|(name, pid)| (name.clone(), probe::cpu_seconds(*pid).unwrap_or_default()))
            .collect();
        if let Some(pid) = operator {
            v.push((
                "chorus-operator".into(),
                probe::cpu_seconds(pid).unwrap_or_default(),
            ));
        }
        v.push((
            "operator-bench".into(),
            probe::cpu_seconds(std::process::id()).unwrap_or_default(),
        ));
        Self(v)
    }

    /// `name s, ...` of the CPU used since `earlier`, largest first, with
    /// the total and the wall time.
    fn since(&self, earlier: &Self, wall: Duration) -> String {
        let mut used: Vec<(String, f64)> = self
            .0
            .iter()
            .zip(&earlier.0)
            .map(|((name, now), (_, then))| (name.clone(), now - then))
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = used.iter().map(|u| u.1).sum();
        let parts: Vec<String> = used
            .iter()
            .map(|(name, s)| format!("{name} {s:.1}"))
            .collect();
        format!(
            "{total:.1} CPU s in {:.1} s wall ({:.2} cores): {}",
            wall.as_secs_f64(),
            total / wall.as_secs_f64().max(0.001),
            parts.join(", ")
        )
    }
}

const NS: &str = "bench";

/// The namespace of tenant `i` of `n` namespaces (`--namespaces`).
fn namespace_of(i: usize, n: u32) -> String {
    if n <= 1 {
        NS.to_string()
    } else {
        format!("{NS}-{}", i % n as usize)
    }
}
const SERVER_NS: &str = "chorus-system";
const MANAGER: &str = "operator-bench";
/// The label naming a child's tenant.
const TENANT_LABEL: &str = chorus_operator::names::TENANT_LABEL;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let mut pg = probe::pg_connect(&args.database_url).await?;
    let (leftover,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'chat_bench_%'")
            .fetch_one(&mut pg)
            .await?;
    if leftover > 0 {
        return Err(format!(
            "{leftover} chat_bench_* roles exist: use a fresh server (scripts/db.sh up test-...)"
        )
        .into());
    }

    setup(&client, &args).await?;
    let counter = RequestCounter::install(&client, SERVER_NS).await?;
    drop(pg);
    // Interrupted (Ctrl-C, `kill`): the run is dropped, and with it the
    // operator it started (`kill_on_drop`), instead of left running.
    let result = tokio::select! {
        r = run(&client, &args, &counter), if !args.floor => r,
        r = floor::run(&client, &args), if args.floor => r,
        s = interrupted() => Err(format!("interrupted by {s}").into()),
    };
    counter.remove().await;
    result
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// The CRD, namespaces, the server Secret and the operator's identity.
async fn setup(client: &Client, args: &Args) -> Result<(), Error> {
    let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&args.crd)?)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let tenant_namespaces = (0..args.namespaces as usize).map(|i| namespace_of(i, args.namespaces));
    for ns in tenant_namespaces.chain([SERVER_NS.to_string()]) {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        api.patch(
            ns["metadata"]["name"].as_str().unwrap_or_default(),
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&ns),
        )
        .await?;
    }
    let url = args
        .database_url
        .strip_prefix("postgres://")
        .unwrap_or_default();
    let (auth, rest) = url.rsplit_once('@').ok_or("database URL without user")?;
    let (user, password) = auth
        .split_once(':')
        .ok_or("database URL without password")?;
    let hostport = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or("database URL without port")?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shared-pg", "namespace": SERVER_NS},
        "stringData": {"host": host, "port": port, "username": user, "password": password, "sslmode": "disable"}
    }))?;
    Api::<Secret>::namespaced(client.clone(), SERVER_NS)
        .patch(
            "shared-pg",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    // The operator impersonates this ServiceAccount, so the apiserver counts
    // its requests apart from the bench's own.
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "operator-bench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "chorus-operator", "namespace": SERVER_NS}]
    });
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .patch(
            "operator-bench",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await?;
    // Established before any tenant is created.
    for _ in 0..100 {
        let c = crds.get(&crd.name_any()).await?;
        let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return warm_up(client, args).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the CRD did not become Established".into())
}

/// One server-side dry-run create of a ChatTenant, before any clock starts.
///
/// The first write of a new custom resource kind waits about 2 s in
/// kube-apiserver (its ResourceQuota admission sets up an evaluator for the
/// kind; Kubernetes 1.36.3 logs "quota admission added evaluator for"), once
/// per kind and apiserver process: `kubectl create --dry-run=server` of a
/// fresh CRD's first object took 2.09 s, the next create 0.07 s. A cluster
/// whose CRD was installed with the operator pays it before its tenants
/// come; without this the bench's first Ready would carry it.
async fn warm_up(client: &Client, args: &Args) -> Result<(), Error> {
    let ns = namespace_of(0, args.namespaces);
    let tenants: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
    let ct = tenant_manifest(0, &ns, args.replicas, args.isolation.spec_value())?;
    let started = Instant::now();
    tenants
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &ct,
        )
        .await?;
    println!(
        "first write of a ChatTenant (server dry run, before the clock): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The operator as a host process, impersonating its ServiceAccount.
struct Operator {
    child: tokio::process::Child,
    port: u16,
}

impl Operator {
    async fn start(args: &Args) -> Result<Self, Error> {
        let mut kubeconfig: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&args.kubeconfig)?)?;
        if let Some(users) = kubeconfig
            .get_mut("users")
            .and_then(|u| u.as_sequence_mut())
        {
            for u in users {
                if let Some(user) = u.get_mut("user").and_then(|u| u.as_mapping_mut()) {
                    user.insert(
                        "as".into(),
                        format!("system:serviceaccount:{SERVER_NS}:chorus-operator").into(),
                    );
                    user.insert(
                        "as-groups".into(),
                        serde_yaml::to_value([
                            "system:serviceaccounts",
                            &format!("system:serviceaccounts:{SERVER_NS}"),
                            "system:authenticated",
                        ])?,
                    );
                }
            }
        }
        let path = args.kubeconfig.with_extension("operator-bench");
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // As the operator image sets it (scripts/images.sh), unless the
        // caller chose a value.
        let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into());
        let child = tokio::process::Command::new(&args.operator)
            .env("MALLOC_ARENA_MAX", arenas)
            .env("KUBECONFIG", &path)
            .env("POD_NAMESPACE", SERVER_NS)
            .env("CHORUS_NO_LEADER_ELECTION", "true")
            .env("CHORUS_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CHORUS_RESYNC_SECONDS", args.resync_seconds.to_string())
            .env(
                "CHORUS_MAX_CONCURRENT_RECONCILES",
                args.concurrency.to_string(),
            )
            // Errors only, unless the caller asks for more (the
            // operator's JSON logs then go to this program's stderr).
            .env(
                "CHORUS_LOG_LEVEL",
                std::env::var("CHORUS_LOG_LEVEL").unwrap_or_else(|_| "error".into()),
            )
            .kill_on_drop(true)
            .spawn()?;
        let op = Self { child, port };
        for _ in 0..300 {
            if let Some((200, _)) = probe::http_get(port, "/readyz").await {
                return Ok(op);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the operator did not become ready within 30 s".into())
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        probe::http_get(self.port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    async fn reconciles(&self) -> u64 {
        probe::metric(&self.metrics().await, "chorus_reconciles_total") as u64
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await;
    }
}

/// What the ChatTenant and Deployment watches saw.
#[derive(Default)]
struct Seen {
    /// When each tenant was first Ready.
    ready_at: HashMap<String, Instant>,
    /// When each tenant's DatabaseReady was first True.
    database_ready_at: HashMap<String, Instant>,
    /// When each tenant's first Deployment was first seen (the operator
    /// applied its children).
    deployment_at: HashMap<String, Instant>,
    /// When each tenant's Deployment first had an available pod (the
    /// controller manager, the scheduler and kwok did their part).
    available_at: HashMap<String, Instant>,
    /// Tenants whose DatabaseReady was not True after `flaps_since`.
    flapped: HashSet<String>,
    flaps_since: Option<Instant>,
}

fn condition(ct: &ChatTenant, type_: &str) -> Option<String> {
    ct.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

async fn run(client: &Client, args: &Args, counter: &RequestCounter) -> Result<(), Error> {
    // Every namespace: the bench's are the only tenants on its control plane.
    let tenants: Api<ChatTenant> = Api::all(client.clone());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = {
        let seen = seen.clone();
        let tenants = tenants.clone();
        tokio::spawn(async move {
            let stream = watcher(tenants, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(ct) = next_object(&mut stream).await {
                let Ok(mut s) = seen.lock() else { break };
                if condition(&ct, "Ready").as_deref() == Some("True") {
                    s.ready_at.entry(ct.name_any()).or_insert_with(Instant::now);
                }
                if condition(&ct, "DatabaseReady").as_deref() == Some("True") {
                    s.database_ready_at
                        .entry(ct.name_any())
                        .or_insert_with(Instant::now);
                }
                if s.flaps_since.is_some()
                    && condition(&ct, "DatabaseReady").as_deref() != Some("True")
                {
                    s.flapped.insert(ct.name_any());
                }
            }
        })
    };

    let deployments = spawn_deployment_watch(client, seen.clone());

    let operator = Operator::start(args).await?;
    // The operator's own base, so the RSS lines below can be read per tenant.
    if let Some((rss, _)) = probe::rss_kib(operator.pid()) {
        println!(
            "operator RSS before the first ChatTenant: {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    // Peaks: operator RSS (VmHWM), PostgreSQL client connections.
    let peak_pg = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let rss_now = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak_pg, sampling, rss_now, url) = (
            peak_pg.clone(),
            sampling.clone(),
            rss_now.clone(),
            args.database_url.clone(),
        );
        let pid = operator.pid();
        tokio::spawn(async move {
            let Ok(mut conn) = probe::pg_connect(&url).await else {
                return 0;
            };
            let mut peak_rss = 0;
            while sampling.load(Ordering::Relaxed) {
                if let Some((rss, hwm)) = probe::rss_kib(pid) {
                    peak_rss = hwm.max(peak_rss);
                    rss_now.store(rss, Ordering::Relaxed);
                }
                if let Some(n) = probe::pg_connections(&mut conn).await {
                    peak_pg.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak_rss
        })
    };

    println!(
        "applying {} ChatTenants at once in {} namespace(s) ({} pods each, operator concurrency {}, resync {} s, isolation {})",
        args.tenants,
        args.namespaces,
        args.replicas,
        args.concurrency,
        args.resync_seconds,
        args.isolation.spec_value()
    );
    let cpu0 = CpuSample::take(args, Some(operator.pid()));
    let requests0 = (apiserver_requests(client).await, counter.counts().await?);
    let start = Instant::now();
    let isolation = args.isolation.spec_value();
    let replicas = args.replicas;
    let namespaces = args.namespaces;
    futures::stream::iter(0..args.tenants)
        .map(|i| {
            let ns = namespace_of(i, namespaces);
            let tenants: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
            async move {
                let ct = tenant_manifest(i, &ns, replicas, isolation)?;
                tenants.create(&PostParams::default(), &ct).await?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let created = start.elapsed();
    println!(
        "created {} ChatTenants in {:.1} s",
        args.tenants,
        created.as_secs_f64()
    );

    let deadline = start + Duration::from_secs(args.timeout_seconds);
    // A progress line on stderr every 30 s: the wait is minutes long, and
    // the RSS along the way shows its slope per tenant.
    let mut progress_at = Instant::now() + PROGRESS_EVERY;
    loop {
        let ready = seen.lock().map(|s| s.ready_at.len()).unwrap_or_default();
        if ready >= args.tenants || Instant::now() > deadline {
            break;
        }
        if Instant::now() >= progress_at {
            progress_at += PROGRESS_EVERY;
            eprintln!(
                "  {:.0} s: Ready {ready}/{}, operator RSS {:.1} MiB",
                start.elapsed().as_secs_f64(),
                args.tenants,
                rss_now.load(Ordering::Relaxed) as f64 / 1024.0
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let since_start = |at: &HashMap<String, Instant>| sorted_since(at, start);
    let times = seen
        .lock()
        .map(|s| since_start(&s.ready_at))
        .unwrap_or_default();
    print_times("Ready", &times, args.tenants);

    let burst = start.elapsed();
    println!(
        "CPU until all Ready: {}",
        CpuSample::take(args, Some(operator.pid())).since(&cpu0, burst)
    );
    let requests1 = (apiserver_requests(client).await, counter.counts().await?);
    if let Ok(s) = seen.lock() {
        print_phases(&s, since_start);
    }
    let operator_requests = requests1.1 - requests0.1;
    println!(
        "operator requests until all Ready: {} writes, {} LISTs, {} other reads",
        operator_requests.writes, operator_requests.lists, operator_requests.others
    );
    print_apiserver_requests(
        "apiserver requests until all Ready",
        &requests0.0,
        &requests1.0,
    );
    let metrics = operator.metrics().await;
    println!(
        "operator during the burst: {} reconciles, {} failed ({}), {} status writes, {} DDL statements; reconcile time p50 <= {} s, mean {:.2} s",
        probe::metric(&metrics, "chorus_reconciles_total"),
        probe::metric(&metrics, "chorus_reconcile_failures_total"),
        probe::labelled(&metrics, "chorus_reconcile_failures_total", "reason"),
        probe::metric(&metrics, "chorus_status_writes_total"),
        probe::metric(&metrics, "chorus_database_ddl_statements_total"),
        probe::histogram_quantile(&metrics, "chorus_reconcile_duration_seconds", 0.5)
            .map_or("?".to_string(), |q| q.to_string()),
        probe::metric(&metrics, "chorus_reconcile_duration_seconds_sum")
            / probe::metric(&metrics, "chorus_reconcile_duration_seconds_count").max(1.0),
    );

    // One idle resync interval: every tenant reconciles at least once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, r0) = (counter.counts().await?, operator.reconciles().await);
    tokio::time::sleep(Duration::from_secs(args.resync_seconds + 5)).await;
    let (idle, r1): (Counts, u64) = (counter.counts().await? - c0, operator.reconciles().await);
    println!(
        "idle resync ({} s): {} reconciles, {} write requests, {} LISTs, {} other reads",
        args.resync_seconds + 5,
        r1 - r0,
        idle.writes,
        idle.lists,
        idle.others
    );
    if args.hold {
        println!(
            "RSS after the idle resync: {:.1} MiB",
            rss_now.load(Ordering::Relaxed) as f64 / 1024.0
        );
    }

    let mut operator = operator;
    if args.restart {
        operator.stop().await;
        if let Ok(mut s) = seen.lock() {
            s.flaps_since = Some(Instant::now());
        }
        let restarted = Instant::now();
        operator = Operator::start(args).await?;
        let cpu0 = CpuSample::take(args, Some(operator.pid()));
        let deadline = restarted + Duration::from_secs(args.timeout_seconds);
        while operator.reconciles().await < args.tenants as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let flapped = seen.lock().map(|s| s.flapped.len()).unwrap_or_default();
        println!(
            "CPU of the restart: {}",
            CpuSample::take(args, Some(operator.pid())).since(&cpu0, restarted.elapsed())
        );
        println!(
            "restart: {} reconciles in {:.1} s; tenants whose DatabaseReady left True: {flapped}",
            operator.reconciles().await,
            restarted.elapsed().as_secs_f64()
        );
    }
    sampling.store(false, Ordering::Relaxed);
    let peak_rss = sampler.await.unwrap_or_default();
    println!(
        "peak operator RSS: {:.1} MiB; peak PostgreSQL client connections: {}",
        peak_rss as f64 / 1024.0,
        peak_pg.load(Ordering::Relaxed)
    );
    operator.stop().await;
    watch.abort();
    deployments.abort();
    Ok(())
}

/// The apiserver's request counters (empty when unreadable).
async fn apiserver_requests(client: &Client) -> HashMap<String, f64> {
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return HashMap::new();
    };
    match client.request_text(req).await {
        Ok(text) => probe::apiserver_requests(&text),
        Err(_) => HashMap::new(),
    }
}

/// How long after `start` each instant of `at` came, sorted.
fn sorted_since(at: &HashMap<String, Instant>, start: Instant) -> Vec<Duration> {
    let mut v: Vec<Duration> = at
        .values()
        .map(|t| t.saturating_duration_since(start))
        .collect();
    v.sort();
    v
}

/// `label: n/total; first, p50, p99, all` of sorted times (`all`: "not
/// reached" while fewer than `total` came).
fn print_times(label: &str, times: &[Duration], total: usize) {
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!(
        "{label}: {}/{total}; first {}, p50 {}, p99 {}, all {}",
        times.len(),
        secs(times.first().copied().unwrap_or_default()),
        secs(probe::percentile(times, 50.0)),
        secs(probe::percentile(times, 99.0)),
        if times.len() >= total {
            secs(times.last().copied().unwrap_or_default())
        } else {
            "not reached".into()
        },
    );
}

/// Where each tenant's time to Ready went: p50 and last of each milestone
/// (from the first create), then the per-tenant gaps between them.
fn print_phases(s: &Seen, since_start: impl Fn(&HashMap<String, Instant>) -> Vec<Duration>) {
    let secs = |d: Duration| format!("{:.1}", d.as_secs_f64());
    let row = |name: &str, v: Vec<Duration>| {
        println!(
            "  {name:<22} {:>5}  first {:>6} s  p50 {:>6} s  p99 {:>6} s  last {:>6} s",
            v.len(),
            secs(v.first().copied().unwrap_or_default()),
            secs(probe::percentile(&v, 50.0)),
            secs(probe::percentile(&v, 99.0)),
            secs(v.last().copied().unwrap_or_default()),
        );
    };
    println!("phases (tenants, time from the first create):");
    row("DatabaseReady", since_start(&s.database_ready_at));
    row("Deployment applied", since_start(&s.deployment_at));
    row("a pod available", since_start(&s.available_at));
    row("Ready", since_start(&s.ready_at));
    // Per tenant: how long each step took after the one before.
    let gap = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
        let mut v: Vec<Duration> = to
            .iter()
            .filter_map(|(k, t)| Some(t.saturating_duration_since(*from.get(k)?)))
            .collect();
        v.sort();
        v
    };
    println!("per tenant (time after the step before):");
    row(
        "Deployment -> available",
        gap(&s.deployment_at, &s.available_at),
    );
    row("available -> Ready", gap(&s.available_at, &s.ready_at));
}

/// ChatTenant `t-<i>` of the bench in `ns`.
fn tenant_manifest(
    i: usize,
    ns: &str,
    replicas: u32,
    isolation: &str,
) -> Result<ChatTenant, Error> {
    let mut ct = ChatTenant::new(
        &format!("t-{i}"),
        serde_json::from_value(json!({
            "tenantId": format!("t-{i}"),
            "runtime": {"image": "ghcr.io/chorus-dev/chat-runtime:0.1.0", "replicas": replicas,
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}},
            "database": {"serverRef": {"name": "shared-pg"}, "name": format!("chat_bench_{i}"),
                         "isolation": isolation}
        }))?,
    );
    ct.metadata.namespace = Some(ns.to_string());
    Ok(ct)
}

/// Records when each tenant's first Deployment appears and first has an
/// available pod.
fn spawn_deployment_watch(client: &Client, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    let api: Api<Deployment> = Api::all(client.clone());
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().labels(TENANT_LABEL))
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(d) = next_object(&mut stream).await {
            let Some(tenant) = d.labels().get(TENANT_LABEL).cloned() else {
                continue;
            };
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let Ok(mut s) = seen.lock() else { break };
            let now = Instant::now();
            s.deployment_at.entry(tenant.clone()).or_insert(now);
            if available > 0 {
                s.available_at.entry(tenant).or_insert(now);
            }
        }
    })
}

/// `<label> (every client): <total>; <verb resource> <n>, ...`: the
/// apiserver's requests between two readings, largest first (no WATCHes).
fn print_apiserver_requests(
    label: &str,
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) {
    let mut all: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or_default()))
        .filter(|(k, v)| *v > 0.0 && !k.starts_with("WATCH"))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = all.iter().map(|a| a.1).sum();
    let top: Vec<String> = all
        .iter()
        .take(14)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("{label} (every client): {total}; {}", top.join(", "));
}

/// The next object of a watch, past its errors. kube-runtime's watcher
/// yields an error (a 410 "too old resource version" from a fresh CRD's
/// watch cache, a dropped connection) and then lists again, so an error is
/// not the end of the stream; stopping there would freeze the bench's clock.
async fn next_object<K>(
    stream: &mut (impl futures::Stream<Item = Result<K, watcher::Error>> + Unpin),
) -> Option<K> {
    loop {
        match stream.next().await? {
            Ok(object) => return Some(object),
            Err(e) => eprintln!("watch error, the watch lists again: {e}"),
        }
    }
}
