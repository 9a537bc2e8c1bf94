//! Middleware on every request that must cost next to nothing: written as
//! tower layers that call the service below them directly. (An
//! `axum::middleware::from_fn` clones the whole service stack below it on
//! every request, a measurable share of a cached decision.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use prometheus_client::metrics::gauge::Gauge;
use tower::{Layer, Service};

use super::error;

/// Every error answer leaves as JSON, and heads too long are refused before
/// routing ([`error::refuse_head`], [`error::json_error`]). Outermost, so
/// that the answers of the layers below it (timeout, body limit) are
/// covered.
#[derive(Clone, Copy, Default)]
pub struct JsonErrorsLayer;

impl<S> Layer<S> for JsonErrorsLayer {
    type Service = JsonErrors<S>;

    fn layer(&self, inner: S) -> JsonErrors<S> {
        JsonErrors { inner }
    }
}

/// The service of [`JsonErrorsLayer`].
#[derive(Clone)]
pub struct JsonErrors<S> {
    inner: S,
}

type BoxAnswer<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S> Service<Request> for JsonErrors<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxAnswer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(refused) = error::refuse_head(&req) {
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(if error::needs_json(&response) {
                error::json_error(response).await
            } else {
                response
            })
        })
    }
}

/// Counts the requests in flight in a gauge: up when a request enters, down
/// when its answer is ready or its future is dropped (a timeout, a client
/// gone).
#[derive(Clone)]
pub struct InFlightLayer {
    gauge: Gauge,
}

impl InFlightLayer {
    pub fn new(gauge: Gauge) -> Self {
        Self { gauge }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            gauge: self.gauge.clone(),
        }
    }
}

/// The service of [`InFlightLayer`].
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    gauge: Gauge,
}

/// Holds one count of the gauge until dropped.
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S, R> Service<R> for InFlight<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.gauge.inc();
        InFlightFuture {
            inner: Box::pin(self.inner.call(req)),
            _counted: Counted(self.gauge.clone()),
        }
    }
}

/// The answer of a request counted in flight.
pub struct InFlightFuture<F> {
    inner: Pin<Box<F>>,
    _counted: Counted,
}

impl<F: Future> Future for InFlightFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test]
    async fn counts_a_request_until_it_answers_or_is_dropped() {
        let gauge = Gauge::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let mut svc = InFlightLayer::new(gauge.clone()).layer(tower::service_fn(move |n: u32| {
            let rx = rx.clone();
            async move {
                if n == 1 {
                    let rx = rx.lock().await.take().expect("one waiting request");
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(n)
            }
        }));
        let waiting = svc.call(1);
        assert_eq!(gauge.get(), 1);
        assert_eq!(svc.call(2).await, Ok(2));
        assert_eq!(gauge.get(), 1, "the answered request is counted out");
        let handle = tokio::spawn(waiting);
        tx.send(()).expect("the request waits");
        assert_eq!(handle.await.expect("joins"), Ok(1));
        assert_eq!(gauge.get(), 0);
        let dropped = svc.call(3);
        assert_eq!(gauge.get(), 1);
        drop(dropped);
        assert_eq!(gauge.get(), 0, "a dropped request is counted out");
    }
}
