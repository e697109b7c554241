//! Sluice: a database-migration control plane. One daemon holds the migration queue and the
//! approval state machine, runs a worker per environment, and serves the REST API.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod lint;
pub mod notify;
pub mod service;
pub mod store;
pub mod target;
pub mod telemetry;

use config::Config;
use service::{Clock, Service};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A started daemon: its bound address, its service (for tests that drive workers directly)
/// and the handle that stops it.
pub struct Running {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Where `GET /metrics` is served when `server.metrics_addr` moves it off the REST port.
    pub metrics_addr: Option<SocketAddr>,
    pub service: Service,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    engine: engine::Engine,
    grace: Duration,
}

/// Options for `start` that tests change.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    /// Run the workers and scheduler in the background (tests may prefer to call `run_once`).
    pub background_workers: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(service::SystemClock),
            background_workers: true,
        }
    }
}

/// Opens the store, binds the REST listener, and starts serving and working. Binding happens
/// before this returns, so a client may connect as soon as it has the address.
pub async fn start(config: Config, options: StartOptions) -> anyhow::Result<Running> {
    let store = store::Store::connect(
        &config.settings.store.url,
        config.settings.store.max_connections,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the state store {}: {e}",
            config::redact_url(&config.settings.store.url)
        )
    })?;
    let listener = tokio::net::TcpListener::bind(&config.settings.server.rest_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (server.rest_addr / SLUICE__SERVER__REST_ADDR): {e}",
                config.settings.server.rest_addr
            )
        })?;
    let rest_addr = listener.local_addr()?;
    let grpc_listener = tokio::net::TcpListener::bind(&config.settings.server.grpc_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (server.grpc_addr / SLUICE__SERVER__GRPC_ADDR): {e}",
                config.settings.server.grpc_addr
            )
        })?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_listener = match config.settings.server.metrics_addr() {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr} (server.metrics_addr / SLUICE__SERVER__METRICS_ADDR): {e}"
            )
        })?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let grace = Duration::from_secs(config.settings.server.shutdown_grace_seconds);
    for channel in &config.notifications.channels {
        tracing::info!(channel = %channel.name, kind = channel.kind.type_name(), "notification channel on");
    }
    for (channel, why) in &config.notifications.disabled {
        tracing::info!(%channel, reason = %why, "notification channel off");
    }
    let service = Service::new(Arc::new(config), store, options.clock);
    let cancel = CancellationToken::new();
    let engine = if options.background_workers {
        engine::Engine::start(service.clone(), cancel.child_token())
    } else {
        engine::Engine::start_nothing()
    };
    let app = api::router(service.clone());
    let shutdown = cancel.clone();
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    if let Some(listener) = metrics_listener {
        let app = api::metrics_router(service.clone());
        let shutdown = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<api::grpc::pb::sluice_server::SluiceServer<api::grpc::GrpcApi>>()
        .await;
    // Both reflection versions: grpcurl 1.8 (still what most package managers ship), grpcui
    // and older Postman and Kreya speak only v1alpha. The health service's descriptor too, so
    // `grpcurl ... grpc.health.v1.Health/Check` works through reflection.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::grpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let grpc_shutdown = cancel.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(|request| {
                crate::telemetry::traces::request_span(
                    "grpc",
                    "POST",
                    request.uri().path(),
                    request.headers(),
                )
            })
            .layer(crate::telemetry::GrpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(api::grpc::GrpcApi::server(service.clone()))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add 40 ms to every
                // response larger than a packet.
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move { grpc_shutdown.cancelled().await },
            ),
    );
    tokio::spawn(watch_users(service.clone(), cancel.clone()));
    tracing::info!(%rest_addr, %grpc_addr, "sluice is serving");
    Ok(Running {
        rest_addr,
        grpc_addr,
        metrics_addr,
        grpc,
        service,
        cancel,
        server,
        engine,
        grace,
    })
}

/// Reloads users.yml on SIGHUP and whenever the file's content changes (its SHA-256 is checked
/// every few seconds; a modification time can be set back, a hash cannot), so that adding a
/// user, removing one or rotating a token needs no restart. A file with an error is reported
/// and the users in force stay.
async fn watch_users(service: Service, cancel: CancellationToken) {
    let path = service.config.config_dir.join("users.yml");
    let fingerprint = |path: &std::path::Path| {
        use sha2::{Digest, Sha256};
        std::fs::read(path)
            .ok()
            .map(|bytes| Sha256::digest(&bytes).to_vec())
    };
    let mut seen = fingerprint(&path);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = signalled => true,
            _ = tokio::time::sleep(Duration::from_secs(3)) => false,
        };
        let now = fingerprint(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match service.reload_users() {
            Ok(count) => tracing::info!(users = count, file = %path.display(), "users reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "users.yml not reloaded; the previous users stay in force")
            }
        }
    }
}

impl Running {
    /// Stops accepting requests, lets the work in flight finish within the grace period, and
    /// closes the store.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.engine.shutdown(self.grace).await;
        let _ = tokio::time::timeout(self.grace, self.server).await;
        let _ = tokio::time::timeout(self.grace, self.grpc).await;
        self.service.store.close().await;
    }

    /// Resolves when the daemon has been asked to stop.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
