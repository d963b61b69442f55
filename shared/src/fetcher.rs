//! The fetcher: authenticate, page the source, map each record, send one message per page to the
//! records queue, checkpoint the run, and hand over to the fetch queue before the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::connectors::{self, Connector, ConnectorContext, Cursor, StateStore};
use crate::error::{chain, AwsError, ConnectorError, SyncError};
use crate::event::{Action, ConnectionEvent, Continuation, PageMessage};
use crate::http::HttpCounts;
use crate::mapping::{MappedRecord, Mapping};
use crate::runs::{new_token, RunItem, Runs, Settled, Start};
use crate::secrets::SecretCache;
use crate::settings::Settings;
use crate::state::DynamoState;
use crate::store::Store;
use crate::summary::RecordError;

/// SQS's message limit is 256 KiB; keep a margin for attributes and encoding.
pub const MAX_MESSAGE_BYTES: usize = 250 * 1024;

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
            // Conflicts and throttling are retried with backoff, like the importer's.
            aws_sdk_dynamodb::Client::from_conf(crate::store::dynamo_config(sdk).build()),
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
                let span = tracing::error_span!("run", run_id = %cont.run_id, connection = %cont.event.connection);
                let res = async {
                    let r = if cont.check {
                        Box::pin(self.check(&cont, deadline)).await
                    } else {
                        Box::pin(self.continue_run(&cont, deadline)).await
                    };
                    // The top-level error line, inside the run's span (run_id, connection).
                    r.inspect_err(
                        |e| tracing::error!(error = %chain(e), "fetcher invocation failed"),
                    )
                }
                .instrument(span)
                .await?;
                out.push(res);
            }
            return Ok(json!({ "continued": out }));
        }
        let event = ConnectionEvent::parse(payload)?;
        match event.action {
            Action::Sync => {
                let span = tracing::error_span!("run", connection = %event.connection, run_id = tracing::field::Empty);
                async {
                    Box::pin(self.sync(&event, deadline)).await.inspect_err(
                        |e| tracing::error!(error = %chain(e), "fetcher invocation failed"),
                    )
                }
                .instrument(span)
                .await
            }
            Action::Sample => self.sample(&event).await,
            Action::Test => Ok(self.test(&event).await),
            Action::Plan => {
                let plan = crate::plan::plan(self, &event).await?;
                serde_json::to_value(plan).map_err(|e| SyncError::Other(e.to_string()))
            }
        }
    }

    pub(crate) async fn connector(
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
        if matches!(event.action, Action::Sample | Action::Plan) {
            // A sample or a plan promises to write nothing: connector caches stay in memory.
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
        // A bad guard setting fails the start, not the sweep at the end.
        crate::guard::GuardConfig::from_mapping(&mapping)?;
        let connector = self.connector(event, &mapping, false).await?;
        let token = new_token();
        let (run, resumed) = match self.runs.start(event, &token).await {
            Ok(Start::New(r)) => (r, false),
            Ok(Start::Resume(r)) => (r, true),
            Err(SyncError::AlreadyRunning {
                run_id,
                connection,
                started_at,
            }) => {
                let e = SyncError::AlreadyRunning {
                    run_id: run_id.clone(),
                    connection,
                    started_at,
                };
                return Ok(
                    json!({"started": false, "running_run_id": run_id, "message": e.to_string()}),
                );
            }
            Err(e) => return Err(e),
        };
        tracing::Span::current().record("run_id", run.run_id.as_str());
        tracing::info!(resumed, "sync run started");
        // The watchdog: whatever dies from here on, this delayed check ends or resumes the run.
        self.send_continuation(event, &run.run_id, true, self.settings.finish_check_seconds)
            .await?;
        self.fetch_loop(event, &mapping, connector, run, &token, deadline)
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
        let token = new_token();
        let Some(run) = self.runs.claim(&run.run_id, &token).await? else {
            return Ok(
                json!({"run_id": run.run_id, "message": "another fetcher holds this run's lease"}),
            );
        };
        let mapping = resolve_mapping(&cont.event)?;
        let connector = self.connector(&cont.event, &mapping, false).await?;
        self.fetch_loop(&cont.event, &mapping, connector, run, &token, deadline)
            .await
    }

    /// A run's finish check: end the run if it can end, resume its fetch if its fetcher died,
    /// and otherwise look again later. It re-arms itself until the run has ended, so every run
    /// ends in bounded time even when no importer or start ever calls `try_finish`.
    pub async fn check(
        &self,
        cont: &Continuation,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        let Some(run) = self.runs.get(&cont.run_id).await? else {
            return Ok(json!({"run_id": cont.run_id, "message": "no such run"}));
        };
        if run.status != "running" {
            return Ok(json!({"run_id": run.run_id, "status": run.status, "message": "ended"}));
        }
        crate::telemetry::emit_running_age(&run);
        if run.fetch_complete {
            return match self.runs.settle(&run.run_id).await? {
                Settled::Ended(r) => self.summary_value(&r, None).await,
                Settled::Open(r) => {
                    self.rearm(cont).await?;
                    self.summary_value(&r, Some("waiting for its pages to be imported"))
                        .await
                }
            };
        }
        // Look again later in any case: the re-armed check outlives whatever happens next.
        self.rearm(cont).await?;
        let token = new_token();
        let Some(run) = self.runs.claim(&run.run_id, &token).await? else {
            return Ok(json!({"run_id": run.run_id, "message": "its fetcher is alive"}));
        };
        tracing::warn!(
            page = run.next_page,
            "the run's fetcher died: resuming from its checkpoint"
        );
        let mapping = resolve_mapping(&cont.event)?;
        let connector = self.connector(&cont.event, &mapping, false).await?;
        self.fetch_loop(&cont.event, &mapping, connector, run, &token, deadline)
            .await
    }

    async fn rearm(&self, cont: &Continuation) -> Result<(), SyncError> {
        crate::failpoint::hit("fetcher.before_rearm")?;
        self.send_continuation(
            &cont.event,
            &cont.run_id,
            true,
            self.settings.finish_check_seconds,
        )
        .await?;
        Ok(())
    }

    async fn fetch_loop(
        &self,
        event: &ConnectionEvent,
        mapping: &Mapping,
        connector: Box<dyn Connector>,
        run: RunItem,
        token: &str,
        deadline: Option<Instant>,
    ) -> Result<Value, SyncError> {
        let beat = Heartbeat::start(&self.runs, &run.run_id, token);
        let res = Box::pin(self.fetch_pages(
            event,
            mapping,
            connector,
            run.clone(),
            token,
            deadline,
            &beat,
        ))
        .await;
        beat.stop();
        if res.as_ref().is_err_and(|e| !crate::failpoint::is_crash(e)) {
            // An error (not a crash): give the lease up so the next try resumes at once.
            if let Err(e) = self.runs.disown(&run.run_id, token).await {
                tracing::warn!(error = %chain(&e), "could not give up the run's lease");
            }
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_pages(
        &self,
        event: &ConnectionEvent,
        mapping: &Mapping,
        mut connector: Box<dyn Connector>,
        mut run: RunItem,
        token: &str,
        deadline: Option<Instant>,
        beat: &Heartbeat,
    ) -> Result<Value, SyncError> {
        let mut cursor: Option<Cursor> = match &run.cursor {
            Some(c) => Some(Cursor(serde_json::from_str(c).map_err(|e| {
                SyncError::Other(format!("stored cursor is unreadable: {e}"))
            })?)),
            None => None,
        };
        let mut last_http = HttpCounts::default();
        let mut reread_secret = false;
        // Connectors (and their retry waits) aim to return a page by `page_deadline`, leaving the
        // reserve to send it and checkpoint. A page is never cut here (a page always longer than
        // the budget would never progress); one that outlives the Lambda dies with it, and its
        // run is resumed from the checkpoint once its heartbeat-less lease runs out.
        let page_deadline =
            deadline.map(|d| d.checked_sub(self.settings.time_reserve).unwrap_or(d));
        loop {
            if page_deadline.is_some_and(|d| d <= Instant::now()) {
                return self.hand_over_now(event, &run, token).await;
            }
            if beat.lost() {
                return self.lost(&run).await;
            }
            let fetch = connectors::with_page_deadline(
                page_deadline,
                connector.fetch_page(cursor.as_ref()),
            );
            let page = tokio::select! {
                p = fetch => p,
                _ = beat.wait_lost() => return self.lost(&run).await,
            };
            let page = match page {
                Ok(p) => p,
                Err(ConnectorError::Auth { .. }) if !reread_secret => {
                    // The credential may have been rotated: read the secret afresh and retry once.
                    reread_secret = true;
                    connector = self.connector(event, mapping, true).await?;
                    last_http = HttpCounts::default();
                    continue;
                }
                Err(e) => return self.fetch_failed(event, &run, token, e).await,
            };
            crate::failpoint::hit("fetcher.after_fetch")?;
            let page_no = run.next_page;
            let raw_count = page.records.len() as u64;
            let (records, skipped) = map_page(
                mapping,
                connector.as_ref(),
                &page.records,
                event.object_type,
            );
            drop(page.records);
            // A re-fetch of a page whose chunks were planned (and maybe partly sent) before a
            // crash splits into the same chunk ids.
            let planned = (run.planned_page == Some(page_no))
                .then_some(run.planned_chunks)
                .flatten();
            let chunks = split_page(&run, event, page_no, records, skipped, planned)?;
            if !self
                .runs
                .plan_chunks(&run.run_id, token, page_no, chunks.len() as u32)
                .await?
            {
                return self.lost(&run).await;
            }
            crate::failpoint::hit("fetcher.after_plan")?;
            crate::failpoint::hit_error("fetcher.send_error")?;
            for (i, body) in chunks.iter().enumerate() {
                if beat.lost() {
                    return self.lost(&run).await;
                }
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
                if i == 0 {
                    crate::failpoint::hit("fetcher.between_sends")?;
                }
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
            let Some(next_run) = self
                .runs
                .checkpoint(
                    &run.run_id,
                    token,
                    page_no,
                    chunks.len() as u64,
                    raw_count,
                    next_text,
                    page.total,
                    delta,
                    self.settings.import_horizon_seconds,
                    // One fetcher owns the run, so the largest split so far is its to keep.
                    run.max_chunks.map(|m| m.max(chunks.len() as u32)),
                )
                .await?
            else {
                return self.lost(&run).await;
            };
            run = next_run;
            crate::failpoint::hit("fetcher.after_checkpoint")?;
            if page.served_by.is_some() && page.served_by != run.served_by {
                if let Some(v) = &page.served_by {
                    self.runs.note_served_by(&run.run_id, v).await?;
                    run.served_by = Some(v.clone());
                }
            }
            tracing::info!(
                page = page_no,
                records = raw_count,
                messages = chunks.len(),
                "page sent"
            );
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        let run = self.runs.try_finish(&run.run_id).await?.unwrap_or(run);
        crate::failpoint::hit("fetcher.after_finish")?;
        self.summary_value(&run, None).await
    }

    /// Hand the run's cursor to the fetch queue and give up the lease, so the continuation can
    /// take the run over at once.
    async fn hand_over_now(
        &self,
        event: &ConnectionEvent,
        run: &RunItem,
        token: &str,
    ) -> Result<Value, SyncError> {
        self.send_continuation(event, &run.run_id, false, 0).await?;
        crate::failpoint::hit("fetcher.after_hand_over")?;
        self.runs.disown(&run.run_id, token).await?;
        tracing::info!(
            page = run.next_page,
            "time budget low: handed over to the fetch queue"
        );
        self.summary_value(run, Some("continuing through the fetch queue"))
            .await
    }

    /// The run's lease went to another fetcher: stop without writing anything more.
    async fn lost(&self, run: &RunItem) -> Result<Value, SyncError> {
        tracing::warn!(
            page = run.next_page,
            "lost the run's lease to another fetcher: stopping"
        );
        let run = self
            .runs
            .get(&run.run_id)
            .await?
            .unwrap_or_else(|| run.clone());
        self.summary_value(
            &run,
            Some("another fetcher took this run over; this one stopped"),
        )
        .await
    }

    async fn fetch_failed(
        &self,
        event: &ConnectionEvent,
        run: &RunItem,
        token: &str,
        e: ConnectorError,
    ) -> Result<Value, SyncError> {
        let reason = chain(&e);
        if e.is_retryable() {
            let n = self.runs.note_fetch_failure(&run.run_id, &reason).await?;
            if n < self.settings.fetch_max_tries {
                tracing::warn!(failures = n, error = %reason, "fetch failed; retrying from the checkpoint");
                let delay = self.settings.fetch_retry_seconds.saturating_mul(n as i32);
                self.send_continuation(event, &run.run_id, false, delay)
                    .await?;
                // Nobody (a finish check included) retries before the delay is up.
                let until = chrono::Utc::now().timestamp() + i64::from(delay.clamp(0, 900)) - 1;
                self.runs.hold_until(&run.run_id, token, until).await?;
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
        tracing::error!(error = %reason, "fetch failed; run failed");
        self.runs
            .fail(run, &format!("fetch failed: {reason}"))
            .await?;
        let run = self
            .runs
            .get(&run.run_id)
            .await?
            .unwrap_or_else(|| run.clone());
        crate::telemetry::emit_run(&run);
        self.summary_value(&run, None).await
    }

    async fn send_continuation(
        &self,
        event: &ConnectionEvent,
        run_id: &str,
        check: bool,
        delay_secs: i32,
    ) -> Result<(), AwsError> {
        let body = serde_json::to_string(&Continuation {
            event: event.clone(),
            run_id: run_id.to_string(),
            check,
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

/// A stable 64-bit FNV-1a hash (std's hasher may change between Rust releases).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Split a page into message bodies under the SQS size limit, deterministically: each record
/// (and each skipped entry) goes to chunk `hash(key) % n`, so a chunk's id names the same keys
/// however the page is re-fetched. `n` is the smallest power of two whose chunks all fit, or
/// `planned` when the page's chunks were planned before a crash (a re-fetch re-sends the same
/// chunk ids). Empty chunks are sent too: the chunk count is the page's message count.
pub fn split_page(
    run: &RunItem,
    event: &ConnectionEvent,
    page_no: u32,
    records: Vec<MappedRecord>,
    skipped: Vec<RecordError>,
    planned: Option<u32>,
) -> Result<Vec<String>, SyncError> {
    if records.is_empty() && skipped.is_empty() && planned.is_none() {
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
    let rec_hash: Vec<u64> = records
        .iter()
        .map(|r| stable_hash(r.key.as_deref().unwrap_or_default()))
        .collect();
    let skip_hash: Vec<u64> = skipped.iter().map(|s| stable_hash(&s.key)).collect();
    let items = (records.len() + skipped.len()).max(1);
    let build = |parts: u32| -> Result<Option<Vec<String>>, SyncError> {
        let mut recs: Vec<Vec<MappedRecord>> = vec![Vec::new(); parts as usize];
        let mut skips: Vec<Vec<RecordError>> = vec![Vec::new(); parts as usize];
        for (r, h) in records.iter().zip(&rec_hash) {
            recs[(h % u64::from(parts)) as usize].push(r.clone());
        }
        for (s, h) in skipped.iter().zip(&skip_hash) {
            skips[(h % u64::from(parts)) as usize].push(s.clone());
        }
        let mut bodies = Vec::with_capacity(parts as usize);
        for (i, (r, s)) in recs.into_iter().zip(skips).enumerate() {
            let body = serde_json::to_string(&make(i as u32, r, s))
                .map_err(|e| SyncError::Other(e.to_string()))?;
            if body.len() > MAX_MESSAGE_BYTES {
                return Ok(None);
            }
            bodies.push(body);
        }
        Ok(Some(bodies))
    };
    if let Some(n) = planned.filter(|n| *n > 0) {
        return build(n)?.ok_or_else(|| {
            SyncError::Other(format!(
                "page {page_no} grew since its chunks were planned ({n}): a chunk no longer fits in an SQS message"
            ))
        });
    }
    let mut parts = 1u32;
    loop {
        if let Some(b) = build(parts)? {
            return Ok(b);
        }
        if parts as usize >= items.next_power_of_two() * 2 {
            return Err(SyncError::Other(format!(
                "a single record of page {page_no} is larger than an SQS message"
            )));
        }
        parts *= 2;
    }
}

/// The heartbeat of one fetcher invocation: renews the run's short lease while the fetcher works
/// (a slow page included) and flags the loss as soon as a renewal fails, so the fetcher stops.
pub struct Heartbeat {
    lost: Arc<std::sync::atomic::AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Start renewing `token`'s lease on `run_id` every third of the lease.
    pub fn start(runs: &Runs, run_id: &str, token: &str) -> Self {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let notify = Arc::new(tokio::sync::Notify::new());
        let every = Duration::from_millis((runs.lease_seconds.max(1) as u64 * 1000) / 3);
        let (runs, run_id, token) = (runs.clone(), run_id.to_string(), token.to_string());
        let (l, nf) = (lost.clone(), notify.clone());
        let span = tracing::Span::current();
        let task = tokio::spawn(
            async move {
                let mut failures = 0u32;
                loop {
                    tokio::time::sleep(every).await;
                    let ok = match crate::failpoint::hit("fetcher.heartbeat") {
                        Err(_) => Ok(false),
                        Ok(()) => runs.renew(&run_id, &token).await,
                    };
                    match ok {
                        Ok(true) => failures = 0,
                        // Errors: a second one in a row could let the lease run out under us.
                        Err(e) if failures == 0 => {
                            failures += 1;
                            tracing::warn!(error = %chain(&e), "lease renewal failed; retrying");
                        }
                        _ => {
                            tracing::warn!("lease renewal refused: another fetcher owns the run");
                            l.store(true, std::sync::atomic::Ordering::SeqCst);
                            nf.notify_waiters();
                            nf.notify_one();
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        Heartbeat { lost, notify, task }
    }

    /// Whether the lease was lost.
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until the lease is lost.
    pub async fn wait_lost(&self) {
        if self.lost() {
            return;
        }
        self.notify.notified().await;
    }

    /// Stop renewing.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunItem {
        serde_json::from_value(json!({
            "run_id": "r1", "connection": "c", "source": "jamf", "object_type": "Hardware",
            "mode": "create-update", "status": "running", "started_at": "2026-01-01T00:00:00Z",
            "event": "{}"
        }))
        .expect("run")
    }

    fn event() -> ConnectionEvent {
        ConnectionEvent::parse(json!({
            "connection": "c", "source": "jamf", "secret_id": "s", "object_type": "Hardware"
        }))
        .expect("event")
    }

    fn rec(key: &str, pad: usize) -> MappedRecord {
        let mut m = MappedRecord {
            key: Some(key.into()),
            ..Default::default()
        };
        m.attrs.insert("Notes".into(), "x".repeat(pad));
        m
    }

    fn ids_of(bodies: &[String]) -> Vec<(u32, Vec<String>)> {
        bodies
            .iter()
            .map(|b| {
                let m: PageMessage = serde_json::from_str(b).expect("page");
                let mut keys: Vec<String> =
                    m.records.iter().filter_map(|r| r.key.clone()).collect();
                keys.extend(m.skipped.iter().map(|s| s.key.clone()));
                keys.sort();
                (m.chunk, keys)
            })
            .collect()
    }

    #[test]
    fn a_key_lands_in_the_same_chunk_however_the_page_is_refetched() {
        let records: Vec<MappedRecord> = (0..40).map(|i| rec(&format!("K{i}"), 20_000)).collect();
        let first = split_page(&run(), &event(), 3, records.clone(), vec![], None).expect("split");
        assert!(first.len() > 1, "the page had to be split");
        // Re-fetched after a crash: the vendor now returns the records in another order, one
        // fewer; with the recorded plan the same keys go to the same chunk ids.
        let mut again: Vec<MappedRecord> = records.into_iter().rev().collect();
        again.pop();
        let n = first.len() as u32;
        let second = split_page(&run(), &event(), 3, again, vec![], Some(n)).expect("split");
        assert_eq!(second.len(), first.len());
        for ((c1, k1), (c2, k2)) in ids_of(&first).into_iter().zip(ids_of(&second)) {
            assert_eq!(c1, c2);
            assert!(
                k2.iter().all(|k| k1.contains(k)),
                "chunk {c1}: {k2:?} ⊄ {k1:?}"
            );
        }
    }

    #[test]
    fn skipped_lists_split_like_records() {
        // A wrong key path: every record is skipped, far more than one message can hold.
        let skipped: Vec<RecordError> = (0..5000)
            .map(|i| RecordError {
                key: format!("id-{i} (a long device name to make the list large {i})"),
                reason: "no usable `Serial Number` (missing, empty or a placeholder)".into(),
            })
            .collect();
        let bodies = split_page(&run(), &event(), 0, vec![], skipped, None).expect("split");
        assert!(bodies.len() > 1);
        assert!(bodies.iter().all(|b| b.len() <= MAX_MESSAGE_BYTES));
        let total: usize = ids_of(&bodies).iter().map(|(_, k)| k.len()).sum();
        assert_eq!(total, 5000);
    }

    #[test]
    fn a_record_larger_than_a_message_is_named() {
        let e = split_page(&run(), &event(), 7, vec![rec("BIG", 300_000)], vec![], None)
            .expect_err("too big");
        assert!(e.to_string().contains("page 7"), "{e}");
    }
}
