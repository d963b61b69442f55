//! Endpoint Central end to end: the simulator → the real fetcher → SQS (moto) → the real importer →
//! DynamoDB (moto), with the template deployed into moto. The detail cache lives in the real
//! DynamoDB state store, so the steady-state cost is measured as production would see it.

use assetsync::connectors;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::summary::Status;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::endpoint_central::{EcAuth, EcSimConfig, EndpointCentralSim};
use assetsync_tests::sim::Fault;
use serde_json::Value;

fn keyed(sim: &EndpointCentralSim) -> (usize, usize) {
    let all = sim.device_count();
    let with = (0..all).filter(|i| sim.serial(*i).is_some()).count();
    (with, all - with)
}

/// The default mapping plus config lines (the mapping's `config:` lines reach the connector).
fn mapping_with(config: &str) -> String {
    let base = connectors::default_mapping(SourceKind::EndpointCentral, ObjectType::Hardware, None)
        .unwrap();
    format!("{base}{config}")
}

fn per_1000(requests: u64, records: usize) -> f64 {
    requests as f64 * 1000.0 / records.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_sync_unchanged_resync_one_change_and_keyless_records() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // The simulator's rate limit is off and the connector's raised, so 1,200 first-time detail
    // calls take seconds instead of eleven minutes; the limit itself is covered below.
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 1200,
        rate_limit: None,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-e2e", &sim.secret()).await?;
    let mut ev = event("ec-e2e", "endpoint-central", "assetsync/ec-e2e", "Hardware");
    ev["mapping"] = Value::String(mapping_with(
        "config:detail_rate=600000\nconfig:detail_concurrency=8\n",
    ));
    let (with_serial, without) = keyed(&sim);
    assert!(
        without > 0,
        "the fleet has computers without a usable serial"
    );

    // First sync: every computer with a serial created once; the others skipped and counted.
    let s = h.sync(&ev).await?;
    println!("first sync: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created as usize, with_serial, "{s:?}");
    assert_eq!(s.counts.skipped as usize, without, "{s:?}");
    assert_eq!(s.counts.duplicate + s.counts.errors, 0, "{s:?}");
    assert_eq!(s.vendor_total, Some(1200));
    assert_eq!(sim.detail_requests(), 1200);
    println!(
        "endpoint-central e2e first sync: {} vendor requests for 1200 records = {:.1} per 1,000",
        s.vendor_requests,
        per_1000(s.vendor_requests, 1200)
    );
    let i = (0..sim.device_count())
        .find(|i| sim.serial(*i).is_some() && i % 3 == 0)
        .expect("a serial only in the detail");
    let rec = h
        .record("Hardware", &sim.serial(i).unwrap())
        .await?
        .expect("record keyed by the detail serial");
    let d = sim.device(i);
    assert_eq!(
        rec.a.get("Model").map(String::as_str),
        d.detail["computer_hardware_summary"]["device_model"].as_str()
    );
    assert_eq!(
        rec.a.get("Name").map(String::as_str),
        d.fields["resource_name"].as_str()
    );

    // Unchanged re-sync: no register writes, no detail calls, list pages only.
    h.ddb.reset();
    let details = sim.detail_requests();
    let s2 = h.sync(&ev).await?;
    let c = h.ddb.get();
    println!(
        "unchanged sync: {} vendor requests, {} DynamoDB requests ({:?})",
        s2.vendor_requests,
        c.total(),
        c.by_op
    );
    assert_eq!(s2.status, Status::Succeeded, "{s2:?}");
    assert_eq!(s2.counts.unchanged as usize, with_serial, "{s2:?}");
    assert_eq!(s2.counts.created + s2.counts.updated, 0, "{s2:?}");
    assert_eq!(
        c.record_writes, 0,
        "an unchanged sync writes no register record"
    );
    assert_eq!(
        sim.detail_requests(),
        details,
        "a steady fleet makes no detail calls"
    );
    println!(
        "endpoint-central e2e steady-state sync: {} vendor requests for 1200 records = {:.2} per 1,000",
        s2.vendor_requests,
        per_1000(s2.vendor_requests, 1200)
    );

    // One OS version changes (a rescan): exactly one update, one detail call.
    let j = (0..sim.device_count())
        .find(|j| sim.serial(*j).is_some())
        .unwrap();
    sim.set_os_version(j, "10.0.26100");
    let s3 = h.sync(&ev).await?;
    assert_eq!(s3.counts.updated, 1, "{s3:?}");
    assert_eq!(sim.detail_requests(), details + 1);
    let rec = h
        .record("Hardware", &sim.serial(j).unwrap())
        .await?
        .expect("record");
    assert_eq!(
        rec.a.get("OS Version").map(String::as_str),
        Some("10.0.26100")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_a_500_and_a_token_expiry_under_the_documented_rate_limit() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    // The documented limit (120 per minute per API, 5-minute lock) and the default mapping and
    // connector settings: the client-side limit must keep the server from ever locking.
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 60,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-e2e-faults", &sim.secret_for(EcAuth::Login))
        .await?;
    let ev = event(
        "ec-e2e-faults",
        "endpoint-central",
        "assetsync/ec-e2e-faults",
        "Hardware",
    );
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control().inject_after(5, Fault::ServerError(500));
    sim.control().inject_after(20, Fault::ExpireTokens);
    let s = h.sync(&ev).await?;
    println!("sync with faults: {}", serde_json::to_string(&s)?);
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let (with_serial, without) = keyed(&sim);
    assert_eq!(s.counts.created as usize, with_serial, "{s:?}");
    assert_eq!(s.counts.skipped as usize, without, "{s:?}");
    assert!(s.throttled >= 1, "the 429 is counted in the run: {s:?}");
    assert_eq!(
        sim.logins(),
        2,
        "one login and one re-login after the expiry"
    );
    assert_eq!(
        sim.lock_answers(),
        0,
        "the client-side limit kept under 120 per minute"
    );
    Ok(())
}

/// The default listing (`som/computers`) has no scan time: a rescan that changes the model or the
/// serial in the detail summary still reaches the register on the next sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_model_or_serial_reaches_the_register_on_the_next_sync() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 30,
        rate_limit: None,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-e2e-rescan", &sim.secret())
        .await?;
    let ev = event(
        "ec-e2e-rescan",
        "endpoint-central",
        "assetsync/ec-e2e-rescan",
        "Hardware",
    );
    let s = h.sync(&ev).await?;
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    // Computers whose serial comes from the detail summary only (no service tag in the list).
    let detail_only: Vec<usize> = (0..sim.device_count())
        .filter(|i| {
            sim.serial(*i).is_some()
                && sim
                    .device(*i)
                    .fields
                    .get("managedcomputerextn.service_tag")
                    .is_none()
        })
        .collect();
    assert!(detail_only.len() >= 2, "{detail_only:?}");
    let (a, b) = (detail_only[0], detail_only[1]);
    let serial_a = sim.serial(a).unwrap();
    sim.set_model(a, "Latitude 7450 (rescanned)");
    sim.set_detail_serial(b, "NEWSERIAL42");
    let details = sim.detail_requests();
    let s2 = h.sync(&ev).await?;
    assert_eq!(s2.status, Status::Succeeded, "{s2:?}");
    assert_eq!(sim.detail_requests(), details + 2, "only the rescanned two");
    let rec = h.record("Hardware", &serial_a).await?.expect("record");
    assert_eq!(
        rec.a.get("Model").map(String::as_str),
        Some("Latitude 7450 (rescanned)")
    );
    assert!(
        h.record("Hardware", "NEWSERIAL42").await?.is_some(),
        "the new serial is in the register"
    );
    Ok(())
}

/// `sample` promises to write nothing: not a register record, not a detail-cache entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sample_writes_nothing_to_dynamodb() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = EndpointCentralSim::start(EcSimConfig {
        devices: 60,
        rate_limit: None,
        ..Default::default()
    })
    .await?;
    h.put_secret("assetsync/ec-e2e-sample", &sim.secret())
        .await?;
    let mut ev = event(
        "ec-e2e-sample",
        "endpoint-central",
        "assetsync/ec-e2e-sample",
        "Hardware",
    );
    ev["action"] = Value::String("sample".into());
    h.ddb.reset();
    let out = h.invoke_fetcher(ev).await?;
    assert_eq!(out["raw"].as_array().map(Vec::len), Some(25), "{out}");
    assert!(sim.detail_requests() > 0, "the sample read the details");
    let c = h.ddb.get();
    let writes: u64 = [
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
    ]
    .iter()
    .map(|op| c.op(op))
    .sum();
    assert_eq!(writes, 0, "DynamoDB requests of a sample: {:?}", c.by_op);
    Ok(())
}
