//! `chat-load`: starts a chat-runtime on a fresh database (loopback only),
//! drives it with WebSocket clients and prints figures: connections held,
//! server RSS per connection, send-to-deliver latency p50/p99, deliveries and
//! persisted messages per second, and gaps/duplicates seen (must be zero).
//!
//! ```text
//! chat-load --runtime target/release/chat-runtime --database-url postgres://... idle --connections 10000
//! chat-load ... fanout --members 1000 --rate 100 --seconds 30
//! chat-load ... throughput --rooms 100 --senders 200 --seconds 20
//! chat-load --centrifugo path/to/centrifugo fanout ...   # the same scenario against Centrifugo
//! ```
//!
//! The last line of every run is `result: scenario=... key=value ...`, for
//! `scripts/bench.sh` to put the two servers side by side.
//!
//! Every loop is bounded in count and time, and the tool stops by itself.

#![allow(clippy::print_stdout)] // a CLI that prints its report

mod client;
mod report;
mod server;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use client::{Client, Tracker};
use futures::StreamExt;
use report::Latencies;
use server::Runtime;

/// Connections set up at once in the idle scenario.
const PARALLEL: usize = 32;

#[derive(Parser)]
#[command(about = "Load generator for the Chorus chat runtime (loopback only)")]
struct Args {
    /// The chat-runtime binary to start.
    #[arg(long, required_unless_present = "centrifugo")]
    runtime: Option<String>,
    /// Admin URL of a PostgreSQL server; a fresh database is created on it.
    #[arg(
        long,
        env = "CHORUS_BENCH_DATABASE_URL",
        required_unless_present = "centrifugo"
    )]
    database_url: Option<String>,
    /// Run the scenario against this Centrifugo binary instead (memory
    /// engine, history on), for side-by-side figures.
    #[arg(long, conflicts_with = "runtime")]
    centrifugo: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle connections (each subscribed to one room); report RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// One room of M members; one sender at R messages/s; report delivery latency.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// S senders over R rooms sending as fast as acks come back; report persisted messages/s.
    Throughput {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 200)]
        senders: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Messages each sender keeps in flight.
        #[arg(long, default_value_t = 4)]
        window: usize,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("chat-load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let rt = match (&args.centrifugo, &args.runtime, &args.database_url) {
        (Some(bin), _, _) => Runtime::start_centrifugo(bin).await?,
        (None, Some(bin), Some(db)) => Runtime::start(bin, db).await?,
        _ => return Err("give --runtime and --database-url, or --centrifugo".into()),
    };
    let result = match args.scenario {
        Scenario::Idle { connections } => idle(&rt, connections).await,
        Scenario::Fanout {
            members,
            rate,
            seconds,
        } => fanout(&rt, members, rate, seconds).await,
        Scenario::Throughput {
            rooms,
            senders,
            seconds,
            window,
        } => throughput(&rt, rooms, senders, seconds, window).await,
    };
    rt.stop().await;
    result
}

async fn idle(rt: &Runtime, n: usize) -> Result<(), String> {
    let token = rt.signup("idler").await?;
    let room = rt.room(&token, "idle").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rt.rss_kib()?;
    println!("scenario: idle connections={n}");
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    let mut last_print = Instant::now();
    // Set-ups run PARALLEL at a time, as many clients arriving at once would.
    let mut opening = futures::stream::iter((0..n).map(|_| {
        let (proto, ws, token) = (rt.proto, rt.ws.clone(), token.clone());
        async move {
            let mut c = Client::connect(proto, &ws, &token).await?;
            c.subscribe(room).await?;
            Ok::<_, String>(c)
        }
    }))
    .buffer_unordered(PARALLEL);
    while let Some(c) = opening.next().await {
        clients.push(c?);
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("  ... {} connections", clients.len());
            last_print = Instant::now();
        }
    }
    drop(opening);
    let opened = started.elapsed().as_secs_f64();
    // Drain hello/subscribed frames, then let the server settle.
    for c in clients.iter_mut() {
        c.drain(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = rt.rss_kib()?;
    let held = rt
        .metric("chat_connections")
        .await
        .unwrap_or(clients.len() as f64);
    println!(
        "connections held: {held:.0} (opened and subscribed in {opened:.1}s, {PARALLEL} at a time)"
    );
    let per_conn = (rss.saturating_sub(base)) as f64 / n as f64;
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with connections: {per_conn:.1} KiB per connection",
        base as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    println!("result: scenario=idle open_s={opened:.2} kib_per_conn={per_conn:.1}");
    drop(clients);
    Ok(())
}

async fn fanout(rt: &Runtime, members: usize, rate: u64, seconds: u64) -> Result<(), String> {
    // Members share a few accounts: membership is per user, sockets are what
    // the fan-out pays for.
    let users = 10.min(members).max(1);
    let owner = rt.signup("sender").await?;
    let room = rt.room(&owner, "fanout").await?;
    let mut tokens = Vec::new();
    for i in 0..users {
        let t = rt.signup(&format!("member{i}")).await?;
        rt.join(&t, room).await?;
        tokens.push(t);
    }
    println!("scenario: fanout members={members} rate={rate}/s seconds={seconds}");
    let base = rt.rss_kib()?;
    let latencies = Arc::new(Latencies::default());
    let tracker = Arc::new(Tracker::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start_seq = rt.last_seq(room).await?;
    let mut readers = Vec::new();
    for i in 0..members {
        let mut c = Client::connect(rt.proto, &rt.ws, &tokens[i % users]).await?;
        c.subscribe(room).await?;
        let (lat, tr, st) = (latencies.clone(), tracker.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            c.read_events(room, &lat, &tr, &st).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rt.rss_kib()?;
    let mut sender = Client::connect(rt.proto, &rt.ws, &owner).await?;
    let total = rate * seconds;
    let started = Instant::now();
    let mut acked = 0u64;
    for i in 0..total {
        let due = started + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let now = report::now_micros();
        sender
            .send_message(room, &format!("f{i}"), &format!("t={now}"))
            .await?;
        acked += sender.drain_acks().await;
    }
    let sending = started.elapsed();
    // Let the last deliveries arrive.
    let expected = total * members as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracker.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked += sender
        .wait_acks(total - acked, Duration::from_secs(5))
        .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let room_last = rt.last_seq(room).await?;
    for r in readers {
        account_reader(&tracker, r, room, start_seq, room_last).await;
    }
    println!("connections held: {} readers + 1 sender", members);
    println!(
        "server RSS with {members} connections: {:.1} MiB ({:.1} KiB per connection over the idle server)",
        rss as f64 / 1024.0,
        (rss.saturating_sub(base)) as f64 / members as f64
    );
    println!(
        "messages sent: {total} in {:.1}s, acked: {acked}",
        sending.as_secs_f64()
    );
    latencies.print("send->deliver latency");
    // Where a slow delivery's time went: the commit (the runtime's own
    // send->ack histogram) or the fan-out after it.
    if let (Some(n), Some(fast), Some(ok)) = (
        rt.metric("chat_send_ack_seconds_count").await,
        rt.metric("chat_send_ack_seconds_bucket{le=\"0.025\"}")
            .await,
        rt.metric("chat_send_ack_seconds_bucket{le=\"0.05\"}").await,
    ) {
        println!(
            "server send->ack (commit): {:.0} of {n:.0} sends over 25 ms, {:.0} over 50 ms",
            n - fast,
            n - ok
        );
    }
    let rate_out = latencies.count() as f64 / elapsed.as_secs_f64();
    println!(
        "deliveries: {} of {expected} ({rate_out:.0}/s)",
        latencies.count(),
    );
    tracker.print();
    let (p50, p99, _) = latencies.percentiles().unwrap_or_default();
    println!(
        "result: scenario=fanout{rate} p50_ms={p50:.1} p99_ms={p99:.1} deliveries_per_s={rate_out:.0} clean={}",
        tracker.clean()
    );
    tracker_verdict(&tracker)
}

async fn throughput(
    rt: &Runtime,
    rooms: usize,
    senders: usize,
    seconds: u64,
    window: usize,
) -> Result<(), String> {
    let owner = rt.signup("owner").await?;
    let mut room_ids = Vec::new();
    for i in 0..rooms {
        room_ids.push(rt.room(&owner, &format!("room{i}")).await?);
    }
    let users = 20.min(senders).max(1);
    let mut tokens = Vec::new();
    for i in 0..users {
        let t = rt.signup(&format!("sender{i}")).await?;
        for r in &room_ids {
            rt.join(&t, *r).await?;
        }
        tokens.push(t);
    }
    println!(
        "scenario: throughput rooms={rooms} senders={senders} window={window} seconds={seconds}"
    );
    // One reader per room checks ordering and completeness.
    let latencies = Arc::new(Latencies::default());
    let tracker = Arc::new(Tracker::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut start_seqs = Vec::new();
    for r in &room_ids {
        start_seqs.push(rt.last_seq(*r).await?);
    }
    let mut readers = Vec::new();
    for r in &room_ids {
        let mut c = Client::connect(rt.proto, &rt.ws, &owner).await?;
        c.subscribe(*r).await?;
        let (lat, tr, st, room) = (latencies.clone(), tracker.clone(), stop.clone(), *r);
        readers.push(tokio::spawn(async move {
            c.read_events(room, &lat, &tr, &st).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let mut c = Client::connect(rt.proto, &rt.ws, &tokens[s % users]).await?;
        let room = room_ids[s % rooms];
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut in_flight = 0usize;
            while Instant::now() < deadline {
                while in_flight < window {
                    let now = report::now_micros();
                    if c.send_message(room, &format!("s{s}-{n}"), &format!("t={now}"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    n += 1;
                    in_flight += 1;
                }
                match c.next_ack(Duration::from_secs(5)).await {
                    Some(()) => {
                        in_flight -= 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
            let got = c.wait_acks(in_flight as u64, Duration::from_secs(5)).await;
            acked.fetch_add(got, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for ((r, room), start_seq) in readers.into_iter().zip(&room_ids).zip(start_seqs) {
        let room_last = rt.last_seq(*room).await?;
        account_reader(&tracker, r, *room, start_seq, room_last).await;
    }
    let db_sum = rt
        .metric("chat_db_latency_seconds_sum")
        .await
        .unwrap_or(0.0);
    let db_count = rt
        .metric("chat_db_latency_seconds_count")
        .await
        .unwrap_or(0.0);
    let acked = acked.load(Ordering::Relaxed);
    let acked_rate = acked as f64 / elapsed.as_secs_f64();
    if rt.proto == client::Proto::Chorus {
        let persisted = rt.count_messages().await?;
        println!(
            "persisted messages: {persisted} in {:.1}s = {:.0} messages/s (acked: {acked})",
            elapsed.as_secs_f64(),
            persisted as f64 / elapsed.as_secs_f64()
        );
    } else {
        println!(
            "acked messages: {acked} in {:.1}s = {acked_rate:.0} messages/s (memory engine: nothing durable)",
            elapsed.as_secs_f64(),
        );
    }
    if db_count > 0.0 {
        println!(
            "server-side database time per event write or fan-out read: {:.2} ms average ({db_count:.0} operations)",
            db_sum / db_count * 1000.0
        );
    }
    latencies.print("send->deliver latency (one reader per room)");
    println!("deliveries to room readers: {}", latencies.count());
    tracker.print();
    let (p50, p99, _) = latencies.percentiles().unwrap_or_default();
    println!(
        "result: scenario=throughput{window} acked_per_s={acked_rate:.0} p50_ms={p50:.1} p99_ms={p99:.1} clean={}",
        tracker.clean()
    );
    tracker_verdict(&tracker)
}

/// Waits for a reader and counts what it never received (up to the room's
/// last seq) as gaps; a reader that does not stop in time missed it all.
async fn account_reader(
    tracker: &Tracker,
    reader: tokio::task::JoinHandle<Option<i64>>,
    room: i64,
    start_seq: i64,
    room_last: i64,
) {
    match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(cursor)) => tracker.missing(cursor, start_seq, room_last),
        _ => {
            eprintln!("  READER DID NOT STOP: room {room}; counting its events as gaps");
            tracker.missing(None, start_seq, room_last);
        }
    }
}

/// An error when any reader saw a gap or a duplicate or closed early.
fn tracker_verdict(tracker: &Tracker) -> Result<(), String> {
    if tracker.clean() {
        Ok(())
    } else {
        Err("readers saw gaps, duplicates or early closes (see above)".into())
    }
}
