//! Undo one run (`assetsync runs revert RUN_ID`), from what it left in the register: its history
//! rows (every attribute it changed, with the old value) and the membership items its sweep
//! marked missing (`mr` = its run id).
//!
//! - An attribute the run changed goes back to its old value (or is removed, if it had none) when
//!   its current value is still the one the run wrote and no person owns it; otherwise it is a
//!   conflict, reported and left alone. A value already back to the old one is left as it is.
//! - A device the run marked missing is unmarked (its source entry and its membership item).
//! - A record the run created is not deleted (its asset tag is never reused): it is marked
//!   reverted ([`Reverted`]) and no longer fed by the run's connection (source entry and
//!   membership removed), until a run of that connection reports it again. A created record that
//!   another connection reports since is a conflict.
//! - A revert is a run of the run's connection (it holds the connection's lease, and is in the
//!   audit log with [`RevertCounts`]); it writes history rows like any run, using pseudo
//!   attributes for what is not an attribute (`missing from <connection>`, `reported by
//!   <connection>`, `reverted`), so reverting a revert puts the run's values back.
//! - Restored attributes are owned by the run's connection, and the page packs of the touched
//!   records are invalidated: the next sync of a connection re-applies its source's values where
//!   they still differ.
//!
//! The run's history rows are found by a scan of the table (no index by run): an administrative
//! cost paid once per revert.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::{chain, AwsError, SyncError};
use crate::event::ConnectionEvent;
use crate::importer::HistoryEntry;
use crate::register::{Change, Provenance, Reverted, SourceRef, StoredRecord, HAND};
use crate::runs::{member_item, new_token, now, Member, PageTotals, RunItem, Runs, Start};
use crate::store::{dyn_err, from_item, is_condition_failed, n, record_pk, s, Store};
use crate::summary::{Counts, RecordError, RevertCounts};

/// The pseudo attribute of a record's reverted mark (its value: the mark as JSON).
pub const REVERTED_ATTR: &str = "reverted";
/// Conflicts listed in a revert's summary (all are counted).
const MAX_LISTED: usize = 100;
/// Tries of a record write that keeps losing the version race.
const TRIES: usize = 6;

/// The pseudo attribute of a connection's missing mark (value: the date; the importer's name).
pub fn missing_attr(connection: &str) -> String {
    format!("missing from {connection}")
}

/// The pseudo attribute of a connection's source entry (value: the entry as JSON).
pub fn reported_attr(connection: &str) -> String {
    format!("reported by {connection}")
}

/// What a revert can fail with.
#[derive(Debug, Error)]
pub enum RevertError {
    #[error("no run {0} in the register (`assetsync runs list` shows the recent ones)")]
    NoRun(String),
    #[error("run {0} is still running: revert it once it has ended")]
    Running(String),
    #[error("the connection's run {0} is unfinished (its fetcher died); sync the connection first, then revert")]
    Unfinished(String),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// One change of the run left alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conflict {
    pub attr: String,
    /// What the run wrote (empty: it removed the value).
    pub run_value: String,
    /// The value now.
    pub current: Option<String>,
    pub reason: String,
}

/// What the revert does to one record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordRevert {
    pub object_type: String,
    pub key: String,
    /// The changes it makes: `old` is the value now, `new` the value put back (empty: none).
    pub changes: Vec<Change>,
    pub conflicts: Vec<Conflict>,
}

/// A revert, planned or done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevertReport {
    /// The run reverted.
    pub reverts: String,
    pub connection: String,
    /// The revert run (`None` for `--plan`).
    pub run_id: Option<String>,
    /// Whether anything was written.
    pub planned: bool,
    pub counts: RevertCounts,
    /// Each record it changes or leaves alone (with a conflict).
    pub records: Vec<RecordRevert>,
}

/// What the run did to one record, net: first old value and last new value of each attribute.
#[derive(Debug, Clone, Default)]
struct Net {
    created: bool,
    /// attr -> (old, new); `new` empty: the run removed it.
    changes: BTreeMap<String, (Option<String>, String)>,
}

fn norm(v: Option<&str>) -> Option<&str> {
    v.filter(|x| !x.is_empty())
}

/// The current value of an attribute or pseudo attribute.
fn current(rec: &StoredRecord, attr: &str) -> Option<String> {
    if attr == REVERTED_ATTR {
        return rec.rv.as_ref().and_then(|r| serde_json::to_string(r).ok());
    }
    if let Some(c) = attr.strip_prefix("missing from ") {
        return rec.src.get(c).and_then(|s| s.missing.clone());
    }
    if let Some(c) = attr.strip_prefix("reported by ") {
        return rec.src.get(c).and_then(|s| serde_json::to_string(s).ok());
    }
    rec.a.get(attr).cloned()
}

/// Set an attribute or pseudo attribute (`None`: remove). Returns false when it cannot be set
/// (a missing mark of a connection that no longer reports the record, a malformed value).
fn set(rec: &mut StoredRecord, attr: &str, v: Option<String>, prov: &Provenance) -> bool {
    if attr == REVERTED_ATTR {
        return match v {
            None => {
                rec.rv = None;
                true
            }
            Some(j) => match serde_json::from_str::<Reverted>(&j) {
                Ok(r) => {
                    rec.rv = Some(r);
                    true
                }
                Err(_) => false,
            },
        };
    }
    if let Some(c) = attr.strip_prefix("missing from ") {
        return match rec.src.get_mut(c) {
            Some(src) => {
                src.missing = v;
                true
            }
            None => false,
        };
    }
    if let Some(c) = attr.strip_prefix("reported by ") {
        return match v {
            None => {
                rec.src.remove(c);
                true
            }
            Some(j) => match serde_json::from_str::<SourceRef>(&j) {
                Ok(src) => {
                    rec.src.insert(c.to_string(), src);
                    true
                }
                Err(_) => false,
            },
        };
    }
    match v {
        Some(v) => {
            rec.a.insert(attr.to_string(), v);
            rec.p.insert(attr.to_string(), prov.clone());
        }
        None => {
            rec.a.remove(attr);
            rec.p.remove(attr);
        }
    }
    true
}

/// Decide the revert of one record against its current state. Pure (tested without DynamoDB).
fn decide(
    rec: &StoredRecord,
    net: &Net,
    connection: &str,
    mark: &Reverted,
) -> (Vec<Change>, Vec<Conflict>) {
    let mut changes = Vec::new();
    let mut conflicts = Vec::new();
    if net.created {
        let others: Vec<&String> = rec
            .src
            .iter()
            .filter(|(c, s)| c.as_str() != connection && s.missing.is_none())
            .map(|(c, _)| c)
            .collect();
        if !others.is_empty() {
            conflicts.push(Conflict {
                attr: reported_attr(connection),
                run_value: "created".into(),
                current: None,
                reason: format!(
                    "created by the run, reported since by {}: left alone",
                    others
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            return (changes, conflicts);
        }
        if rec.rv.is_none() {
            changes.push(Change {
                attr: REVERTED_ATTR.into(),
                old: None,
                new: serde_json::to_string(mark).unwrap_or_default(),
            });
        }
        let rep = reported_attr(connection);
        if let Some(cur) = current(rec, &rep) {
            changes.push(Change {
                attr: rep,
                old: Some(cur),
                new: String::new(),
            });
        }
        return (changes, conflicts);
    }
    for (attr, (old, new)) in &net.changes {
        let cur = current(rec, attr);
        let target = norm(old.as_deref());
        if norm(cur.as_deref()) == target {
            continue; // already as before the run
        }
        let hand = rec.p.get(attr).is_some_and(|p| p.c == HAND);
        if norm(cur.as_deref()) != norm(Some(new)) || hand {
            let reason = if hand {
                format!(
                    "{attr}: edited by hand since (now {:?}, the run wrote {new:?}): left alone",
                    cur.as_deref().unwrap_or("")
                )
            } else {
                let by = rec
                    .p
                    .get(attr)
                    .map(|p| format!(" by {}", p.c))
                    .unwrap_or_default();
                format!(
                    "{attr}: changed since{by} (now {:?}, the run wrote {new:?}): left alone",
                    cur.as_deref().unwrap_or("")
                )
            };
            conflicts.push(Conflict {
                attr: attr.clone(),
                run_value: new.clone(),
                current: cur,
                reason,
            });
            continue;
        }
        changes.push(Change {
            attr: attr.clone(),
            old: cur,
            new: target.unwrap_or_default().to_string(),
        });
    }
    (changes, conflicts)
}

/// Add one record's changes to the counts.
fn count(c: &mut RevertCounts, r: &RecordRevert) {
    if !r.changes.is_empty() {
        c.records += 1;
    }
    let mut restored = 0;
    for ch in &r.changes {
        if ch.attr == REVERTED_ATTR {
            if ch.new.is_empty() {
                c.unreverted += 1;
            } else {
                c.reverted += 1;
            }
        } else if ch.attr.starts_with("missing from ") {
            if ch.new.is_empty() {
                c.unmarked += 1;
            } else {
                c.remarked += 1;
            }
        } else if !ch.attr.starts_with("reported by ") {
            restored += 1;
        }
    }
    c.restored += restored;
    c.updated += u64::from(restored > 0);
    c.conflicts += r.conflicts.len() as u64;
    for x in &r.conflicts {
        if c.conflict_list.len() < MAX_LISTED {
            c.conflict_list.push(RecordError {
                key: r.key.clone(),
                reason: x.reason.clone(),
            });
        }
    }
}

/// The run's history rows, by record (object type, key), oldest first.
async fn run_history(
    store: &Store,
    run_id: &str,
) -> Result<BTreeMap<(String, String), Vec<HistoryEntry>>, AwsError> {
    let mut rows: Vec<(String, String, HistoryEntry)> = Vec::new();
    let mut start = None;
    loop {
        let page = store
            .ddb
            .scan()
            .table_name(&store.table)
            .consistent_read(true)
            .filter_expression("begins_with(sk, :h) AND run_id = :r")
            .expression_attribute_values(":h", s("H#"))
            .expression_attribute_values(":r", s(run_id))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| dyn_err("Scan", e))?;
        for item in page.items.unwrap_or_default() {
            let get = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            let (pk, sk) = (get("pk"), get("sk"));
            let entry = HistoryEntry::from_item(item)?;
            rows.push((pk, sk, entry));
        }
        match page.last_evaluated_key {
            Some(k) => start = Some(k),
            None => break,
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out: BTreeMap<(String, String), Vec<HistoryEntry>> = BTreeMap::new();
    for (pk, _, e) in rows {
        let Some((ot, key)) = pk.strip_prefix("R#").and_then(|r| r.split_once('#')) else {
            continue;
        };
        out.entry((ot.to_string(), key.to_string()))
            .or_default()
            .push(e);
    }
    Ok(out)
}

/// Fold a record's history rows of the run into its net changes.
fn net_of(entries: &[HistoryEntry]) -> Net {
    let mut net = Net::default();
    for e in entries {
        if e.action == "created" {
            net.created = true;
        }
        for c in &e.changes {
            if c.old.as_deref() == Some(c.new.as_str()) {
                continue; // a release: no value moved
            }
            net.changes
                .entry(c.attr.clone())
                .and_modify(|v| v.1 = c.new.clone())
                .or_insert((c.old.clone(), c.new.clone()));
        }
    }
    net
}

/// Everything the run did, by record.
async fn gather(runs: &Runs, run: &RunItem) -> Result<BTreeMap<(String, String), Net>, AwsError> {
    let mut nets: BTreeMap<(String, String), Net> = run_history(&runs.store, &run.run_id)
        .await?
        .into_iter()
        .map(|(k, rows)| (k, net_of(&rows)))
        .collect();
    // The sweep's marks leave no history row: the membership items name the run.
    let members = runs
        .store
        .query(
            &format!("M#{}", run.connection),
            Some(&format!("{}#", run.object_type)),
            false,
            None,
        )
        .await?;
    for item in members {
        let m: Member = from_item(item)?;
        if m.mr.as_deref() != Some(run.run_id.as_str()) {
            continue;
        }
        let Some(date) = m.missing else { continue };
        nets.entry((run.object_type.clone(), m.key.clone()))
            .or_default()
            .changes
            .insert(missing_attr(&run.connection), (None, date));
    }
    Ok(nets)
}

/// Current records, by (object type, key).
async fn read_all(
    store: &Store,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), StoredRecord>, AwsError> {
    let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (ot, k) in keys {
        by_type.entry(ot.as_str()).or_default().push(k.clone());
    }
    let mut out = HashMap::new();
    for (ot, ks) in by_type {
        for (k, r) in store.records(ot, &ks).await? {
            out.insert((ot.to_string(), k), r);
        }
    }
    Ok(out)
}

/// Show what reverting `run_id` would do; writes nothing.
pub async fn plan(runs: &Runs, run_id: &str) -> Result<RevertReport, RevertError> {
    let run = target(runs, run_id).await?;
    let nets = gather(runs, &run).await?;
    let keys: Vec<(String, String)> = nets.keys().cloned().collect();
    let current = read_all(&runs.store, &keys).await?;
    let mark = Reverted {
        run: "(planned)".into(),
        of: run.run_id.clone(),
        at: now(),
    };
    let mut report = RevertReport {
        reverts: run.run_id.clone(),
        connection: run.connection.clone(),
        run_id: None,
        planned: true,
        counts: RevertCounts::default(),
        records: vec![],
    };
    for (k, net) in &nets {
        let Some(rec) = current.get(k) else { continue };
        let (changes, conflicts) = decide(rec, net, &run.connection, &mark);
        push(&mut report, k, changes, conflicts);
    }
    Ok(report)
}

fn push(report: &mut RevertReport, k: &(String, String), ch: Vec<Change>, cf: Vec<Conflict>) {
    if ch.is_empty() && cf.is_empty() {
        return;
    }
    let r = RecordRevert {
        object_type: k.0.clone(),
        key: k.1.clone(),
        changes: ch,
        conflicts: cf,
    };
    count(&mut report.counts, &r);
    report.records.push(r);
}

async fn target(runs: &Runs, run_id: &str) -> Result<RunItem, RevertError> {
    let run = runs
        .get(run_id)
        .await?
        .ok_or_else(|| RevertError::NoRun(run_id.to_string()))?;
    if run.status == "running" {
        return Err(RevertError::Running(run_id.to_string()));
    }
    Ok(run)
}

/// Revert `run_id`: a run of its connection (holding the connection's lease) that puts back what
/// the run wrote. Returns what it did; the revert run is in the audit log.
pub async fn revert(runs: &Runs, run_id: &str) -> Result<RevertReport, RevertError> {
    let run = target(runs, run_id).await?;
    let event: ConnectionEvent = serde_json::from_str(&run.event)
        .map_err(|e| SyncError::Event(format!("run {run_id}'s stored event: {e}")))?;
    let token = new_token();
    let me = match runs.start(&event, &token).await? {
        Start::New(r) => r,
        Start::Resume(r) => {
            // Not ours to resume: let its lease lapse again for the next sync.
            runs.disown(&r.run_id, &token).await.ok();
            return Err(RevertError::Unfinished(r.run_id));
        }
    };
    // A revert fetches nothing: its run is complete from the start, and no finisher may claim
    // (and sweep) it; if this process dies it is ended as abandoned by its import deadline.
    let far = Utc::now().timestamp() + 10 * 365 * 86_400;
    runs.store
        .ddb
        .update_item()
        .table_name(&runs.store.table)
        .key("pk", s("RUN"))
        .key("sk", s(&me.run_id))
        .update_expression(
            "SET fetch_complete = :t, finishing_at = :far, import_deadline = :dl, #of = :of",
        )
        .expression_attribute_names("#of", "reverts")
        .expression_attribute_values(":t", AttributeValue::Bool(true))
        .expression_attribute_values(":far", n(far))
        .expression_attribute_values(":dl", n(Utc::now().timestamp() + 3600))
        .expression_attribute_values(":of", s(run_id))
        .send()
        .await
        .map_err(|e| dyn_err("UpdateItem", e))?;
    let result = apply(runs, &run, &me).await;
    let (status, counts, message, out) = match result {
        Ok(report) => {
            let c = &report.counts;
            let counts = Counts {
                updated: c.records,
                missing: c.remarked,
                skipped: report
                    .records
                    .iter()
                    .filter(|r| r.changes.is_empty())
                    .count() as u64,
                ..Default::default()
            };
            let msg = format!("revert of run {run_id}");
            (
                "succeeded",
                counts,
                msg,
                Ok::<RevertReport, RevertError>(report),
            )
        }
        Err(e) => {
            let msg = format!(
                "revert of run {run_id} failed part-way (a second revert completes it): {}",
                chain(&e)
            );
            ("failed", Counts::default(), msg, Err(e))
        }
    };
    let revert_counts = out.as_ref().map(|r| r.counts.clone()).unwrap_or_default();
    let revert_counts = serde_dynamo::to_attribute_value(&revert_counts)
        .map_err(|e| AwsError::Item(e.to_string()))?;
    let ended = runs
        .end_with(
            &me,
            status,
            &PageTotals::default(),
            counts,
            Some(message),
            Some(("revert", revert_counts)),
        )
        .await?;
    if ended.as_ref().map(|r| r.status.as_str()) != Some(status) {
        // Ended meanwhile by someone else (abandoned by its import deadline).
        return Err(AwsError::Item(format!(
            "run {} was ended before the revert could end it",
            me.run_id
        ))
        .into());
    }
    let mut report = out?;
    report.run_id = Some(me.run_id);
    Ok(report)
}

/// Write the revert of every record, each under its version condition.
async fn apply(runs: &Runs, run: &RunItem, me: &RunItem) -> Result<RevertReport, RevertError> {
    let store = &runs.store;
    let nets = gather(runs, run).await?;
    let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let mark = Reverted {
        run: me.run_id.clone(),
        of: run.run_id.clone(),
        at: ts.clone(),
    };
    let prov = Provenance {
        c: run.connection.clone(),
        s: run.source.clone(),
        t: ts.clone(),
        r: me.run_id.clone(),
    };
    let mut report = RevertReport {
        reverts: run.run_id.clone(),
        connection: run.connection.clone(),
        run_id: Some(me.run_id.clone()),
        planned: false,
        counts: RevertCounts::default(),
        records: vec![],
    };
    let mut history = Vec::new();
    // (connection, object type) -> keys whose page-pack entries must be reconsidered.
    let mut stale: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for ((ot, key), net) in &nets {
        let mut done = None;
        for _ in 0..TRIES {
            let Some(cur) = store.record(ot, key).await? else {
                break; // deleted since: nothing to put back
            };
            let (changes, conflicts) = decide(&cur, net, &run.connection, &mark);
            if changes.is_empty() {
                done = Some((cur.clone(), cur, changes, conflicts));
                break;
            }
            let mut rec = cur.clone();
            let mut applied = Vec::new();
            let mut conflicts = conflicts;
            for ch in changes {
                let v = (!ch.new.is_empty()).then(|| ch.new.clone());
                if set(&mut rec, &ch.attr, v, &prov) {
                    applied.push(ch);
                } else {
                    conflicts.push(Conflict {
                        attr: ch.attr.clone(),
                        run_value: ch.old.clone().unwrap_or_default(),
                        current: ch.old.clone(),
                        reason: format!("{}: cannot be put back: left alone", ch.attr),
                    });
                }
            }
            let expected = rec.ver;
            rec.ver += 1;
            if applied.is_empty() || store.replace_record(&rec, expected).await? {
                done = Some((cur, rec, applied, conflicts));
                break;
            }
        }
        let Some((before, after, changes, conflicts)) = done else {
            return Err(AwsError::Item(format!(
                "{ot} {key} kept changing under concurrent writers; gave up after {TRIES} tries"
            ))
            .into());
        };
        if !changes.is_empty() {
            members(store, me, ot, key, &changes).await?;
            if ot == "Person" {
                // Devices are assigned through the email index: keep it in step, as a hand edit does.
                crate::console::reindex_person(store, &before, &after).await?;
            }
            history.push(
                HistoryEntry {
                    at: ts.clone(),
                    connection: run.connection.clone(),
                    run_id: me.run_id.clone(),
                    action: "reverted".into(),
                    changes: changes.clone(),
                }
                .to_item(
                    &record_pk(ot, key),
                    &format!("H#{ts}#{}#revert#reverted", me.run_id),
                )?,
            );
            for c in before.src.keys().chain(after.src.keys()) {
                stale
                    .entry((c.clone(), ot.clone()))
                    .or_default()
                    .insert(key.clone());
            }
        }
        push(&mut report, &(ot.clone(), key.clone()), changes, conflicts);
    }
    store.batch_put(history).await?;
    for ((conn, ot), keys) in stale {
        invalidate(store, &conn, &ot, &keys).await?;
        // The membership changed outside the connection's pages: its next sweep reads it all.
        crate::runs::forget_grace(store, &conn, &ot).await?;
    }
    Ok(report)
}

/// Keep the membership items in step with a record's reverted missing marks and source entries.
async fn members(
    store: &Store,
    me: &RunItem,
    ot: &str,
    key: &str,
    changes: &[Change],
) -> Result<(), AwsError> {
    for ch in changes {
        if let Some(c) = ch.attr.strip_prefix("missing from ") {
            let pk = format!("M#{c}");
            let sk = format!("{ot}#{key}");
            let req = store
                .ddb
                .update_item()
                .table_name(&store.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#mi", "missing");
            let req = if ch.new.is_empty() {
                req.update_expression("REMOVE #mi, mr")
            } else {
                req.update_expression("SET #mi = :d, mr = :r")
                    .expression_attribute_values(":d", s(&ch.new))
                    .expression_attribute_values(":r", s(&me.run_id))
            };
            match req.send().await {
                Ok(_) => {}
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(dyn_err("UpdateItem", e)),
            }
        } else if let Some(c) = ch.attr.strip_prefix("reported by ") {
            if ch.new.is_empty() {
                store
                    .delete(&format!("M#{c}"), &format!("{ot}#{key}"), None)
                    .await?;
            } else {
                store.batch_put(vec![member_item(c, ot, key)?]).await?;
            }
        }
    }
    Ok(())
}

/// Make the page-pack entries of `keys` unsettled, so the connection's next run reads those
/// records and re-applies its source's values where they differ.
async fn invalidate(
    store: &Store,
    connection: &str,
    ot: &str,
    keys: &BTreeSet<String>,
) -> Result<(), AwsError> {
    for _ in 0..TRIES {
        let mut lost = false;
        for (sk, mut pack) in store.packs(connection, ot).await? {
            let mut hit = false;
            for k in keys {
                if let Some(e) = pack.entries.get_mut(k) {
                    if e.settled || e.fp != 0 {
                        e.fp = 0;
                        e.settled = false;
                        hit = true;
                    }
                }
            }
            if !hit {
                continue;
            }
            let (va, d) = pack.encode();
            let item = HashMap::from([
                ("pk".to_string(), s(crate::pages::pack_pk(connection, ot))),
                ("sk".to_string(), s(&sk)),
                ("run".to_string(), s(&pack.run)),
                ("va".to_string(), s(va)),
                ("d".to_string(), s(d)),
            ]);
            // Only over the pack as read: a run that rewrote it meanwhile is read again.
            match store
                .ddb
                .put_item()
                .table_name(&store.table)
                .set_item(Some(item))
                .condition_expression("#run = :run")
                .expression_attribute_names("#run", "run")
                .expression_attribute_values(":run", s(&pack.run))
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if is_condition_failed(&e) => lost = true,
                Err(e) => return Err(dyn_err("PutItem", e)),
            }
        }
        if !lost {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(c: &str) -> Provenance {
        Provenance {
            c: c.into(),
            s: "jamf".into(),
            t: String::new(),
            r: "r1".into(),
        }
    }

    fn rec() -> StoredRecord {
        let mut r = StoredRecord {
            object_type: "Hardware".into(),
            key: "K1".into(),
            ..Default::default()
        };
        for (a, v, c) in [
            ("OS Version", "15", "jamf-a"),
            ("Model", "Mac", "jamf-a"),
            ("Location", "Desk", HAND),
        ] {
            r.a.insert(a.into(), v.into());
            r.p.insert(a.into(), prov(c));
        }
        r.src.insert(
            "jamf-a".into(),
            SourceRef {
                id: Some("7".into()),
                run: "r1".into(),
                ..Default::default()
            },
        );
        r
    }

    fn net(changes: &[(&str, Option<&str>, &str)]) -> Net {
        Net {
            created: false,
            changes: changes
                .iter()
                .map(|(a, o, n)| (a.to_string(), (o.map(str::to_string), n.to_string())))
                .collect(),
        }
    }

    #[test]
    fn values_go_back_unless_changed_since() {
        let mark = Reverted::default();
        let n = net(&[
            ("OS Version", Some("14"), "15"),
            ("Model", Some("Old"), "New"),
            ("Location", None, "Desk"),
            ("Serial", None, "S1"),
        ]);
        let (ch, cf) = decide(&rec(), &n, "jamf-a", &mark);
        assert_eq!(
            ch,
            vec![Change {
                attr: "OS Version".into(),
                old: Some("15".into()),
                new: "14".into()
            }]
        );
        // Model moved since; Location is a person's; Serial is already as before (absent).
        assert_eq!(cf.len(), 2, "{cf:?}");
        assert!(cf
            .iter()
            .any(|c| c.attr == "Location" && c.reason.contains("hand")));
    }

    #[test]
    fn created_records_are_marked_and_unmarked_and_missing_marks_undone() {
        let mark = Reverted {
            run: "rv1".into(),
            of: "r1".into(),
            at: "t".into(),
        };
        let created = Net {
            created: true,
            ..Default::default()
        };
        let (ch, cf) = decide(&rec(), &created, "jamf-a", &mark);
        assert!(cf.is_empty());
        let mut r = rec();
        for c in &ch {
            assert!(set(
                &mut r,
                &c.attr,
                (!c.new.is_empty()).then(|| c.new.clone()),
                &prov("x")
            ));
        }
        assert_eq!(r.rv.as_ref(), Some(&mark));
        assert!(!r.src.contains_key("jamf-a"));
        assert_eq!(r.a["OS Version"], "15", "attributes stay");
        // The revert's own changes, reverted: back as the run left it.
        let back = Net {
            created: false,
            changes: ch
                .iter()
                .map(|c| (c.attr.clone(), (c.old.clone(), c.new.clone())))
                .collect(),
        };
        let (ch2, cf2) = decide(&r, &back, "jamf-a", &mark);
        assert!(cf2.is_empty());
        for c in &ch2 {
            assert!(set(
                &mut r,
                &c.attr,
                (!c.new.is_empty()).then(|| c.new.clone()),
                &prov("x")
            ));
        }
        assert_eq!(r, rec());

        // A missing mark of the run is lifted.
        let mut m = rec();
        m.src.get_mut("jamf-a").unwrap().missing = Some("2026-01-01".into());
        let (ch, _) = decide(
            &m,
            &net(&[("missing from jamf-a", None, "2026-01-01")]),
            "jamf-a",
            &mark,
        );
        assert_eq!(ch.len(), 1);
        assert!(set(&mut m, &ch[0].attr, None, &prov("x")));
        assert_eq!(m, rec());
    }
}
