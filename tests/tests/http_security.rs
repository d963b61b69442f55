//! The vendor HTTP client's security rules, seen from the connectors: redirects never carry
//! credentials to another host (issue 8, security 3), and response bodies are read within a
//! size limit (issue 9, item 8). Loopback http is allowed here (the simulators' setting); its
//! refusal without the setting is in `https_only.rs`, a process of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use assetsync::connectors::{self, ConnectorContext, MemoryState};
use assetsync::event::{ObjectType, SourceKind};
use assetsync::http::{HttpOptions, VendorHttp};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

/// What a server saw: one line per request (method, path, headers and body).
type Seen = Arc<Mutex<Vec<String>>>;

async fn record(State(seen): State<Seen>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut line = format!("{uri}");
    for (k, v) in &headers {
        line.push_str(&format!(" {k}={}", v.to_str().unwrap_or("?")));
    }
    line.push_str(&format!(" body={}", String::from_utf8_lossy(&body)));
    seen.lock().unwrap().push(line);
    axum::Json(json!({"ok": true, "results": [], "totalCount": 0})).into_response()
}

/// A server that records every request and answers `{"ok": true}`; returns its base URL.
async fn recorder() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new().fallback(any(record)).with_state(seen.clone());
    (serve(app).await, seen)
}

async fn serve(app: Router) -> String {
    assetsync::http::allow_loopback_http();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// A server answering every request with `status` to `target` + the request's path.
async fn redirector(status: StatusCode, target: String) -> String {
    let app = Router::new().fallback(any(move |uri: Uri| {
        let target = target.clone();
        async move {
            let loc = format!(
                "{target}{}",
                uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            );
            (status, [("location", loc)], "moved").into_response()
        }
    }));
    serve(app).await
}

fn ctx(object_type: ObjectType) -> ConnectorContext {
    ConnectorContext {
        connection: "redirect-test".into(),
        object_type,
        config: BTreeMap::new(),
        state: Arc::new(MemoryState::default()),
    }
}

fn init() {
    std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
}

/// JumpCloud's `x-api-key` is not forwarded to another host (reqwest strips only Authorization).
#[tokio::test]
async fn jumpcloud_api_key_is_not_sent_to_a_redirect_target_on_another_host() {
    init();
    let (target, seen) = recorder().await;
    let base = redirector(StatusCode::FOUND, target).await;
    let secret = json!({"api_key": "JC-KEY-SHOULD-STAY-HOME", "base_url": base});
    let c = connectors::build(SourceKind::Jumpcloud, &secret, ctx(ObjectType::Hardware))
        .await
        .unwrap();
    let err = c.fetch_page(None).await.unwrap_err().to_string();
    assert!(
        seen.lock().unwrap().is_empty(),
        "the other host got {:?}",
        seen.lock().unwrap()
    );
    assert!(
        err.contains("redirected to") && err.contains("not followed"),
        "{err}"
    );
    assert!(!err.contains("JC-KEY"), "{err}");
}

/// A 307/308 would re-send the token request's body (client_secret) to the new host.
#[tokio::test]
async fn token_bodies_with_client_secret_are_not_resent_to_another_host() {
    init();
    let (target, seen) = recorder().await;
    for status in [
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let base = redirector(status, target.clone()).await;
        // Jamf: POST /api/oauth/token with client_secret in the form.
        let jamf =
            json!({"tenant_url": base, "client_id": "id", "client_secret": "JAMF-CS-SECRET"});
        let c = connectors::build(SourceKind::Jamf, &jamf, ctx(ObjectType::Hardware))
            .await
            .unwrap();
        let err = c.fetch_page(None).await.unwrap_err().to_string();
        assert!(err.contains("not followed"), "{err}");
        assert!(!err.contains("JAMF-CS"), "{err}");
        // Intune: the Entra token endpoint, client_secret in the form.
        let intune = json!({"tenant_id": "t", "client_id": "id", "client_secret": "INTUNE-CS-SECRET",
                            "login_url": base, "graph_url": base});
        let c = connectors::build(SourceKind::Intune, &intune, ctx(ObjectType::Hardware))
            .await
            .unwrap();
        let err = c.fetch_page(None).await.unwrap_err().to_string();
        assert!(err.contains("not followed"), "{err}");
        assert!(!err.contains("INTUNE-CS"), "{err}");
        // Endpoint Central cloud: the Zoho refresh, client_secret and refresh_token in the form.
        let ec = json!({"base_url": base, "client_id": "id", "client_secret": "ZOHO-CS-SECRET",
                        "refresh_token": "ZOHO-RT-SECRET", "accounts_url": base});
        let c = connectors::build(SourceKind::EndpointCentral, &ec, ctx(ObjectType::Hardware))
            .await
            .unwrap();
        let err = c.fetch_page(None).await.unwrap_err().to_string();
        assert!(!err.contains("ZOHO-"), "{err}");
    }
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "the other host got {seen:?}");
}

/// A same-origin redirect is still followed, headers included (a server moving its API path).
#[tokio::test]
async fn a_same_host_redirect_is_followed() {
    init();
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/old",
            any(|| async {
                (StatusCode::PERMANENT_REDIRECT, [("location", "/new")], "").into_response()
            }),
        )
        .fallback(any(record))
        .with_state(seen.clone());
    let base = serve(app).await;
    let http = VendorHttp::new(HttpOptions::new("Test")).unwrap();
    let v: Value = http
        .json(|| {
            http.client()
                .get(format!("{base}/old"))
                .header("x-api-key", "k")
        })
        .await
        .unwrap();
    assert_eq!(v["ok"], true);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("/new") && seen[0].contains("x-api-key=k"),
        "{seen:?}"
    );
}

/// A redirect to another port of the same host is another origin: not followed.
#[tokio::test]
async fn a_redirect_to_another_port_is_refused() {
    init();
    let (target, seen) = recorder().await;
    let base = redirector(StatusCode::MOVED_PERMANENTLY, target.clone()).await;
    let http = VendorHttp::new(HttpOptions::new("Test")).unwrap();
    let err = http
        .json::<Value>(|| {
            http.client()
                .get(format!("{base}/x?token=QUERY-SECRET"))
                .header("authorization", "Bearer B")
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("redirected to {target}/x")), "{err}");
    assert!(!err.contains("QUERY-SECRET"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

/// A body past the limit is an error naming the limit, not an out-of-memory Lambda.
#[tokio::test]
async fn an_oversized_body_is_a_clear_error() {
    init();
    let app = Router::new().fallback(any(|| async {
        // Streamed without Content-Length, so the limit is enforced while reading.
        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024])));
        axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
    }));
    let base = serve(app).await;
    let mut opts = HttpOptions::new("Test");
    opts.max_body_bytes = 1024 * 1024;
    let http = VendorHttp::new(opts).unwrap();
    let err = http
        .json::<Value>(|| http.client().get(format!("{base}/big")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the 1 MiB limit"), "{err}");
}
