//! A blocking HTTP/1.1 client over std for the tests that drive real
//! binaries from plain threads (`Connection: close`, one request per
//! connection).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// An HTTP answer: status, headers (lower-case names), JSON body (null
/// when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `Orgwarden-Revision` header (the answer must carry one).
    pub fn revision(&self) -> u64 {
        self.header("orgwarden-revision")
            .expect("an Orgwarden-Revision header")
            .parse()
            .unwrap()
    }

    /// The error code of a JSON error body (empty when there is none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// A raw exchange's answer: status, headers (lower-case names) and the
/// body as text.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// One request to `addr` (`HOST:PORT`) over a fresh connection, with
/// `body` sent as is (no content type unless `headers` name one), waiting
/// at most `patience` for each read and write.
pub fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    patience: Duration,
) -> std::io::Result<Raw> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(patience))?;
    stream.set_write_timeout(Some(patience))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {response:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Raw {
        status,
        headers,
        body: body.to_string(),
    })
}

/// One request to `base` (`http://HOST:PORT`) with a JSON body, waiting
/// at most `patience` for the answer.
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    patience: Duration,
) -> std::io::Result<Answer> {
    let addr = base.strip_prefix("http://").unwrap_or(base);
    let mut all = headers.to_vec();
    if body.is_some() {
        all.push(("Content-Type", "application/json"));
    }
    let payload = body.map(Value::to_string).unwrap_or_default();
    let raw = exchange(addr, method, path, &all, payload.as_bytes(), patience)?;
    Ok(Answer {
        status: raw.status,
        headers: raw.headers,
        body: serde_json::from_str(&raw.body).unwrap_or(Value::Null),
    })
}
