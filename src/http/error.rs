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

/// A JSON request body, deserialized with field paths in its errors. A body
/// without a Content-Type is read as JSON (as OPA reads it); one that says
/// it is something else is refused with 415 ([`check_content_type`]).
pub struct JsonBody<T>(pub T);

/// Refuse (415) a body whose Content-Type is not JSON (`application/json`
/// or any `+json` type); no Content-Type is accepted.
pub fn check_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .as_bytes();
    let (prefix, suffix) = (b"application/".as_slice(), b"+json".as_slice());
    if essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() >= prefix.len() + suffix.len()
            && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
    {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: format!(
            "the body must be JSON: send `Content-Type: application/json` (or none), not {:?}",
            value.to_str().unwrap_or("(not text)")
        ),
        field: Some("Content-Type".into()),
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers())?;
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

/// Deserialize `bytes` as `T` (one JSON value, nothing after it but
/// whitespace), naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // A well-formed body is read once, without tracking where the reader is;
    // a body at fault is read again to name the field.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_error_at(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| json_error_at(String::new(), e))?;
    Ok(value)
}

/// The 400 of a body that does not read as the expected JSON, at `path`.
fn json_error_at(path: String, inner: serde_json::Error) -> ApiError {
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
        (Some(name), false) if path == name || path.ends_with(&format!(".{name}")) => Some(path),
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
}

/// The code of an error status that no handler wrote (a layer's or an
/// extractor's).
fn status_code_word(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        431 => "headers_too_large",
        503 => "overloaded",
        s if s >= 500 => "internal",
        _ => "invalid_request",
    }
}

/// The field a query-string rejection names
/// (`Failed to deserialize query string: limit: invalid digit`).
fn query_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Failed to deserialize query string: ")?;
    let (field, _) = rest.split_once(": ")?;
    (!field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
    .then(|| field.to_string())
}

/// Heads too long for the contract, refused before any routing: 414 for a
/// URI over 8 KiB, 431 for headers over 32 KiB.
pub fn refuse_head(req: &Request) -> Option<Response> {
    const MAX_URI: usize = 8 * 1024;
    const MAX_HEADERS: usize = 32 * 1024;
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > MAX_URI {
        return Some(
            ApiError::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the URI is {uri_len} bytes, over the limit of {MAX_URI}"),
            )
            .into_response(),
        );
    }
    let header_len: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_len > MAX_HEADERS {
        return Some(
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the headers are {header_len} bytes, over the limit of {MAX_HEADERS}"),
            )
            .into_response(),
        );
    }
    None
}

/// Whether `response` must be rewritten by [`json_error`]: an error answer
/// whose body is not JSON.
pub fn needs_json(response: &Response) -> bool {
    response.status().as_u16() >= 400
        && !response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
}

/// An error answer that is not JSON (from tower layers: 408 from the
/// timeout, 413 from the body limit; from axum's extractors and router: 405,
/// a bad path or query) rewritten as `{"error": {"code", "message",
/// "field"?}}`, keeping the original answer's headers (`Allow`,
/// `Retry-After`).
pub async fn json_error(response: Response) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let error = ApiError {
        status,
        code: status_code_word(status),
        field: query_field(&message),
        message,
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    let fresh = error.into_response();
    let (fresh_parts, fresh_body) = fresh.into_parts();
    for (k, v) in fresh_parts.headers.iter() {
        parts.headers.insert(k.clone(), v.clone());
    }
    Response::from_parts(parts, fresh_body)
}

/// The field named by serde's "missing field `x`" / "unknown field `x`".
fn named_field(message: &str) -> Option<String> {
    let rest = message.split("field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        n: u32,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        word: String,
    }

    #[test]
    fn a_well_formed_body_reads_whatever_whitespace_follows() {
        let probe: Probe = parse_json(b" {\"n\": 3, \"inner\": {\"word\": \"w\"}} \n").unwrap();
        assert_eq!(probe.n, 3);
        assert_eq!(probe.inner.unwrap().word, "w");
    }

    #[test]
    fn anything_after_the_value_is_malformed() {
        let e = parse_json::<Probe>(b"{\"n\": 3} {\"n\": 4}").unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field),
            (StatusCode::BAD_REQUEST, "malformed_json", None)
        );
        assert!(e.message.contains("trailing"), "{}", e.message);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let e = parse_json::<Probe>(b"{\"n\": 3, \"inner\": {\"word\": 5}}").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_request", Some("inner.word"))
        );
        let e = parse_json::<Probe>(b"{\"n\": 3, \"extra\": 1}").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_request", Some("extra"))
        );
        let e = parse_json::<Probe>(b"{\"inner\": null}").unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("invalid_request", Some("n")));
        let e = parse_json::<Probe>(b"{\"n\": ").unwrap_err();
        assert_eq!((e.code, e.field), ("malformed_json", None));
    }

    #[test]
    fn json_content_types_are_accepted_in_any_case() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::CONTENT_TYPE, v.parse().unwrap());
            check_content_type(&h).map_err(|e| e.code)
        };
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            "APPLICATION/VND.API+JSON",
        ] {
            assert_eq!(with(ok), Ok(()), "{ok}");
        }
        for refused in [
            "text/plain",
            "application/jsonx",
            "json",
            "application/json+xml",
        ] {
            assert_eq!(with(refused), Err("unsupported_media_type"), "{refused}");
        }
        assert_eq!(
            check_content_type(&axum::http::HeaderMap::new()).map_err(|e| e.code),
            Ok(())
        );
    }
}
