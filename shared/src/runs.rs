//! Runs as an audit log: the run item, its page markers, the lease that keeps one run per
//! connection, and the end of a run (missing-device sweep, final status).

use std::collections::HashSet;

use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem, Update};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{AwsError, SyncError};
use crate::event::ConnectionEvent;
use crate::store::{dyn_err, from_item, is_condition_failed, n, s, to_item, Item, Store};
use crate::summary::{Counts, Pages, RecordError, RunSummary, Status};

/// Now, RFC 3339 to the second.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A run as stored (`RUN` / run id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunItem {
    pub run_id: String,
    pub connection: String,
    pub source: String,
    pub object_type: String,
    pub mode: String,
    pub status: String,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub pages_fetched: u64,
    #[serde(default)]
    pub pages_imported: u64,
    #[serde(default)]
    pub pages_dead: u64,
    #[serde(default)]
    pub fetch_complete: bool,
    /// The connector's cursor (JSON text) of the next page to fetch.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Number of the next page to fetch.
    #[serde(default)]
    pub next_page: u32,
    #[serde(default)]
    pub records_fetched: u64,
    #[serde(default)]
    pub vendor_total: Option<u64>,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default)]
    pub vendor_requests: u64,
    #[serde(default)]
    pub throttled: u64,
    #[serde(default)]
    pub throttle_wait_ms: u64,
    #[serde(default)]
    pub message: Option<String>,
    /// The connection event (JSON text), so a later invocation can resume the run.
    pub event: String,
    #[serde(default)]
    pub fetch_failures: u32,
    /// When a finisher claimed the end of the run (Unix seconds).
    #[serde(default)]
    pub finishing_at: Option<i64>,
}

impl RunItem {
    /// The contract summary (errors are read from the page markers by [`Runs::summary`]).
    pub fn to_summary(&self, errors: Vec<RecordError>) -> RunSummary {
        RunSummary {
            run_id: self.run_id.clone(),
            connection: self.connection.clone(),
            source: self.source.clone(),
            status: Status::parse(&self.status).unwrap_or(Status::Running),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            pages: Pages {
                fetched: self.pages_fetched,
                imported: self.pages_imported,
                dead: self.pages_dead,
            },
            counts: self.counts,
            errors,
            object_type: self.object_type.clone(),
            mode: self.mode.clone(),
            records_fetched: self.records_fetched,
            vendor_total: self.vendor_total,
            vendor_requests: self.vendor_requests,
            throttled: self.throttled,
            throttle_wait_ms: self.throttle_wait_ms,
            message: self.message.clone(),
        }
    }

    /// Whether every fetched page has been imported or dead-lettered, as the run item says (its
    /// page counters are written when the run finishes; while it runs, use `all_pages_done_with`).
    pub fn all_pages_done(&self) -> bool {
        self.fetch_complete && self.pages_imported + self.pages_dead >= self.pages_fetched
    }

    /// Whether every fetched page has been imported or dead-lettered, by its page markers.
    pub fn all_pages_done_with(&self, t: &PageTotals) -> bool {
        self.fetch_complete && t.pages_done + t.pages_dead >= self.pages_fetched
    }

    /// The run as its page markers say it stands (counts and pages of a running run).
    pub fn with_totals(&self, t: &PageTotals) -> RunItem {
        let mut r = self.clone();
        r.pages_imported = t.pages_done;
        r.pages_dead = t.pages_dead;
        let missing = r.counts.missing;
        r.counts = t.counts;
        r.counts.missing = missing;
        r
    }
}

/// What a run's page markers add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageTotals {
    pub pages_done: u64,
    pub pages_dead: u64,
    pub counts: Counts,
    pub errors: Vec<RecordError>,
}

impl PageTotals {
    /// Add up markers.
    pub fn of(markers: &[(String, PageMarker)]) -> Self {
        let mut t = PageTotals::default();
        for (_, m) in markers {
            match m.status.as_str() {
                "done" => t.pages_done += 1,
                "dead" => t.pages_dead += 1,
                _ => continue,
            }
            t.counts.add(&m.counts);
        }
        t.errors = collect_errors(markers);
        t
    }
}

/// A page's outcome, fixed when the page is first planned so redeliveries count nothing twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PageMarker {
    /// `planned`, `done` or `dead`.
    pub status: String,
    pub counts: Counts,
    #[serde(default)]
    pub errors: Vec<RecordError>,
    /// Keys this page reported (for the missing-device sweep).
    #[serde(default)]
    pub seen: Vec<String>,
    #[serde(default)]
    pub at: String,
}

/// The lease item.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    run_id: String,
    expires_at: i64,
    started_at: String,
}

/// What starting a sync found.
pub enum Start {
    /// A new run holds the lease.
    New(RunItem),
    /// An interrupted run of this connection (its holder died) is resumed.
    Resume(RunItem),
}

/// The runs adapter.
#[derive(Clone)]
pub struct Runs {
    pub store: Store,
    pub lease_seconds: i64,
}

fn counts_values(prefix: &str, c: &Counts) -> Vec<(String, AttributeValue)> {
    [
        ("created", c.created),
        ("updated", c.updated),
        ("unchanged", c.unchanged),
        ("skipped", c.skipped),
        ("not_found", c.not_found),
        ("missing", c.missing),
        ("duplicate", c.duplicate),
        ("errors", c.errors),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{prefix}{k}"), n(v)))
    .collect()
}

impl Runs {
    /// Read a run.
    pub async fn get(&self, run_id: &str) -> Result<Option<RunItem>, AwsError> {
        self.store
            .get("RUN", run_id)
            .await?
            .map(from_item)
            .transpose()
    }

    /// The newest runs first.
    pub async fn list(&self, limit: usize) -> Result<Vec<RunItem>, AwsError> {
        self.store
            .query("RUN", None, true, Some(limit))
            .await?
            .into_iter()
            .map(from_item)
            .collect()
    }

    /// A run's summary: a running run's counts and errors are those of its page markers; a
    /// finished run's counts are in its item, its errors in its markers.
    pub async fn summary(&self, run: &RunItem) -> Result<RunSummary, AwsError> {
        let t = self.page_totals(&run.run_id).await?;
        if run.status == "running" {
            return Ok(run.with_totals(&t).to_summary(t.errors));
        }
        Ok(run.to_summary(t.errors))
    }

    /// What the run's page markers add up to.
    pub async fn page_totals(&self, run_id: &str) -> Result<PageTotals, AwsError> {
        Ok(PageTotals::of(&self.markers(run_id).await?))
    }

    /// The keys the run's pages reported (their page packs), for the missing sweep.
    pub async fn seen_keys(&self, run_id: &str) -> Result<HashSet<String>, AwsError> {
        let Some(run) = self.get(run_id).await? else {
            return Ok(HashSet::new());
        };
        let mut seen = HashSet::new();
        for (_, p) in self.store.packs(&run.connection, &run.object_type).await? {
            if p.run == run_id {
                seen.extend(p.entries.into_keys());
            }
        }
        Ok(seen)
    }

    /// All page markers of a run.
    pub async fn markers(&self, run_id: &str) -> Result<Vec<(String, PageMarker)>, AwsError> {
        let items = self
            .store
            .query(&format!("P#{run_id}"), None, false, None)
            .await?;
        items
            .into_iter()
            .map(|i| {
                let sk = i
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                from_item::<PageMarker>(i).map(|m| (sk, m))
            })
            .collect()
    }

    /// Start a run for `event`: take the connection's lease, or resume the run whose holder died.
    pub async fn start(&self, event: &ConnectionEvent) -> Result<Start, SyncError> {
        let now_s = Utc::now().timestamp();
        let lease_pk = format!("L#{}", event.connection);
        if let Some(item) = self.store.get(&lease_pk, "#").await? {
            let lease: Lease = from_item(item)?;
            let holder = self.get(&lease.run_id).await?;
            if lease.expires_at > now_s {
                if holder.as_ref().is_some_and(|r| r.status == "running") {
                    return Err(SyncError::AlreadyRunning {
                        connection: event.connection.clone(),
                        run_id: lease.run_id,
                        started_at: lease.started_at,
                    });
                }
            } else if let Some(run) = holder.filter(|r| r.status == "running") {
                // The holder stopped heart-beating: take the lease over for the same run.
                if self
                    .take_lease(
                        &event.connection,
                        &run.run_id,
                        &run.started_at,
                        Some(lease.expires_at),
                    )
                    .await?
                {
                    if !run.fetch_complete {
                        return Ok(Start::Resume(run));
                    }
                    let totals = self.page_totals(&run.run_id).await?;
                    if !run.all_pages_done_with(&totals) {
                        // Fetched but never fully imported: its pages were lost with their messages.
                        self.fail(&run, "abandoned: pages were fetched but never imported before the lease expired").await?;
                    }
                } else {
                    return Err(SyncError::AlreadyRunning {
                        connection: event.connection.clone(),
                        run_id: run.run_id,
                        started_at: run.started_at,
                    });
                }
            }
        }
        let started_at = now();
        let run_id = format!(
            "{}-{}-{:04x}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            event.connection,
            rand::random::<u16>()
        );
        let run = RunItem {
            run_id: run_id.clone(),
            connection: event.connection.clone(),
            source: event.source.as_str().into(),
            object_type: event.object_type.as_str().into(),
            mode: serde_json::to_value(event.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            status: "running".into(),
            started_at: started_at.clone(),
            finished_at: None,
            pages_fetched: 0,
            pages_imported: 0,
            pages_dead: 0,
            fetch_complete: false,
            cursor: None,
            next_page: 0,
            records_fetched: 0,
            vendor_total: None,
            counts: Counts::default(),
            vendor_requests: 0,
            throttled: 0,
            throttle_wait_ms: 0,
            message: None,
            event: serde_json::to_string(event).map_err(|e| SyncError::Other(e.to_string()))?,
            fetch_failures: 0,
            finishing_at: None,
        };
        // The lease and the run item are written together: no run without its lease.
        let lease = to_item(
            &lease_pk,
            "#",
            &Lease {
                run_id: run_id.clone(),
                expires_at: now_s + self.lease_seconds,
                started_at,
            },
        )?;
        let put_lease = Put::builder()
            .table_name(&self.store.table)
            .set_item(Some(lease))
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now OR run_id = :free")
            .expression_attribute_values(":now", n(now_s))
            .expression_attribute_values(":free", s("-"))
            .build()
            .map_err(|e| AwsError::Item(e.to_string()))?;
        let put_run = Put::builder()
            .table_name(&self.store.table)
            .set_item(Some(to_item("RUN", &run_id, &run)?))
            .build()
            .map_err(|e| AwsError::Item(e.to_string()))?;
        let res = self
            .store
            .ddb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put_lease).build())
            .transact_items(TransactWriteItem::builder().put(put_run).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(Start::New(run)),
            Err(e) if is_condition_failed(&e) => Err(SyncError::AlreadyRunning {
                connection: event.connection.clone(),
                run_id: "(another start won the lease just now)".into(),
                started_at: now(),
            }),
            Err(e) => Err(dyn_err("TransactWriteItems", e).into()),
        }
    }

    async fn take_lease(
        &self,
        connection: &str,
        run_id: &str,
        started_at: &str,
        expected_expiry: Option<i64>,
    ) -> Result<bool, AwsError> {
        let now_s = Utc::now().timestamp();
        let item = to_item(
            &format!("L#{connection}"),
            "#",
            &Lease {
                run_id: run_id.into(),
                expires_at: now_s + self.lease_seconds,
                started_at: started_at.into(),
            },
        )?;
        let mut req = self
            .store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some(item));
        req = match expected_expiry {
            Some(exp) => req
                .condition_expression("expires_at = :exp")
                .expression_attribute_values(":exp", n(exp)),
            None => req
                .condition_expression("run_id = :r")
                .expression_attribute_values(":r", s(run_id)),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("PutItem", e)),
        }
    }

    /// Extend the lease of a run that is still working.
    pub async fn heartbeat(&self, run: &RunItem) -> Result<bool, AwsError> {
        self.take_lease(&run.connection, &run.run_id, &run.started_at, None)
            .await
    }

    /// Release the connection's lease if `run_id` holds it.
    pub async fn release(&self, connection: &str, run_id: &str) -> Result<(), AwsError> {
        self.store
            .delete(
                &format!("L#{connection}"),
                "#",
                Some(("run_id = :r", vec![(":r", s(run_id))])),
            )
            .await
            .map(|_| ())
    }

    /// Record that the fetcher sent `pages` messages for page `page_no` and where the next starts.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        run_id: &str,
        page_no: u32,
        pages: u64,
        records: u64,
        cursor: Option<String>,
        vendor_total: Option<u64>,
        http: crate::http::HttpCounts,
    ) -> Result<RunItem, AwsError> {
        let done = cursor.is_none();
        let mut req = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression(
                "SET next_page = :np, fetch_complete = :done, #cur = :c, vendor_total = :vt ADD pages_fetched :p, records_fetched :r, vendor_requests :vr, throttled :th, throttle_wait_ms :tw",
            )
            .condition_expression("next_page = :cur AND #st = :running")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cur", "cursor")
            .expression_attribute_values(":np", n(page_no + 1))
            .expression_attribute_values(":cur", n(page_no))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .expression_attribute_values(":c", cursor.map(s).unwrap_or(AttributeValue::Null(true)))
            .expression_attribute_values(":vt", vendor_total.map(n).unwrap_or(AttributeValue::Null(true)))
            .expression_attribute_values(":p", n(pages))
            .expression_attribute_values(":r", n(records))
            .return_values(ReturnValue::AllNew);
        // `http` is the delta since the last checkpoint, so counters add up across continuations.
        req = req
            .expression_attribute_values(":vr", n(http.requests))
            .expression_attribute_values(":th", n(http.throttled))
            .expression_attribute_values(":tw", n(http.throttle_wait_ms));
        let out = req.send().await.map_err(|e| {
            if is_condition_failed(&e) {
                AwsError::Item(format!("run {run_id} moved on (already checkpointed past page {page_no}, or no longer running)"))
            } else {
                dyn_err("UpdateItem", e)
            }
        })?;
        from_item(out.attributes.unwrap_or_default())
    }

    /// Read a page marker.
    pub async fn marker(
        &self,
        run_id: &str,
        page_id: &str,
    ) -> Result<Option<PageMarker>, AwsError> {
        self.store
            .get(&format!("P#{run_id}"), page_id)
            .await?
            .map(from_item)
            .transpose()
    }

    /// Plan a page: store its outcome unless a plan exists. Returns the plan that stands.
    pub async fn plan(
        &self,
        run_id: &str,
        page_id: &str,
        marker: &PageMarker,
    ) -> Result<PageMarker, AwsError> {
        let item = to_item(&format!("P#{run_id}"), page_id, marker)?;
        match self
            .store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => Ok(marker.clone()),
            Err(e) if is_condition_failed(&e) => self
                .marker(run_id, page_id)
                .await?
                .ok_or_else(|| AwsError::Item(format!("page {page_id} of {run_id} vanished"))),
            Err(e) => Err(dyn_err("PutItem", e)),
        }
    }

    /// Record a planned page's outcome in its marker, exactly once (`planned` → `done`/`dead`,
    /// with its counts and errors). Only this page writes its marker: no hot item, no transaction.
    /// Returns false if it was already recorded.
    pub async fn complete_page(
        &self,
        run_id: &str,
        page_id: &str,
        marker: &PageMarker,
        dead: bool,
    ) -> Result<bool, AwsError> {
        let to = if dead { "dead" } else { "done" };
        let res = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(format!("P#{run_id}")))
            .key("sk", s(page_id))
            .update_expression("SET #st = :to, errors = :errs, #cnt = :cnt")
            .condition_expression("#st = :planned")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cnt", "counts")
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(":planned", s("planned"))
            .expression_attribute_values(
                ":errs",
                serde_dynamo::to_attribute_value(&marker.errors)
                    .map_err(|e| AwsError::Item(e.to_string()))?,
            )
            .expression_attribute_values(
                ":cnt",
                serde_dynamo::to_attribute_value(marker.counts)
                    .map_err(|e| AwsError::Item(e.to_string()))?,
            )
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Mark a run failed (fetch error) and release its lease.
    pub async fn fail(&self, run: &RunItem, message: &str) -> Result<(), AwsError> {
        self.store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(&run.run_id))
            .update_expression("SET #st = :f, finished_at = :t, #msg = :m")
            .condition_expression("#st = :running")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#msg", "message")
            .expression_attribute_values(":f", s("failed"))
            .expression_attribute_values(":t", s(now()))
            .expression_attribute_values(":m", s(message))
            .expression_attribute_values(":running", s("running"))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| {
                if is_condition_failed(&e) {
                    Ok(())
                } else {
                    Err(dyn_err("UpdateItem", e))
                }
            })?;
        self.release(&run.connection, &run.run_id).await
    }

    /// Note a retryable fetch failure; returns how many there have been.
    pub async fn note_fetch_failure(&self, run_id: &str, message: &str) -> Result<u32, AwsError> {
        let out = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET #msg = :m ADD fetch_failures :one")
            .expression_attribute_names("#msg", "message")
            .expression_attribute_values(":m", s(message))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| dyn_err("UpdateItem", e))?;
        Ok(out
            .attributes
            .and_then(|a| {
                a.get("fetch_failures")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(1))
    }

    /// Finish a run whose pages are all accounted for: sweep missing records (only after a clean,
    /// complete fetch whose count agrees with the vendor's total), then set the final status.
    /// Safe to call many times and concurrently; returns the run as it stands afterwards.
    pub async fn try_finish(&self, run_id: &str) -> Result<Option<RunItem>, AwsError> {
        let Some(run) = self.get(run_id).await? else {
            return Ok(None);
        };
        if run.status != "running" || !run.fetch_complete {
            return Ok(Some(run));
        }
        let totals = self.page_totals(run_id).await?;
        if !run.all_pages_done_with(&totals) {
            return Ok(Some(run));
        }
        let run = run.with_totals(&totals);
        // Claim the finish so one finisher sweeps; a claim older than 5 minutes is abandoned.
        let now_s = Utc::now().timestamp();
        let claim = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET finishing_at = :now")
            .condition_expression("#st = :running AND (attribute_not_exists(finishing_at) OR finishing_at = :null OR finishing_at < :stale)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":now", n(now_s))
            .expression_attribute_values(":stale", n(now_s - 300))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":null", AttributeValue::Null(true))
            .send()
            .await;
        match claim {
            Ok(_) => {}
            Err(e) if is_condition_failed(&e) => return self.get(run_id).await,
            Err(e) => return Err(dyn_err("UpdateItem", e)),
        }
        let (missing, message) = self.sweep_missing(&run).await?;
        let status = if run.pages_dead > 0 || run.counts.errors > 0 {
            "succeeded_with_errors"
        } else {
            "succeeded"
        };
        let mut req = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET #st = :s, finished_at = :t, #cnt = :cnt, pages_imported = :pi, pages_dead = :pd, #msg = :msg")
            .condition_expression("#st = :running")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cnt", "counts")
            .expression_attribute_values(
                ":cnt",
                serde_dynamo::to_attribute_value(Counts {
                    missing,
                    ..run.counts
                })
                .map_err(|e| AwsError::Item(e.to_string()))?,
            )
            .expression_attribute_values(":pi", n(run.pages_imported))
            .expression_attribute_values(":pd", n(run.pages_dead))
            .expression_attribute_names("#msg", "message")
            .expression_attribute_values(":s", s(status))
            .expression_attribute_values(":t", s(now()))
            .expression_attribute_values(":running", s("running"))
            .return_values(ReturnValue::AllNew);
        req = req.expression_attribute_values(
            ":msg",
            message.map(s).unwrap_or(AttributeValue::Null(true)),
        );
        match req.send().await {
            Ok(out) => {
                self.release(&run.connection, run_id).await?;
                Ok(Some(from_item(out.attributes.unwrap_or_default())?))
            }
            Err(e) if is_condition_failed(&e) => self.get(run_id).await,
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Mark the connection's records not seen in this run as missing. Returns how many this run
    /// marked (counted by the `mr` field, so a repeated sweep counts the same), and a note when
    /// the sweep was skipped.
    async fn sweep_missing(&self, run: &RunItem) -> Result<(u64, Option<String>), AwsError> {
        if run.pages_dead > 0 {
            return Ok((
                0,
                Some(format!(
                    "{} page(s) dead-lettered: no record was marked missing",
                    run.pages_dead
                )),
            ));
        }
        if let Some(total) = run.vendor_total {
            if total != run.records_fetched {
                return Ok((
                    0,
                    Some(format!(
                        "the vendor reported {total} records but {} were fetched: no record was marked missing",
                        run.records_fetched
                    )),
                ));
            }
        }
        let seen = self.seen_keys(&run.run_id).await?;
        let prefix = format!("{}#", run.object_type);
        let members = self
            .store
            .query(&format!("M#{}", run.connection), Some(&prefix), false, None)
            .await?;
        let today = Utc::now().format("%Y-%m-%d").to_string();
        let mut marked = 0u64;
        for item in members {
            let m: Member = from_item(item.clone())?;
            if seen.contains(&m.key) {
                continue;
            }
            if m.missing.is_some() {
                marked += u64::from(m.mr.as_deref() == Some(run.run_id.as_str()));
                continue;
            }
            if self.mark_missing(run, &m.key, &today).await? {
                marked += 1;
            }
        }
        Ok((marked, None))
    }

    async fn mark_missing(&self, run: &RunItem, key: &str, date: &str) -> Result<bool, AwsError> {
        // The record: its source entry for this connection gets the date.
        for _ in 0..5 {
            let Some(mut rec) = self.store.record(&run.object_type, key).await? else {
                return Ok(false);
            };
            let ver = rec.ver;
            let Some(src) = rec.src.get_mut(&run.connection) else {
                break;
            };
            if src.missing.is_none() {
                src.missing = Some(date.to_string());
                rec.ver += 1;
                if !self.store.replace_record(&rec, ver).await? {
                    continue;
                }
            }
            break;
        }
        let upd = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(format!("M#{}", run.connection)))
            .key("sk", s(format!("{}#{key}", run.object_type)))
            .update_expression("SET #mi = :d, mr = :r")
            .expression_attribute_names("#mi", "missing")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#mi)")
            .expression_attribute_values(":d", s(date))
            .expression_attribute_values(":r", s(&run.run_id))
            .send()
            .await;
        match upd {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Put a dead page back in play (for `runs redrive`): marker removed, run running again.
    pub async fn reopen_dead_page(&self, run_id: &str, page_id: &str) -> Result<bool, AwsError> {
        let Some(m) = self.marker(run_id, page_id).await? else {
            return Ok(false);
        };
        if m.status != "dead" {
            return Ok(false);
        }
        let del = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.store.table)
            .key("pk", s(format!("P#{run_id}")))
            .key("sk", s(page_id))
            .condition_expression("#st = :dead")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":dead", s("dead"))
            .build()
            .map_err(|e| AwsError::Item(e.to_string()))?;
        let mut expr =
            "SET #st = :running, finished_at = :null, finishing_at = :null ADD pages_dead :minus"
                .to_string();
        let mut run = Update::builder()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id));
        for (name, v) in counts_values(":c_", &m.counts) {
            let field = name.trim_start_matches(":c_").to_string();
            let neg = match &v {
                AttributeValue::N(x) => n(format!("-{x}")),
                other => other.clone(),
            };
            expr.push_str(&format!(", #cnt.#f_{field} {name}"));
            run = run
                .expression_attribute_names(format!("#f_{field}"), field)
                .expression_attribute_values(name, neg);
        }
        let run = run
            .update_expression(expr)
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cnt", "counts")
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":null", AttributeValue::Null(true))
            .expression_attribute_values(":minus", n(-1))
            .build()
            .map_err(|e| AwsError::Item(e.to_string()))?;
        self.store
            .transact(vec![
                TransactWriteItem::builder().delete(del).build(),
                TransactWriteItem::builder().update(run).build(),
            ])
            .await
    }
}

/// A membership item: a record a connection reports.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Member {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// The run that marked it missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr: Option<String>,
}

/// The membership item for a record.
pub fn member_item(connection: &str, object_type: &str, key: &str) -> Result<Item, AwsError> {
    to_item(
        &format!("M#{connection}"),
        &format!("{object_type}#{key}"),
        &Member {
            key: key.to_string(),
            missing: None,
            mr: None,
        },
    )
}

/// Errors of a run, gathered for the summary.
pub fn collect_errors(markers: &[(String, PageMarker)]) -> Vec<RecordError> {
    markers.iter().flat_map(|(_, m)| m.errors.clone()).collect()
}
