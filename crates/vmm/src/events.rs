//! The event log (`--event-log PATH`): one JSON object per line for each
//! lifecycle and device event, so users and tests can follow a VM.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Where events go (nowhere without `--event-log`).
#[derive(Default)]
pub struct EventLog {
    file: Option<Mutex<File>>,
}

impl EventLog {
    /// Appends events to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(EventLog {
            file: Some(Mutex::new(file)),
        })
    }

    /// Writes `{"timestamp_ms", "source", "event", "properties"}` as one line.
    pub fn emit(&self, source: &str, event: &str, properties: Value) {
        tracing::debug!("event {source}/{event} {properties}");
        let Some(file) = &self.file else {
            return;
        };
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = json!({
            "timestamp_ms": timestamp_ms,
            "source": source,
            "event": event,
            "properties": properties,
        })
        .to_string();
        line.push('\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!("event log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines() {
        let path = std::env::temp_dir().join(format!("fv-events-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = EventLog::open(&path).unwrap();
        log.emit("vm", "booted", json!({"generation": 0}));
        log.emit("vm", "paused", Value::Null);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "booted");
        assert_eq!(lines[0]["properties"]["generation"], 0);
        assert_eq!(lines[1]["source"], "vm");
        let _ = std::fs::remove_file(&path);
    }
}
