//! `action: plan` (`assetsync plan`): a real fetch of a connection, decided exactly as a sync
//! would decide it (the same pages and page ids, page packs, `decide`, assignment and the missing
//! guards), writing nothing: connector caches stay in memory, and only reads reach DynamoDB.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::connectors::Cursor;
use crate::error::SyncError;
use crate::event::{ConnectionEvent, ObjectType, PageMessage};
use crate::fetcher::{map_page, resolve_mapping, split_page, Fetcher};
use crate::guard::{self, Absence, Breaker, GuardConfig, Verdict};
use crate::importer::{assignment_changes, page_keys, volatile_of_event, Importer};
use crate::mapping::MappedRecord;
use crate::pages::fingerprint_under;
use crate::register::{decide, Change, Decision, StoredRecord, Writer};
use crate::runs::{from_lease, Member, RunItem};
use crate::store::from_item;
use crate::summary::{Counts, RecordError};

/// What a sync of the connection would do now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Plan {
    pub connection: String,
    pub source: String,
    pub object_type: String,
    pub mode: String,
    /// The connection's run in progress, if any: the plan read a register that run is changing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunningRun>,
    /// Raw records fetched, pages, and the vendor's own total.
    pub records_fetched: u64,
    pub pages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_total: Option<u64>,
    /// The counts the sync would end with (`missing`: records no connection would report).
    pub counts: Counts,
    /// Records that would be created, with their mapped attributes (asset tag, name and category
    /// are derived when they are written).
    pub create: Vec<PlannedCreate>,
    /// Records that would be updated, with each attribute's old and new value.
    pub update: Vec<PlannedUpdate>,
    /// Records that would be marked missing from this connection.
    pub mark_missing: Vec<PlannedMissing>,
    /// Records marked missing that the connection reports again: they would be unmarked.
    pub unmark_missing: Vec<String>,
    /// Records not reported that are not marked yet: within their grace, or held by the breaker.
    pub absent: Vec<PlannedAbsence>,
    /// Records that would be skipped (no key, key too long, duplicate, not found), and why.
    pub skipped: Vec<RecordError>,
    /// The missing guards as they apply to this fetch.
    pub guard: PlanGuard,
    /// Why no record would be marked missing, or what the breaker says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The run holding the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunningRun {
    pub run_id: String,
    pub started_at: String,
}

/// A record the sync would create.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlannedCreate {
    pub key: String,
    pub attributes: BTreeMap<String, String>,
}

/// A record the sync would update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlannedUpdate {
    pub key: String,
    /// Attribute changes (empty when only the connection's source entry would change).
    pub changes: Vec<Change>,
}

/// A record the sync would mark missing from this connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlannedMissing {
    pub key: String,
    /// Other connections that still report it (it is missing only when none does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub still_reported_by: Vec<String>,
}

/// A record absent from this fetch that the sync would not mark yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlannedAbsence {
    pub key: String,
    /// Consecutive complete runs without it, this one included.
    pub absent_runs: u32,
    /// `waiting` (within `missing_after`) or `held` (by the circuit breaker).
    pub state: String,
}

/// The guards' settings and the breaker's decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PlanGuard {
    pub missing_after: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_percent: Option<f64>,
    /// The record count of the connection's last accepted complete run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<u64>,
    /// `pass`, `tripped`, `overridden`, or `not_swept` (the fetch would not be complete).
    pub breaker: String,
    pub allow_drop: bool,
}

/// What the plan has decided so far: counts, lists, and the records as the sync would leave them
/// (a later page that names a key again decides against the earlier page's outcome).
struct Acc {
    plan: Plan,
    seen: HashSet<String>,
    overlay: HashMap<String, StoredRecord>,
}

/// Plan a sync of `event`: fetch every page, decide each record, simulate the missing sweep.
pub async fn plan(fetcher: &Fetcher, event: &ConnectionEvent) -> Result<Plan, SyncError> {
    let mapping = resolve_mapping(event)?;
    let cfg = GuardConfig::from_mapping(&mapping)?;
    let store = &fetcher.store;
    let running = match store.get(&format!("L#{}", event.connection), "#").await? {
        Some(item) => match from_lease(item) {
            Some(run_id) => fetcher
                .runs
                .get(&run_id)
                .await?
                .filter(|r| r.status == "running")
                .map(|r| RunningRun {
                    run_id: r.run_id,
                    started_at: r.started_at,
                }),
            None => None,
        },
        None => None,
    };
    let connector = fetcher.connector(event, &mapping, false).await?;
    // A run id of now: every existing pack and source entry is older, as for a real new run.
    let run_id = format!(
        "{}-{}-plan",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        event.connection
    );
    let run: RunItem = serde_json::from_value(serde_json::json!({
        "run_id": run_id, "connection": event.connection, "source": event.source.as_str(),
        "object_type": event.object_type.as_str(), "mode": "", "status": "running",
        "started_at": crate::runs::now(), "event": "{}"
    }))
    .map_err(|e| SyncError::Other(e.to_string()))?;
    let importer = Importer::new(fetcher.settings.clone(), store.ddb.clone());
    let volatile = volatile_of_event(Some(event));
    let mut acc = Acc {
        plan: Plan {
            connection: event.connection.clone(),
            source: event.source.as_str().into(),
            object_type: event.object_type.as_str().into(),
            mode: serde_json::to_value(event.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            running,
            ..Default::default()
        },
        seen: HashSet::new(),
        overlay: HashMap::new(),
    };
    let mut cursor: Option<Cursor> = None;
    let mut page_no = 0u32;
    loop {
        let page = connector.fetch_page(cursor.as_ref()).await?;
        acc.plan.records_fetched += page.records.len() as u64;
        acc.plan.vendor_total = page.total;
        let (records, skipped) = map_page(
            &mapping,
            connector.as_ref(),
            &page.records,
            event.object_type,
        );
        // The same chunks (and page ids, which name the page packs) as the sync would send.
        let bodies = split_page(&run, event, page_no, records, skipped, None)?;
        acc.plan.pages += bodies.len() as u64;
        for body in bodies {
            let msg: PageMessage =
                serde_json::from_str(&body).map_err(|e| SyncError::Other(e.to_string()))?;
            plan_page(&importer, &msg, &run_id, &volatile, &mut acc).await?;
        }
        page_no += 1;
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    plan_missing(fetcher, event, &cfg, &run_id, &mut acc).await?;
    Ok(acc.plan)
}

/// Decide one page as the importer's `write_page` would, without applying anything.
async fn plan_page(
    importer: &Importer,
    msg: &PageMessage,
    run_id: &str,
    volatile: &std::collections::BTreeSet<String>,
    acc: &mut Acc,
) -> Result<(), SyncError> {
    let ot = msg.object_type;
    let p = &mut acc.plan;
    p.counts.skipped += msg.skipped.len() as u64;
    p.skipped.extend(msg.skipped.iter().cloned());
    let (kept, dups, too_long) = page_keys(&msg.records);
    p.counts.skipped += too_long.len() as u64;
    p.skipped.extend(too_long);
    p.counts.duplicate += dups.len() as u64;
    for d in &dups {
        if let Some(k) = &d.key {
            acc.seen.insert(k.clone());
            p.skipped.push(RecordError {
                key: k.clone(),
                reason: "duplicate: the page has another record with this key that checked in more recently".into(),
            });
        }
    }
    let prev = importer
        .store
        .pack(&msg.connection, ot.as_str(), &msg.page_id())
        .await?;
    let mut slow: Vec<MappedRecord> = Vec::new();
    // The salt the importer uses: a changed precedence makes the sync reconsider every record.
    let salt = importer.settings.precedence.digest();
    for r in kept {
        let key = r.key.clone().unwrap_or_default();
        acc.seen.insert(key.clone());
        let fp = fingerprint_under(&r, volatile, salt);
        let same = prev
            .as_ref()
            .and_then(|p| p.entries.get(&key))
            .is_some_and(|e| e.settled && e.fp == fp);
        if same {
            p.counts.unchanged += 1;
        } else {
            slow.push(r);
        }
    }
    if slow.is_empty() {
        return Ok(());
    }
    let precedence = importer.settings.precedence.clone();
    let writer = Writer {
        connection: &msg.connection,
        source: msg.source.as_str(),
        run_id,
        mode: msg.mode,
        object_type: ot,
        precedence: &precedence,
        volatile,
    };
    let keys: Vec<String> = slow
        .iter()
        .filter_map(|r| r.key.clone())
        .filter(|k| !acc.overlay.contains_key(k))
        .collect();
    let mut stored = importer.store.records(ot.as_str(), &keys).await?;
    for r in &slow {
        if let Some(k) = &r.key {
            if let Some(o) = acc.overlay.get(k) {
                stored.insert(k.clone(), o.clone());
            }
        }
    }
    let decisions: Vec<Decision> = slow
        .iter()
        .map(|r| decide(r, r.key.as_ref().and_then(|k| stored.get(k)), &writer))
        .collect();
    let emails = importer.load_emails(ot, &slow, &decisions, &stored).await?;
    for (r, d) in slow.into_iter().zip(decisions) {
        let key = r.key.clone().unwrap_or_default();
        let src = writer.source_ref(&r);
        let p = &mut acc.plan;
        match (&d, stored.get(&key)) {
            (Decision::Create, _) | (Decision::Update { .. } | Decision::Unchanged, None) => {
                p.counts.created += 1;
                let mut rec = StoredRecord {
                    object_type: ot.as_str().into(),
                    key: key.clone(),
                    ..Default::default()
                };
                rec.a = r.attrs.clone();
                if let Some(parent) = &r.parent {
                    rec.a
                        .entry("Device Serial".into())
                        .or_insert_with(|| parent.clone());
                }
                rec.src.insert(msg.connection.clone(), src);
                p.create.push(PlannedCreate {
                    key: key.clone(),
                    attributes: rec.a.clone(),
                });
                acc.overlay.insert(key, rec);
            }
            (Decision::NotFound, _) => {
                p.counts.not_found += 1;
                p.skipped.push(RecordError {
                    key,
                    reason:
                        "not found: update-only mode, and the register has no record with this key"
                            .into(),
                });
            }
            (Decision::Duplicate, _) => {
                p.counts.duplicate += 1;
                p.skipped.push(RecordError {
                    key,
                    reason: "duplicate: another source record of this connection with this key checked in more recently".into(),
                });
            }
            (Decision::Update { .. } | Decision::Unchanged, Some(c)) => {
                let mut rec = c.clone();
                let mut changes = Vec::new();
                let (mut src_changed, mut dup) = (false, false);
                if let Decision::Update {
                    changes: cs,
                    src_changed: sc,
                    duplicate,
                } = &d
                {
                    src_changed = *sc;
                    dup = *duplicate;
                    for ch in cs {
                        rec.a.insert(ch.attr.clone(), ch.new.clone());
                        changes.push(ch.clone());
                    }
                }
                if ot == ObjectType::Hardware {
                    let snapshot = rec.a.clone();
                    for (a, v) in assignment_changes(&snapshot, &rec, &emails, &writer) {
                        changes.push(Change {
                            attr: a.clone(),
                            old: rec.a.get(&a).cloned(),
                            new: v.clone().unwrap_or_default(),
                        });
                        match v {
                            Some(v) => rec.a.insert(a, v),
                            None => rec.a.remove(&a),
                        };
                    }
                }
                if changes.is_empty() && !src_changed {
                    if dup {
                        p.counts.duplicate += 1;
                    } else {
                        p.counts.unchanged += 1;
                    }
                    continue;
                }
                if let Some(s) = c.src.get(&msg.connection).filter(|s| s.missing.is_some()) {
                    changes.push(Change {
                        attr: format!("missing from {}", msg.connection),
                        old: s.missing.clone(),
                        new: String::new(),
                    });
                    p.unmark_missing.push(key.clone());
                }
                if dup {
                    p.counts.duplicate += 1;
                } else {
                    p.counts.updated += 1;
                }
                p.update.push(PlannedUpdate {
                    key: key.clone(),
                    changes,
                });
                rec.src.insert(msg.connection.clone(), src);
                acc.overlay.insert(key, rec);
            }
        }
    }
    Ok(())
}

/// The missing sweep the sync would end with, on the membership and guard state as they are.
async fn plan_missing(
    fetcher: &Fetcher,
    event: &ConnectionEvent,
    cfg: &GuardConfig,
    run_id: &str,
    acc: &mut Acc,
) -> Result<(), SyncError> {
    let p = &mut acc.plan;
    let runs = &fetcher.runs;
    let ot = event.object_type.as_str();
    let state = runs
        .guard_state(&event.connection, ot)
        .await?
        .unwrap_or_default();
    let before = state.before(run_id);
    p.guard = PlanGuard {
        missing_after: cfg.missing_after,
        max_drop_percent: cfg.max_drop_percent,
        baseline: before.baseline,
        breaker: "not_swept".into(),
        allow_drop: event.allow_drop,
    };
    if let Some(total) = p.vendor_total {
        if total != p.records_fetched {
            p.message = Some(format!(
                "the vendor reported {total} records but {} were fetched: no record would be marked missing",
                p.records_fetched
            ));
            return Ok(());
        }
    }
    let breaker = guard::breaker(cfg, before.baseline, p.records_fetched, event.allow_drop);
    let name = match breaker {
        Breaker::Pass => "pass",
        Breaker::Tripped { .. } => "tripped",
        Breaker::Overridden { .. } => "overridden",
    };
    p.guard.breaker = name.to_string();
    p.message = breaker.message();
    let members = fetcher
        .store
        .query(
            &format!("M#{}", event.connection),
            Some(&format!("{ot}#")),
            false,
            None,
        )
        .await?;
    let mut to_mark = Vec::new();
    for item in members {
        let m: Member = from_item(item)?;
        if acc.seen.contains(&m.key) || m.missing.is_some() {
            continue;
        }
        let absent = guard::next_absence(
            &Absence {
                count: m.ab,
                run: m.ar.clone(),
            },
            run_id,
            before.run.as_deref(),
        );
        match guard::verdict(cfg, absent, &breaker) {
            Verdict::Mark => to_mark.push(m.key),
            v => p.absent.push(PlannedAbsence {
                key: m.key,
                absent_runs: absent,
                state: (if v == Verdict::Held {
                    "held"
                } else {
                    "waiting"
                })
                .to_string(),
            }),
        }
    }
    let recs = fetcher.store.records(ot, &to_mark).await?;
    for key in to_mark {
        let Some(rec) = recs.get(&key) else { continue };
        if !rec.src.contains_key(&event.connection) {
            continue;
        }
        let still: Vec<String> = rec
            .src
            .iter()
            .filter(|(c, s)| *c != &event.connection && s.missing.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        if still.is_empty() {
            p.counts.missing += 1;
        }
        p.mark_missing.push(PlannedMissing {
            key,
            still_reported_by: still,
        });
    }
    Ok(())
}
