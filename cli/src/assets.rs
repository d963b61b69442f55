//! `assets list|get|set|history`.

use anyhow::anyhow;
use assetsync::console::{self, format_history, one_line, table, ConsoleError, RecordView};
use assetsync::error::chain;
use assetsync::event::ObjectType;
use assetsync::register::{attr, StoredRecord};
use serde_json::json;

use crate::output;
use crate::target::Target;
use crate::{AssetsCmd, Global};

fn object_type(s: &str) -> anyhow::Result<ObjectType> {
    ObjectType::parse(s).ok_or_else(|| {
        anyhow!("unknown record type {s:?}: use Hardware, Person or Software (any case)")
    })
}

fn console_err(e: ConsoleError) -> anyhow::Error {
    anyhow!("{}", chain(&e))
}

pub async fn run(g: &Global, cmd: AssetsCmd) -> anyhow::Result<()> {
    // Check arguments before reaching for the stack.
    let ot = match &cmd {
        AssetsCmd::List { object_type: t, .. }
        | AssetsCmd::Get { object_type: t, .. }
        | AssetsCmd::Set { object_type: t, .. }
        | AssetsCmd::History { object_type: t, .. } => object_type(t)?,
    };
    if let AssetsCmd::Set { assignments, .. } = &cmd {
        console::parse_assignments(assignments).map_err(console_err)?;
    }
    let target = Target::resolve(g).await?;
    let store = target.store();
    match cmd {
        AssetsCmd::List {
            limit, after, csv, ..
        } => {
            let after = after.as_deref();
            if g.json {
                // Streamed page by page: a bare JSON list on stdout, as before, now complete.
                let mut out = output::JsonListWriter::new();
                let next = console::scan_records(&store, ot, limit, after, |r| {
                    out.push(&RecordView::from(&r))
                        .map_err(|e| ConsoleError::Argument(format!("writing the output: {e}")))
                })
                .await
                .map_err(console_err)?;
                out.finish()?;
                if let Some(k) = next {
                    eprintln!("{}", json!({ "next": k }));
                }
                return Ok(());
            }
            let limit = if csv {
                limit
            } else {
                Some(limit.unwrap_or(50))
            };
            let mut records = Vec::new();
            let next = console::scan_records(&store, ot, limit, after, |r| {
                records.push(r);
                Ok(())
            })
            .await
            .map_err(console_err)?;
            if csv {
                print!("{}", output::records_csv(columns(ot), &records));
            } else if records.is_empty() {
                eprintln!("no {ot} records");
            } else {
                records.sort_by(|a, b| a.key.cmp(&b.key));
                print!("{}", list_table(ot, &records));
            }
            if let Some(k) = next {
                eprintln!(
                    "next: {k}  (stopped after {} records; --after {k:?} for the rest, or a larger --limit)",
                    records.len()
                );
            }
            Ok(())
        }
        AssetsCmd::Get { key, .. } => {
            // The live view: check-in times move in the page packs, not in the record.
            let rec = console::get_live_record(&store, ot, &key)
                .await
                .map_err(console_err)?
                .ok_or_else(|| {
                    console_err(ConsoleError::NotFound {
                        object_type: ot,
                        key: key.clone(),
                    })
                })?;
            let mut view = RecordView::from(&rec);
            console::presence(&store, &mut view)
                .await
                .map_err(console_err)?;
            if g.json {
                return output::json(&view);
            }
            print!("{}", console::format_view(&view));
            Ok(())
        }
        AssetsCmd::Set {
            key, assignments, ..
        } => {
            let edits = console::parse_assignments(&assignments).map_err(console_err)?;
            let outcome = console::hand_edit(&store, ot, &key, &edits)
                .await
                .map_err(console_err)?;
            if g.json {
                return output::json(
                    &json!({"record": RecordView::from(&outcome.record), "change": outcome.entry}),
                );
            }
            let rec = &outcome.record;
            match &outcome.entry {
                None => println!(
                    "{ot} {}: nothing changed (already set by hand to those values)",
                    rec.key
                ),
                Some(e) => {
                    println!("{ot} {} (version {}):", rec.key, rec.ver);
                    for c in &e.changes {
                        if rec
                            .p
                            .get(&c.attr)
                            .is_some_and(|p| p.c == assetsync::register::HAND)
                        {
                            let old = c
                                .old
                                .as_deref()
                                .map(one_line)
                                .unwrap_or_else(|| "(unset)".into());
                            println!(
                                "  {}: {old} -> {}  (hand edit: runs keep it)",
                                c.attr,
                                one_line(&c.new)
                            );
                        } else {
                            println!("  {}: released to the sources (value {:?} kept until a source writes it)", c.attr, c.new);
                        }
                    }
                }
            }
            Ok(())
        }
        AssetsCmd::History { key, .. } => {
            let found = console::get_record(&store, ot, &key)
                .await
                .map_err(console_err)?;
            let real_key = found
                .as_ref()
                .map(|r| r.key.clone())
                .unwrap_or_else(|| console::normalise_key(ot, &key));
            let entries = console::history(&store, ot, &real_key)
                .await
                .map_err(console_err)?;
            if found.is_none() && entries.is_empty() {
                return Err(console_err(ConsoleError::NotFound {
                    object_type: ot,
                    key,
                }));
            }
            if g.json {
                return output::json(&entries);
            }
            if entries.is_empty() {
                println!("{ot} {real_key}: no changes recorded");
            } else {
                print!("{}", format_history(&entries));
            }
            Ok(())
        }
    }
}

/// The columns `assets list` shows per type: the first few of these that any record has.
fn columns(ot: ObjectType) -> &'static [&'static str] {
    match ot {
        ObjectType::Hardware => &[
            attr::ASSET_TAG,
            attr::ASSET_NAME,
            attr::MODEL,
            attr::CATEGORY,
            attr::STATUS,
            attr::ASSIGNED_TO,
        ],
        ObjectType::Person => &[
            attr::EMAIL,
            attr::DISPLAY_NAME,
            attr::FIRST_NAME,
            attr::LAST_NAME,
            attr::STATUS,
            "Department",
        ],
        ObjectType::Software => &[attr::NAME, "Version", "Device Serial", "Bundle ID"],
    }
}

fn list_table(ot: ObjectType, records: &[StoredRecord]) -> String {
    let cols: Vec<&str> = columns(ot)
        .iter()
        .copied()
        .filter(|c| records.iter().any(|r| r.a.contains_key(*c)))
        .collect();
    let mut headers = vec!["key"];
    headers.extend(cols.iter().copied());
    headers.push("sources");
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut row = vec![r.key.clone()];
            for c in &cols {
                row.push(
                    r.a.get(*c)
                        .map(|v| one_line(v))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            let sources: Vec<String> = r
                .src
                .iter()
                .map(|(c, s)| {
                    if s.missing.is_some() {
                        format!("{c} (missing)")
                    } else {
                        c.clone()
                    }
                })
                .collect();
            row.push(sources.join(", "));
            row
        })
        .collect();
    table(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_any_case() {
        assert_eq!(object_type("hardware").unwrap(), ObjectType::Hardware);
        assert_eq!(object_type("PERSON").unwrap(), ObjectType::Person);
        let e = object_type("laptop").unwrap_err().to_string();
        assert!(e.contains("laptop") && e.contains("Hardware"), "{e}");
    }

    #[test]
    fn list_shows_present_columns() {
        let mut r = StoredRecord {
            object_type: "Hardware".into(),
            key: "C02".into(),
            ..Default::default()
        };
        r.a.insert(attr::ASSET_TAG.into(), "AS-000001".into());
        r.src.insert("jamf-prod".into(), Default::default());
        let t = list_table(ObjectType::Hardware, &[r]);
        let header = t.lines().next().unwrap();
        assert!(
            header.contains("Asset Tag") && !header.contains("Model"),
            "{t}"
        );
        assert!(t.contains("AS-000001") && t.contains("jamf-prod"), "{t}");
    }
}
