//! Intune / Entra ID end to end: the simulator, the local AWS stack (moto with the template
//! deployed) and the real fetcher and importer handlers.

use assetsync::connectors;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync::summary::Status;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim};
use assetsync_tests::sim::{fleet, Fault};
use serde_json::Value;

const SECRET: &str = "assetsync/intune-e2e";

async fn setup(devices: usize, users: usize) -> (Harness, IntuneSim) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let h = Harness::start().await.expect("local stack");
    disable_moto_event_source_mappings(&h).await;
    let sim = IntuneSim::start(IntuneConfig {
        devices,
        users,
        ..IntuneConfig::default()
    })
    .await
    .expect("simulator");
    h.put_secret(SECRET, &sim.secret()).await.expect("secret");
    (h, sim)
}

/// moto emulates the template's SQS → Lambda event source mappings on every SendMessage: it
/// receives up to a batch of messages, fails to run the Lambda (no docker) and leaves them
/// invisible for the queue's visibility timeout (12 minutes), so the in-process runner cannot see
/// them and the run stalls. The harness drains the queues itself, so the mappings are turned off.
async fn disable_moto_event_source_mappings(h: &Harness) {
    let auth = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=0";
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!(
            "{}/2015-03-31/event-source-mappings/",
            h.stack.endpoint
        ))
        .header("Authorization", auth)
        .send()
        .await
        .expect("list event source mappings")
        .json()
        .await
        .expect("event source mappings JSON");
    for m in list["EventSourceMappings"].as_array().into_iter().flatten() {
        let uuid = m["UUID"].as_str().unwrap_or_default();
        let r = http
            .put(format!(
                "{}/2015-03-31/event-source-mappings/{uuid}",
                h.stack.endpoint
            ))
            .header("Authorization", auth)
            .json(&serde_json::json!({"Enabled": false}))
            .send()
            .await
            .expect("disable an event source mapping");
        assert!(r.status().is_success(), "disabling {uuid}: {}", r.status());
    }
}

fn device_mapping() -> Mapping {
    Mapping::parse(
        connectors::default_mapping(SourceKind::Intune, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap()
}

/// The register key of device `i`, if it has a usable serial.
fn key_of(sim: &IntuneSim, i: usize) -> Option<String> {
    sim.device(i)
        .and_then(|d| device_mapping().apply(&d, ObjectType::Hardware).key)
}

/// Devices with and without a usable serial.
fn keyed(sim: &IntuneSim) -> (u64, u64) {
    let m = device_mapping();
    let all = sim.devices();
    let with = all
        .iter()
        .filter(|d| m.apply(d, ObjectType::Hardware).key.is_some())
        .count() as u64;
    (with, all.len() as u64 - with)
}

fn owner_email(d: &Value) -> String {
    d["userPrincipalName"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intune_people_then_devices_through_the_real_handlers() {
    let (h, sim) = setup(400, 300).await;
    let people = event("intune-people", "intune", SECRET, "Person");
    let mut devices = event("intune-devices", "intune", SECRET, "Hardware");
    // No grace: one complete run without a device marks it (the default waits for two).
    devices["mapping"] = serde_json::json!("config:missing_after=1");

    // People first (Entra users), so devices can be assigned by email.
    let s = h.sync(&people).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 300, "{s:?}");
    assert_eq!(s.vendor_total, None, "users report no total");
    let u0 = sim.user(0).unwrap();
    let p0 = h
        .record("Person", u0["id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("person 0");
    assert_eq!(p0.a["Email"], fleet::person(0).email);
    assert_eq!(p0.a["Status"], "active");
    assert_eq!(p0.a["First Name"], fleet::person(0).first);
    let u12 = sim.user(12).unwrap();
    let p12 = h
        .record("Person", u12["id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("person 12");
    assert_eq!(p12.a["Status"], "suspended", "accountEnabled false");
    println!(
        "Intune people: {} vendor requests for 300 records = {:.1} per 1,000",
        s.vendor_requests,
        s.vendor_requests as f64 * 1000.0 / 300.0
    );

    // First device sync: devices without a serial (or with a placeholder) are skipped and counted.
    let (with_serial, without) = keyed(&sim);
    assert!(without > 0, "the fleet has devices without a usable serial");
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, with_serial, "{s:?}");
    assert_eq!(s.counts.skipped, without, "{s:?}");
    assert_eq!((s.counts.duplicate, s.counts.errors), (0, 0), "{s:?}");
    assert_eq!(s.vendor_total, Some(400), "@odata.count");
    assert_eq!(s.records_fetched, 400);
    println!(
        "Intune devices: {} vendor requests for 400 records = {:.1} per 1,000",
        s.vendor_requests,
        s.vendor_requests as f64 * 1000.0 / 400.0
    );
    let keyless = (0..400).find(|i| key_of(&sim, *i).is_none()).unwrap();
    let raw_serial = sim.device(keyless).unwrap()["serialNumber"]
        .as_str()
        .unwrap()
        .to_string();
    if !raw_serial.is_empty() {
        assert!(
            h.record("Hardware", &raw_serial.to_uppercase())
                .await
                .unwrap()
                .is_none(),
            "no record for {raw_serial:?}"
        );
    }

    // Assignment by email: a device of an active person is assigned, of a suspended one available.
    let active_owned = (0..400)
        .find(|i| {
            let d = sim.device(*i).unwrap();
            key_of(&sim, *i).is_some()
                && owner_email(&d) == fleet::person(i * 3 / 4).email
                && (i * 3 / 4) % 13 != 12
        })
        .unwrap();
    let d = sim.device(active_owned).unwrap();
    let rec = h
        .record("Hardware", &key_of(&sim, active_owned).unwrap())
        .await
        .unwrap()
        .expect("device record");
    assert_eq!(rec.a["User Email"], owner_email(&d));
    assert_eq!(rec.a["Status"], "assigned", "{:?}", rec.a);
    assert_eq!(rec.a["Assigned To"], owner_email(&d));
    assert_eq!(
        rec.a["Serial Number"],
        d["serialNumber"].as_str().unwrap().to_uppercase()
    );
    assert_eq!(rec.a["MAC Address"].matches(':').count(), 5, "{:?}", rec.a);
    assert!(
        rec.a.contains_key("OS Version")
            && rec.a.contains_key("Model")
            && rec.a.contains_key("Compliance")
    );
    let suspended_owned = (0..400)
        .find(|i| {
            key_of(&sim, *i).is_some()
                && (i * 3 / 4) % 13 == 12
                && !owner_email(&sim.device(*i).unwrap()).is_empty()
        })
        .unwrap();
    let rec = h
        .record("Hardware", &key_of(&sim, suspended_owned).unwrap())
        .await
        .unwrap()
        .expect("device record");
    assert_eq!(rec.a["Status"], "available", "{:?}", rec.a);

    // Unchanged re-sync: nothing written to the register.
    h.ddb.reset();
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(
        (s.counts.created, s.counts.updated, s.counts.unchanged),
        (0, 0, with_serial),
        "{s:?}"
    );
    assert_eq!(h.ddb.get().record_writes, 0, "{:?}", h.ddb.get());

    // One change at the source: exactly one record updated.
    sim.set_os_version(active_owned, "10.0.26100.1");
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(
        (s.counts.updated, s.counts.unchanged),
        (1, with_serial - 1),
        "{s:?}"
    );
    let rec = h
        .record("Hardware", &key_of(&sim, active_owned).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.a["OS Version"], "10.0.26100.1");

    // A device retired from Intune is marked missing, not deleted.
    let gone = key_of(&sim, active_owned).unwrap();
    sim.remove_device(active_owned);
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let rec = h.record("Hardware", &gone).await.unwrap().expect("kept");
    assert!(rec.src["intune-devices"].missing.is_some(), "{:?}", rec.src);
    assert_eq!(s.counts.missing, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intune_throttling_and_token_expiry_mid_run_still_complete() {
    let (h, sim) = setup(2500, 1200).await;
    let devices = event("intune-faults", "intune", SECRET, "Hardware");
    let (with_serial, without) = keyed(&sim);

    // Page 2 meets a 429 with Retry-After, then an expired token (401 InvalidAuthenticationToken),
    // then a 503; page 3 a 429 without Retry-After.
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control().inject_after(2, Fault::ExpireTokens);
    sim.control().inject_after(3, Fault::ServerError(503));
    sim.control()
        .inject_after(5, Fault::TooManyRequests { retry_after: None });
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(
        (s.counts.created, s.counts.skipped),
        (with_serial, without),
        "{s:?}"
    );
    assert_eq!(s.vendor_total, Some(2500));
    assert!(s.throttled >= 2, "the 429s are counted in the run: {s:?}");
    assert!(
        sim.control().token_requests() >= 2,
        "re-authenticated after the expiry"
    );
    println!(
        "Intune devices with faults: {} vendor requests for 2500 records ({} throttled, {} ms waiting)",
        s.vendor_requests, s.throttled, s.throttle_wait_ms
    );

    // People with a token expiry mid-run, too.
    let people = event("intune-faults-people", "intune", SECRET, "Person");
    sim.control().inject_after(1, Fault::ExpireTokens);
    let s = h.sync(&people).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 1200, "{s:?}");

    // An app whose admin consent was revoked: the run fails with the reason in words and marks
    // nothing missing.
    sim.set_roles(&[]);
    sim.control().expire_tokens();
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Failed, "{s:?}");
    let why = format!("{:?} {:?}", s.message, s.errors);
    assert!(
        why.contains("DeviceManagementManagedDevices.Read.All"),
        "{why}"
    );
    assert_eq!(s.counts.missing, 0, "{s:?}");
}

/// Intune's `detectedApps` reach `Software`, linked to their device by serial, and a new version
/// on one device updates that one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detected_apps_sync_into_software_linked_to_devices() {
    let (h, sim) = setup(40, 5).await;
    let ev = event("intune-apps", "intune", SECRET, "Software");
    let s = h.sync(&ev).await.expect("sync");
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let rows = sim.app_rows();
    let keyed = rows
        .iter()
        .filter(|(serial, _, _)| assetsync::normalize::serial(serial).is_some())
        .count();
    assert_eq!(s.records_fetched as usize, rows.len(), "{s:?}");
    assert_eq!(
        (s.counts.created + s.counts.duplicate) as usize,
        keyed,
        "{s:?}"
    );
    let apps = h.all_records("Software").await.expect("records");
    assert_eq!(apps.len() as u64, s.counts.created);
    assert!(apps.iter().all(|r| r
        .a
        .get("Device Serial")
        .is_some_and(|d| r.key.starts_with(&format!("{d}|")))));

    // A device whose serial no other device shares (re-enrolled duplicates pick one row).
    let keys: Vec<Option<String>> = (0..40).map(|i| key_of(&sim, i)).collect();
    let i = (0..40)
        .find(|i| {
            keys[*i].is_some()
                && keys.iter().filter(|k| **k == keys[*i]).count() == 1
                && !sim.apps_of(*i).is_empty()
        })
        .expect("a device with its own serial and apps");
    let (name, _) = sim.apps_of(i)[0].clone();
    sim.set_app_version(i, &name, "99.0.1");
    let s2 = h.sync(&ev).await.expect("resync");
    assert_eq!(s2.counts.updated, 1, "{s2:?}");
    let key = format!("{}|{name}", key_of(&sim, i).unwrap());
    let rec = h
        .record("Software", &key)
        .await
        .expect("read")
        .expect("app record");
    assert_eq!(rec.a.get("Version").map(String::as_str), Some("99.0.1"));
}
