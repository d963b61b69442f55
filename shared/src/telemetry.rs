//! Logging setup: JSON lines (CloudWatch-friendly), level from `RUST_LOG`.

/// Install the JSON log subscriber once; later calls do nothing.
pub fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Turn a Lambda deadline (epoch milliseconds) into an `Instant`.
pub fn deadline_instant(deadline_ms: u64) -> Option<std::time::Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let left = deadline_ms.checked_sub(now_ms)?;
    Some(std::time::Instant::now() + std::time::Duration::from_millis(left))
}

/// The CloudWatch namespace of assetsync's metrics.
pub const NAMESPACE: &str = "assetsync";

/// One CloudWatch embedded-metric-format line: `metrics` (name, unit, value) published under
/// the dimension sets `dims` (each a list of property names in `props`), plus `props` as
/// searchable properties. Written to stdout, where Lambda's log agent extracts the metrics.
pub fn emf_line(
    dims: &[&[&str]],
    props: &[(&str, String)],
    metrics: &[(&str, &str, f64)],
) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut doc = serde_json::Map::new();
    doc.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": ts,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dims,
                "Metrics": metrics.iter().map(|(n, u, _)| serde_json::json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in props {
        doc.insert((*k).into(), serde_json::Value::String(v.clone()));
    }
    for (n, _, v) in metrics {
        doc.insert((*n).into(), serde_json::json!(v));
    }
    serde_json::Value::Object(doc).to_string()
}

fn print_line(line: &str) {
    use std::io::Write;
    // Only inside Lambda, whose log agent extracts the metrics from stdout; elsewhere (the CLI's
    // `--json` output, tests) stdout is not ours, and the line goes to the debug log instead.
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_none() {
        tracing::debug!(emf = line, "metrics");
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// The metrics of a run that has ended: records per outcome, pages, vendor requests, throttle
/// waits, duration and status (one `Runs<Status>` count).
pub fn run_metrics_line(run: &crate::runs::RunItem) -> String {
    let c = &run.counts;
    let duration = match (
        chrono::DateTime::parse_from_rfc3339(&run.started_at),
        run.finished_at
            .as_deref()
            .and_then(|f| chrono::DateTime::parse_from_rfc3339(f).ok()),
    ) {
        (Ok(s), Some(f)) => (f - s).num_seconds().max(0) as f64,
        _ => 0.0,
    };
    let status_metric = match run.status.as_str() {
        "succeeded" => "RunsSucceeded",
        "succeeded_with_errors" => "RunsSucceededWithErrors",
        _ => "RunsFailed",
    };
    emf_line(
        &[&["Connection"], &[]],
        &[
            ("Connection", run.connection.clone()),
            ("Source", run.source.clone()),
            ("RunId", run.run_id.clone()),
            ("Status", run.status.clone()),
        ],
        &[
            ("RecordsCreated", "Count", c.created as f64),
            ("RecordsUpdated", "Count", c.updated as f64),
            ("RecordsUnchanged", "Count", c.unchanged as f64),
            ("RecordsSkipped", "Count", c.skipped as f64),
            ("RecordsNotFound", "Count", c.not_found as f64),
            ("RecordsMissing", "Count", c.missing as f64),
            ("RecordsDuplicate", "Count", c.duplicate as f64),
            ("RecordErrors", "Count", c.errors as f64),
            ("PagesFetched", "Count", run.pages_fetched as f64),
            ("PagesImported", "Count", run.pages_imported as f64),
            ("PagesDead", "Count", run.pages_dead as f64),
            ("VendorRequests", "Count", run.vendor_requests as f64),
            ("VendorThrottled", "Count", run.throttled as f64),
            ("ThrottleWait", "Milliseconds", run.throttle_wait_ms as f64),
            ("RunDuration", "Seconds", duration),
            (status_metric, "Count", 1.0),
        ],
    )
}

/// Publish the metrics of a run that has ended.
pub fn emit_run(run: &crate::runs::RunItem) {
    print_line(&run_metrics_line(run));
}

/// Publish the age of a run still `running` (its finish check does, each time it looks); the
/// template's stuck-run alarm watches its maximum.
pub fn emit_running_age(run: &crate::runs::RunItem) {
    let age = chrono::DateTime::parse_from_rfc3339(&run.started_at)
        .map(|s| {
            (chrono::Utc::now() - s.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0)
        })
        .unwrap_or(0);
    print_line(&emf_line(
        &[&["Connection"], &[]],
        &[
            ("Connection", run.connection.clone()),
            ("RunId", run.run_id.clone()),
        ],
        &[("RunningRunAge", "Seconds", age as f64)],
    ));
}

/// What one importer batch did, for [`emit_batch`].
#[derive(Debug, Clone, Default)]
pub struct BatchMetrics {
    pub messages: u64,
    pub failed: u64,
    pub dead: u64,
    pub records: u64,
    pub duration_ms: u64,
}

/// Publish the metrics of one importer batch (the importer calls this once per SQS batch).
pub fn emit_batch(m: &BatchMetrics) {
    print_line(&emf_line(
        &[&[]],
        &[],
        &[
            ("BatchMessages", "Count", m.messages as f64),
            ("BatchFailures", "Count", m.failed as f64),
            ("BatchDeadPages", "Count", m.dead as f64),
            ("BatchRecords", "Count", m.records as f64),
            ("BatchDuration", "Milliseconds", m.duration_ms as f64),
        ],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_line_declares_every_metric_it_carries() {
        let line = emf_line(
            &[&["Connection"], &[]],
            &[("Connection", "jamf-prod".into())],
            &[("RecordsCreated", "Count", 3.0)],
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "assetsync");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "RecordsCreated"
        );
        assert_eq!(v["RecordsCreated"], 3.0);
        assert_eq!(v["Connection"], "jamf-prod");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][1],
            serde_json::json!([])
        );
    }
}
