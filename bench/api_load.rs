//! API load benchmark: `cargo bench --bench api_load [-- --clients 32 --seconds 5 --approvals 2000 --store sqlite|postgres --notifications|--outbox-only]`.
//!
//! With `--notifications`, the daemon sends every event to a signed webhook served by this
//! process, which measures each event's delivery latency (from the event's timestamp, taken
//! when the state changes, to the receiver's answer): the approval figures then include the
//! outbox writes. With `--outbox-only` the events are written (on the changes' audit records,
//! then fanned out to the outbox) but this daemon does not deliver them (`delivery.enabled:
//! false`): the cost of the writes alone.
//!
//! `SLUICE_BIN=<path>` runs another build of the daemon (e.g. a copy of an earlier commit's
//! target/release/sluice), for an A/B comparison in one sitting.
//!
//! Starts the release `sluice` daemon as its own process (SQLite state store by default; with
//! `--store postgres`, a fresh database at $BENCH_PG_URL), then drives it from this process with
//! 32 concurrent clients, each on its own connection, and prints throughput and p50/p99 latency:
//! - gRPC `Ping` (authentication only: the ceiling of the server),
//! - gRPC `GetEnvironmentStatus` and the same status over REST, with ten deployments queued,
//! - gRPC `Approve` and the same approval over REST, each on its own deployment.
//!
//! Both the daemon and the load generator share this machine's cores: the figures are for
//! "everything on one 2-core box", which is what they are compared against.

use serde_json::json;
use sluice::api::grpc::pb;
use sluice::api::grpc::pb::sluice_client::SluiceClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

struct Options {
    clients: usize,
    seconds: u64,
    approvals: usize,
    store: String,
    notifications: bool,
    /// Events are written to the outbox but this daemon does not deliver them.
    outbox_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        clients: 32,
        seconds: 5,
        approvals: 2000,
        store: "sqlite".into(),
        notifications: false,
        outbox_only: false,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--clients" => o.clients = value.parse().expect("--clients N"),
            "--seconds" => o.seconds = value.parse().expect("--seconds N"),
            "--approvals" => o.approvals = value.parse().expect("--approvals N"),
            "--store" => o.store = value,
            "--notifications" => {
                o.notifications = true;
                i += 1;
                continue;
            }
            "--outbox-only" => {
                o.notifications = true;
                o.outbox_only = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

struct Daemon {
    child: Child,
    rest: String,
    grpc: String,
    _dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_daemon(
    store_url: &str,
    tokens: &[(&str, &str, String)],
    webhook: Option<&str>,
    deliver: bool,
) -> Daemon {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::copy(
        shipped.join("approval_matrix.yml"),
        dir.join("approval_matrix.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("sluice.yml"),
        format!("store:\n  url: {store_url}\n  max_connections: 16\n"),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::write(
        dir.join("environments.yml"),
        format!(
            "promotion_order: [development, staging, production]\nenvironments:\n  development:\n    database: {{url: \"sqlite://{d}/dev.db\"}}\n    migration: {{auto_approve: true, auto_apply: false}}\n  staging:\n    database: {{url: \"sqlite://{d}/staging.db\"}}\n  production:\n    database: {{url: \"sqlite://{d}/prod.db\"}}\n    migration: {{auto_apply: false}}\n",
            d = data.display()
        ),
    )
    .unwrap();
    let mut users = String::from("users:\n");
    for (name, roles, token) in tokens {
        users.push_str(&format!(
            "  - name: {name}\n    roles: [{roles}]\n    token_sha256: \"{}\"\n",
            sluice::auth::token_sha256(token)
        ));
    }
    std::fs::write(dir.join("users.yml"), users).unwrap();
    if let Some(url) = webhook {
        std::fs::write(
            dir.join("notifications.yml"),
            format!(
                "delivery:\n  enabled: {deliver}\nchannels:\n  bench:\n    type: webhook\n    url: {url}\n    secret: bench-secret\n"
            ),
        )
        .unwrap();
    }
    let daemon = std::env::var_os("SLUICE_BIN")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_sluice")));
    let mut child = Command::new(daemon)
        .args(["server", "--config-dir"])
        .arg(&dir)
        .current_dir(&dir)
        .env("SLUICE__SERVER__REST_ADDR", "127.0.0.1:0")
        .env("SLUICE__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the daemon starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "sluice listening on http://A (REST) and http://B (gRPC)"
    let words: Vec<&str> = line.split_whitespace().collect();
    Daemon {
        child,
        rest: words[3].to_owned(),
        grpc: words[6].to_owned(),
        _dir: dir,
    }
}

fn request<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

struct Report {
    name: String,
    calls: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn print(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let index = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
            self.latencies[index.min(self.latencies.len() - 1)].as_secs_f64() * 1000.0
        };
        println!(
            "{:<34} {:>8} calls {:>10.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            self.name,
            self.calls,
            self.calls as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            self.errors
        );
    }
}

/// Runs `clients` workers; worker `w` calls `call(w, i)` for i = 0, 1, ... until `until`
/// says stop. Returns the report.
async fn load<F, Fut>(name: &str, clients: usize, until: Until, call: F) -> Report
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let call = call.clone();
        let until = until.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut i = 0;
            loop {
                match &until {
                    Until::Time(deadline) if Instant::now() >= *deadline => break,
                    Until::Count(per_worker) if i >= *per_worker => break,
                    _ => {}
                }
                let t = Instant::now();
                if call(worker, i).await {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let mut report = Report {
        name: name.into(),
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        report.calls += latencies.len();
        report.errors += errors;
        report.latencies.extend(latencies);
    }
    report.elapsed = started.elapsed();
    report
}

#[derive(Clone)]
enum Until {
    Time(Instant),
    Count(usize),
}

async fn grpc_clients(addr: &str, n: usize) -> Vec<SluiceClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(SluiceClient::connect(addr.to_owned()).await.unwrap());
    }
    clients
}

/// A webhook endpoint that notes how long each event took to arrive.
struct Receiver {
    url: String,
    latencies_ms: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let latencies_ms: Arc<std::sync::Mutex<Vec<f64>>> = Arc::default();
        let record = latencies_ms.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    let event: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(at) = event["at"]
                        .as_str()
                        .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                    {
                        let latency = chrono::Utc::now().signed_duration_since(at);
                        record
                            .lock()
                            .unwrap()
                            .push(latency.num_microseconds().unwrap_or(0) as f64 / 1000.0);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, latencies_ms }
    }

    /// Waits until no event has arrived for two seconds.
    async fn settle(&self) {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = self.latencies_ms.lock().unwrap().len();
            if n == last {
                break;
            }
            last = n;
        }
    }

    /// Once everything has arrived, prints the latencies.
    async fn report(&self) {
        self.settle().await;
        let mut all = self.latencies_ms.lock().unwrap().clone();
        all.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            if all.is_empty() {
                return 0.0;
            }
            all[((all.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(all.len() - 1)]
        };
        println!(
            "{:<34} {:>8} events                 p50 {:>7.2} ms   p99 {:>7.2} ms   (state change to the webhook's 2xx)",
            "notification delivery",
            all.len(),
            pct(0.50),
            pct(0.99)
        );
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = options();
    let token = |name: &str| format!("bench_{name}_{}", std::process::id());
    let dev = token("dev");
    let ops = token("ops");
    let users = [
        ("dev", "developer", dev.clone()),
        ("ops", "data_ops", ops.clone()),
    ];
    let pg_database = if o.store == "postgres" {
        let admin = std::env::var("BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("sluice_bench_api_{}", std::process::id());
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL reachable at BENCH_PG_URL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0.to_owned();
        Some((client, name.clone(), format!("{base}/{name}")))
    } else {
        None
    };
    let store_url = match &pg_database {
        Some((_, _, url)) => url.clone(),
        None => "sqlite://data/sluice.db".into(),
    };
    let receiver = if o.notifications {
        Some(Receiver::start().await)
    } else {
        None
    };
    let daemon = start_daemon(
        &store_url,
        &users,
        receiver.as_ref().map(|r| r.url.as_str()),
        !o.outbox_only,
    );
    println!(
        "daemon: REST {} gRPC {}; state store {}; {} clients, each on its own connection; notifications {}",
        daemon.rest,
        daemon.grpc,
        o.store,
        o.clients,
        if o.outbox_only {
            "written to the outbox, not delivered"
        } else if o.notifications {
            "on (a signed webhook on loopback)"
        } else {
            "off"
        }
    );

    let mut setup = SluiceClient::connect(daemon.grpc.clone()).await.unwrap();
    let submit = |i: usize| pb::SubmitMigrationRequest {
        id: String::new(),
        kind: "schema_change".into(),
        description: format!("bench {i}"),
        risk: "low".into(),
        ticket: "BENCH-1".into(),
        estimated_duration: "1m".into(),
        up_sql: format!("CREATE TABLE bench_{i} (id int);"),
        down_sql: None,
        depends_on: vec![],
    };
    for i in 0..10 {
        setup
            .submit_migration(request(&dev, submit(i)))
            .await
            .unwrap();
    }
    let seconds = Duration::from_secs(o.seconds);

    let clients = Arc::new(grpc_clients(&daemon.grpc, o.clients).await);
    let (c, t) = (clients.clone(), dev.clone());
    load(
        "warm-up (gRPC Ping)",
        o.clients,
        Until::Time(Instant::now() + Duration::from_secs(1)),
        move |w, _| {
            let mut client = c[w].clone();
            let t = t.clone();
            async move { client.ping(request(&t, pb::PingRequest {})).await.is_ok() }
        },
    )
    .await;
    let (c, t) = (clients.clone(), dev.clone());
    load(
        "gRPC Ping (ceiling)",
        o.clients,
        Until::Time(Instant::now() + seconds),
        move |w, _| {
            let mut client = c[w].clone();
            let t = t.clone();
            async move { client.ping(request(&t, pb::PingRequest {})).await.is_ok() }
        },
    )
    .await
    .print();
    let (c, t) = (clients.clone(), dev.clone());
    load(
        "gRPC GetEnvironmentStatus",
        o.clients,
        Until::Time(Instant::now() + seconds),
        move |w, _| {
            let mut client = c[w].clone();
            let t = t.clone();
            async move {
                client
                    .get_environment_status(request(
                        &t,
                        pb::GetEnvironmentStatusRequest {
                            environment: "production".into(),
                        },
                    ))
                    .await
                    .is_ok()
            }
        },
    )
    .await
    .print();
    let http: Vec<reqwest::Client> = (0..o.clients)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        })
        .collect();
    let http = Arc::new(http);
    let (h, t, base) = (http.clone(), dev.clone(), daemon.rest.clone());
    load("REST GET /environments/production", o.clients, Until::Time(Instant::now() + seconds), move |w, _| {
        let client = h[w].clone();
        let url = format!("{base}/api/v1/environments/production");
        let t = t.clone();
        async move {
            matches!(client.get(url).bearer_auth(t).send().await, Ok(r) if r.status().is_success())
        }
    })
    .await
    .print();

    // Approvals: one first data_ops approval on each of 2 x N fresh staging deployments.
    let per_protocol = o.approvals;
    let mut ids = Vec::with_capacity(per_protocol * 2);
    let submit_started = Instant::now();
    for i in 0..per_protocol * 2 {
        let m = setup
            .submit_migration(request(&dev, submit(100 + i)))
            .await
            .unwrap()
            .into_inner();
        ids.push((format!("{}@staging", m.id), m.checksum));
    }
    println!(
        "(submitted {} migrations for the approval runs in {:.1} s)",
        ids.len(),
        submit_started.elapsed().as_secs_f64()
    );
    if let Some(receiver) = receiver.as_ref().filter(|_| !o.outbox_only) {
        // The submissions' events are delivered before the approvals are measured: the
        // approval figures include the outbox writes and the delivery of the approvals' own
        // events, not a backlog's.
        receiver.settle().await;
    }
    let ids = Arc::new(ids);
    let per_worker = per_protocol / o.clients;
    let (c, t, list) = (clients.clone(), ops.clone(), ids.clone());
    let clients_n = o.clients;
    load(
        "gRPC Approve",
        o.clients,
        Until::Count(per_worker),
        move |w, i| {
            let mut client = c[w].clone();
            let t = t.clone();
            let (id, checksum) = list[i * clients_n + w].clone();
            async move {
                client
                    .approve(request(
                        &t,
                        pb::ApproveRequest {
                            deployment_id: id,
                            role: "data_ops".into(),
                            comment: "bench".into(),
                            checksum,
                        },
                    ))
                    .await
                    .is_ok()
            }
        },
    )
    .await
    .print();
    let (h, t, list, base) = (http.clone(), ops.clone(), ids.clone(), daemon.rest.clone());
    load("REST POST /deployments/{id}/approvals", o.clients, Until::Count(per_worker), move |w, i| {
        let client = h[w].clone();
        let t = t.clone();
        let (id, checksum) = list[per_protocol + i * clients_n + w].clone();
        let url = format!("{base}/api/v1/deployments/{id}/approvals");
        async move {
            matches!(
                client.post(url).bearer_auth(t).json(&json!({"role": "data_ops", "comment": "bench", "checksum": checksum})).send().await,
                Ok(r) if r.status().is_success()
            )
        }
    })
    .await
    .print();
    if let Some(receiver) = receiver.as_ref().filter(|_| !o.outbox_only) {
        receiver.report().await;
    }
    drop(daemon);
    if let Some((client, name, _)) = pg_database {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}
