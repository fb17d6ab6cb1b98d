//! End-to-end benchmark: commands/s from `POST /v1/commands` to the signed
//! callback's arrival, and POST → callback latency percentiles.
//!
//! Starts, in this process, a fast local upstream and a receiver (both
//! actix-web on loopback) and hookrelay itself (API + dispatcher) against a
//! fresh database on the local Postgres, then sends N commands with C
//! concurrent clients. Reports throughput, p50/p90/p99/max latency, and the
//! Postgres commits per command (`pg_stat_database.xact_commit`).
//!
//! Run: `cargo bench --bench e2e -- --commands 5000 --concurrency 64`
//! (`--dispatch-concurrency N` overrides `dispatcher.concurrency`)
//! (or `scripts/bench.sh`). Under `cargo test` it only prints how to run it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use hookrelay::auth::JwtKeys;
use hookrelay::config::{IntegrationSettings, OperationSettings, Settings, WriteMethod};
use hookrelay::startup::{Application, ServeRole};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

type Arrivals = Arc<Mutex<HashMap<Uuid, Instant>>>;

struct Args {
    commands: usize,
    concurrency: usize,
    /// `dispatcher.concurrency` (0 = the default from config/default.toml).
    dispatch: usize,
}

fn args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let value = |name: &str, default: usize| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Some(Args {
        commands: value("--commands", 5000),
        concurrency: value("--concurrency", 64),
        dispatch: value("--dispatch-concurrency", 0),
    })
}

fn main() -> anyhow::Result<()> {
    let Some(args) = args() else {
        println!("e2e benchmark: run with `cargo bench --bench e2e` (skipped under cargo test)");
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn start_peers(arrivals: Arrivals) -> anyhow::Result<(u16, u16)> {
    let upstream = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok().json(json!({"ok": true, "id": "thing"}))
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let upstream_port = upstream.addrs()[0].port();
    tokio::spawn(upstream.run());

    let receiver = HttpServer::new(move || {
        let arrivals = arrivals.clone();
        App::new()
            .app_data(web::PayloadConfig::new(1 << 20))
            .default_service(web::to(move |body: web::Bytes| {
                let arrivals = arrivals.clone();
                async move {
                    let now = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        if let Some(id) = v["data"]["command_id"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                        {
                            arrivals.lock().expect("lock").insert(id, now);
                        }
                    }
                    HttpResponse::NoContent().finish()
                }
            }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let receiver_port = receiver.addrs()[0].port();
    tokio::spawn(receiver.run());
    Ok((upstream_port, receiver_port))
}

async fn xact_commit(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (upstream_port, receiver_port) = start_peers(arrivals.clone()).await?;

    let pg = std::env::var("HOOKRELAY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("hookrelay_bench_{}", Uuid::new_v4().simple());
    let mut settings = Settings::defaults()?;
    settings.database.url = SecretString::from(format!("{pg}/{db}"));
    settings.server.bind = "127.0.0.1:0".into();
    settings.security.allow_private_callbacks = true;
    settings.telemetry.filter = "warn".into();
    if args.dispatch > 0 {
        settings.dispatcher.concurrency = args.dispatch;
    }
    settings.integrations.insert(
        "bench".into(),
        IntegrationSettings {
            base_url: format!("http://127.0.0.1:{upstream_port}").parse()?,
            timeout_ms: 5_000,
            max_attempts: 3,
            retry_backoff_ms: 100,
            max_response_bytes: 64 * 1024,
            credential: None,
            operations: [(
                "create".to_owned(),
                OperationSettings {
                    method: WriteMethod::Post,
                    path: "/things/{id}".into(),
                },
            )]
            .into(),
            queries: Default::default(),
        },
    );
    let settings = settings.validate()?;
    let dispatch_concurrency = settings.dispatcher.concurrency;
    hookrelay::telemetry::init(&settings.telemetry);
    let token = JwtKeys::new(&settings.auth).mint("bench", &["client".to_owned()], 3600)?;
    let app = Application::build(settings, ServeRole::All).await?;
    let port = app.port().unwrap_or(0);
    let pool = app.pool().clone();
    let stop = app.shutdown_token();
    let app_task = tokio::spawn(app.run_until_stopped());

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("http://127.0.0.1:{port}/v1/commands");
    let callback = format!("http://127.0.0.1:{receiver_port}/hooks");
    // Warm-up: connections, prepared statements, the signing secret.
    for i in 0..50 {
        let body = json!({"integration": "bench", "operation": "create", "params": {"id": format!("w{i}")},
                          "body": {"warm": true}, "callback_url": callback});
        client
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    while arrivals.lock().expect("lock").len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    arrivals.lock().expect("lock").clear();

    let commits_before = xact_commit(&pool).await?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, token, callback, next, sent) = (
            client.clone(),
            url.clone(),
            token.clone(),
            callback.clone(),
            next.clone(),
            sent.clone(),
        );
        let total = args.commands;
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let body = json!({"integration": "bench", "operation": "create", "params": {"id": i.to_string()},
                                  "body": {"n": i, "payload": "x".repeat(200)}, "callback_url": callback});
                let t = Instant::now();
                let resp = client.post(&url).bearer_auth(&token).json(&body).send().await?.error_for_status()?;
                let doc: Value = resp.json().await?;
                let id: Uuid = doc["id"].as_str().unwrap_or_default().parse()?;
                sent.lock().expect("lock").insert(id, t);
            }
        }));
    }
    for c in clients {
        c.await??;
    }
    let accepted_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().expect("lock").len() < args.commands {
        anyhow::ensure!(
            Instant::now() < deadline,
            "callbacks missing after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals = arrivals.lock().expect("lock").clone();
    let sent = sent.lock().expect("lock").clone();
    let last = arrivals.values().max().copied().unwrap_or(started);
    let total = last - started;
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t)| arrivals.get(id).map(|a| *a - *t))
        .collect();
    latencies.sort();
    let commits = xact_commit(&pool).await? - commits_before;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("hookrelay e2e benchmark");
    println!("  machine            {cores} cores, {cpu}");
    println!("  commands           {}", args.commands);
    println!("  client concurrency {}", args.concurrency);
    println!("  dispatch concurrency {}", dispatch_concurrency);
    println!(
        "  all accepted (202) {:.2} s  ({:.0} commands/s intake)",
        accepted_in.as_secs_f64(),
        args.commands as f64 / accepted_in.as_secs_f64()
    );
    println!("  all called back    {:.2} s", total.as_secs_f64());
    println!(
        "  end to end         {:.0} commands/s",
        args.commands as f64 / total.as_secs_f64()
    );
    println!(
        "  latency p50        {:.1} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3
    );
    println!(
        "  latency p90        {:.1} ms",
        percentile(&latencies, 90.0).as_secs_f64() * 1e3
    );
    println!(
        "  latency p99        {:.1} ms",
        percentile(&latencies, 99.0).as_secs_f64() * 1e3
    );
    println!(
        "  latency max        {:.1} ms",
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  pg commits/command {:.2}",
        commits as f64 / args.commands as f64
    );

    stop.cancel();
    let _ = app_task.await;
    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{pg}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
