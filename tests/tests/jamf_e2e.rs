//! The spine, end to end: Jamf Pro simulator → real fetcher → SQS (moto) → real importer →
//! DynamoDB (moto), with the template deployed into moto.

use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::Fault;
use serde_json::json;

async fn setup(computers: usize) -> anyhow::Result<(Harness, JamfSim, serde_json::Value)> {
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-e2e", &sim.secret()).await?;
    Ok((
        h,
        sim,
        event("jamf-e2e", "jamf", "assetsync/jamf-e2e", "Hardware"),
    ))
}

fn keyed(sim: &JamfSim) -> (usize, usize) {
    let all = sim.computer_count();
    let with = (0..all).filter(|i| sim.serial(*i).is_some()).count();
    (with, all - with)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_sync_unchanged_resync_and_one_change() -> anyhow::Result<()> {
    let (h, sim, ev) = setup(2500).await?;
    let (with_serial, without) = keyed(&sim);
    assert!(
        without > 0,
        "the simulated fleet should include devices without serial"
    );

    // First sync: every device with a serial created once; the others skipped.
    let s = h.sync(&ev).await?;
    println!("first sync: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(
        s.counts.created as usize,
        with_serial - s.counts.duplicate as usize
    );
    assert_eq!(s.counts.skipped as usize, without);
    assert_eq!(s.counts.errors, 0);
    assert_eq!(s.pages.fetched, s.pages.imported);
    let records = h.all_records("Hardware").await?;
    assert_eq!(records.len() as u64, s.counts.created);
    let mut tags: Vec<_> = records
        .iter()
        .filter_map(|r| r.a.get("Asset Tag").cloned())
        .collect();
    tags.sort();
    tags.dedup();
    assert_eq!(
        tags.len(),
        records.len(),
        "every record has its own asset tag"
    );

    // Second sync with no change: all unchanged, zero writes to register records.
    h.ddb.reset();
    let s2 = h.sync(&ev).await?;
    let c = h.ddb.get();
    println!(
        "unchanged sync: {} DynamoDB requests ({:?})",
        c.total(),
        c.by_op
    );
    assert_eq!(s2.counts.unchanged, s.counts.created, "{s2:?}");
    assert_eq!(s2.counts.created + s2.counts.updated, 0);
    assert_eq!(
        c.record_writes, 0,
        "an unchanged sync writes no register record"
    );

    // One OS version changes at the source: exactly one update.
    let i = (0..sim.computer_count())
        .find(|i| sim.serial(*i).is_some())
        .unwrap();
    sim.set_os_version(i, "15.9.1");
    let s3 = h.sync(&ev).await?;
    assert_eq!(s3.counts.updated, 1, "{s3:?}");
    let rec = h
        .record("Hardware", &sim.serial(i).unwrap())
        .await?
        .expect("record");
    assert_eq!(rec.a.get("OS Version").map(String::as_str), Some("15.9.1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_do_not_stop_a_sync() -> anyhow::Result<()> {
    let (h, sim, ev) = setup(3000).await?;
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control().inject_after(2, Fault::ServerError(500));
    sim.control().inject_after(3, Fault::ExpireTokens);
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let (with_serial, _) = keyed(&sim);
    assert_eq!(
        (s.counts.created + s.counts.duplicate) as usize,
        with_serial
    );
    assert!(s.throttled >= 1, "the 429 is counted in the run: {s:?}");
    let _ = json!({});
    Ok(())
}

/// Against a Jamf Pro 11.30 server (v4 current, v3 deprecated), the run reads v4 and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_run_reads_computers_inventory_v4_and_records_it() -> anyhow::Result<()> {
    let (h, sim, ev) = setup(60).await?;
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(
        s.served_by.as_deref(),
        Some("computers-inventory v4"),
        "{s:?}"
    );
    assert_eq!(sim.control().requests_to("/api/v3/"), 0);
    let shown = h
        .runs
        .summary(&h.runs.get(&s.run_id).await?.expect("run"))
        .await?;
    assert_eq!(shown.served_by.as_deref(), Some("computers-inventory v4"));
    // `sample` says it too.
    let mut sample = ev.clone();
    sample["action"] = json!("sample");
    let out = h.invoke_fetcher(sample).await?;
    assert_eq!(out["served_by"], "computers-inventory v4", "{out}");
    Ok(())
}

/// Jamf's `applications` section reaches `Software`, one record per computer × application,
/// linked to its computer by serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn computer_applications_sync_into_software_linked_to_computers() -> anyhow::Result<()> {
    let (h, sim, _) = setup(30).await?;
    let ev = event("jamf-apps", "jamf", "assetsync/jamf-e2e", "Software");
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let computers = sim.computers();
    let rows: usize = computers
        .iter()
        .map(|c| c["applications"].as_array().map_or(0, Vec::len))
        .sum();
    let keyed: usize = (0..computers.len())
        .filter(|i| sim.serial(*i).is_some())
        .map(|i| computers[i]["applications"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(s.records_fetched as usize, rows, "{s:?}");
    assert_eq!(
        (s.counts.created + s.counts.duplicate) as usize,
        keyed,
        "{s:?}"
    );
    assert_eq!(s.served_by.as_deref(), Some("computers-inventory v4"));
    let i = (0..computers.len())
        .find(|i| sim.serial(*i).is_some())
        .unwrap();
    let app = &computers[i]["applications"][0];
    let key = format!(
        "{}|{}",
        sim.serial(i).unwrap(),
        app["bundleId"].as_str().unwrap()
    );
    let rec = h.record("Software", &key).await?.expect("app record");
    assert_eq!(
        rec.a.get("Version").map(String::as_str),
        app["version"].as_str()
    );
    assert_eq!(
        rec.a.get("Device Serial").map(String::as_str),
        sim.serial(i).as_deref()
    );
    Ok(())
}
