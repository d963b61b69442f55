//! A fault layer between the SDK and moto: an interceptor that, at a configured rate and
//! deterministically by seed, answers a DynamoDB request with an error real DynamoDB gives and
//! moto never does, in DynamoDB's exact wire shape (status, `__type`, message,
//! `CancellationReasons`).
//!
//! Faults that DynamoDB reports before applying anything (conflicts, throttling) never reach moto:
//! the request is turned into a harmless `ListTables` and its answer replaced. An
//! `InternalServerError` is injected half the time before and half the time *after* moto applied
//! the write, as a real 500 may be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// The kinds of fault, named as DynamoDB names the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `TransactionCanceledException` with `TransactionConflict` cancellation reasons.
    TransactionCanceledConflict,
    /// `TransactionConflictException` on a single-item write.
    TransactionConflict,
    /// `ThrottlingException`.
    Throttling,
    /// `ProvisionedThroughputExceededException`.
    ProvisionedThroughputExceeded,
    /// `InternalServerError` (HTTP 500), before the write applied.
    InternalServerError,
    /// `InternalServerError` (HTTP 500) after moto applied the write.
    InternalServerErrorAfterWrite,
}

const NS: &str = "com.amazonaws.dynamodb.v20120810#";

impl Fault {
    /// Whether the request must not reach moto.
    fn before_apply(self) -> bool {
        self != Fault::InternalServerErrorAfterWrite
    }

    /// The HTTP status and JSON body DynamoDB answers with. `items` is the number of items of a
    /// transaction (its cancellation reasons have one entry per item).
    pub fn response(self, items: usize) -> (u16, String) {
        let (status, ty, msg) = match self {
            Fault::TransactionCanceledConflict => {
                let mut reasons = vec![serde_json::json!({"Code": "None"}); items.max(1)];
                let victim = items.saturating_sub(1);
                reasons[victim] = serde_json::json!({
                    "Code": "TransactionConflict",
                    "Message": "Transaction is ongoing for the item"
                });
                let codes: Vec<&str> = reasons
                    .iter()
                    .map(|r| r["Code"].as_str().unwrap_or("None"))
                    .collect();
                let body = serde_json::json!({
                    "__type": format!("{NS}TransactionCanceledException"),
                    "message": format!(
                        "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                        codes.join(", ")
                    ),
                    "CancellationReasons": reasons,
                });
                return (400, body.to_string());
            }
            Fault::TransactionConflict => (
                400,
                "TransactionConflictException",
                "Transaction is ongoing for the item",
            ),
            Fault::Throttling => (
                400,
                "ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            ),
            Fault::ProvisionedThroughputExceeded => (
                400,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Fault::InternalServerError | Fault::InternalServerErrorAfterWrite => {
                (500, "InternalServerError", "Internal server error")
            }
        };
        (
            status,
            serde_json::json!({"__type": format!("{NS}{ty}"), "message": msg}).to_string(),
        )
    }
}

/// Which fault this attempt got (kept in the attempt's config bag between hooks).
#[derive(Debug, Clone)]
struct Injected(Option<(Fault, usize)>);

impl Storable for Injected {
    type Storer = StoreReplace<Self>;
}

/// The fault interceptor. Clones share their state.
#[derive(Debug, Clone)]
pub struct Faults {
    seed: u64,
    /// Per-mille of requests that fail.
    rate: Arc<AtomicU64>,
    n: Arc<AtomicU64>,
    seen: Arc<Mutex<HashMap<Fault, u64>>>,
    /// Inject only `InternalServerErrorAfterWrite`, on single-item writes.
    after_write_only: bool,
}

impl Faults {
    /// Fail `rate` (0.0 to 1.0) of DynamoDB requests, choosing by `seed`.
    pub fn new(seed: u64, rate: f64) -> Self {
        Faults {
            seed,
            rate: Arc::new(AtomicU64::new((rate * 1000.0) as u64)),
            n: Arc::new(AtomicU64::new(0)),
            seen: Arc::default(),
            after_write_only: false,
        }
    }

    /// Answer `rate` of single-item writes (PutItem, UpdateItem, DeleteItem) with a 500 *after*
    /// moto applied them: the SDK retries, and the retry's condition fails on the writer's own
    /// write. Every conditional write of the run lifecycle must recognise its own.
    pub fn applied_then_500(seed: u64, rate: f64) -> Self {
        Faults {
            after_write_only: true,
            ..Faults::new(seed, rate)
        }
    }

    /// Change the rate (0 turns faults off).
    pub fn set_rate(&self, rate: f64) {
        self.rate.store((rate * 1000.0) as u64, Ordering::SeqCst);
    }

    /// How many faults of each kind were injected.
    pub fn injected(&self) -> HashMap<Fault, u64> {
        self.seen.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The n-th decision: deterministic in (seed, n).
    fn draw(&self, n: u64) -> u64 {
        // splitmix64
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn choose(&self, op: &str) -> Option<Fault> {
        let rate = self.rate.load(Ordering::SeqCst);
        if rate == 0 {
            return None;
        }
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let r = self.draw(n);
        if r % 1000 >= rate {
            return None;
        }
        if self.after_write_only {
            return matches!(op, "PutItem" | "UpdateItem" | "DeleteItem")
                .then_some(Fault::InternalServerErrorAfterWrite);
        }
        let kinds: &[Fault] = match op {
            "TransactWriteItems" => &[
                Fault::TransactionCanceledConflict,
                Fault::TransactionCanceledConflict,
                Fault::Throttling,
                Fault::InternalServerError,
            ],
            "PutItem" | "UpdateItem" | "DeleteItem" => &[
                Fault::TransactionConflict,
                Fault::TransactionConflict,
                Fault::Throttling,
                Fault::ProvisionedThroughputExceeded,
                Fault::InternalServerError,
                Fault::InternalServerErrorAfterWrite,
            ],
            "BatchWriteItem" => &[
                Fault::Throttling,
                Fault::ProvisionedThroughputExceeded,
                Fault::InternalServerError,
                Fault::InternalServerErrorAfterWrite,
            ],
            "GetItem" | "BatchGetItem" | "Query" | "Scan" => &[
                Fault::Throttling,
                Fault::ProvisionedThroughputExceeded,
                Fault::InternalServerError,
            ],
            _ => return None,
        };
        Some(kinds[((r / 1000) % kinds.len() as u64) as usize])
    }
}

impl Intercept for Faults {
    fn name(&self) -> &'static str {
        "Faults"
    }

    fn modify_before_transmit(
        &self,
        ctx: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request_mut();
        let op = req
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or_default()
            .to_string();
        let fault = self.choose(&op);
        let mut items = 0;
        if let Some(f) = fault {
            if op == "TransactWriteItems" {
                items = req
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| {
                        v.get("TransactItems")
                            .and_then(|t| t.as_array())
                            .map(Vec::len)
                    })
                    .unwrap_or(1);
            }
            if f.before_apply() {
                // DynamoDB applied nothing: neither does moto.
                req.headers_mut()
                    .insert("x-amz-target", "DynamoDB_20120810.ListTables");
                req.headers_mut().insert("content-length", "2");
                *req.body_mut() = SdkBody::from("{}");
            }
            if let Ok(mut m) = self.seen.lock() {
                *m.entry(f).or_default() += 1;
            }
        }
        cfg.interceptor_state()
            .store_put(Injected(fault.map(|f| (f, items))));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Injected(Some((fault, items)))) = cfg.load::<Injected>().cloned() else {
            return Ok(());
        };
        let (status, body) = fault.response(items);
        let mut resp = HttpResponse::new(StatusCode::try_from(status)?, SdkBody::from(body));
        resp.headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        resp.headers_mut().insert(
            "x-amzn-requestid",
            "INJECTEDFAULT0000000000000000000000000000000000000",
        );
        *ctx.response_mut() = resp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped_like_dynamodb() {
        let a = Faults::new(7, 0.3);
        let b = Faults::new(7, 0.3);
        let da: Vec<_> = (0..200).map(|_| a.choose("PutItem")).collect();
        let db: Vec<_> = (0..200).map(|_| b.choose("PutItem")).collect();
        assert_eq!(da, db);
        let hits = da.iter().filter(|f| f.is_some()).count();
        assert!((30..90).contains(&hits), "{hits}");
        let (st, body) = Fault::TransactionCanceledConflict.response(2);
        assert_eq!(st, 400);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["CancellationReasons"][1]["Code"], "TransactionConflict");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .ends_with("[None, TransactionConflict]"));
        assert_eq!(Fault::InternalServerError.response(0).0, 500);
    }
}
