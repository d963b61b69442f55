//! The importer: one SQS message is one page of mapped records; it reads the current records in
//! batches, writes only what changed, and counts the page into its run exactly once.

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use tracing::Instrument;

use crate::error::{chain, AwsError, SyncError};
use crate::event::{ObjectType, PageMessage};
use crate::infer;
use crate::mapping::MappedRecord;
use crate::normalize;
use crate::register::{
    attr, decide, dedupe_page, Change, Decision, Provenance, SourceRef, StoredRecord, Writer,
};
use crate::runs::{member_item, now, PageMarker, Runs};
use crate::settings::Settings;
use crate::store::{record_pk, to_item, EmailEntry, Item, PersonRef, Store};
use crate::summary::{Counts, RecordError};

/// What the importer is built from, once per cold start.
pub struct Importer {
    pub settings: Settings,
    pub store: Store,
    pub runs: Runs,
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
        let results: Vec<(String, bool)> = futures::stream::iter(event.records)
            .map(|m| async move {
                let id = m.message_id.clone().unwrap_or_default();
                let ok = self.handle_message(&m).await;
                (id, ok)
            })
            .buffer_unordered(self.settings.importer_concurrency.max(1))
            .collect()
            .await;
        let mut resp = SqsBatchResponse::default();
        for (id, ok) in results {
            if !ok {
                resp.add_failure(id);
            }
        }
        resp
    }

    /// Handle one message; returns whether it may be deleted.
    pub async fn handle_message(&self, m: &SqsMessage) -> bool {
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
                return false;
            }
        };
        let span =
            tracing::info_span!("page", run_id = %msg.run_id, page = %msg.page_id(), receives);
        match self.import_page(&msg).instrument(span).await {
            Ok(()) => true,
            Err(e) => {
                let reason = chain(&e);
                tracing::error!(error = %reason, "page import failed");
                if receives >= self.settings.max_receive_count {
                    // Last try: the page goes to the DLQ; the run must say so and still end.
                    if let Err(e2) = self.mark_dead(&msg, &reason).await {
                        tracing::error!(error = %chain(&e2), "could not record the dead page");
                    }
                }
                false
            }
        }
    }

    async fn mark_dead(&self, msg: &PageMessage, reason: &str) -> Result<(), AwsError> {
        let page_id = msg.page_id();
        let marker = PageMarker {
            status: "planned".into(),
            counts: Counts::default(),
            errors: vec![RecordError {
                key: format!("page {page_id}"),
                reason: format!("dead-lettered after repeated failures: {reason}"),
            }],
            seen: vec![],
            at: now(),
        };
        let plan = self.runs.plan(&msg.run_id, &page_id, &marker).await?;
        if plan.status == "planned" {
            // Whatever was planned, a dead page counts no records: they are redriven later.
            let dead = PageMarker {
                counts: Counts::default(),
                errors: marker.errors.clone(),
                ..plan
            };
            self.runs
                .complete_page(&msg.run_id, &page_id, &dead, true)
                .await?;
        }
        self.runs.try_finish(&msg.run_id).await?;
        Ok(())
    }

    /// Import one page (idempotent: a redelivered page changes nothing and counts nothing).
    pub async fn import_page(&self, msg: &PageMessage) -> Result<(), SyncError> {
        let page_id = msg.page_id();
        if self.runs.get(&msg.run_id).await?.is_none() {
            // A hand-made or stray page: its records are still worth importing, but there is no
            // run to count them into (and no marker, so nothing pretends it was counted).
            tracing::warn!(run_id = %msg.run_id, "page of an unknown run: importing its records without counting them");
            return self.import_uncounted(msg).await;
        }
        let existing = self.runs.marker(&msg.run_id, &page_id).await?;
        if existing.as_ref().is_some_and(|m| m.status != "planned") {
            self.runs.try_finish(&msg.run_id).await?;
            return Ok(());
        }
        let ot = msg.object_type;
        let (kept, dups) = dedupe_page(
            msg.records
                .iter()
                .filter(|r| r.key.is_some())
                .cloned()
                .collect(),
        );
        let keys: Vec<String> = kept.iter().filter_map(|r| r.key.clone()).collect();
        let stored = self.store.records(ot.as_str(), &keys).await?;
        let precedence = self.settings.precedence.clone();
        let writer = Writer {
            connection: &msg.connection,
            source: msg.source.as_str(),
            run_id: &msg.run_id,
            mode: msg.mode,
            object_type: ot,
            precedence: &precedence,
        };

        let mut counts = Counts {
            skipped: msg.skipped.len() as u64,
            duplicate: dups.len() as u64,
            ..Default::default()
        };
        let mut errors: Vec<RecordError> = msg.skipped.clone();
        let mut decisions = Vec::with_capacity(kept.len());
        for r in &kept {
            let d = decide(r, r.key.as_ref().and_then(|k| stored.get(k)), &writer);
            decisions.push(d);
        }
        let emails = self.load_emails(ot, &kept, &decisions, &stored).await?;
        // Assignment can turn an otherwise unchanged device into an update; decide it before counting.
        let mut plans: Vec<(MappedRecord, Decision, Option<StoredRecord>)> = Vec::new();
        for (r, d) in kept.into_iter().zip(decisions) {
            let key = r.key.clone().unwrap_or_default();
            let cur = stored.get(&key).cloned();
            let d = match (d, &cur) {
                (Decision::Unchanged, Some(c)) if ot == ObjectType::Hardware => {
                    let merged = c.a.clone();
                    let a = assignment_changes(&merged, c, &emails, &writer);
                    if a.is_empty() {
                        Decision::Unchanged
                    } else {
                        Decision::Update {
                            changes: vec![],
                            src_changed: false,
                            duplicate: false,
                        }
                    }
                }
                (d, _) => d,
            };
            match &d {
                Decision::Create => counts.created += 1,
                Decision::Update {
                    duplicate: true, ..
                } => counts.duplicate += 1,
                Decision::Update { .. } => counts.updated += 1,
                Decision::Unchanged => counts.unchanged += 1,
                Decision::NotFound => counts.not_found += 1,
                Decision::Duplicate => counts.duplicate += 1,
            }
            plans.push((r, d, cur));
        }
        let seen: Vec<String> = keys
            .iter()
            .cloned()
            .chain(dups.iter().filter_map(|d| d.key.clone()))
            .collect();

        let plan = match existing {
            Some(p) => p,
            None => {
                let marker = PageMarker {
                    status: "planned".into(),
                    counts,
                    errors: errors.clone(),
                    seen,
                    at: now(),
                };
                self.runs.plan(&msg.run_id, &page_id, &marker).await?
            }
        };

        crate::failpoint::hit("importer.after_plan")?;
        // Apply. Writes converge: a retry re-reads and re-decides, so nothing is written twice.
        let mut history: Vec<Item> = Vec::new();
        let mut members: Vec<Item> = Vec::new();
        let email_updates: std::sync::Mutex<BTreeMap<String, EmailEntry>> =
            std::sync::Mutex::new(BTreeMap::new());
        let creates = plans
            .iter()
            .filter(|(_, d, _)| *d == Decision::Create)
            .count() as u64;
        let first_tag = if creates > 0 && ot == ObjectType::Hardware {
            self.store.take_sequence("asset_tag", creates).await?
        } else {
            0
        };
        let ts = now();
        // Records of a page are independent: write them with bounded concurrency.
        let mut tag = first_tag;
        let jobs: Vec<_> = plans
            .into_iter()
            .map(|(r, d, cur)| {
                let t = tag;
                if d == Decision::Create {
                    tag += 1;
                }
                (r, d, cur, t)
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(jobs)
            .map(|(r, d, cur, t)| {
                let (writer, emails, email_updates, ts, page_id) =
                    (&writer, &emails, &email_updates, &ts, &page_id);
                async move {
                    let res = self
                        .apply(&r, d, cur, writer, emails, email_updates, t, ts, page_id)
                        .await;
                    (r, res)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let email_updates = email_updates
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        for (r, res) in results {
            let key = r.key.clone().unwrap_or_default();
            match res {
                Ok(Some((changes, member, action))) => {
                    if !changes.is_empty() {
                        history.push(history_item(
                            ot, &key, &ts, &writer, &page_id, action, &changes,
                        )?);
                    }
                    if member {
                        members.push(member_item(&msg.connection, ot.as_str(), &key)?);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // A record that cannot be written is an error of the run, not of the page.
                    errors.push(RecordError {
                        key: key.clone(),
                        reason: chain(&e),
                    });
                }
            }
        }
        self.store.batch_put(history).await?;
        self.store.batch_put(members).await?;
        let mut email_items = Vec::new();
        for (email, entry) in email_updates {
            email_items.push(to_item(&format!("E#{email}"), "#", &entry)?);
        }
        self.store.batch_put(email_items).await?;

        let mut final_plan = plan;
        let new_errors: Vec<RecordError> = errors
            .into_iter()
            .filter(|e| !final_plan.errors.contains(e))
            .collect();
        if !new_errors.is_empty() && final_plan.status == "planned" {
            // Records that failed to write move from their planned outcome to `errors`.
            let failed = new_errors.len() as u64;
            final_plan.counts.errors += failed;
            take_from_outcomes(&mut final_plan.counts, failed);
            final_plan.errors.extend(new_errors);
        }
        crate::failpoint::hit("importer.after_writes")?;
        let counted = self
            .runs
            .complete_page(&msg.run_id, &page_id, &final_plan, false)
            .await?;
        crate::failpoint::hit("importer.after_count")?;
        tracing::info!(
            counted,
            created = final_plan.counts.created,
            updated = final_plan.counts.updated,
            unchanged = final_plan.counts.unchanged,
            "page imported"
        );
        self.runs.try_finish(&msg.run_id).await?;
        Ok(())
    }

    async fn import_uncounted(&self, msg: &PageMessage) -> Result<(), SyncError> {
        let (kept, _) = dedupe_page(
            msg.records
                .iter()
                .filter(|r| r.key.is_some())
                .cloned()
                .collect(),
        );
        let keys: Vec<String> = kept.iter().filter_map(|r| r.key.clone()).collect();
        let stored = self.store.records(msg.object_type.as_str(), &keys).await?;
        let precedence = self.settings.precedence.clone();
        let w = Writer {
            connection: &msg.connection,
            source: msg.source.as_str(),
            run_id: &msg.run_id,
            mode: msg.mode,
            object_type: msg.object_type,
            precedence: &precedence,
        };
        let decisions: Vec<Decision> = kept
            .iter()
            .map(|r| decide(r, r.key.as_ref().and_then(|k| stored.get(k)), &w))
            .collect();
        let emails = self
            .load_emails(msg.object_type, &kept, &decisions, &stored)
            .await?;
        let updates = std::sync::Mutex::new(BTreeMap::new());
        let creates = decisions.iter().filter(|d| **d == Decision::Create).count() as u64;
        let mut tag = if creates > 0 && msg.object_type == ObjectType::Hardware {
            self.store.take_sequence("asset_tag", creates).await?
        } else {
            0
        };
        let ts = now();
        let mut history = Vec::new();
        for (r, d) in kept.iter().zip(decisions) {
            let key = r.key.clone().unwrap_or_default();
            let is_create = d == Decision::Create;
            if let Some((changes, _, action)) = self
                .apply(
                    r,
                    d,
                    stored.get(&key).cloned(),
                    &w,
                    &emails,
                    &updates,
                    tag,
                    &ts,
                    "uncounted",
                )
                .await?
            {
                history.push(history_item(
                    msg.object_type,
                    &key,
                    &ts,
                    &w,
                    "uncounted",
                    action,
                    &changes,
                )?);
            }
            if is_create {
                tag += 1;
            }
        }
        self.store.batch_put(history).await?;
        Ok(())
    }

    /// Read the email index entries this page needs: people's emails (to index them and resolve
    /// waiting devices) and devices' user emails whose assignment is not settled.
    async fn load_emails(
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
        let keys: Vec<(String, String)> = wanted
            .iter()
            .map(|e| (format!("E#{e}"), "#".to_string()))
            .collect();
        let items = self.store.batch_get(&keys).await?;
        let mut out = HashMap::new();
        for e in wanted {
            let entry = match items.get(&(format!("E#{e}"), "#".to_string())) {
                Some(i) => crate::store::from_item(i.clone())?,
                None => EmailEntry::default(),
            };
            out.insert(e, entry);
        }
        Ok(out)
    }

    /// Write one record's decision. Returns the changes made, whether the membership item must be
    /// written, and the history action; `None` when nothing was written.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        r: &MappedRecord,
        mut d: Decision,
        mut cur: Option<StoredRecord>,
        w: &Writer<'_>,
        emails: &HashMap<String, EmailEntry>,
        email_updates: &std::sync::Mutex<BTreeMap<String, EmailEntry>>,
        tag_no: u64,
        ts: &str,
        page_id: &str,
    ) -> Result<Option<(Vec<Change>, bool, &'static str)>, SyncError> {
        let ot = w.object_type;
        let key = r.key.clone().unwrap_or_default();
        for _attempt in 0..6 {
            let prov = Provenance {
                c: w.connection.to_string(),
                s: w.source.to_string(),
                t: ts.to_string(),
                r: w.run_id.to_string(),
            };
            let src = SourceRef {
                id: r.source_id.clone(),
                ci: r.checked_in.clone(),
                run: w.run_id.to_string(),
                missing: None,
            };
            match (&d, &cur) {
                (Decision::Create, _) => {
                    let mut rec = StoredRecord {
                        object_type: ot.as_str().into(),
                        key: key.clone(),
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
                    rec.src.insert(w.connection.to_string(), src.clone());
                    if ot == ObjectType::Hardware {
                        let created = self.created_once(&rec.a, emails, w, tag_no);
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
                        self.index_person(&rec, None, emails, &mut lock(email_updates));
                    }
                    if self.store.create_record(&rec).await? {
                        let changes = rec
                            .a
                            .iter()
                            .map(|(a, v)| Change {
                                attr: a.clone(),
                                old: None,
                                new: v.clone(),
                            })
                            .collect();
                        if ot == ObjectType::Person {
                            self.assign_waiting(&rec, email_updates, w, ts, page_id)
                                .await?;
                        }
                        return Ok(Some((changes, true, "created")));
                    }
                    // Someone created it meanwhile: decide again against what is there.
                    cur = self.store.record(ot.as_str(), &key).await?;
                    d = decide(r, cur.as_ref(), w);
                }
                (Decision::Update { .. } | Decision::Unchanged, Some(c)) => {
                    let mut rec = c.clone();
                    let mut changes = Vec::new();
                    if let Decision::Update {
                        changes: cs,
                        src_changed,
                        ..
                    } = &d
                    {
                        for ch in cs {
                            rec.a.insert(ch.attr.clone(), ch.new.clone());
                            rec.p.insert(ch.attr.clone(), prov.clone());
                            changes.push(ch.clone());
                        }
                        if *src_changed || !cs.is_empty() {
                            rec.src.insert(w.connection.to_string(), src.clone());
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
                        self.index_person(&rec, Some(c), emails, &mut lock(email_updates));
                    }
                    let src_written = rec.src != c.src;
                    if changes.is_empty() && !src_written {
                        return Ok(None);
                    }
                    let was_missing = c.src.get(w.connection).is_some_and(|s| s.missing.is_some());
                    if was_missing {
                        changes.push(Change {
                            attr: format!("missing from {}", w.connection),
                            old: c.src.get(w.connection).and_then(|s| s.missing.clone()),
                            new: String::new(),
                        });
                    }
                    let expected = rec.ver;
                    rec.ver += 1;
                    if self.store.replace_record(&rec, expected).await? {
                        let member = !c.src.contains_key(w.connection) || was_missing;
                        if ot == ObjectType::Person {
                            self.assign_waiting(&rec, email_updates, w, ts, page_id)
                                .await?;
                        }
                        return Ok(Some((changes, member, "updated")));
                    }
                    cur = self.store.record(ot.as_str(), &key).await?;
                    d = decide(r, cur.as_ref(), w);
                }
                (Decision::Update { .. } | Decision::Unchanged, None) => {
                    // It vanished (deleted by hand) between read and write: create it again if allowed.
                    d = decide(r, None, w);
                }
                (Decision::NotFound | Decision::Duplicate, _) => return Ok(None),
            }
        }
        Err(SyncError::Other(format!(
            "record {key} kept changing under concurrent writers; gave up after 6 tries"
        )))
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
        let e = updates.entry(email).or_insert_with(|| entry.clone());
        e.waiting.insert(rec.key.clone(), true);
    }

    /// Keep the email index in step with a person record.
    fn index_person(
        &self,
        rec: &StoredRecord,
        old: Option<&StoredRecord>,
        emails: &HashMap<String, EmailEntry>,
        updates: &mut BTreeMap<String, EmailEntry>,
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
        entry
            .persons
            .insert(rec.key.clone(), PersonRef { status, name });
    }

    /// A person became available: assign the devices that were waiting for them.
    async fn assign_waiting(
        &self,
        person: &StoredRecord,
        updates: &std::sync::Mutex<BTreeMap<String, EmailEntry>>,
        w: &Writer<'_>,
        ts: &str,
        page_id: &str,
    ) -> Result<(), SyncError> {
        let Some(email) = person.a.get(attr::EMAIL).and_then(|e| normalize::email(e)) else {
            return Ok(());
        };
        let Some(entry) = lock(updates).get(&email).cloned() else {
            return Ok(());
        };
        if entry.active().is_none() || entry.waiting.is_empty() {
            return Ok(());
        }
        let one = HashMap::from([(email.clone(), entry.clone())]);
        let mut history = Vec::new();
        for hw in entry.waiting.keys() {
            for _ in 0..5 {
                let Some(mut dev) = self.store.record(ObjectType::Hardware.as_str(), hw).await?
                else {
                    break;
                };
                let hw_writer = Writer {
                    object_type: ObjectType::Hardware,
                    ..w.clone()
                };
                let snapshot = dev.a.clone();
                let changes = assignment_changes(&snapshot, &dev, &one, &hw_writer);
                if changes.is_empty() {
                    break;
                }
                let prov = Provenance {
                    c: w.connection.to_string(),
                    s: w.source.to_string(),
                    t: ts.to_string(),
                    r: w.run_id.to_string(),
                };
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
                    break;
                }
            }
        }
        self.store.batch_put(history).await?;
        if let Some(e) = lock(updates).get_mut(&email) {
            e.waiting.clear();
        }
        Ok(())
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The assignment a device should have, as changes to make (`None` removes the attribute).
fn assignment_changes(
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

/// Move `n` records from their planned outcomes to errors (created/updated first).
fn take_from_outcomes(c: &mut Counts, mut n: u64) {
    for f in [
        &mut c.created,
        &mut c.updated,
        &mut c.unchanged,
        &mut c.not_found,
    ] {
        let t = n.min(*f);
        *f -= t;
        n -= t;
    }
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
    to_item(
        &record_pk(ot.as_str(), key),
        &format!("H#{ts}#{}#{page_id}#{action}", w.run_id),
        &entry,
    )
}
