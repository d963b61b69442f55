//! Without `ASSETSYNC_ALLOW_LOOPBACK_HTTP=1` (which the template never sets) no connector accepts
//! a plain http base URL, loopback included: in AWS, http://127.0.0.1:9001 is the Lambda runtime
//! API (issue 8, security 4). A test binary of its own: nothing in this process allows loopback.

use std::collections::BTreeMap;
use std::sync::Arc;

use assetsync::connectors::{self, ConnectorContext, MemoryState};
use assetsync::event::{ObjectType, SourceKind};
use assetsync::http::ALLOW_LOOPBACK_HTTP_ENV;
use serde_json::json;

const RUNTIME_API: &str = "http://127.0.0.1:9001";

fn ctx() -> ConnectorContext {
    ConnectorContext {
        connection: "https-only".into(),
        object_type: ObjectType::Hardware,
        config: BTreeMap::new(),
        state: Arc::new(MemoryState::default()),
    }
}

#[tokio::test]
async fn every_source_refuses_loopback_http_without_the_setting() {
    std::env::remove_var(ALLOW_LOOPBACK_HTTP_ENV);
    assert!(!assetsync::http::loopback_http_allowed());
    let cases = [
        (
            SourceKind::Jamf,
            json!({"tenant_url": RUNTIME_API, "client_id": "a", "client_secret": "b"}),
            "tenant_url",
        ),
        (
            SourceKind::Jumpcloud,
            json!({"api_key": "k", "base_url": RUNTIME_API}),
            "base_url",
        ),
        (
            SourceKind::Intune,
            json!({"tenant_id": "t", "client_id": "a", "client_secret": "b", "login_url": RUNTIME_API}),
            "login_url",
        ),
        (
            SourceKind::Intune,
            json!({"tenant_id": "t", "client_id": "a", "client_secret": "b", "graph_url": "http://localhost:9001"}),
            "graph_url",
        ),
        (
            SourceKind::Kandji,
            json!({"subdomain": "acme", "region": "us", "api_token": "t", "base_url": RUNTIME_API}),
            "base_url",
        ),
        (
            SourceKind::EndpointCentral,
            json!({"base_url": RUNTIME_API, "api_token": "t"}),
            "base_url",
        ),
        (
            SourceKind::EndpointCentral,
            json!({"base_url": "https://ec.example.com", "client_id": "a", "client_secret": "b",
                   "refresh_token": "r", "accounts_url": RUNTIME_API}),
            "accounts_url",
        ),
    ];
    for (source, secret, field) in cases {
        let err = match connectors::build(source, &secret, ctx()).await {
            Ok(_) => {
                panic!("{source}: an http {field} was accepted without {ALLOW_LOOPBACK_HTTP_ENV}")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("`{field}`"))
                && err.contains("https")
                && err.contains(ALLOW_LOOPBACK_HTTP_ENV),
            "{source}: {err}"
        );
    }
}
