//! The register's console: what `assetsync assets ...` and `assetsync runs redrive` do, without
//! the command line around it (the CLI is a thin shell over these functions).
//!
//! - [`hand_edit`]: a person's edit of a record. Each attribute set is owned by `hand`
//!   ([`register::HAND`]) from then on, and no run overwrites it. `ATTR=` (an empty value)
//!   *releases* the attribute: its hand ownership is removed and its current value kept, so the
//!   next run of a source that maps it may write it again. Every edit bumps the record's version
//!   under an optimistic condition (a concurrent run's write is never lost: the edit is retried on
//!   the newer record) and is written in the same transaction as its history entry.
//! - [`scan_records`], [`get_record`], [`history`]: read the register.
//! - [`redrive`]: put a run's dead-lettered pages back on the records queue.
//! - Pure helpers for the CLI: [`parse_assignment`], [`RecordView`], [`format_record`], [`table`].

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use aws_sdk_sqs::error::DisplayErrorContext;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::AwsError;
use crate::event::{ConnectionEvent, Continuation, ObjectType, PageMessage};
use crate::importer::HistoryEntry;
use crate::normalize;
use crate::register::{attr, Change, Provenance, StoredRecord, HAND};
use crate::runs::{RunItem, Runs};
use crate::settings::Settings;
use crate::store::{dyn_err, from_item, n, record_pk, s, to_item, PersonRef, Store};

/// The connection name hand edits are recorded under, and the run/page parts of their history key.
pub const HAND_RUN: &str = "hand";
const HAND_PAGE: &str = "cli";
/// Tries of an edit that keeps losing the optimistic race to concurrent writers.
const EDIT_TRIES: usize = 8;

/// What the console can fail with.
#[derive(Debug, Error)]
pub enum ConsoleError {
    /// The record to edit or show does not exist.
    #[error("no {object_type} record with key {key:?} in the register (keys are matched exactly after normalisation; `assetsync assets list {object_type}` shows them)")]
    NotFound {
        object_type: ObjectType,
        key: String,
    },
    /// A command argument is malformed.
    #[error("{0}")]
    Argument(String),
    /// The run named does not exist.
    #[error("no run {0} in the register (`assetsync runs list` shows the recent ones)")]
    NoRun(String),
    /// The record kept changing under concurrent writers.
    #[error("{object_type} {key} kept changing under concurrent writers; gave up after {EDIT_TRIES} tries, nothing was written")]
    Contended {
        object_type: ObjectType,
        key: String,
    },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

fn sqs_err(op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> AwsError {
    AwsError::Sqs {
        op,
        detail: DisplayErrorContext(e).to_string(),
    }
}

/// Parse one `ATTR=VALUE` argument. The attribute name is trimmed and must not be empty; the value
/// is trimmed, and an empty value means "release the attribute to the sources".
pub fn parse_assignment(arg: &str) -> Result<(String, String), ConsoleError> {
    let Some((a, v)) = arg.split_once('=') else {
        return Err(ConsoleError::Argument(format!(
            "expected ATTR=VALUE (quote names with spaces: \"Location=Room 4\"), got {arg:?}"
        )));
    };
    let a = a.trim();
    if a.is_empty() {
        return Err(ConsoleError::Argument(format!(
            "attribute name is empty in {arg:?}; expected ATTR=VALUE"
        )));
    }
    if a.chars().any(char::is_control) {
        return Err(ConsoleError::Argument(format!(
            "attribute name {a:?} contains control characters"
        )));
    }
    Ok((a.to_string(), v.trim().to_string()))
}

/// Parse many `ATTR=VALUE` arguments; the same attribute twice is an error.
pub fn parse_assignments<S: AsRef<str>>(args: &[S]) -> Result<Vec<(String, String)>, ConsoleError> {
    if args.is_empty() {
        return Err(ConsoleError::Argument(
            "nothing to set: give at least one ATTR=VALUE".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let (a, v) = parse_assignment(arg.as_ref())?;
        if !seen.insert(a.clone()) {
            return Err(ConsoleError::Argument(format!(
                "attribute {a:?} is given twice"
            )));
        }
        out.push((a, v));
    }
    Ok(out)
}

/// The stored key for a user-typed one (hardware serials upper-cased, emails lower-cased).
pub fn normalise_key(object_type: ObjectType, key: &str) -> String {
    normalize::key(object_type, key).unwrap_or_else(|| key.trim().to_string())
}

/// Read one record by a user-typed key (tried as typed, then normalised).
pub async fn get_record(
    store: &Store,
    object_type: ObjectType,
    key: &str,
) -> Result<Option<StoredRecord>, ConsoleError> {
    if let Some(r) = store.record(object_type.as_str(), key).await? {
        return Ok(Some(r));
    }
    let norm = normalise_key(object_type, key);
    if norm != key {
        return Ok(store.record(object_type.as_str(), &norm).await?);
    }
    Ok(None)
}

/// Read one record as the register shows it (volatile values such as check-in times from the
/// connections' page packs; see [`Store::live_record`]), by a user-typed key.
pub async fn get_live_record(
    store: &Store,
    object_type: ObjectType,
    key: &str,
) -> Result<Option<StoredRecord>, ConsoleError> {
    if let Some(r) = store.live_record(object_type.as_str(), key).await? {
        return Ok(Some(r));
    }
    let norm = normalise_key(object_type, key);
    if norm != key {
        return Ok(store.live_record(object_type.as_str(), &norm).await?);
    }
    Ok(None)
}

/// Where [`scan_records`] stopped: the key of the last record it gave, which `after` accepts to
/// go on from there; `None` when the table had no more records of the type.
pub type Next = Option<String>;

/// Stream records of a type in the table's scan order (stable between calls), one DynamoDB page
/// at a time, to `each`: all of them, or at most `limit`. `after` resumes after the record with
/// that key (a [`Next`] from an earlier call). A filtered Scan: fine for a console, never used by runs.
pub async fn scan_records<F>(
    store: &Store,
    object_type: ObjectType,
    limit: Option<usize>,
    after: Option<&str>,
    mut each: F,
) -> Result<Next, ConsoleError>
where
    F: FnMut(StoredRecord) -> Result<(), ConsoleError>,
{
    let prefix = format!("R#{}#", object_type.as_str());
    let mut start = after.map(|k| {
        std::collections::HashMap::from([
            ("pk".to_string(), s(format!("{prefix}{k}"))),
            ("sk".to_string(), s("#")),
        ])
    });
    let mut given = 0usize;
    loop {
        let page = store
            .ddb
            .scan()
            .table_name(&store.table)
            .filter_expression("begins_with(pk, :p) AND sk = :s")
            .expression_attribute_values(":p", s(&prefix))
            .expression_attribute_values(":s", s("#"))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| dyn_err("Scan", e))?;
        let items = page.items.unwrap_or_default();
        let more_pages = page.last_evaluated_key.is_some();
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let rec = from_item::<StoredRecord>(item)?;
            let key = rec.key.clone();
            each(rec)?;
            given += 1;
            if limit.is_some_and(|l| given >= l) {
                // Stopped by the limit: say where, unless this was the very last record.
                let rest = i + 1 < n || more_pages;
                return Ok(rest.then_some(key));
            }
        }
        match page.last_evaluated_key {
            Some(k) => start = Some(k),
            None => return Ok(None),
        }
    }
}

/// Every history entry of a record, oldest first.
pub async fn history(
    store: &Store,
    object_type: ObjectType,
    key: &str,
) -> Result<Vec<HistoryEntry>, ConsoleError> {
    let items = store
        .query(
            &record_pk(object_type.as_str(), key),
            Some("H#"),
            false,
            None,
        )
        .await?;
    items
        .into_iter()
        .map(|i| HistoryEntry::from_item(i).map_err(ConsoleError::from))
        .collect()
}

/// What a hand edit did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditOutcome {
    /// The record as written (or as found, when nothing changed).
    pub record: StoredRecord,
    /// The history entry written; `None` when the edit changed nothing.
    pub entry: Option<HistoryEntry>,
}

/// Apply edits to a record in memory. Returns the changes (a release is a change whose old and
/// new value are the same). Pure, so the rules are testable without DynamoDB.
pub fn apply_edits(
    rec: &mut StoredRecord,
    edits: &[(String, String)],
    prov: &Provenance,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (a, v) in edits {
        if v.is_empty() {
            // Release: hand ownership goes, the value stays until a source writes it.
            if rec.p.get(a).is_some_and(|p| p.c == HAND) {
                rec.p.remove(a);
                let cur = rec.a.get(a).cloned().unwrap_or_default();
                changes.push(Change {
                    attr: a.clone(),
                    old: Some(cur.clone()),
                    new: cur,
                });
            }
            continue;
        }
        let old = rec.a.get(a).cloned();
        let already_hand = rec.p.get(a).is_some_and(|p| p.c == HAND);
        if old.as_deref() == Some(v.as_str()) && already_hand {
            continue;
        }
        rec.a.insert(a.clone(), v.clone());
        rec.p.insert(a.clone(), prov.clone());
        changes.push(Change {
            attr: a.clone(),
            old,
            new: v.clone(),
        });
    }
    changes
}

/// A person's edit of an existing record: set attributes (owned by `hand` from then on) or release
/// them (`ATTR=` with an empty value: hand ownership removed, value kept). Refuses a record that does
/// not exist. The record (version-checked) and its history entry are written in one transaction;
/// on a lost race with a run the edit is re-applied to the newer record.
pub async fn hand_edit(
    store: &Store,
    object_type: ObjectType,
    key: &str,
    edits: &[(String, String)],
) -> Result<EditOutcome, ConsoleError> {
    if edits.is_empty() {
        return Err(ConsoleError::Argument(
            "nothing to set: give at least one ATTR=VALUE".into(),
        ));
    }
    for _ in 0..EDIT_TRIES {
        let Some(current) = get_record(store, object_type, key).await? else {
            return Err(ConsoleError::NotFound {
                object_type,
                key: key.to_string(),
            });
        };
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let prov = Provenance {
            c: HAND.into(),
            s: String::new(),
            t: at.clone(),
            r: String::new(),
        };
        let mut rec = current.clone();
        let changes = apply_edits(&mut rec, edits, &prov);
        if changes.is_empty() {
            return Ok(EditOutcome {
                record: current,
                entry: None,
            });
        }
        let action = if changes
            .iter()
            .all(|c| c.old.as_deref() == Some(c.new.as_str()) && !rec.p.contains_key(&c.attr))
        {
            "release"
        } else {
            "set"
        };
        let entry = HistoryEntry {
            at: at.clone(),
            connection: HAND.into(),
            run_id: HAND_RUN.into(),
            action: action.into(),
            changes,
        };
        let expected = current.ver;
        rec.ver += 1;
        if write_edit(store, &rec, expected, &entry).await? {
            if object_type == ObjectType::Person {
                reindex_person(store, &current, &rec).await?;
            }
            return Ok(EditOutcome {
                record: rec,
                entry: Some(entry),
            });
        }
    }
    Err(ConsoleError::Contended {
        object_type,
        key: key.to_string(),
    })
}

/// The history item of a hand edit: same layout as the importer's (`H#<time>#<run>#<page>#<action>`).
pub fn hand_history_item(
    object_type: &str,
    key: &str,
    entry: &HistoryEntry,
) -> Result<crate::store::Item, AwsError> {
    entry.to_item(
        &record_pk(object_type, key),
        &format!("H#{}#{HAND_RUN}#{HAND_PAGE}#{}", entry.at, entry.action),
    )
}

async fn write_edit(
    store: &Store,
    rec: &StoredRecord,
    expected_ver: i64,
    entry: &HistoryEntry,
) -> Result<bool, AwsError> {
    let put_rec = Put::builder()
        .table_name(&store.table)
        .set_item(Some(to_item(
            &record_pk(&rec.object_type, &rec.key),
            "#",
            rec,
        )?))
        .condition_expression("ver = :v")
        .expression_attribute_values(":v", n(expected_ver))
        .build()
        .map_err(|e| AwsError::Item(e.to_string()))?;
    let put_hist = Put::builder()
        .table_name(&store.table)
        .set_item(Some(hand_history_item(&rec.object_type, &rec.key, entry)?))
        .build()
        .map_err(|e| AwsError::Item(e.to_string()))?;
    store
        .transact(vec![
            TransactWriteItem::builder().put(put_rec).build(),
            TransactWriteItem::builder().put(put_hist).build(),
        ])
        .await
}

/// The email index entry a person record contributes: (email, status, display name).
fn person_ref(rec: &StoredRecord) -> Option<(String, PersonRef)> {
    let email = rec.a.get(attr::EMAIL).and_then(|e| normalize::email(e))?;
    let status = rec
        .a
        .get(attr::STATUS)
        .cloned()
        .unwrap_or_else(|| "active".into())
        .to_lowercase();
    let name = rec.a.get(attr::DISPLAY_NAME).cloned().or_else(|| {
        rec.a.get(attr::FIRST_NAME).map(|f| {
            format!(
                "{f} {}",
                rec.a.get(attr::LAST_NAME).cloned().unwrap_or_default()
            )
            .trim()
            .to_string()
        })
    });
    Some((email, PersonRef { status, name }))
}

/// Keep the email index (devices are assigned through it) in step with a hand-edited person.
pub(crate) async fn reindex_person(
    store: &Store,
    old: &StoredRecord,
    new: &StoredRecord,
) -> Result<(), AwsError> {
    let before = person_ref(old);
    let after = person_ref(new);
    if before == after {
        return Ok(());
    }
    // By attribute path, like the importer: other people and waiting devices of the same
    // email, written concurrently, keep theirs.
    if let Some((e, _)) = &before {
        if after.as_ref().map(|(a, _)| a) != Some(e) {
            let change = crate::store::EmailChange {
                remove_persons: vec![new.key.clone()],
                ..Default::default()
            };
            store.update_email(e, change, false).await?;
        }
    }
    if let Some((e, p)) = after {
        let change = crate::store::EmailChange {
            set_persons: vec![(new.key.clone(), p)],
            ..Default::default()
        };
        store.update_email(&e, change, false).await?;
    }
    Ok(())
}

/// What [`redrive`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RedriveReport {
    pub run_id: String,
    /// Messages of the run sent back to the records queue (and deleted from the DLQ).
    pub requeued: u64,
    /// Of those, pages whose dead marker was reopened (their run counts them again when imported).
    pub reopened: u64,
    /// Messages of the run whose page was imported meanwhile: deleted from the DLQ, not requeued.
    pub already_imported: u64,
    /// Messages of other runs, left in the DLQ.
    pub other_runs: u64,
    /// Messages that are not pages at all, left in the DLQ.
    pub unreadable: u64,
    /// The run's status after the redrive.
    pub status: String,
    /// A newer run of the connection that has started since: the redrive was not applied (the
    /// old run's pages would be imported over what the newer run wrote), DLQ left as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The run's finish check was armed on the fetch queue (before any page was put back), so
    /// the redriven run ends by itself once its pages are in, or by its import deadline.
    #[serde(default)]
    pub finish_check: bool,
    /// What the redrive did, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Put a run's dead-lettered pages back on the records queue: every DLQ message that is a page of
/// `run_id` has its dead marker reopened (the run is `running` again and will count the page when it
/// is imported), is sent to the records queue and deleted from the DLQ. Before the first page is
/// put back, the run's finish check is armed on the fetch queue, so the run ends by itself. Other
/// messages are left in the DLQ, visible again when this returns. A run superseded by a newer run
/// of its connection is not redriven.
pub async fn redrive(
    runs: &Runs,
    sqs: &aws_sdk_sqs::Client,
    settings: &Settings,
    run_id: &str,
) -> Result<RedriveReport, ConsoleError> {
    let dlq_url = settings.dlq_url.as_deref().ok_or_else(|| {
        ConsoleError::Argument("the stack names no dead-letter queue (DLQ_URL)".into())
    })?;
    let Some(run) = runs.get(run_id).await? else {
        return Err(ConsoleError::NoRun(run_id.to_string()));
    };
    let mut report = RedriveReport {
        run_id: run_id.to_string(),
        ..Default::default()
    };
    // Only where still meaningful: a newer run of the connection has its own, fresher values.
    if let Some(newer) = runs.newer_run(&run).await? {
        report.status = run.status.clone();
        report.message = Some(format!(
            "not redriven: a newer run ({newer}) of {} has started since; its pages stay in the dead-letter queue",
            run.connection
        ));
        report.superseded_by = Some(newer);
        return Ok(report);
    }
    let check = FinishCheck {
        sqs,
        settings,
        run: &run,
    };
    let mut held: Vec<String> = Vec::new();
    let result = redrive_loop(runs, &check, run_id, &mut report, &mut held).await;
    // Whatever happened, other runs' messages become visible again now.
    for handle in &held {
        let _ = sqs
            .change_message_visibility()
            .queue_url(dlq_url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await;
    }
    result?;
    report.status = runs
        .get(run_id)
        .await?
        .map(|r| r.status)
        .unwrap_or_default();
    report.message = Some(if report.requeued > 0 {
        format!(
            "{} page(s) put back on the records queue; the run's finish check is armed: it ends by itself once they are imported",
            report.requeued
        )
    } else if report.already_imported > 0 {
        format!(
            "{} message(s) of pages imported meanwhile removed from the dead-letter queue; nothing put back",
            report.already_imported
        )
    } else {
        format!("no dead-lettered page of {run_id} was in the dead-letter queue; nothing changed")
    });
    Ok(report)
}

/// Where a redrive sends pages and its run's finish check.
struct FinishCheck<'a> {
    sqs: &'a aws_sdk_sqs::Client,
    settings: &'a Settings,
    run: &'a RunItem,
}

impl FinishCheck<'_> {
    /// Arm the run's finish check: a delayed fetch-queue message that ends the run once its
    /// pages are in (or fails it by its import deadline) and re-arms itself until then.
    async fn arm(&self) -> Result<(), ConsoleError> {
        let event: ConnectionEvent = serde_json::from_str(&self.run.event)
            .map_err(|e| AwsError::Item(format!("run {}: stored event: {e}", self.run.run_id)))?;
        let body = serde_json::to_string(&Continuation {
            event,
            run_id: self.run.run_id.clone(),
            check: true,
        })
        .map_err(|e| AwsError::Item(e.to_string()))?;
        self.sqs
            .send_message()
            .queue_url(&self.settings.fetch_queue_url)
            .message_body(body)
            .delay_seconds(self.settings.finish_check_seconds.clamp(0, 900))
            .send()
            .await
            .map_err(|e| sqs_err("SendMessage", e))?;
        Ok(())
    }
}

async fn redrive_loop(
    runs: &Runs,
    check: &FinishCheck<'_>,
    run_id: &str,
    report: &mut RedriveReport,
    held: &mut Vec<String>,
) -> Result<(), ConsoleError> {
    let sqs = check.sqs;
    let dlq_url = check.settings.dlq_url.as_deref().unwrap_or_default();
    let records_queue_url = check.settings.records_queue_url.as_str();
    let horizon = check.settings.import_horizon_seconds;
    let mut seen = HashSet::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .visibility_timeout(60)
            .send()
            .await
            .map_err(|e| sqs_err("ReceiveMessage", e))?;
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            return Ok(());
        }
        let mut second_lap = false;
        for m in msgs {
            let Some(handle) = m.receipt_handle.clone() else {
                continue;
            };
            // A held message visible again (a long redrive outlived its 60 s): every message has
            // been seen once; stop after this batch instead of going round again.
            if !seen.insert(m.message_id.clone().unwrap_or_default()) {
                second_lap = true;
                held.push(handle);
                continue;
            }
            let body = m.body.clone().unwrap_or_default();
            let page: PageMessage = match serde_json::from_str(&body) {
                Ok(p) => p,
                Err(_) => {
                    report.unreadable += 1;
                    held.push(handle);
                    continue;
                }
            };
            if page.run_id != run_id {
                report.other_runs += 1;
                held.push(handle);
                continue;
            }
            let page_id = page.page_id();
            let marker = runs.marker(run_id, &page_id).await?;
            let requeue = marker.as_ref().is_none_or(|m| m.status != "done");
            if requeue && !report.finish_check {
                // Armed before the run is reopened: whatever dies from here on, the check ends it.
                check.arm().await?;
                report.finish_check = true;
            }
            let requeue = match marker {
                Some(m) if m.status == "dead" => {
                    if runs.reopen_dead_page(run_id, &page_id, horizon).await? {
                        report.reopened += 1;
                    }
                    true
                }
                // Imported meanwhile (a duplicate delivery reached the DLQ): nothing to do.
                Some(m) if m.status == "done" => false,
                // Planned but never counted, or no marker at all: importing it completes the page.
                _ => true,
            };
            if requeue {
                sqs.send_message()
                    .queue_url(records_queue_url)
                    .message_body(&body)
                    .send()
                    .await
                    .map_err(|e| sqs_err("SendMessage", e))?;
                report.requeued += 1;
            } else {
                report.already_imported += 1;
            }
            sqs.delete_message()
                .queue_url(dlq_url)
                .receipt_handle(&handle)
                .send()
                .await
                .map_err(|e| sqs_err("DeleteMessage", e))?;
        }
        if second_lap {
            return Ok(());
        }
        // Moto and SQS may hand out fewer than 10 at a time; keep going until empty.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An attribute as shown to people: value, who set it, when, in which run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttributeView {
    pub value: String,
    /// Connection name, `hand`, or empty when unknown.
    pub set_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run: String,
}

/// What a connection last reported for a record, as shown to people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceView {
    pub connection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_in: Option<String>,
    pub run: String,
    /// Date the connection stopped reporting the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<String>,
    /// When the connection last reported the record: the start of its last complete run that
    /// did (filled by [`presence`]; unknown before the connection's first guarded run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Consecutive complete runs of the connection that have not reported it, while it is not
    /// marked missing yet (its grace: `config:missing_after`). Filled by [`presence`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_runs: Option<u32>,
}

/// A record as `assets get --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordView {
    pub object_type: String,
    pub key: String,
    pub version: i64,
    pub created_at: String,
    pub created_by: String,
    pub attributes: BTreeMap<String, AttributeView>,
    pub sources: Vec<SourceView>,
    /// Connections that no longer report the record.
    pub missing_from: Vec<String>,
    /// Connections that still report it (not marked missing from them).
    #[serde(default)]
    pub reported_by: Vec<String>,
    /// Whether the record is missing: every connection that reported it has stopped (a record
    /// another connection still reports is not missing).
    #[serde(default)]
    pub missing: bool,
    /// Set when a revert undid the run that created the record (`runs revert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<crate::register::Reverted>,
}

impl From<&StoredRecord> for RecordView {
    fn from(r: &StoredRecord) -> Self {
        let attributes =
            r.a.iter()
                .map(|(name, value)| {
                    let p = r.p.get(name);
                    let view = AttributeView {
                        value: value.clone(),
                        set_by: p.map(|p| p.c.clone()).unwrap_or_default(),
                        source: p.map(|p| p.s.clone()).unwrap_or_default(),
                        at: p.map(|p| p.t.clone()).unwrap_or_default(),
                        run: p.map(|p| p.r.clone()).unwrap_or_default(),
                    };
                    (name.clone(), view)
                })
                .collect();
        let sources: Vec<SourceView> = r
            .src
            .iter()
            .map(|(c, s)| SourceView {
                connection: c.clone(),
                source_id: s.id.clone(),
                checked_in: s.ci.clone(),
                run: s.run.clone(),
                missing_since: s.missing.clone(),
                last_seen: None,
                absent_runs: None,
            })
            .collect();
        let missing_from: Vec<String> = sources
            .iter()
            .filter(|s| s.missing_since.is_some())
            .map(|s| s.connection.clone())
            .collect();
        let reported_by: Vec<String> = sources
            .iter()
            .filter(|s| s.missing_since.is_none())
            .map(|s| s.connection.clone())
            .collect();
        let missing = !sources.is_empty() && reported_by.is_empty();
        RecordView {
            object_type: r.object_type.clone(),
            key: r.key.clone(),
            version: r.ver,
            created_at: r.created_at.clone(),
            created_by: r.created_by.clone(),
            attributes,
            sources,
            missing_from,
            reported_by,
            missing,
            reverted: r.rv.clone(),
        }
    }
}

/// Fill in when each connection last reported the record and how many complete runs have not
/// since: from its membership items and the connections' guard states (reads only; no run
/// writes anything per unchanged record for this).
pub async fn presence(store: &Store, view: &mut RecordView) -> Result<(), ConsoleError> {
    let mut keys = Vec::new();
    for s in &view.sources {
        keys.push((
            format!("M#{}", s.connection),
            format!("{}#{}", view.object_type, view.key),
        ));
        keys.push((format!("G#{}", s.connection), view.object_type.clone()));
    }
    if keys.is_empty() {
        return Ok(());
    }
    let items = store.batch_get(&keys).await?;
    for s in &mut view.sources {
        let member: Option<crate::runs::Member> = items
            .get(&(
                format!("M#{}", s.connection),
                format!("{}#{}", view.object_type, view.key),
            ))
            .and_then(|i| crate::store::from_item(i.clone()).ok());
        let guard: Option<crate::runs::GuardState> = items
            .get(&(format!("G#{}", s.connection), view.object_type.clone()))
            .and_then(|i| crate::store::from_item(i.clone()).ok());
        let Some(m) = member else { continue };
        let last_run = guard.as_ref().and_then(|g| g.last_run.clone());
        let absent = m.ab > 0 && m.ar.is_some() && m.ar == last_run;
        if m.missing.is_some() || s.missing_since.is_some() || absent {
            s.last_seen = m.ls.clone();
            if absent && m.missing.is_none() && s.missing_since.is_none() {
                s.absent_runs = Some(m.ab);
            }
        } else {
            s.last_seen = guard.and_then(|g| g.last_at);
        }
    }
    Ok(())
}

/// A plain-text table: a header row, a rule, and left-aligned columns (widths in characters).
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.as_ref().chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i].saturating_sub(c.chars().count())));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for row in rows {
        let cells: Vec<&str> = (0..cols)
            .map(|i| row.get(i).map(|c| c.as_ref()).unwrap_or(""))
            .collect();
        out.push_str(&line(cells));
        out.push('\n');
    }
    out
}

/// A record for people: a header, its attributes with who set each and when, its sources.
pub fn format_record(r: &StoredRecord) -> String {
    format_view(&RecordView::from(r))
}

/// A record view for people (with [`presence`] filled in, its sources say when each last saw it).
pub fn format_view(v: &RecordView) -> String {
    let mut out = format!(
        "{} {}  (version {}, created {} by {})\n\n",
        v.object_type,
        v.key,
        v.version,
        or_dash(&v.created_at),
        or_dash(&v.created_by)
    );
    let rows: Vec<Vec<String>> = v
        .attributes
        .iter()
        .map(|(name, a)| {
            vec![
                name.clone(),
                one_line(&a.value),
                or_dash(&a.set_by).to_string(),
                or_dash(&a.at).to_string(),
                or_dash(&a.run).to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["attribute", "value", "set by", "at", "run"],
        &rows,
    ));
    if !v.sources.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = v
            .sources
            .iter()
            .map(|s| {
                vec![
                    s.connection.clone(),
                    s.source_id.clone().unwrap_or_else(|| "-".into()),
                    s.checked_in.clone().unwrap_or_else(|| "-".into()),
                    or_dash(&s.run).to_string(),
                    match (&s.missing_since, s.absent_runs) {
                        (Some(d), _) => format!("missing since {d}"),
                        (None, Some(n)) => format!("not in the last {n} complete run(s)"),
                        (None, None) => "reported".into(),
                    },
                    s.last_seen.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "source connection",
                "source id",
                "checked in",
                "last run",
                "state",
                "last seen",
            ],
            &rows,
        ));
    }
    if v.missing {
        out.push_str(&format!(
            "\nmissing: no connection reports it any more (missing from: {})\n",
            v.missing_from.join(", ")
        ));
    } else if !v.missing_from.is_empty() {
        out.push_str(&format!(
            "\nmissing from: {} (not missing: still reported by {})\n",
            v.missing_from.join(", "),
            v.reported_by.join(", ")
        ));
    }
    if let Some(rv) = &v.reverted {
        out.push_str(&format!(
            "\nreverted: run {} (which created it) was reverted by run {} at {}\n",
            rv.of, rv.run, rv.at
        ));
    }
    out
}

/// History entries for people: one row per attribute change.
pub fn format_history(entries: &[HistoryEntry]) -> String {
    let mut rows = Vec::new();
    for e in entries {
        for c in &e.changes {
            let (old, new) = if e.action == "release" {
                (
                    c.old.clone().unwrap_or_default(),
                    "(released to the sources)".to_string(),
                )
            } else {
                (c.old.clone().unwrap_or_else(|| "-".into()), c.new.clone())
            };
            rows.push(vec![
                e.at.clone(),
                e.action.clone(),
                c.attr.clone(),
                one_line(&old),
                one_line(&new),
                e.connection.clone(),
                e.run_id.clone(),
            ]);
        }
    }
    table(
        &[
            "time",
            "action",
            "attribute",
            "old",
            "new",
            "connection",
            "run",
        ],
        &rows,
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// A value on one line, shortened to 60 characters for tables.
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 60 {
        let mut t: String = flat.chars().take(59).collect();
        t.push('…');
        t
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    fn attr_is(item: &crate::store::Item, name: &str, v: &str) -> bool {
        matches!(item.get(name), Some(AttributeValue::S(x)) if x == v)
    }

    fn prov(c: &str) -> Provenance {
        Provenance {
            c: c.into(),
            s: "jamf".into(),
            t: "2024-06-20T09:00:00Z".into(),
            r: "run-1".into(),
        }
    }

    fn record() -> StoredRecord {
        let mut r = StoredRecord {
            object_type: "Hardware".into(),
            key: "C02XK1ABMD6T".into(),
            ver: 3,
            ..Default::default()
        };
        r.a.insert("OS Version".into(), "14.5".into());
        r.p.insert("OS Version".into(), prov("jamf-prod"));
        r.a.insert("Location".into(), "Room 4".into());
        r.p.insert("Location".into(), prov(HAND));
        r
    }

    #[test]
    fn assignments_parse() {
        assert_eq!(
            parse_assignment("Location=Room 4").unwrap(),
            ("Location".into(), "Room 4".into())
        );
        assert_eq!(
            parse_assignment(" Asset Name = Alice's Mac ").unwrap(),
            ("Asset Name".into(), "Alice's Mac".into())
        );
        assert_eq!(
            parse_assignment("Notes=a=b").unwrap(),
            ("Notes".into(), "a=b".into())
        );
        assert_eq!(
            parse_assignment("Location=").unwrap(),
            ("Location".into(), String::new())
        );
        let e = parse_assignment("Location").unwrap_err().to_string();
        assert!(e.contains("ATTR=VALUE") && e.contains("Location"), "{e}");
        assert!(parse_assignment("=x")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = parse_assignments(&["A=1", "B=2", "A=3"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"A\" is given twice"), "{e}");
        assert!(parse_assignments::<&str>(&[]).is_err());
    }

    #[test]
    fn edits_take_ownership_and_release_keeps_the_value() {
        let mut r = record();
        let p = prov(HAND);
        let ch = apply_edits(
            &mut r,
            &[
                ("OS Version".into(), "14.6-pinned".into()),
                ("Owner Note".into(), "loaner".into()),
            ],
            &p,
        );
        assert_eq!(ch.len(), 2);
        assert_eq!(
            ch[0],
            Change {
                attr: "OS Version".into(),
                old: Some("14.5".into()),
                new: "14.6-pinned".into()
            }
        );
        assert_eq!(r.p["OS Version"].c, HAND);
        assert_eq!(r.a["Owner Note"], "loaner");
        // Setting a hand-owned attribute to its value again changes nothing.
        assert!(apply_edits(&mut r, &[("Owner Note".into(), "loaner".into())], &p).is_empty());
        // Releasing: value kept, ownership gone; releasing a source-owned attribute is a no-op.
        let ch = apply_edits(&mut r, &[("Location".into(), String::new())], &p);
        assert_eq!(
            ch,
            vec![Change {
                attr: "Location".into(),
                old: Some("Room 4".into()),
                new: "Room 4".into()
            }]
        );
        assert_eq!(r.a["Location"], "Room 4");
        assert!(!r.p.contains_key("Location"));
        assert!(apply_edits(&mut r, &[("Location".into(), String::new())], &p).is_empty());
        // Claiming a source's value unchanged is still a change of owner.
        let mut r = record();
        let ch = apply_edits(&mut r, &[("OS Version".into(), "14.5".into())], &p);
        assert_eq!(ch.len(), 1);
        assert_eq!(r.p["OS Version"].c, HAND);
    }

    #[test]
    fn record_view_and_format() {
        let mut r = record();
        r.src.insert(
            "jamf-prod".into(),
            crate::register::SourceRef {
                id: Some("112".into()),
                ci: None,
                run: "run-1".into(),
                missing: Some("2024-07-01".into()),
            },
        );
        let v = RecordView::from(&r);
        assert_eq!(v.attributes["Location"].set_by, HAND);
        assert_eq!(v.missing_from, vec!["jamf-prod".to_string()]);
        let text = format_record(&r);
        assert!(text.contains("Hardware C02XK1ABMD6T"), "{text}");
        assert!(text.contains("Location") && text.contains("hand"), "{text}");
        assert!(text.contains("missing since 2024-07-01"), "{text}");
        assert!(text.contains("missing from: jamf-prod"), "{text}");
    }

    #[test]
    fn tables_align() {
        let t = table(&["a", "long header"], &[vec!["xyz", "1"], vec!["é", "22"]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a    long header");
        assert_eq!(lines[1], "---  -----------");
        assert_eq!(lines[2], "xyz  1");
        assert_eq!(lines[3], "é    22");
        assert_eq!(one_line("a\nb"), "a b");
        assert_eq!(one_line(&"x".repeat(70)).chars().count(), 60);
    }

    #[test]
    fn history_rows() {
        let e = HistoryEntry {
            at: "2024-06-20T09:00:00.000Z".into(),
            connection: HAND.into(),
            run_id: HAND_RUN.into(),
            action: "set".into(),
            changes: vec![Change {
                attr: "Location".into(),
                old: None,
                new: "Room 4".into(),
            }],
        };
        let t = format_history(std::slice::from_ref(&e));
        assert!(
            t.contains("Location") && t.contains("Room 4") && t.contains("hand"),
            "{t}"
        );
        let item = hand_history_item("Hardware", "K1", &e).unwrap();
        assert!(attr_is(&item, "pk", "R#Hardware#K1"));
        assert!(attr_is(
            &item,
            "sk",
            "H#2024-06-20T09:00:00.000Z#hand#cli#set"
        ));
    }

    #[test]
    fn keys_normalise() {
        assert_eq!(normalise_key(ObjectType::Hardware, " c02xk1 "), "C02XK1");
        assert_eq!(
            normalise_key(ObjectType::Person, "Alice@Example.com"),
            "alice@example.com"
        );
        assert_eq!(normalise_key(ObjectType::Person, "5f9e8d"), "5f9e8d");
    }
}
