//! The decision log (R15): one JSON line per decision, for audit.
//!
//! Each line has the decision id, time, principal, action, resource, the
//! decision, the determining policies, the errors, the snapshot generation and
//! the latency. It never holds request headers, credentials or context
//! values. Lines go to a background writer thread through a bounded channel,
//! so a slow disk slows decisions down (back-pressure) instead of losing
//! audit records.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;

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

/// One decision, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub decision_id: String,
    #[serde(serialize_with = "crate::reload::rfc3339::serialize")]
    pub timestamp: SystemTime,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub decision: crate::engine::Decision,
    pub reasons: Vec<String>,
    pub errors: Vec<String>,
    pub generation: u64,
    pub latency_us: u64,
    /// The API that asked (`cedar`, `authzen`, `forward_auth`).
    pub api: &'static str,
    pub cached: bool,
}

/// The log's sending side; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    sender: Option<SyncSender<DecisionRecord>>,
    denies_only: bool,
}

impl DecisionLog {
    /// A log that records nothing.
    pub fn off() -> Self {
        DecisionLog {
            sender: None,
            denies_only: false,
        }
    }

    /// Start the writer for `target`.
    pub fn start(target: &LogTarget, denies_only: bool) -> std::io::Result<Self> {
        let writer: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(Self::off()),
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, receiver) = sync_channel(16 * 1024);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(receiver, std::io::BufWriter::new(writer)))?;
        Ok(DecisionLog {
            sender: Some(sender),
            denies_only,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Would a decision of this kind be logged? (Lets the caller skip
    /// building a record the log would drop.)
    pub fn wants(&self, decision: crate::engine::Decision) -> bool {
        self.sender.is_some() && !(self.denies_only && decision == crate::engine::Decision::Allow)
    }

    /// Record a decision (a no-op when off, or for allows when denies only).
    pub fn record(&self, record: DecisionRecord) {
        let Some(sender) = &self.sender else { return };
        if !self.wants(record.decision) {
            return;
        }
        if sender.send(record).is_err() {
            tracing::error!("decision log writer stopped; decision not logged");
        }
    }
}

fn write_loop(receiver: Receiver<DecisionRecord>, mut out: impl Write) {
    let mut line = Vec::with_capacity(512);
    loop {
        // Flush whenever the queue runs dry, then wait for the next record.
        let record = match receiver.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                match receiver.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        line.clear();
        if serde_json::to_writer(&mut line, &record).is_ok() {
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                tracing::error!("cannot write decision log: {e}");
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Decision;

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
}
