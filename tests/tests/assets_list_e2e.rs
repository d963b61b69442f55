//! `assetsync assets list` as a script sees it (issue 8, at the console): `--json` carries every
//! record (it used to stop silently at 50), `--limit` says where it stopped with a `next` that
//! `--after` accepts, and `--csv` gives one row per record and one column per attribute.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Output;

use assetsync_tests::cli::{assetsync_bin, run, temp_dir, write_stack_file};
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::Value;

fn cli(stack_file: &Path, args: &[&str]) -> Output {
    let out = run(stack_file, args);
    assert!(
        out.status.success(),
        "assetsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn keys(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a bare JSON list")
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

/// The `next` a limited `--json` list printed on stderr.
fn next_of(out: &Output) -> Option<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["next"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_lists_every_record_and_limited_lists_resume_with_next() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(assetsync_bin).await?;
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 90,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-list", &sim.secret()).await?;
    let ev = event("jamf-list", "jamf", "assetsync/jamf-list", "Hardware");
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded");
    let stored: BTreeSet<String> = h
        .all_records("Hardware")
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(
        stored.len() > 50,
        "the fleet must outgrow the old silent 50: {}",
        stored.len()
    );

    let stack = write_stack_file(&h, &temp_dir("assets-list"));

    // --json: every record, as the same bare list scripts read today, and no `next`.
    let out =
        tokio::task::block_in_place(|| cli(&stack, &["--json", "assets", "list", "hardware"]));
    let all: Value = serde_json::from_slice(&out.stdout)?;
    let listed: BTreeSet<String> = keys(&all).into_iter().collect();
    assert_eq!(listed, stored);
    assert_eq!(keys(&all).len(), stored.len(), "no record twice");
    assert_eq!(next_of(&out), None);
    assert!(
        all[0]["attributes"].is_object() && all[0]["sources"].is_array(),
        "{}",
        all[0]
    );

    // --limit N: N records and a `next`; --after next goes on; together they are every record once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut calls = 0;
    loop {
        let mut args = vec!["--json", "assets", "list", "Hardware", "--limit", "17"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let out = tokio::task::block_in_place(|| cli(&stack, &args));
        let page: Value = serde_json::from_slice(&out.stdout)?;
        let ks = keys(&page);
        assert!(ks.len() <= 17);
        calls += 1;
        match next_of(&out) {
            Some(n) => {
                assert_eq!(ks.len(), 17, "a page that says `next` is full");
                assert_eq!(ks.last(), Some(&n), "next names the last record given");
                seen.extend(ks);
                after = Some(n);
            }
            None => {
                seen.extend(ks);
                break;
            }
        }
        assert!(calls < 20, "paging does not end");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice across pages");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), stored);

    // The table view keeps its 50 and now says where it stopped.
    let out = tokio::task::block_in_place(|| cli(&stack, &["assets", "list", "hardware"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("next: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --csv: a header, one row per record, the same column order every time.
    let out = tokio::task::block_in_place(|| cli(&stack, &["assets", "list", "hardware", "--csv"]));
    let text = String::from_utf8(out.stdout)?;
    let again = String::from_utf8(
        tokio::task::block_in_place(|| cli(&stack, &["assets", "list", "hardware", "--csv"]))
            .stdout,
    )?;
    let header = text.lines().next().unwrap().to_string();
    assert_eq!(again.lines().next().unwrap(), header, "stable column order");
    let cols: Vec<&str> = header.split(',').collect();
    assert_eq!(cols[0], "key");
    assert_eq!(&cols[cols.len() - 2..], &["sources", "missing_from"]);
    let attrs: BTreeSet<String> = all
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["attributes"].as_object().unwrap().keys().cloned())
        .collect();
    for a in &attrs {
        assert!(
            cols.iter().any(|c| c.trim_matches('"') == a),
            "no column for {a}: {header}"
        );
    }
    assert_eq!(
        cols.len(),
        attrs.len() + 3,
        "one column per attribute: {header}"
    );
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), stored.len(), "one row per record");
    let row_keys: BTreeSet<String> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().trim_matches('"').to_string())
        .collect();
    assert_eq!(row_keys, stored);
    Ok(())
}
