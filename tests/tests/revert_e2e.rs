//! `assetsync runs revert`, end to end through the real handlers, moto and the Jamf simulator: a
//! run that changed 3 devices, marked 5 missing and created one is undone (except a value a
//! person edited since, reported as a conflict), the revert is a run of the audit log, a revert
//! of the revert redoes the run, `--plan` writes nothing, and the next sync re-applies the
//! source's values.

use std::collections::BTreeMap;

use assetsync::console;
use assetsync::event::ObjectType;
use assetsync::mapping::DEFAULT_VOLATILE;
use assetsync::register::StoredRecord;
use assetsync::revert;
use assetsync_tests::cli::{assetsync_bin, temp_dir, write_stack_file};
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::Value;

/// Complete runs a device must be absent from before a run marks it missing (this follows
/// the grace period's default, `config:missing_after`, which is 2).
const ABSENT_RUNS: usize = 2;
const CONN: &str = "jamf-rv";

/// Attributes and source entries of every record, by key; volatile attributes (check-in times,
/// which move without being a change) are left out.
type State = BTreeMap<String, (BTreeMap<String, String>, Value)>;

async fn state(h: &Harness) -> anyhow::Result<State> {
    Ok(h.all_records("Hardware")
        .await?
        .into_iter()
        .map(|r: StoredRecord| {
            let a =
                r.a.into_iter()
                    .filter(|(k, _)| !DEFAULT_VOLATILE.contains(&k.as_str()))
                    .collect();
            (r.key, (a, serde_json::to_value(&r.src).unwrap_or_default()))
        })
        .collect())
}

/// Missing marks by key (what the state before the run is compared on, besides attributes:
/// the run rewrote the source entries' run and check-in of the devices it changed).
fn missing_of(s: &State) -> BTreeMap<String, bool> {
    s.iter()
        .map(|(k, (_, src))| (k.clone(), !src[CONN]["missing"].is_null()))
        .collect()
}

fn writes(h: &Harness) -> u64 {
    let c = h.ddb.get();
    [
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
    ]
    .iter()
    .map(|op| c.op(op))
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_undone_and_redone_and_the_next_sync_reapplies_the_source() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 40,
        seed: 11,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-rv", &sim.secret()).await?;
    let ev = event(CONN, "jamf", "assetsync/jamf-rv", "Hardware");
    let s0 = h.sync(&ev).await?;
    assert_eq!(s0.status.as_str(), "succeeded", "{s0:?}");

    let keyed: Vec<(usize, String)> = (0..sim.computer_count())
        .filter_map(|i| sim.serial(i).map(|s| (i, s)))
        .collect();
    let changed: Vec<(usize, String)> = keyed[..3].to_vec();
    let removed: Vec<(usize, String)> = keyed[keyed.len() - 5..].to_vec();
    // Highest index first: removing shifts the ones after it.
    for (i, _) in removed.iter().rev() {
        sim.remove_computer(*i);
    }
    // Absent runs before the one that marks (none while a single absent run marks).
    for _ in 0..ABSENT_RUNS.saturating_sub(1) {
        h.sync(&ev).await?;
    }
    let before = state(&h).await?;

    // The run to undo: 3 devices change, 5 are marked missing, 1 is created.
    for (n, (i, _)) in changed.iter().enumerate() {
        sim.set_os_version(*i, &format!("99.{n}"));
    }
    let added = sim.add_computer();
    let added_serial = sim.serial(added).expect("the new computer's serial");
    let run = h.sync(&ev).await?;
    assert_eq!(run.status.as_str(), "succeeded", "{run:?}");
    assert_eq!(
        (run.counts.updated, run.counts.missing, run.counts.created),
        (3, 5, 1),
        "{run:?}"
    );
    // A person edits one of the changed values since.
    let edited = changed[0].1.clone();
    console::hand_edit(
        &h.store,
        ObjectType::Hardware,
        &edited,
        &[("OS Version".to_string(), "Pinned 1".to_string())],
    )
    .await?;
    let after = state(&h).await?;

    // --plan: what the revert would do, and not one write.
    h.ddb.reset();
    let plan = revert::plan(&h.runs, &run.run_id).await?;
    assert_eq!(
        writes(&h),
        0,
        "DynamoDB requests of a plan: {:?}",
        h.ddb.get().by_op
    );
    assert!(plan.planned && plan.run_id.is_none());
    let c = &plan.counts;
    assert_eq!(
        (c.updated, c.restored, c.unmarked, c.reverted, c.conflicts),
        (2, 2, 5, 1, 1),
        "{c:?}"
    );
    assert!(
        c.conflict_list
            .iter()
            .any(|x| x.key == edited && x.reason.contains("hand")),
        "{c:?}"
    );
    assert_eq!(state(&h).await?, after, "the plan changed nothing");

    // The revert: the register as before the run, except the person's value.
    let rv = revert::revert(&h.runs, &run.run_id).await?;
    assert_eq!(rv.counts.records, plan.counts.records, "{:?}", rv.counts);
    assert_eq!(rv.counts.conflicts, 1);
    let rv_id = rv.run_id.clone().expect("the revert's run id");
    let now = state(&h).await?;
    for (key, (attrs, _)) in &before {
        let (got, _) = &now[key];
        if *key == edited {
            assert_eq!(got["OS Version"], "Pinned 1", "the hand edit stays");
            let mut want = attrs.clone();
            want.insert("OS Version".into(), "Pinned 1".into());
            assert_eq!(*got, want, "{key}");
        } else {
            assert_eq!(got, attrs, "{key} is as before the run");
        }
    }
    let mut now_missing = missing_of(&now);
    let created = h
        .record("Hardware", &added_serial)
        .await?
        .expect("a created record is not deleted");
    assert!(
        created.rv.as_ref().is_some_and(|r| r.of == run.run_id),
        "{:?}",
        created.rv
    );
    assert!(!created.src.contains_key(CONN), "no longer fed by the run");
    assert!(created.a.contains_key("Asset Tag"), "it keeps its tag");
    now_missing.remove(&added_serial);
    assert_eq!(now_missing, missing_of(&before), "the 5 are unmarked");

    // The revert is a run of the audit log, with its counts.
    let item = h.runs.get(&rv_id).await?.expect("the revert run");
    let summary = h.runs.summary(&item).await?;
    assert_eq!(summary.status.as_str(), "succeeded", "{summary:?}");
    assert_eq!(summary.reverts.as_deref(), Some(run.run_id.as_str()));
    let rc = summary.revert.clone().expect("revert counts");
    assert_eq!((rc.unmarked, rc.reverted, rc.restored), (5, 1, 2), "{rc:?}");
    assert!(h.runs.list(10).await?.iter().any(|r| r.run_id == rv_id));
    let hist = console::history(&h.store, ObjectType::Hardware, &changed[1].1).await?;
    assert!(
        hist.iter()
            .any(|e| e.run_id == rv_id && e.action == "reverted"),
        "{hist:?}"
    );

    // A revert of the revert: the run's values again (the person's value still stands).
    let rv2 = revert::revert(&h.runs, &rv_id).await?;
    let rc2 = &rv2.counts;
    assert_eq!(
        (rc2.restored, rc2.remarked, rc2.unreverted, rc2.conflicts),
        (2, 5, 1, 0),
        "{rc2:?}"
    );
    assert_eq!(state(&h).await?, after, "as the run left it");
    let rv2_id = rv2.run_id.clone().expect("run id");

    // Undo once more, then sync: the source's values where they still differ are applied again,
    // the absent devices are marked again and the created one is fed by its connection again.
    revert::revert(&h.runs, &rv2_id).await?;
    // The unmarked devices have been absent from enough complete runs already (the revert lifts
    // the mark, not the absence count), so the first sync marks them again.
    let next = h.sync(&ev).await?;
    assert_eq!(next.counts.missing, 5, "{next:?}");
    assert!(next.counts.updated >= 3, "{next:?}");
    let end = state(&h).await?;
    for (n, (_, key)) in changed.iter().enumerate().skip(1) {
        assert_eq!(end[key].0["OS Version"], format!("99.{n}"), "{key}");
    }
    assert_eq!(end[&edited].0["OS Version"], "Pinned 1");
    let created = h.record("Hardware", &added_serial).await?.unwrap();
    assert!(created.rv.is_none() && created.src.contains_key(CONN));
    Ok(())
}

/// Run the CLI against the harness's stack; (exit success, stdout).
fn cli(stack_file: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = assetsync_tests::cli::run(stack_file, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_plans_and_reverts_a_run() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(assetsync_bin).await?;
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 20,
        seed: 3,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-rvc", &sim.secret()).await?;
    let ev = event("jamf-rvc", "jamf", "assetsync/jamf-rvc", "Hardware");
    h.sync(&ev).await?;
    let (i, serial) = (0..sim.computer_count())
        .find_map(|i| sim.serial(i).map(|s| (i, s)))
        .expect("a computer with a serial");
    let old = h.record("Hardware", &serial).await?.unwrap().a["OS Version"].clone();
    sim.set_os_version(i, "42.0");
    let run = h.sync(&ev).await?;
    assert_eq!(run.counts.updated, 1, "{run:?}");

    let stack = write_stack_file(&h, &temp_dir("revert"));

    let (ok, text) =
        tokio::task::block_in_place(|| cli(&stack, &["runs", "revert", &run.run_id, "--plan"]));
    assert!(
        ok && text.contains("would revert") && text.contains("42.0"),
        "{text}"
    );
    let (ok, out) = tokio::task::block_in_place(|| {
        cli(&stack, &["--json", "runs", "revert", &run.run_id, "--plan"])
    });
    let plan: Value = serde_json::from_str(&out)?;
    assert!(ok, "{out}");
    assert_eq!(plan["revert"]["counts"]["restored"], 1, "{plan}");
    assert!(plan["summary"].is_null(), "a plan is no run: {plan}");
    assert_eq!(
        h.record("Hardware", &serial).await?.unwrap().a["OS Version"],
        "42.0"
    );

    let (ok, out) =
        tokio::task::block_in_place(|| cli(&stack, &["--json", "runs", "revert", &run.run_id]));
    assert!(ok, "{out}");
    let done: Value = serde_json::from_str(&out)?;
    assert_eq!(done["summary"]["reverts"], run.run_id.as_str(), "{done}");
    assert_eq!(done["summary"]["revert"]["restored"], 1, "{done}");
    assert_eq!(done["summary"]["status"], "succeeded", "{done}");
    assert_eq!(
        h.record("Hardware", &serial).await?.unwrap().a["OS Version"],
        old
    );
    // Reverting a run that does not exist fails clearly.
    let (ok, _) = tokio::task::block_in_place(|| cli(&stack, &["runs", "revert", "no-such-run"]));
    assert!(!ok);
    // While a sync of the connection is in progress, a revert starts nothing (exit 3, as sync).
    h.invoke_fetcher(ev.clone()).await?;
    let code = tokio::task::block_in_place(|| {
        assetsync_tests::cli::command(&stack)
            .args(["runs", "revert", &run.run_id])
            .status()
            .map(|s| s.code())
    })?;
    assert_eq!(code, Some(3));
    assert_eq!(
        h.record("Hardware", &serial).await?.unwrap().a["OS Version"],
        old,
        "nothing was written"
    );
    Ok(())
}
