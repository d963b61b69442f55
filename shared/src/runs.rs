//! Runs as an audit log: the run item, its page markers, the lease that keeps one run per
//! connection, and the end of a run (missing-device sweep, final status).

use std::collections::{BTreeSet, HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{AwsError, SyncError};
use crate::event::ConnectionEvent;
use crate::guard::{self, Absence, GuardConfig, Verdict};
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
    /// The claiming finisher's token (so a claim applied before a 500 is recognised as its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finisher: Option<String>,
    /// Which vendor API version served the run's pages (e.g. `computers-inventory v4`).
    #[serde(default)]
    pub served_by: Option<String>,
    /// The most messages one page of the run went out in (a page too big for one SQS message
    /// is split into chunks). Every page marker is then at `<page>.<chunk>` with chunk below
    /// this, so the run's markers are read by key instead of by Query. `None`: a run item
    /// written before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunks: Option<u32>,
    /// Token of the invocation that owns the fetch (one fetcher per run).
    #[serde(default)]
    pub owner: Option<String>,
    /// Until when (Unix seconds) the owner's lease lives; its heartbeat renews it while it
    /// works. Deliberately not the table's TTL attribute.
    #[serde(default)]
    pub owner_until: i64,
    /// Set when the fetch completes: by then (Unix seconds) every page has been imported or
    /// dead-lettered, or its message was lost and the run is ended as abandoned.
    #[serde(default)]
    pub import_deadline: Option<i64>,
    /// The chunk plan of the page being sent: page number and its number of chunks.
    #[serde(default)]
    pub planned_page: Option<u32>,
    #[serde(default)]
    pub planned_chunks: Option<u32>,
    /// A revert run: the run it reverted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<String>,
    /// A revert run: what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<crate::summary::RevertCounts>,
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
            served_by: self.served_by.clone(),
            reverts: self.reverts.clone(),
            revert: self.revert.clone(),
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
    /// Keys the done pages dropped from the packs they replaced.
    pub dropped: BTreeSet<String>,
    /// Runs whose packs the done pages replaced.
    pub replaced: BTreeSet<String>,
    /// Done pages that could not say what they dropped.
    pub undiffed: u64,
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
            if m.status == "done" {
                match &m.diff {
                    Some(d) => {
                        t.dropped.extend(d.dropped.iter().cloned());
                        t.replaced.extend(d.replaced.iter().cloned());
                    }
                    None => t.undiffed += 1,
                }
            }
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
    /// How the page's keys differ from the pack it replaced, for the incremental sweep; `None`
    /// when the page could not tell (a redelivery that found its own pack, an older importer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<PageDiff>,
}

/// What a page no longer lists of the pack it replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PageDiff {
    /// The run that wrote the replaced pack (`None`: there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Keys that pack listed and this page does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

/// The keys a connection's last sweep left absent (counting towards missing, or marked by that
/// run), so the next sweep reads only those and what its pages dropped
/// (`G#<connection>` / `<Type>#grace`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Grace {
    /// The run whose sweep wrote it.
    pub run: String,
    /// `None`: too many to keep, the next sweep reads the whole membership.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// When a sweep last read the whole membership (a daily full sweep catches members no
    /// page pack lists, such as those of pages imported without a run).
    #[serde(default)]
    pub full_at: Option<String>,
}

/// Bytes of keys a grace item keeps (DynamoDB items stop at 400 KB).
const GRACE_BYTES: usize = 200_000;

/// How long the incremental sweep runs before a full one.
const FULL_SWEEP_EVERY_HOURS: i64 = 24;

/// The connection's lease item (`L#<connection>` / `#`): which run is the connection's current
/// one. It has no expiry of its own: whether that run is alive is read from the run item's
/// `owner_until` (never the table's TTL attribute, which may delete it at any time).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    run_id: String,
    started_at: String,
}

/// The run id a lease item names.
pub fn from_lease(item: Item) -> Option<String> {
    from_item::<Lease>(item).ok().map(|l| l.run_id)
}

/// What starting a sync found.
pub enum Start {
    /// A new run, owned by the caller's token.
    New(RunItem),
    /// An interrupted run of this connection (its holder died) is resumed by the caller's token.
    Resume(RunItem),
}

/// Where a run's end stands, as [`Runs::settle`] found it.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// The run has ended (now or before).
    Ended(RunItem),
    /// Still fetching, importing or being finished by someone alive.
    Open(RunItem),
}

/// A fresh per-invocation lease token.
pub fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
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
        let t = self.page_totals(run).await?;
        if run.status == "running" {
            return Ok(run.with_totals(&t).to_summary(t.errors));
        }
        Ok(run.to_summary(t.errors))
    }

    /// What the run's page markers add up to.
    pub async fn page_totals(&self, run: &RunItem) -> Result<PageTotals, AwsError> {
        Ok(PageTotals::of(&self.run_markers(run).await?))
    }

    /// The page markers of a run, by key when the run's page ids are known (pages
    /// `0..next_page`, chunks below `max_chunks`): BatchGetItem costs per marker, while a Query
    /// of the run's partition costs per item of the whole table on the local stack. A page not
    /// imported yet has no marker, and an id no message had is simply not found.
    pub async fn run_markers(&self, run: &RunItem) -> Result<Vec<(String, PageMarker)>, AwsError> {
        let sent = match run.max_chunks {
            Some(chunks) => crate::store::PageRange {
                pages: run.next_page,
                chunks,
            },
            None => return self.markers(&run.run_id).await,
        };
        if sent.len() > crate::store::MAX_IDS_BY_KEY {
            return self.markers(&run.run_id).await;
        }
        let pk = format!("P#{}", run.run_id);
        let keys: Vec<(String, String)> =
            sent.ids().into_iter().map(|id| (pk.clone(), id)).collect();
        let mut found: Vec<(String, PageMarker)> = self
            .store
            .batch_get(&keys)
            .await?
            .into_iter()
            .map(|((_, sk), i)| from_item::<PageMarker>(i).map(|m| (sk, m)))
            .collect::<Result<_, _>>()?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
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
    /// Start a run for `event` under `token`: resume the connection's run whose holder died, end a
    /// run that is complete (or whose pages are past saving) and start a new one, or say that a
    /// live run holds the connection.
    pub async fn start(&self, event: &ConnectionEvent, token: &str) -> Result<Start, SyncError> {
        let lease_pk = format!("L#{}", event.connection);
        let busy = |run: &RunItem| SyncError::AlreadyRunning {
            connection: event.connection.clone(),
            run_id: run.run_id.clone(),
            started_at: run.started_at.clone(),
        };
        let mut prev: Option<String> = None;
        if let Some(item) = self.store.get(&lease_pk, "#").await? {
            let lease: Lease = from_item(item)?;
            prev = Some(lease.run_id.clone());
            let holder = self.get(&lease.run_id).await?;
            if holder.is_none() {
                // The lease is written just before its run item: a start may be between the two.
                let age = chrono::DateTime::parse_from_rfc3339(&lease.started_at)
                    .map(|d| Utc::now().timestamp() - d.timestamp())
                    .unwrap_or(i64::MAX);
                if age < self.lease_seconds.clamp(5, 60) {
                    return Err(SyncError::AlreadyRunning {
                        connection: event.connection.clone(),
                        run_id: lease.run_id,
                        started_at: lease.started_at,
                    });
                }
            }
            if let Some(run) = holder {
                if run.status == "running" {
                    let now_s = Utc::now().timestamp();
                    if run.owner_until > now_s {
                        return Err(busy(&run));
                    }
                    if !run.fetch_complete {
                        // Its fetcher died: take the run over from its checkpoint.
                        return match self.claim(&run.run_id, token).await? {
                            Some(r) => Ok(Start::Resume(r)),
                            None => Err(busy(&run)),
                        };
                    }
                    match self.settle(&run.run_id).await? {
                        Settled::Ended(r) => {
                            tracing::info!(run_id = %r.run_id, status = %r.status, "ended the connection's previous run before starting");
                        }
                        Settled::Open(r) => return Err(busy(&r)),
                    }
                }
            }
        }
        let run = self.new_run(event, token)?;
        let lease = to_item(
            &lease_pk,
            "#",
            &Lease {
                run_id: run.run_id.clone(),
                started_at: run.started_at.clone(),
            },
        )?;
        // The lease first, then the run: a crash between them leaves a lease naming no run,
        // which the next start replaces (no transaction: moto's are not isolated, and a failed
        // one there restores whole tables over concurrent writes).
        let mut put_lease = self
            .store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some(lease));
        put_lease = match &prev {
            // The previous run's end may have deleted its lease meanwhile.
            Some(p) => put_lease
                .condition_expression("attribute_not_exists(pk) OR run_id = :prev")
                .expression_attribute_values(":prev", s(p)),
            None => put_lease.condition_expression("attribute_not_exists(pk)"),
        };
        match put_lease.send().await {
            Ok(_) => {}
            // Our own lease, applied before a 500 whose retry then failed the condition.
            Err(e)
                if is_condition_failed(&e) && self.lease_names(&lease_pk, &run.run_id).await? => {}
            Err(e) if is_condition_failed(&e) => {
                return Err(SyncError::AlreadyRunning {
                    connection: event.connection.clone(),
                    run_id: "(another start won the lease just now)".into(),
                    started_at: now(),
                })
            }
            Err(e) => return Err(dyn_err("PutItem", e).into()),
        }
        crate::failpoint::hit("start.after_lease")?;
        self.store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some(to_item("RUN", &run.run_id, &run)?))
            .send()
            .await
            .map_err(|e| dyn_err("PutItem", e))?;
        Ok(Start::New(run))
    }

    fn new_run(&self, event: &ConnectionEvent, token: &str) -> Result<RunItem, SyncError> {
        let started_at = now();
        // Run ids of a connection must sort by start: packs, the late-page guard and the sweep
        // compare them. Milliseconds keep two runs started within one second in order (a random
        // suffix alone did not, and a refused page pack made a sweep mark every record missing).
        let run_id = format!(
            "{}-{}-{:04x}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            event.connection,
            rand::random::<u16>()
        );
        Ok(RunItem {
            run_id,
            connection: event.connection.clone(),
            source: event.source.as_str().into(),
            object_type: event.object_type.as_str().into(),
            mode: serde_json::to_value(event.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            status: "running".into(),
            started_at,
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
            finisher: None,
            served_by: None,
            max_chunks: Some(1),
            owner: Some(token.to_string()),
            owner_until: Utc::now().timestamp() + self.lease_seconds,
            import_deadline: None,
            planned_page: None,
            planned_chunks: None,
            reverts: None,
            revert: None,
        })
    }

    /// Take over a running, not fully fetched run whose owner's lease expired (or that `token`
    /// already owns). Returns the run as owned, or `None` if someone else holds it.
    pub async fn claim(&self, run_id: &str, token: &str) -> Result<Option<RunItem>, AwsError> {
        let now_s = Utc::now().timestamp();
        let out = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET #ow = :t, owner_until = :u")
            .condition_expression(
                "#st = :running AND fetch_complete = :no AND (#ow = :t OR attribute_not_exists(owner_until) OR owner_until < :now)",
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":t", s(token))
            .expression_attribute_values(":u", n(now_s + self.lease_seconds))
            .expression_attribute_values(":now", n(now_s))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match out {
            Ok(o) => Ok(Some(from_item(o.attributes.unwrap_or_default())?)),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Renew the lease `token` holds on a run; false if the token no longer owns it.
    pub async fn renew(&self, run_id: &str, token: &str) -> Result<bool, AwsError> {
        let now_s = Utc::now().timestamp();
        let out = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET owner_until = :u")
            .condition_expression("#st = :running AND #ow = :t")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":t", s(token))
            .expression_attribute_values(":u", n(now_s + self.lease_seconds))
            .expression_attribute_values(":running", s("running"))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Give up the lease `token` holds (a hand-over or an error), so the next invocation can
    /// take the run over at once instead of waiting for the lease to expire.
    pub async fn disown(&self, run_id: &str, token: &str) -> Result<(), AwsError> {
        self.hold_until(run_id, token, 0).await
    }

    /// Give up the lease `token` holds as of `until` (Unix seconds): nobody takes the run over
    /// before then (a delayed retry's continuation comes at that time).
    pub async fn hold_until(&self, run_id: &str, token: &str, until: i64) -> Result<(), AwsError> {
        let out = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET owner_until = :zero")
            .condition_expression("#ow = :t")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":t", s(token))
            .expression_attribute_values(":zero", n(until))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
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

    /// Record, before the first chunk of page `page_no` is sent, how many chunks it splits into,
    /// so a re-fetch after a crash re-sends the same chunk ids. Conditional on `token`.
    pub async fn plan_chunks(
        &self,
        run_id: &str,
        token: &str,
        page_no: u32,
        chunks: u32,
    ) -> Result<bool, AwsError> {
        let out = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET planned_page = :p, planned_chunks = :c")
            .condition_expression("#st = :running AND #ow = :t AND next_page = :p")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":t", s(token))
            .expression_attribute_values(":p", n(page_no))
            .expression_attribute_values(":c", n(chunks))
            .expression_attribute_values(":running", s("running"))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Record that the fetcher sent `pages` messages for page `page_no` and where the next starts.
    /// Conditional on `token` owning the run; the last page also gives the lease up and sets the
    /// time by which every page must have been imported or dead-lettered (`import_deadline`).
    /// `None`: the token lost the run (or the run moved on) and nothing was written.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        run_id: &str,
        token: &str,
        page_no: u32,
        pages: u64,
        records: u64,
        cursor: Option<String>,
        vendor_total: Option<u64>,
        http: crate::http::HttpCounts,
        import_horizon_secs: i64,
        max_chunks: Option<u32>,
    ) -> Result<Option<RunItem>, AwsError> {
        let done = cursor.is_none();
        let now_s = Utc::now().timestamp();
        let mut expr = String::from(
            "SET next_page = :np, fetch_complete = :done, #cur = :c, vendor_total = :vt, planned_page = :null, planned_chunks = :null",
        );
        if done {
            expr.push_str(", owner_until = :zero, import_deadline = :idl");
        }
        if max_chunks.is_some() {
            expr.push_str(", max_chunks = :mc");
        }
        expr.push_str(" ADD pages_fetched :p, records_fetched :r, vendor_requests :vr, throttled :th, throttle_wait_ms :tw");
        let mut req = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression(expr)
            .condition_expression("next_page = :cur AND #st = :running AND #ow = :tok")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cur", "cursor")
            .expression_attribute_names("#ow", "owner")
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":np", n(page_no + 1))
            .expression_attribute_values(":cur", n(page_no))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":null", AttributeValue::Null(true))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .expression_attribute_values(":c", cursor.map(s).unwrap_or(AttributeValue::Null(true)))
            .expression_attribute_values(
                ":vt",
                vendor_total.map(n).unwrap_or(AttributeValue::Null(true)),
            )
            .expression_attribute_values(":p", n(pages))
            .expression_attribute_values(":r", n(records))
            .return_values(ReturnValue::AllNew);
        if done {
            req = req
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":idl", n(now_s + import_horizon_secs));
        }
        if let Some(mc) = max_chunks {
            req = req.expression_attribute_values(":mc", n(mc));
        }
        // `http` is the delta since the last checkpoint, so counters add up across continuations.
        req = req
            .expression_attribute_values(":vr", n(http.requests))
            .expression_attribute_values(":th", n(http.throttled))
            .expression_attribute_values(":tw", n(http.throttle_wait_ms));
        match req.send().await {
            Ok(out) => Ok(Some(from_item(out.attributes.unwrap_or_default())?)),
            Err(e) if is_condition_failed(&e) => {
                // A 500 may come after DynamoDB applied the write, and the SDK's retry then fails
                // the condition on our own checkpoint: still ours if our token holds the run and
                // it stands at the next page (nobody else can move it there with our token).
                Ok(self
                    .get(run_id)
                    .await?
                    .filter(|r| r.owner.as_deref() == Some(token) && r.next_page == page_no + 1))
            }
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
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
            .update_expression(if marker.diff.is_some() {
                "SET #st = :to, errors = :errs, #cnt = :cnt, diff = :diff"
            } else {
                "SET #st = :to, errors = :errs, #cnt = :cnt"
            })
            .set_expression_attribute_values(match &marker.diff {
                Some(d) => Some(HashMap::from([(
                    ":diff".to_string(),
                    serde_dynamo::to_attribute_value(d)
                        .map_err(|e| AwsError::Item(e.to_string()))?,
                )])),
                None => None,
            })
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

    /// Record which vendor API version served the run's pages (written only when it changes).
    pub async fn note_served_by(&self, run_id: &str, served_by: &str) -> Result<(), AwsError> {
        self.store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET served_by = :v")
            .expression_attribute_values(":v", s(served_by))
            .send()
            .await
            .map_err(|e| dyn_err("UpdateItem", e))?;
        Ok(())
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
    /// complete fetch whose count agrees with the vendor's total), then write the final status and
    /// the counts its page markers add up to, once. Safe to call many times and concurrently;
    /// returns the run as it stands afterwards.
    pub async fn try_finish(&self, run_id: &str) -> Result<Option<RunItem>, AwsError> {
        let Some(run) = self.get(run_id).await? else {
            return Ok(None);
        };
        if run.status != "running" || !run.fetch_complete {
            return Ok(Some(run));
        }
        let totals = self.page_totals(&run).await?;
        if totals.pages_done + totals.pages_dead < run.pages_fetched {
            return Ok(Some(run));
        }
        // Claim the finish so one finisher sweeps; a claim older than two leases is a dead
        // finisher's, and the next caller takes it over.
        let now_s = Utc::now().timestamp();
        let finisher = new_token();
        let claim = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(run_id))
            .update_expression("SET finishing_at = :now, finisher = :fin")
            .condition_expression("#st = :running AND (attribute_not_exists(finishing_at) OR finishing_at = :null OR finishing_at < :stale)")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":now", n(now_s))
            .expression_attribute_values(":fin", s(&finisher))
            .expression_attribute_values(":stale", n(now_s - 2 * self.lease_seconds.max(1)))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":null", AttributeValue::Null(true))
            .send()
            .await;
        match claim {
            Ok(_) => {}
            Err(e) if is_condition_failed(&e) => {
                let now = self.get(run_id).await?;
                // Our own claim, applied before a 500 whose retry then failed the condition:
                // finish now rather than wait for the claim to go stale.
                let ours = now.as_ref().is_some_and(|r| {
                    r.status == "running" && r.finisher.as_deref() == Some(finisher.as_str())
                });
                if !ours {
                    return Ok(now);
                }
            }
            Err(e) => return Err(dyn_err("UpdateItem", e)),
        }
        crate::failpoint::hit_aws("finish.after_claim")?;
        let sweep = self.sweep_missing(&run, &totals).await?;
        let (missing, message) = (sweep.marked, sweep.message);
        crate::failpoint::hit_aws("finish.after_sweep")?;
        let status = if totals.pages_dead > 0 || totals.counts.errors > 0 || sweep.held {
            "succeeded_with_errors"
        } else {
            "succeeded"
        };
        let mut counts = totals.counts;
        counts.missing = missing;
        let ended = self.end(&run, status, &totals, counts, message).await?;
        if totals.pages_dead == 0 && ended.as_ref().is_some_and(|r| r.status == status) {
            self.drop_stale_packs(&run, sweep.stale_packs).await?;
        }
        Ok(ended)
    }

    /// After a clean, complete run: drop the packs of pages it no longer has, so a key they list
    /// cannot pass for unchanged on a later run (each only if no run rewrote it meanwhile).
    async fn drop_stale_packs(
        &self,
        run: &RunItem,
        known: Option<Vec<(String, String)>>,
    ) -> Result<(), AwsError> {
        let stale = match known {
            Some(k) => k,
            None => older_packs(
                self.store
                    .packs_known(&run.connection, &run.object_type, own_pages(run))
                    .await?,
                &run.run_id,
            ),
        };
        let pk = crate::pages::pack_pk(&run.connection, &run.object_type);
        for (sk, by) in stale {
            self.store
                .delete(&pk, &sk, Some(("run = :r", vec![(":r", s(&by))])))
                .await
                .ok();
        }
        Ok(())
    }

    /// Write a run's end (conditional on it still running) and free its connection.
    async fn end(
        &self,
        run: &RunItem,
        status: &str,
        totals: &PageTotals,
        counts: Counts,
        message: Option<String>,
    ) -> Result<Option<RunItem>, AwsError> {
        self.end_with(run, status, totals, counts, message, None)
            .await
    }

    /// `end`, also setting one more attribute of the run item (a revert's own counts).
    pub(crate) async fn end_with(
        &self,
        run: &RunItem,
        status: &str,
        totals: &PageTotals,
        counts: Counts,
        message: Option<String>,
        extra: Option<(&str, AttributeValue)>,
    ) -> Result<Option<RunItem>, AwsError> {
        let mut expr = String::from("SET #st = :s, finished_at = :t, #cnt = :c, pages_imported = :pi, pages_dead = :pd, #msg = :msg, owner_until = :zero");
        let mut req = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s("RUN"))
            .key("sk", s(&run.run_id));
        if let Some((name, value)) = extra {
            expr.push_str(", #extra = :extra");
            req = req
                .expression_attribute_names("#extra", name)
                .expression_attribute_values(":extra", value);
        }
        let req = req
            .update_expression(expr)
            .condition_expression("#st = :running")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#cnt", "counts")
            .expression_attribute_names("#msg", "message")
            .expression_attribute_values(":s", s(status))
            .expression_attribute_values(":t", s(now()))
            .expression_attribute_values(
                ":c",
                serde_dynamo::to_attribute_value(counts)
                    .map_err(|e| AwsError::Item(e.to_string()))?,
            )
            .expression_attribute_values(":pi", n(totals.pages_done))
            .expression_attribute_values(":pd", n(totals.pages_dead))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(
                ":msg",
                message.map(s).unwrap_or(AttributeValue::Null(true)),
            )
            .return_values(ReturnValue::AllNew);
        match req.send().await {
            Ok(out) => {
                crate::failpoint::hit_aws("finish.after_end")?;
                self.release(&run.connection, &run.run_id).await?;
                let ended: RunItem = from_item(out.attributes.unwrap_or_default())?;
                crate::telemetry::emit_run(&ended);
                Ok(Some(ended))
            }
            Err(e) if is_condition_failed(&e) => self.get(&run.run_id).await,
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Bring a fully fetched run to its end if it can be: finish it when every page is in, or
    /// fail it when its import deadline passed with pages neither imported nor dead-lettered
    /// (their messages were lost). A run still fetching is left alone.
    pub async fn settle(&self, run_id: &str) -> Result<Settled, AwsError> {
        let run = self
            .try_finish(run_id)
            .await?
            .ok_or_else(|| AwsError::Item(format!("run {run_id} does not exist")))?;
        if run.status != "running" {
            return Ok(Settled::Ended(run));
        }
        let now_s = Utc::now().timestamp();
        if run.fetch_complete && run.import_deadline.is_some_and(|d| d < now_s) {
            let totals = self.page_totals(&run).await?;
            let lost = run
                .pages_fetched
                .saturating_sub(totals.pages_done + totals.pages_dead);
            let msg = format!(
                "abandoned: {lost} of {} page(s) were neither imported nor dead-lettered by the import deadline; no record was marked missing",
                run.pages_fetched
            );
            tracing::warn!(run_id = %run.run_id, lost, "run abandoned");
            let counts = totals.counts;
            return Ok(
                match self.end(&run, "failed", &totals, counts, Some(msg)).await? {
                    Some(r) if r.status != "running" => Settled::Ended(r),
                    Some(r) => Settled::Open(r),
                    None => Settled::Open(run),
                },
            );
        }
        Ok(Settled::Open(run))
    }

    /// Whether the connection's lease item names `run_id`.
    async fn lease_names(&self, lease_pk: &str, run_id: &str) -> Result<bool, AwsError> {
        let Some(item) = self.store.get(lease_pk, "#").await? else {
            return Ok(false);
        };
        let lease: Lease = from_item(item)?;
        Ok(lease.run_id == run_id)
    }

    /// The newer run of `run`'s connection that has started since, if any: the one the
    /// connection's lease names (it may be between its lease and its run item), or else the first
    /// run item of the connection started after it (a newer run that has ended has released the
    /// lease, so the lease alone would miss it).
    pub async fn newer_run(&self, run: &RunItem) -> Result<Option<String>, AwsError> {
        if let Some(holder) = self.lease_holder(run).await? {
            return Ok(Some(holder));
        }
        // Run ids sort by start, so the runs started since are the ones after it.
        let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .store
                .ddb
                .query()
                .table_name(&self.store.table)
                .key_condition_expression("pk = :pk AND sk > :sk")
                .filter_expression("#conn = :c")
                .expression_attribute_names("#conn", "connection")
                .expression_attribute_values(":pk", s("RUN"))
                .expression_attribute_values(":sk", s(&run.run_id))
                .expression_attribute_values(":c", s(&run.connection))
                .projection_expression("sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| dyn_err("Query", e))?;
            if let Some(sk) = out
                .items
                .unwrap_or_default()
                .first()
                .and_then(|i| i.get("sk"))
                .and_then(|v| v.as_s().ok())
            {
                return Ok(Some(sk.clone()));
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(None),
            }
        }
    }

    /// Mark the connection's records not seen in this run as missing, guarded: a record is marked
    /// only once it has been absent from `config:missing_after` consecutive complete runs, and not
    /// at all when the circuit breaker holds the run (its record count fell too far against the
    /// connection's baseline). Returns what the sweep came to; `marked` counts the records this
    /// run left reported by no connection at all (counted by the `mr` field, so a repeated sweep
    /// counts the same).
    async fn sweep_missing(&self, run: &RunItem, totals: &PageTotals) -> Result<Sweep, AwsError> {
        let skipped = |m: String| Sweep {
            marked: 0,
            message: Some(m),
            held: false,
            stale_packs: None,
        };
        if totals.pages_dead > 0 {
            return Ok(skipped(format!(
                "{} page(s) dead-lettered: no record was marked missing",
                totals.pages_dead
            )));
        }
        if let Some(total) = run.vendor_total {
            if total != run.records_fetched {
                return Ok(skipped(format!(
                    "the vendor reported {total} records but {} were fetched: no record was marked missing",
                    run.records_fetched
                )));
            }
        }
        let (cfg, allow_drop) = guard_config_of(run);
        let state = self
            .guard_state(&run.connection, &run.object_type)
            .await?
            .unwrap_or_default();
        let before = state.before(&run.run_id);
        let packs = self
            .store
            .packs_known(&run.connection, &run.object_type, own_pages(run))
            .await?;
        let grace = self.grace(&run.connection, &run.object_type).await?;
        let candidates = incremental_candidates(run, totals, &packs, grace.as_ref(), &before);
        // The membership may reflect a newer run: sweeping with it would mark what that run
        // created as missing from this one. An incremental sweep reads only keys of this run's
        // packs and of the previous complete run's, which no newer run has rewritten (else a
        // pack would name it), so the lease (a newer run in progress) is all it must look at.
        let newer = if candidates.is_some() {
            self.lease_holder(run).await?
        } else {
            self.newer_run(run).await?
        };
        if let Some(newer) = newer {
            return Ok(skipped(format!(
                "a newer run ({newer}) of this connection has started: no record was marked missing"
            )));
        }
        let breaker = guard::breaker(&cfg, before.baseline, run.records_fetched, allow_drop);
        let seen: HashSet<String> = packs
            .iter()
            .filter(|(_, p)| p.run == run.run_id)
            .flat_map(|(_, p)| p.entries.keys().cloned())
            .collect();
        let prefix = format!("{}#", run.object_type);
        let members: Vec<Member> = match &candidates {
            Some(keys) => {
                // Unseen candidates, and seen ones still counting an absence (to reset it).
                let grace_keys: HashSet<&String> = grace
                    .as_ref()
                    .and_then(|g| g.keys.as_ref())
                    .map(|k| k.iter().collect())
                    .unwrap_or_default();
                let want: Vec<(String, String)> = keys
                    .iter()
                    .filter(|k| !seen.contains(*k) || grace_keys.contains(k))
                    .map(|k| (format!("M#{}", run.connection), format!("{prefix}{k}")))
                    .collect();
                let mut found: Vec<Member> = self
                    .store
                    .batch_get(&want)
                    .await?
                    .into_values()
                    .map(from_item)
                    .collect::<Result<_, _>>()?;
                found.sort_by(|a, b| a.key.cmp(&b.key));
                found
            }
            None => self
                .store
                .query(&format!("M#{}", run.connection), Some(&prefix), false, None)
                .await?
                .into_iter()
                .map(from_item)
                .collect::<Result<_, _>>()?,
        };
        tracing::info!(
            incremental = candidates.is_some(),
            members_read = members.len(),
            "missing sweep"
        );
        let today = Utc::now().format("%Y-%m-%d").to_string();
        let mut marked = 0u64;
        let mut absent_keys = Vec::new();
        for m in members {
            if seen.contains(&m.key) {
                if m.ab > 0 && m.missing.is_none() {
                    // Seen again within its grace: its count starts over (one write, once).
                    self.note_absence(run, &m.key, None).await?;
                }
                continue;
            }
            if m.missing.is_some() {
                if m.mr.as_deref() == Some(run.run_id.as_str()) {
                    absent_keys.push(m.key.clone());
                    if self.missing_everywhere(&run.object_type, &m.key).await? {
                        marked += 1;
                    }
                }
                continue;
            }
            absent_keys.push(m.key.clone());
            let absence = Absence {
                count: m.ab,
                run: m.ar.clone(),
            };
            let absent = guard::next_absence(&absence, &run.run_id, before.run.as_deref());
            if m.ar.as_deref() != Some(run.run_id.as_str()) {
                // Last seen: by the complete run before the absence began.
                let ls = if absent == 1 {
                    before.at.clone()
                } else {
                    m.ls.clone()
                };
                self.note_absence(run, &m.key, Some((absent, ls))).await?;
            }
            if guard::verdict(&cfg, absent, &breaker) == Verdict::Mark
                && self.mark_missing(run, &m.key, &today).await? == Some(true)
            {
                marked += 1;
            }
        }
        let full_at = match (&candidates, &grace) {
            (Some(_), Some(g)) => g.full_at.clone(),
            _ => Some(now()),
        };
        self.put_grace(run, absent_keys, full_at).await?;
        self.put_guard_state(run, &state, &before, breaker.sets_baseline())
            .await?;
        Ok(Sweep {
            marked,
            message: breaker.message(),
            held: !breaker.may_mark(),
            stale_packs: Some(older_packs(packs, &run.run_id)),
        })
    }

    /// The keys a connection's last sweep left absent (see [`Grace`]).
    pub async fn grace(
        &self,
        connection: &str,
        object_type: &str,
    ) -> Result<Option<Grace>, AwsError> {
        let (pk, sk) = grace_key(connection, object_type);
        self.store.get(&pk, &sk).await?.map(from_item).transpose()
    }

    /// Keep the keys this sweep left absent, or say there were too many to keep.
    async fn put_grace(
        &self,
        run: &RunItem,
        mut keys: Vec<String>,
        full_at: Option<String>,
    ) -> Result<(), AwsError> {
        keys.sort();
        keys.dedup();
        let bytes: usize = keys.iter().map(|k| k.len() + 3).sum();
        let grace = Grace {
            run: run.run_id.clone(),
            keys: (bytes <= GRACE_BYTES).then_some(keys),
            full_at,
        };
        self.store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some({
                let (pk, sk) = grace_key(&run.connection, &run.object_type);
                to_item(&pk, &sk, &grace)?
            }))
            .send()
            .await
            .map_err(|e| dyn_err("PutItem", e))?;
        Ok(())
    }

    /// The run other than `run` that holds the connection's lease and started after it.
    async fn lease_holder(&self, run: &RunItem) -> Result<Option<String>, AwsError> {
        let Some(item) = self
            .store
            .get(&format!("L#{}", run.connection), "#")
            .await?
        else {
            return Ok(None);
        };
        let lease: Lease = from_item(item)?;
        Ok(
            (lease.run_id != run.run_id && lease.started_at >= run.started_at)
                .then_some(lease.run_id),
        )
    }

    /// A connection's guard state (`G#<connection>` / `<Type>`).
    pub async fn guard_state(
        &self,
        connection: &str,
        object_type: &str,
    ) -> Result<Option<GuardState>, AwsError> {
        self.store
            .get(&format!("G#{connection}"), object_type)
            .await?
            .map(from_item)
            .transpose()
    }

    /// Record the end of a complete run in the connection's guard state (one write per run).
    async fn put_guard_state(
        &self,
        run: &RunItem,
        state: &GuardState,
        before: &GuardBefore,
        new_baseline: bool,
    ) -> Result<(), AwsError> {
        let next = GuardState {
            last_run: Some(run.run_id.clone()),
            last_at: Some(run.started_at.clone()),
            baseline: if new_baseline {
                Some(run.records_fetched)
            } else {
                before.baseline
            },
            prev_run: before.run.clone(),
            prev_at: before.at.clone(),
            prev_baseline: before.baseline,
        };
        if &next == state {
            return Ok(());
        }
        self.store
            .ddb
            .put_item()
            .table_name(&self.store.table)
            .set_item(Some(to_item(
                &format!("G#{}", run.connection),
                &run.object_type,
                &next,
            )?))
            .send()
            .await
            .map_err(|e| dyn_err("PutItem", e))?;
        Ok(())
    }

    /// Set (`Some`) or clear (`None`) a membership item's absence count; never on a record
    /// already marked missing (that is the importer's to unmark).
    async fn note_absence(
        &self,
        run: &RunItem,
        key: &str,
        absence: Option<(u32, Option<String>)>,
    ) -> Result<(), AwsError> {
        let mut upd = self
            .store
            .ddb
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(format!("M#{}", run.connection)))
            .key("sk", s(format!("{}#{key}", run.object_type)))
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#mi)")
            .expression_attribute_names("#mi", "missing");
        upd = match absence {
            None => upd.update_expression("REMOVE ab, ar, ls"),
            Some((count, ls)) => {
                let u = upd
                    .expression_attribute_values(":ab", n(count))
                    .expression_attribute_values(":ar", s(&run.run_id));
                match ls {
                    Some(ls) => u
                        .update_expression("SET ab = :ab, ar = :ar, ls = :ls")
                        .expression_attribute_values(":ls", s(ls)),
                    None => u.update_expression("SET ab = :ab, ar = :ar"),
                }
            }
        };
        match upd.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Whether no connection reports the record any more (every source entry is marked missing).
    async fn missing_everywhere(&self, object_type: &str, key: &str) -> Result<bool, AwsError> {
        Ok(self
            .store
            .record(object_type, key)
            .await?
            .is_some_and(|r| r.src.values().all(|s| s.missing.is_some())))
    }

    /// Mark a record missing from the run's connection. `None`: not marked (it is gone, or was
    /// marked already); `Some(everywhere)`: marked, and whether no connection reports it now.
    async fn mark_missing(
        &self,
        run: &RunItem,
        key: &str,
        date: &str,
    ) -> Result<Option<bool>, AwsError> {
        // The record: its source entry for this connection gets the date.
        let mut everywhere = false;
        for _ in 0..5 {
            let Some(mut rec) = self.store.record(&run.object_type, key).await? else {
                return Ok(None);
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
            everywhere = rec.src.values().all(|s| s.missing.is_some());
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
            Ok(_) => Ok(Some(everywhere)),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(dyn_err("UpdateItem", e)),
        }
    }

    /// Put a dead page back in play (for `runs redrive`): marker removed, run running again, with
    /// a fresh import deadline `import_horizon_secs` from now.
    pub async fn reopen_dead_page(
        &self,
        run_id: &str,
        page_id: &str,
        import_horizon_secs: i64,
    ) -> Result<bool, AwsError> {
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
            "SET #st = :running, finished_at = :null, finishing_at = :null, import_deadline = :idl ADD pages_dead :minus"
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
            // The redriven page gets a fresh import deadline, so the run is not ended as abandoned
            // while it is being imported (and is, by its finish check, if the page is lost).
            .expression_attribute_values(":idl", n(Utc::now().timestamp() + import_horizon_secs))
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
    /// Consecutive complete runs of the connection that did not report it (0: it was reported).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ab: u32,
    /// The complete run that last raised `ab`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ar: Option<String>,
    /// When the connection last reported it (start of the last complete run that did), written
    /// when its absence begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ls: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// What a missing sweep came to.
#[derive(Debug, Clone, Default)]
struct Sweep {
    /// Records this run left reported by no connection.
    marked: u64,
    /// Why nothing (or what) was marked, for the run's message.
    message: Option<String>,
    /// The circuit breaker held the run: it ends `succeeded_with_errors`.
    held: bool,
    /// Packs of earlier runs (sort key, run) found by the sweep; `None`: it read none.
    stale_packs: Option<Vec<(String, String)>>,
}

/// A connection's guard state (`G#<connection>` / `<Type>`), written once per complete run: its
/// last complete run (for consecutive absences and "last seen") and the breaker's baseline.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct GuardState {
    /// The last complete run that swept (or that the breaker held).
    #[serde(default)]
    pub last_run: Option<String>,
    /// When that run started: when it saw the records it reported.
    #[serde(default)]
    pub last_at: Option<String>,
    /// Record count of the last complete run the breaker let through (its baseline).
    #[serde(default)]
    pub baseline: Option<u64>,
    /// The three above as they were before `last_run`, so a repeated sweep of that run (after a
    /// crash) reads what its first sweep read.
    #[serde(default)]
    pub prev_run: Option<String>,
    #[serde(default)]
    pub prev_at: Option<String>,
    #[serde(default)]
    pub prev_baseline: Option<u64>,
}

/// The guard state as a run found it before its sweep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuardBefore {
    /// The connection's previous complete run, and when it started.
    pub run: Option<String>,
    pub at: Option<String>,
    /// The breaker's baseline.
    pub baseline: Option<u64>,
}

impl GuardState {
    /// The state as run `run_id` found it (before its own sweep wrote it).
    pub fn before(&self, run_id: &str) -> GuardBefore {
        if self.last_run.as_deref() == Some(run_id) {
            GuardBefore {
                run: self.prev_run.clone(),
                at: self.prev_at.clone(),
                baseline: self.prev_baseline,
            }
        } else {
            GuardBefore {
                run: self.last_run.clone(),
                at: self.last_at.clone(),
                baseline: self.baseline,
            }
        }
    }
}

/// A run's guard settings (its mapping's `config:` lines; the defaults if they do not parse,
/// which the fetcher refused at the start anyway) and its one-off breaker override.
pub fn guard_config_of(run: &RunItem) -> (GuardConfig, bool) {
    let Ok(event) = serde_json::from_str::<ConnectionEvent>(&run.event) else {
        return (GuardConfig::default(), false);
    };
    let cfg = crate::fetcher::resolve_mapping(&event)
        .ok()
        .and_then(|m| GuardConfig::from_mapping(&m).ok())
        .unwrap_or_default();
    (cfg, event.allow_drop)
}

/// The keys an incremental sweep must look at, or `None` when only the whole membership will
/// do. Incremental needs this run's pages to have replaced only packs of the previous complete
/// run (each saying what it dropped), every other pack to be that run's, and that run's sweep
/// to have kept its absent keys; and a full sweep within a day. The candidates are then what the
/// pages dropped, the keys of packs no page of this run replaced, and the keys absent before.
pub fn incremental_candidates(
    run: &RunItem,
    totals: &PageTotals,
    packs: &[(String, crate::pages::Pack)],
    grace: Option<&Grace>,
    before: &GuardBefore,
) -> Option<BTreeSet<String>> {
    let prev = before.run.as_deref()?;
    let grace = grace?;
    let grace_keys = grace.keys.as_ref()?;
    if grace.run != prev && grace.run != run.run_id {
        return None;
    }
    let fresh = grace
        .full_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| {
            Utc::now().signed_duration_since(t) < chrono::Duration::hours(FULL_SWEEP_EVERY_HOURS)
        });
    if !fresh || totals.undiffed > 0 || totals.replaced.iter().any(|r| r != prev) {
        return None;
    }
    let mut keys: BTreeSet<String> = totals.dropped.clone();
    for (_, p) in packs {
        if p.run == prev {
            keys.extend(p.entries.keys().cloned());
        } else if p.run != run.run_id {
            return None;
        }
    }
    keys.extend(grace_keys.iter().cloned());
    Some(keys)
}

/// Make a connection's next sweep read its whole membership (after something changed the
/// membership outside a run's pages, such as a revert).
pub async fn forget_grace(
    store: &Store,
    connection: &str,
    object_type: &str,
) -> Result<(), AwsError> {
    let (pk, sk) = grace_key(connection, object_type);
    store.delete(&pk, &sk, None).await.map(|_| ())
}

/// Where a connection's grace item lives: beside its guard state.
fn grace_key(connection: &str, object_type: &str) -> (String, String) {
    (format!("G#{connection}"), format!("{object_type}#grace"))
}

/// The page ids a run sent (its packs are among them).
fn own_pages(run: &RunItem) -> crate::store::PageRange {
    crate::store::PageRange {
        pages: run.next_page,
        chunks: run.max_chunks.unwrap_or(1),
    }
}

/// The packs of runs before `run_id` (sort key, run): pages that run no longer has.
fn older_packs(packs: Vec<(String, crate::pages::Pack)>, run_id: &str) -> Vec<(String, String)> {
    packs
        .into_iter()
        .filter(|(_, p)| p.run.as_str() < run_id)
        .map(|(sk, p)| (sk, p.run))
        .collect()
}

/// The membership item for a record.
pub fn member_item(connection: &str, object_type: &str, key: &str) -> Result<Item, AwsError> {
    to_item(
        &format!("M#{connection}"),
        &format!("{object_type}#{key}"),
        &Member {
            key: key.to_string(),
            ..Default::default()
        },
    )
}

/// Errors of a run, gathered for the summary.
pub fn collect_errors(markers: &[(String, PageMarker)]) -> Vec<RecordError> {
    markers.iter().flat_map(|(_, m)| m.errors.clone()).collect()
}

/// Seconds after its start at which a run still `running` is called stuck in `runs list`.
pub const STUCK_AFTER_SECONDS: i64 = 6 * 3600;

/// How a run looks to an operator, beyond its status: `stuck` (running, but its fetcher died more
/// than two minutes ago without being resumed, or it started hours ago), `abandoned` (its pages
/// were lost: ended as such, or past its import deadline and about to be).
pub fn health(run: &RunItem, now_s: i64) -> Option<&'static str> {
    match run.status.as_str() {
        "failed"
            if run
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("abandoned")) =>
        {
            Some("abandoned")
        }
        "running" => {
            let started = chrono::DateTime::parse_from_rfc3339(&run.started_at)
                .map(|d| d.timestamp())
                .unwrap_or(now_s);
            if run.fetch_complete && run.import_deadline.is_some_and(|d| d < now_s) {
                Some("abandoned")
            } else if now_s - started > STUCK_AFTER_SECONDS
                || (!run.fetch_complete && run.owner_until + 120 < now_s)
            {
                Some("stuck")
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: serde_json::Value) -> RunItem {
        let mut base = serde_json::json!({
            "run_id": "r1", "connection": "c", "source": "jamf", "object_type": "Hardware",
            "mode": "create-update", "status": "running", "started_at": now(), "event": "{}"
        });
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).expect("run")
    }

    fn pack(run: &str, keys: &[&str]) -> crate::pages::Pack {
        crate::pages::Pack {
            run: run.into(),
            attrs: vec![],
            entries: keys
                .iter()
                .map(|k| (k.to_string(), Default::default()))
                .collect(),
        }
    }

    fn keys(k: &[&str]) -> BTreeSet<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    /// Run `this` after the complete run `prev`, whose sweep kept an empty grace today and whose
    /// packs this run's pages replaced.
    fn basis(prev: &str, this: &str) -> (RunItem, GuardBefore, Grace, PageTotals) {
        let before = GuardBefore {
            run: Some(prev.into()),
            ..Default::default()
        };
        let grace = Grace {
            run: prev.into(),
            keys: Some(vec![]),
            full_at: Some(now()),
        };
        let totals = PageTotals {
            replaced: keys(&[prev]),
            ..Default::default()
        };
        (
            run(serde_json::json!({ "run_id": this })),
            before,
            grace,
            totals,
        )
    }

    #[test]
    fn an_incremental_sweep_looks_at_dropped_unreplaced_and_absent_keys_only() {
        let (r, before, mut grace, mut totals) = basis("r1", "r2");
        grace.keys = Some(vec!["g".into()]);
        totals.dropped = keys(&["d"]);
        // Page 0 is this run's; page 1 (the previous run's) was not fetched again.
        let packs = vec![
            ("0".to_string(), pack("r2", &["a", "b"])),
            ("1".to_string(), pack("r1", &["c"])),
        ];
        let c = incremental_candidates(&r, &totals, &packs, Some(&grace), &before);
        assert_eq!(c, Some(keys(&["c", "d", "g"])));
        // A repeated sweep of r2 reads the grace its first sweep wrote.
        let again = Grace {
            run: "r2".into(),
            ..grace.clone()
        };
        assert!(incremental_candidates(&r, &totals, &packs, Some(&again), &before).is_some());
    }

    #[test]
    fn anything_doubtful_makes_the_sweep_read_the_whole_membership() {
        let (r, before, grace, totals) = basis("r2", "r3");
        let packs = vec![("0".to_string(), pack("r3", &["a"]))];
        let ok =
            |t: &PageTotals,
             p: &[(String, crate::pages::Pack)],
             g: Option<&Grace>,
             b: &GuardBefore| { incremental_candidates(&r, t, p, g, b).is_some() };
        assert!(ok(&totals, &packs, Some(&grace), &before));
        // No previous complete run, no grace, or too many absent keys to keep.
        assert!(!ok(&totals, &packs, Some(&grace), &GuardBefore::default()));
        assert!(!ok(&totals, &packs, None, &before));
        let overflow = Grace {
            keys: None,
            ..grace.clone()
        };
        assert!(!ok(&totals, &packs, Some(&overflow), &before));
        // A grace from another run (a sweep in between that failed to write it).
        let foreign = Grace {
            run: "r1".into(),
            ..grace.clone()
        };
        assert!(!ok(&totals, &packs, Some(&foreign), &before));
        // No full sweep for a day.
        let stale = Grace {
            full_at: Some((Utc::now() - chrono::Duration::hours(25)).to_rfc3339()),
            ..grace.clone()
        };
        assert!(!ok(&totals, &packs, Some(&stale), &before));
        // A page that could not say what it dropped (a redelivery), or one that replaced the pack
        // of a run that never swept (a failed run in between).
        let undiffed = PageTotals {
            undiffed: 1,
            ..totals.clone()
        };
        assert!(!ok(&undiffed, &packs, Some(&grace), &before));
        let failed_between = PageTotals {
            replaced: keys(&["r2", "r2b"]),
            ..totals.clone()
        };
        assert!(!ok(&failed_between, &packs, Some(&grace), &before));
        // A pack left by an older or a newer run.
        let mut odd = packs.clone();
        odd.push(("1".to_string(), pack("r1", &["x"])));
        assert!(!ok(&totals, &odd, Some(&grace), &before));
        let mut newer = packs.clone();
        newer.push(("1".to_string(), pack("r4", &["x"])));
        assert!(!ok(&totals, &newer, Some(&grace), &before));
    }

    #[test]
    fn page_totals_gather_what_done_pages_dropped() {
        let m = |status: &str, diff: Option<PageDiff>| PageMarker {
            status: status.into(),
            diff,
            ..Default::default()
        };
        let t = PageTotals::of(&[
            (
                "0".into(),
                m(
                    "done",
                    Some(PageDiff {
                        replaced: Some("r1".into()),
                        dropped: vec!["a".into()],
                    }),
                ),
            ),
            (
                "1".into(),
                m(
                    "done",
                    Some(PageDiff {
                        replaced: None,
                        dropped: vec![],
                    }),
                ),
            ),
            ("2".into(), m("done", None)),
            ("3".into(), m("planned", None)),
        ]);
        assert_eq!(t.dropped, keys(&["a"]));
        assert_eq!(t.replaced, keys(&["r1"]));
        assert_eq!(t.undiffed, 1);
        assert_eq!(t.pages_done, 3);
    }

    #[test]
    fn runs_list_marks_stuck_and_abandoned_runs() {
        let now_s = Utc::now().timestamp();
        let live = run(serde_json::json!({"owner_until": now_s + 30}));
        assert_eq!(health(&live, now_s), None);
        let dead_fetcher = run(serde_json::json!({"owner_until": now_s - 600}));
        assert_eq!(health(&dead_fetcher, now_s), Some("stuck"));
        let old = run(
            serde_json::json!({"started_at": "2020-01-01T00:00:00Z", "owner_until": now_s + 30}),
        );
        assert_eq!(health(&old, now_s), Some("stuck"));
        let lost = run(serde_json::json!({"fetch_complete": true, "import_deadline": now_s - 1}));
        assert_eq!(health(&lost, now_s), Some("abandoned"));
        let importing =
            run(serde_json::json!({"fetch_complete": true, "import_deadline": now_s + 100}));
        assert_eq!(health(&importing, now_s), None);
        let ended = run(
            serde_json::json!({"status": "failed", "message": "abandoned: 2 of 5 page(s) ..."}),
        );
        assert_eq!(health(&ended, now_s), Some("abandoned"));
    }

    #[test]
    fn the_lease_expiry_is_not_the_tables_ttl_attribute() {
        let item = to_item(
            "L#c",
            "#",
            &Lease {
                run_id: "r".into(),
                started_at: now(),
            },
        )
        .expect("item");
        assert!(!item.contains_key("expires_at"));
        let r = serde_dynamo::to_item::<_, Item>(run(serde_json::json!({"owner_until": 5})))
            .expect("run item");
        assert!(!r.contains_key("expires_at"));
        assert!(r.contains_key("owner_until"));
    }
}
