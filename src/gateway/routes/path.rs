//! Request paths: a forwarded request target to the percent-decoded
//! segments a route can match, or why it matches nothing ([`PathError`]).

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 8192;
/// Most segments in a request path.
pub const MAX_SEGMENTS: usize = 64;

/// Why a request path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with `/`")]
    NotAbsolute,
    #[error("the request target is longer than {MAX_TARGET_BYTES} bytes")]
    TooLong,
    #[error("the request path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("the request path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the request path has a `.` or `..` segment")]
    DotSegment,
    #[error("the request path has invalid percent-encoding")]
    BadEncoding,
    #[error("the request path has an encoded `/` in a segment")]
    EncodedSlash,
}

/// The decoded segments of a request target: query and fragment dropped,
/// one trailing slash ignored.
pub fn request_segments(target: &str) -> Result<Vec<String>, PathError> {
    if target.len() > MAX_TARGET_BYTES {
        return Err(PathError::TooLong);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in rest.split('/') {
        if out.len() == MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        if raw.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let decoded = percent_decode(raw)?;
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.contains('/') {
            return Err(PathError::EncodedSlash);
        }
        out.push(decoded);
    }
    Ok(out)
}

/// Strict percent-decoding: every `%` starts two hex digits, and the result
/// is UTF-8.
fn percent_decode(s: &str) -> Result<String, PathError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}
