//! The run summary: what `sync --json`, `runs show --json` and a manual sync return.

use serde::{Deserialize, Serialize};

/// Per-outcome counts of a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub not_found: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub errors: u64,
}

impl Counts {
    /// Add another set of counts.
    pub fn add(&mut self, o: &Counts) {
        self.created += o.created;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.skipped += o.skipped;
        self.not_found += o.not_found;
        self.missing += o.missing;
        self.duplicate += o.duplicate;
        self.errors += o.errors;
    }
}

/// One record's (or page's) failure, by key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordError {
    pub key: String,
    pub reason: String,
}

/// Pages fetched from the vendor vs imported into the register.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pages {
    pub fetched: u64,
    pub imported: u64,
    /// Pages that ended in the dead-letter queue.
    #[serde(default)]
    pub dead: u64,
}

/// Run status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    SucceededWithErrors,
    Failed,
}

impl Status {
    /// The contract name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::SucceededWithErrors => "succeeded_with_errors",
            Status::Failed => "failed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "succeeded_with_errors" => Status::SucceededWithErrors,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

/// The run summary (contract in DESIGN.md; extra fields are extensions).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub connection: String,
    pub source: String,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub pages: Pages,
    pub counts: Counts,
    pub errors: Vec<RecordError>,
    /// Extension: object type and mode of the run.
    pub object_type: String,
    pub mode: String,
    /// Extension: records the fetcher read and the total the vendor reported.
    pub records_fetched: u64,
    pub vendor_total: Option<u64>,
    /// Extension: vendor requests and throttling.
    pub vendor_requests: u64,
    pub throttled: u64,
    pub throttle_wait_ms: u64,
    /// Extension: why the run failed, or why no record was marked missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extension: which vendor API version served the pages (e.g. `computers-inventory v4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Extension: the run this run reverted (`assetsync runs revert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<String>,
    /// Extension: what a revert run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<RevertCounts>,
}

/// What a revert did (or, planned, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevertCounts {
    /// Records the revert writes.
    pub records: u64,
    /// Records whose attributes go back to their values before the run.
    pub updated: u64,
    /// Attributes put back.
    pub restored: u64,
    /// Records the run marked missing that are unmarked.
    pub unmarked: u64,
    /// Records marked missing again (reverting a revert that unmarked them).
    pub remarked: u64,
    /// Records the run created, marked as reverted.
    pub reverted: u64,
    /// Records whose reverted mark is lifted (reverting a revert).
    pub unreverted: u64,
    /// Changes of the run left alone because the value changed since.
    pub conflicts: u64,
    /// The first conflicts: key and why (the attribute, its value now and the run's).
    #[serde(default)]
    pub conflict_list: Vec<RecordError>,
}
