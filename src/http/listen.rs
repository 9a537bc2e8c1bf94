//! The accept loop: connections, their timeouts and their number.
//!
//! Each connection is served by hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge) with a header-read timeout (a client that does not send a
//! whole request head in time is disconnected) and an idle timeout (a
//! connection that moves no byte for that long is closed once its request in
//! flight, if any, is answered). Connections are bounded: up to
//! `max_connections` are served normally; beyond that, a few more (the
//! overflow) are served in shedding mode, which answers `/healthz` and
//! `/readyz` and refuses everything else with 503 and `Retry-After`, one
//! request per connection, with a short header-read timeout; beyond the
//! overflow a connection is closed at once. The limit is also kept below the
//! process's descriptor limit, so that accepting never runs out of
//! descriptors, and a liveness probe keeps getting answers while silent
//! clients hold the normal slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

/// The connection limits and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served normally.
    pub max_connections: usize,
    /// A client must send a whole request head within this time.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Descriptors kept for everything but connections (files, the store, the
/// watcher, the log).
const RESERVED_DESCRIPTORS: usize = 64;

/// The soft limit on open descriptors, when the system says.
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// (normal, total) connection caps: `max_connections` and an overflow of
/// one eighth (at least 8) for shedding mode, both within the descriptors.
fn caps(limits: &ConnLimits) -> (usize, usize) {
    let normal = limits.max_connections.max(1);
    let total = normal + (normal / 8).max(8);
    let available = descriptor_limit()
        .map(|fds| fds.saturating_sub(RESERVED_DESCRIPTORS).max(2))
        .unwrap_or(usize::MAX);
    if total <= available {
        return (normal, total);
    }
    // Fewer descriptors than asked for: an eighth of them for the overflow.
    (available - (available / 8).max(1), available)
}

/// Milliseconds since `EPOCH` (a process-wide start).
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A stream that notes when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last.store(now_ms(self.epoch), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Open connections, for the caps and for draining at shutdown.
struct Open {
    count: AtomicUsize,
    drained: Notify,
    metrics: Arc<Metrics>,
}

/// One open connection; closing it (dropping this) counts it out.
struct Slot(Arc<Open>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// How one connection is served.
#[derive(Clone, Copy)]
struct Mode {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    keep_alive: bool,
}

/// Serve `router` (normal connections) and `shedding` (the overflow) on
/// `listener` until `shutdown` resolves; then stop accepting, close idle
/// connections, let requests in flight finish, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shedding: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (normal_cap, total_cap) = caps(&limits);
    let epoch = Instant::now();
    let open = Arc::new(Open {
        count: AtomicUsize::new(0),
        drained: Notify::new(),
        metrics: metrics.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let normal = Mode {
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        keep_alive: true,
    };
    let shed_mode = Mode {
        header_read_timeout: limits.header_read_timeout.min(Duration::from_secs(1)),
        idle_timeout: limits.idle_timeout.min(Duration::from_secs(1)),
        keep_alive: false,
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // wait a moment (descriptors free as connections time out).
                tracing::debug!("accept error: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let n = open.count.load(Ordering::Acquire);
        if n >= total_cap {
            metrics.shed.inc();
            drop(stream);
            continue;
        }
        let (router, mode) = if n >= normal_cap {
            metrics.shed.inc();
            (shedding.clone(), shed_mode)
        } else {
            (router.clone(), normal)
        };
        open.count.fetch_add(1, Ordering::AcqRel);
        metrics.connections.inc();
        let slot = Slot(open.clone());
        let stop = stop_rx.clone();
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, router, mode, epoch, stop, slot));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    loop {
        let drained = open.drained.notified();
        if open.count.load(Ordering::Acquire) == 0 {
            break;
        }
        drained.await;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    mode: Mode,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let last = Arc::new(AtomicU64::new(now_ms(epoch)));
    let io = TokioIo::new(Tracked {
        inner: stream,
        epoch,
        last: last.clone(),
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(mode.header_read_timeout)
        .keep_alive(mode.keep_alive);
    builder.http2().timer(TokioTimer::new());
    let service = TowerToHyperService::new(router);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let idle_ms = mode.idle_timeout.as_millis() as u64;
    let mut tick = tokio::time::interval((mode.idle_timeout / 4).max(Duration::from_millis(25)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = tick.tick(), if !closing => {
                let quiet = now_ms(epoch).saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle_ms {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_keep_an_overflow_within_the_descriptors() {
        let (normal, total) = caps(&ConnLimits {
            max_connections: 100,
            ..ConnLimits::default()
        });
        assert!(normal <= 100 && normal < total, "{normal} {total}");
        if descriptor_limit().is_none_or(|fds| fds > 1000) {
            assert_eq!((normal, total), (100, 112));
        }
        if let Some(fds) = descriptor_limit() {
            assert!(total <= fds.saturating_sub(RESERVED_DESCRIPTORS).max(2));
        }
    }
}
