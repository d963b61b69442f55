//! JumpCloud end to end: the simulator, the local AWS stack (moto with the template deployed) and
//! the real fetcher and importer handlers.

use assetsync::connectors;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync::summary::Status;
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::{fleet, Fault};

const SECRET: &str = "assetsync/jumpcloud-e2e";

#[tokio::test]
async fn jumpcloud_people_then_devices_through_the_real_handlers() {
    let mut h = Harness::start().await.expect("local stack");
    // 300 records take seconds; fail fast instead of waiting the default 10 minutes.
    h.runner.max_wait = std::time::Duration::from_secs(180);
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 300,
        users: 150,
        ..Default::default()
    })
    .await
    .unwrap();
    h.put_secret(SECRET, &sim.secret()).await.unwrap();
    let people = event("jc-people", "jumpcloud", SECRET, "Person");
    let mut devices = event("jc-devices", "jumpcloud", SECRET, "Hardware");
    // No grace: one complete run without a device marks it (the default waits for two).
    devices["mapping"] = serde_json::json!("config:missing_after=1");

    // People first, so devices can be assigned by email.
    let s = h.sync(&people).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 150, "{s:?}");
    assert_eq!(s.vendor_total, Some(150));
    let jane = h
        .record("Person", sim.user(0)["_id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("person 0");
    assert_eq!(jane.a["Email"], fleet::person(0).email);
    assert_eq!(jane.a["Status"], "active");
    let suspended = h
        .record("Person", sim.user(5)["_id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("person 5");
    assert_eq!(suspended.a["Status"], "suspended");
    println!(
        "JumpCloud people: {} vendor requests for 150 records",
        s.vendor_requests
    );

    // First device sync: records without a serial are skipped and counted.
    let mapping = Mapping::parse(
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    let keyless = (0..300)
        .filter(|i| matches!(i % 50, 7 | 9) || i % 100 == 53)
        .count() as u64;
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created, 300 - keyless, "{s:?}");
    assert_eq!(s.counts.skipped, keyless, "{s:?}");
    assert_eq!(s.vendor_total, Some(300));
    println!(
        "JumpCloud devices: {} vendor requests for 300 records = {:.1} per 1,000",
        s.vendor_requests,
        s.vendor_requests as f64 * 1000.0 / 300.0
    );
    let serial = |i: usize| {
        sim.system(i)["serialNumber"]
            .as_str()
            .unwrap()
            .to_uppercase()
    };
    // System 1's primary user is person 0 (active): assigned. System 10's is person 5 (suspended).
    let d1 = h
        .record("Hardware", &serial(1))
        .await
        .unwrap()
        .expect("system 1");
    assert_eq!(d1.a["User Email"], fleet::person(0).email);
    assert_eq!(d1.a["Status"], "assigned", "{:?}", d1.a);
    assert_eq!(d1.a["Assigned To"], fleet::person(0).email);
    assert_eq!(d1.a.get("Model").cloned(), sim.model(1));
    assert!(
        d1.a.contains_key("IP Address")
            && d1.a.contains_key("Last Check-in")
            && d1.a.contains_key("OS Version")
    );
    let d10 = h
        .record("Hardware", &serial(10))
        .await
        .unwrap()
        .expect("system 10");
    assert_eq!(d10.a["User Email"], fleet::person(5).email);
    assert_eq!(d10.a["Status"], "available", "{:?}", d10.a);
    // The serial only System Insights knows (system 3) keys its record too.
    let sys3 = mapping.apply(&sim.system(3), ObjectType::Hardware);
    assert!(sys3.key.is_none(), "system 3 has no v1 serial");
    assert_eq!(s.counts.created + s.counts.skipped, 300);

    // Unchanged re-sync: nothing written to the register.
    h.ddb.reset();
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(
        (s.counts.created, s.counts.updated, s.counts.unchanged),
        (0, 0, 300 - keyless),
        "{s:?}"
    );
    assert_eq!(h.ddb.get().record_writes, 0, "{:?}", h.ddb.get());

    // One change: exactly one record updated.
    sim.set_os_version(1, "15.9");
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(
        (s.counts.updated, s.counts.unchanged),
        (1, 300 - keyless - 1),
        "{s:?}"
    );
    assert_eq!(
        h.record("Hardware", &serial(1)).await.unwrap().unwrap().a["OS Version"],
        "15.9"
    );

    // 429s (with and without Retry-After) and a 503 mid-run: the run still completes.
    sim.control().inject_after(
        2,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control()
        .inject_after(4, Fault::TooManyRequests { retry_after: None });
    sim.control().inject_after(6, Fault::ServerError(503));
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.unchanged, 300 - keyless, "{s:?}");
    assert!(s.throttled >= 2, "{s:?}");

    // The API key is reset mid-run: an API key cannot be refreshed, so the run fails clearly
    // and marks nothing missing.
    let key = sim.secret()["api_key"].as_str().unwrap().to_string();
    sim.control().inject_after(3, Fault::ExpireTokens);
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Failed, "{s:?}");
    let why = format!("{:?} {:?}", s.message, s.errors);
    assert!(why.contains("api_key"), "{why}");
    assert!(!why.contains(&key));
    assert_eq!(s.counts.missing, 0, "{s:?}");
    let d1 = h.record("Hardware", &serial(1)).await.unwrap().unwrap();
    assert!(d1.src["jc-devices"].missing.is_none());

    // With a valid key again, the next run completes and still marks nothing missing.
    sim.set_api_key(&key);
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(
        (s.counts.unchanged, s.counts.missing),
        (300 - keyless, 0),
        "{s:?}"
    );

    // A device gone from JumpCloud is marked missing, not deleted.
    let gone = serial(2);
    sim.remove_device(2);
    let s = h.sync(&devices).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    let d2 = h.record("Hardware", &gone).await.unwrap().expect("kept");
    assert!(d2.src["jc-devices"].missing.is_some());
    assert_eq!(
        s.counts.missing, 1,
        "the record was marked missing but the run did not count it (a membership item stored with \
         `missing: NULL` fails the sweep's attribute_not_exists condition): {s:?}"
    );
}

/// A service account (OAuth client credentials) and two ANDed filters, end to end: exactly the
/// people both filters select reach the register.
#[tokio::test]
async fn a_service_account_with_two_filters_syncs_only_the_matching_people() {
    let mut h = Harness::start().await.expect("local stack");
    h.runner.max_wait = std::time::Duration::from_secs(120);
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 10,
        users: 120,
        ..Default::default()
    })
    .await
    .unwrap();
    h.put_secret("assetsync/jc-sa", &sim.service_account_secret())
        .await
        .unwrap();
    let mut people = event("jc-sa-people", "jumpcloud", "assetsync/jc-sa", "Person");
    let base =
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Person, None).unwrap();
    people["mapping"] =
        format!("{base}config:filter=department:$eq:Finance;state:$eq:ACTIVATED\n").into();
    let both = sim
        .users()
        .iter()
        .filter(|u| u["department"] == "Finance" && u["state"] == "ACTIVATED")
        .count();
    let finance = sim
        .users()
        .iter()
        .filter(|u| u["department"] == "Finance")
        .count();
    assert!(both > 0 && both < finance, "{both} of {finance}");
    let s = h.sync(&people).await.unwrap();
    assert_eq!(s.status, Status::Succeeded, "{s:?}");
    assert_eq!(s.counts.created as usize, both, "{s:?}");
    assert!(
        sim.control().token_requests() >= 1,
        "the service account's token was used"
    );
}
