//! The fetcher: authenticate, page the source, map each record, send one message per page to the
//! records queue, checkpoint the run, and hand over to the fetch queue before the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use serde_json::{json, Value};

use crate::connectors::{self, Connector, ConnectorContext, Cursor, StateStore};
use crate::error::{chain, AwsError, ConnectorError, SyncError};
use crate::event::{Action, ConnectionEvent, Continuation, PageMessage};
use crate::http::HttpCounts;
use crate::mapping::{MappedRecord, Mapping};
use crate::runs::{RunItem, Runs, Start};
use crate::secrets::SecretCache;
use crate::settings::Settings;
use crate::state::DynamoState;
use crate::store::Store;
use crate::summary::RecordError;

/// SQS's message limit is 256 KiB; keep a margin for attributes and encoding.
pub const MAX_MESSAGE_BYTES: usize = 250 * 1024;
/// Retryable fetch failures tolerated per run before it is failed.
const MAX_FETCH_FAILURES: u32 = 5;

/// What the fetcher is built from, once per cold start.
pub struct Fetcher {
    pub settings: Settings,
    pub store: Store,
    pub runs: Runs,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: SecretCache,
}

/// Resolve the mapping of an event: its own, the source's default, or the default plus
/// `config:` lines when the event's mapping has only those.
pub fn resolve_mapping(event: &ConnectionEvent) -> Result<Mapping, SyncError> {
    let text = event.mapping.as_deref().unwrap_or_default();
    let only_config = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .all(|l| l.starts_with("config:"));
    if !only_config {
        return Ok(Mapping::parse(text)?);
    }
    // Parse the config lines first so their errors name the user's lines.
    let user = Mapping::parse(&format!("{text}\nkey:x=__k")).map_err(SyncError::Mapping)?;
    let default = connectors::default_mapping(event.source, event.object_type, user.config("api"))?;
    let mut m = Mapping::parse(default)
        .map_err(|e| SyncError::Other(format!("built-in {} mapping: {e}", event.source)))?;
    m.config.extend(user.config);
    Ok(m)
}

impl Fetcher {
    /// Build from settings and the SDK config.
    pub fn new(settings: Settings, sdk: &aws_config::SdkConfig) -> Self {
        Self::with_clients(
            settings,
            aws_sdk_dynamodb::Client::new(sdk),
            aws_sdk_sqs::Client::new(sdk),
            aws_sdk_secretsmanager::Client::new(sdk),
        )
    }

    /// Build from ready clients (tests wrap them in counting layers).
    pub fn with_clients(
        settings: Settings,
        ddb: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        secrets: aws_sdk_secretsmanager::Client,
    ) -> Self {
        let store = Store::new(ddb, settings.table.clone());
        let runs = Runs {
            store: store.clone(),
            lease_seconds: settings.lease_seconds,
        };
        Fetcher {
            sqs,
            secrets: SecretCache::new(secrets, Duration::from_secs(300)),
            settings,
            store,
            runs,
        }
    }

    /// Handle any fetcher input: a connection event, or an SQS batch from the fetch queue.
    pub async fn handle(
        &self,
        payload: Value,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        if let Some(records) = payload.get("Records").and_then(Value::as_array) {
            let mut out = Vec::new();
            for r in records {
                let body = r.get("body").and_then(Value::as_str).unwrap_or_default();
                let cont: Continuation = serde_json::from_str(body).map_err(|e| {
                    SyncError::Event(format!("fetch-queue message is not a continuation: {e}"))
                })?;
                cont.event.validate()?;
                out.push(
                    serde_json::to_value(self.continue_run(&cont, deadline).await?)
                        .unwrap_or(Value::Null),
                );
            }
            return Ok(json!({ "continued": out }));
        }
        let event = ConnectionEvent::parse(payload)?;
        match event.action {
            Action::Sync => self.sync(&event, deadline).await,
            Action::Sample => self.sample(&event).await,
            Action::Test => Ok(self.test(&event).await),
        }
    }

    async fn connector(
        &self,
        event: &ConnectionEvent,
        mapping: &Mapping,
        force_secret: bool,
    ) -> Result<Box<dyn Connector>, SyncError> {
        let secret = self.secrets.get(&event.secret_id, force_secret).await?;
        if let Some(field) = placeholder_field(&secret) {
            return Err(SyncError::Secret {
                secret_id: event.secret_id.clone(),
                detail: format!("field `{field}` still holds the template's placeholder REPLACE_ME; put the real value in Secrets Manager"),
            });
        }
        let mut state: Arc<dyn StateStore> = Arc::new(DynamoState {
            store: self.store.clone(),
            connection: event.connection.clone(),
        });
        if event.action == Action::Sample {
            // A sample promises to write nothing: connector caches stay in memory.
            state = Arc::new(connectors::ReadOnlyState::new(state));
        }
        let ctx = ConnectorContext {
            connection: event.connection.clone(),
            object_type: event.object_type,
            config: mapping.config.clone(),
            state,
        };
        connectors::build(event.source, &secret, ctx)
            .await
            .map_err(|e| match e {
                ConnectorError::Config(m) => SyncError::Secret {
                    secret_id: event.secret_id.clone(),
                    detail: m,
                },
                other => other.into(),
            })
    }

    /// Start (or resume) a sync run and fetch until done or near the deadline.
    pub async fn sync(
        &self,
        event: &ConnectionEvent,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        let mapping = resolve_mapping(event)?;
        let connector = self.connector(event, &mapping, false).await?;
        let run = match self.runs.start(event).await {
            Ok(Start::New(r)) | Ok(Start::Resume(r)) => r,
            Err(e @ SyncError::AlreadyRunning { .. }) => {
                let run_id = match &e {
                    SyncError::AlreadyRunning { run_id, .. } => run_id.clone(),
                    _ => String::new(),
                };
                return Ok(
                    json!({"started": false, "running_run_id": run_id, "message": e.to_string()}),
                );
            }
            Err(e) => return Err(e),
        };
        tracing::info!(run_id = %run.run_id, connection = %event.connection, "sync run started");
        self.fetch_loop(event, &mapping, connector, run, deadline)
            .await
    }

    /// Continue a run handed over through the fetch queue.
    pub async fn continue_run(
        &self,
        cont: &Continuation,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        let Some(run) = self.runs.get(&cont.run_id).await? else {
            return Err(SyncError::Event(format!(
                "run {} does not exist",
                cont.run_id
            )));
        };
        if run.status != "running" || run.fetch_complete {
            // A duplicate hand-over, or the run ended meanwhile: nothing to do.
            return Ok(
                json!({"run_id": run.run_id, "status": run.status, "message": "nothing left to fetch"}),
            );
        }
        if !self.runs.heartbeat(&run).await? {
            return Ok(
                json!({"run_id": run.run_id, "message": "another fetcher holds this connection's lease"}),
            );
        }
        let mapping = resolve_mapping(&cont.event)?;
        let connector = self.connector(&cont.event, &mapping, false).await?;
        self.fetch_loop(&cont.event, &mapping, connector, run, deadline)
            .await
    }

    async fn fetch_loop(
        &self,
        event: &ConnectionEvent,
        mapping: &Mapping,
        mut connector: Box<dyn Connector>,
        mut run: RunItem,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        let mut cursor: Option<Cursor> = match &run.cursor {
            Some(c) => Some(Cursor(serde_json::from_str(c).map_err(|e| {
                SyncError::Other(format!("stored cursor is unreadable: {e}"))
            })?)),
            None => None,
        };
        let mut last_http = HttpCounts::default();
        let mut reread_secret = false;
        loop {
            if let Some(d) = deadline {
                if d.saturating_duration_since(Instant::now()) < self.settings.time_reserve {
                    self.hand_over(event, &run.run_id, 0).await?;
                    tracing::info!(run_id = %run.run_id, page = run.next_page, "time budget low: handed over to the fetch queue");
                    return self
                        .summary_value(&run, Some("continuing through the fetch queue"))
                        .await;
                }
            }
            let page = match connector.fetch_page(cursor.as_ref()).await {
                Ok(p) => p,
                Err(ConnectorError::Auth { .. }) if !reread_secret => {
                    // The credential may have been rotated: read the secret afresh and retry once.
                    reread_secret = true;
                    connector = self.connector(event, mapping, true).await?;
                    last_http = HttpCounts::default();
                    continue;
                }
                Err(e) => return self.fetch_failed(event, &run, e).await,
            };
            let page_no = run.next_page;
            let raw_count = page.records.len() as u64;
            let (records, skipped) = map_page(
                mapping,
                connector.as_ref(),
                &page.records,
                event.object_type,
            );
            drop(page.records);
            let chunks = split_page(&run, event, page_no, records, skipped)?;
            for body in &chunks {
                self.sqs
                    .send_message()
                    .queue_url(&self.settings.records_queue_url)
                    .message_body(body)
                    .send()
                    .await
                    .map_err(|e| AwsError::Sqs {
                        op: "SendMessage",
                        detail: DisplayErrorContext(e).to_string(),
                    })?;
            }
            crate::failpoint::hit("fetcher.after_send")?;
            let http = connector.http_counts();
            let delta = HttpCounts {
                requests: http.requests - last_http.requests,
                retries: http.retries - last_http.retries,
                throttled: http.throttled - last_http.throttled,
                throttle_wait_ms: http.throttle_wait_ms - last_http.throttle_wait_ms,
            };
            last_http = http;
            let next_text = page.next.as_ref().map(|c| c.0.to_string());
            run = self
                .runs
                .checkpoint(
                    &run.run_id,
                    page_no,
                    chunks.len() as u64,
                    raw_count,
                    next_text,
                    page.total,
                    delta,
                )
                .await?;
            crate::failpoint::hit("fetcher.after_checkpoint")?;
            if page.served_by.is_some() && page.served_by != run.served_by {
                if let Some(v) = &page.served_by {
                    self.runs.note_served_by(&run.run_id, v).await?;
                    run.served_by = Some(v.clone());
                }
            }
            self.runs.heartbeat(&run).await?;
            tracing::info!(run_id = %run.run_id, page = page_no, records = raw_count, messages = chunks.len(), "page sent");
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        let run = self.runs.try_finish(&run.run_id).await?.unwrap_or(run);
        self.summary_value(&run, None).await
    }

    async fn fetch_failed(
        &self,
        event: &ConnectionEvent,
        run: &RunItem,
        e: ConnectorError,
    ) -> Result<Value, SyncError> {
        let reason = chain(&e);
        if e.is_retryable() {
            let n = self.runs.note_fetch_failure(&run.run_id, &reason).await?;
            if n < MAX_FETCH_FAILURES {
                tracing::warn!(run_id = %run.run_id, failures = n, error = %reason, "fetch failed; retrying from the checkpoint");
                self.hand_over(event, &run.run_id, 30 * n as i32).await?;
                return self
                    .summary_value(
                        run,
                        Some(&format!(
                            "fetch failed ({reason}); retrying from the last checkpoint"
                        )),
                    )
                    .await;
            }
        }
        tracing::error!(run_id = %run.run_id, error = %reason, "fetch failed; run failed");
        self.runs
            .fail(run, &format!("fetch failed: {reason}"))
            .await?;
        let run = self
            .runs
            .get(&run.run_id)
            .await?
            .unwrap_or_else(|| run.clone());
        self.summary_value(&run, None).await
    }

    async fn hand_over(
        &self,
        event: &ConnectionEvent,
        run_id: &str,
        delay_secs: i32,
    ) -> Result<(), AwsError> {
        let body = serde_json::to_string(&Continuation {
            event: event.clone(),
            run_id: run_id.to_string(),
        })
        .map_err(|e| AwsError::Item(e.to_string()))?;
        self.sqs
            .send_message()
            .queue_url(&self.settings.fetch_queue_url)
            .message_body(body)
            .delay_seconds(delay_secs.clamp(0, 900))
            .send()
            .await
            .map_err(|e| AwsError::Sqs {
                op: "SendMessage",
                detail: DisplayErrorContext(e).to_string(),
            })?;
        Ok(())
    }

    async fn summary_value(&self, run: &RunItem, note: Option<&str>) -> Result<Value, SyncError> {
        let mut summary = self.runs.summary(run).await?;
        if let Some(n) = note {
            summary.message = Some(n.to_string());
        }
        serde_json::to_value(summary).map_err(|e| SyncError::Other(e.to_string()))
    }

    /// `action: sample`: the first page, raw and mapped; nothing is written.
    pub async fn sample(&self, event: &ConnectionEvent) -> Result<Value, SyncError> {
        let mut mapping = resolve_mapping(event)?;
        mapping
            .config
            .entry("page_size".into())
            .or_insert_with(|| "25".into());
        let connector = self.connector(event, &mapping, false).await?;
        let page = connector.fetch_page(None).await?;
        let (mapped, skipped) = map_page(
            &mapping,
            connector.as_ref(),
            &page.records,
            event.object_type,
        );
        Ok(json!({
            "connection": event.connection,
            "source": event.source,
            "object_type": event.object_type,
            "vendor_total": page.total,
            "served_by": page.served_by,
            "raw": page.records,
            "mapped": mapped,
            "skipped": skipped,
        }))
    }

    /// `action: test`: authenticate and fetch one record; ok, or the vendor's error explained.
    pub async fn test(&self, event: &ConnectionEvent) -> Value {
        let result = async {
            let mut mapping = resolve_mapping(event)?;
            mapping.config.insert("page_size".into(), "1".into());
            let connector = self.connector(event, &mapping, true).await?;
            let report = connector.test().await?;
            let mapped = report.sample.as_ref().map(|raw| map_one(&mapping, connector.as_ref(), raw, event.object_type));
            Ok::<_, SyncError>(json!({"ok": true, "connection": event.connection, "source": event.source, "message": report.message, "sample": mapped}))
        }
        .await;
        result.unwrap_or_else(|e| json!({"ok": false, "connection": event.connection, "source": event.source, "error": chain(&e)}))
    }
}

/// The first field of a secret still holding the template's placeholder.
fn placeholder_field(secret: &Value) -> Option<String> {
    secret
        .as_object()?
        .iter()
        .find(|(_, v)| v.as_str().is_some_and(|s| s.contains("REPLACE_ME")))
        .map(|(k, _)| k.clone())
}

/// Map one raw record, with the connector's id, check-in time and parent.
pub fn map_one(
    mapping: &Mapping,
    connector: &dyn Connector,
    raw: &Value,
    ot: crate::event::ObjectType,
) -> MappedRecord {
    let mut m = mapping.apply(raw, ot);
    m.source_id = connector.source_id(raw);
    m.checked_in = connector
        .checked_in(raw)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    m.parent = connector
        .parent_key(raw)
        .and_then(|p| crate::normalize::serial(&p));
    m
}

/// Map a page; records without a key become `skipped` entries with the reason.
pub fn map_page(
    mapping: &Mapping,
    connector: &dyn Connector,
    raws: &[Value],
    ot: crate::event::ObjectType,
) -> (Vec<MappedRecord>, Vec<RecordError>) {
    let mut records = Vec::with_capacity(raws.len());
    let mut skipped = Vec::new();
    for raw in raws {
        let m = map_one(mapping, connector, raw, ot);
        if m.key.is_none() {
            let id = m.source_id.clone().unwrap_or_else(|| "(no id)".into());
            let name = m
                .attrs
                .get("Name")
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            skipped.push(RecordError {
                key: format!("{id}{name}"),
                reason: format!(
                    "no usable `{}` (missing, empty or a placeholder)",
                    mapping.key_attr()
                ),
            });
        } else {
            records.push(m);
        }
    }
    (records, skipped)
}

/// Split a page into message bodies under the SQS size limit (halving until each fits).
pub fn split_page(
    run: &RunItem,
    event: &ConnectionEvent,
    page_no: u32,
    records: Vec<MappedRecord>,
    skipped: Vec<RecordError>,
) -> Result<Vec<String>, SyncError> {
    if records.is_empty() && skipped.is_empty() {
        return Ok(vec![]);
    }
    let make = |chunk: u32, records: Vec<MappedRecord>, skipped: Vec<RecordError>| PageMessage {
        run_id: run.run_id.clone(),
        connection: event.connection.clone(),
        source: event.source,
        object_type: event.object_type,
        mode: event.mode,
        page: page_no,
        chunk,
        records,
        skipped,
    };
    let mut parts = 1usize;
    loop {
        let per = records.len().div_ceil(parts).max(1);
        let mut bodies = Vec::new();
        let mut fits = true;
        let groups: Vec<Vec<MappedRecord>> = if records.is_empty() {
            vec![vec![]]
        } else {
            records.chunks(per).map(|c| c.to_vec()).collect()
        };
        for (i, group) in groups.into_iter().enumerate() {
            let sk = if i == 0 { skipped.clone() } else { vec![] };
            let body = serde_json::to_string(&make(i as u32, group, sk))
                .map_err(|e| SyncError::Other(e.to_string()))?;
            if body.len() > MAX_MESSAGE_BYTES {
                fits = false;
                break;
            }
            bodies.push(body);
        }
        if fits {
            return Ok(bodies);
        }
        if per == 1 {
            return Err(SyncError::Other(format!(
                "a single record of page {page_no} is larger than an SQS message"
            )));
        }
        parts *= 2;
    }
}
