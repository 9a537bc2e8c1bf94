//! HTTP errors and the JSON body extractor.
//!
//! Every error leaves as `{"error": {"code", "message", "field"?}}` with a 4xx
//! or 5xx status. [`JsonBody`] reads a bounded body and deserializes it with
//! the path of the offending field (`requests[3].principal`), so a malformed
//! request names what is wrong.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::engine::RequestError;

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The same error, its field under `prefix` (e.g. `requests[2]`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_string(),
        });
        self
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl From<RequestError> for ApiError {
    /// 400, but 403 for request facts the server does not allow.
    fn from(e: RequestError) -> Self {
        let status = match e.code {
            "protected_fact" | "request_facts_disabled" => StatusCode::FORBIDDEN,
            "overloaded" => StatusCode::SERVICE_UNAVAILABLE,
            "internal" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError {
            status,
            ..ApiError::bad_request(e.code, e.field, e.message)
        }
    }
}

impl IntoResponse for ApiError {
    /// The JSON body; a 503 (load shed, facts behind) says when to retry.
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// A JSON request body, deserialized with field paths in its errors. Like
/// OPA, it does not insist on a Content-Type: the body must be JSON anyway.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "body_too_large",
                    "the request body exceeds the configured limit",
                )
            } else {
                ApiError::new(status, "invalid_body", rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Deserialize `bytes` as `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "malformed_json"
        } else {
            "invalid_request"
        };
        let message = inner.to_string();
        let root = path == "." || path == "?" || path.is_empty();
        let field = match (named_field(&message), root) {
            _ if code == "malformed_json" => None,
            (Some(name), true) => Some(name),
            (Some(name), false) if path == name || path.ends_with(&format!(".{name}")) => {
                Some(path)
            }
            (Some(name), false) => Some(format!("{path}.{name}")),
            (None, true) => None,
            (None, false) => Some(path),
        };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
            field,
        }
    })
}

/// The field named by serde's "missing field `x`" / "unknown field `x`".
fn named_field(message: &str) -> Option<String> {
    let rest = message.split("field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}
