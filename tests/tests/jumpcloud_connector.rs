//! The real JumpCloud connector against the JumpCloud simulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use assetsync::connectors::{self, Connector, ConnectorContext, Cursor, MemoryState};
use assetsync::error::ConnectorError;
use assetsync::event::{ObjectType, SourceKind};
use assetsync::mapping::Mapping;
use assetsync_tests::sim::jumpcloud::{JumpCloudConfig, JumpCloudSim};
use assetsync_tests::sim::Fault;
use serde_json::{json, Value};

fn init() {
    std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
}

fn ctx(object_type: ObjectType, config: &[(&str, &str)]) -> ConnectorContext {
    ConnectorContext {
        connection: "jumpcloud-test".into(),
        object_type,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        state: Arc::new(MemoryState::default()),
    }
}

async fn connector(
    secret: &Value,
    object_type: ObjectType,
    config: &[(&str, &str)],
) -> Result<Box<dyn Connector>, ConnectorError> {
    connectors::build(SourceKind::Jumpcloud, secret, ctx(object_type, config)).await
}

struct Run {
    records: Vec<Value>,
    pages: usize,
    total: Option<u64>,
}

/// Page to the end; a failed page is retried once with the same cursor (a page is a unit of retry).
async fn drain(c: &dyn Connector) -> Result<Run, ConnectorError> {
    let mut cursor: Option<Cursor> = None;
    let mut run = Run {
        records: Vec::new(),
        pages: 0,
        total: None,
    };
    loop {
        let page = match c.fetch_page(cursor.as_ref()).await {
            Ok(p) => p,
            Err(e @ ConnectorError::Malformed { .. }) => {
                eprintln!("page failed, retrying it: {e}");
                c.fetch_page(cursor.as_ref()).await?
            }
            Err(e) => return Err(e),
        };
        run.pages += 1;
        run.total = page.total;
        run.records.extend(page.records);
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(run),
        }
    }
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn per_1000(requests: u64, records: usize) -> f64 {
    requests as f64 * 1000.0 / records.max(1) as f64
}

fn query_map(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn systems_page_fully_with_user_emails_and_models() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 2500,
        users: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();

    // Every record exactly once, in 25 pages of the maximum size.
    let got = ids(&run.records);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 2500);
    assert_eq!(unique.len(), 2500);
    let expected: HashSet<String> = ids(&sim.systems()).into_iter().collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        expected
    );
    assert_eq!(run.pages, 25);
    assert_eq!(run.total, Some(2500));

    // The listing asked for 100 at a time, stably sorted, skipping by what it had seen.
    let list: Vec<_> = sim
        .queries()
        .into_iter()
        .filter(|(p, _)| p == "/api/systems")
        .collect();
    assert_eq!(list.len(), 25);
    for (n, (_, q)) in list.iter().enumerate() {
        let q = query_map(q);
        assert!(q.contains(&("limit".into(), "100".into())), "{q:?}");
        assert!(q.contains(&("sort".into(), "_id".into())), "{q:?}");
        assert!(q.contains(&("skip".into(), (n * 100).to_string())), "{q:?}");
    }

    // Mapped with the default mapping, the enrichments land where the register wants them.
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    let by_id: HashMap<String, &Value> = run
        .records
        .iter()
        .map(|r| (r["_id"].as_str().unwrap().to_string(), r))
        .collect();
    let (mut keyless, mut emails, mut models) = (0, 0, 0);
    for (i, sys) in sim.systems().iter().enumerate() {
        let raw = by_id[sys["_id"].as_str().unwrap()];
        let rec = m.apply(raw, ObjectType::Hardware);
        if rec.key.is_none() {
            keyless += 1;
        }
        assert_eq!(
            rec.attrs.get("User Email").cloned(),
            sim.primary_email(i),
            "system {i}"
        );
        assert_eq!(rec.attrs.get("Model").cloned(), sim.model(i), "system {i}");
        emails += rec.attrs.contains_key("User Email") as usize;
        models += rec.attrs.contains_key("Model") as usize;
        if i % 25 == 11 {
            assert!(!rec.attrs.contains_key("IP Address"));
        } else {
            assert!(
                rec.attrs["IP Address"].starts_with("10."),
                "{:?}",
                rec.attrs
            );
        }
        assert!(rec.attrs["Last Check-in"].ends_with('Z'));
        assert_eq!(c.source_id(raw).as_deref(), sys["_id"].as_str());
        assert!(c.checked_in(raw).is_some());
    }
    // Serial absent/empty/placeholder: i%50 in {7, 9} plus i%100==53 (no System Insights serial either).
    assert_eq!(keyless, 125);
    assert!(
        emails > 2000 && models > 2300,
        "emails {emails} models {models}"
    );

    let counts = c.http_counts();
    let users = sim.control().requests_to("/api/systemusers");
    let insights = sim.control().requests_to("/api/v2/");
    println!(
        "JumpCloud systems: {} requests for 2500 records = {:.1} per 1,000 (list {}, user lookups {}, system_info {})",
        counts.requests,
        per_1000(counts.requests, 2500),
        list.len(),
        users,
        insights
    );
    assert_eq!(counts.requests, sim.requests());
    assert!(counts.requests <= 75, "{counts:?}");
}

#[tokio::test]
async fn directory_lookup_and_no_enrichment_request_counts() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 1000,
        users: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(
        &sim.secret(),
        ObjectType::Hardware,
        &[("user_lookup", "directory")],
    )
    .await
    .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 1000);
    let n = c.http_counts().requests;
    println!(
        "JumpCloud systems, user_lookup=directory: {:.1} requests per 1,000 records",
        per_1000(n, 1000)
    );
    // 10 list pages, 10 directory pages (once), 10 system_info pages.
    assert_eq!(n, 30);
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    for (i, raw) in run.records.iter().enumerate().take(50) {
        let pos = sim
            .systems()
            .iter()
            .position(|s| s["_id"] == raw["_id"])
            .unwrap();
        assert_eq!(
            m.apply(raw, ObjectType::Hardware)
                .attrs
                .get("User Email")
                .cloned(),
            sim.primary_email(pos),
            "record {i}"
        );
    }

    let before = sim.requests();
    let c = connector(
        &sim.secret(),
        ObjectType::Hardware,
        &[("user_lookup", "off"), ("insights", "off")],
    )
    .await
    .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 1000);
    assert!(run
        .records
        .iter()
        .all(|r| r.get("assetsync_user_email").is_none() && r.get("assetsync_model").is_none()));
    assert_eq!(sim.requests() - before, 10);
    println!("JumpCloud systems, no enrichment: 10.0 requests per 1,000 records");
}

#[tokio::test]
async fn users_page_fully_with_status_and_managers() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 0,
        users: 2500,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim.secret(), ObjectType::Person, &[])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    let got = ids(&run.records);
    assert_eq!(got.len(), 2500);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 2500);
    assert_eq!(run.total, Some(2500));
    assert_eq!(run.pages, 25);

    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Person, None).unwrap(),
    )
    .unwrap();
    let users = sim.users();
    let email_of: HashMap<&str, String> = users
        .iter()
        .map(|u| {
            (
                u["_id"].as_str().unwrap(),
                u["email"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    let by_id: HashMap<&str, &Value> = run
        .records
        .iter()
        .map(|r| (r["_id"].as_str().unwrap(), r))
        .collect();
    let mut status: HashMap<String, usize> = HashMap::new();
    for (i, u) in users.iter().enumerate() {
        let rec = m.apply(by_id[u["_id"].as_str().unwrap()], ObjectType::Person);
        let a = &rec.attrs;
        assert_eq!(rec.key.as_deref(), u["_id"].as_str());
        assert_eq!(
            a["Email"],
            assetsync_tests::sim::fleet::person(i).email,
            "user {i}"
        );
        assert_eq!(
            a["First Name"],
            assetsync_tests::sim::fleet::person(i).first
        );
        assert_eq!(
            a.get("Manager"),
            u.get("manager")
                .and_then(Value::as_str)
                .map(|m| &email_of[m]),
            "user {i}"
        );
        let want = match u.get("state").and_then(Value::as_str) {
            Some("ACTIVATED") => "active",
            Some("SUSPENDED") => "suspended",
            Some("STAGED") => "staged",
            _ if u["suspended"] == true => "suspended",
            _ => "active",
        };
        assert_eq!(a["Status"], want, "user {i}: {u}");
        assert!(
            a.contains_key("Department")
                && a.contains_key("Job Title")
                && a.contains_key("Location")
                && a.contains_key("Employee ID")
        );
        *status.entry(a["Status"].clone()).or_default() += 1;
    }
    assert!(
        status["staged"] > 50 && status["suspended"] > 100 && status["active"] > 2000,
        "{status:?}"
    );

    let counts = c.http_counts();
    let lookups = sim
        .queries()
        .iter()
        .filter(|(_, q)| q.contains("fields="))
        .count();
    println!(
        "JumpCloud users: {} requests for 2500 records = {:.1} per 1,000 (manager lookups {lookups}); statuses {status:?}",
        counts.requests,
        per_1000(counts.requests, 2500)
    );
    assert!(counts.requests <= 50, "{counts:?}");
}

#[tokio::test]
async fn filters_are_passed_through() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 0,
        users: 600,
        ..Default::default()
    })
    .await
    .unwrap();
    let finance = sim
        .users()
        .iter()
        .filter(|u| u["department"] == "Finance")
        .count();
    assert!(finance > 20);
    let c = connector(
        &sim.secret(),
        ObjectType::Person,
        &[("filter", "department:$eq:Finance")],
    )
    .await
    .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), finance);
    assert_eq!(run.total, Some(finance as u64));
    assert!(run.records.iter().all(|r| r["department"] == "Finance"));
    let last = sim
        .queries()
        .into_iter()
        .rfind(|(_, q)| !q.contains("fields="))
        .unwrap();
    assert!(
        query_map(&last.1).contains(&("filter".into(), "department:$eq:Finance".into())),
        "{last:?}"
    );

    // Two filters: indexed `filter[0]`, `filter[1]` (ANDed, as the v1 reference documents; the
    // simulator reads a repeated plain `filter` as one, so the old repeated form fails here).
    let both = sim
        .users()
        .iter()
        .filter(|u| u["department"] == "Finance" && u["state"] == "ACTIVATED")
        .count();
    let c = connector(
        &sim.secret(),
        ObjectType::Person,
        &[("filter", "department:$eq:Finance;state:$eq:ACTIVATED")],
    )
    .await
    .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), both);
    assert!(both < finance);

    // `$in` with `|`-separated terms.
    let some = sim
        .users()
        .iter()
        .filter(|u| u["department"] == "Finance" || u["department"] == "Legal")
        .count();
    let c = connector(
        &sim.secret(),
        ObjectType::Person,
        &[("filter", "department:$in:Finance|Legal")],
    )
    .await
    .unwrap();
    assert_eq!(drain(c.as_ref()).await.unwrap().records.len(), some);

    // A v2-style operator is refused before any request.
    let e = connector(
        &sim.secret(),
        ObjectType::Person,
        &[("filter", "department:eq:Finance")],
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("`$`"), "{e}");
}

#[tokio::test]
async fn page_size_is_capped_at_100_like_the_vendor() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 250,
        users: 50,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = sim.secret()["api_key"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/systems?limit=101", sim.base_url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("exceeds maximum value of 100"));
    let r: Value = http
        .get(format!("{}/api/systems?limit=100", sim.base_url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 100);
    assert_eq!(r["totalCount"], 250);
    // The default limit is 10.
    let r: Value = http
        .get(format!("{}/api/systems", sim.base_url()))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 10);

    let e = connector(&sim.secret(), ObjectType::Hardware, &[("page_size", "101")])
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("page_size"), "{e}");
    let c = connector(&sim.secret(), ObjectType::Hardware, &[("page_size", "40")])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 250);
    assert_eq!(run.pages, 7);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 500,
        users: 300,
        ..Default::default()
    })
    .await
    .unwrap();
    let ctl = sim.control();
    ctl.inject_after(
        1,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    ctl.inject_after(3, Fault::TooManyRequests { retry_after: None }); // JumpCloud documents 429 without Retry-After
    ctl.inject_after(5, Fault::ServerError(503));
    ctl.inject_after(8, Fault::ServerError(500));
    ctl.inject_after(10, Fault::ServerError(502));
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 500);
    assert_eq!(
        ids(&run.records).into_iter().collect::<HashSet<_>>().len(),
        500
    );
    let counts = c.http_counts();
    assert_eq!(counts.throttled, 2, "{counts:?}");
    assert_eq!(counts.retries, 5, "{counts:?}");
    // The Retry-After of 1 s was honoured.
    assert!(started.elapsed() >= Duration::from_millis(900));
    println!("JumpCloud with faults: {counts:?}");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 150,
        users: 50,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.control().inject(Fault::Delay(Duration::from_secs(7)));
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 150);
    assert!(c.http_counts().retries >= 1);
}

#[tokio::test]
async fn malformed_json_is_read_again_once_then_fails_the_page_clearly() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 300,
        users: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let first = c.fetch_page(None).await.unwrap();
    let cursor = first.next.clone().unwrap();

    // Once: the body is read again and the page succeeds.
    sim.control().inject(Fault::MalformedJson);
    let before = sim.requests();
    let page = c.fetch_page(Some(&cursor)).await.unwrap();
    assert_eq!(page.records.len(), 100);
    assert_eq!(
        sim.requests() - before,
        4,
        "list twice, then user lookup and system_info"
    );

    // Twice in a row: the page fails, naming the vendor and path.
    sim.control().inject(Fault::MalformedJson);
    sim.control().inject(Fault::MalformedJson);
    let e = c.fetch_page(Some(&cursor)).await.err().unwrap();
    assert!(matches!(e, ConnectorError::Malformed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("JumpCloud") && e.to_string().contains("/api/systems"),
        "{e}"
    );
    // The same cursor again (what a redelivered page does) gives the page.
    let again = c.fetch_page(Some(&cursor)).await.unwrap();
    assert_eq!(again.records.len(), 100);

    // And a whole run with a malformed body in the middle still sees everything once.
    sim.control().inject_after(4, Fault::MalformedJson);
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 300);
    assert_eq!(
        ids(&run.records).into_iter().collect::<HashSet<_>>().len(),
        300
    );
}

#[tokio::test]
async fn a_key_reset_mid_run_fails_fast_with_a_clear_error() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 500,
        users: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let first = c.fetch_page(None).await.unwrap();
    // The key is reset between pages (JumpCloud keys cannot expire mid-run otherwise).
    sim.control().inject(Fault::ExpireTokens);
    let before = sim.requests();
    let e = c.fetch_page(first.next.as_ref()).await.err().unwrap();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("api_key") && msg.contains("reset"), "{msg}");
    assert!(!msg.contains(sim.secret()["api_key"].as_str().unwrap()));
    // Nothing to refresh: exactly one request, no retries.
    assert_eq!(sim.requests() - before, 1);
    assert_eq!(sim.key_resets(), 1);
    assert!(!e.is_retryable());

    // With the new key in the secret the run resumes from the same cursor.
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let page = c.fetch_page(first.next.as_ref()).await.unwrap();
    assert_eq!(page.records.len(), 100);
}

#[tokio::test]
async fn wrong_credentials_and_organizations_are_explained() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 20,
        users: 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut wrong = sim.secret();
    wrong["api_key"] = json!("not-the-key");
    let c = connector(&wrong, ObjectType::Hardware, &[]).await.unwrap();
    let e = c.test().await.err().unwrap();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains("`api_key` was refused"), "{e}");
    assert!(!e.to_string().contains("not-the-key"));
    assert_eq!(c.http_counts().requests, 1);

    // A multi-tenant admin without org_id.
    sim.set_multi_tenant(true);
    let mut no_org = sim.secret();
    no_org.as_object_mut().unwrap().remove("org_id");
    let e = connector(&no_org, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("multi-tenant admins must set `org_id`"),
        "{e}"
    );

    // With org_id every request (v1 and v2) carries x-org-id.
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    assert!(sim.secret().get("org_id").is_some());
    let report = c.test().await.unwrap();
    assert!(
        report.message.contains("20 records in total") && report.message.contains(&sim.org_id()),
        "{}",
        report.message
    );
    assert!(report.sample.is_some());
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 20);
    assert!(run
        .records
        .iter()
        .any(|r| r.get("assetsync_model").is_some() && r.get("assetsync_user_email").is_some()));

    // An organization the admin does not manage, and a malformed one.
    let mut other = sim.secret();
    other["org_id"] = json!("aaaaaaaaaaaaaaaaaaaaaaaa");
    let e = connector(&other, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("check `org_id`"), "{e}");
    other["org_id"] = json!("abc123");
    let e = connector(&other, ObjectType::Hardware, &[])
        .await
        .unwrap()
        .test()
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("check `org_id`"), "{e}");

    // Secret problems are named before any request.
    let e = connector(
        &json!({"base_url": sim.base_url()}),
        ObjectType::Hardware,
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("api_key"), "{e}");
}

#[tokio::test]
async fn without_system_insights_the_run_completes_without_models() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 300,
        users: 100,
        insights: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 300);
    assert!(run
        .records
        .iter()
        .all(|r| r.get("assetsync_model").is_none()));
    // Tried once, then left alone for the run.
    assert_eq!(sim.control().requests_to("/api/v2/"), 1);
    assert!(
        run.records
            .iter()
            .filter(|r| r.get("assetsync_user_email").is_some())
            .count()
            > 200
    );
}

#[tokio::test]
async fn changes_in_the_fleet_show_up() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 120,
        users: 60,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.set_os_version(5, "15.2");
    sim.remove_field(6, "hwVendor");
    let gone = sim.remove_device(0);
    let added = sim.add_device();
    let c = connector(&sim.secret(), ObjectType::Hardware, &[])
        .await
        .unwrap();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), sim.device_count());
    let by_id: HashMap<&str, &Value> = run
        .records
        .iter()
        .map(|r| (r["_id"].as_str().unwrap(), r))
        .collect();
    assert!(!by_id.contains_key(gone["_id"].as_str().unwrap()));
    assert!(by_id.contains_key(sim.system(added)["_id"].as_str().unwrap()));
    // Positions 5 and 6 moved to 4 and 5 after the removal.
    assert_eq!(
        by_id[sim.system(4)["_id"].as_str().unwrap()]["version"],
        "15.2"
    );
    let raw = by_id[sim.system(5)["_id"].as_str().unwrap()];
    assert!(raw.get("hwVendor").is_none());
    // Manufacturer then comes from System Insights.
    let m = Mapping::parse(
        connectors::default_mapping(SourceKind::Jumpcloud, ObjectType::Hardware, None).unwrap(),
    )
    .unwrap();
    let rec = m.apply(raw, ObjectType::Hardware);
    assert_eq!(
        rec.attrs.get("Manufacturer").map(String::as_str),
        raw.get("assetsync_hardware_vendor").and_then(Value::as_str)
    );
}

/// A service account (OAuth client credentials) instead of an admin's API key: one token for the
/// whole listing, a new one once after it expires, and wrong credentials explained.
#[tokio::test]
async fn a_service_account_reads_with_bearer_tokens_and_refreshes_once() {
    init();
    let sim = JumpCloudSim::start(JumpCloudConfig {
        systems: 120,
        users: 80,
        ..Default::default()
    })
    .await
    .unwrap();
    let secret = sim.service_account_secret();
    let c = connector(&secret, ObjectType::Hardware, &[("page_size", "50")])
        .await
        .unwrap();
    let first = c.fetch_page(None).await.unwrap();
    assert_eq!(first.records.len(), 50);
    assert_eq!(sim.control().token_requests(), 1);
    // The token stops working: one new token, then the page.
    sim.control().expire_tokens();
    let run = drain(c.as_ref()).await.unwrap();
    assert_eq!(run.records.len(), 120);
    assert_eq!(sim.control().token_requests(), 2);
    assert!(
        run.records
            .iter()
            .any(|r| r.get("assetsync_user_email").is_some()),
        "user lookups use the token too"
    );
    let t = c.test().await.unwrap();
    assert!(t.message.contains("service account"), "{}", t.message);

    let mut bad = secret.clone();
    bad["client_secret"] = json!("not-the-secret");
    let c = connector(&bad, ObjectType::Hardware, &[]).await.unwrap();
    let e = c.fetch_page(None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Auth { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("client_secret") && !msg.contains("not-the-secret"),
        "{msg}"
    );
}
