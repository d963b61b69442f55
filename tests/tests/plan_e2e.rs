//! `action: plan` end to end (the real fetcher, moto, the Jamf simulator): a plan's counts and
//! attribute diffs equal what the sync that follows does, and the plan writes nothing.

use std::collections::BTreeMap;

use assetsync::event::ConnectionEvent;
use assetsync::plan::Plan;
use assetsync::summary::{Counts, RunSummary, Status};
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::{json, Value};

const WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

/// Plan `ev` and check that it wrote nothing to DynamoDB.
async fn plan(h: &Harness, ev: &Value) -> anyhow::Result<Plan> {
    let mut p = ev.clone();
    p["action"] = json!("plan");
    h.ddb.reset();
    let out = h.invoke_fetcher(p).await?;
    let c = h.ddb.get();
    let writes: u64 = WRITES.iter().map(|op| c.op(op)).sum();
    assert_eq!(writes, 0, "DynamoDB requests of a plan: {:?}", c.by_op);
    Ok(serde_json::from_value(out)?)
}

fn counts_of(c: &Counts) -> [u64; 7] {
    [
        c.created,
        c.updated,
        c.unchanged,
        c.skipped,
        c.not_found,
        c.missing,
        c.duplicate,
    ]
}

fn same_counts(p: &Plan, s: &RunSummary) {
    assert_eq!(
        counts_of(&p.counts),
        counts_of(&s.counts),
        "plan {:?} vs sync {:?}",
        p.counts,
        s.counts
    );
    assert_eq!(p.records_fetched, s.records_fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_equals_the_sync_that_follows_and_writes_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 150,
        seed: 11,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-plan", &sim.secret()).await?;
    let mut ev = event("jamf-plan", "jamf", "assetsync/jamf-plan", "Hardware");
    // Removals are marked after one complete run, so one sync shows them.
    ev["mapping"] = json!("config:missing_after=1");

    // A first sync.
    let p = plan(&h, &ev).await?;
    assert!(p.counts.created > 100, "{:?}", p.counts);
    assert_eq!(p.create.len() as u64, p.counts.created);
    assert!(p.running.is_none());
    assert!(
        h.all_records("Hardware").await?.is_empty(),
        "the plan created nothing"
    );
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    same_counts(&p, &s);

    // An unchanged one.
    let p = plan(&h, &ev).await?;
    assert!(p.create.is_empty() && p.update.is_empty() && p.mark_missing.is_empty());
    let s = h.sync(&ev).await?;
    same_counts(&p, &s);
    assert_eq!(s.counts.unchanged, p.counts.unchanged);

    // Changes and removals.
    let keyed: Vec<(usize, String)> = (0..sim.computer_count())
        .filter_map(|i| sim.serial(i).map(|s| (i, s)))
        .collect();
    let changed: Vec<&(usize, String)> = keyed.iter().skip(10).take(3).collect();
    for (i, _) in &changed {
        sim.set_os_version(*i, "99.1");
    }
    let removed = [keyed[1].1.clone(), keyed[0].1.clone()];
    let removed_raw = sim.remove_computer(keyed[1].0);
    sim.remove_computer(keyed[0].0);
    let before: BTreeMap<String, BTreeMap<String, String>> = {
        let mut m = BTreeMap::new();
        for (_, k) in &changed {
            m.insert(k.clone(), h.record("Hardware", k).await?.unwrap().a);
        }
        m
    };
    let p = plan(&h, &ev).await?;
    assert_eq!(p.update.len(), 3, "{:?}", p.update);
    let mut planned_missing: Vec<String> = p.mark_missing.iter().map(|m| m.key.clone()).collect();
    planned_missing.sort();
    let mut want = removed.to_vec();
    want.sort();
    assert_eq!(planned_missing, want);
    let s = h.sync(&ev).await?;
    same_counts(&p, &s);
    assert_eq!(s.counts.updated, 3, "{s:?}");
    assert_eq!(s.counts.missing, 2, "{s:?}");
    // Each planned change is the change the sync made: old value before, new value after.
    for u in &p.update {
        let after = h.record("Hardware", &u.key).await?.unwrap().a;
        let old = &before[&u.key];
        assert!(!u.changes.is_empty());
        for ch in &u.changes {
            assert_eq!(ch.old.as_ref(), old.get(&ch.attr), "{ch:?}");
            assert_eq!(Some(&ch.new), after.get(&ch.attr), "{ch:?}");
        }
        assert!(u
            .changes
            .iter()
            .any(|c| c.attr == "OS Version" && c.new == "99.1"));
        let history =
            assetsync::console::history(&h.store, assetsync::event::ObjectType::Hardware, &u.key)
                .await?;
        let last = history
            .iter()
            .rev()
            .find(|e| e.run_id == s.run_id)
            .expect("the run's history row");
        assert_eq!(last.changes, u.changes, "plan vs history of {}", u.key);
    }
    for k in &removed {
        assert!(h.record("Hardware", k).await?.unwrap().src["jamf-plan"]
            .missing
            .is_some());
    }

    // A removed device comes back: the plan says it would be unmarked, and the sync does.
    let k = sim.add_computer();
    sim.set_field(
        k,
        "hardware.serialNumber",
        removed_raw["hardware"]["serialNumber"].clone(),
    );
    let p = plan(&h, &ev).await?;
    assert_eq!(p.unmark_missing, vec![removed[0].clone()], "{p:?}");
    let s = h.sync(&ev).await?;
    same_counts(&p, &s);
    assert!(
        h.record("Hardware", &removed[0]).await?.unwrap().src["jamf-plan"]
            .missing
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_of_a_running_connection_says_so() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 20,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-busy", &sim.secret()).await?;
    let ev = event("jamf-busy", "jamf", "assetsync/jamf-busy", "Hardware");
    let parsed = ConnectionEvent::parse(ev.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = match h.runs.start(&parsed, "test-token").await? {
        assetsync::runs::Start::New(r) | assetsync::runs::Start::Resume(r) => r,
    };
    let p = plan(&h, &ev).await?;
    let running = p.running.expect("the plan names the running run");
    assert_eq!(running.run_id, run.run_id);
    assert_eq!(
        p.counts.created + p.counts.skipped + p.counts.duplicate,
        p.records_fetched
    );
    Ok(())
}
