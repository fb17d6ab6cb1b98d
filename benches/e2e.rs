//! End-to-end benchmark: commands/s from `POST /v1/commands` to the signed
//! callback's arrival, and POST → callback latency percentiles.
//!
//! Starts, in this process, a fast local upstream and a receiver (both
//! actix-web on loopback) and hookrelay itself (API + dispatcher) against a
//! fresh database on the local Postgres, then sends N commands with C
//! concurrent clients. Reports throughput, p50/p90/p99/max latency, and the
//! Postgres commits per command (`pg_stat_database.xact_commit`).
//!
//! Modes (`scripts/bench.sh` passes its arguments through):
//! - `--mode e2e` (default): `--commands N --concurrency C`; `--dispatch-concurrency N`
//!   overrides `dispatcher.concurrency`; `--workers K` runs the API plus K
//!   in-process worker dispatchers, `--worker-processes P` the API plus P
//!   `hookrelay serve --role worker` processes (the release binary).
//! - `--mode drain --backlog N`: N deliveries already queued, one worker
//!   process-equivalent drains them; reports deliveries/s.
//! - `--mode claim --history N`: claim latency (64 ready jobs) as finished
//!   history grows from 0 to N commands (with deliveries and attempts).
//! - `--mode policy --commands N`: overhead of the resilience policy on a
//!   healthy upstream: N commands through a pass-through integration, then N
//!   through one with breaker, adaptive throttle, a (non-binding) rate limit
//!   and an in-flight cap; commands/s and p99 upstream-call latency of each.
//!
//! The receiver is one host, so `delivery.max_in_flight_per_host` is raised to
//! the dispatcher concurrency: these modes measure the pipeline, not the limit.
//! Under `cargo test` the benchmark only prints how to run it.

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
    mode: String,
    commands: usize,
    concurrency: usize,
    /// `dispatcher.concurrency` (0 = the default from config/default.toml).
    dispatch: usize,
    /// In-process worker dispatchers beside an API-only app (0 = one app with both).
    workers: usize,
    /// `hookrelay serve --role worker` processes beside an API-only app.
    processes: usize,
    /// Deliveries queued before the drain starts.
    backlog: usize,
    /// Finished history rows for the claim mode.
    history: usize,
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
    let mode = argv
        .iter()
        .position(|a| a == "--mode")
        .and_then(|i| argv.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "e2e".into());
    Some(Args {
        mode,
        commands: value("--commands", 5000),
        concurrency: value("--concurrency", 64),
        dispatch: value("--dispatch-concurrency", 0),
        workers: value("--workers", 0),
        processes: value("--worker-processes", 0),
        backlog: value("--backlog", 100_000),
        history: value("--history", 1_000_000),
    })
}

fn main() -> anyhow::Result<()> {
    let Some(args) = args() else {
        println!("e2e benchmark: run with `cargo bench --bench e2e` (skipped under cargo test)");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.mode.as_str() {
        "e2e" => runtime.block_on(run(args)),
        "drain" => runtime.block_on(drain(args)),
        "claim" => runtime.block_on(claim_latency(args)),
        "policy" => runtime.block_on(policy_overhead(args)),
        other => anyhow::bail!("unknown --mode {other} (e2e, drain, claim)"),
    }
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

/// Sends `total` commands for `integration` from `concurrency` clients; returns
/// when each was sent, by command id.
#[allow(clippy::too_many_arguments)]
async fn send_commands(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    callback: &str,
    integration: &'static str,
    id_prefix: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<HashMap<Uuid, Instant>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, callback, prefix, next, sent) = (
            client.clone(),
            url.to_owned(),
            token.to_owned(),
            callback.to_owned(),
            id_prefix.to_owned(),
            next.clone(),
            sent.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let body = json!({"integration": integration, "operation": "create",
                                  "params": {"id": format!("{prefix}{i}")},
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
    let sent = sent.lock().expect("lock").clone();
    Ok(sent)
}

async fn xact_commit(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Settings of a benchmark database: a fresh database, the `bench`
/// integration on the local upstream, private callbacks allowed.
fn bench_settings(args: &Args, upstream_port: u16) -> anyhow::Result<(Settings, String)> {
    let pg = std::env::var("HOOKRELAY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("hookrelay_bench_{}", Uuid::new_v4().simple());
    let mut settings = Settings::defaults()?;
    settings.database.url = SecretString::from(format!("{pg}/{db}"));
    settings.server.bind = "127.0.0.1:0".into();
    // The load generator is one IP address and one client hammering the API:
    // the abuse limits would measure themselves, not the pipeline.
    settings.limits.per_ip_per_s = 0;
    settings.limits.per_client_per_s = 0;
    settings.security.allow_private_callbacks = true;
    settings.telemetry.filter = "warn".into();
    if args.dispatch > 0 {
        settings.dispatcher.concurrency = args.dispatch;
    }
    settings.delivery.max_in_flight_per_host = settings.dispatcher.concurrency;
    settings.integrations.insert(
        "bench".into(),
        IntegrationSettings {
            base_url: format!("http://127.0.0.1:{upstream_port}").parse()?,
            timeout_ms: 5_000,
            max_attempts: 3,
            retry_backoff_ms: 100,
            max_response_bytes: 64 * 1024,
            trusted: true,
            credential: None,
            operations: [(
                "create".to_owned(),
                OperationSettings {
                    method: WriteMethod::Post,
                    path: "/things/{id}".parse().expect("path template"),
                    fallback: None,
                    roles: None,
                },
            )]
            .into(),
            queries: Default::default(),
            retry_horizon_s: 3600,
            throttle: Default::default(),
            breaker: Default::default(),
        },
    );
    let settings = settings.validate()?;
    hookrelay::telemetry::init(&settings.telemetry);
    Ok((settings, pg))
}

async fn drop_database(pg: &str, settings: &Settings) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let url = settings.database.url.expose_secret().to_owned();
    let db = url.rsplit('/').next().unwrap_or_default().to_owned();
    let admin = sqlx::PgPool::connect(&format!("{pg}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}

/// A `hookrelay serve --role worker` child process, killed when dropped.
struct WorkerProcess(std::process::Child, std::path::PathBuf);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn worker_process(settings: &Settings, upstream_port: u16) -> anyhow::Result<WorkerProcess> {
    use secrecy::ExposeSecret;
    let config =
        std::env::temp_dir().join(format!("hookrelay-bench-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!(
            "[security]\nallow_private_callbacks = true\n[dispatcher]\nconcurrency = {c}\n\
             [delivery]\nmax_in_flight_per_host = {c}\n[telemetry]\nfilter = \"warn\"\n\
             [integrations.bench]\nbase_url = \"http://127.0.0.1:{upstream_port}\"\n\
             [integrations.bench.operations.create]\nmethod = \"POST\"\npath = \"/things/{{id}}\"\n",
            c = settings.dispatcher.concurrency
        ),
    )?;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["serve", "--role", "worker", "--config"])
        .arg(&config)
        .env("DATABASE_URL", settings.database.url.expose_secret())
        .stdin(std::process::Stdio::null())
        .spawn()?;
    Ok(WorkerProcess(child, config))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (upstream_port, receiver_port) = start_peers(arrivals.clone()).await?;
    let (settings, pg) = bench_settings(&args, upstream_port)?;
    let dispatch_concurrency = settings.dispatcher.concurrency;
    let token = JwtKeys::new(&settings.auth)?.mint("bench", &["client".to_owned()], 3600)?;
    let separate = args.workers > 0 || args.processes > 0;
    let role = if separate {
        ServeRole::Api
    } else {
        ServeRole::All
    };
    let app = Application::build(settings.clone(), role).await?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let w = Application::build(settings.clone(), ServeRole::Worker).await?;
        let stop = w.shutdown_token();
        workers.push((stop, tokio::spawn(w.run_until_stopped())));
    }
    let mut processes = Vec::new();
    for _ in 0..args.processes {
        processes.push(worker_process(&settings, upstream_port)?);
    }
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
    let sent = send_commands(
        &client,
        &url,
        &token,
        &callback,
        "bench",
        "",
        args.commands,
        args.concurrency,
    )
    .await?;
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
    let last = arrivals.values().max().copied().unwrap_or(started);
    let total = last - started;
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t)| arrivals.get(id).map(|a| *a - *t))
        .collect();
    latencies.sort();
    let commits = xact_commit(&pool).await? - commits_before;

    println!("hookrelay e2e benchmark");
    println!("  machine            {}", machine());
    println!("  commands           {}", args.commands);
    println!("  client concurrency {}", args.concurrency);
    println!("  dispatch concurrency {}", dispatch_concurrency);
    println!(
        "  dispatchers        {}",
        if separate {
            format!(
                "{} in-process worker(s) + {} worker process(es), API separate",
                args.workers, args.processes
            )
        } else {
            "1 (API and dispatcher in one app)".to_owned()
        }
    );
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
    for (stop, task) in workers {
        stop.cancel();
        let _ = task.await;
    }
    drop(processes);
    pool.close().await;
    drop_database(&pg, &settings).await?;
    Ok(())
}

fn machine() -> String {
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
    format!("{cores} cores, {cpu}")
}

/// Inserts `n` finished commands with their delivered deliveries and one
/// attempt each: the history that accumulates in production.
async fn seed_history(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let chunk = left.min(100_000);
        sqlx::query(
            r#"
            WITH c AS (
                INSERT INTO commands (id, client_id, integration, operation, method, path, params, body,
                                      callback_url, request_hash, status, result)
                SELECT gen_random_uuid(), 'history', 'bench', 'create', 'POST', '/things/' || g,
                       '{}', '{"n": 1}', 'http://127.0.0.1:1/hooks', '\x00'::bytea,
                       'succeeded', '{"status_code":200,"body":{"ok": true}}'
                  FROM generate_series(1, $1) g
             RETURNING id, client_id, callback_url
            ), d AS (
                INSERT INTO deliveries (id, command_id, client_id, url, payload, status, attempts, delivered_at)
                SELECT gen_random_uuid(), id, client_id, callback_url, '{"type": "command.succeeded"}',
                       'delivered', 1, now()
                  FROM c
             RETURNING id
            )
            INSERT INTO delivery_attempts (delivery_id, attempt, trigger, started_at, duration_ms, response_status)
            SELECT id, 1, 'scheduled', now(), 1, 200 FROM d
            "#,
        )
        .bind(i64::try_from(chunk)?)
        .execute(pool)
        .await?;
        left -= chunk;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// `--mode drain`: a backlog of queued deliveries, then one worker drains it.
async fn drain(args: Args) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (upstream_port, receiver_port) = start_peers(arrivals.clone()).await?;
    let (settings, pg) = bench_settings(&args, upstream_port)?;
    let api = Application::build(settings.clone(), ServeRole::Api).await?;
    let pool = api.pool().clone();
    drop(api);
    let sealer = hookrelay::security::SecretSealer::from_keys(
        &settings.security.signing_key_encryption_keys,
    )?;
    hookrelay::delivery::secrets::ensure_signing_secrets(&pool, &sealer, "bench").await?;
    let seeded = Instant::now();
    sqlx::query(
        r#"
        WITH c AS (
            INSERT INTO commands (id, client_id, integration, operation, method, path, params, body,
                                  callback_url, request_hash, status, result)
            SELECT gen_random_uuid(), 'bench', 'bench', 'create', 'POST', '/things/' || g,
                   '{}', '{"n": 1}', $2, '\x00'::bytea,
                   'succeeded', '{"status_code":200,"body":{"ok": true}}'
              FROM generate_series(1, $1) g
         RETURNING id, client_id, callback_url
        ), d AS (
            INSERT INTO deliveries (id, command_id, client_id, url, payload)
            SELECT gen_random_uuid(), id, client_id, callback_url,
                   json_build_object('type', 'command.succeeded',
                                     'data', json_build_object('command_id', id, 'status', 'succeeded'))::text
              FROM c
         RETURNING id, command_id
        )
        INSERT INTO jobs (kind, command_id, delivery_id) SELECT 'deliver', command_id, id FROM d
        "#,
    )
    .bind(i64::try_from(args.backlog)?)
    .bind(format!("http://127.0.0.1:{receiver_port}/hooks"))
    .execute(&pool)
    .await?;
    // Rows written with SQL are unsealed, and the dispatcher quarantines
    // unsealed jobs: seal the deliveries as `finish` would.
    let job_sealer =
        hookrelay::security::seal::JobSealer::from_keys(&settings.security.job_mac_keys)?;
    let rows: Vec<(Uuid, Uuid, String, String, String)> =
        sqlx::query_as("SELECT id, command_id, client_id, url, payload FROM deliveries")
            .fetch_all(&pool)
            .await?;
    let (ids, seals): (Vec<Uuid>, Vec<String>) = rows
        .iter()
        .map(|(id, command_id, client_id, url, payload)| {
            let seal = job_sealer.seal_deliver(&hookrelay::security::seal::DeliverSeal {
                delivery_id: *id,
                command_id: *command_id,
                client_id,
                url,
                payload,
            });
            (*id, seal)
        })
        .unzip();
    sqlx::query(
        "UPDATE deliveries d SET seal = s.seal
           FROM UNNEST($1::uuid[], $2::text[]) AS s(id, seal) WHERE d.id = s.id",
    )
    .bind(&ids)
    .bind(&seals)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    let seed_time = seeded.elapsed();

    let started = Instant::now();
    let worker = Application::build(settings.clone(), ServeRole::Worker).await?;
    let stop = worker.shutdown_token();
    let task = tokio::spawn(worker.run_until_stopped());
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "backlog not drained after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let delivered = arrivals.lock().expect("lock").len();
    println!("hookrelay backlog drain");
    println!("  machine            {}", machine());
    println!(
        "  backlog            {} queued deliveries (seeded in {:.1} s)",
        args.backlog,
        seed_time.as_secs_f64()
    );
    println!("  dispatch concurrency {}", settings.dispatcher.concurrency);
    println!("  drained in         {:.2} s", took.as_secs_f64());
    println!(
        "  rate               {:.0} deliveries/s",
        args.backlog as f64 / took.as_secs_f64()
    );
    println!("  received           {delivered}");
    stop.cancel();
    let _ = task.await;
    pool.close().await;
    drop_database(&pg, &settings).await
}

/// `--mode claim`: claim latency with 64 ready jobs as history grows.
async fn claim_latency(args: Args) -> anyhow::Result<()> {
    let (settings, pg) = bench_settings(&args, 9)?;
    let api = Application::build(settings.clone(), ServeRole::Api).await?;
    let pool = api.pool().clone();
    drop(api);
    // Commands whose jobs are claimed (their execute jobs are re-inserted each round).
    seed_history(&pool, 64).await?;
    let ready: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM commands LIMIT 64")
        .fetch_all(&pool)
        .await?;
    println!(
        "hookrelay claim latency (64 ready jobs, {} rounds per size)",
        200
    );
    println!("  machine            {}", machine());
    let mut seeded = 0usize;
    for target in [0usize, 100_000, args.history / 2, args.history] {
        if target > seeded {
            seed_history(&pool, target - seeded).await?;
            seeded = target;
        }
        let mut times = Vec::with_capacity(200);
        for _ in 0..200 {
            sqlx::query("INSERT INTO jobs (kind, command_id) SELECT 'execute', id FROM UNNEST($1::uuid[]) id")
                .bind(&ready)
                .execute(&pool)
                .await?;
            let t = Instant::now();
            let claimed = hookrelay::jobs::claim(&pool, 64, Duration::from_secs(30)).await?;
            times.push(t.elapsed());
            anyhow::ensure!(claimed.len() == 64, "claimed {}", claimed.len());
            sqlx::query("DELETE FROM jobs").execute(&pool).await?;
        }
        times.sort();
        println!(
            "  history {:>9} finished commands: claim p50 {:.2} ms, p99 {:.2} ms",
            seeded,
            percentile(&times, 50.0).as_secs_f64() * 1e3,
            percentile(&times, 99.0).as_secs_f64() * 1e3
        );
    }
    pool.close().await;
    drop_database(&pg, &settings).await
}

/// `--mode policy`: the same load through a pass-through integration and
/// through one with the whole policy on, in one process run.
async fn policy_overhead(args: Args) -> anyhow::Result<()> {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let (upstream_port, receiver_port) = start_peers(arrivals.clone()).await?;
    let (mut settings, pg) = bench_settings(&args, upstream_port)?;
    let mut raw = settings.integrations["bench"].clone();
    raw.breaker.enabled = false;
    raw.throttle.adaptive = false;
    raw.throttle.rate_per_s = 0;
    raw.throttle.max_in_flight = 0;
    let mut guarded = settings.integrations["bench"].clone();
    guarded.breaker.enabled = true;
    guarded.throttle.adaptive = true;
    guarded.throttle.rate_per_s = 1_000_000;
    guarded.throttle.burst = 10_000;
    guarded.throttle.max_in_flight = 4_096;
    settings.integrations.insert("raw".into(), raw);
    settings.integrations.insert("guarded".into(), guarded);
    let settings = settings.validate()?;
    let token = JwtKeys::new(&settings.auth)?.mint("bench", &["client".to_owned()], 3600)?;
    let admin = JwtKeys::new(&settings.auth)?.mint("ops", &["admin".to_owned()], 3600)?;
    let app = Application::build(settings.clone(), ServeRole::All).await?;
    let port = app.port().unwrap_or(0);
    let pool = app.pool().clone();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let callback = format!("http://127.0.0.1:{receiver_port}/hooks");

    println!("hookrelay resilience policy overhead");
    println!("  machine            {}", machine());
    println!(
        "  commands per phase {} (client concurrency {})",
        args.commands, args.concurrency
    );
    for (round, integration) in ["raw", "guarded", "raw", "guarded"].into_iter().enumerate() {
        arrivals.lock().expect("lock").clear();
        let started = Instant::now();
        send_commands(
            &client,
            &format!("{base}/v1/commands"),
            &token,
            &callback,
            integration,
            &format!("{round}-"),
            args.commands,
            args.concurrency,
        )
        .await?;
        while arrivals.lock().expect("lock").len() < args.commands {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        let view: Value = client
            .get(format!("{base}/v1/admin/integrations"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let p99 = view["data"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == integration))
            .and_then(|i| i["p99_ms"].as_f64())
            .unwrap_or(f64::NAN);
        let p50 = view["data"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == integration))
            .and_then(|i| i["p50_ms"].as_f64())
            .unwrap_or(f64::NAN);
        println!(
            "  round {} {:<8} {:>6.0} commands/s end to end, upstream call p50 {:.2} ms, p99 {:.2} ms (last 1024 calls)",
            round + 1,
            integration,
            args.commands as f64 / took.as_secs_f64(),
            p50,
            p99
        );
    }
    stop.cancel();
    let _ = task.await;
    pool.close().await;
    drop_database(&pg, &settings).await
}
