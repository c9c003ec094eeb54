//! Errors: [`Error`] for set-up (loading, binding), [`ApiError`] for requests — one enum,
//! mapped to an HTTP status and a JSON body in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source} (is the port in use? pass another --port)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Models(#[from] stainedglass_models::Error),
    #[error(transparent)]
    Text(#[from] stainedglass_text::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A request that failed; the message says what was wrong and how to fix it, and never
/// echoes prompt content.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    /// Malformed JSON, unknown fields, bad base64 or an unreadable tensor file.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but unacceptable: wrong hidden size, NaN/Inf, over a limit.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// A `model` the proxy does not serve.
    #[error("the model `{asked}` does not exist; this endpoint serves `{serves}`")]
    ModelNotFound { asked: String, serves: String },
    #[error("at capacity ({0} requests waiting); retry after the seconds in Retry-After")]
    Overloaded(usize),
    /// The upstream did not answer in time.
    #[error("the upstream did not answer within {0} s")]
    UpstreamTimeout(u64),
    #[error("upstream error: {0}")]
    Upstream(String),
    /// The upstream refused the request as the client's fault (its 4xx): passed on as such.
    #[error("the upstream refused the request: {message}")]
    UpstreamRejected { status: u16, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) | ApiError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::UpstreamRejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "authentication_error",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BadRequest(_) => "invalid_request_error",
            ApiError::Unprocessable(_) => "invalid_request_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::ModelNotFound { .. } => "invalid_request_error",
            ApiError::Overloaded(_) => "overloaded_error",
            ApiError::Upstream(_) | ApiError::UpstreamTimeout(_) => "upstream_error",
            ApiError::UpstreamRejected { .. } => "invalid_request_error",
            ApiError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `code`: a short machine-readable string.
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::Unprocessable(_) => "unprocessable_input",
            ApiError::NotFound(_) => "not_found",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::UpstreamRejected { .. } => "upstream_rejected",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The request field the error is about, when there is one.
    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    /// The OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"message": self.to_string(), "type": self.kind(), "param": self.param(),
                      "code": self.code()}
        })
    }
}

/// Seconds a refused client is asked to wait (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, ApiError::Overloaded(_)) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_S),
            );
        }
        r
    }
}
