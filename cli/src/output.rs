//! Human output: run summaries, the runs table, JSON printing.

use std::io::Write;

use assetsync::console::{one_line, table};
use assetsync::summary::RunSummary;
use chrono::DateTime;
use serde::Serialize;

/// Print one JSON document on stdout.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// A JSON list written to stdout one element at a time (the register streamed page by page),
/// so the output is the same document [`json`] would print for the whole list.
pub struct JsonListWriter {
    count: usize,
}

impl JsonListWriter {
    /// Start a list (nothing is written until the first element or [`JsonListWriter::finish`]).
    pub fn new() -> Self {
        JsonListWriter { count: 0 }
    }

    /// Write one element.
    pub fn push<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(v)?;
        let indented = text.replace('\n', "\n  ");
        let mut out = std::io::stdout().lock();
        let sep = if self.count == 0 { "[\n  " } else { ",\n  " };
        write!(out, "{sep}{indented}")?;
        self.count += 1;
        Ok(())
    }

    /// Close the list.
    pub fn finish(self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.count == 0 {
            writeln!(out, "[]")?;
        } else {
            writeln!(out, "\n]")?;
        }
        out.flush()?;
        Ok(())
    }
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. A value
/// that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return; device names and user fields come from vendors and end users) gets a
/// leading `'`, as OWASP's CSV-injection advice says, so opening the export runs nothing.
pub fn csv_field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        return format!("\"'{}\"", s.replace('"', "\"\""));
    }
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Records as CSV: `key`, then one column per attribute any record has (`preferred` first, in
/// that order, then the rest by name), then `sources` and `missing_from` (`;`-separated).
pub fn records_csv(preferred: &[&str], records: &[assetsync::register::StoredRecord]) -> String {
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for r in records {
        names.extend(r.a.keys().map(String::as_str));
    }
    let mut cols: Vec<&str> = preferred
        .iter()
        .copied()
        .filter(|c| names.contains(c))
        .collect();
    cols.extend(names.iter().copied().filter(|n| !preferred.contains(n)));
    let mut out = String::new();
    let mut header = vec!["key".to_string()];
    header.extend(cols.iter().map(|c| csv_field(c)));
    header.push("sources".into());
    header.push("missing_from".into());
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for r in records {
        let mut row = vec![csv_field(&r.key)];
        for c in &cols {
            row.push(csv_field(r.a.get(*c).map(String::as_str).unwrap_or("")));
        }
        let sources: Vec<&str> = r.src.keys().map(String::as_str).collect();
        let missing: Vec<&str> = r
            .src
            .iter()
            .filter(|(_, s)| s.missing.is_some())
            .map(|(c, _)| c.as_str())
            .collect();
        row.push(csv_field(&sources.join(";")));
        row.push(csv_field(&missing.join(";")));
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Seconds between two RFC 3339 times.
pub fn seconds_between(start: &str, end: Option<&str>) -> Option<i64> {
    let s = DateTime::parse_from_rfc3339(start).ok()?;
    let e = DateTime::parse_from_rfc3339(end?).ok()?;
    Some((e - s).num_seconds())
}

/// What a revert did (or would do), for people: its counts and its conflicts.
pub fn revert_text(of: &str, r: &assetsync::summary::RevertCounts) -> String {
    let mut out = format!(
        "reverts     {of}\nrevert      records {}  updated {} ({} attributes restored)  unmarked {}  re-marked missing {}  marked reverted {}  unreverted {}  conflicts {}\n",
        r.records, r.updated, r.restored, r.unmarked, r.remarked, r.reverted, r.unreverted, r.conflicts
    );
    if !r.conflict_list.is_empty() {
        out.push_str(&format!("conflicts, left alone ({}):\n", r.conflicts));
        for c in &r.conflict_list {
            out.push_str(&format!("  {}: {}\n", one_line(&c.key), c.reason));
        }
        if (r.conflict_list.len() as u64) < r.conflicts {
            out.push_str(&format!(
                "  … and {} more\n",
                r.conflicts - r.conflict_list.len() as u64
            ));
        }
    }
    out
}

/// A revert's records for people: one row per change it makes, then its conflicts.
pub fn revert_plan_text(r: &assetsync::revert::RevertReport) -> String {
    let verb = if r.planned {
        "would revert"
    } else {
        "reverted"
    };
    let mut out = format!(
        "{verb} run {} of {}: {} record(s) changed, {} conflict(s)\n",
        r.reverts, r.connection, r.counts.records, r.counts.conflicts
    );
    let rows: Vec<Vec<String>> = r
        .records
        .iter()
        .flat_map(|rec| {
            rec.changes.iter().map(move |c| {
                vec![
                    rec.key.clone(),
                    c.attr.clone(),
                    one_line(c.old.as_deref().unwrap_or("-")),
                    if c.new.is_empty() {
                        "(none)".to_string()
                    } else {
                        one_line(&c.new)
                    },
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(&["key", "attribute", "now", "put back"], &rows));
    }
    if r.planned {
        out.push_str(&revert_text(&r.reverts, &r.counts));
    }
    out
}

/// A run summary for people. `max_errors`: how many errors to list (`None`: all).
pub fn summary_text(s: &RunSummary, max_errors: Option<usize>) -> String {
    let mut out = String::new();
    let c = &s.counts;
    out.push_str(&format!("run         {}\n", s.run_id));
    out.push_str(&format!(
        "connection  {} ({}, {}, {})\n",
        s.connection, s.source, s.object_type, s.mode
    ));
    out.push_str(&format!("status      {}\n", s.status.as_str()));
    let took = seconds_between(&s.started_at, s.finished_at.as_deref())
        .map(|x| format!(" ({x} s)"))
        .unwrap_or_default();
    out.push_str(&format!(
        "started     {}   finished {}{}\n",
        s.started_at,
        s.finished_at.as_deref().unwrap_or("-"),
        took
    ));
    out.push_str(&format!(
        "pages       fetched {}, imported {}, dead-lettered {}\n",
        s.pages.fetched, s.pages.imported, s.pages.dead
    ));
    let total = s
        .vendor_total
        .map(|t| format!(" of {t} the vendor reported"))
        .unwrap_or_default();
    out.push_str(&format!(
        "records     fetched {}{}\n",
        s.records_fetched, total
    ));
    out.push_str(&format!(
        "counts      created {}  updated {}  unchanged {}  skipped {}  not found {}  missing {}  duplicate {}  errors {}\n",
        c.created, c.updated, c.unchanged, c.skipped, c.not_found, c.missing, c.duplicate, c.errors
    ));
    out.push_str(&format!(
        "vendor      {} requests, {} throttled ({} ms waited)\n",
        s.vendor_requests, s.throttled, s.throttle_wait_ms
    ));
    if let Some(m) = &s.message {
        out.push_str(&format!("message     {m}\n"));
    }
    if let Some(r) = &s.revert {
        out.push_str(&revert_text(s.reverts.as_deref().unwrap_or("-"), r));
    }
    if !s.errors.is_empty() {
        let shown = max_errors.unwrap_or(usize::MAX).min(s.errors.len());
        out.push_str(&format!(
            "errors and skipped records ({}):\n",
            s.errors.len()
        ));
        for e in &s.errors[..shown] {
            out.push_str(&format!("  {}: {}\n", one_line(&e.key), e.reason));
        }
        if shown < s.errors.len() {
            out.push_str(&format!(
                "  … and {} more (`assetsync runs show {}` lists all)\n",
                s.errors.len() - shown,
                s.run_id
            ));
        }
    }
    out
}

/// The runs table (the columns local-sync.sh's final summary shows), with each run's health mark (`stuck`, `abandoned`) beside its status.
pub fn runs_table_marked(runs: &[RunSummary], health: &[Option<&str>]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = &s.counts;
            let status = match health.get(i).copied().flatten() {
                Some(h) => format!("{} ({h})", s.status.as_str()),
                None => s.status.as_str().to_string(),
            };
            vec![
                s.connection.clone(),
                s.source.clone(),
                s.object_type.clone(),
                status,
                c.created.to_string(),
                c.updated.to_string(),
                c.unchanged.to_string(),
                c.skipped.to_string(),
                c.duplicate.to_string(),
                c.missing.to_string(),
                c.errors.to_string(),
                seconds_between(&s.started_at, s.finished_at.as_deref())
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.run_id.clone(),
            ]
        })
        .collect();
    table(
        &[
            "connection",
            "source",
            "type",
            "status",
            "created",
            "updated",
            "unchanged",
            "skipped",
            "duplicate",
            "missing",
            "errors",
            "seconds",
            "run",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn csv_fields_that_a_spreadsheet_would_run_are_defused() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_field("+1"), "\"'+1\"");
        assert_eq!(csv_field("-2"), "\"'-2\"");
        assert_eq!(csv_field("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_field("\tcmd"), "\"'\tcmd\"");
        assert_eq!(csv_field("C02X-1"), "C02X-1");
    }
    use assetsync::summary::{Counts, Pages, RecordError, Status};

    fn summary() -> RunSummary {
        RunSummary {
            run_id: "r1".into(),
            connection: "jamf-prod".into(),
            source: "jamf".into(),
            status: Status::SucceededWithErrors,
            started_at: "2024-06-20T09:00:00Z".into(),
            finished_at: Some("2024-06-20T09:00:12Z".into()),
            pages: Pages {
                fetched: 5,
                imported: 5,
                dead: 0,
            },
            counts: Counts {
                created: 3,
                errors: 1,
                ..Default::default()
            },
            errors: vec![
                RecordError {
                    key: "C02".into(),
                    reason: "boom".into(),
                },
                RecordError {
                    key: "C03".into(),
                    reason: "bang".into(),
                },
            ],
            object_type: "Hardware".into(),
            mode: "create-update".into(),
            records_fetched: 4,
            vendor_total: Some(4),
            vendor_requests: 3,
            throttled: 0,
            throttle_wait_ms: 0,
            message: None,
            served_by: None,
            reverts: None,
            revert: None,
        }
    }

    #[test]
    fn summary_lists_errors() {
        let t = summary_text(&summary(), Some(1));
        assert!(t.contains("succeeded_with_errors"), "{t}");
        assert!(t.contains("(12 s)"), "{t}");
        assert!(t.contains("C02: boom") && !t.contains("C03"), "{t}");
        assert!(t.contains("and 1 more"), "{t}");
        assert!(summary_text(&summary(), None).contains("C03: bang"));
    }

    #[test]
    fn table_has_the_columns() {
        let t = runs_table_marked(&[summary()], &[Some("stuck")]);
        let header = t.lines().next().unwrap();
        for c in [
            "connection",
            "source",
            "type",
            "status",
            "created",
            "updated",
            "unchanged",
            "skipped",
            "duplicate",
            "missing",
            "errors",
            "seconds",
        ] {
            assert!(header.contains(c), "{header}");
        }
        assert!(t.lines().nth(2).unwrap().contains("12"), "{t}");
        assert!(t.contains("(stuck)"), "a stuck run is marked: {t}");
    }
}

/// A plan for people: what a sync would do now, then each list as a table.
pub fn plan_text(p: &assetsync::plan::Plan) -> String {
    let c = &p.counts;
    let total = p
        .vendor_total
        .map(|t| format!(" (the vendor reports {t})"))
        .unwrap_or_default();
    let mut out = format!(
        "plan of {} ({}, {}, {}): {} records fetched in {} page(s){total}; nothing was written\n",
        p.connection, p.source, p.object_type, p.mode, p.records_fetched, p.pages
    );
    if let Some(r) = &p.running {
        out.push_str(&format!(
            "note: the connection has a run in progress ({}, started {}); the register may change before it ends\n",
            r.run_id, r.started_at
        ));
    }
    out.push_str(&format!(
        "a sync now would: create {}  update {}  leave unchanged {}  skip {}  not find {}  mark missing {}  duplicate {}\n",
        c.created, c.updated, c.unchanged, c.skipped, c.not_found, c.missing, c.duplicate
    ));
    let g = &p.guard;
    out.push_str(&format!(
        "guards: missing after {} complete run(s); breaker {} (max drop {}, baseline {}){}\n",
        g.missing_after,
        g.breaker,
        g.max_drop_percent
            .map(|d| format!("{d}%"))
            .unwrap_or_else(|| "off".into()),
        g.baseline
            .map(|b| b.to_string())
            .unwrap_or_else(|| "none yet".into()),
        if g.allow_drop { ", allow_drop" } else { "" }
    ));
    if let Some(m) = &p.message {
        out.push_str(&format!("{}\n", one_line(m)));
    }
    if !p.create.is_empty() {
        out.push_str(&format!("\ncreate ({}):\n", p.create.len()));
        let rows: Vec<Vec<String>> = p
            .create
            .iter()
            .map(|r| {
                let attrs: Vec<String> = r
                    .attributes
                    .iter()
                    .map(|(a, v)| format!("{a}={}", one_line(v)))
                    .collect();
                vec![r.key.clone(), attrs.join("; ")]
            })
            .collect();
        out.push_str(&table(&["key", "attributes"], &rows));
    }
    if !p.update.is_empty() {
        out.push_str(&format!("\nupdate ({}):\n", p.update.len()));
        let mut rows = Vec::new();
        for u in &p.update {
            if u.changes.is_empty() {
                rows.push(vec![
                    u.key.clone(),
                    "(source entry)".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
            for ch in &u.changes {
                rows.push(vec![
                    u.key.clone(),
                    ch.attr.clone(),
                    one_line(ch.old.as_deref().unwrap_or("-")),
                    one_line(&ch.new),
                ]);
            }
        }
        out.push_str(&table(&["key", "attribute", "old", "new"], &rows));
    }
    if !p.mark_missing.is_empty() {
        out.push_str(&format!("\nmark missing ({}):\n", p.mark_missing.len()));
        let rows: Vec<Vec<String>> = p
            .mark_missing
            .iter()
            .map(|m| {
                vec![
                    m.key.clone(),
                    if m.still_reported_by.is_empty() {
                        "missing (no connection reports it)".into()
                    } else {
                        format!(
                            "not missing: still reported by {}",
                            m.still_reported_by.join(", ")
                        )
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["key", "then"], &rows));
    }
    if !p.unmark_missing.is_empty() {
        out.push_str(&format!(
            "\nunmark (reported again, {}): {}\n",
            p.unmark_missing.len(),
            p.unmark_missing.join(", ")
        ));
    }
    if !p.absent.is_empty() {
        out.push_str(&format!("\nabsent, not marked ({}):\n", p.absent.len()));
        let rows: Vec<Vec<String>> = p
            .absent
            .iter()
            .map(|a| vec![a.key.clone(), a.absent_runs.to_string(), a.state.clone()])
            .collect();
        out.push_str(&table(&["key", "absent runs", "why"], &rows));
    }
    if !p.skipped.is_empty() {
        out.push_str(&format!("\nskipped ({}):\n", p.skipped.len()));
        let rows: Vec<Vec<String>> = p
            .skipped
            .iter()
            .map(|s| vec![s.key.clone(), one_line(&s.reason)])
            .collect();
        out.push_str(&table(&["key", "reason"], &rows));
    }
    out
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use assetsync::plan::{Plan, PlannedMissing, PlannedUpdate, RunningRun};
    use assetsync::register::Change;

    #[test]
    fn a_plan_reads_as_what_a_sync_would_do() {
        let mut p = Plan {
            connection: "jamf-prod".into(),
            source: "jamf".into(),
            object_type: "Hardware".into(),
            mode: "create-update".into(),
            records_fetched: 10,
            pages: 1,
            running: Some(RunningRun {
                run_id: "r9".into(),
                started_at: "t".into(),
            }),
            ..Default::default()
        };
        p.counts.updated = 1;
        p.update.push(PlannedUpdate {
            key: "C02".into(),
            changes: vec![Change {
                attr: "OS Version".into(),
                old: Some("14.5".into()),
                new: "15.0".into(),
            }],
        });
        p.mark_missing.push(PlannedMissing {
            key: "C03".into(),
            still_reported_by: vec!["intune-prod".into()],
        });
        let t = plan_text(&p);
        assert!(
            t.contains("nothing was written") && t.contains("update 1"),
            "{t}"
        );
        assert!(
            t.contains("OS Version") && t.contains("14.5") && t.contains("15.0"),
            "{t}"
        );
        assert!(t.contains("still reported by intune-prod"), "{t}");
        assert!(t.contains("run in progress (r9"), "{t}");
    }
}
