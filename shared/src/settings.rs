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
    /// Source order (`SOURCE_PRECEDENCE`), with per-attribute orders (`ATTRIBUTE_PRECEDENCE`).
    pub precedence: Precedence,
    /// How long a run's lease lives without a heartbeat.
    pub lease_seconds: i64,
    /// The fetcher hands over to the fetch queue when less than this remains.
    pub time_reserve: Duration,
    /// Pages of one SQS batch the importer imports at once (production and local stack alike:
    /// the per-page path uses no transaction, so moto's whole-table transaction copies stay out).
    pub importer_concurrency: usize,
    /// Seconds between a run's finish checks (delayed fetch-queue messages that re-arm until
    /// the run ends; at most 900, SQS's longest delay).
    pub finish_check_seconds: i32,
    /// Base delay before a failed fetch is retried (the n-th retry waits n times this).
    pub fetch_retry_seconds: i32,
    /// Tries of a failing fetch before the run fails.
    pub fetch_max_tries: u32,
    /// Seconds after the fetch completes by which every page has been imported or dead-lettered
    /// (records queue visibility timeout x maxReceiveCount, plus a margin).
    pub import_horizon_seconds: i64,
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
            precedence: precedence(
                &var_or(
                    "SOURCE_PRECEDENCE",
                    "intune,endpoint-central,jamf,kandji,jumpcloud",
                ),
                &var_or("ATTRIBUTE_PRECEDENCE", ""),
            ),
            lease_seconds: var_or("LEASE_SECONDS", "60").parse().unwrap_or(60),
            finish_check_seconds: var_or("FINISH_CHECK_SECONDS", "60")
                .parse::<i32>()
                .unwrap_or(60)
                .clamp(1, 900),
            fetch_retry_seconds: var_or("FETCH_RETRY_SECONDS", "30")
                .parse::<i32>()
                .unwrap_or(30)
                .clamp(0, 900),
            fetch_max_tries: var_or("FETCH_MAX_TRIES", "5").parse().unwrap_or(5).max(1),
            // The records queue's visibility timeout (720 s) x maxReceiveCount, plus a margin.
            import_horizon_seconds: get("IMPORT_HORIZON_SECONDS")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    720 * i64::from(var_or("MAX_RECEIVE_COUNT", "5").parse::<u32>().unwrap_or(5))
                        + 600
                }),
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

/// The effective precedence: the source order, and each named attribute's own order.
pub fn precedence(sources: &str, attributes: &str) -> Precedence {
    let (p, bad) = Precedence::parse(sources).with_attributes(attributes);
    for entry in bad {
        tracing::warn!(%entry, "ATTRIBUTE_PRECEDENCE entry is not ATTR=source,source; ignored");
    }
    p
}
