//! The HTTP/1.1 accept loop both `sgt serve` and `sgt proxy` run: binding, timeouts for slow
//! peers, graceful shutdown on Ctrl-C or SIGTERM.

use crate::error::{Error, Result};
use axum::http::StatusCode;
use axum::Router;
use std::time::Duration;

/// Resolves on Ctrl-C or SIGTERM.
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
}

/// Binds `addr` (use port 0 for a free one) and returns the listener and its address.
pub async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind {
            addr: addr.to_string(),
            source: e,
        })?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// How long a peer may take: to send its request headers (slow senders are cut off), to send
/// its body, and for a handler to produce its response (a stream's first byte).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub headers: Duration,
    pub body: Duration,
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            headers: Duration::from_secs(10),
            body: Duration::from_secs(30),
            response: Duration::from_secs(600),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with(listener, app, shutdown, Timeouts::default()).await
}

/// [`run`] with explicit [`Timeouts`]. HTTP/1.1, one task per connection; a body that is not
/// received in time fails its request (400), a handler past its deadline answers 408.
pub async fn run_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    t: Timeouts,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let app = app
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(t.body))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            t.response,
        ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let svc = app
            .clone()
            .map_request(|r: axum::extract::Request<hyper::body::Incoming>| {
                r.map(axum::body::Body::new)
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(t.headers)
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(svc),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Most bytes of a refused body read and dropped before answering 413: four times the limit,
/// at most 64 MiB.
const DRAIN_MAX: u64 = 64 << 20;
/// Longest a refused body is read for.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Answers a request whose `Content-Length` is over `limit` with 413 itself, after reading and
/// dropping its body (streamed, never held) when it is at most four times the limit: a client
/// that writes its whole body before reading, as most do, then reads the 413 instead of a reset
/// connection (the server closing while it still writes). A larger or slower body is cut off
/// as before. Other requests go on to the router, whose body limit still applies to bodies
/// sent without a length.
pub(crate) async fn refuse_oversize(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let Some(n) = declared.filter(|&n| n > limit as u64) else {
        return next.run(req).await;
    };
    let cap = (limit as u64).saturating_mul(4).min(DRAIN_MAX);
    if n <= cap {
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut seen = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                seen += chunk.len() as u64;
                if seen > cap {
                    break;
                }
            }
        })
        .await;
    }
    crate::error::ApiError::BodyTooLarge { limit }.into_response()
}
