//! `orgwarden serve`: configuration, start-up, signals and shutdown.
//!
//! Loads the files (refusing to start on invalid ones, with the same
//! diagnostics as `orgwarden check`), starts the decision log, binds the
//! HTTP listener (and the gRPC one, when asked) and serves until SIGTERM or
//! SIGINT, then drains requests in flight. Changes to the files reload them (see [`crate::reload`]); so do
//! SIGHUP and `POST /v1/reload`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use crate::decision_log::{DecisionLog, LogOptions, LogTarget, Overflow};
use crate::grpc::{self, GrpcConfig};
use crate::http::{self, App, HttpConfig};
use crate::live_facts::LiveFacts;
use crate::load::Paths;
use crate::metrics::Metrics;
use crate::pdp::Pdp;
use crate::reload::{Live, WatchConfig};

/// The format of the server's own log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

crate::words::words!(LogFormat { "text" => Text, "json" => Json });

/// Everything `orgwarden serve` needs, as plain values.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The files to load and watch.
    pub paths: Paths,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    pub http: HttpConfig,
    /// The ext_authz gRPC listener (off unless `grpc.listen` is set).
    pub grpc: GrpcConfig,
    /// Entries in the decision cache; 0 turns it off.
    pub cache_size: u64,
    pub decision_log: LogTarget,
    /// Log only denied decisions.
    pub decision_log_denies_only: bool,
    /// What a decision does when the log's queue is full.
    pub decision_log_overflow: Overflow,
    pub log_format: LogFormat,
    /// Watch the files (none: reload only on SIGHUP or `POST /v1/reload`).
    pub watch: Option<WatchConfig>,
    /// The fact store (`sqlite:PATH`, `postgres://...`); none: facts come
    /// from the entity files.
    pub facts: Option<String>,
    /// How store-backed facts follow the store and prune its change log.
    pub follow: crate::live_facts::FollowOptions,
    /// Where the inputs of every good snapshot are kept, and served from
    /// when the files are invalid at start.
    pub last_good_dir: Option<std::path::PathBuf>,
    /// The web console at `/console` (off unless set).
    pub console: Option<crate::console::ConsoleConfig>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Run the server until a shutdown signal.
pub fn run(config: ServerConfig) -> ExitCode {
    init_tracing(config.log_format);
    let loaded = match &config.last_good_dir {
        Some(dir) => Live::load_with_last_good(config.paths.clone(), dir.clone()),
        None => Live::load(config.paths.clone()),
    };
    let live = match loaded {
        Ok(live) => Arc::new(live),
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("error: not starting: the files above are invalid");
            return ExitCode::from(1);
        }
    };
    let options = LogOptions {
        denies_only: config.decision_log_denies_only,
        overflow: config.decision_log_overflow,
        ..LogOptions::default()
    };
    let log = match DecisionLog::start_with(&config.decision_log, options) {
        Ok(log) => log,
        Err(e) => {
            eprintln!(
                "error: cannot open the decision log {:?}: {e}",
                config.decision_log
            );
            return ExitCode::from(1);
        }
    };
    // Reload when the files change, for as long as this function runs.
    let _watch = config.watch.and_then(|watch| {
        live.watch(watch)
            .inspect_err(|e| {
                tracing::warn!(
                    "not watching the files ({e}): reload with SIGHUP or POST /v1/reload"
                )
            })
            .ok()
    });
    let pdp = Pdp::new(
        live.clone(),
        Arc::new(Metrics::new()),
        config.cache_size,
        log,
    );
    let listen = config.listen;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let closer = pdp.log_closer();
    let code = runtime.block_on(async move {
        let pdp = match &config.facts {
            None => pdp,
            Some(url) => match LiveFacts::start(url, live.clone(), config.follow).await {
                Ok(facts) => {
                    tracing::info!(
                        store = facts.describe(),
                        revision = facts.revision(),
                        entities = facts.len(),
                        loaded = facts.ready(),
                        "facts from the store (the entity files are not used for decisions)"
                    );
                    pdp.with_facts(Arc::new(facts))
                }
                Err(e) => {
                    eprintln!(
                        "error: not starting: cannot serve the facts of {}: {e}",
                        crate::facts::store::redact(url)
                    );
                    return ExitCode::from(1);
                }
            },
        };
        let app = Arc::new(App::new(pdp, config.http.clone()));
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::from(1);
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let snap = live.snapshot();
        tracing::info!(
            generation = snap.generation,
            policies = snap.policy_count(),
            entities = snap.entity_count(),
            "listening on http://{addr}"
        );
        // One signal stops both listeners.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let grpc_task = match config.grpc.listen {
            None => None,
            Some(grpc_listen) => {
                let grpc_listener = match tokio::net::TcpListener::bind(grpc_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: cannot listen on {grpc_listen} (gRPC): {e}");
                        return ExitCode::from(1);
                    }
                };
                let grpc_addr = grpc_listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!("ext_authz gRPC listening on {grpc_addr}");
                let mut stopped = stopped.clone();
                let pdp = app.pdp.clone();
                let grpc_config = config.grpc.clone();
                Some(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    };
                    grpc::serve(grpc_listener, pdp, grpc_config, shutdown).await
                }))
            }
        };
        spawn_sighup_reload(live.clone());
        spawn_identity_warmer(app.pdp.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let mut http_stopped = stopped;
        let http_shutdown = async move {
            let _ = http_stopped.wait_for(|s| *s).await;
        };
        let console = match config.console.clone() {
            Some(console) => {
                tracing::info!("console at http://{addr}/console/");
                crate::console::routes(app.clone(), console)
            }
            None => axum::Router::new(),
        };
        let served = http::serve_with(listener, app, console, http_shutdown).await;
        if let Some(mut task) = grpc_task {
            // Calls in flight finish; a connection that stays open without
            // them (a client that ignores GOAWAY) does not hold the exit.
            match tokio::time::timeout(grpc::DRAIN_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!("gRPC server error: {e}"),
                Ok(Err(e)) => tracing::error!("gRPC server failed: {e}"),
                Err(_) => {
                    tracing::warn!(
                        "gRPC connections still open after {} s; closing them",
                        grpc::DRAIN_GRACE.as_secs()
                    );
                    task.abort();
                }
            }
        }
        match served {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("server error: {e}");
                ExitCode::from(1)
            }
        }
    });
    // Dropping the runtime drops the last handles on the decision log; its
    // writer then writes what is queued and stops.
    drop(runtime);
    if let Some(closer) = closer
        && !closer.wait(std::time::Duration::from_secs(10))
    {
        tracing::error!("the decision log's writer did not finish; its last records may be lost");
    }
    code
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining requests in flight");
}

/// SIGHUP reloads the files.
/// Fetch the keys of the identity sources at start and after every reload
/// that changes them, so that the first token of an issuer does not wait
/// for its keys (and `/readyz` tells early when they cannot be fetched).
fn spawn_identity_warmer(pdp: Arc<Pdp>) {
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let snap = pdp.live.snapshot();
            if snap.generation != seen {
                seen = snap.generation;
                if !snap.identity.is_empty() {
                    tracing::info!(
                        issuers = snap.identity.len(),
                        "identity sources: bearer JWTs of these issuers are accepted"
                    );
                }
                pdp.identity.warm(&snap.identity).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

fn spawn_sighup_reload(live: Arc<Live>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let live = live.clone();
            let _ = tokio::task::spawn_blocking(move || live.reload()).await;
        }
    });
}
