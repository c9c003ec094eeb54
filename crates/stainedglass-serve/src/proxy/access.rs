//! Who may use the proxy. It holds the user's upstream key and runs on the user's machine, so a
//! web page in the user's browser must not be able to drive it: requests from another origin
//! are refused unless named (`--allow-origin`), a `Host` that is not the proxy's own is refused
//! on a loopback bind (DNS rebinding), a chat request must be `application/json` (a
//! cross-origin form or `text/plain` POST needs no CORS preflight), and callers may have to
//! present a key (`--api-key`). Admission is bounded: past `max_concurrent` requests in flight
//! a caller gets 429 with `Retry-After`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::error::ApiError;

/// Access rules of a proxy.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Keys a caller may present as `Authorization: Bearer <key>`; empty admits everyone.
    pub api_keys: Vec<String>,
    /// Browser origins (`scheme://host[:port]`) allowed to call; others are refused.
    pub allowed_origins: Vec<String>,
    /// `Host` values accepted (e.g. `127.0.0.1:8080`, `localhost:8080`); `None` accepts any.
    pub allowed_hosts: Option<Vec<String>>,
}

impl AccessConfig {
    /// The `Host` names of a loopback bind on `port`; `None` (any host) for other binds.
    pub fn loopback_hosts(addr: std::net::SocketAddr) -> Option<Vec<String>> {
        if !addr.ip().is_loopback() {
            return None;
        }
        let p = addr.port();
        Some(vec![
            format!("127.0.0.1:{p}"),
            format!("localhost:{p}"),
            format!("[::1]:{p}"),
            addr.to_string(),
        ])
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    Host,
    Origin,
    Key,
    ContentType,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let forbidden = |msg: &str| {
            let body = serde_json::json!({"error": {"message": msg, "type": "permission_error",
                                                     "param": null, "code": "forbidden"}});
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        };
        match self {
            Denied::Host => {
                forbidden("the Host header does not name this proxy; call it by its own address")
            }
            Denied::Origin => forbidden(
                "cross-origin requests are refused; start the proxy with --allow-origin to \
                 allow a web page",
            ),
            Denied::Key => ApiError::Unauthorized.into_response(),
            Denied::ContentType => {
                let body = ApiError::BadRequest(
                    "send the request as `Content-Type: application/json`".into(),
                )
                .body();
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, axum::Json(body)).into_response()
            }
        }
    }
}

/// Checks one request against the rules.
pub(crate) fn check(cfg: &AccessConfig, method: &Method, h: &HeaderMap) -> Result<(), Denied> {
    if let Some(hosts) = &cfg.allowed_hosts {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(|v| hosts.iter().any(|a| a.eq_ignore_ascii_case(v))) {
            return Err(Denied::Host);
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or_default();
        if !cfg.allowed_origins.iter().any(|a| a == o) {
            return Err(Denied::Origin);
        }
    }
    if !cfg.api_keys.is_empty() {
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| {
            cfg.api_keys
                .iter()
                .any(|k| crate::server::constant_time_eq(k.as_bytes(), g.as_bytes()))
        });
        if !ok {
            return Err(Denied::Key);
        }
    }
    if method == Method::POST {
        let ct = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Denied::ContentType);
        }
    }
    Ok(())
}

/// The proxy's access middleware (everything but `/health`).
pub(crate) async fn middleware(
    State(cfg): State<Arc<AccessConfig>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() != "/health" {
        if let Err(d) = check(&cfg, req.method(), req.headers()) {
            return d.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn refuses_foreign_hosts_origins_keys_and_content_types() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let cfg = AccessConfig {
            api_keys: vec!["k".into()],
            allowed_origins: vec!["http://localhost:3000".into()],
            allowed_hosts: AccessConfig::loopback_hosts(addr),
        };
        let good = [
            (header::HOST, "localhost:8080"),
            (header::AUTHORIZATION, "Bearer k"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        ];
        let status = |pairs: &[(header::HeaderName, &str)]| {
            check(&cfg, &Method::POST, &headers(pairs))
                .map_err(|d| d.into_response().status().as_u16())
        };
        assert_eq!(status(&good), Ok(()));
        let with = |k: header::HeaderName, v: &'static str| {
            let mut p = good.to_vec();
            p.retain(|(n, _)| *n != k);
            p.push((k, v));
            status(&p)
        };
        assert_eq!(with(header::HOST, "attacker.example:8080"), Err(403));
        assert_eq!(with(header::ORIGIN, "http://evil.example"), Err(403));
        assert_eq!(with(header::ORIGIN, "http://localhost:3000"), Ok(()));
        assert_eq!(with(header::AUTHORIZATION, "Bearer nope"), Err(401));
        assert_eq!(with(header::CONTENT_TYPE, "text/plain"), Err(415));
        assert_eq!(status(&good[..2]), Err(415));
        // A wildcard bind accepts any Host.
        assert!(AccessConfig::loopback_hosts("0.0.0.0:8080".parse().expect("addr")).is_none());
    }
}
