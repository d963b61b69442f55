//! Running a sync in-process, as Lambda's event sources would: invoke the fetcher, then drain the
//! fetch queue into the fetcher and the records queue into the importer in SQS-event batches,
//! deleting what succeeded, until the run ends. Used by `assetsync sync --local` and the tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use serde_json::{json, Value};

use crate::error::{AwsError, SyncError};
use crate::event::ConnectionEvent;
use crate::fetcher::Fetcher;
use crate::importer::Importer;
use crate::runs::RunItem;
use crate::summary::RunSummary;

/// Drives the two handlers against real queues.
pub struct LocalRunner {
    pub fetcher: Fetcher,
    pub importer: Importer,
    pub sqs: aws_sdk_sqs::Client,
    /// The Lambda time budget each fetcher invocation gets (its simulated timeout).
    pub fetcher_budget: Duration,
    /// Give up waiting for a run after this long.
    pub max_wait: Duration,
    /// Importer workers draining the records queue at once (Lambda runs several instances).
    pub workers: usize,
}

fn sqs_err(op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> AwsError {
    AwsError::Sqs {
        op,
        detail: DisplayErrorContext(e).to_string(),
    }
}

/// Convert a received SQS message into the Lambda event shape.
pub fn to_lambda_message(m: &Message, queue_arn: &str) -> SqsMessage {
    let mut out = SqsMessage::default();
    out.message_id = m.message_id.clone();
    out.receipt_handle = m.receipt_handle.clone();
    out.body = m.body.clone();
    out.md5_of_body = m.md5_of_body.clone();
    out.event_source = Some("aws:sqs".into());
    out.event_source_arn = Some(queue_arn.to_string());
    out.aws_region = Some("us-east-1".into());
    let mut attrs = HashMap::new();
    if let Some(a) = &m.attributes {
        for (k, v) in a {
            attrs.insert(k.as_str().to_string(), v.clone());
        }
    }
    out.attributes = attrs;
    out
}

impl LocalRunner {
    /// Run a sync to its end and return the summary. `progress` sees the run after each step.
    pub async fn sync(
        &self,
        event: &ConnectionEvent,
        mut progress: impl FnMut(&RunItem),
    ) -> Result<RunSummary, SyncError> {
        let started = self
            .fetcher
            .handle(
                serde_json::to_value(event).map_err(|e| SyncError::Other(e.to_string()))?,
                Some(Instant::now() + self.fetcher_budget),
            )
            .await?;
        if started.get("started") == Some(&Value::Bool(false)) {
            return Err(SyncError::Other(
                started
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("a run is already in progress")
                    .to_string(),
            ));
        }
        let run_id = started
            .get("run_id")
            .and_then(Value::as_str)
            .ok_or_else(|| SyncError::Other(format!("the fetcher did not start a run: {started}")))?
            .to_string();
        self.drain_until_done(&run_id, &mut progress).await
    }

    /// Drain both queues until `run_id` is no longer running.
    pub async fn drain_until_done(
        &self,
        run_id: &str,
        progress: &mut impl FnMut(&RunItem),
    ) -> Result<RunSummary, SyncError> {
        let begin = Instant::now();
        let mut idle_rounds = 0u32;
        loop {
            let fetched = self.drain_fetch_queue().await?;
            let imported = self.drain_records_queue().await?;
            let run = self
                .fetcher
                .runs
                .get(run_id)
                .await?
                .ok_or_else(|| SyncError::Other(format!("run {run_id} vanished")))?;
            progress(&run);
            if run.status != "running" {
                return Ok(self.fetcher.runs.summary(&run).await?);
            }
            if fetched + imported == 0 {
                idle_rounds += 1;
                tokio::time::sleep(Duration::from_millis(if idle_rounds < 10 {
                    100
                } else {
                    500
                }))
                .await;
            } else {
                idle_rounds = 0;
            }
            if begin.elapsed() > self.max_wait {
                return Err(SyncError::Other(format!(
                    "run {run_id} still running after {:?}: {} of {} pages imported",
                    self.max_wait, run.pages_imported, run.pages_fetched
                )));
            }
        }
    }

    async fn receive(&self, queue_url: &str, max: i32) -> Result<Vec<Message>, SyncError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(0)
            .visibility_timeout(900)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| sqs_err("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn settle(
        &self,
        queue_url: &str,
        messages: &[Message],
        failed: &[String],
    ) -> Result<(), SyncError> {
        for m in messages {
            let id = m.message_id.clone().unwrap_or_default();
            let Some(handle) = m.receipt_handle.as_deref() else {
                continue;
            };
            if failed.contains(&id) {
                // Make it visible again soon, as a visibility timeout would (shortened locally).
                self.sqs
                    .change_message_visibility()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .map_err(|e| sqs_err("ChangeMessageVisibility", e))?;
            } else {
                self.sqs
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| sqs_err("DeleteMessage", e))?;
            }
        }
        Ok(())
    }

    /// Feed fetch-queue messages to the fetcher one at a time (BatchSize 1 in the template).
    pub async fn drain_fetch_queue(&self) -> Result<usize, SyncError> {
        let url = self.fetcher.settings.fetch_queue_url.clone();
        let msgs = self.receive(&url, 1).await?;
        for m in &msgs {
            let record = to_lambda_message(m, "arn:aws:sqs:us-east-1:000000000000:fetch");
            let payload = json!({ "Records": [record] });
            let ok = self
                .fetcher
                .handle(payload, Some(Instant::now() + self.fetcher_budget))
                .await;
            let failed = match ok {
                Ok(_) => vec![],
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "fetcher continuation failed; it will be redelivered");
                    vec![m.message_id.clone().unwrap_or_default()]
                }
            };
            self.settle(&url, std::slice::from_ref(m), &failed).await?;
        }
        Ok(msgs.len())
    }

    /// Drain the records queue with [`LocalRunner::workers`] importer workers at once.
    pub async fn drain_records_queue(&self) -> Result<usize, SyncError> {
        let n = self.workers.max(1);
        let all = futures::future::join_all((0..n).map(|_| self.drain_records_worker())).await;
        let mut total = 0;
        for r in all {
            total += r?;
        }
        Ok(total)
    }

    /// One worker: feed up to 10 records-queue messages to the importer as one SQS event.
    async fn drain_records_worker(&self) -> Result<usize, SyncError> {
        let url = self.fetcher.settings.records_queue_url.clone();
        let mut total = 0;
        for _ in 0..20 {
            let msgs = self.receive(&url, 10).await?;
            if msgs.is_empty() {
                break;
            }
            total += msgs.len();
            let mut event = SqsEvent::default();
            event.records = msgs
                .iter()
                .map(|m| to_lambda_message(m, "arn:aws:sqs:us-east-1:000000000000:records"))
                .collect();
            let resp = self.importer.handle_batch(event).await;
            let failed: Vec<String> = resp
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            self.settle(&url, &msgs, &failed).await?;
        }
        Ok(total)
    }
}
