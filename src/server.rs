//! `orgwarden serve`: configuration, start-up, signals and shutdown.
//!
//! Loads the files (refusing to start on invalid ones, with the same
//! diagnostics as `orgwarden check`), starts the decision log, binds the
//! listener and serves until SIGTERM or SIGINT, then drains requests in
//! flight. Changes to the files reload them (see [`crate::reload`]); so do
//! SIGHUP and `POST /v1/reload`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use clap::{Args, ValueEnum};

use crate::cli::PathArgs;
use crate::decision_log::{DecisionLog, LogTarget};
use crate::gateway::{ForwardAuthConfig, Unmatched};
use crate::http::{self, App, HttpConfig};
use crate::metrics::Metrics;
use crate::pdp::Pdp;
use crate::reload::{Live, WatchConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "ORGWARDEN_LISTEN", default_value = "127.0.0.1:8180")]
    pub listen: SocketAddr,
    /// Most requests in one batch.
    #[arg(long, env = "ORGWARDEN_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "ORGWARDEN_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most entities one request may bring.
    #[arg(long, env = "ORGWARDEN_MAX_REQUEST_ENTITIES", default_value_t = 1000)]
    pub max_request_entities: usize,
    /// Time limit of one HTTP request, in milliseconds.
    #[arg(long, env = "ORGWARDEN_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Entries in the decision cache; 0 turns it off.
    #[arg(long, env = "ORGWARDEN_CACHE_SIZE", default_value_t = 100_000)]
    pub cache_size: u64,
    /// Where decision log lines go: `stdout`, `off`, or a file path.
    #[arg(long, env = "ORGWARDEN_DECISION_LOG", default_value = "stdout")]
    pub decision_log: LogTarget,
    /// Log only denied decisions.
    #[arg(long, env = "ORGWARDEN_DECISION_LOG_DENIES_ONLY")]
    pub decision_log_denies_only: bool,
    /// Bearer token for admin endpoints (`POST /v1/reload`); unset refuses them.
    #[arg(long, env = "ORGWARDEN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Base URL advertised by `/.well-known/authzen-configuration`.
    #[arg(long, env = "ORGWARDEN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// What `/v1/forward-auth` answers for a request that no route matches.
    #[arg(
        long,
        env = "ORGWARDEN_FORWARD_AUTH_UNMATCHED",
        value_enum,
        default_value = "deny"
    )]
    pub forward_auth_unmatched: Unmatched,
    /// Header, set by a trusted authenticator in front, that names the
    /// principal of `/v1/forward-auth` requests (`User::"alice"`); when
    /// unset, no such header is read.
    #[arg(long, env = "ORGWARDEN_TRUSTED_PRINCIPAL_HEADER")]
    pub trusted_principal_header: Option<HeaderName>,
    /// Format of the server's own log on stderr (filter with RUST_LOG).
    #[arg(long, env = "ORGWARDEN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Quiet time after a file change before reloading, in milliseconds.
    #[arg(long, env = "ORGWARDEN_RELOAD_DEBOUNCE_MS", default_value_t = 100)]
    pub reload_debounce_ms: u64,
    /// Do not watch the files; reload only on SIGHUP or `POST /v1/reload`.
    #[arg(long, env = "ORGWARDEN_NO_WATCH")]
    pub no_watch: bool,
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
pub fn run(args: ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    let live = match Live::load(args.paths.paths()) {
        Ok(live) => Arc::new(live),
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("error: not starting: the files above are invalid");
            return ExitCode::from(1);
        }
    };
    let log = match DecisionLog::start(&args.decision_log, args.decision_log_denies_only) {
        Ok(log) => log,
        Err(e) => {
            eprintln!(
                "error: cannot open the decision log {:?}: {e}",
                args.decision_log
            );
            return ExitCode::from(1);
        }
    };
    let config = HttpConfig {
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        max_request_entities: args.max_request_entities,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        admin_token: args.admin_token.clone(),
        public_url: args.public_url.clone(),
        forward_auth: ForwardAuthConfig {
            unmatched: args.forward_auth_unmatched,
            trusted_principal_header: args.trusted_principal_header.clone(),
        },
    };
    // Reload when the files change, for as long as this function runs.
    let _watch = if args.no_watch {
        None
    } else {
        let config = WatchConfig {
            debounce: Duration::from_millis(args.reload_debounce_ms),
        };
        live.watch(config)
            .inspect_err(|e| {
                tracing::warn!(
                    "not watching the files ({e}): reload with SIGHUP or POST /v1/reload"
                )
            })
            .ok()
    };
    let pdp = Pdp::new(live.clone(), Arc::new(Metrics::new()), args.cache_size, log);
    let app = Arc::new(App::new(pdp, config));
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
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
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
        spawn_sighup_reload(live.clone());
        match http::serve(listener, app, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("server error: {e}");
                ExitCode::from(1)
            }
        }
    })
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
