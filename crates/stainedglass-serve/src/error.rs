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
    #[error("the server is at capacity ({0} requests waiting); retry later")]
    Overloaded(usize),
    #[error("upstream error: {0}")]
    Upstream(String),
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
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
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
            ApiError::Overloaded(_) => "overloaded_error",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::Internal(_) => "server_error",
        }
    }

    /// The OpenAI-style error body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"message": self.to_string(), "type": self.kind(), "code": self.status().as_u16()}
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}
