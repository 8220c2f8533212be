//! Releases under live chat traffic, on the real node. A fleet of WebSocket
//! clients (`CHORUS_E2E_RELEASE_CLIENTS`, default 200), in rooms of five,
//! connects through the tenant's Service and keeps sending (one message in
//! flight per client, retried with the same `client_msg_id` after a
//! reconnect) and reconnecting now and then (resuming by `last_seq`) while:
//!
//! - a canary walks its steps 0 -> 25% -> pause -> 50% -> waits, is promoted
//!   through `kubectl chorus promote`'s code path, cuts over and drains;
//!   then a second release at 50% is aborted through `kubectl chorus abort`;
//! - a candidate that never becomes ready (`localhost/chorus/pause:3.10`:
//!   it never listens, so its probes fail) aborts by itself;
//! - a candidate whose database session is read-only
//!   (`localhost/chorus/chat-runtime-read-only:0.1.0`, scripts/images.sh):
//!   ready, but PostgreSQL refuses its writes, so its sends really fail and
//!   its analysis aborts it (`AnalysisFailed`), as a canary and, promoted
//!   by blue-green, within the rollback window; and a healthy candidate
//!   whose analysis passes walks an analysis step to promotion.
//!
//! At the end every acknowledged message is in the database exactly once at
//! its acknowledged seq, and every client saw every acknowledged message of
//! its room exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chorus_e2e::{
    chat::{ChatSocket, Closed, reachable_service_url, request, signup},
    operator::{OperatorEnv, condition, secret_text},
    wait_for,
};
use chorus_operator::crd::{ChatTenant, ChatTenantStatus};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use kubectl_chorus::{Decision, decide};
use serde_json::json;
use tokio::{sync::Barrier, task::JoinHandle};

const T: Duration = Duration::from_secs(240);
const V1: &str = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
const V2: &str = "ghcr.io/chorus-dev/chat-runtime:0.2.0";
const V3: &str = "ghcr.io/chorus-dev/chat-runtime:0.3.0";
/// Exists on the node, never listens: probes fail, the pod never is ready.
const NEVER_READY: &str = "localhost/chorus/pause:3.10";
/// The runtime with `PGOPTIONS=-c default_transaction_read_only=on` in its
/// image: it starts and is ready, and every write fails in PostgreSQL.
const READ_ONLY: &str = "localhost/chorus/chat-runtime-read-only:0.1.0";
const ROOM_SIZE: usize = 5;

fn clients() -> usize {
    std::env::var("CHORUS_E2E_RELEASE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn jitter(i: usize, salt: u64, modulo: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (i, salt, Instant::now()).hash(&mut h);
    h.finish() % modulo.max(1)
}

/// What one client did and saw.
#[derive(Debug, Default)]
struct Log {
    room: i64,
    /// client_msg_id -> acknowledged seq.
    acked: BTreeMap<String, i64>,
    /// seq -> times a message event with it arrived.
    seen: BTreeMap<i64, usize>,
    reconnects: usize,
    closes_4000: usize,
    unrecovered: Vec<String>,
    servers: BTreeSet<String>,
}

struct Fleet {
    stop_sending: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Log>>,
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = chorus_e2e::Result<T>>,
{
    let mut last = String::new();
    for _ in 0..40 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: {last}");
}

/// POST with a bearer token; a non-200 answer is an error (retried by the
/// caller: kube-proxy may briefly refuse while it reprograms rules).
async fn post(
    url: &str,
    path: String,
    token: &str,
    body: Option<serde_json::Value>,
) -> chorus_e2e::Result<serde_json::Value> {
    let (status, answer) = request("POST", &format!("{url}{path}"), Some(token), body).await?;
    if status == 200 {
        Ok(answer)
    } else {
        Err(chorus_e2e::HarnessError::Manifest(format!(
            "POST {path}: HTTP {status} {answer}"
        )))
    }
}

/// Connects and subscribes (resuming from `last` when `epoch` is known).
async fn subscribe(
    url: &str,
    token: &str,
    room: i64,
    epoch: &mut Option<String>,
    last: i64,
    log: &mut Log,
) -> ChatSocket {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = async {
            let mut s = ChatSocket::connect(url, token).await?;
            let mut frame = json!({"type": "subscribe", "room": room});
            if let Some(e) = epoch.as_ref() {
                frame["epoch"] = json!(e);
                frame["last_seq"] = json!(last);
            }
            s.send(frame).await?;
            let sub = s.expect("subscribed", Duration::from_secs(10)).await?;
            Ok::<_, chorus_e2e::HarnessError>((s, sub))
        };
        match attempt.await {
            Ok((s, sub)) => {
                if epoch.is_some() && sub["recovered"] != true {
                    log.unrecovered.push(sub.to_string());
                }
                *epoch = sub["epoch"].as_str().map(str::to_string);
                if let Some(server) = s.hello["server"].as_str() {
                    log.servers.insert(server.to_string());
                }
                return s;
            }
            // The Service may still route to a draining pod (503) for a
            // moment: try again.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("could not (re)connect to room {room}: {e}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    url: String,
    token: String,
    room: i64,
    barrier: Arc<Barrier>,
    stop_sending: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
) -> Log {
    let mut log = Log {
        room,
        ..Log::default()
    };
    let mut epoch = None;
    let mut last = 0i64;
    let mut socket = subscribe(&url, &token, room, &mut epoch, last, &mut log).await;
    barrier.wait().await;
    let mut k = 0u64;
    let mut pending: Option<(String, Instant)> = None;
    let mut next_send = Instant::now() + Duration::from_millis(jitter(i, 0, 2000));
    let mut next_churn = Instant::now() + Duration::from_secs(20 + jitter(i, 1, 20));
    let send = |id: &str| json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("message {id}")});
    while !finish.load(Ordering::Relaxed) {
        let now = Instant::now();
        if pending.is_none() && !stop_sending.load(Ordering::Relaxed) && now >= next_send {
            k += 1;
            let id = format!("c{i}-{k}");
            let _ = socket.send(send(&id)).await;
            pending = Some((id, now));
        } else if let Some((id, at)) = pending.as_mut()
            && now.duration_since(*at) > Duration::from_secs(15)
        {
            // No answer: send again, same client_msg_id (idempotent).
            let _ = socket.send(send(id)).await;
            *at = now;
        }
        let mut reconnect = false;
        if now >= next_churn && pending.is_none() {
            // Clients come and go (closing as a browser does): reconnect
            // (through the Service, to any pod it selects now) and resume.
            next_churn = now + Duration::from_secs(20 + jitter(i, 2, 20));
            socket.close().await;
            log.reconnects += 1;
            socket = subscribe(&url, &token, room, &mut epoch, last, &mut log).await;
            continue;
        } else {
            match socket.next_frame(Duration::from_millis(200)).await {
                Ok(v) => match v["type"].as_str() {
                    Some("event") if v["room"] == room => {
                        let seq = v["seq"].as_i64().unwrap_or(0);
                        last = last.max(seq);
                        if v["kind"] == "message" {
                            *log.seen.entry(seq).or_default() += 1;
                        }
                    }
                    Some("ack") => {
                        if let Some((id, _)) = &pending
                            && v["client_msg_id"].as_str() == Some(id.as_str())
                        {
                            log.acked.insert(id.clone(), v["seq"].as_i64().unwrap_or(0));
                            pending = None;
                            next_send =
                                Instant::now() + Duration::from_millis(1500 + jitter(i, k, 1000));
                        }
                    }
                    Some("error") => {
                        // rate_limited, internal: retry the send soon.
                        if let Some((_, at)) = pending.as_mut() {
                            *at = Instant::now() - Duration::from_secs(14);
                        }
                    }
                    _ => {}
                },
                Err(Closed::Idle) => {}
                Err(c) => {
                    if c == Closed::Code(4000) {
                        log.closes_4000 += 1;
                    }
                    reconnect = true;
                }
            }
        }
        if reconnect {
            log.reconnects += 1;
            socket = subscribe(&url, &token, room, &mut epoch, last, &mut log).await;
            if let Some((id, at)) = pending.as_mut() {
                let _ = socket.send(send(id)).await;
                *at = Instant::now();
            }
        }
    }
    socket.close().await;
    log
}

impl Fleet {
    /// Signs `n` users up, puts them in rooms of [`ROOM_SIZE`], connects
    /// and subscribes all of them, then lets them send.
    async fn start(url: &str, n: usize) -> Fleet {
        let started = Instant::now();
        let tokens: Vec<String> = stream::iter(0..n)
            .map(|i| {
                let url = url.to_string();
                let user = format!("user{i}");
                async move { retry("signup", || signup(&url, &user)).await }
            })
            .buffered(4)
            .collect()
            .await;
        let groups: Vec<Vec<usize>> = (0..n)
            .step_by(ROOM_SIZE)
            .map(|g| (g..(g + ROOM_SIZE).min(n)).collect())
            .collect();
        let rooms: Vec<(Vec<usize>, i64)> = stream::iter(groups)
            .map(|members| {
                let (url, tokens) = (url.to_string(), tokens.clone());
                async move {
                    let owner = &tokens[members[0]];
                    let body = json!({"name": format!("room{}", members[0]), "kind": "public"});
                    let room = retry("create a room", || {
                        post(&url, "/api/v1/rooms".into(), owner, Some(body.clone()))
                    })
                    .await;
                    let room = room["room"]["id"].as_i64().unwrap();
                    for m in &members[1..] {
                        retry("join a room", || {
                            post(
                                &url,
                                format!("/api/v1/rooms/{room}/join"),
                                &tokens[*m],
                                None,
                            )
                        })
                        .await;
                    }
                    (members, room)
                }
            })
            .buffered(8)
            .collect()
            .await;
        let stop_sending = Arc::new(AtomicBool::new(false));
        let finish = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(Barrier::new(n + 1));
        let mut tasks = Vec::new();
        for (members, room) in rooms {
            for i in members {
                tasks.push(tokio::spawn(client(
                    i,
                    url.to_string(),
                    tokens[i].clone(),
                    room,
                    barrier.clone(),
                    stop_sending.clone(),
                    finish.clone(),
                )));
            }
        }
        barrier.wait().await;
        tracing::info!(
            clients = n,
            secs = started.elapsed().as_secs(),
            "fleet connected"
        );
        Fleet {
            stop_sending,
            finish,
            tasks,
        }
    }

    /// Stops sending, lets answers and events arrive, collects the logs.
    async fn stop(self) -> Vec<Log> {
        self.stop_sending.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(15)).await;
        self.finish.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for t in self.tasks {
            logs.push(t.await.unwrap());
        }
        logs
    }
}

/// Every acknowledged message is in the database exactly once at its seq;
/// every client saw every acknowledged message of its room exactly once.
/// Returns (acknowledged messages, reconnects, 4000 closes, servers).
async fn verify(env: &OperatorEnv, logs: &[Log]) -> (usize, usize, usize, BTreeSet<String>) {
    // As the admin: the tenant's own role may have all its connections in
    // use by the pods.
    let db = secret_text(&env.client, &env.ns, "acme-db", "dbname")
        .await
        .unwrap()
        .unwrap();
    let uri = chorus_e2e::with_database(&chorus_e2e::database_admin_url().unwrap(), &db);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&uri)
        .await
        .unwrap();
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT room_id, seq, client_msg_id FROM messages")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut stored: BTreeMap<(i64, String), Vec<i64>> = BTreeMap::new();
    for (room, seq, id) in rows {
        stored.entry((room, id)).or_default().push(seq);
    }
    let mut by_room: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let (mut acked, mut reconnects, mut closes) = (0, 0, 0);
    let mut servers = BTreeSet::new();
    for log in logs {
        assert!(
            log.unrecovered.is_empty(),
            "a resume was not recovered: {:?}",
            log.unrecovered
        );
        for (id, seq) in &log.acked {
            assert_eq!(
                stored.get(&(log.room, id.clone())),
                Some(&vec![*seq]),
                "acknowledged message {id} (seq {seq}) must be in history exactly once"
            );
            by_room.entry(log.room).or_default().insert(*seq);
        }
        acked += log.acked.len();
        reconnects += log.reconnects;
        closes += log.closes_4000;
        servers.extend(log.servers.iter().cloned());
    }
    for log in logs {
        for seq in by_room.get(&log.room).into_iter().flatten() {
            assert_eq!(
                log.seen.get(seq),
                Some(&1),
                "room {}: acknowledged seq {seq} must reach every client exactly once",
                log.room
            );
        }
        assert!(
            log.seen.values().all(|n| *n == 1),
            "room {}: a message arrived twice: {:?}",
            log.room,
            log.seen.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
        );
    }
    (acked, reconnects, closes, servers)
}

async fn merge(api: &Api<ChatTenant>, patch: serde_json::Value) {
    api.patch("acme", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn wait_status(
    api: &Api<ChatTenant>,
    what: &str,
    check: impl Fn(&ChatTenantStatus) -> bool,
) -> ChatTenantStatus {
    let check = &check;
    wait_for(what, T, || {
        let api = api.clone();
        async move {
            let st = *api.get("acme").await.ok()?.status?;
            check(&st).then_some(st)
        }
    })
    .await
    .unwrap()
}

fn progressing(st: &ChatTenantStatus) -> (String, String) {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

async fn replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get(name).await.unwrap().spec.unwrap().replicas.unwrap()
}

async fn wait_slot_empty(env: &OperatorEnv, slot: &str) {
    let pods = env.api::<Pod>();
    let selector = format!("chorus.dev/tenant=acme,chorus.dev/slot={slot}");
    wait_for(&format!("slot {slot} without pods"), T, || {
        let (pods, selector) = (pods.clone(), selector.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        }
    })
    .await
    .unwrap();
}

/// What a fleet's run came to, after [`verify`].
struct Traffic {
    /// Sockets closed with the reconnect code 4000 (drains).
    closes: usize,
    /// The pods that served the clients.
    servers: BTreeSet<String>,
}

/// Lets the old pods go ([`wait_slot_empty`] plus 5 s for the clients to
/// move), stops the fleet, checks its logs against the database
/// ([`verify`]), logs the figures under `label` and asserts that the `n`
/// clients got more than `per_client` acknowledged messages each on average.
async fn finish(
    env: &OperatorEnv,
    fleet: Fleet,
    gone_slot: &str,
    n: usize,
    per_client: usize,
    label: &str,
) -> Traffic {
    wait_slot_empty(env, gone_slot).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let logs = fleet.stop().await;
    let (acked, reconnects, closes, servers) = verify(env, &logs).await;
    tracing::info!(clients = n, acked, reconnects, closes_4000 = closes, servers = ?servers, "{label} traffic");
    assert!(
        acked > n * per_client,
        "{label}: {acked} messages acknowledged by {n} clients"
    );
    Traffic { closes, servers }
}

/// The message of the one Event with `reason`; fails unless there is
/// exactly one.
fn sole_event<'a>(events: &'a [(String, String)], reason: &str) -> &'a str {
    let found: Vec<_> = events.iter().filter(|(r, _)| r == reason).collect();
    assert_eq!(found.len(), 1, "one {reason} Event: {events:?}");
    &found[0].1
}

async fn serving_slot(env: &OperatorEnv) -> Option<String> {
    env.api::<Service>()
        .get("acme")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap()
        .get("chorus.dev/slot")
        .cloned()
}

/// Raises the role's connection limit to 200 and waits until PostgreSQL has
/// it. With the default 50, four pods (pool 16 each) plus a candidate slot
/// exhaust the role under load; the runtime then fails its epoch query and
/// sends `epoch_changed` to resuming clients (a runtime issue, outside the
/// rollout under test).
async fn raise_connection_limit(env: &OperatorEnv) {
    env.api::<ChatTenant>()
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"database": {"connectionLimit": 200}}})),
        )
        .await
        .unwrap();
    let db = secret_text(&env.client, &env.ns, "acme-db", "dbname")
        .await
        .unwrap()
        .unwrap();
    let admin = chorus_e2e::database_admin_url().unwrap();
    wait_for("connection limit 200", T, || {
        let (admin, db) = (admin.clone(), db.clone());
        async move {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                .await
                .ok()?;
            let (limit,): (i32,) =
                sqlx::query_as("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
                    .bind(&db)
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
            (limit == 200).then_some(())
        }
    })
    .await
    .unwrap();
}

fn tenant_extra(rollout: &str) -> String {
    // Grace 25 s: a drained pod closes its sockets over 10 s. 512Mi: the
    // fleet's signups hash passwords (argon2) several at a time.
    format!(
        "  runtime: {{image: \"{V1}\", replicas: 4, terminationGracePeriodSeconds: 25, resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 512Mi}}}}}}\n  rollout: {rollout}"
    )
}

#[tokio::test]
async fn canary_steps_promote_and_an_aborted_release_under_live_clients() {
    let env = OperatorEnv::new("release", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant("acme", &tenant_extra("{drainSeconds: 20}"))
        .await
        .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients();
    let fleet = Fleet::start(&url, n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();

    // Release 1: 25% -> pause 10 s -> 50% -> wait for promotion.
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": V2}, "canary": {"steps": [
            {"setWeight": 25}, {"pause": {"durationSeconds": 10}}, {"setWeight": 50}, {"pause": {}}
        ]}}}}),
    )
    .await;
    let at25 = wait_status(&cts, "step 2/4 at 25%", |s| {
        s.release.as_ref().and_then(|r| r.step.as_deref()) == Some("2/4")
    })
    .await;
    assert_eq!(at25.traffic.unwrap().canary_weight, 25);
    assert!(at25.release.unwrap().pause_until.is_some());
    assert_eq!(
        (
            replicas(&deps, "acme-blue").await,
            replicas(&deps, "acme-green").await
        ),
        (3, 1)
    );
    let at50 = wait_status(&cts, "step 4/4 at 50%, waiting", |s| {
        s.release.as_ref().and_then(|r| r.step.as_deref()) == Some("4/4")
            && s.conditions
                .iter()
                .any(|c| c.type_ == "AwaitingPromotion" && c.status == "True")
    })
    .await;
    assert_eq!(at50.traffic.unwrap().canary_weight, 50);
    let first = at50.release.unwrap();
    assert_eq!(first.number, 1);

    // Promote through the plugin's code path.
    let said = decide(&cts, "acme", Decision::Promote).await.unwrap();
    assert!(said.contains(&first.revision), "{said}");
    let promoted = wait_status(&cts, "release 1 promoted", |s| {
        progressing(s) == ("False".into(), "Promoted".into())
    })
    .await;
    assert_eq!(promoted.stable.unwrap().slot, "green");
    assert_eq!(serving_slot(&env).await.as_deref(), Some("green"));
    // The old slot drains for 20 s, then goes to zero.
    wait_for("blue scaled to zero after the drain", T, || {
        let deps = deps.clone();
        async move { (replicas(&deps, "acme-blue").await == 0).then_some(()) }
    })
    .await
    .unwrap();
    wait_slot_empty(&env, "blue").await;
    merge(
        &cts,
        json!({"spec": {"runtime": {"image": V2}, "rollout": {"candidate": null, "canary": null}}}),
    )
    .await;
    wait_status(&cts, "release 1 finished", |s| {
        progressing(s) == ("False".into(), "Complete".into())
    })
    .await;

    // Release 2: 0.3.0 at 50%, clients move onto it, then it is aborted.
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": V3}, "canary": {"weight": 50}}}}),
    )
    .await;
    let second = wait_status(&cts, "release 2 with 2 candidate pods available", |s| {
        s.candidate
            .as_ref()
            .is_some_and(|c| c.image == V3 && c.available_replicas == 2)
    })
    .await
    .release
    .unwrap();
    assert_eq!(second.number, 2);
    assert_ne!(second.revision, first.revision);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let said = decide(&cts, "acme", Decision::Abort).await.unwrap();
    assert!(said.contains(&second.revision), "{said}");
    let aborted = wait_status(&cts, "release 2 aborted", |s| {
        progressing(s) == ("False".into(), "Aborted".into())
    })
    .await;
    assert_eq!(aborted.traffic.unwrap().canary_weight, 0);
    assert_eq!(serving_slot(&env).await.as_deref(), Some("green"));
    assert_eq!(replicas(&deps, "acme-blue").await, 0);
    assert_eq!(replicas(&deps, "acme-green").await, 4);
    let traffic = finish(&env, fleet, "blue", n, 10, "release").await;
    let (closes, servers) = (traffic.closes, traffic.servers);
    assert!(closes > 0, "drains closed sockets with the reconnect code");
    for (prefix, what) in [
        ("acme-green-", "release 1 candidate / new stable"),
        ("acme-blue-", "old stable / release 2 candidate"),
    ] {
        assert!(
            servers.iter().any(|s| s.starts_with(prefix)),
            "no client was served by {what}: {servers:?}"
        );
    }

    // Each release's Events name it; nothing is folded into another.
    let events = env.events("acme").await.unwrap();
    let has = |reason: &str, text: &str| {
        events
            .iter()
            .any(|(r, m)| r == reason && m.starts_with(text))
    };
    assert!(
        has(
            "ReleaseStarted",
            "release 1: candidate ghcr.io/chorus-dev/chat-runtime:0.2.0"
        ),
        "{events:?}"
    );
    assert!(
        has(
            "ReleaseStarted",
            "release 2: candidate ghcr.io/chorus-dev/chat-runtime:0.3.0"
        ),
        "{events:?}"
    );
    assert!(has("Promoted", "release 1: "), "{events:?}");
    assert!(has("Aborted", "release 2: "), "{events:?}");
    assert!(has("CanaryStep", "release 1: step 4/4"), "{events:?}");
    env.stop().await;
}

#[tokio::test]
async fn a_candidate_that_never_becomes_ready_aborts_by_itself_under_live_clients() {
    let env = OperatorEnv::new("release-auto", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant(
        "acme",
        &tenant_extra("{drainSeconds: 20, progressDeadlineSeconds: 30}"),
    )
    .await
    .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients();
    let fleet = Fleet::start(&url, n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();

    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": NEVER_READY}, "canary": {"weight": 50}}}}),
    )
    .await;
    wait_for("two candidate pods requested", T, || {
        let deps = deps.clone();
        async move { (replicas(&deps, "acme-green").await == 2).then_some(()) }
    })
    .await
    .unwrap();
    // Nothing of the candidate is available: stable keeps its capacity.
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    let st = wait_status(&cts, "automatic abort", |s| {
        progressing(s) == ("False".into(), "CandidateUnhealthy".into())
    })
    .await;
    let ct = cts.get("acme").await.unwrap();
    let message = condition(&ct, "Progressing").unwrap().message;
    assert!(
        message.contains("acme-green-") && message.contains("progressDeadlineSeconds 30"),
        "{message}"
    );
    assert_eq!(st.traffic.unwrap().canary_weight, 0);
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    assert_eq!(replicas(&deps, "acme-green").await, 0);
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    let events = env.events("acme").await.unwrap();
    let unhealthy = sole_event(&events, "CandidateUnhealthy");
    assert!(
        unhealthy.contains("acme-green-") && unhealthy.contains("not ready"),
        "the Event names the pods and the cause: {unhealthy}"
    );
    finish(&env, fleet, "green", n, 5, "automatic abort").await;
    env.stop().await;
}

#[tokio::test]
async fn blue_green_preview_promote_and_rollback_within_the_drain_window() {
    let env = OperatorEnv::new("release-bg", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant(
        "acme",
        &tenant_extra("{strategy: BlueGreen, blueGreen: {previewReplicas: 1}, drainSeconds: 300}"),
    )
    .await
    .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients() / 4;
    let fleet = Fleet::start(&url, n).await;
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();

    // Preview: one candidate pod behind acme-preview, no traffic.
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": V2}}}}),
    )
    .await;
    let preview = wait_status(&cts, "preview pod available", |s| {
        s.candidate
            .as_ref()
            .is_some_and(|c| c.image == V2 && c.available_replicas == 1)
    })
    .await;
    assert_eq!(progressing(&preview).1, "PreviewInProgress");
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    let preview_url = reachable_service_url(&env.client, &env.ns, "acme-preview", "http")
        .await
        .unwrap();
    let (status, _) = request("GET", &format!("{preview_url}/"), None, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "the preview Service serves the candidate");

    // Promote: green scales to 4, then takes over; blue keeps its 4 pods.
    decide(&cts, "acme", Decision::Promote).await.unwrap();
    wait_status(&cts, "cut-over", |s| {
        progressing(s) == ("False".into(), "Promoted".into())
    })
    .await;
    assert_eq!(serving_slot(&env).await.as_deref(), Some("green"));
    assert_eq!(
        (
            replicas(&deps, "acme-green").await,
            replicas(&deps, "acme-blue").await
        ),
        (4, 4)
    );
    // Long enough for reconnecting clients to land on green.
    tokio::time::sleep(Duration::from_secs(30)).await;

    // Roll back within the window: traffic is on blue again at once.
    decide(&cts, "acme", Decision::Abort).await.unwrap();
    let rolled = wait_status(&cts, "rollback", |s| {
        progressing(s) == ("False".into(), "RolledBack".into())
    })
    .await;
    assert_eq!(rolled.stable.unwrap().slot, "blue");
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    assert_eq!(replicas(&deps, "acme-green").await, 0);
    let servers = finish(&env, fleet, "green", n, 0, "blue-green")
        .await
        .servers;
    assert!(
        servers.iter().any(|s| s.starts_with("acme-green-")),
        "clients reached the new slot after the cut-over: {servers:?}"
    );
    let events = env.events("acme").await.unwrap();
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "RolledBack" && m.starts_with("release 1: ")),
        "{events:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn an_abort_wins_over_a_promotion_waiting_for_pods_that_never_come() {
    let env = OperatorEnv::new("release-abort", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant("acme", &tenant_extra("{drainSeconds: 20}"))
        .await
        .unwrap();
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": NEVER_READY}, "canary": {"weight": 25}}}}),
    )
    .await;
    wait_status(&cts, "canary started", |s| {
        s.release.is_some() && progressing(s).1 == "CanaryInProgress"
    })
    .await;
    decide(&cts, "acme", Decision::Promote).await.unwrap();
    wait_status(&cts, "promoting", |s| progressing(s).1 == "Promoting").await;
    wait_for("candidate scaled to 4", T, || {
        let deps = deps.clone();
        async move { (replicas(&deps, "acme-green").await == 4).then_some(()) }
    })
    .await
    .unwrap();
    // Both fields now name the same release: the abort wins.
    decide(&cts, "acme", Decision::Abort).await.unwrap();
    let st = wait_status(&cts, "aborted", |s| {
        progressing(s) == ("False".into(), "Aborted".into())
    })
    .await;
    assert_eq!(st.traffic.unwrap().canary_weight, 0);
    assert_eq!(st.stable.unwrap().slot, "blue");
    assert_eq!(replicas(&deps, "acme-green").await, 0);
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    wait_slot_empty(&env, "green").await;
    env.stop().await;
}

#[tokio::test]
async fn canary_steps_are_checked_at_admission() {
    let client = chorus_e2e::admin_client().await.unwrap();
    chorus_e2e::operator::install_crd(&client).await.unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client, "default");
    let refused = |rollout: serde_json::Value| {
        let api = api.clone();
        async move {
            let ct: ChatTenant = serde_json::from_value(json!({
                "apiVersion": "chorus.dev/v1alpha1", "kind": "ChatTenant",
                "metadata": {"name": "steps-check"},
                "spec": {"tenantId": "steps", "runtime": {"image": V1},
                    "database": {"serverRef": {"name": "pg"}, "name": "chat_steps"},
                    "rollout": rollout}
            }))
            .unwrap();
            let params = kube::api::PostParams {
                dry_run: true,
                ..Default::default()
            };
            match api.create(&params, &ct).await {
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        }
    };
    let both = refused(json!({"candidate": {"image": V2},
        "canary": {"steps": [{"setWeight": 10, "pause": {}}]}}))
    .await;
    assert!(
        both.as_deref()
            .is_some_and(|e| e.contains("set exactly one of setWeight, pause or analysis")),
        "{both:?}"
    );
    let mixed = refused(json!({"candidate": {"image": V2},
        "canary": {"weight": 10, "steps": [{"setWeight": 10}]}}))
    .await;
    assert!(
        mixed
            .as_deref()
            .is_some_and(|e| e.contains("set either weight or steps")),
        "{mixed:?}"
    );
    let fine = refused(json!({"candidate": {"image": V2, "attempt": 2},
        "progressDeadlineSeconds": 60, "maxRestarts": 1,
        "canary": {"steps": [{"setWeight": 10}, {"pause": {"durationSeconds": 30}}, {"pause": {}}]}}))
    .await;
    assert_eq!(fine, None);
    // Analysis: its steps need its thresholds; each threshold names itself.
    let step_alone = refused(json!({"candidate": {"image": V2},
        "canary": {"steps": [{"setWeight": 10}, {"analysis": {"passes": 2}}]}}))
    .await;
    assert!(
        step_alone.as_deref().is_some_and(
            |e| e.contains("spec.rollout.canary.steps[].analysis needs spec.rollout.analysis")
        ),
        "{step_alone:?}"
    );
    for (analysis, field) in [
        (json!({"maxErrorRatio": 1.5}), "maxErrorRatio"),
        (json!({"intervalSeconds": 1}), "intervalSeconds"),
        (
            json!({"maxAckP99Seconds": 0}),
            "spec.rollout.analysis.maxAckP99Seconds must be above 0",
        ),
        (
            json!({"maxAckP99Ratio": 0.5}),
            "spec.rollout.analysis.maxAckP99Ratio must be at least 1",
        ),
        (json!({"failureLimit": 0}), "failureLimit"),
    ] {
        let bad = refused(json!({"candidate": {"image": V2}, "analysis": analysis})).await;
        assert!(
            bad.as_deref().is_some_and(|e| e.contains(field)),
            "{analysis}: {bad:?}"
        );
    }
    let analysed = refused(json!({"candidate": {"image": V2},
        "analysis": {"intervalSeconds": 10, "maxErrorRatio": 0.01, "maxAckP99Seconds": 0.25,
            "maxAckP99Ratio": 2, "minSamples": 50, "failureLimit": 3},
        "canary": {"steps": [{"setWeight": 10}, {"analysis": {}}, {"analysis": {"passes": 3}}]}}))
    .await;
    assert_eq!(analysed, None);
}

/// Analysis every 10 s (the operator looks every 10 s); two failing
/// intervals abort.
const ANALYSIS: &str =
    "analysis: {intervalSeconds: 10, maxErrorRatio: 0.05, minSamples: 20, failureLimit: 2}";

#[tokio::test]
async fn a_candidate_whose_sends_fail_is_aborted_by_its_analysis_under_live_clients() {
    let env = OperatorEnv::new("release-analysis", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant(
        "acme",
        &tenant_extra(&format!("{{drainSeconds: 20, {ANALYSIS}}}")),
    )
    .await
    .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients();
    let fleet = Fleet::start(&url, n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();

    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": READ_ONLY}, "canary": {"weight": 50}}}}),
    )
    .await;
    // The candidate comes up (its probes pass: reads work) and takes
    // reconnecting clients, whose sends fail.
    wait_for("the candidate's pods available", T, || {
        let deps = deps.clone();
        async move {
            let d = deps.get("acme-green").await.ok()?;
            (d.status?.available_replicas.unwrap_or(0) >= 2).then_some(())
        }
    })
    .await
    .unwrap();
    let st = wait_status(&cts, "the end of the release", |s| {
        matches!(
            progressing(s).1.as_str(),
            "AnalysisFailed" | "CandidateUnhealthy" | "Aborted" | "Promoted"
        )
    })
    .await;
    assert_eq!(
        progressing(&st),
        ("False".into(), "AnalysisFailed".into()),
        "{st:#?}"
    );
    let analysis = st.analysis.clone().unwrap();
    assert_eq!(analysis.phase, "Fail", "{analysis:#?}");
    assert!(analysis.consecutive_failures >= 2, "{analysis:#?}");
    assert!(
        analysis.error_ratio.unwrap() > 0.05 && analysis.samples >= 20,
        "{analysis:#?}"
    );
    let ct = cts.get("acme").await.unwrap();
    let message = condition(&ct, "Progressing").unwrap().message;
    assert!(
        message.contains("analysis failed 2 intervals in a row (failureLimit 2)")
            && message.contains("failed sends")
            && message.contains("maxErrorRatio 0.05"),
        "{message}"
    );
    assert!(
        kubectl_chorus::render_status(&ct).contains("analysis  release 1 Fail"),
        "{}",
        kubectl_chorus::render_status(&ct)
    );
    assert_eq!(st.traffic.unwrap().canary_weight, 0);
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    assert_eq!(replicas(&deps, "acme-green").await, 0);
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    let events = env.events("acme").await.unwrap();
    let failed = sole_event(&events, "AnalysisFailed");
    assert!(
        failed.contains("error ratio") && failed.contains("failed sends"),
        "the Event carries the figures: {failed}"
    );
    tracing::info!(analysis = ?analysis, "aborted by analysis");
    finish(&env, fleet, "green", n, 5, "analysis abort").await;
    env.stop().await;
}

#[tokio::test]
async fn a_passing_analysis_step_lets_a_canary_promote_under_live_clients() {
    let env = OperatorEnv::new("release-analysis-ok", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant(
        "acme",
        &tenant_extra(&format!("{{drainSeconds: 30, {ANALYSIS}}}")),
    )
    .await
    .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients();
    let fleet = Fleet::start(&url, n).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cts = env.api::<ChatTenant>();

    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": V2}, "canary": {"steps": [
            {"setWeight": 50}, {"analysis": {"passes": 2}}
        ]}}}}),
    )
    .await;
    let st = wait_status(&cts, "the analysis step", |s| {
        s.release.as_ref().and_then(|r| r.step.as_deref()) == Some("2/2")
    })
    .await;
    assert_eq!(progressing(&st).1, "CanaryInProgress");
    let st = wait_status(&cts, "the end of the release", |s| {
        matches!(
            progressing(s).1.as_str(),
            "AnalysisFailed" | "CandidateUnhealthy" | "Aborted" | "Promoted"
        )
    })
    .await;
    assert_eq!(progressing(&st).1, "Promoted", "{st:#?}");
    let analysis = st.analysis.clone().unwrap();
    assert_eq!(analysis.phase, "Pass", "{analysis:#?}");
    assert!(analysis.consecutive_passes >= 2, "{analysis:#?}");
    assert!(
        analysis.error_ratio.unwrap() <= 0.05 && analysis.samples >= 20,
        "{analysis:#?}"
    );
    assert_eq!(serving_slot(&env).await.as_deref(), Some("green"));
    // The rollback window: still measured, still passing.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let st = cts.get("acme").await.unwrap().status.unwrap();
    assert_eq!(progressing(&st).1, "Promoted", "{st:#?}");
    let events = env.events("acme").await.unwrap();
    assert!(
        events.iter().all(|(r, _)| r != "AnalysisFailed"),
        "{events:?}"
    );
    assert!(events.iter().any(|(r, _)| r == "Promoted"), "{events:?}");
    tracing::info!(analysis = ?st.analysis, "promoted after a passing analysis");
    merge(
        &cts,
        json!({"spec": {"runtime": {"image": V2}, "rollout": {"candidate": null, "canary": null}}}),
    )
    .await;
    finish(&env, fleet, "blue", n, 5, "analysis promotion").await;
    env.stop().await;
}

#[tokio::test]
async fn a_promoted_release_whose_sends_fail_rolls_back_by_its_analysis_within_the_window() {
    let env = OperatorEnv::new("release-analysis-bg", Duration::from_secs(300))
        .await
        .unwrap();
    env.ready_tenant(
        "acme",
        &tenant_extra(&format!(
            "{{strategy: BlueGreen, blueGreen: {{previewReplicas: 1}}, drainSeconds: 300, {ANALYSIS}}}"
        )),
    )
    .await
    .unwrap();
    raise_connection_limit(&env).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let n = clients() / 2;
    let fleet = Fleet::start(&url, n).await;
    let cts = env.api::<ChatTenant>();
    let deps = env.api::<Deployment>();

    // The preview takes no traffic: its intervals are inconclusive.
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": READ_ONLY}}}}),
    )
    .await;
    wait_status(&cts, "preview pod available", |s| {
        s.candidate
            .as_ref()
            .is_some_and(|c| c.image == READ_ONLY && c.available_replicas == 1)
    })
    .await;
    decide(&cts, "acme", Decision::Promote).await.unwrap();
    wait_status(&cts, "cut-over", |s| {
        progressing(s) == ("False".into(), "Promoted".into())
    })
    .await;
    assert_eq!(serving_slot(&env).await.as_deref(), Some("green"));
    // Reconnecting clients land on green and their sends fail; the
    // analysis moves traffic back to blue, which still has its pods.
    let st = wait_status(&cts, "the end of the rollback window", |s| {
        progressing(s).1 != "Promoted"
    })
    .await;
    assert_eq!(
        progressing(&st),
        ("False".into(), "AnalysisFailed".into()),
        "{st:#?}"
    );
    let message = condition(&cts.get("acme").await.unwrap(), "Progressing")
        .unwrap()
        .message;
    assert!(
        message.contains("analysis failed 2 intervals in a row")
            && message.contains("after the cut-over, within the rollback window"),
        "{message}"
    );
    assert_eq!(st.stable.clone().unwrap().slot, "blue");
    assert_eq!(serving_slot(&env).await.as_deref(), Some("blue"));
    assert_eq!(replicas(&deps, "acme-blue").await, 4);
    assert_eq!(replicas(&deps, "acme-green").await, 0);
    tracing::info!(analysis = ?st.analysis, "rolled back by analysis");
    let events = env.events("acme").await.unwrap();
    assert!(events.iter().any(|(r, _)| r == "Promoted"), "{events:?}");
    sole_event(&events, "AnalysisFailed");
    let servers = finish(&env, fleet, "green", n, 5, "analysis rollback")
        .await
        .servers;
    assert!(
        servers.iter().any(|s| s.starts_with("acme-green-")),
        "clients reached the new slot after the cut-over: {servers:?}"
    );
    env.stop().await;
}
