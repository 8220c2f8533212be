//! Two replicas over a real nats-server (`CHAT_BROKER=nats`): clients on
//! both, sends on both; every acked message reaches every reader exactly once
//! and in order, and restarting nats-server mid-run loses nothing (NATS core
//! is at-most-once; the replicas catch up from PostgreSQL).
//!
//! The server binary comes from `CHORUS_NATS_SERVER` (`make test` builds it
//! with scripts/build-tools.sh and sets it); the suite fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::json;
use support::{
    Next, Replica, ReplicaOpts, Ws, fresh_db, join, metric, public_room, signup, unique,
};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(10);

/// A nats-server child process on a fixed loopback port (kept across a
/// restart, so clients reconnect to the same URL).
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> Self {
        Self::spawn(port, &[]).await
    }

    /// A server that requires a login: `auth` are nats-server flags such as
    /// `--user U --pass P` or `--auth TOKEN`.
    async fn start_with_auth(auth: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::spawn(port, auth).await
    }

    async fn spawn(port: u16, extra: &[&str]) -> Self {
        let bin = std::env::var("CHORUS_NATS_SERVER").expect(
            "CHORUS_NATS_SERVER is not set: run the suites with `make test` (scripts/build-tools.sh builds nats-server)",
        );
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let deadline = Instant::now() + T;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server; returns once it is gone.
    async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Replica settings for NATS under `prefix`, logging in with `login`
/// (`CHAT_NATS_*` variables; empty for a server without authorization).
fn over_nats<'a>(url: &str, prefix: &str, login: &[(&'a str, &str)]) -> ReplicaOpts<'a> {
    let mut env = vec![
        ("CHAT_BROKER", "nats".into()),
        ("CHAT_NATS_URL", url.into()),
        ("CHAT_NATS_SUBJECT_PREFIX", prefix.into()),
        ("CHAT_MESSAGES_PER_SECOND", "1000".into()),
    ];
    env.extend(login.iter().map(|(k, v)| (*k, v.to_string())));
    ReplicaOpts {
        env,
        ..Default::default()
    }
}

/// A subscribed reader: the seqs it got, in arrival order.
struct Reader {
    ws: Ws,
    from: i64,
    seen: Vec<i64>,
    ids: Vec<String>,
}

impl Reader {
    async fn open(ws_url: &str, token: &str, room: i64) -> Self {
        let mut ws = Ws::connect(ws_url, token).await;
        let sub = ws.subscribe(room, None).await;
        assert_eq!(sub["type"], "subscribed", "{sub}");
        Self {
            ws,
            from: sub["last_seq"].as_i64().unwrap(),
            seen: vec![],
            ids: vec![],
        }
    }

    /// The next frame; message events are also recorded.
    async fn next(&mut self, timeout: Duration) -> Next {
        let next = self.ws.next(timeout).await;
        if let Next::Frame(f) = &next
            && f["type"] == "event"
            && f["kind"] == "message"
        {
            self.seen.push(f["seq"].as_i64().unwrap());
            self.ids
                .push(f["client_msg_id"].as_str().unwrap_or_default().to_string());
        }
        next
    }

    /// Reads until the event with `last` arrived (other frames skipped).
    async fn read_through(&mut self, last: i64, who: &str) {
        while self.seen.last().copied().unwrap_or(self.from) < last {
            match self.next(T).await {
                Next::Frame(_) => {}
                _ => panic!("{who} stalled at {:?} waiting for {last}", self.seen.last()),
            }
        }
    }
}

/// Pipelines `n` sends named `<name>-<i>` and returns their acks
/// (client_msg_id -> seq).
async fn send_all(
    ws: &mut Ws,
    room: i64,
    name: &str,
    range: std::ops::Range<usize>,
) -> BTreeMap<String, i64> {
    let ids: Vec<String> = range.map(|i| format!("{name}-{i}")).collect();
    for id in &ids {
        ws.send(json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": id}))
            .await;
    }
    let mut acked = BTreeMap::new();
    while acked.len() < ids.len() {
        match ws.next(T).await {
            Next::Frame(f) if f["type"] == "ack" => {
                assert_ne!(f["duplicate"], true, "{f}");
                acked.insert(
                    f["client_msg_id"].as_str().unwrap().to_string(),
                    f["seq"].as_i64().unwrap(),
                );
            }
            Next::Frame(f) if f["type"] == "error" => panic!("send refused: {f}"),
            Next::Frame(_) => {}
            _ => panic!("{name}: {} of {} acked", acked.len(), ids.len()),
        }
    }
    acked
}

/// Every reader got exactly the acked messages, each once, contiguous and
/// in seq order.
fn assert_exactly_once(readers: &[(&str, &Reader)], acked: &BTreeMap<String, i64>) {
    let last = *acked.values().max().unwrap();
    for (who, r) in readers {
        let expected: Vec<i64> = (r.from + 1..=last).collect();
        assert_eq!(r.seen, expected, "{who}: contiguous, each seq once");
        let by_seq: BTreeMap<i64, &String> = acked.iter().map(|(id, s)| (*s, id)).collect();
        for (seq, id) in r.seen.iter().zip(&r.ids) {
            assert_eq!(by_seq.get(seq), Some(&id), "{who}: seq {seq} is {id}");
        }
        let unique: BTreeSet<&String> = r.ids.iter().collect();
        assert_eq!(unique.len(), acked.len(), "{who}: every acked message");
    }
}

/// Sends `range` on both replicas at once, adds the acks to `acked`, checks
/// it now holds `total` messages and that both readers saw every one of them
/// exactly once, in order.
async fn send_on_both_and_check(
    s: &mut Setup,
    range: std::ops::Range<usize>,
    acked: &mut BTreeMap<String, i64>,
    total: usize,
) {
    let (from_a, from_b) = tokio::join!(
        send_all(&mut s.send_a, s.room, "a", range.clone()),
        send_all(&mut s.send_b, s.room, "b", range),
    );
    acked.extend(from_a);
    acked.extend(from_b);
    assert_eq!(acked.len(), total);
    let last = *acked.values().max().unwrap();
    s.read_a.read_through(last, "reader on A").await;
    s.read_b.read_through(last, "reader on B").await;
    assert_exactly_once(
        &[("reader on A", &s.read_a), ("reader on B", &s.read_b)],
        acked,
    );
}

/// Toggles `ws`'s presence until `watcher` (on another replica) sees it:
/// presence travels only through the broker, so this proves both replicas
/// are connected to NATS. Returns how long it took.
async fn presence_crosses(ws: &mut Ws, watcher: &mut Reader, within: Duration) -> Duration {
    let start = Instant::now();
    let mut away = true;
    while start.elapsed() < within {
        let status = if away { "away" } else { "online" };
        ws.send(json!({"type": "presence", "status": status})).await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            match watcher.next(Duration::from_millis(100)).await {
                Next::Frame(f) if f["type"] == "presence" && f["status"] == status => {
                    return start.elapsed();
                }
                Next::Frame(_) | Next::Timeout => {}
                Next::Closed(c) => panic!("watcher closed: {c:?}"),
            }
        }
        away = !away;
    }
    panic!("presence did not cross replicas over NATS within {within:?}");
}

/// The replica's `chat_broker_resyncs_total`.
async fn resyncs(r: &Replica) -> f64 {
    metric(&r.admin, "chat_broker_resyncs_total").await.unwrap()
}

/// Counts wake-up messages naming `room` on `<prefix>.wakeup`.
async fn count_wakeups(url: &str, prefix: &str, room: i64) -> tokio::task::JoinHandle<usize> {
    let client = async_nats::connect(url).await.unwrap();
    let mut sub = client.subscribe(format!("{prefix}.wakeup")).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let _client = client;
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            if text.split(',').any(|p| p.starts_with(&format!("{room}:"))) {
                n += 1;
            }
        }
        n
    })
}

/// Two replicas on one database and one NATS prefix; a room with a reader
/// and a sender on each replica.
struct Setup {
    a: Replica,
    b: Replica,
    room: i64,
    send_a: Ws,
    send_b: Ws,
    read_a: Reader,
    read_b: Reader,
}

async fn setup(url: &str, prefix: &str) -> Setup {
    setup_with(url, prefix, &[]).await
}

/// [`setup`] with the replicas logging in to NATS with `login`.
async fn setup_with(url: &str, prefix: &str, login: &[(&str, &str)]) -> Setup {
    let db = fresh_db().await;
    let a = Replica::start_with(&db, over_nats(url, prefix, login)).await;
    let b = Replica::start_with(&db, over_nats(url, prefix, login)).await;
    let owner = signup(&a.http, "owner").await;
    let room = public_room(&a.http, &owner, "nats").await;
    let mut tokens = Vec::new();
    for (name, replica) in [
        ("sender-a", &a),
        ("sender-b", &b),
        ("reader-a", &a),
        ("reader-b", &b),
    ] {
        let t = signup(&replica.http, name).await;
        join(&replica.http, &t, room).await;
        tokens.push(t);
    }
    let read_a = Reader::open(&a.ws, &tokens[2], room).await;
    let read_b = Reader::open(&b.ws, &tokens[3], room).await;
    let mut send_a = Ws::connect(&a.ws, &tokens[0]).await;
    let mut send_b = Ws::connect(&b.ws, &tokens[1]).await;
    send_a.subscribe(room, None).await;
    send_b.subscribe(room, None).await;
    Setup {
        a,
        b,
        room,
        send_a,
        send_b,
        read_a,
        read_b,
    }
}

#[tokio::test]
async fn two_replicas_over_nats_deliver_every_message_once_in_order() {
    let nats = NatsServer::start().await;
    let prefix = format!("chorus.t{}", unique().replace(['-', '.'], ""));
    let mut s = setup(&nats.url(), &prefix).await;
    let wakeups = count_wakeups(&nats.url(), &prefix, s.room).await;
    presence_crosses(&mut s.send_a, &mut s.read_b, T).await;

    // Sends on both replicas at once.
    send_on_both_and_check(&mut s, 0..150, &mut BTreeMap::new(), 300).await;

    // Wake-ups cross on NATS (not only the 1 s poll): one message at a time
    // from A reaches B's reader well under the poll interval (by the poll
    // alone, ten in a row under 600 ms would happen with p = 0.6^10 < 1%).
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let start = Instant::now();
        let one = send_all(&mut s.send_a, s.room, "single", i..i + 1).await;
        s.read_b
            .read_through(*one.values().next().unwrap(), "reader on B")
            .await;
        worst = worst.max(start.elapsed());
    }
    eprintln!("worst send-to-delivery across replicas over NATS: {worst:?}");
    assert!(worst < Duration::from_millis(600), "{worst:?}");
    let published = wakeups.await.unwrap();
    assert!(
        published > 0,
        "wake-ups for the room were published on {prefix}.wakeup"
    );
    drop((s.a, s.b));
}

#[tokio::test]
async fn restarting_nats_mid_run_loses_nothing() {
    let mut nats = NatsServer::start().await;
    let prefix = format!("chorus.t{}", unique().replace(['-', '.'], ""));
    let mut s = setup(&nats.url(), &prefix).await;
    presence_crosses(&mut s.send_a, &mut s.read_b, T).await;

    let mut acked = send_all(&mut s.send_a, s.room, "a", 0..50).await;
    acked.extend(send_all(&mut s.send_b, s.room, "b", 0..50).await);

    let before = [resyncs(&s.a).await, resyncs(&s.b).await];
    assert!(
        before.iter().all(|n| *n >= 1.0),
        "a catch-up once subscribed"
    );

    // NATS goes away; sends keep being acked (PostgreSQL holds them) and
    // reach the other replica's reader by the poll.
    nats.stop().await;
    let (from_a, from_b) = tokio::join!(
        send_all(&mut s.send_a, s.room, "a", 50..150),
        send_all(&mut s.send_b, s.room, "b", 50..150),
    );
    acked.extend(from_a);
    acked.extend(from_b);

    // NATS comes back on the same port: both replicas reconnect.
    let nats = NatsServer::start_on(nats.port).await;
    let took = presence_crosses(&mut s.send_a, &mut s.read_b, Duration::from_secs(30)).await;
    eprintln!("presence crossed again {took:?} after nats-server restarted");
    for (r, before) in [&s.a, &s.b].into_iter().zip(before) {
        let after = resyncs(r).await;
        assert!(
            after > before,
            "the reconnection triggered a catch-up read ({before} -> {after})"
        );
    }
    send_on_both_and_check(&mut s, 150..200, &mut acked, 400).await;
    drop((nats, s.a, s.b));
}

/// Whether `r` logged a NATS error naming an authorization problem.
fn refused_login(r: &Replica) -> bool {
    !r.log_lines(|v| {
        v["message"] == "NATS error"
            && v["event"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("authorization"))
    })
    .is_empty()
}

#[tokio::test]
async fn replicas_log_in_to_nats_with_a_password_or_a_token() {
    for (server_flags, login, wrong) in [
        (
            &["--user", "chat", "--pass", "s3cret-pw"][..],
            &[
                ("CHAT_NATS_USER", "chat"),
                ("CHAT_NATS_PASSWORD", "s3cret-pw"),
            ][..],
            &[("CHAT_NATS_USER", "chat"), ("CHAT_NATS_PASSWORD", "wrong")][..],
        ),
        (
            &["--auth", "s3cret-token"][..],
            &[("CHAT_NATS_TOKEN", "s3cret-token")][..],
            &[("CHAT_NATS_TOKEN", "wrong")][..],
        ),
    ] {
        let nats = NatsServer::start_with_auth(server_flags).await;
        let prefix = format!("chorus.t{}", unique().replace(['-', '.'], ""));
        let mut s = setup_with(&nats.url(), &prefix, login).await;
        presence_crosses(&mut s.send_a, &mut s.read_b, T).await;
        send_on_both_and_check(&mut s, 0..20, &mut BTreeMap::new(), 40).await;
        assert!(!refused_login(&s.a) && !refused_login(&s.b));

        // Wrong credentials: the replica still serves (messages are in
        // PostgreSQL) and says in its log why NATS refuses it.
        let db = fresh_db().await;
        let refused = Replica::start_with(&db, over_nats(&nats.url(), &prefix, wrong)).await;
        let deadline = Instant::now() + T;
        while !refused_login(&refused) {
            assert!(
                Instant::now() < deadline,
                "no NATS authorization error logged with {wrong:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop((s.a, s.b, refused, nats));
    }
}
