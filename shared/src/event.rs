//! The connection event (the fetcher's input contract) and the messages that travel on the queues.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::SyncError;

/// The kind of source a connection reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    EndpointCentral,
    Jumpcloud,
    Intune,
    Jamf,
    Kandji,
}

impl SourceKind {
    /// The name used in events and summaries (`endpoint-central`, `jamf`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::EndpointCentral => "endpoint-central",
            SourceKind::Jumpcloud => "jumpcloud",
            SourceKind::Intune => "intune",
            SourceKind::Jamf => "jamf",
            SourceKind::Kandji => "kandji",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The register's record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ObjectType {
    #[default]
    Hardware,
    Person,
    Software,
}

impl ObjectType {
    /// The name used in events, keys and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectType::Hardware => "Hardware",
            ObjectType::Person => "Person",
            ObjectType::Software => "Software",
        }
    }

    /// Parse a user-typed type name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hardware" => Some(ObjectType::Hardware),
            "person" | "people" => Some(ObjectType::Person),
            "software" => Some(ObjectType::Software),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a run may create records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    CreateUpdate,
    UpdateOnly,
}

/// What the fetcher is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Sync,
    Sample,
    Test,
    /// Fetch and decide as a sync would, writing nothing (`assetsync plan`).
    Plan,
}

/// The connection event: the schedule's input, or a manual invocation. Unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionEvent {
    pub connection: String,
    pub source: SourceKind,
    pub secret_id: String,
    #[serde(default)]
    pub object_type: ObjectType,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    #[serde(default)]
    pub action: Action,
    /// Scheduler's `<aws.scheduler.scheduled-time>`, when the schedule passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    /// One-off release of the circuit breaker: this run may mark records missing even though its
    /// record count fell beyond the connection's `config:max_drop` (`assetsync sync --allow-drop`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_drop: bool,
}

impl ConnectionEvent {
    /// Parse and check an event, naming the problem when it is wrong.
    pub fn parse(value: serde_json::Value) -> Result<Self, SyncError> {
        let ev: ConnectionEvent =
            serde_json::from_value(value).map_err(|e| SyncError::Event(e.to_string()))?;
        ev.validate()?;
        Ok(ev)
    }

    /// Check the fields serde cannot.
    pub fn validate(&self) -> Result<(), SyncError> {
        if self.connection.trim().is_empty() {
            return Err(SyncError::Event("`connection` must not be empty".into()));
        }
        if !self
            .connection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(SyncError::Event(format!(
                "`connection` {:?} may hold only letters, digits, '-', '_' and '.'",
                self.connection
            )));
        }
        if self.secret_id.trim().is_empty() {
            return Err(SyncError::Event("`secret_id` must not be empty".into()));
        }
        Ok(())
    }
}

/// What the fetch queue carries: the connection and where its run stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Continuation {
    pub event: ConnectionEvent,
    pub run_id: String,
    /// A finish check (a delayed watchdog that re-arms itself until the run ends) rather than a
    /// cursor hand-over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check: bool,
}

/// What the records queue carries: one page (or one chunk of a page) of mapped records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageMessage {
    pub run_id: String,
    pub connection: String,
    pub source: SourceKind,
    pub object_type: ObjectType,
    pub mode: Mode,
    /// Page number within the run (0-based), and chunk within the page when it was split.
    pub page: u32,
    pub chunk: u32,
    pub records: Vec<crate::mapping::MappedRecord>,
    /// Records of this page that had no key, with the reason, counted `skipped`.
    #[serde(default)]
    pub skipped: Vec<crate::summary::RecordError>,
}

impl PageMessage {
    /// The id of this message within its run, stable across redeliveries and re-fetches.
    pub fn page_id(&self) -> String {
        page_id(self.page, self.chunk)
    }
}

/// The id of a page's chunk within its run: the sort key of its marker and of its pack.
pub fn page_id(page: u32, chunk: u32) -> String {
    format!("{page:06}.{chunk:03}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_field_is_named() {
        let err = ConnectionEvent::parse(json!({
            "connection": "jamf-prod", "source": "jamf", "secret_id": "s", "objecttype": "Hardware"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("objecttype"), "{err}");
    }

    #[test]
    fn defaults_apply() {
        let ev = ConnectionEvent::parse(
            json!({"connection": "jamf-prod", "source": "jamf", "secret_id": "s"}),
        )
        .unwrap();
        assert_eq!(ev.object_type, ObjectType::Hardware);
        assert_eq!(ev.mode, Mode::CreateUpdate);
        assert_eq!(ev.action, Action::Sync);
    }

    #[test]
    fn unknown_source_is_named() {
        let err =
            ConnectionEvent::parse(json!({"connection": "x", "source": "jamff", "secret_id": "s"}))
                .unwrap_err();
        assert!(err.to_string().contains("jamff"), "{err}");
    }
}
