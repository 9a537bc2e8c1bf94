//! The decision log (R15): one JSON line per decision, for audit.
//!
//! Each line has the decision id, time, principal, action, resource, the
//! decision, the determining policies, the errors, the snapshot generation,
//! the latency, the API that asked and whether the cache answered. It never
//! holds request headers, credentials or context values.
//!
//! The request path does as little as it can: a [`DecisionRecord`] holds the
//! shared [`Entry`] the decision point already has (outcome and resolved
//! names, never copied), the id, the time and a few numbers, and goes into a
//! bounded queue. A writer thread formats the lines itself and writes
//! everything queued in one go (one write per batch), so the output is
//! complete as soon as the queue runs dry.
//!
//! When the writer cannot keep up and the queue is full, [`Overflow`] says
//! what happens: `Block` (the default) makes the request wait for room, as
//! an async wait of the request's task, never a blocked runtime thread, so
//! no record is lost; `Drop` drops the record and the decision point counts
//! it (`orgwarden_decision_log_dropped_total`).
//!
//! Order: lines are written in the order records enter the queue (waiting
//! requests enter it first come, first served). Concurrent decisions may
//! enter it in another order than their timestamps; decision ids are
//! UUIDv7, so sorting by id or timestamp restores the time order.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc::{self, Receiver, Sender, WeakSender, error::TrySendError};
use uuid::Uuid;

use crate::engine::{Decision, Outcome};

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "none" => LogTarget::Off,
            "stdout" | "-" => LogTarget::Stdout,
            path => LogTarget::File(path.into()),
        })
    }
}

/// What a decision does when the log's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait for room (the request's task waits; no record is lost).
    #[default]
    Block,
    /// Drop the record and count it.
    Drop,
}

crate::words::words!(Overflow { "block" => Block, "drop" => Drop });

/// How the log behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Log only denied decisions.
    pub denies_only: bool,
    pub overflow: Overflow,
    /// Records the queue holds before [`Overflow`] applies.
    pub capacity: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            denies_only: false,
            overflow: Overflow::Block,
            capacity: 16 * 1024,
        }
    }
}

/// A decision with the resolved names it was made for; shared by the
/// decision cache, the response and the decision log.
#[derive(Debug)]
pub struct Entry {
    pub outcome: Outcome,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The uids of the entities the request brought of its own (sorted);
    /// empty when it was decided on the loaded facts only.
    pub request_facts: Vec<String>,
}

/// One decision, as logged.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub decision_id: Uuid,
    pub timestamp: SystemTime,
    pub entry: Arc<Entry>,
    pub generation: u64,
    pub latency_us: u64,
    /// The API that asked (`cedar`, `authzen`, `forward_auth`).
    pub api: &'static str,
    pub cached: bool,
    /// The issuer of the verified token that named the principal, when a
    /// token did (never the token or its claims).
    pub issuer: Option<Arc<str>>,
}

/// What became of a record handed to [`DecisionLog::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Queued for the writer (or not wanted: the log is off, or denies only).
    Queued,
    /// The queue was full and the log drops on overflow.
    Dropped,
    /// The writer has stopped.
    Closed,
}

/// The log's sending side; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    sender: Option<Sender<DecisionRecord>>,
    writer: Option<Arc<std::thread::JoinHandle<()>>>,
    denies_only: bool,
    overflow: Overflow,
}

impl DecisionLog {
    /// A log that records nothing.
    pub fn off() -> Self {
        DecisionLog {
            sender: None,
            writer: None,
            denies_only: false,
            overflow: Overflow::Block,
        }
    }

    /// Start the writer for `target`, blocking on overflow.
    pub fn start(target: &LogTarget, denies_only: bool) -> std::io::Result<Self> {
        Self::start_with(
            target,
            LogOptions {
                denies_only,
                ..LogOptions::default()
            },
        )
    }

    /// Start the writer for `target` with `options`.
    pub fn start_with(target: &LogTarget, options: LogOptions) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(Self::off()),
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        Self::to_writer(out, options)
    }

    /// Start a writer thread that writes lines to `out`.
    pub fn to_writer(out: Box<dyn Write + Send>, options: LogOptions) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(receiver, out))?;
        Ok(DecisionLog {
            sender: Some(sender),
            writer: Some(Arc::new(writer)),
            denies_only: options.denies_only,
            overflow: options.overflow,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Would a decision of this kind be logged? (Lets the caller skip
    /// building a record the log would not keep.)
    pub fn wants(&self, decision: Decision) -> bool {
        self.sender.is_some() && !(self.denies_only && decision == Decision::Allow)
    }

    /// Record a decision (a no-op when off, or for allows when denies
    /// only). On a full queue this waits for room or drops the record, as
    /// the log's [`Overflow`] says; waiting never blocks the thread.
    pub async fn record(&self, record: DecisionRecord) -> Recorded {
        let Some(sender) = &self.sender else {
            return Recorded::Queued;
        };
        if !self.wants(record.entry.outcome.decision) {
            return Recorded::Queued;
        }
        match sender.try_send(record) {
            Ok(()) => Recorded::Queued,
            Err(TrySendError::Closed(_)) => Recorded::Closed,
            Err(TrySendError::Full(record)) => match self.overflow {
                Overflow::Drop => Recorded::Dropped,
                Overflow::Block => match sender.send(record).await {
                    Ok(()) => Recorded::Queued,
                    Err(_) => Recorded::Closed,
                },
            },
        }
    }

    /// A handle that waits for the writer to finish, once every clone of
    /// this log is dropped (none when the log is off).
    pub fn closer(&self) -> Option<Closer> {
        self.writer.clone().map(Closer)
    }

    /// A handle that tells how many records are queued, without keeping
    /// the writer alive.
    pub fn probe(&self) -> Option<QueueProbe> {
        self.sender.as_ref().map(|s| QueueProbe(s.downgrade()))
    }
}

/// Waits for the writer to write what was queued and stop.
pub struct Closer(Arc<std::thread::JoinHandle<()>>);

impl Closer {
    /// Wait until the writer has stopped (every clone of the log is
    /// dropped and the queue is written), at most `limit`; false if it
    /// has not.
    pub fn wait(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while !self.0.is_finished() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }
}

/// Tells how many records wait for the writer.
#[derive(Debug, Clone)]
pub struct QueueProbe(WeakSender<DecisionRecord>);

impl QueueProbe {
    /// Records queued (0 once the log is closed).
    pub fn queued(&self) -> usize {
        self.0
            .upgrade()
            .map(|s| s.max_capacity() - s.capacity())
            .unwrap_or(0)
    }
}

/// Most records taken from the queue at once.
const BATCH: usize = 1024;

/// How long the writer lets records gather after a partial batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

fn write_loop(mut receiver: Receiver<DecisionRecord>, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::with_capacity(256 * BATCH);
    // Wait for at least one record, take everything queued (up to BATCH),
    // write it in one go; when nothing is left, `out` has every line.
    // After a partial batch, pause for `GATHER` so that the next records
    // gather in the queue: a busy server then wakes this thread about a
    // thousand times a second instead of once per decision (each wake-up
    // is a futex call on the request path), and a line reaches the file
    // at most that much later.
    while receiver.blocking_recv_many(&mut batch, BATCH) > 0 {
        let partial = batch.len() < BATCH;
        buf.clear();
        for record in batch.drain(..) {
            write_line(&mut buf, &record);
        }
        if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
            tracing::error!("cannot write the decision log: {e}");
        }
        if partial {
            std::thread::sleep(GATHER);
        }
    }
    let _ = out.flush();
}

/// Append `record`'s line (with its newline) to `buf`: the fields, in
/// order, `decision_id`, `timestamp` (RFC 3339, UTC), `principal`,
/// `action`, `resource`, `decision`, `reasons`, `errors`, `request_facts`
/// (only when the request brought entities of its own), `generation`,
/// `latency_us`, `api`, `cached`.
pub fn write_line(buf: &mut Vec<u8>, record: &DecisionRecord) {
    let entry = &*record.entry;
    buf.extend_from_slice(b"{\"decision_id\":\"");
    let mut id = Uuid::encode_buffer();
    buf.extend_from_slice(
        record
            .decision_id
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    buf.extend_from_slice(b"\",\"timestamp\":\"");
    let t: time::OffsetDateTime = record.timestamp.into();
    let _ = t.format_into(buf, &time::format_description::well_known::Rfc3339);
    buf.extend_from_slice(b"\",\"principal\":");
    string(buf, &entry.principal);
    if let Some(issuer) = &record.issuer {
        buf.extend_from_slice(b",\"issuer\":");
        string(buf, issuer);
    }
    buf.extend_from_slice(b",\"action\":");
    string(buf, &entry.action);
    buf.extend_from_slice(b",\"resource\":");
    string(buf, &entry.resource);
    buf.extend_from_slice(match entry.outcome.decision {
        Decision::Allow => b",\"decision\":\"Allow\",\"reasons\":[",
        Decision::Deny => b",\"decision\":\"Deny\",\"reasons\":[",
    });
    strings(buf, &entry.outcome.reasons);
    buf.extend_from_slice(b"],\"errors\":[");
    strings(buf, &entry.outcome.errors);
    buf.push(b']');
    if !entry.request_facts.is_empty() {
        buf.extend_from_slice(b",\"request_facts\":[");
        strings(buf, &entry.request_facts);
        buf.push(b']');
    }
    buf.extend_from_slice(b",\"generation\":");
    number(buf, record.generation);
    buf.extend_from_slice(b",\"latency_us\":");
    number(buf, record.latency_us);
    buf.extend_from_slice(b",\"api\":");
    string(buf, record.api);
    buf.extend_from_slice(if record.cached {
        b",\"cached\":true}\n"
    } else {
        b",\"cached\":false}\n"
    });
}

fn strings(buf: &mut Vec<u8>, items: &[String]) {
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        string(buf, s);
    }
}

/// A JSON string, escaped as `serde_json` escapes it.
fn string(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

fn number(buf: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(principal: &str, reasons: &[&str], errors: &[&str]) -> DecisionRecord {
        DecisionRecord {
            decision_id: Uuid::parse_str("0190f2a4-5b6c-7d8e-9f01-23456789abcd").unwrap(),
            timestamp: SystemTime::UNIX_EPOCH + Duration::new(1_780_000_000, 123_450_000),
            entry: Arc::new(Entry {
                outcome: Outcome {
                    decision: Decision::Deny,
                    reasons: reasons.iter().map(|s| s.to_string()).collect(),
                    errors: errors.iter().map(|s| s.to_string()).collect(),
                },
                principal: principal.to_string(),
                action: r#"Prefect::Action::"see_flows""#.to_string(),
                resource: r#"Prefect::Workspace::"acme-prod""#.to_string(),
                request_facts: Vec::new(),
            }),
            generation: 7,
            latency_us: 0,
            api: "cedar",
            cached: true,
            issuer: None,
        }
    }

    fn line(r: &DecisionRecord) -> String {
        let mut buf = Vec::new();
        write_line(&mut buf, r);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_line_keeps_its_format_field_for_field() {
        let r = record(
            r#"Prefect::User::"bob""#,
            &["tenant-boundary", "b"],
            &["while evaluating policy `p`: overflow"],
        );
        assert_eq!(
            line(&r),
            concat!(
                r#"{"decision_id":"0190f2a4-5b6c-7d8e-9f01-23456789abcd","#,
                r#""timestamp":"2026-05-28T20:26:40.12345Z","#,
                r#""principal":"Prefect::User::\"bob\"","#,
                r#""action":"Prefect::Action::\"see_flows\"","#,
                r#""resource":"Prefect::Workspace::\"acme-prod\"","#,
                r#""decision":"Deny","reasons":["tenant-boundary","b"],"#,
                r#""errors":["while evaluating policy `p`: overflow"],"#,
                r#""generation":7,"latency_us":0,"api":"cedar","cached":true}"#,
                "\n"
            )
        );
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let r = DecisionRecord {
            timestamp: whole,
            latency_us: 18_446_744_073_709_551_615,
            cached: false,
            ..record("U::\"a\"", &[], &[])
        };
        let text = line(&r);
        assert!(
            text.contains(r#""timestamp":"2026-05-28T20:26:40Z""#),
            "{text}"
        );
        assert!(text.contains(r#""reasons":[],"errors":[],"#), "{text}");
        assert!(
            text.ends_with(
                "\"latency_us\":18446744073709551615,\"api\":\"cedar\",\"cached\":false}\n"
            ),
            "{text}"
        );
    }

    /// The former record, serialized by serde's derive.
    #[derive(serde::Serialize)]
    struct Derived<'a> {
        decision_id: String,
        #[serde(serialize_with = "crate::reload::rfc3339::serialize")]
        timestamp: SystemTime,
        principal: &'a str,
        action: &'a str,
        resource: &'a str,
        decision: Decision,
        reasons: &'a [String],
        errors: &'a [String],
        generation: u64,
        latency_us: u64,
        api: &'a str,
        cached: bool,
    }

    #[test]
    fn a_line_is_what_the_derived_serializer_wrote() {
        for r in [
            record("U::\"\\\u{7f}\u{1f}\"", &[], &["x"]),
            record("plain", &["a", "b\"c"], &[]),
        ] {
            let e = &*r.entry;
            let derived = Derived {
                decision_id: r.decision_id.to_string(),
                timestamp: r.timestamp,
                principal: &e.principal,
                action: &e.action,
                resource: &e.resource,
                decision: e.outcome.decision,
                reasons: &e.outcome.reasons,
                errors: &e.outcome.errors,
                generation: r.generation,
                latency_us: r.latency_us,
                api: r.api,
                cached: r.cached,
            };
            let expected = serde_json::to_string(&derived).unwrap() + "\n";
            assert_eq!(line(&r), expected);
        }
    }

    #[test]
    fn strings_are_escaped_as_json() {
        let awkward = "U::\"a\\b\"\n\t\u{1}é\u{2028}";
        let r = record(awkward, &["p\"q"], &["e\\\r"]);
        let text = line(&r);
        assert!(text.ends_with('\n') && !text[..text.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["principal"], awkward);
        assert_eq!(v["reasons"][0], "p\"q");
        assert_eq!(v["errors"][0], "e\\\r");
        assert_eq!(v["latency_us"], 0);
    }

    #[test]
    fn a_record_is_wanted_only_when_it_would_be_written() {
        let off = DecisionLog::start(&LogTarget::Off, false).unwrap();
        assert!(!off.wants(Decision::Allow) && !off.wants(Decision::Deny));
        let dir = tempfile::tempdir().unwrap();
        let target = LogTarget::File(dir.path().join("decisions.log"));
        let all = DecisionLog::start(&target, false).unwrap();
        assert!(all.wants(Decision::Allow) && all.wants(Decision::Deny));
        let denies = DecisionLog::start(&target, true).unwrap();
        assert!(!denies.wants(Decision::Allow));
        assert!(denies.wants(Decision::Deny));
    }

    #[test]
    fn overflow_words() {
        assert_eq!("block".parse::<Overflow>().unwrap(), Overflow::Block);
        assert_eq!("drop".parse::<Overflow>().unwrap(), Overflow::Drop);
        assert!("lose".parse::<Overflow>().is_err());
    }
}
