//! The register's promises (DESIGN.md "What a run writes"), end to end through the real handlers,
//! moto and the simulators.

use std::collections::HashMap;

use assetsync::console;
use assetsync::event::ObjectType;
use assetsync::register::Precedence;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use serde_json::json;

async fn jamf(h: &Harness, computers: usize, seed: u64, secret: &str) -> anyhow::Result<JamfSim> {
    let sim = JamfSim::start(JamfConfig {
        computers,
        seed,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret(secret, &sim.secret()).await?;
    Ok(sim)
}

fn keyed(sim: &JamfSim) -> Vec<(usize, String)> {
    (0..sim.computer_count())
        .filter_map(|i| sim.serial(i).map(|s| (i, s)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignment_created_once_update_only_and_history() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 300, 42, "assetsync/jamf-a").await?;
    let jc = JumpCloudSim::start(JumpCloudConfig {
        systems: 5,
        users: 200,
        ..JumpCloudConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jc", &jc.secret()).await?;

    // Devices first: no person exists yet, so every device is available and unassigned.
    let s = h
        .sync(&event("jamf-a", "jamf", "assetsync/jamf-a", "Hardware"))
        .await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let devices = h.all_records("Hardware").await?;
    assert!(devices
        .iter()
        .all(|d| d.a.get("Status").map(String::as_str) == Some("available")));
    // Created once, with care: unique asset tags from the sequence, a derived name, a category.
    let mut tags: Vec<&String> = devices
        .iter()
        .filter_map(|d| d.a.get("Asset Tag"))
        .collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), devices.len());
    assert!(
        tags.iter().all(|t| t.starts_with("AS-") && t.len() == 9),
        "{:?}",
        &tags[..3]
    );
    let with_user = devices
        .iter()
        .find(|d| d.a.contains_key("User Name") && d.a.contains_key("Model"))
        .expect("a device with a user");
    let first = with_user.a["User Name"]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        with_user.a["Asset Name"].starts_with(&format!("{first}'s ")),
        "{:?}",
        with_user.a
    );
    assert!(devices.iter().all(
        |d| ["laptop", "desktop", "phone", "tablet", "server", "other"]
            .contains(&d.a["Category"].as_str())
    ));
    assert!(devices.iter().any(|d| d.a["Category"] == "laptop"));

    // People arrive in a later run: their devices are assigned in that run, by email, case-insensitively.
    let sp = h
        .sync(&event("jc-people", "jumpcloud", "assetsync/jc", "Person"))
        .await?;
    assert_eq!(sp.status.as_str(), "succeeded", "{sp:?}");
    let active: HashMap<String, bool> = jc
        .users()
        .iter()
        .map(|u| {
            // Legacy users carry only the `suspended` flag.
            let active = u["state"] == json!("ACTIVATED")
                || (u.get("state").is_none() && u["suspended"] != json!(true));
            (
                u["email"].as_str().unwrap_or_default().to_lowercase(),
                active,
            )
        })
        .collect();
    let devices = h.all_records("Hardware").await?;
    let mut assigned = 0;
    for d in &devices {
        let email = d.a.get("User Email").map(|e| e.to_lowercase());
        let expect = email
            .as_ref()
            .and_then(|e| active.get(e))
            .copied()
            .unwrap_or(false);
        let status = d.a.get("Status").map(String::as_str);
        if expect {
            assigned += 1;
            assert_eq!(status, Some("assigned"), "{:?}", d.a);
            assert_eq!(d.a.get("Assigned To"), email.as_ref());
            assert!(
                d.a.get("Assignment Note")
                    .is_some_and(|n| n.contains("jamf-a") || n.contains("jc-people")),
                "{:?}",
                d.a
            );
        } else {
            assert_eq!(status, Some("available"), "{:?}", d.a);
            assert!(!d.a.contains_key("Assigned To"));
        }
    }
    assert!(
        assigned > 20,
        "many devices belong to active people: {assigned}"
    );
    // The asset tag is never changed by a later run.
    let tag_before = devices[0].a["Asset Tag"].clone();

    // A change is kept in the record's history.
    let (i, serial) = keyed(&sim)[0].clone();
    sim.set_os_version(i, "99.1");
    let s = h
        .sync(&event("jamf-a", "jamf", "assetsync/jamf-a", "Hardware"))
        .await?;
    assert_eq!(s.counts.updated, 1, "{s:?}");
    let hist = console::history(&h.store, ObjectType::Hardware, &serial).await?;
    let change = hist
        .iter()
        .flat_map(|e| e.changes.iter().map(move |c| (e, c)))
        .find(|(_, c)| c.attr == "OS Version" && c.new == "99.1")
        .expect("the OS change is in the history");
    assert_eq!(change.0.connection, "jamf-a");
    assert_eq!(change.0.run_id, s.run_id);
    assert!(change.1.old.is_some());
    assert!(hist.iter().any(|e| e.action == "created"));
    let again = h.record("Hardware", &devices[0].key).await?.unwrap();
    assert_eq!(again.a["Asset Tag"], tag_before);

    // Update-only mode updates known records and creates none.
    let other = jamf(&h, 60, 7, "assetsync/jamf-other").await?;
    let mut ev = event("jamf-other", "jamf", "assetsync/jamf-other", "Hardware");
    ev["mode"] = json!("update-only");
    let before = h.all_records("Hardware").await?.len();
    let s = h.sync(&ev).await?;
    let other_keyed = keyed(&other).len() as u64;
    assert_eq!(s.counts.created, 0, "{s:?}");
    assert_eq!(
        s.counts.not_found + s.counts.updated + s.counts.unchanged + s.counts.duplicate,
        other_keyed,
        "{s:?}"
    );
    assert!(s.counts.not_found > 0);
    assert_eq!(h.all_records("Hardware").await?.len(), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_devices_are_marked_and_unmarked() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 250, 42, "assetsync/jamf-m").await?;
    let mut ev = event("jamf-m", "jamf", "assetsync/jamf-m", "Hardware");
    // No grace: one complete run without a device marks it (the default waits for two).
    ev["mapping"] = json!("config:missing_after=1");
    h.sync(&ev).await?;
    let (i, serial) = keyed(&sim)[3].clone();
    let removed = sim.remove_computer(i);

    h.ddb.reset();
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 1, "{s:?}");
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert!(
        rec.src["jamf-m"].missing.is_some(),
        "marked missing with the date"
    );
    assert!(
        h.record("Hardware", &keyed(&sim)[0].1).await?.unwrap().src["jamf-m"]
            .missing
            .is_none()
    );
    let c = h.ddb.get();
    println!(
        "sweep run: {} requests, {} record writes ({:?})",
        c.total(),
        c.record_writes,
        c.by_op
    );
    assert!(
        c.record_writes <= 2,
        "the sweep writes only the missing record: {}",
        c.record_writes
    );

    // A repeated run does not count it again.
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");

    // It comes back: unmarked.
    let k = sim.add_computer();
    sim.set_field(
        k,
        "hardware.serialNumber",
        removed["hardware"]["serialNumber"].clone(),
    );
    let s = h.sync(&ev).await?;
    assert_eq!(s.counts.missing, 0, "{s:?}");
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert!(
        rec.src["jamf-m"].missing.is_none(),
        "unmarked when it comes back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_record_per_key_across_sources_with_precedence_and_duplicates() -> anyhow::Result<()> {
    let h = Harness::start_with(|s| s.precedence = Precedence::parse("jamf-hi,jamf-lo")).await?;
    // Two connections report the same fleet (same seed: same serials).
    let lo = jamf(&h, 200, 42, "assetsync/jamf-lo").await?;
    let hi = jamf(&h, 200, 42, "assetsync/jamf-hi").await?;
    let (i, serial) = keyed(&lo)[1].clone();
    lo.set_os_version(i, "14.0");
    hi.set_os_version(i, "15.0");
    let s1 = h
        .sync(&event("jamf-lo", "jamf", "assetsync/jamf-lo", "Hardware"))
        .await?;
    let s2 = h
        .sync(&event("jamf-hi", "jamf", "assetsync/jamf-hi", "Hardware"))
        .await?;
    assert_eq!(
        s2.counts.created, 0,
        "the second source creates nothing: {s2:?}"
    );
    assert_eq!(
        h.all_records("Hardware").await?.len() as u64,
        s1.counts.created,
        "one record per key"
    );
    let rec = h.record("Hardware", &serial).await?.unwrap();
    assert_eq!(rec.a["OS Version"], "15.0");
    assert_eq!(
        rec.p["OS Version"].c, "jamf-hi",
        "each attribute remembers who set it"
    );
    assert!(!rec.p["OS Version"].t.is_empty());
    assert!(rec.src.contains_key("jamf-lo") && rec.src.contains_key("jamf-hi"));
    // The lower-precedence source does not win it back.
    let s3 = h
        .sync(&event("jamf-lo", "jamf", "assetsync/jamf-lo", "Hardware"))
        .await?;
    assert_eq!(s3.counts.updated, 0, "{s3:?}");
    assert_eq!(
        h.record("Hardware", &serial).await?.unwrap().a["OS Version"],
        "15.0"
    );

    // A re-enrolled device listed twice by its vendor: one record, fed by the newest check-in.
    let (j, dup_serial) = keyed(&lo)[5].clone();
    let k = lo.duplicate_computer(j);
    lo.set_os_version(k, "16.0");
    let s4 = h
        .sync(&event("jamf-lo", "jamf", "assetsync/jamf-lo", "Hardware"))
        .await?;
    assert!(s4.counts.duplicate >= 1, "{s4:?}");
    let rec = h.record("Hardware", &dup_serial).await?.unwrap();
    assert_eq!(
        rec.a["OS Version"], "16.0",
        "fed by the most recently checked-in record"
    );
    // No flip-flop between runs.
    let s5 = h
        .sync(&event("jamf-lo", "jamf", "assetsync/jamf-lo", "Hardware"))
        .await?;
    assert_eq!(s5.counts.updated, 0, "{s5:?}");
    assert!(s5.counts.duplicate >= 1);
    assert_eq!(
        h.record("Hardware", &dup_serial).await?.unwrap().a["OS Version"],
        "16.0"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_page_is_dead_lettered_named_and_redriven() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 300, 42, "assetsync/jamf-p").await?;
    let (i, _) = keyed(&sim)[10].clone();
    sim.set_field(i, "hardware.serialNumber", json!("POISON0001"));
    h.ddb.poison("R#Hardware#POISON0001");
    let mut ev = event("jamf-p", "jamf", "assetsync/jamf-p", "Hardware");
    ev["mapping"] = json!("config:page_size=100");
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded_with_errors", "{s:?}");
    assert_eq!(s.pages.dead, 1, "{s:?}");
    assert_eq!(
        s.counts.missing, 0,
        "a run with a dead page marks nothing missing"
    );
    assert!(
        s.errors
            .iter()
            .any(|e| e.key.starts_with("page ") && e.reason.contains("dead-lettered")),
        "{:?}",
        s.errors
    );

    // The cause goes away; redrive puts the page back and the run completes.
    h.ddb.cure();
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let report = console::redrive(&h.runs, &sqs, &h.settings, &s.run_id).await?;
    println!("redrive: {report:?}");
    let s2 = h
        .runner
        .drain_until_done(&s.run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(s2.status.as_str(), "succeeded", "{s2:?}");
    assert_eq!(s2.pages.dead, 0);
    assert_eq!(s2.pages.imported, s2.pages.fetched);
    let keyed_n = keyed(&sim).len() as u64;
    assert_eq!(s2.counts.created + s2.counts.duplicate, keyed_n, "{s2:?}");
    assert!(h.record("Hardware", "POISON0001").await?.is_some());
    Ok(())
}
