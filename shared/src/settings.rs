//! Deployment settings, read once per cold start from the environment the template sets.

use std::time::Duration;

use crate::error::AwsError;
use crate::register::Precedence;

/// What both functions read from their environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub table: String,
    pub records_queue_url: String,
    pub fetch_queue_url: String,
    pub dlq_url: Option<String>,
    /// The records queue's `maxReceiveCount`: the importer's last try of a page.
    pub max_receive_count: u32,
    pub asset_tag_prefix: String,
    pub asset_tag_width: usize,
    pub precedence: Precedence,
    /// How long a run's lease lives without a heartbeat.
    pub lease_seconds: i64,
    /// The fetcher hands over to the fetch queue when less than this remains.
    pub time_reserve: Duration,
    /// Pages of one SQS batch the importer imports at once. The local stack sets 1: moto's
    /// TransactWriteItems snapshots and restores whole tables when a condition fails, which undoes
    /// concurrent writes (real DynamoDB transactions are isolated).
    pub importer_concurrency: usize,
}

impl Settings {
    /// Read the settings from the environment.
    pub fn from_env() -> Result<Self, AwsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read the settings through a lookup (tests pass a stack's function environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AwsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let var = |name: &'static str| get(name).ok_or(AwsError::Env(name));
        let var_or = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_string());
        Ok(Settings {
            table: var("TABLE_NAME")?,
            records_queue_url: var("RECORDS_QUEUE_URL")?,
            fetch_queue_url: var("FETCH_QUEUE_URL")?,
            dlq_url: get("DLQ_URL"),
            max_receive_count: var_or("MAX_RECEIVE_COUNT", "5").parse().unwrap_or(5),
            asset_tag_prefix: var_or("ASSET_TAG_PREFIX", "AS-"),
            asset_tag_width: var_or("ASSET_TAG_WIDTH", "6").parse().unwrap_or(6),
            precedence: Precedence::parse(&var_or(
                "SOURCE_PRECEDENCE",
                "intune,endpoint-central,jamf,kandji,jumpcloud",
            )),
            lease_seconds: var_or("LEASE_SECONDS", "900").parse().unwrap_or(900),
            importer_concurrency: var_or("IMPORTER_CONCURRENCY", "4")
                .parse()
                .unwrap_or(4)
                .max(1),
            time_reserve: Duration::from_millis(
                var_or("FETCH_TIME_RESERVE_MS", "60000")
                    .parse()
                    .unwrap_or(60_000),
            ),
        })
    }
}
