//! The real Intune / Entra ID connector against the Intune simulator.
//!
//! Run: `cargo test -p assetsync-tests --test intune_connector -- --nocapture` (prints vendor
//! requests per 1,000 records for devices and users).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Once};
use std::time::Duration;

use assetsync::connectors::{self, Connector, ConnectorContext, Cursor, MemoryState};
use assetsync::error::ConnectorError;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync_tests::sim::fleet;
use assetsync_tests::sim::intune::{IntuneConfig, IntuneSim, DEVICE_ROLE, NEVER, USER_ROLE};
use assetsync_tests::sim::Fault;
use serde_json::{json, Value};

fn fast() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("ASSETSYNC_FAST_RETRY", "1"));
}

fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ConnectorContext {
        connection: "intune-test".into(),
        object_type,
        config,
        state: Arc::new(MemoryState::default()),
    }
}

async fn sim(devices: usize, users: usize) -> IntuneSim {
    fast();
    IntuneSim::start(IntuneConfig {
        devices,
        users,
        ..IntuneConfig::default()
    })
    .await
    .expect("simulator starts")
}

async fn build(
    secret: &Value,
    object_type: ObjectType,
    config: &[(&str, &str)],
) -> Result<Box<dyn Connector>, ConnectorError> {
    connectors::build(SourceKind::Intune, secret, ctx(object_type, config)).await
}

async fn devices_connector(sim: &IntuneSim, config: &[(&str, &str)]) -> Box<dyn Connector> {
    build(&sim.secret(), ObjectType::Hardware, config)
        .await
        .expect("connector builds")
}

async fn users_connector(sim: &IntuneSim, config: &[(&str, &str)]) -> Box<dyn Connector> {
    build(&sim.secret(), ObjectType::Person, config)
        .await
        .expect("connector builds")
}

/// Every page; the cursor goes through JSON text between pages, as on the fetch queue.
async fn drain(c: &dyn Connector) -> Result<(Vec<Value>, usize, Option<u64>), ConnectorError> {
    let mut records = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut total = None;
    for pages in 1..10_000 {
        let page = c.fetch_page(cursor.as_ref()).await?;
        total = page.total.or(total);
        records.extend(page.records);
        match page.next {
            Some(n) => {
                let text = serde_json::to_string(&n).expect("cursor serialises");
                assert!(text.len() < 2048, "cursor is small JSON: {text}");
                cursor = Some(serde_json::from_str(&text).expect("cursor parses"));
            }
            None => return Ok((records, pages, total)),
        }
    }
    panic!("the listing never ended");
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().expect("id is a string").to_string())
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

#[tokio::test]
async fn devices_page_through_2500_each_once_with_count() {
    let sim = sim(2500, 10).await;
    let c = devices_connector(&sim, &[]).await;
    let (records, pages, total) = drain(c.as_ref()).await.expect("all pages");
    assert_each_once(&ids(&records), &ids(&sim.devices()));
    assert_eq!(total, Some(2500), "@odata.count is the total");
    assert_eq!(pages, 3, "999 + 999 + 502");
    // $select honoured: only the selected properties came back.
    assert!(records
        .iter()
        .all(|r| r.get("imei").is_none() && r.get("serialNumber").is_some()));
    assert!(
        sim.tops()
            .iter()
            .all(|(l, t)| l == "managedDevices" && t == "999"),
        "{:?}",
        sim.tops()
    );
    let data = sim.control().data_requests();
    assert_eq!(data, 3);
    assert_eq!(sim.control().token_requests(), 1, "one token for the run");
    let counts = c.http_counts();
    assert_eq!(counts.requests, 4, "3 pages + 1 token");
    println!(
        "intune managedDevices: {} records, {} Graph requests + {} token = {:.2} vendor requests per 1,000 records",
        records.len(),
        data,
        sim.control().token_requests(),
        per_thousand(counts.requests, records.len())
    );
}

#[tokio::test]
async fn users_page_through_2500_each_once() {
    let sim = sim(10, 2500).await;
    let c = users_connector(&sim, &[]).await;
    let (records, pages, total) = drain(c.as_ref()).await.expect("all pages");
    assert_each_once(&ids(&records), &ids(&sim.users()));
    assert_eq!(
        total, None,
        "users report no count without ConsistencyLevel"
    );
    assert_eq!(pages, 3);
    assert!(
        sim.tops().iter().all(|(l, t)| l == "users" && t == "999"),
        "{:?}",
        sim.tops()
    );
    assert!(records
        .iter()
        .all(|r| r.get("accountEnabled").is_some() && r.get("createdDateTime").is_none()));
    let counts = c.http_counts();
    println!(
        "intune users: {} records, {} Graph requests + {} token = {:.2} vendor requests per 1,000 records",
        records.len(),
        sim.control().data_requests(),
        sim.control().token_requests(),
        per_thousand(counts.requests, records.len())
    );
}

#[tokio::test]
async fn page_size_at_vendor_max_and_beyond() {
    let sim = sim(2100, 1000).await;
    // managedDevices at its own page size, 1000.
    let c = devices_connector(&sim, &[("page_size", "1000")]).await;
    let (records, pages, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!((records.len(), pages), (2100, 3));
    assert!(sim.tops().iter().all(|(_, t)| t == "1000"));
    // users at 999; 1000 is refused by config before Graph would answer 400.
    let c = users_connector(&sim, &[("page_size", "999")]).await;
    let (records, pages, _) = drain(c.as_ref()).await.unwrap();
    assert_eq!((records.len(), pages), (1000, 2));
    let e = build(&sim.secret(), ObjectType::Person, &[("page_size", "1000")])
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("1 to 999"), "{e}");
    // The simulator's own cap (Graph answers 400 above 999 on users).
    let tok = raw_token(&sim).await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1.0/users?$top=1000", sim.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Must be between 1 and 999 inclusive"));
}

async fn raw_token(sim: &IntuneSim) -> String {
    let s = sim.secret();
    let r: Value = reqwest::Client::new()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.base_url(),
            s["tenant_id"].as_str().unwrap()
        ))
        .form(&[
            ("client_id", s["client_id"].as_str().unwrap()),
            ("client_secret", s["client_secret"].as_str().unwrap()),
            ("scope", &format!("{}/.default", sim.base_url())),
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

#[tokio::test]
async fn throttling_429_with_and_without_retry_after() {
    let sim = sim(2500, 10).await;
    let c = devices_connector(&sim, &[]).await;
    sim.control().inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    sim.control()
        .inject_after(2, Fault::TooManyRequests { retry_after: None });
    let started = std::time::Instant::now();
    let (records, _, _) = drain(c.as_ref()).await.expect("recovers from 429s");
    assert_each_once(&ids(&records), &ids(&sim.devices()));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    let counts = c.http_counts();
    assert_eq!(counts.throttled, 2, "{counts:?}");
    assert!(counts.throttle_wait_ms >= 1000, "{counts:?}");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let sim = sim(2500, 10).await;
    let c = devices_connector(&sim, &[]).await;
    sim.control().inject(Fault::ServerError(500));
    sim.control().inject_after(1, Fault::ServerError(503));
    sim.control().inject_after(2, Fault::ServerError(504));
    let (records, _, _) = drain(c.as_ref()).await.expect("recovers from 5xx");
    assert_each_once(&ids(&records), &ids(&sim.devices()));
    assert_eq!(c.http_counts().retries, 3);
}

#[tokio::test]
async fn persistent_503_fails_clearly_and_retryably() {
    let sim = sim(10, 10).await;
    let c = devices_connector(&sim, &[]).await;
    for _ in 0..10 {
        sim.control().inject(Fault::ServerError(503));
    }
    let e = c.fetch_page(None).await.expect_err("gives up");
    assert!(matches!(e, ConnectorError::Exhausted { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("503"), "{e}");
}

#[tokio::test]
async fn malformed_json_once_is_refetched() {
    let sim = sim(2500, 10).await;
    let c = devices_connector(&sim, &[]).await;
    sim.control().inject_after(1, Fault::MalformedJson);
    let (records, _, _) = drain(c.as_ref())
        .await
        .expect("recovers from one malformed page");
    assert_each_once(&ids(&records), &ids(&sim.devices()));
    assert_eq!(sim.control().data_requests(), 4);
    // Twice in a row: a clear error naming the path.
    sim.control().inject(Fault::MalformedJson);
    sim.control().inject(Fault::MalformedJson);
    let e = c.fetch_page(None).await.expect_err("fails");
    assert!(matches!(e, ConnectorError::Malformed { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("/v1.0/deviceManagement/managedDevices"),
        "{e}"
    );
}

#[tokio::test]
async fn slow_answer_times_out_and_is_retried() {
    let sim = sim(20, 10).await;
    let c = devices_connector(&sim, &[]).await;
    sim.control().inject(Fault::Delay(Duration::from_secs(7)));
    let page = c.fetch_page(None).await.expect("retried after the timeout");
    assert_eq!(page.records.len(), 20);
    assert!(c.http_counts().retries >= 1);
}

#[tokio::test]
async fn token_expiry_mid_run_reauthenticates_once() {
    let sim = sim(2500, 2500).await;
    let c = devices_connector(&sim, &[]).await;
    sim.control().inject_after(1, Fault::ExpireTokens);
    let (records, _, _) = drain(c.as_ref()).await.expect("re-authenticates");
    assert_each_once(&ids(&records), &ids(&sim.devices()));
    assert_eq!(sim.control().token_requests(), 2);

    // Users too (the same app token is shared by both listings).
    let u = users_connector(&sim, &[]).await;
    sim.control().inject_after(2, Fault::ExpireTokens);
    let (records, _, _) = drain(u.as_ref()).await.expect("re-authenticates");
    assert_each_once(&ids(&records), &ids(&sim.users()));
    assert_eq!(sim.control().token_requests(), 3);
}

#[tokio::test]
async fn refused_fresh_token_is_an_auth_error() {
    let sim = sim(10, 10).await;
    let c = devices_connector(&sim, &[]).await;
    // The token is refused, and so is the fresh one.
    sim.control().inject(Fault::ExpireTokens);
    sim.control().inject(Fault::ExpireTokens);
    let e = c.fetch_page(None).await.expect_err("fails");
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("freshly issued token"), "{e}");
}

#[tokio::test]
async fn token_errors_are_explained_in_words() {
    let sim = sim(10, 10).await;
    let base = sim.secret();

    let mut s = base.clone();
    s["client_secret"] = json!("2b7e1c4a-secret-id-not-value");
    let e = build(&s, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .fetch_page(None)
        .await
        .err()
        .unwrap();
    let t = e.to_string();
    println!("wrong secret: {t}");
    assert!(matches!(e, ConnectorError::Auth { .. }), "{t}");
    assert!(
        t.contains("secret's ID instead of its value") && t.contains("AADSTS7000215"),
        "{t}"
    );
    assert!(
        !t.contains("2b7e1c4a-secret-id-not-value"),
        "the secret never shows: {t}"
    );
    assert!(!t.contains("Trace ID"), "{t}");

    let mut s = base.clone();
    s["tenant_id"] = json!("00000000-1111-2222-3333-444444444444");
    let e = build(&s, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("AADSTS90002") && e.to_string().contains("tenant_id"),
        "{e}"
    );

    let mut s = base.clone();
    s["client_id"] = json!("99999999-0000-0000-0000-000000000000");
    let e = build(&s, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("AADSTS700016") && e.to_string().contains("client_id"),
        "{e}"
    );

    let mut s = base.clone();
    s["graph_url"] = json!(format!("{}/not-graph", sim.base_url()));
    let e = build(&s, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("AADSTS500011") && e.to_string().contains("graph_url"),
        "{e}"
    );

    sim.set_token_error(Some(7000222));
    let e = build(&base, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("expired") && e.to_string().contains("AADSTS7000222"),
        "{e}"
    );

    sim.set_token_error(Some(65001));
    let e = build(&base, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .fetch_page(None)
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("admin consent") && e.to_string().contains(DEVICE_ROLE),
        "{e}"
    );
    sim.set_token_error(None);
}

#[tokio::test]
async fn unconsented_app_gets_403_explained() {
    let sim = sim(10, 10).await;
    sim.set_roles(&[]);
    let c = devices_connector(&sim, &[]).await;
    let e = c.fetch_page(None).await.expect_err("403");
    let t = e.to_string();
    println!("unconsented: {t}");
    assert!(matches!(e, ConnectorError::Forbidden { .. }), "{t}");
    assert!(t.contains("admin consent for DeviceManagementManagedDevices.Read.All is missing (application permission)"), "{t}");
    assert!(t.contains("Application is not authorized"), "{t}");
    let e = c.test().await.expect_err("403");
    assert!(
        e.to_string()
            .contains("DeviceManagementManagedDevices.Read.All"),
        "{e}"
    );

    // Devices consented but not users: users get Authorization_RequestDenied → User.Read.All.
    let sim = self::sim(10, 10).await;
    sim.set_roles(&[DEVICE_ROLE]);
    let u = users_connector(&sim, &[]).await;
    let e = u.fetch_page(None).await.expect_err("403");
    assert!(
        e.to_string().contains("User.Read.All")
            && e.to_string().contains("Authorization_RequestDenied"),
        "{e}"
    );
    assert!(devices_connector(&sim, &[])
        .await
        .fetch_page(None)
        .await
        .is_ok());
}

#[tokio::test]
async fn test_action_reports_tenant_permissions_and_total() {
    let sim = sim(30, 10).await;
    let r = devices_connector(&sim, &[])
        .await
        .test()
        .await
        .expect("works");
    assert!(r.message.contains("30 in total"), "{}", r.message);
    assert!(
        r.message.contains(DEVICE_ROLE) && r.message.contains(USER_ROLE),
        "{}",
        r.message
    );
    assert!(r.sample.is_some());
    let r = users_connector(&sim, &[])
        .await
        .test()
        .await
        .expect("works");
    assert!(r.message.contains("users"), "{}", r.message);
}

#[tokio::test]
async fn default_mappings_against_the_simulated_fleet() {
    let sim = sim(300, 300).await;
    let c = devices_connector(&sim, &[]).await;
    let (records, _, _) = drain(c.as_ref()).await.unwrap();
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Intune, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    let mut keyless = 0;
    for raw in &records {
        let r = m.apply(raw, ObjectType::Hardware);
        let serial = raw["serialNumber"].as_str().unwrap_or("");
        if r.key.is_none() {
            keyless += 1;
            assert!(
                serial.is_empty()
                    || serial == "To be filled by O.E.M."
                    || serial == "Default string",
                "{serial}"
            );
        }
        if let Some(mac) = r.attrs.get("MAC Address") {
            assert_eq!(mac.len(), 17, "{mac}");
            assert_eq!(mac.matches(':').count(), 5);
        }
        if raw["lastSyncDateTime"] == NEVER {
            assert!(!r.attrs.contains_key("Last Check-in"));
            assert!(c.checked_in(raw).is_none());
        } else {
            assert!(r.attrs["Last Check-in"].ends_with('Z'));
        }
        if raw["azureADDeviceId"] == "00000000-0000-0000-0000-000000000000" {
            assert!(!r.attrs.contains_key("Azure AD Device ID"));
        }
        if let Some(e) = r.attrs.get("User Email") {
            assert!(e.ends_with("@example.com") && *e == e.to_lowercase(), "{e}");
        }
        assert_eq!(c.source_id(raw).as_deref(), raw["id"].as_str());
    }
    assert!(keyless > 0, "some devices have no usable serial");

    // Devices' user emails match people of the users listing (same directory).
    let u = users_connector(&sim, &[]).await;
    let (people, _, _) = drain(u.as_ref()).await.unwrap();
    let pm = Mapping::parse(
        connectors::default_mapping(SourceKind::Intune, ObjectType::Person, None).unwrap(),
    )
    .unwrap();
    let emails: HashSet<String> = people
        .iter()
        .filter_map(|p| pm.apply(p, ObjectType::Person).attrs.get("Email").cloned())
        .collect();
    let dev_emails: Vec<String> = records
        .iter()
        .filter_map(|d| {
            m.apply(d, ObjectType::Hardware)
                .attrs
                .get("User Email")
                .cloned()
        })
        .collect();
    assert!(!dev_emails.is_empty());
    assert!(
        dev_emails.iter().all(|e| emails.contains(e)),
        "every device user is a person"
    );
    assert!(pm
        .apply(&people[0], ObjectType::Person)
        .attrs
        .contains_key("Status"));
    let p3 = people
        .iter()
        .find(|p| p["userPrincipalName"] == json!(fleet::person(3).email))
        .unwrap();
    assert_eq!(
        pm.apply(p3, ObjectType::Person).attrs["Email"],
        fleet::person(3).email
    );
}

#[tokio::test]
async fn records_added_and_removed_mid_run_do_not_duplicate() {
    let sim = sim(2500, 10).await;
    let c = devices_connector(&sim, &[]).await;
    let before: Vec<String> = ids(&sim.devices());
    let first = c.fetch_page(None).await.unwrap();
    let mut seen = ids(&first.records);
    // Changes between pages: two devices retire, three enrol.
    let served: HashSet<String> = seen.iter().cloned().collect();
    let unserved: Vec<usize> = (0..2500)
        .filter(|i| !served.contains(sim.device(*i).unwrap()["id"].as_str().unwrap()))
        .take(2)
        .collect();
    for i in &unserved {
        sim.remove_device(*i);
    }
    for _ in 0..3 {
        sim.add_device();
    }
    let mut cursor = first.next;
    while let Some(cur) = cursor {
        let p = c.fetch_page(Some(&cur)).await.unwrap();
        seen.extend(ids(&p.records));
        cursor = p.next;
    }
    let set: HashSet<&String> = seen.iter().collect();
    assert_eq!(set.len(), seen.len(), "no duplicates");
    let removed: HashSet<String> = unserved.iter().map(|i| before[*i].clone()).collect();
    for id in before.iter().filter(|id| !removed.contains(*id)) {
        assert!(
            set.contains(id),
            "device {id} present throughout was missed"
        );
    }
}

#[tokio::test]
async fn filter_and_extra_select_reach_graph() {
    let sim = sim(400, 400).await;
    let c = devices_connector(
        &sim,
        &[
            ("filter", "operatingSystem eq 'Windows'"),
            ("select", "imei,enrolledDateTime"),
        ],
    )
    .await;
    let (records, _, total) = drain(c.as_ref()).await.unwrap();
    let windows = sim
        .devices()
        .iter()
        .filter(|d| d["operatingSystem"] == "Windows")
        .count();
    assert_eq!(records.len(), windows);
    assert_eq!(total, Some(windows as u64));
    assert!(records
        .iter()
        .all(|r| r.get("imei").is_some() && r.get("enrolledDateTime").is_some()));
    let u = users_connector(&sim, &[("filter", "accountEnabled eq true")]).await;
    let (people, _, _) = drain(u.as_ref()).await.unwrap();
    assert!(!people.is_empty() && people.iter().all(|p| p["accountEnabled"] == json!(true)));
    // An unsupported filter is explained.
    let bad = devices_connector(&sim, &[("filter", "startswith(deviceName,'LT')")]).await;
    let e = bad.fetch_page(None).await.err().unwrap();
    assert!(e.to_string().contains("config:filter"), "{e}");
    // A property v1.0 does not have (ethernetMacAddress is newer; chassisType is beta-only).
    let bad = devices_connector(&sim, &[("select", "chassisType")]).await;
    let e = bad.fetch_page(None).await.err().unwrap();
    assert!(e.to_string().contains("config:select"), "{e}");
}

#[tokio::test]
async fn next_link_on_another_loopback_name_stays_on_graph_url() {
    let sim = sim(2500, 10).await;
    // graph_url names the simulator as localhost; its nextLinks then say localhost too, and a
    // cursor pointing elsewhere is re-based onto graph_url rather than sent the token.
    let mut s = sim.secret();
    let port = sim.base_url().rsplit(':').next().unwrap().to_string();
    s["graph_url"] = json!(format!("http://localhost:{port}"));
    let c = build(&s, ObjectType::Hardware, &[]).await.unwrap();
    let first = c.fetch_page(None).await.unwrap();
    let next = first.next.unwrap();
    assert!(
        next.0["next_link"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://localhost:{port}/v1.0/")),
        "{}",
        next.0
    );
    let evil = Cursor(
        json!({"next_link": next.0["next_link"].as_str().unwrap().replace("localhost", "evil.invalid"), "total": 2500}),
    );
    let p = c
        .fetch_page(Some(&evil))
        .await
        .expect("re-based onto graph_url");
    assert_eq!(p.records.len(), 999);
    assert_eq!(p.total, Some(2500));
    let bad = Cursor(json!({"page": 3}));
    assert!(matches!(
        c.fetch_page(Some(&bad)).await.err().unwrap(),
        ConnectorError::Config(_)
    ));
}

#[tokio::test]
async fn token_is_cached_across_connectors() {
    let sim = sim(10, 10).await;
    let a = devices_connector(&sim, &[]).await;
    a.fetch_page(None).await.unwrap();
    let b = users_connector(&sim, &[]).await;
    b.fetch_page(None).await.unwrap();
    assert_eq!(
        sim.control().token_requests(),
        1,
        "a warm process reuses the token"
    );
}

#[tokio::test]
async fn bad_secrets_name_the_field() {
    fast();
    let e = build(
        &json!({"tenant_id": "t", "client_id": "c"}),
        ObjectType::Hardware,
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("client_secret"), "{e}");
    let e = build(&json!({"tenant_id": "t", "client_id": "c", "client_secret": "s", "login_url": "http://login.example.com"}), ObjectType::Hardware, &[])
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("login_url"), "{e}");
    // Software is the detectedApps listing now; a listing Intune lacks is still named.
    let e = build(
        &json!({"tenant_id": "t", "client_id": "c", "client_secret": "s"}),
        ObjectType::Software,
        &[("api", "software")],
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("detectedApps"), "{e}");
}

/// `detectedApps` into Software: every app × device row, paged (apps and each app's devices),
/// keyed by the device's serial and linked to it.
#[tokio::test]
async fn detected_apps_become_software_linked_to_their_device() {
    let sim = sim(120, 10).await;
    let c = build(&sim.secret(), ObjectType::Software, &[("page_size", "3")])
        .await
        .expect("connector builds");
    let (records, pages, total) = drain(c.as_ref()).await.unwrap();
    assert!(pages > 2, "{pages} pages");
    assert_eq!(total, None, "Graph counts apps, not app × device rows");
    assert_eq!(records.len(), sim.app_rows().len());
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Intune, ObjectType::Software, None).unwrap(),
    )
    .unwrap();
    let mut keys = HashSet::new();
    for r in &records {
        let mapped = m.apply(r, ObjectType::Software);
        match c.parent_key(r) {
            Some(serial) => {
                let key = mapped.key.clone().expect("keyed");
                assert!(key.starts_with(&format!("{serial}|")), "{key}");
                assert_eq!(mapped.attrs["Device Serial"], serial);
                assert!(mapped.attrs.contains_key("Name") && mapped.attrs.contains_key("Version"));
                keys.insert(key);
            }
            None => assert!(mapped.key.is_none(), "no serial, no key: {r}"),
        }
        assert!(c.source_id(r).is_some());
    }
    assert!(!keys.is_empty());
    let per_app = sim
        .control()
        .requests_to("/v1.0/deviceManagement/detectedApps/{id}");
    assert!(per_app > 0, "devices were looked up per app");
}
