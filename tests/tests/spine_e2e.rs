//! The spine's promises that need more than one plain sync: hand edits, values a source stops
//! reporting, a page delivered twice, a fetcher out of time, clear errors, the deployed template.

use std::time::Duration;

use assetsync::register::{Provenance, HAND};
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::json;

async fn jamf(h: &Harness, computers: usize, secret: &str) -> anyhow::Result<JamfSim> {
    let sim = JamfSim::start(JamfConfig {
        computers,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret(secret, &sim.secret()).await?;
    Ok(sim)
}

fn first_keyed(sim: &JamfSim) -> (usize, String) {
    (0..sim.computer_count())
        .find_map(|i| sim.serial(i).map(|s| (i, s)))
        .expect("a device with a serial")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_edits_survive_and_unreported_values_are_kept() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 300, "assetsync/jamf-hand").await?;
    let ev = event("jamf-hand", "jamf", "assetsync/jamf-hand", "Hardware");
    h.sync(&ev).await?;
    let (i, serial) = first_keyed(&sim);

    // A person edits the record: a field of their own, and one the mapping also writes.
    let mut rec = h.record("Hardware", &serial).await?.expect("created");
    let ver = rec.ver;
    let hand = Provenance {
        c: HAND.into(),
        s: String::new(),
        t: "2026-11-24T00:00:00Z".into(),
        r: String::new(),
    };
    for (a, v) in [("Location", "Room 4.12"), ("Name", "Reception kiosk")] {
        rec.a.insert(a.into(), v.into());
        rec.p.insert(a.into(), hand.clone());
    }
    rec.ver += 1;
    assert!(h.store.replace_record(&rec, ver).await?);
    let email_before = rec.a.get("User Email").cloned();
    assert!(email_before.is_some(), "the test device has a user email");

    // The source stops reporting the user's email and renames the device.
    sim.remove_field(i, "userAndLocation.email");
    sim.set_field(i, "general.name", json!("RENAMED-AT-SOURCE"));
    let s = h.sync(&ev).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let after = h.record("Hardware", &serial).await?.expect("still there");
    assert_eq!(
        after.a.get("Location").map(String::as_str),
        Some("Room 4.12"),
        "hand edit kept"
    );
    assert_eq!(
        after.a.get("Name").map(String::as_str),
        Some("Reception kiosk"),
        "hand-owned attribute not overwritten"
    );
    assert_eq!(
        after.a.get("User Email"),
        email_before.as_ref(),
        "a value the source stops reporting is kept"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_delivered_twice_counts_once() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 900, "assetsync/jamf-twice").await?;
    let mut ev = event("jamf-twice", "jamf", "assetsync/jamf-twice", "Hardware");
    ev["mapping"] = json!("config:page_size=200");
    // Fetch only: the pages wait in the records queue.
    let started = h
        .invoke_fetcher(ev.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_id = started["run_id"].as_str().expect("run id").to_string();
    // Duplicate every page message, as SQS at-least-once delivery may.
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let q = &h.settings.records_queue_url;
    let mut bodies = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(q)
            .max_number_of_messages(10)
            .visibility_timeout(1)
            .send()
            .await?;
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            bodies.push(m.body.clone().unwrap_or_default());
            sqs.delete_message()
                .queue_url(q)
                .receipt_handle(m.receipt_handle.unwrap_or_default())
                .send()
                .await?;
        }
    }
    assert!(
        bodies.len() >= 4,
        "several pages were sent: {}",
        bodies.len()
    );
    for b in bodies.iter().chain(bodies.iter()) {
        sqs.send_message()
            .queue_url(q)
            .message_body(b)
            .send()
            .await?;
    }
    let s = h
        .runner
        .drain_until_done(&run_id, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keyed = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .count() as u64;
    assert_eq!(s.counts.created + s.counts.duplicate, keyed, "{s:?}");
    assert_eq!(s.counts.skipped, sim.computer_count() as u64 - keyed);
    assert_eq!(s.pages.imported, s.pages.fetched, "{s:?}");
    assert_eq!(
        h.all_records("Hardware").await?.len() as u64,
        s.counts.created,
        "nothing duplicated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetcher_out_of_time_continues_through_the_fetch_queue() -> anyhow::Result<()> {
    let mut h = Harness::start_with(|s| s.time_reserve = Duration::from_millis(2_800)).await?;
    // Each invocation gets 3 s and hands over once less than 2.8 s remain: one page each.
    h.runner.fetcher_budget = Duration::from_secs(3);
    let sim = jamf(&h, 1000, "assetsync/jamf-slow").await?;
    let mut ev = event("jamf-slow", "jamf", "assetsync/jamf-slow", "Hardware");
    ev["mapping"] = json!("config:page_size=250");
    let s = h.sync(&ev).await?;
    let keyed = (0..sim.computer_count())
        .filter(|i| sim.serial(*i).is_some())
        .count() as u64;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert_eq!(s.counts.created + s.counts.duplicate, keyed, "{s:?}");
    assert_eq!(s.records_fetched, 1000);
    assert!(s.pages.fetched >= 4, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_mapping_and_bad_secret_are_named() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 10, "assetsync/jamf-ok").await?;

    let mut ev = event("jamf-ok", "jamf", "assetsync/jamf-ok", "Hardware");
    ev["mapping"] = json!("key:hardware.serialNumber=Serial Number\nmap:general.name Name");
    let e = h
        .invoke_fetcher(ev)
        .await
        .expect_err("a bad mapping fails")
        .to_string();
    assert!(e.contains("mapping line 2"), "{e}");
    assert!(
        h.runs.list(10).await?.is_empty(),
        "a bad mapping never starts a run"
    );

    h.put_secret("assetsync/jamf-broken", &json!("{not json"))
        .await?;
    let sm = aws_sdk_secretsmanager::Client::new(&h.sdk);
    sm.put_secret_value()
        .secret_id("assetsync/jamf-broken")
        .secret_string("{\"tenant_url\": ")
        .send()
        .await?;
    let e = h
        .invoke_fetcher(event(
            "jamf-broken",
            "jamf",
            "assetsync/jamf-broken",
            "Hardware",
        ))
        .await
        .expect_err("a malformed secret fails")
        .to_string();
    assert!(
        e.contains("assetsync/jamf-broken") && e.contains("not valid JSON"),
        "{e}"
    );

    let mut missing = sim.secret();
    missing.as_object_mut().unwrap().remove("client_secret");
    h.put_secret("assetsync/jamf-missing", &missing).await?;
    let e = h
        .invoke_fetcher(event(
            "jamf-missing",
            "jamf",
            "assetsync/jamf-missing",
            "Hardware",
        ))
        .await
        .expect_err("a secret without client_secret fails")
        .to_string();
    assert!(e.contains("client_secret"), "{e}");
    assert!(
        !e.contains(sim.secret()["client_secret"].as_str().unwrap()),
        "no secret in errors"
    );

    let mut wrong = sim.secret();
    wrong["client_secret"] = json!("not-the-secret");
    h.put_secret("assetsync/jamf-wrong", &wrong).await?;
    let mut ev = event("jamf-wrong", "jamf", "assetsync/jamf-wrong", "Hardware");
    ev["action"] = json!("test");
    let out = h
        .invoke_fetcher(ev)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(out["ok"], json!(false), "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected the credentials"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployed_template_drives_a_sync() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // The handlers run with the environment the template gives the functions.
    assert_eq!(h.settings.table, h.stack.output("TableName"));
    assert!(h.settings.records_queue_url.ends_with(
        h.stack
            .output("RecordsQueueUrl")
            .rsplit('/')
            .next()
            .unwrap()
    ));
    // The example schedule's input is the connection event in events/.
    let schedules = h.stack.info["schedules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let jamf = schedules
        .iter()
        .find(|s| s["input"]["source"] == json!("jamf"))
        .expect("the template declares a Jamf schedule");
    let input = jamf["input"].clone();
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        assetsync_tests::stack::repo_root().join("events/jamf-scheduled.json"),
    )?)?;
    assert_eq!(
        input, on_disk,
        "events/jamf-scheduled.json is the schedule's input"
    );
    // Its secret exists (created from the template); point it at the simulator and run the schedule's input.
    let secret_id = input["secret_id"].as_str().unwrap().to_string();
    let sim = JamfSim::start(JamfConfig {
        computers: 120,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret(&secret_id, &sim.secret()).await?;
    let s = h.sync(&input).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    assert!(s.counts.created > 100, "{s:?}");
    // A second start while one runs says so and starts nothing.
    let first = h
        .invoke_fetcher(input.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(first["run_id"].is_string(), "{first}");
    let second = h
        .invoke_fetcher(input.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(second["started"], json!(false), "{second}");
    assert!(
        second["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already has run"),
        "{second}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_sent_in_chunks_still_end_their_runs_exactly() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = jamf(&h, 1500, "assetsync/jamf-chunks").await?;
    // Small pages: one message each.
    let mut small = event("jamf-small", "jamf", "assetsync/jamf-chunks", "Hardware");
    small["mapping"] = json!("config:page_size=300");
    let s = h.sync(&small).await?;
    assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
    let run = h.runs.get(&s.run_id).await?.expect("run item");
    assert_eq!(run.max_chunks, Some(1), "{run:?}");
    // Pages of 1,500 computers pass SQS's message limit and go out in chunks: the markers are
    // then read at every chunk id, and the run still ends with every page counted once.
    let mut big = event("jamf-big", "jamf", "assetsync/jamf-chunks", "Hardware");
    big["mapping"] = json!("config:page_size=1500");
    for want_unchanged in [false, true] {
        let s = h.sync(&big).await?;
        assert_eq!(s.status.as_str(), "succeeded", "{s:?}");
        let run = h.runs.get(&s.run_id).await?.expect("run item");
        assert!(run.max_chunks.is_some_and(|c| c > 1), "{run:?}");
        assert!(run.pages_fetched > 1, "{run:?}");
        let c = &s.counts;
        let seen = c.created + c.updated + c.unchanged + c.duplicate;
        assert_eq!(seen, sim.computer_count() as u64 - c.skipped, "{s:?}");
        if want_unchanged {
            assert_eq!(c.unchanged + c.duplicate, seen, "{s:?}");
        }
        assert_eq!(c.missing, 0, "{s:?}");
    }
    Ok(())
}
