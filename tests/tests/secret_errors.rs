//! No secret field's value reaches an error or a run record (issue 8, security 5): a malformed
//! secret of every source, each field given a wrong type or a bad value carrying a marker, and
//! the error names the field and never shows the marker.

use std::collections::BTreeMap;
use std::sync::Arc;

use assetsync::connectors::{self, ConnectorContext, MemoryState};
use assetsync::event::{ObjectType, SourceKind};
use assetsync_tests::harness::{event, Harness};
use serde_json::{json, Value};

const MARK: &str = "SeKr1tMarker";

fn ctx() -> ConnectorContext {
    ConnectorContext {
        connection: "secret-errors".into(),
        object_type: ObjectType::Hardware,
        config: BTreeMap::new(),
        state: Arc::new(MemoryState::default()),
    }
}

/// Wrong types that carry the marker (or a number only it would print).
fn wrong_types() -> Vec<Value> {
    vec![
        json!(987_654_321_123u64),
        json!(-987_654_321_123i64),
        json!(98765.4321),
        json!(true),
        json!([MARK]),
        json!({ "nested": MARK }),
    ]
}

fn assert_clean(source: SourceKind, field: &str, bad: &Value, err: &str) {
    for needle in [MARK, "987654321123", "98765.4321"] {
        assert!(
            !err.contains(needle),
            "{source}: `{field}` = {bad}: the error shows the value: {err}"
        );
    }
    assert!(
        err.contains(&format!("`{field}`")),
        "{source}: `{field}` = {bad}: the error does not name the field: {err}"
    );
}

/// (source, a valid secret, [(field, bad string values)]).
type Case = (SourceKind, Value, Vec<(&'static str, Vec<String>)>);

/// Every field of every source's secret, each with wrong types and with bad string values.
#[tokio::test]
async fn malformed_secrets_of_every_source_never_show_a_value() {
    std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
    assetsync::http::allow_loopback_http();
    let https = "https://h.example";
    // (source, a valid secret, [(field, bad string values)])
    let sources: Vec<Case> = vec![
        (
            SourceKind::Jamf,
            json!({"tenant_url": https, "client_id": "id", "client_secret": "cs"}),
            vec![
                (
                    "tenant_url",
                    vec![
                        format!("not a url {MARK}"),
                        format!("http://{MARK}.example"),
                        format!("ftp://{MARK}.example"),
                    ],
                ),
                ("client_id", vec![]),
                ("client_secret", vec![]),
            ],
        ),
        (
            SourceKind::Jumpcloud,
            json!({"api_key": "k"}),
            vec![
                ("api_key", vec![format!("{MARK} with spaces\n")]),
                ("org_id", vec![format!("{MARK}-not-hex!")]),
                (
                    "base_url",
                    vec![format!("{MARK}://x"), format!("http://{MARK}.example")],
                ),
            ],
        ),
        (
            SourceKind::Intune,
            json!({"tenant_id": "contoso.onmicrosoft.com", "client_id": "id", "client_secret": "cs"}),
            vec![
                ("tenant_id", vec![format!("{MARK} bad/tenant")]),
                ("client_id", vec![]),
                ("client_secret", vec![]),
                (
                    "login_url",
                    vec![format!("http://{MARK}.example"), format!("::{MARK}")],
                ),
                ("graph_url", vec![format!("http://{MARK}.example")]),
            ],
        ),
        (
            SourceKind::Kandji,
            json!({"subdomain": "acme", "region": "us", "api_token": "t"}),
            vec![
                ("subdomain", vec![format!("{MARK}.bad/host")]),
                ("region", vec![format!("{MARK}")]),
                ("api_token", vec![]),
                ("base_url", vec![format!("http://{MARK}.example")]),
            ],
        ),
        (
            SourceKind::EndpointCentral,
            json!({"base_url": https, "api_token": "t"}),
            vec![
                (
                    "base_url",
                    vec![format!("http://{MARK}.example"), format!("{MARK}")],
                ),
                ("api_token", vec![]),
                ("ca_cert", vec![format!("{MARK} not pem")]),
            ],
        ),
        (
            SourceKind::EndpointCentral,
            json!({"base_url": https, "username": "u", "password": "p"}),
            vec![
                ("username", vec![]),
                ("password", vec![]),
                ("auth_type", vec![format!("{MARK}")]),
                ("domain", vec![]),
            ],
        ),
        (
            SourceKind::EndpointCentral,
            json!({"base_url": https, "client_id": "id", "client_secret": "cs",
                   "refresh_token": "rt", "accounts_url": "https://accounts.zoho.eu"}),
            vec![
                ("client_id", vec![]),
                ("client_secret", vec![]),
                ("refresh_token", vec![]),
                ("accounts_url", vec![format!("http://{MARK}.example")]),
            ],
        ),
    ];
    let mut checked = 0;
    for (source, good, fields) in sources {
        assert!(
            connectors::build(source, &good, ctx()).await.is_ok(),
            "{source}: the valid secret {good} is refused"
        );
        for (field, bad_strings) in fields {
            let bads: Vec<Value> = wrong_types()
                .into_iter()
                .chain(bad_strings.into_iter().map(Value::String))
                .collect();
            for bad in bads {
                let mut secret = good.clone();
                secret[field] = bad.clone();
                let err = match connectors::build(source, &secret, ctx()).await {
                    Ok(_) => panic!("{source}: `{field}` = {bad} was accepted"),
                    Err(e) => e.to_string(),
                };
                assert_clean(source, field, &bad, &err);
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

/// End to end: the fetcher's answer and everything it wrote to the register for a sync with a
/// malformed secret hold no value of it.
#[tokio::test]
async fn a_sync_with_a_malformed_secret_records_no_value() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let secret = json!({"tenant_url": format!("http://{MARK}.example"), "client_id": 123456789,
                        "client_secret": {"v": MARK}});
    h.put_secret("assetsync/bad-jamf", &secret).await?;
    let ev = event("bad-jamf", "jamf", "assetsync/bad-jamf", "Hardware");
    let err = match h.sync(&ev).await {
        Ok(s) => serde_json::to_string(&s)?,
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("client_id") || err.contains("client_secret"),
        "{err}"
    );
    assert!(!err.contains(MARK) && !err.contains("123456789"), "{err}");
    // Whatever run record the attempt left behind is clean too.
    let items = h
        .store
        .ddb
        .scan()
        .table_name(&h.settings.table)
        .send()
        .await?
        .items
        .unwrap_or_default();
    let dump = format!("{items:?}");
    assert!(
        !dump.contains(MARK) && !dump.contains("123456789"),
        "{dump}"
    );
    Ok(())
}
