//! The real Jamf Pro connector against the Jamf simulator, and the simulator's own fidelity.
//!
//! Run: `cargo test -p assetsync-tests --test jamf_connector -- --nocapture` (prints requests per
//! 1,000 records).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use assetsync::connectors::{self, Connector, ConnectorContext, Cursor, MemoryState};
use assetsync::error::ConnectorError;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync::normalize;
use assetsync_tests::sim::jamf::{start_default, JamfConfig, JamfSim};
use assetsync_tests::sim::Fault;
use serde_json::{json, Value};

fn fast() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("ASSETSYNC_FAST_RETRY", "1"));
}

fn ctx(config: &[(&str, &str)]) -> ConnectorContext {
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ConnectorContext {
        connection: "jamf-test".into(),
        object_type: ObjectType::Hardware,
        config,
        state: Arc::new(MemoryState::default()),
    }
}

async fn connector(sim: &JamfSim, config: &[(&str, &str)]) -> Box<dyn Connector> {
    connectors::build(SourceKind::Jamf, &sim.secret(), ctx(config))
        .await
        .expect("connector builds")
}

async fn sim(computers: usize, f: impl FnOnce(&mut JamfConfig)) -> JamfSim {
    fast();
    let mut cfg = JamfConfig {
        computers,
        ..JamfConfig::default()
    };
    f(&mut cfg);
    JamfSim::start(cfg).await.expect("simulator starts")
}

/// Every page of a listing: (records, cursors returned, total reported on the first page).
async fn drain(
    c: &dyn Connector,
) -> Result<(Vec<Value>, Vec<Cursor>, Option<u64>), ConnectorError> {
    let mut records = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut total = None;
    for _ in 0..10_000 {
        let page = c.fetch_page(cursor.as_ref()).await?;
        total = total.or(page.total);
        records.extend(page.records);
        match page.next {
            Some(n) => {
                cursors.push(n.clone());
                cursor = Some(n);
            }
            None => return Ok((records, cursors, total)),
        }
    }
    panic!("the listing never ended");
}

fn ids(records: &[Value], key: &str) -> Vec<String> {
    records
        .iter()
        .map(|r| r[key].as_str().expect("id is a string").to_string())
        .collect()
}

fn assert_each_once(seen: &[String], expected: &[String]) {
    let set: HashSet<&String> = seen.iter().collect();
    assert_eq!(set.len(), seen.len(), "a record was delivered twice");
    let want: HashSet<&String> = expected.iter().collect();
    assert_eq!(set, want, "the delivered ids differ from the fleet's");
}

fn per_thousand(requests: u64, records: usize) -> f64 {
    requests as f64 * 1000.0 / records.max(1) as f64
}

// ------------------------------------------------------------------------------------------------
// Connector against the simulator
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn pages_2500_computers_at_the_max_page_size_each_exactly_once() {
    let sim = sim(2500, |_| {}).await;
    let c = connector(&sim, &[]).await;
    let (records, cursors, total) = drain(c.as_ref()).await.unwrap();
    assert_eq!(total, Some(2500));
    assert_eq!(records.len(), 2500);
    assert_each_once(
        &ids(&records, "id"),
        &sim.computers()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        cursors.len(),
        1,
        "2,500 records at page-size 2000 are two pages"
    );
    assert_eq!(cursors[0].0, json!({"page": 1, "version": "v4"}));
    // Records are in id order across pages (sort=id:asc), with every requested section.
    let nums: Vec<u64> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[0] < w[1]),
        "sort=id:asc is numeric and stable across pages"
    );
    for section in ["general", "hardware", "operatingSystem", "userAndLocation"] {
        assert!(
            records.iter().all(|r| r[section].is_object()),
            "section {section} present"
        );
    }
    assert!(
        records.iter().all(|r| r["applications"].is_null()),
        "unrequested sections stay null"
    );

    let data = sim.control().data_requests();
    let tokens = sim.control().token_requests();
    assert_eq!(data, 2);
    assert_eq!(tokens, 1);
    assert_eq!(c.http_counts().requests, data + tokens);
    println!(
        "jamf computers: {} records, {data} data + {tokens} token requests = {:.2} vendor requests per 1,000 records",
        records.len(),
        per_thousand(data + tokens, records.len())
    );
}

#[tokio::test]
async fn a_server_that_pages_by_less_than_asked_loses_nothing() {
    // Jamf clamps an oversized page-size silently; a server capping at 1000 must not make the
    // connector skip records 2000..2499 by numbering pages in 2000s.
    let sim = sim(2500, |c| c.max_page_size = 1000).await;
    let c = connector(&sim, &[]).await;
    let (records, cursors, total) = drain(c.as_ref()).await.unwrap();
    assert_eq!(total, Some(2500));
    assert_each_once(
        &ids(&records, "id"),
        &sim.computers()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
    );
    assert_eq!(cursors.len(), 2);
    assert!(cursors.iter().all(|c| c.0["size"] == 1000), "{cursors:?}");
}

#[tokio::test]
async fn version_fallback_finds_v1_and_keeps_it_in_the_cursor() {
    let sim = sim(250, |c| c.versions = vec!["v1"]).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    let first = c.fetch_page(None).await.unwrap();
    assert_eq!(first.records.len(), 100);
    assert_eq!(
        first.next.as_ref().unwrap().0,
        json!({"page": 1, "version": "v1"})
    );
    let (records, cursors, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 250);
    assert!(cursors.iter().all(|c| c.0["version"] == "v1"));
    // v4, v3 and v2 are probed newest first, once per first page (two first pages here); later
    // pages go straight to v1.
    assert_eq!(sim.control().requests_to("/api/v4/"), 2);
    assert_eq!(sim.control().requests_to("/api/v3/"), 2);
    assert_eq!(sim.control().requests_to("/api/v2/"), 2);
    assert_eq!(
        sim.control().requests_to("/api/v1/computers-inventory"),
        1 + 3
    );
    assert_eq!(first.served_by.as_deref(), Some("computers-inventory v1"));

    // A newer server that dropped v1 and v3.
    let sim4 = sim_with_versions(vec!["v4"]).await;
    let c = connector(&sim4, &[]).await;
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 40);
    let p = c.fetch_page(None).await.unwrap();
    assert!(p.next.is_none());
    assert!(
        p.records[0]["general"].get("lastReportedIpV4").is_some(),
        "v4 shape"
    );

    // A pinned version the server lacks is a clear 404, not a silent fallback.
    let c = connector(&sim4, &[("version", "v1")]).await;
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::Status { status: 404, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("/api/v1/computers-inventory"), "{e}");
}

/// A Jamf Pro 11.30 server (v4 current, v3 and v1 deprecated but still answering): v4 serves
/// every page, v3 is never asked, and the page says which version served it.
#[tokio::test]
async fn computers_inventory_tries_v4_first_and_says_which_served() {
    let sim = sim(250, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    let first = c.fetch_page(None).await.unwrap();
    assert_eq!(first.served_by.as_deref(), Some("computers-inventory v4"));
    assert_eq!(
        first.next.as_ref().unwrap().0,
        json!({"page": 1, "version": "v4"})
    );
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 250);
    assert_eq!(sim.control().requests_to("/api/v3/"), 0, "v3 is deprecated");
    assert_eq!(sim.control().requests_to("/api/v1/"), 0);
    assert_eq!(
        sim.control().requests_to("/api/v4/computers-inventory"),
        1 + 3
    );
    let t = c.test().await.unwrap();
    assert!(
        t.message.contains("computers-inventory (v4)"),
        "{}",
        t.message
    );
}

async fn sim_with_versions(v: Vec<&'static str>) -> JamfSim {
    sim(40, |c| c.versions = v).await
}

#[tokio::test]
async fn mobile_devices_are_paged_on_the_record_id_not_device_id() {
    let sim = sim(0, |c| c.mobile_devices = 450).await;
    let c = connector(&sim, &[("api", "mobile-devices"), ("page_size", "200")]).await;
    let (records, cursors, total) = drain(c.as_ref()).await.unwrap();
    assert_eq!(total, Some(450));
    assert_eq!(cursors.len(), 2);
    assert_each_once(
        &ids(&records, "mobileDeviceId"),
        &sim.mobiles()
            .iter()
            .map(|r| r["mobileDeviceId"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
    );
    let nums: Vec<u64> = records
        .iter()
        .map(|r| r["mobileDeviceId"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[0] < w[1]),
        "sort=mobileDeviceId:asc"
    );
    assert_eq!(
        c.source_id(&records[0]),
        records[0]["mobileDeviceId"].as_str().map(str::to_string)
    );
    assert!(c.checked_in(&records[0]).is_some());

    let m = Mapping::parse(
        connectors::default_mapping(
            SourceKind::Jamf,
            ObjectType::Hardware,
            Some("mobile-devices"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut keyed = 0;
    for r in &records {
        let out = m.apply(r, ObjectType::Hardware);
        let a = &out.attrs;
        assert_eq!(a.get("Manufacturer").map(String::as_str), Some("Apple"));
        assert_eq!(a.get("OS Name").map(String::as_str), Some("iOS"));
        assert_eq!(
            a.get("OS Version"),
            r["general"]["osVersion"]
                .as_str()
                .map(str::to_string)
                .as_ref()
        );
        assert_eq!(
            a.get("Model"),
            r["hardware"]["model"].as_str().map(str::to_string).as_ref()
        );
        assert_eq!(
            a.get("Name"),
            r["general"]["displayName"]
                .as_str()
                .map(str::to_string)
                .as_ref()
        );
        if let Some(e) = r["userAndLocation"]["emailAddress"]
            .as_str()
            .filter(|e| !e.is_empty())
        {
            assert_eq!(a.get("User Email"), Some(&e.to_lowercase()));
        } else {
            assert!(!a.contains_key("User Email"));
        }
        if out.key.is_some() {
            keyed += 1;
        }
    }
    assert!(
        keyed >= 430,
        "only ~2% lack a serial, got {keyed} keyed of 450"
    );
    let (data, tokens) = (
        sim.control().data_requests(),
        sim.control().token_requests(),
    );
    println!(
        "jamf mobile devices: {} records at page-size 200, {data} data + {tokens} token requests = {:.2} vendor requests per 1,000 records",
        records.len(),
        per_thousand(data + tokens, records.len())
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out() {
    let sim = sim(300, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    let started = Instant::now();
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 300);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured ({:?})",
        started.elapsed()
    );
    let h = c.http_counts();
    assert_eq!(h.throttled, 1);
    assert!(h.throttle_wait_ms >= 900, "{h:?}");
    assert_eq!(sim.control().data_requests(), 4);
}

#[tokio::test]
async fn a_500_and_a_503_are_retried() {
    let sim = sim(300, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    sim.control().inject(Fault::ServerError(500));
    sim.control().inject_after(2, Fault::ServerError(503));
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 300);
    assert_eq!(c.http_counts().retries, 2);
    assert_each_once(
        &ids(&records, "id"),
        &sim.computers()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
    );
}

#[tokio::test]
async fn token_expiry_mid_run_reauthenticates_once() {
    let sim = sim(500, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    sim.control().inject_after(2, Fault::ExpireTokens);
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 500);
    assert_eq!(
        sim.control().token_requests(),
        2,
        "one token, then exactly one re-authentication"
    );
    assert_eq!(
        sim.control().data_requests(),
        6,
        "5 pages + the page refused with 401"
    );
}

#[tokio::test]
async fn a_short_token_lifetime_is_survived() {
    let sim = sim(300, |c| c.token_lifetime = Duration::from_secs(2)).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    let first = c.fetch_page(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = c.fetch_page(first.next.as_ref()).await.unwrap();
    let third = c.fetch_page(second.next.as_ref()).await.unwrap();
    assert!(third.next.is_none());
    assert_eq!(
        first.records.len() + second.records.len() + third.records.len(),
        300
    );
    assert_eq!(sim.control().token_requests(), 2);
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_clear_auth_error() {
    let sim = sim(10, |_| {}).await;
    let c = connectors::build(
        SourceKind::Jamf,
        &sim.secret_with_wrong_client_secret(),
        ctx(&[]),
    )
    .await
    .unwrap();
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("Jamf Pro") && msg.contains("client_secret"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"), "the secret leaked: {msg}");
    let e = c.test().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    assert_eq!(
        sim.control().data_requests(),
        0,
        "no data request without a token"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_cached_token_does_not_vouch_for_a_wrong_secret() {
    let sim = sim(10, |_| {}).await;
    let good = connector(&sim, &[]).await;
    good.fetch_page(None).await.unwrap();
    // Same tenant and client id, wrong secret, same process (a warm Lambda after a bad rotation).
    let bad = connectors::build(
        SourceKind::Jamf,
        &sim.secret_with_wrong_client_secret(),
        ctx(&[]),
    )
    .await
    .unwrap();
    let e = bad.test().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
}

#[tokio::test]
async fn malformed_json_fails_the_page_naming_the_path_and_the_page_can_be_retried() {
    let sim = sim(150, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    let first = c.fetch_page(None).await.unwrap();
    sim.control().inject(Fault::MalformedJson);
    let e = c.fetch_page(first.next.as_ref()).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("/api/v4/computers-inventory"), "{e}");
    // A page is the unit of retry: the same cursor succeeds once the vendor behaves.
    let second = c.fetch_page(first.next.as_ref()).await.unwrap();
    assert_eq!(second.records.len(), 50);
    assert!(second.next.is_none());
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_retried() {
    let sim = sim(120, |_| {}).await;
    let c = connector(&sim, &[("page_size", "100")]).await;
    // ASSETSYNC_FAST_RETRY sets a 5 s timeout.
    sim.control().inject(Fault::Delay(Duration::from_secs(6)));
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!(records.len(), 120);
    assert_eq!(c.http_counts().retries, 1);
}

#[tokio::test]
async fn test_action_names_the_version_and_total() {
    let sim = sim(33, |c| c.versions = vec!["v1"]).await;
    let c = connector(&sim, &[]).await;
    let r = c.test().await.unwrap();
    assert!(
        r.message.contains("computers-inventory (v1)") && r.message.contains("33 records"),
        "{}",
        r.message
    );
    assert!(r.sample.is_some());
}

#[tokio::test]
async fn a_filter_is_passed_through_as_rsql() {
    let sim = sim(800, |_| {}).await;
    let since = "2025-05-20T00:00:00Z";
    let cutoff = normalize::parse_time(since).unwrap();
    let expected: Vec<String> = sim
        .computers()
        .iter()
        .filter(|r| {
            normalize::parse_time(r["general"]["reportDate"].as_str().unwrap()).unwrap() >= cutoff
        })
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!expected.is_empty() && expected.len() < 800);
    let filter = format!("general.reportDate>=\"{since}\"");
    let c = connector(&sim, &[("filter", &filter), ("page_size", "100")]).await;
    let (records, _, total) = drain(c.as_ref()).await.unwrap();
    assert_eq!(total, Some(expected.len() as u64));
    assert_each_once(&ids(&records, "id"), &expected);
}

#[tokio::test]
async fn the_default_mapping_maps_simulator_records() {
    let sim = sim(1500, |_| {}).await;
    let c = connector(&sim, &[]).await;
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jamf, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    assert_eq!(m.key_attr(), "Serial Number");
    let (mut alt_mac, mut no_make, mut no_key, mut no_user) = (0, 0, 0, 0);
    for r in &records {
        let out = m.apply(r, ObjectType::Hardware);
        let a = &out.attrs;
        let hw = &r["hardware"];
        match normalize::serial(hw["serialNumber"].as_str().unwrap_or("")) {
            Some(s) => assert_eq!(a.get("Serial Number"), Some(&s)),
            None => {
                no_key += 1;
                assert!(out.key.is_none());
            }
        }
        assert_eq!(
            a.get("Name"),
            r["general"]["name"].as_str().map(str::to_string).as_ref()
        );
        assert_eq!(
            a.get("Model"),
            hw["model"].as_str().map(str::to_string).as_ref()
        );
        match hw
            .get("make")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(make) => assert_eq!(a["Manufacturer"], make),
            None => {
                no_make += 1;
                assert_eq!(a["Manufacturer"], "Apple");
            }
        }
        assert_eq!(
            a.get("OS Name"),
            r["operatingSystem"]["name"]
                .as_str()
                .map(str::to_string)
                .as_ref()
        );
        assert_eq!(
            a.get("OS Version"),
            r["operatingSystem"]["version"]
                .as_str()
                .map(str::to_string)
                .as_ref()
        );
        let wifi = hw["macAddress"].as_str().and_then(normalize::mac);
        match wifi {
            Some(w) => assert_eq!(a.get("MAC Address"), Some(&w)),
            None => {
                alt_mac += 1;
                assert_eq!(
                    a.get("MAC Address"),
                    hw["altMacAddress"]
                        .as_str()
                        .and_then(normalize::mac)
                        .as_ref()
                );
                assert!(a.contains_key("MAC Address"));
            }
        }
        match r["userAndLocation"]["email"]
            .as_str()
            .filter(|e| !e.is_empty())
        {
            Some(e) => assert_eq!(a.get("User Email"), Some(&e.to_lowercase())),
            None => {
                no_user += 1;
                assert!(!a.contains_key("User Email"));
            }
        }
        assert_eq!(
            a.get("Last Inventory Update"),
            normalize::timestamp(r["general"]["reportDate"].as_str().unwrap()).as_ref()
        );
        assert_eq!(
            a.get("Last Check-in"),
            normalize::timestamp(r["general"]["lastContactTime"].as_str().unwrap()).as_ref()
        );
        assert_eq!(c.source_id(r), r["id"].as_str().map(str::to_string));
    }
    assert!(
        alt_mac > 0 && no_make > 0 && no_key > 0 && no_user > 0,
        "the fleet exercises every fallback: {alt_mac} {no_make} {no_key} {no_user}"
    );

    // The sample of vendor-apis.md 4.8, second record: no Wi-Fi MAC reported as empty, no user.
    let sample = json!({
        "id": "118", "udid": "0F9E8D7C-6B5A-4938-2716-05F4E3D2C1B0",
        "general": {"name": "iMac-LAB-02", "platform": "Mac", "assetTag": "", "lastContactTime": "2024-05-30T13:12:44.004Z",
                    "reportDate": "2024-05-30T13:12:40.511Z", "remoteManagement": {"managed": true}},
        "hardware": {"make": null, "model": "iMac (24-inch, 2021)", "modelIdentifier": "iMac21,1", "serialNumber": "c02g71zkq6x0",
                     "macAddress": "", "altMacAddress": "f0:18:98:44:55:67"},
        "operatingSystem": {"name": "macOS", "version": "13.6.7", "build": "22G720"},
        "userAndLocation": {"username": "nkim", "realname": "Nora Kim", "email": "Nora.Kim@Example.com", "position": ""}
    });
    let a = m.apply(&sample, ObjectType::Hardware).attrs;
    let want: BTreeMap<&str, &str> = [
        ("Serial Number", "C02G71ZKQ6X0"),
        ("Name", "iMac-LAB-02"),
        ("Model", "iMac (24-inch, 2021)"),
        ("Manufacturer", "Apple"),
        ("OS Name", "macOS"),
        ("OS Version", "13.6.7"),
        ("MAC Address", "F0:18:98:44:55:67"),
        ("User Email", "nora.kim@example.com"),
        ("User Name", "Nora Kim"),
        ("Last Inventory Update", "2024-05-30T13:12:40Z"),
        ("Last Check-in", "2024-05-30T13:12:44Z"),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<&str, &str> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn fleet_mutations_show_up_in_the_listing() {
    let sim = sim(60, |_| {}).await;
    let c = connector(&sim, &[]).await;
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jamf, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    // Pick a computer with a user and a usable serial.
    let i = (1..sim.computer_count())
        .find(|i| {
            let r = sim.computer(*i);
            sim.serial(*i).is_some()
                && r["userAndLocation"]["email"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty())
        })
        .unwrap();
    let id = sim.computer_id(i);
    sim.set_os_version(i, "15.1.99");
    sim.remove_field(i, "userAndLocation.email");
    let dup = sim.duplicate_computer(i);
    let added = sim.add_computer();
    sim.remove_computer(0);
    let (records, _, total) = drain(c.as_ref()).await.unwrap();
    assert_eq!(total, Some(61));
    assert_eq!(sim.computer_count(), 61);
    let by_id: HashMap<&str, &Value> = records
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    let rec = by_id[id.as_str()];
    let a = m.apply(rec, ObjectType::Hardware).attrs;
    assert_eq!(a["OS Version"], "15.1.99");
    assert!(
        !a.contains_key("User Email"),
        "a value the vendor stops reporting is absent, not empty"
    );
    assert!(rec["userAndLocation"]["email"].is_null());
    // The re-enrolled duplicate: same serial, new id, newer check-in.
    let dup_rec = by_id[sim.computer_id(dup - 1).as_str()];
    assert_ne!(dup_rec["id"], rec["id"]);
    assert_eq!(
        dup_rec["hardware"]["serialNumber"],
        rec["hardware"]["serialNumber"]
    );
    assert!(c.checked_in(dup_rec).unwrap() > c.checked_in(rec).unwrap());
    assert!(by_id.contains_key(sim.computer_id(added - 1).as_str()));
}

// ------------------------------------------------------------------------------------------------
// The simulator itself, over plain HTTP
// ------------------------------------------------------------------------------------------------

async fn token(sim: &JamfSim) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/api/oauth/token", sim.base_url()))
        .form(&[
            ("client_id", sim.secret()["client_id"].as_str().unwrap()),
            (
                "client_secret",
                sim.secret()["client_secret"].as_str().unwrap(),
            ),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_string()
}

async fn get(sim: &JamfSim, tok: &str, path_and_query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{}", sim.base_url(), path_and_query))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sim_oauth_token_endpoint() {
    let sim = sim(5, |c| c.token_lifetime = Duration::from_secs(600)).await;
    let s = sim.secret();
    let (id, secret) = (
        s["client_id"].as_str().unwrap(),
        s["client_secret"].as_str().unwrap(),
    );
    let http = reqwest::Client::new();
    for path in ["/api/oauth/token", "/api/v1/oauth/token"] {
        let r = http
            .post(format!("{}{path}", sim.base_url()))
            .form(&[
                ("client_id", id),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 599);
        assert!(v["scope"].as_str().unwrap().starts_with("api-role:"));
        assert!(v["access_token"].as_str().unwrap().len() > 20);
    }
    let r = http
        .post(format!("{}/api/oauth/token", sim.base_url()))
        .form(&[
            ("client_id", id),
            ("client_secret", "nope"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let r = http
        .post(format!("{}/api/oauth/token", sim.base_url()))
        .form(&[
            ("client_id", id),
            ("client_secret", secret),
            ("grant_type", "password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    assert_eq!(sim.control().token_requests(), 4);
}

#[tokio::test]
async fn sim_rejects_missing_and_expired_tokens_with_api_error() {
    let sim = sim(5, |_| {}).await;
    let (status, body) = get(&sim, "garbage", "/api/v1/computers-inventory").await;
    assert_eq!(status, 401);
    assert_eq!(body["httpStatus"], 401);
    assert_eq!(body["errors"][0]["code"], "INVALID_TOKEN");
    let r = reqwest::get(format!("{}/api/v2/mobile-devices", sim.base_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let tok = token(&sim).await;
    assert_eq!(get(&sim, &tok, "/api/v1/computers-inventory").await.0, 200);
    sim.control().expire_tokens();
    assert_eq!(get(&sim, &tok, "/api/v1/computers-inventory").await.0, 401);
}

#[tokio::test]
async fn sim_versions_sections_paging_and_clamp() {
    let sim = sim(2300, |_| {}).await;
    let tok = token(&sim).await;
    let (status, body) = get(&sim, &tok, "/api/v2/computers-inventory").await;
    assert_eq!(
        (status, body),
        (404, json!({"httpStatus": 404, "errors": []}))
    );
    assert_eq!(get(&sim, &tok, "/api/v4/computers-inventory").await.0, 200);

    // Defaults: GENERAL only (other sections are null keys), 100 a page, sorted by general.name.
    let (status, body) = get(&sim, &tok, "/api/v3/computers-inventory").await;
    assert_eq!(status, 200);
    assert_eq!(body["totalCount"], 2300);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    let r0 = &results[0];
    assert!(
        r0["general"].is_object() && r0["hardware"].is_null() && r0["userAndLocation"].is_null()
    );
    assert!(r0.as_object().unwrap().contains_key("operatingSystem"));
    assert!(r0["id"].is_string() && r0["udid"].is_string());
    assert!(r0["general"].get("lastReportedIpV4").is_some(), "v3 shape");
    let names: Vec<String> = results
        .iter()
        .map(|r| r["general"]["name"].as_str().unwrap().to_lowercase())
        .collect();
    assert!(
        names.windows(2).all(|w| w[0] <= w[1]),
        "default sort general.name:asc"
    );

    // Sections, clamp above 2000, last partial page, page past the end.
    let (_, body) = get(&sim, &tok, "/api/v1/computers-inventory?section=HARDWARE&section=USER_AND_LOCATION&page=0&page-size=5000&sort=id:asc").await;
    assert_eq!(body["totalCount"], 2300);
    let results = body["results"].as_array().unwrap();
    assert_eq!(
        results.len(),
        2000,
        "page-size above 2000 is clamped, not refused"
    );
    assert!(
        results[0]["general"].is_null()
            && results[0]["hardware"].is_object()
            && results[0]["userAndLocation"].is_object()
    );
    let (_, body) = get(
        &sim,
        &tok,
        "/api/v1/computers-inventory?page=1&page-size=2000&sort=id:asc",
    )
    .await;
    assert_eq!(body["results"].as_array().unwrap().len(), 300);
    assert!(
        body["results"][0]["general"]
            .get("lastReportedIp")
            .is_some(),
        "v1 shape"
    );
    let (_, body) = get(
        &sim,
        &tok,
        "/api/v1/computers-inventory?page=9&page-size=2000",
    )
    .await;
    assert_eq!(body["results"], json!([]));
    assert_eq!(body["totalCount"], 2300);

    // Sorting by id descending is numeric.
    let (_, body) = get(
        &sim,
        &tok,
        "/api/v1/computers-inventory?page-size=3&sort=id:desc",
    )
    .await;
    let top: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(top.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(top[0].to_string(), sim.computer_id(2299));

    // Bad parameters.
    for q in [
        "page-size=0",
        "page=-1",
        "sort=nope:asc",
        "section=NOPE",
        "filter=nope==1",
        "filter=id==",
    ] {
        let (status, body) = get(&sim, &tok, &format!("/api/v1/computers-inventory?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(body["httpStatus"], 400, "{q}");
    }
}

#[tokio::test]
async fn sim_rsql_filters() {
    let sim = sim(500, |_| {}).await;
    let tok = token(&sim).await;
    let i = (0..500).find(|i| sim.serial(*i).is_some()).unwrap();
    let serial = sim.serial(i).unwrap();
    let q = format!(
        "/api/v1/computers-inventory?section=HARDWARE&filter=hardware.serialNumber%3D%3D%22{}%22",
        serial.to_lowercase()
    );
    let (_, body) = get(&sim, &tok, &q).await;
    assert_eq!(
        body["totalCount"], 1,
        "serial equality is case-insensitive like the vendor's database"
    );
    assert_eq!(
        body["results"][0]["hardware"]["serialNumber"],
        serial.as_str()
    );

    let (a, b) = (sim.computer_id(3), sim.computer_id(7));
    let filter = url::form_urlencoded::byte_serialize(format!("id=in=({a},{b})").as_bytes())
        .collect::<String>();
    let (_, body) = get(
        &sim,
        &tok,
        &format!("/api/v1/computers-inventory?filter={filter}&sort=id:asc"),
    )
    .await;
    assert_eq!(
        ids(body["results"].as_array().unwrap(), "id"),
        vec![a.clone(), b.clone()]
    );

    let filter = url::form_urlencoded::byte_serialize(format!("id!={a};id=out=({b})").as_bytes())
        .collect::<String>();
    let (_, body) = get(
        &sim,
        &tok,
        &format!("/api/v1/computers-inventory?filter={filter}"),
    )
    .await;
    assert_eq!(body["totalCount"], 498);

    let filter = url::form_urlencoded::byte_serialize(
        b"general.name==*MacBook*,operatingSystem.version==15.5",
    )
    .collect::<String>();
    let expected = sim
        .computers()
        .iter()
        .filter(|r| {
            r["general"]["name"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("macbook")
                || r["operatingSystem"]["version"] == "15.5"
        })
        .count();
    let (_, body) = get(
        &sim,
        &tok,
        &format!("/api/v1/computers-inventory?filter={filter}"),
    )
    .await;
    assert_eq!(body["totalCount"], expected as u64);
}

#[tokio::test]
async fn sim_mobile_endpoints() {
    let sim = sim(0, |c| c.mobile_devices = 120).await;
    let tok = token(&sim).await;
    let (status, body) = get(&sim, &tok, "/api/v2/mobile-devices/detail?section=GENERAL&section=HARDWARE&section=USER_AND_LOCATION&page-size=50&sort=deviceId:asc").await;
    assert_eq!(status, 200);
    assert_eq!(body["totalCount"], 120);
    let r0 = &body["results"][0];
    assert_eq!(r0["deviceType"], "iOS");
    assert!(r0["mobileDeviceId"].is_string());
    for f in [
        "displayName",
        "osVersion",
        "lastInventoryUpdateDate",
        "managed",
        "supervised",
    ] {
        assert!(r0["general"].get(f).is_some(), "general.{f}");
    }
    for f in ["serialNumber", "wifiMacAddress", "model", "modelIdentifier"] {
        assert!(r0["hardware"].get(f).is_some(), "hardware.{f}");
    }
    for f in ["username", "realName", "emailAddress"] {
        assert!(
            r0["userAndLocation"].get(f).is_some(),
            "userAndLocation.{f}"
        );
    }
    assert!(r0["purchasing"].is_null());
    // Default: GENERAL only, sorted by displayName.
    let (_, body) = get(&sim, &tok, "/api/v2/mobile-devices/detail").await;
    assert!(body["results"][0]["hardware"].is_null());
    let names: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["general"]["displayName"].as_str().unwrap().to_lowercase())
        .collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]));
    // Flat filter names.
    let (_, body) = get(
        &sim,
        &tok,
        "/api/v2/mobile-devices/detail?filter=model%3D%3D%22iPad*%22",
    )
    .await;
    let ipads = sim
        .mobiles()
        .iter()
        .filter(|m| m["hardware"]["model"].as_str().unwrap().starts_with("iPad"))
        .count();
    assert_eq!(body["totalCount"], ipads as u64);
    // The slim list.
    let (status, body) = get(&sim, &tok, "/api/v2/mobile-devices?page-size=200").await;
    assert_eq!(status, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 120);
    let s0 = &body["results"][0];
    for f in [
        "id",
        "name",
        "serialNumber",
        "wifiMacAddress",
        "udid",
        "phoneNumber",
        "model",
        "modelIdentifier",
        "username",
        "type",
        "managementId",
        "softwareUpdateDeviceId",
    ] {
        assert!(s0.get(f).is_some(), "slim field {f}");
    }
    assert_eq!(s0["id"], sim.mobile(0)["mobileDeviceId"]);
}

#[tokio::test]
async fn sim_counts_requests_and_start_default_works() {
    fast();
    let sim = start_default(40).await.unwrap();
    assert_eq!(sim.computer_count(), 40);
    assert_eq!(sim.mobile_count(), 10);
    let s = sim.secret();
    assert_eq!(s["tenant_url"], sim.base_url());
    assert!(s["client_id"].is_string() && s["client_secret"].is_string());
    // serial(i) is the register key: None for null, empty and placeholder serials.
    let big = start_default(3000).await.unwrap();
    let unusable: Vec<usize> = (0..3000).filter(|i| big.serial(*i).is_none()).collect();
    assert!(!unusable.is_empty());
    assert!(
        unusable
            .iter()
            .any(|i| big.raw_serial(*i).as_str().is_some_and(|s| !s.is_empty())),
        "placeholders are present"
    );
    assert!(unusable.iter().any(|i| big.raw_serial(*i).is_null()));
    for i in (0..3000).filter(|i| big.serial(*i).is_some()).take(50) {
        assert_eq!(big.serial(i).unwrap(), big.raw_serial(i).as_str().unwrap());
    }
    let tok = token(&sim).await;
    get(&sim, &tok, "/api/v3/computers-inventory").await;
    get(&sim, &tok, "/api/v2/mobile-devices/detail").await;
    assert_eq!(sim.control().data_requests(), 2);
    assert_eq!(sim.control().requests_to("/api/v3/"), 1);
    assert_eq!(sim.control().token_requests(), 1);
}
