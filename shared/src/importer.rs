//! The importer: one SQS message is one page of mapped records. It reads the page's pack (one
//! small item: fingerprints and check-in times of the keys this page reported last run), reads
//! only the records whose fingerprint moved, writes only what changed, and records the page's
//! outcome in its own marker. Redelivered pages count nothing twice: each record write carries
//! its run, page and outcome, so a retry counts and completes what the first try wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use tracing::Instrument;

use crate::error::{chain, AwsError, SyncError};
use crate::event::{ConnectionEvent, ObjectType, PageMessage};
use crate::infer;
use crate::mapping::{MappedRecord, Mapping, DEFAULT_VOLATILE};
use crate::normalize;
use crate::pages::{fingerprint_under, Pack, PackEntry};
use crate::register::{
    attr, decide, dedupe_page, Change, Decision, Provenance, StoredRecord, WriteMark, Writer,
};
use crate::runs::{member_item, now, PageDiff, PageMarker, RunItem, Runs};
use crate::settings::Settings;
use crate::store::{
    email_key, is_record_error, now_ms, record_pk, to_item, waiting_key, CreateIntent, EmailEntry,
    Item, PersonRef, Store,
};
use crate::summary::{Counts, RecordError};

/// Longest record key the register accepts (DynamoDB allows 2048 bytes of partition key; the
/// key also appears in sort keys and index items, which allow 1024).
pub const MAX_KEY_BYTES: usize = 512;

/// Bytes of dropped keys a page marker lists (markers stay far from DynamoDB's 400 KB).
const MAX_DROPPED_BYTES: usize = 100_000;

/// Time an invocation keeps in hand before its deadline to hand back unprocessed messages.
pub const DEADLINE_RESERVE: Duration = Duration::from_secs(10);

/// How long a page's create announcement stands (others wait for it at most this long).
pub const ANNOUNCE_FOR: Duration = Duration::from_secs(120);

/// How long after announcing a page may still start a create: well inside [`ANNOUNCE_FOR`], so a
/// request started in time (and the SDK's retries of it) lands before the announcement lapses.
pub const CREATE_WITHIN: Duration = Duration::from_secs(60);

/// What the importer is built from, once per cold start.
pub struct Importer {
    pub settings: Settings,
    pub store: Store,
    pub runs: Runs,
}

/// What became of one message of a batch.
enum Handled {
    /// Imported (or found imported): delete it; with the run it counts into, if any.
    Done(Option<String>),
    /// Hand it back to the queue.
    Retry,
}

/// What writing one record came to.
struct Applied {
    /// `created`, `updated`, `duplicate`, `unchanged`, `not_found` or `superseded`.
    outcome: &'static str,
    /// History row owed: action and changes.
    history: Option<(&'static str, Vec<Change>)>,
    /// Whether the membership item must be (re)written.
    member: bool,
}

fn outcome_name(o: &str) -> &'static str {
    match o {
        "created" => "created",
        "duplicate" => "duplicate",
        _ => "updated",
    }
}

/// The volatile attributes of a run: its mapping's, or the defaults.
fn volatile_of(run: Option<&RunItem>) -> BTreeSet<String> {
    volatile_of_event(
        run.and_then(|r| serde_json::from_str::<ConnectionEvent>(&r.event).ok())
            .as_ref(),
    )
}

/// The volatile attributes of a connection event (what [`volatile_of`] reads from its run).
pub(crate) fn volatile_of_event(event: Option<&ConnectionEvent>) -> BTreeSet<String> {
    let mapping = event
        .and_then(|e| e.mapping.as_deref())
        .and_then(|m| Mapping::parse(m).ok());
    match mapping {
        Some(m) => m.volatile,
        None => DEFAULT_VOLATILE.iter().map(|a| a.to_string()).collect(),
    }
}

impl Importer {
    /// Build from settings and a DynamoDB client.
    pub fn new(settings: Settings, ddb: aws_sdk_dynamodb::Client) -> Self {
        let store = Store::new(ddb, settings.table.clone());
        let runs = Runs {
            store: store.clone(),
            lease_seconds: settings.lease_seconds,
        };
        Importer {
            settings,
            store,
            runs,
        }
    }

    /// Handle an SQS batch; failed messages are reported for redelivery (ReportBatchItemFailures).
    pub async fn handle_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_batch_until(event, None).await
    }

    /// Handle an SQS batch within a Lambda deadline: messages not done [`DEADLINE_RESERVE`] before
    /// it are handed back as batch item failures instead of the whole invocation timing out.
    pub async fn handle_batch_until(
        &self,
        event: SqsEvent,
        deadline: Option<Instant>,
    ) -> SqsBatchResponse {
        let began = Instant::now();
        let messages = event.records.len() as u64;
        // A short timeout (an emulator's, a small function's) gets a proportionate reserve, so a
        // batch is not handed back before it starts.
        let reserve = deadline
            .map(|d| DEADLINE_RESERVE.min(d.saturating_duration_since(began) / 4))
            .unwrap_or(DEADLINE_RESERVE);
        let results: Vec<(String, Handled)> = futures::stream::iter(event.records)
            .map(|m| async move {
                let id = m.message_id.clone().unwrap_or_default();
                let handled = match deadline {
                    None => self.handle_page(&m).await,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left <= reserve {
                            tracing::warn!(message_id = %id, "deadline near: handing the page back to the queue");
                            Handled::Retry
                        } else {
                            // A page cut short is a crash the page's design survives.
                            match tokio::time::timeout(left - reserve, self.handle_page(&m)).await {
                                Ok(h) => h,
                                Err(_) => {
                                    tracing::warn!(message_id = %id, "deadline near: page interrupted, handed back to the queue");
                                    Handled::Retry
                                }
                            }
                        }
                    }
                };
                (id, handled)
            })
            .buffer_unordered(self.settings.importer_concurrency.max(1))
            .collect()
            .await;
        // Each run of the batch gets one chance to end, after all its pages: the check reads
        // every marker of the run, so once a batch rather than once a page. A check that fails
        // hands its run's pages back (they are done; their redelivery only checks again).
        let runs: BTreeSet<String> = results
            .iter()
            .filter_map(|(_, h)| match h {
                Handled::Done(Some(run)) => Some(run.clone()),
                _ => None,
            })
            .collect();
        let mut unfinished = BTreeSet::new();
        for run in runs {
            // The finisher also drops the packs of pages the run no longer has.
            let check = self.runs.try_finish(&run);
            let out = match deadline {
                None => Ok(check.await),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left.saturating_sub(reserve / 2), check).await
                }
            };
            match out {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(run_id = %run, error = %chain(&e), "could not check whether the run is over; its pages are handed back");
                    unfinished.insert(run);
                }
                // The pages are in: the run's finish check ends it (its claim goes stale).
                Err(_) => {
                    tracing::warn!(run_id = %run, "deadline near: the run's end is left to its finish check")
                }
            }
        }
        let mut resp = SqsBatchResponse::default();
        for (id, handled) in results {
            match handled {
                Handled::Done(Some(run)) if unfinished.contains(&run) => resp.add_failure(id),
                Handled::Done(_) => {}
                Handled::Retry => resp.add_failure(id),
            }
        }
        crate::telemetry::emit_batch(&crate::telemetry::BatchMetrics {
            messages,
            failed: resp.batch_item_failures.len() as u64,
            duration_ms: began.elapsed().as_millis() as u64,
            ..Default::default()
        });
        resp
    }

    /// Import one message's page, without trying to end its run (the batch does that).
    async fn handle_page(&self, m: &SqsMessage) -> Handled {
        let receives: u32 = m
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let body = m.body.as_deref().unwrap_or_default();
        let msg: PageMessage = match serde_json::from_str(body) {
            Ok(p) => p,
            Err(e) => {
                // Not ours to interpret: it goes to the DLQ after its receives, where it stays visible.
                tracing::error!(message_id = ?m.message_id, error = %e, "records message is not a page; leaving it for the dead-letter queue");
                return Handled::Retry;
            }
        };
        let span =
            tracing::info_span!("page", run_id = %msg.run_id, page = %msg.page_id(), receives);
        match self.import_page(&msg).instrument(span).await {
            Ok(counted) => Handled::Done(counted.then(|| msg.run_id.clone())),
            Err(e) => {
                let reason = chain(&e);
                tracing::error!(error = %reason, "page import failed");
                if receives >= self.settings.max_receive_count {
                    // Last try: the page goes to the DLQ; the run must say so and still end.
                    if let Err(e2) = self.mark_dead(&msg, &reason).await {
                        tracing::error!(error = %chain(&e2), "could not record the dead page");
                    }
                }
                Handled::Retry
            }
        }
    }

    async fn mark_dead(&self, msg: &PageMessage, reason: &str) -> Result<(), AwsError> {
        let page_id = msg.page_id();
        let errors = vec![RecordError {
            key: format!("page {page_id}"),
            reason: format!("dead-lettered after repeated failures: {reason}"),
        }];
        let marker = PageMarker {
            status: "planned".into(),
            at: now(),
            ..Default::default()
        };
        let plan = self.runs.plan(&msg.run_id, &page_id, &marker).await?;
        if plan.status == "planned" {
            // A dead page counts no records: they are redriven later.
            let dead = PageMarker {
                counts: Counts::default(),
                errors,
                ..plan
            };
            self.runs
                .complete_page(&msg.run_id, &page_id, &dead, true)
                .await?;
        }
        self.runs.try_finish(&msg.run_id).await?;
        Ok(())
    }

    /// Import one page (idempotent: a redelivered page changes nothing and counts nothing twice).
    /// A page of an unknown run (hand-made, stray) is imported the same way, counted nowhere.
    /// Returns whether the page counts into a run (which then should get its chance to end).
    pub async fn import_page(&self, msg: &PageMessage) -> Result<bool, SyncError> {
        let page_id = msg.page_id();
        let run = self.runs.get(&msg.run_id).await?;
        let counted = run.is_some();
        if !counted {
            tracing::warn!(run_id = %msg.run_id, "page of an unknown run: importing its records without counting them");
        }
        let volatile = volatile_of(run.as_ref());
        let ts = if counted {
            let plan = match self.runs.marker(&msg.run_id, &page_id).await? {
                Some(m) => m,
                None => {
                    let fresh = PageMarker {
                        status: "planned".into(),
                        at: now(),
                        ..Default::default()
                    };
                    self.runs.plan(&msg.run_id, &page_id, &fresh).await?
                }
            };
            if plan.status != "planned" {
                return Ok(true);
            }
            // The first try's time: history rows of a redelivery land on the same keys.
            plan.at
        } else {
            now()
        };
        crate::failpoint::hit("importer.after_plan")?;
        let (counts, errors, diff) = self
            .write_page(msg, &page_id, &ts, &volatile, counted)
            .await?;
        crate::failpoint::hit("importer.after_writes")?;
        if !counted {
            return Ok(false);
        }
        let done = PageMarker {
            status: "done".into(),
            counts,
            errors,
            seen: vec![],
            at: ts,
            diff,
        };
        let recorded = self
            .runs
            .complete_page(&msg.run_id, &page_id, &done, false)
            .await?;
        crate::failpoint::hit("importer.after_count")?;
        tracing::info!(
            recorded,
            created = counts.created,
            updated = counts.updated,
            unchanged = counts.unchanged,
            "page imported"
        );
        Ok(true)
    }

    /// Read, decide and write one page's records; returns the page's counts and record errors.
    async fn write_page(
        &self,
        msg: &PageMessage,
        page_id: &str,
        ts: &str,
        volatile: &BTreeSet<String>,
        counted: bool,
    ) -> Result<(Counts, Vec<RecordError>, Option<PageDiff>), SyncError> {
        let ot = msg.object_type;
        let mut counts = Counts {
            skipped: msg.skipped.len() as u64,
            ..Default::default()
        };
        let mut errors: Vec<RecordError> = msg.skipped.clone();
        let (kept, dups, too_long) = page_keys(&msg.records);
        counts.skipped += too_long.len() as u64;
        errors.extend(too_long);
        counts.duplicate += dups.len() as u64;

        let prev = if counted {
            self.store
                .pack(&msg.connection, ot.as_str(), page_id)
                .await?
        } else {
            None
        };
        // A pack of this very run means this is a redelivery: read every record, so the outcomes
        // its first try wrote are counted as such. (What the replaced pack listed is then lost:
        // the page cannot say what it dropped, and the run's sweep reads the whole membership.)
        let diff_known = prev
            .as_ref()
            .is_none_or(|p| p.run.as_str() < msg.run_id.as_str());
        let prev = prev.filter(|p| p.run.as_str() < msg.run_id.as_str());
        let mut pack = Pack {
            run: msg.run_id.clone(),
            attrs: volatile.iter().cloned().collect(),
            entries: BTreeMap::new(),
        };
        let mut slow = Vec::new();
        // A changed precedence changes every fingerprint: the next run reconsiders each record.
        let salt = self.settings.precedence.digest();
        for r in kept {
            let key = r.key.clone().unwrap_or_default();
            let fp = fingerprint_under(&r, volatile, salt);
            let vals: Vec<String> = pack
                .attrs
                .iter()
                .map(|a| r.attrs.get(a).cloned().unwrap_or_default())
                .collect();
            let same = prev
                .as_ref()
                .and_then(|p| p.entries.get(&key))
                .is_some_and(|e| e.settled && e.fp == fp);
            if same {
                counts.unchanged += 1;
                pack.entries.insert(
                    key,
                    PackEntry {
                        fp,
                        settled: true,
                        vals,
                    },
                );
            } else {
                pack.entries.insert(
                    key,
                    PackEntry {
                        fp: 0,
                        settled: false,
                        vals,
                    },
                );
                slow.push((r, fp));
            }
        }
        for d in &dups {
            if let Some(k) = &d.key {
                pack.entries.entry(k.clone()).or_default();
            }
        }
        let diff = diff_known
            .then(|| PageDiff {
                replaced: prev.as_ref().map(|p| p.run.clone()),
                dropped: prev
                    .as_ref()
                    .map(|p| {
                        p.entries
                            .keys()
                            .filter(|k| !pack.entries.contains_key(*k))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            // A marker must stay small: past this, the sweep reads the whole membership.
            .filter(|d| d.dropped.iter().map(String::len).sum::<usize>() <= MAX_DROPPED_BYTES);

        if !slow.is_empty() {
            let precedence = self.settings.precedence.clone();
            let writer = Writer {
                connection: &msg.connection,
                source: msg.source.as_str(),
                run_id: &msg.run_id,
                mode: msg.mode,
                object_type: ot,
                precedence: &precedence,
                volatile,
            };
            let keys: Vec<String> = slow.iter().filter_map(|(r, _)| r.key.clone()).collect();
            let stored = self.store.records(ot.as_str(), &keys).await?;
            let decisions: Vec<Decision> = slow
                .iter()
                .map(|(r, _)| decide(r, r.key.as_ref().and_then(|k| stored.get(k)), &writer))
                .collect();
            let records: Vec<MappedRecord> = slow.iter().map(|(r, _)| r.clone()).collect();
            let emails = self.load_emails(ot, &records, &decisions, &stored).await?;
            let creates = decisions.iter().filter(|d| **d == Decision::Create).count() as u64;
            let mut tag = if creates > 0 && ot == ObjectType::Hardware {
                self.store.take_sequence("asset_tag", creates).await?
            } else {
                0
            };
            let email_updates: std::sync::Mutex<BTreeMap<String, EmailEntry>> =
                std::sync::Mutex::new(BTreeMap::new());
            let jobs: Vec<_> = slow
                .into_iter()
                .zip(decisions)
                .map(|((r, fp), d)| {
                    let t = if d == Decision::Create && ot == ObjectType::Hardware {
                        tag += 1;
                        Some(tag - 1)
                    } else {
                        None
                    };
                    let cur = r.key.as_ref().and_then(|k| stored.get(k)).cloned();
                    (r, fp, d, cur, t)
                })
                .collect();
            let create_keys: BTreeSet<String> = jobs
                .iter()
                .filter(|j| j.2 == Decision::Create)
                .filter_map(|j| j.0.key.clone())
                .collect();
            let announced = if create_keys.is_empty() {
                None
            } else {
                Some(
                    self.announce_creates(ot, msg, page_id, &create_keys)
                        .await?,
                )
            };
            let create_until = announced.as_ref().map(|(_, _, _, u)| *u);
            let written: Result<(), SyncError> = async {
                let mut side: Vec<Item> = Vec::new();
                // Batch mode: the announced keys still absent are created in BatchWriteItem
                // calls (records first, then membership and history with the other side items).
                let mut jobs = jobs;
                if let Some((_, _, true, until)) = &announced {
                    let keys: Vec<String> = create_keys.iter().cloned().collect();
                    // Read again after announcing: a page that finished creating some of these
                    // keys before this announcement withdrew its own, and its records are here.
                    let there = self.store.records(ot.as_str(), &keys).await?;
                    let mut batch = Vec::new();
                    let mut rest = Vec::new();
                    for (r, fp, d, cur, t) in jobs {
                        let found = r.key.as_ref().and_then(|k| there.get(k)).cloned();
                        match (&d, found) {
                            (Decision::Create, None) => batch.push((r, fp, t)),
                            (Decision::Create, Some(c)) => {
                                let d2 = decide(&r, Some(&c), &writer);
                                rest.push((r, fp, d2, Some(c), t));
                            }
                            _ => rest.push((r, fp, d, cur, t)),
                        }
                    }
                    let mut recs = Vec::new();
                    let mut items = Vec::new();
                    for (r, fp, t) in &batch {
                        let rec = self.build_created(
                            r,
                            &writer,
                            &emails,
                            &email_updates,
                            t.unwrap_or(0),
                            ts,
                            page_id,
                        );
                        items.push(to_item(&record_pk(ot.as_str(), &rec.key), "#", &rec)?);
                        recs.push((rec, *fp));
                    }
                    match self.store.batch_put_until(items, *until).await {
                        Ok(()) => {
                            for (rec, fp) in recs {
                                counts.created += 1;
                                side.push(member_item(&msg.connection, ot.as_str(), &rec.key)?);
                                side.push(history_item(
                                    ot,
                                    &rec.key,
                                    ts,
                                    &writer,
                                    page_id,
                                    "created",
                                    &all_as_changes(&rec),
                                )?);
                                if let Some(e) = pack.entries.get_mut(&rec.key) {
                                    e.fp = fp;
                                    e.settled = true;
                                }
                            }
                        }
                        // One record DynamoDB refuses (too big) fails its whole batch: create
                        // them one by one, so that one is an error of the run and the rest land
                        // (those the batch wrote are found with this page's mark).
                        Err(e) if is_record_error(&e) => {
                            for (r, fp, t) in batch {
                                let cur = match &r.key {
                                    Some(k) => self.store.record(ot.as_str(), k).await?,
                                    None => None,
                                };
                                let d = decide(&r, cur.as_ref(), &writer);
                                rest.push((r, fp, d, cur, t));
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                    jobs = rest;
                }
                let results: Vec<_> = futures::stream::iter(jobs)
                    .map(|(r, fp, d, cur, t)| {
                        let (writer, emails, email_updates) = (&writer, &emails, &email_updates);
                        async move {
                            let res = self
                                .apply(
                                    &r,
                                    d,
                                    cur,
                                    writer,
                                    emails,
                                    email_updates,
                                    t,
                                    create_until,
                                    ts,
                                    page_id,
                                )
                                .await;
                            (r, fp, res)
                        }
                    })
                    .buffer_unordered(8)
                    .collect()
                    .await;
                for (r, fp, res) in results {
                    let key = r.key.clone().unwrap_or_default();
                    match res {
                        Ok(a) => {
                            match a.outcome {
                                "created" => counts.created += 1,
                                "updated" => counts.updated += 1,
                                "duplicate" => counts.duplicate += 1,
                                "not_found" => counts.not_found += 1,
                                _ => counts.unchanged += 1,
                            }
                            if let Some((action, changes)) = &a.history {
                                if !changes.is_empty() {
                                    side.push(history_item(
                                        ot, &key, ts, &writer, page_id, action, changes,
                                    )?);
                                }
                            }
                            if a.member {
                                side.push(member_item(&msg.connection, ot.as_str(), &key)?);
                            }
                            if matches!(a.outcome, "created" | "updated" | "unchanged") {
                                if let Some(e) = pack.entries.get_mut(&key) {
                                    e.fp = fp;
                                    e.settled = true;
                                }
                            }
                        }
                        Err(SyncError::Aws(e)) if is_record_error(&e) => {
                            // A property of this record (too big, malformed): an error of the run.
                            counts.errors += 1;
                            errors.push(RecordError {
                                key,
                                reason: chain(&e),
                            });
                        }
                        // Anything else (throttling, conflicts, 5xx past the retries) fails the page:
                        // SQS redelivers it, and what was written is counted by the retry.
                        Err(e) => return Err(e),
                    }
                }
                // Side items after the records: a crash in between is completed by the redelivery,
                // which finds this page's mark on each record it wrote.
                crate::failpoint::hit("importer.after_records")?;
                self.store.batch_put(side).await?;
                let email_updates = std::mem::take(&mut *lock(&email_updates));
                self.settle_emails(&emails, email_updates, &writer, ts, page_id)
                    .await?;
                Ok(())
            }
            .await;
            if let Some((intent, slot, _, _)) = &announced {
                // Withdrawn once this page writes no more creates (also on failure: its retry
                // announces again).
                if let Err(e) = self
                    .store
                    .delete_intent(ot.as_str(), *slot, &intent.id)
                    .await
                {
                    tracing::warn!(error = %chain(&e), "could not withdraw the page's create announcement; it expires");
                }
            }
            written?;
        }
        if counted {
            // Last: the pack says "these records are as reported", so it follows their writes.
            self.store
                .put_pack(&msg.connection, ot.as_str(), page_id, &pack)
                .await?;
            // The range is raised after the pack is written: `Store::packs_known` says why.
            self.store
                .cover_pack(&msg.connection, ot.as_str(), msg.page, msg.chunk)
                .await?;
        }
        Ok((counts, errors, diff))
    }

    /// Announce the keys this page is about to create, and say how it may create them: `true`
    /// in batches (unconditional puts), `false` one by one with `attribute_not_exists`; with the
    /// announcement's slot and the time until which it may start a create.
    ///
    /// Why one record per key: every page announces before it reads what to create (the second
    /// read in batch mode), then reads all announcements (every slot, by key). Of two pages
    /// creating one key, at least one sees the other's announcement (each writes before it
    /// reads, and an announcement is withdrawn only after its page's creates are written). A page
    /// that sees a live announcement sharing a key turns conditional (so it never batch-creates)
    /// and waits until each sharing page is conditional too, gone or lapsed: a batch-creating page
    /// therefore saw nobody, and everybody creating its keys either writes after its batch is
    /// done (and finds the records) or creates conditionally after the second read. Lapse is safe
    /// because a page starts no create after [`CREATE_WITHIN`], long before [`ANNOUNCE_FOR`]
    /// ends.
    async fn announce_creates(
        &self,
        ot: ObjectType,
        msg: &PageMessage,
        page_id: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(CreateIntent, usize, bool, Instant), SyncError> {
        let mut until = Instant::now() + CREATE_WITHIN;
        let mut intent = CreateIntent {
            id: format!(
                "{}#{}#{page_id}#{:08x}",
                msg.connection,
                msg.run_id,
                rand::random::<u32>()
            ),
            keys: keys.clone(),
            until_ms: now_ms() + ANNOUNCE_FOR.as_millis() as i64,
            conditional: false,
        };
        let slot = self.store.claim_intent(ot.as_str(), &intent).await?;
        let now = now_ms();
        let sharing: Vec<CreateIntent> = self
            .store
            .intents(ot.as_str())
            .await?
            .into_iter()
            .filter(|o| o.id != intent.id && o.until_ms > now && !o.keys.is_disjoint(keys))
            .collect();
        if sharing.is_empty() {
            return Ok((intent, slot, true, until));
        }
        intent.conditional = true;
        self.store.put_intent(ot.as_str(), slot, &intent).await?;
        let mut open: BTreeSet<String> = sharing
            .iter()
            .filter(|o| !o.conditional)
            .map(|o| o.id.clone())
            .collect();
        tracing::info!(
            sharing = sharing.len(),
            open = open.len(),
            "another page is creating some of this page's keys: creating them one by one"
        );
        let began = Instant::now();
        let mut delay = Duration::from_millis(10);
        while !open.is_empty() {
            if began.elapsed() > ANNOUNCE_FOR - CREATE_WITHIN {
                // Past this, this page's own announcement could lapse while it waits.
                return Err(SyncError::Other(
                    "waited too long for another page creating the same keys; the page is retried"
                        .into(),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
            let now = now_ms();
            let cur: HashMap<String, CreateIntent> = self
                .store
                .intents(ot.as_str())
                .await?
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect();
            open.retain(|id| {
                cur.get(id)
                    .is_some_and(|o| !o.conditional && o.until_ms > now)
            });
        }
        if Instant::now() + CREATE_WITHIN / 2 > until {
            // The wait ate into the window: extend it while the announcement still stands.
            intent.until_ms = now_ms() + ANNOUNCE_FOR.as_millis() as i64;
            until = Instant::now() + CREATE_WITHIN;
            self.store.put_intent(ot.as_str(), slot, &intent).await?;
        }
        Ok((intent, slot, false, until))
    }

    /// Read the email index entries this page needs: people's emails (to index them and resolve
    /// waiting devices) and devices' user emails whose assignment is not settled.
    pub(crate) async fn load_emails(
        &self,
        ot: ObjectType,
        kept: &[MappedRecord],
        decisions: &[Decision],
        stored: &HashMap<String, StoredRecord>,
    ) -> Result<HashMap<String, EmailEntry>, AwsError> {
        let mut wanted = Vec::new();
        for (r, d) in kept.iter().zip(decisions) {
            let cur = r.key.as_ref().and_then(|k| stored.get(k));
            match ot {
                ObjectType::Hardware => {
                    let Some(email) = r
                        .attrs
                        .get(attr::USER_EMAIL)
                        .and_then(|e| normalize::email(e))
                    else {
                        continue;
                    };
                    let settled = cur.is_some_and(|c| {
                        c.a.get(attr::ASSIGNED_TO).map(|a| a.to_lowercase()) == Some(email.clone())
                            && c.a.get(attr::STATUS).map(String::as_str) == Some("assigned")
                    });
                    if !settled {
                        wanted.push(email);
                    }
                }
                ObjectType::Person => {
                    if matches!(
                        d,
                        Decision::Unchanged | Decision::Duplicate | Decision::NotFound
                    ) {
                        continue;
                    }
                    if let Some(email) = r.attrs.get(attr::EMAIL).and_then(|e| normalize::email(e))
                    {
                        wanted.push(email);
                    }
                    if let Some(old) = cur
                        .and_then(|c| c.a.get(attr::EMAIL))
                        .and_then(|e| normalize::email(e))
                    {
                        wanted.push(old);
                    }
                }
                ObjectType::Software => {}
            }
        }
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<(String, String)> = wanted.iter().map(|e| email_key(e)).collect();
        let items = self.store.batch_get(&keys).await?;
        let mut out = HashMap::new();
        for e in wanted {
            let entry = match items.get(&email_key(&e)) {
                Some(i) => crate::store::from_item(i.clone())?,
                None => EmailEntry {
                    absent: true,
                    ..Default::default()
                },
            };
            out.insert(e, entry);
        }
        Ok(out)
    }

    /// Write one record's decision (re-deciding on a lost race), or, on a redelivery, report what
    /// this page already wrote to it.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        r: &MappedRecord,
        mut d: Decision,
        mut cur: Option<StoredRecord>,
        w: &Writer<'_>,
        emails: &HashMap<String, EmailEntry>,
        email_updates: &std::sync::Mutex<BTreeMap<String, EmailEntry>>,
        mut tag_no: Option<u64>,
        create_until: Option<Instant>,
        ts: &str,
        page_id: &str,
    ) -> Result<Applied, SyncError> {
        let ot = w.object_type;
        let key = r.key.clone().unwrap_or_default();
        for _attempt in 0..6 {
            if let Some(c) = &cur {
                if let Some(m) = c.w.get(w.connection) {
                    if m.run == w.run_id && m.pg == page_id {
                        // This page wrote it before it was interrupted: count and complete that,
                        // email index included (the first try may have stopped before it).
                        match ot {
                            ObjectType::Hardware => {
                                self.note_waiting(c, emails, &mut lock(email_updates))
                            }
                            ObjectType::Person => {
                                self.index_person(c, None, emails, &mut lock(email_updates), true)
                            }
                            ObjectType::Software => {}
                        }
                        let history = if m.o == "created" {
                            all_as_changes(c)
                        } else {
                            m.h.clone()
                        };
                        let o = outcome_name(&m.o);
                        let action = if o == "created" { "created" } else { "updated" };
                        return Ok(Applied {
                            outcome: o,
                            history: Some((action, history)),
                            member: m.m,
                        });
                    }
                }
                if c.src
                    .get(w.connection)
                    .is_some_and(|s| s.run.as_str() > w.run_id)
                {
                    // A late page of an older run: a newer run of this connection wrote here.
                    return Ok(Applied {
                        outcome: "superseded",
                        history: None,
                        member: false,
                    });
                }
            }
            let prov = w.provenance(ts);
            let src = w.source_ref(r);
            match (&d, &cur) {
                (Decision::Create, _) => {
                    // A create only under this page's announcement of the key, and only while
                    // the announcement stands (see `announce_creates`); otherwise the page is
                    // retried, and its retry announces the key.
                    match create_until {
                        Some(u) if Instant::now() < u => {}
                        _ => {
                            return Err(SyncError::Other(format!(
                                "record {key} has to be created outside its page's create announcement; the page is retried"
                            )))
                        }
                    }
                    let tag = match tag_no {
                        Some(t) => t,
                        // A create that arose from a lost race takes a tag of its own.
                        None if ot == ObjectType::Hardware => {
                            let t = self.store.take_sequence("asset_tag", 1).await?;
                            tag_no = Some(t);
                            t
                        }
                        None => 0,
                    };
                    let rec = self.build_created(r, w, emails, email_updates, tag, ts, page_id);
                    if self.store.create_record(&rec).await? {
                        return Ok(Applied {
                            outcome: "created",
                            history: Some(("created", all_as_changes(&rec))),
                            member: true,
                        });
                    }
                    // Someone created it meanwhile: decide again against what is there.
                    cur = self.store.record(ot.as_str(), &key).await?;
                    d = decide(r, cur.as_ref(), w);
                }
                (Decision::Update { .. } | Decision::Unchanged, Some(c)) => {
                    let mut rec = c.clone();
                    let mut changes = Vec::new();
                    let mut dup = false;
                    if let Decision::Update {
                        changes: cs,
                        duplicate,
                        ..
                    } = &d
                    {
                        dup = *duplicate;
                        for ch in cs {
                            rec.a.insert(ch.attr.clone(), ch.new.clone());
                            rec.p.insert(ch.attr.clone(), prov.clone());
                            changes.push(ch.clone());
                        }
                    }
                    if ot == ObjectType::Hardware {
                        let snapshot = rec.a.clone();
                        for (a, v) in assignment_changes(&snapshot, &rec, emails, w) {
                            changes.push(Change {
                                attr: a.clone(),
                                old: rec.a.get(&a).cloned(),
                                new: v.clone().unwrap_or_default(),
                            });
                            set_or_remove(&mut rec, &a, v, &prov);
                        }
                        self.note_waiting(&rec, emails, &mut lock(email_updates));
                    }
                    if ot == ObjectType::Person {
                        self.index_person(&rec, Some(c), emails, &mut lock(email_updates), false);
                    }
                    let src_changed = matches!(
                        &d,
                        Decision::Update {
                            src_changed: true,
                            ..
                        }
                    );
                    if changes.is_empty() && !src_changed {
                        return Ok(Applied {
                            outcome: if matches!(
                                d,
                                Decision::Update {
                                    duplicate: true,
                                    ..
                                }
                            ) {
                                "duplicate"
                            } else {
                                "unchanged"
                            },
                            history: None,
                            member: false,
                        });
                    }
                    // The record is written anyway: bring its volatile values along, silently.
                    for (a, v) in &r.attrs {
                        if w.volatile.contains(a)
                            && rec.a.get(a) != Some(v)
                            && w.may_overwrite(a, rec.p.get(a))
                        {
                            rec.a.insert(a.clone(), v.clone());
                            rec.p.insert(a.clone(), prov.clone());
                        }
                    }
                    let was_missing = c.src.get(w.connection).is_some_and(|s| s.missing.is_some());
                    if was_missing {
                        changes.push(Change {
                            attr: format!("missing from {}", w.connection),
                            old: c.src.get(w.connection).and_then(|s| s.missing.clone()),
                            new: String::new(),
                        });
                    }
                    rec.src.insert(w.connection.to_string(), src.clone());
                    let member = !c.src.contains_key(w.connection) || was_missing;
                    if !c.src.contains_key(w.connection) {
                        // Reported anew after a revert undid its creation: no longer reverted.
                        if let Some(rv) = rec.rv.take() {
                            changes.push(Change {
                                attr: crate::revert::REVERTED_ATTR.into(),
                                old: serde_json::to_string(&rv).ok(),
                                new: String::new(),
                            });
                        }
                    }
                    let o = if dup { "duplicate" } else { "updated" };
                    rec.w.insert(
                        w.connection.to_string(),
                        WriteMark {
                            run: w.run_id.to_string(),
                            pg: page_id.to_string(),
                            o: o.into(),
                            h: changes.clone(),
                            m: member,
                        },
                    );
                    let expected = rec.ver;
                    rec.ver += 1;
                    if self.store.replace_record(&rec, expected).await? {
                        return Ok(Applied {
                            outcome: o,
                            history: Some(("updated", changes)),
                            member,
                        });
                    }
                    cur = self.store.record(ot.as_str(), &key).await?;
                    d = decide(r, cur.as_ref(), w);
                }
                (Decision::Update { .. } | Decision::Unchanged, None) => {
                    // It vanished (deleted by hand) between read and write: create it again if allowed.
                    d = decide(r, None, w);
                }
                (Decision::NotFound, _) => {
                    return Ok(Applied {
                        outcome: "not_found",
                        history: None,
                        member: false,
                    })
                }
                (Decision::Duplicate, _) => {
                    return Ok(Applied {
                        outcome: "duplicate",
                        history: None,
                        member: false,
                    })
                }
            }
        }
        Err(SyncError::Other(format!(
            "record {key} kept changing under concurrent writers; gave up after 6 tries"
        )))
    }

    /// A new record as this page creates it: attributes, derived ones, assignment and the
    /// page's mark; notes the email index changes it implies.
    #[allow(clippy::too_many_arguments)]
    fn build_created(
        &self,
        r: &MappedRecord,
        w: &Writer<'_>,
        emails: &HashMap<String, EmailEntry>,
        email_updates: &std::sync::Mutex<BTreeMap<String, EmailEntry>>,
        tag: u64,
        ts: &str,
        page_id: &str,
    ) -> StoredRecord {
        let ot = w.object_type;
        let prov = w.provenance(ts);
        let src = w.source_ref(r);
        let mut rec = StoredRecord {
            object_type: ot.as_str().into(),
            key: r.key.clone().unwrap_or_default(),
            ver: 1,
            created_at: ts.to_string(),
            created_by: w.connection.to_string(),
            ..Default::default()
        };
        for (a, v) in &r.attrs {
            rec.a.insert(a.clone(), v.clone());
            rec.p.insert(a.clone(), prov.clone());
        }
        if let Some(parent) = &r.parent {
            rec.a
                .entry("Device Serial".into())
                .or_insert_with(|| parent.clone());
        }
        rec.src.insert(w.connection.to_string(), src);
        if ot == ObjectType::Hardware {
            let created = self.created_once(&rec.a, emails, w, tag);
            for (a, v) in created {
                rec.a.insert(a.clone(), v);
                rec.p.insert(a, prov.clone());
            }
            for (a, v) in assignment_changes(&rec.a, &rec, emails, w) {
                set_or_remove(&mut rec, &a, v, &prov);
            }
            self.note_waiting(&rec, emails, &mut lock(email_updates));
        }
        if ot == ObjectType::Person {
            self.index_person(&rec, None, emails, &mut lock(email_updates), false);
        }
        rec.w.insert(
            w.connection.to_string(),
            WriteMark {
                run: w.run_id.to_string(),
                pg: page_id.to_string(),
                o: "created".into(),
                h: vec![],
                m: true,
            },
        );
        rec
    }

    /// Asset tag, derived name and category: set once, on create.
    fn created_once(
        &self,
        a: &BTreeMap<String, String>,
        emails: &HashMap<String, EmailEntry>,
        _w: &Writer<'_>,
        tag_no: u64,
    ) -> Vec<(String, String)> {
        let mut out = vec![(
            attr::ASSET_TAG.to_string(),
            infer::asset_tag(
                &self.settings.asset_tag_prefix,
                self.settings.asset_tag_width,
                tag_no,
            ),
        )];
        let person_name = a
            .get(attr::USER_EMAIL)
            .and_then(|e| normalize::email(e))
            .and_then(|e| emails.get(&e))
            .and_then(|entry| entry.active().and_then(|(_, p)| p.name.clone()))
            .or_else(|| a.get(attr::USER_NAME).cloned());
        if let Some(n) = infer::asset_name(
            person_name.as_deref(),
            a.get(attr::MODEL).map(String::as_str),
            a.get(attr::NAME).map(String::as_str),
        ) {
            out.push((attr::ASSET_NAME.to_string(), n));
        }
        let cat = infer::category(
            a.get(attr::MODEL).map(String::as_str),
            a.get(attr::OS_NAME).map(String::as_str),
            a.get(attr::DEVICE_TYPE).map(String::as_str),
            a.get(attr::NAME).map(String::as_str),
        );
        out.push((attr::CATEGORY.to_string(), cat.to_string()));
        out
    }

    /// Remember a device whose user email has no active person yet, so the person's import assigns it.
    fn note_waiting(
        &self,
        rec: &StoredRecord,
        emails: &HashMap<String, EmailEntry>,
        updates: &mut BTreeMap<String, EmailEntry>,
    ) {
        let Some(email) = rec
            .a
            .get(attr::USER_EMAIL)
            .and_then(|e| normalize::email(e))
        else {
            return;
        };
        let Some(entry) = emails.get(&email) else {
            return;
        };
        if entry.active().is_some() || entry.waiting.contains_key(&rec.key) {
            return;
        }
        updates
            .entry(email)
            .or_insert_with(|| entry.clone())
            .waiting_items
            .insert(rec.key.clone());
    }

    /// Keep the email index in step with a person record.
    fn index_person(
        &self,
        rec: &StoredRecord,
        old: Option<&StoredRecord>,
        emails: &HashMap<String, EmailEntry>,
        updates: &mut BTreeMap<String, EmailEntry>,
        redelivered: bool,
    ) {
        let email = rec.a.get(attr::EMAIL).and_then(|e| normalize::email(e));
        let old_email = old
            .and_then(|o| o.a.get(attr::EMAIL))
            .and_then(|e| normalize::email(e));
        if old_email.is_some() && old_email != email {
            if let Some(oe) = old_email {
                let entry = updates
                    .entry(oe.clone())
                    .or_insert_with(|| emails.get(&oe).cloned().unwrap_or_default());
                entry.persons.remove(&rec.key);
            }
        }
        let Some(email) = email else { return };
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
        let entry = updates
            .entry(email.clone())
            .or_insert_with(|| emails.get(&email).cloned().unwrap_or_default());
        entry.recheck |= redelivered;
        entry
            .persons
            .insert(rec.key.clone(), PersonRef { status, name });
    }

    /// Write what this page changed in the email index, and settle devices and people who
    /// met meanwhile.
    ///
    /// Why this is safe under concurrent pages without waiting for them: a device with no active
    /// person is noted in an item of its own (`W#`), then its page reads the email's entry
    /// again; a person's page writes the person into the entry (by attribute path), then reads
    /// the `W#` items. All reads are strongly consistent, so of a device page and a person page
    /// meeting at one email, at least one sees the other's write and assigns the device (both
    /// may: assigning is idempotent). Notes are written by one page each and never overwrite
    /// another's, so they go in batches.
    async fn settle_emails(
        &self,
        before: &HashMap<String, EmailEntry>,
        updates: BTreeMap<String, EmailEntry>,
        w: &Writer<'_>,
        ts: &str,
        page_id: &str,
    ) -> Result<(), SyncError> {
        let notes: Vec<Item> = updates
            .iter()
            .flat_map(|(email, e)| e.waiting_items.iter().map(move |k| waiting_key(email, k)))
            .map(|(pk, sk)| Store::key(&pk, &sk))
            .collect();
        self.store.batch_put(notes).await?;
        crate::failpoint::hit("importer.after_waiting_notes")?;
        let mut recheck = Vec::new();
        let none = EmailEntry::default();
        for (email, entry) in &updates {
            let old = before.get(email).unwrap_or(&none);
            let change = crate::store::EmailChange::between(old, entry);
            let activates = change.set_persons.iter().any(|(_, p)| p.is_active());
            if !change.is_empty() {
                self.store.update_email(email, change, old.absent).await?;
            }
            if entry.active().is_some() && (activates || entry.recheck) {
                recheck.push(email);
            }
        }
        crate::failpoint::hit("importer.after_email_index")?;
        // Devices noted: is there an active person by now?
        let noted: Vec<&String> = updates
            .iter()
            .filter(|(_, e)| !e.waiting_items.is_empty())
            .map(|(k, _)| k)
            .collect();
        if !noted.is_empty() {
            let keys: Vec<(String, String)> = noted.iter().map(|e| email_key(e)).collect();
            let mut now = self.store.batch_get(&keys).await?;
            for email in noted {
                let Some(item) = now.remove(&email_key(email)) else {
                    continue;
                };
                let entry: EmailEntry = crate::store::from_item(item)?;
                if entry.active().is_some() {
                    let devices = &updates[email].waiting_items;
                    self.assign_devices(email, &entry, devices, w, ts, page_id)
                        .await?;
                }
            }
        }
        // People who are active here now: the devices noted waiting for them.
        for email in recheck {
            let entry = &updates[email];
            let mut devices: BTreeSet<String> =
                self.store.waiting_items(email).await?.into_iter().collect();
            devices.extend(entry.waiting.keys().cloned());
            if devices.is_empty() {
                continue;
            }
            self.assign_devices(email, entry, &devices, w, ts, page_id)
                .await?;
            if !entry.waiting.is_empty() {
                let change = crate::store::EmailChange {
                    remove_waiting: entry.waiting.keys().cloned().collect(),
                    ..Default::default()
                };
                self.store.update_email(email, change, false).await?;
            }
        }
        Ok(())
    }

    /// Assign devices noted waiting for `email` to its active person, then drop their notes.
    async fn assign_devices(
        &self,
        email: &str,
        entry: &EmailEntry,
        devices: &BTreeSet<String>,
        w: &Writer<'_>,
        ts: &str,
        page_id: &str,
    ) -> Result<(), SyncError> {
        let one = HashMap::from([(email.to_string(), entry.clone())]);
        let hw_writer = Writer {
            object_type: ObjectType::Hardware,
            ..w.clone()
        };
        let prov = w.provenance(ts);
        let mut history = Vec::new();
        for hw in devices {
            let mut settled = false;
            for _ in 0..6 {
                let Some(mut dev) = self.store.record(ObjectType::Hardware.as_str(), hw).await?
                else {
                    settled = true;
                    break;
                };
                let snapshot = dev.a.clone();
                let changes = assignment_changes(&snapshot, &dev, &one, &hw_writer);
                if changes.is_empty() {
                    settled = true;
                    break;
                }
                let mut hist = Vec::new();
                for (a, v) in changes {
                    hist.push(Change {
                        attr: a.clone(),
                        old: dev.a.get(&a).cloned(),
                        new: v.clone().unwrap_or_default(),
                    });
                    set_or_remove(&mut dev, &a, v, &prov);
                }
                let expected = dev.ver;
                dev.ver += 1;
                if self.store.replace_record(&dev, expected).await? {
                    history.push(history_item(
                        ObjectType::Hardware,
                        hw,
                        ts,
                        w,
                        page_id,
                        "assigned",
                        &hist,
                    )?);
                    settled = true;
                    break;
                }
            }
            if !settled {
                return Err(SyncError::Other(format!(
                    "device {hw} kept changing while being assigned to its person; the page is retried"
                )));
            }
        }
        self.store.batch_put(history).await?;
        let notes: Vec<(String, String)> = devices.iter().map(|k| waiting_key(email, k)).collect();
        self.store.batch_delete(&notes).await?;
        Ok(())
    }
}

/// A created record's history: every attribute, from nothing.
fn all_as_changes(rec: &StoredRecord) -> Vec<Change> {
    rec.a
        .iter()
        .map(|(a, v)| Change {
            attr: a.clone(),
            old: None,
            new: v.clone(),
        })
        .collect()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The assignment a device should have, as changes to make (`None` removes the attribute).
pub(crate) fn assignment_changes(
    a: &BTreeMap<String, String>,
    rec: &StoredRecord,
    emails: &HashMap<String, EmailEntry>,
    w: &Writer<'_>,
) -> Vec<(String, Option<String>)> {
    if rec
        .p
        .get(attr::STATUS)
        .is_some_and(|p| p.c == crate::register::HAND)
        || rec
            .p
            .get(attr::ASSIGNED_TO)
            .is_some_and(|p| p.c == crate::register::HAND)
    {
        return vec![];
    }
    let email = a.get(attr::USER_EMAIL).and_then(|e| normalize::email(e));
    let current_to = a.get(attr::ASSIGNED_TO).map(|s| s.to_lowercase());
    let current_status = a.get(attr::STATUS).cloned();
    let (status, to, note) = match &email {
        Some(e)
            if current_to.as_deref() == Some(e.as_str())
                && current_status.as_deref() == Some("assigned")
                && !emails.contains_key(e) =>
        {
            return vec![];
        }
        Some(e) => match emails.get(e).and_then(|entry| entry.active()) {
            Some((pkey, _)) => (
                "assigned",
                Some(e.clone()),
                Some(format!(
                    "assigned by email to Person {pkey}, from {}",
                    w.connection
                )),
            ),
            None => ("available", None, None),
        },
        None => ("available", None, None),
    };
    let mut out = Vec::new();
    if current_status.as_deref() != Some(status) {
        out.push((attr::STATUS.to_string(), Some(status.to_string())));
    }
    if current_to != to {
        out.push((attr::ASSIGNED_TO.to_string(), to));
    }
    // The note changes only with the assignment itself.
    if !out.is_empty() && a.get(attr::ASSIGNMENT_NOTE) != note.as_ref() {
        out.push((attr::ASSIGNMENT_NOTE.to_string(), note));
    }
    out
}

fn set_or_remove(rec: &mut StoredRecord, a: &str, v: Option<String>, prov: &Provenance) {
    match v {
        Some(v) => {
            rec.a.insert(a.to_string(), v);
            rec.p.insert(a.to_string(), prov.clone());
        }
        None => {
            rec.a.remove(a);
            rec.p.remove(a);
        }
    }
}

/// A page's records split as the register takes them: the kept ones (one per key, see
/// `dedupe_page`), the duplicates, and the over-long keys skipped with their reason. Records
/// without a key were already skipped by the fetcher.
pub(crate) fn page_keys(
    records: &[MappedRecord],
) -> (Vec<MappedRecord>, Vec<MappedRecord>, Vec<RecordError>) {
    let mut keyed = Vec::new();
    let mut too_long = Vec::new();
    for r in records {
        match &r.key {
            None => {}
            Some(k) if k.len() > MAX_KEY_BYTES => too_long.push(RecordError {
                key: k.chars().take(40).collect::<String>() + "…",
                reason: format!(
                    "key is {} bytes long; the register accepts keys up to {MAX_KEY_BYTES}",
                    k.len()
                ),
            }),
            Some(_) => keyed.push(r.clone()),
        }
    }
    let (kept, dups) = dedupe_page(keyed);
    (kept, dups, too_long)
}

/// One history entry.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub at: String,
    pub connection: String,
    pub run_id: String,
    pub action: String,
    pub changes: Vec<Change>,
}

/// How a history entry is stored. A create's entry sets every attribute from nothing: those are
/// kept as one map of attribute → value (`set`), a quarter of the attributes of a change list
/// (each change is a map of three). Other entries, and entries stored before, keep the list.
#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryRepr {
    at: String,
    connection: String,
    run_id: String,
    action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, String>,
}

impl HistoryEntry {
    /// The entry as a table item (see [`HistoryRepr`]).
    pub fn to_item(&self, pk: &str, sk: &str) -> Result<Item, AwsError> {
        // Only a list in attribute order with no old value reads back as the same list.
        let as_set = !self.changes.is_empty()
            && self.changes.iter().all(|c| c.old.is_none())
            && self.changes.windows(2).all(|w| w[0].attr < w[1].attr);
        let (changes, set) = if as_set {
            let set = self.changes.iter().map(|c| (c.attr.clone(), c.new.clone()));
            (Vec::new(), set.collect())
        } else {
            (self.changes.clone(), BTreeMap::new())
        };
        let repr = HistoryRepr {
            at: self.at.clone(),
            connection: self.connection.clone(),
            run_id: self.run_id.clone(),
            action: self.action.clone(),
            changes,
            set,
        };
        to_item(pk, sk, &repr)
    }

    /// An entry read from the table, in either stored form.
    pub fn from_item(item: Item) -> Result<HistoryEntry, AwsError> {
        let r: HistoryRepr = crate::store::from_item(item)?;
        let mut changes = r.changes;
        changes.extend(r.set.into_iter().map(|(attr, new)| Change {
            attr,
            old: None,
            new,
        }));
        Ok(HistoryEntry {
            at: r.at,
            connection: r.connection,
            run_id: r.run_id,
            action: r.action,
            changes,
        })
    }
}

pub fn history_item(
    ot: ObjectType,
    key: &str,
    ts: &str,
    w: &Writer<'_>,
    page_id: &str,
    action: &str,
    changes: &[Change],
) -> Result<Item, AwsError> {
    let entry = HistoryEntry {
        at: ts.to_string(),
        connection: w.connection.to_string(),
        run_id: w.run_id.to_string(),
        action: action.to_string(),
        changes: changes.to_vec(),
    };
    entry.to_item(
        &record_pk(ot.as_str(), key),
        &format!("H#{ts}#{}#{page_id}#{action}", w.run_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(changes: Vec<Change>) -> HistoryEntry {
        HistoryEntry {
            at: "2026-12-03T10:00:00Z".into(),
            connection: "jamf-prod".into(),
            run_id: "run1".into(),
            action: "created".into(),
            changes,
        }
    }

    fn change(attr: &str, old: Option<&str>, new: &str) -> Change {
        Change {
            attr: attr.into(),
            old: old.map(str::to_string),
            new: new.into(),
        }
    }

    #[test]
    fn history_entries_read_back_as_written_in_either_form() {
        let created = entry(vec![
            change("Model", None, "Mac mini"),
            change("Name", None, "Bob's Mac mini"),
        ]);
        let item = created.to_item("R#Hardware#C02", "H#x").expect("item");
        assert!(item.contains_key("set") && !item.contains_key("changes"));
        assert_eq!(HistoryEntry::from_item(item).expect("read"), created);

        // Old values, or an order the map would not keep: the list as it is.
        for changes in [
            vec![change("Name", Some("a"), "b"), change("Model", None, "c")],
            vec![change("Name", None, "b"), change("Model", None, "c")],
        ] {
            let e = entry(changes);
            let item = e.to_item("R#Hardware#C02", "H#x").expect("item");
            assert!(!item.contains_key("set"));
            assert_eq!(HistoryEntry::from_item(item).expect("read"), e);
        }

        // An entry stored before (a list, no `set`) reads as before.
        let item = crate::store::to_item("R#Hardware#C02", "H#x", &created).expect("old");
        assert_eq!(HistoryEntry::from_item(item).expect("read old"), created);
    }
}
