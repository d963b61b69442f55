//! The guards on "missing", end to end through the real handlers, moto and the simulators: the
//! grace period (`config:missing_after`, default 2 complete runs), a record several connections
//! report, and the circuit breaker (`config:max_drop`, default 20%) with its one-off override.

use assetsync::console::{self, RecordView};
use assetsync::plan::Plan;
use assetsync::summary::Status;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::{json, Value};

async fn jamf(h: &Harness, computers: usize, secret: &str) -> anyhow::Result<JamfSim> {
    let sim = JamfSim::start(JamfConfig {
        computers,
        seed: 7,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret(secret, &sim.secret()).await?;
    Ok(sim)
}

/// A record as `assets get --json` shows it (with when each connection last saw it).
async fn view(h: &Harness, key: &str) -> anyhow::Result<RecordView> {
    let rec = h
        .record("Hardware", key)
        .await?
        .expect("the record is kept");
    let mut v = RecordView::from(&rec);
    console::presence(&h.store, &mut v).await?;
    Ok(v)
}

fn source<'a>(v: &'a RecordView, connection: &str) -> &'a console::SourceView {
    v.sources
        .iter()
        .find(|s| s.connection == connection)
        .expect("the connection is a source of the record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_absent_from_one_complete_run_is_not_marked_from_two_it_is() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let sim = jamf(&h, 120, "assetsync/jamf-g").await?;
    let ev = event("jamf-g", "jamf", "assetsync/jamf-g", "Hardware");
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let gone = (0..sim.computer_count())
        .find_map(|i| sim.serial(i).map(|s| (i, s)))
        .expect("a keyed computer");
    let back = (gone.0 + 1..sim.computer_count())
        .find_map(|i| sim.serial(i).map(|s| (i, s)))
        .expect("another keyed computer");
    // Removing the later index first keeps the earlier one in place.
    let back_raw = sim.remove_computer(back.0);
    sim.remove_computer(gone.0);

    // One complete run without them: not marked, and the record says so.
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, 0, "{s:?}");
    let v = view(&h, &gone.1).await?;
    assert!(!v.missing, "{v:?}");
    let src = source(&v, "jamf-g");
    assert_eq!(src.missing_since, None, "{v:?}");
    assert_eq!(src.absent_runs, Some(1), "{v:?}");
    assert!(src.last_seen.is_some(), "when jamf-g last saw it: {v:?}");

    // One of them comes back: its count starts over.
    let k = sim.add_computer();
    sim.set_field(
        k,
        "hardware.serialNumber",
        back_raw["hardware"]["serialNumber"].clone(),
    );
    // Two complete runs without the other: marked (once).
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 1, "{s:?}");
    let v = view(&h, &gone.1).await?;
    assert!(v.missing, "{v:?}");
    assert!(source(&v, "jamf-g").missing_since.is_some(), "{v:?}");
    assert_eq!(v.missing_from, vec!["jamf-g".to_string()]);
    let b = view(&h, &back.1).await?;
    assert!(!b.missing, "{b:?}");
    assert_eq!(source(&b, "jamf-g").absent_runs, None, "{b:?}");

    // The returned one goes again: a fresh grace, not marked after one run.
    let idx = (0..sim.computer_count())
        .find(|i| sim.serial(*i).as_deref() == Some(back.1.as_str()))
        .expect("it is back");
    sim.remove_computer(idx);
    let s = h.sync(&ev).await?;
    assert_eq!(
        s.counts.missing, 0,
        "a repeated absence starts a new grace: {s:?}"
    );
    assert_eq!(
        source(&view(&h, &back.1).await?, "jamf-g").absent_runs,
        Some(1)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_jamf_drops_but_intune_still_reports_is_not_missing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let jsim = jamf(&h, 40, "assetsync/jamf-both").await?;
    let isim = IntuneSim::start(IntuneConfig {
        devices: 20,
        users: 10,
        ..IntuneConfig::default()
    })
    .await?;
    h.put_secret("assetsync/intune-both", &isim.secret())
        .await?;
    let (ji, serial) = (0..jsim.computer_count())
        .find_map(|i| jsim.serial(i).map(|s| (i, s)))
        .expect("a keyed computer");
    // Intune manages the same machine.
    isim.set_field(0, "serialNumber", json!(serial));
    let mut jev = event("jamf-both", "jamf", "assetsync/jamf-both", "Hardware");
    let mut iev = event("intune-both", "intune", "assetsync/intune-both", "Hardware");
    jev["mapping"] = json!("config:missing_after=1");
    iev["mapping"] = json!("config:missing_after=1");
    h.sync(&jev).await?;
    h.sync(&iev).await?;
    let v = view(&h, &serial).await?;
    assert_eq!(v.reported_by.len(), 2, "{v:?}");

    // Jamf drops it; Intune still reports it: not missing.
    jsim.remove_computer(ji);
    let s = h.sync(&jev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, 0, "{s:?}");
    let v = view(&h, &serial).await?;
    assert!(!v.missing, "{v:?}");
    assert_eq!(v.reported_by, vec!["intune-both".to_string()], "{v:?}");
    assert_eq!(v.missing_from, vec!["jamf-both".to_string()], "{v:?}");
    assert!(
        source(&v, "intune-both").last_seen.is_some(),
        "when Intune last saw it: {v:?}"
    );
    assert!(source(&v, "jamf-both").last_seen.is_some(), "{v:?}");
    let text = console::format_view(&v);
    assert!(text.contains("still reported by intune-both"), "{text}");

    // Intune drops it too: now it is missing, counted by the run that made it so.
    isim.remove_device(0);
    let s = h.sync(&iev).await?;
    assert_eq!(s.counts.missing, 1, "{s:?}");
    let v = view(&h, &serial).await?;
    assert!(v.missing && v.reported_by.is_empty(), "{v:?}");
    Ok(())
}

async fn plan_of(h: &Harness, ev: &Value) -> anyhow::Result<Plan> {
    let mut p = ev.clone();
    p["action"] = json!("plan");
    Ok(serde_json::from_value(h.invoke_fetcher(p).await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_holds_a_30_percent_drop_and_the_override_releases_it() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 100, "assetsync/jamf-cb").await?;
    let ev = event("jamf-cb", "jamf", "assetsync/jamf-cb", "Hardware");
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.records_fetched, 100);

    // The source loses 30% of its fleet (the later indexes first, so the earlier stay put).
    let mut gone = Vec::new();
    for i in (0..30).rev() {
        if let Some(s) = sim.serial(i) {
            gone.push(s);
        }
        sim.remove_computer(i);
    }
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::SucceededWithErrors, "{s:?}");
    assert_eq!(s.counts.missing, 0, "{s:?}");
    let msg = s.message.clone().unwrap_or_default();
    assert!(
        msg.contains("100") && msg.contains("70") && msg.contains("30.0%"),
        "the run names the drop: {msg}"
    );
    for k in &gone {
        assert!(h.record("Hardware", k).await?.unwrap().src["jamf-cb"]
            .missing
            .is_none());
    }

    // The next sync, without the override, would still be held (the baseline stays at 100)...
    let p = plan_of(&h, &ev).await?;
    assert_eq!(p.guard.breaker, "tripped", "{:?}", p.guard);
    assert_eq!(p.guard.baseline, Some(100));
    assert!(p.mark_missing.is_empty(), "{:?}", p.mark_missing);
    assert_eq!(p.absent.len(), gone.len(), "{:?}", p.absent);
    assert!(p
        .absent
        .iter()
        .all(|a| a.state == "held" && a.absent_runs == 2));
    // ...and with it, would mark them: absent from two complete runs (the held one counts as
    // a run they were absent from; it only marked nothing).
    let mut over = ev.clone();
    over["allow_drop"] = json!(true);
    let p = plan_of(&h, &over).await?;
    assert_eq!(p.guard.breaker, "overridden");
    assert_eq!(p.counts.missing, gone.len() as u64, "{p:?}");

    let s = h.sync(&over).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.missing, gone.len() as u64, "{s:?}");
    for k in &gone {
        assert!(h.record("Hardware", k).await?.unwrap().src["jamf-cb"]
            .missing
            .is_some());
    }
    // One-off: the next sync has no override and needs none (70 is the new baseline).
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.message, None, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_guard_setting_is_refused_at_the_start() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let _sim = jamf(&h, 5, "assetsync/jamf-bad").await?;
    let mut ev = event("jamf-bad", "jamf", "assetsync/jamf-bad", "Hardware");
    ev["mapping"] = json!("config:missing_after=zero");
    let e = h.invoke_fetcher(ev).await.expect_err("refused");
    assert!(e.to_string().contains("missing_after=zero"), "{e}");
    Ok(())
}
