//! End-to-end harness: the local stack (moto with the template deployed), the real fetcher and
//! importer handlers driven in-process through the real queues, and DynamoDB request counting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use assetsync::event::ConnectionEvent;
use assetsync::fetcher::Fetcher;
use assetsync::importer::Importer;
use assetsync::local::LocalRunner;
use assetsync::register::StoredRecord;
use assetsync::runs::Runs;
use assetsync::settings::Settings;
use assetsync::store::Store;
use assetsync::summary::RunSummary;
use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::ConfigBag;
use serde_json::Value;

use crate::stack::LocalStack;

/// Counts DynamoDB requests by operation, and write requests that touch register records.
/// It can also make reads of chosen items fail, to create poison pages.
#[derive(Debug, Clone, Default)]
pub struct DynamoCounter(
    Arc<Mutex<Counts>>,
    Arc<Mutex<std::collections::HashSet<String>>>,
);

/// What [`DynamoCounter`] saw.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub by_op: HashMap<String, u64>,
    /// Write requests that wrote at least one register record (`R#` items), history included.
    pub record_writes: u64,
    /// Write requests by the kind of item they touch (`R`, `H`, `E`, `M`, `F`, `P`, `RUN`, ...;
    /// a request touching several kinds counts once for each).
    pub writes_by_kind: HashMap<String, u64>,
    /// Read and write request units as DynamoDB bills them, from the sizes of the items read and
    /// written ([`crate::capacity`]; moto's own figure is one unit per request whatever the size).
    pub read_units: f64,
    pub write_units: f64,
    /// Read and write requests.
    pub reads: u64,
    pub writes: u64,
    /// Query requests by the kind of partition they read (the `:pk` value's prefix before `#`).
    pub queries_by_kind: HashMap<String, u64>,
    /// GetItem and BatchGetItem requests by the kind of item they read (as `writes_by_kind`).
    pub reads_by_kind: HashMap<String, u64>,
    /// Write units by the kind of item written (puts as sized; updates and deletes as billed).
    pub write_units_by_kind: HashMap<String, f64>,
    /// Read units by operation.
    pub read_units_by_op: HashMap<String, f64>,
    /// Seconds spent in each operation, retries included (summed over concurrent calls).
    pub secs_by_op: HashMap<String, f64>,
}

/// What a request will cost, as far as its input tells, and when it started (kept in its
/// config bag between interceptor hooks).
#[derive(Debug, Clone, Default)]
struct Billing {
    /// When the operation started.
    started: Option<std::time::Instant>,
    /// Write units of the items the request puts or deletes.
    write_units: f64,
    /// Whether its reads are strongly consistent.
    consistent: bool,
    /// Keys a BatchGetItem asks for.
    keys: usize,
    /// The write units of the input's puts by kind of item, and the one kind an update or
    /// delete touches.
    by_kind: Vec<(String, f64)>,
    /// The operation.
    op: String,
}

impl aws_smithy_types::config_bag::Storable for Billing {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

/// Write units of one BatchWriteItem entry (a delete's old size is unknown: one unit).
fn entry_units(r: &aws_sdk_dynamodb::types::WriteRequest) -> f64 {
    r.put_request()
        .map(|p| crate::capacity::write_units(crate::capacity::item_size(p.item())))
        .unwrap_or(1.0)
}

/// What the input of a request says it will cost.
fn billing_of(input: &aws_smithy_runtime_api::client::interceptors::context::Input) -> Billing {
    use crate::capacity::{item_size, write_units};
    use aws_sdk_dynamodb::operation::{
        batch_get_item::BatchGetItemInput, get_item::GetItemInput, query::QueryInput,
    };
    let mut b = Billing::default();
    if let Some(i) = input.downcast_ref::<PutItemInput>() {
        b.write_units = write_units(i.item().map(item_size).unwrap_or(0));
        b.by_kind
            .extend(kind_of(i.item()).map(|k| (k, b.write_units)));
    } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
        b.by_kind.extend(kind_of(i.key()).map(|k| (k, 0.0)));
    } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
        b.by_kind.extend(kind_of(i.key()).map(|k| (k, 0.0)));
    } else if let Some(i) = input.downcast_ref::<BatchWriteItemInput>() {
        for r in i
            .request_items()
            .map(|m| m.values())
            .into_iter()
            .flatten()
            .flatten()
        {
            let kind = kind_of(r.put_request().map(|p| p.item()))
                .or_else(|| kind_of(r.delete_request().map(|d| d.key())));
            b.by_kind.extend(kind.map(|k| (k, entry_units(r))));
        }
        b.write_units = b.by_kind.iter().map(|(_, u)| u).sum();
    } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
        // Twice the standard units; an update's size is unknown here, one unit.
        b.write_units = 2.0
            * i.transact_items()
                .iter()
                .map(|t| {
                    t.put()
                        .map(|p| write_units(item_size(p.item())))
                        .unwrap_or(1.0)
                })
                .sum::<f64>();
    } else if let Some(i) = input.downcast_ref::<GetItemInput>() {
        b.consistent = i.consistent_read() == Some(true);
    } else if let Some(i) = input.downcast_ref::<BatchGetItemInput>() {
        if let Some(m) = i.request_items() {
            b.consistent = m.values().any(|ka| ka.consistent_read() == Some(true));
            b.keys = m.values().map(|ka| ka.keys().len()).sum();
        }
    } else if let Some(i) = input.downcast_ref::<QueryInput>() {
        b.consistent = i.consistent_read() == Some(true);
    }
    b
}

impl Counts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_op.values().sum()
    }
    /// Requests of one operation.
    pub fn op(&self, name: &str) -> u64 {
        self.by_op.get(name).copied().unwrap_or(0)
    }
    /// Write requests touching record-related items: records, history, email index, membership.
    pub fn record_related_writes(&self) -> u64 {
        ["R", "H", "E", "M"]
            .iter()
            .map(|k| self.writes_by_kind.get(*k).copied().unwrap_or(0))
            .sum()
    }
}

/// The kind of an item by its key: `H` for history rows, else the pk's prefix before `#`.
fn kind_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<String> {
    let i = item?;
    let pk = i.get("pk")?.as_s().ok()?;
    if i.get("sk")
        .and_then(|v| v.as_s().ok())
        .is_some_and(|sk| sk.starts_with("H#"))
    {
        return Some("H".into());
    }
    Some(pk.split('#').next().unwrap_or_default().to_string())
}

fn pk_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<String> {
    item.and_then(|i| i.get("pk"))
        .and_then(|v| v.as_s().ok())
        .cloned()
}

impl DynamoCounter {
    /// A snapshot.
    pub fn get(&self) -> Counts {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }
    /// Make every BatchGetItem that reads item `pk` fail (until [`DynamoCounter::cure`]).
    pub fn poison(&self, pk: &str) {
        if let Ok(mut p) = self.1.lock() {
            p.insert(pk.to_string());
        }
    }

    /// Stop failing reads.
    pub fn cure(&self) {
        if let Ok(mut p) = self.1.lock() {
            p.clear();
        }
    }

    /// Start counting from zero.
    pub fn reset(&self) {
        if let Ok(mut c) = self.0.lock() {
            *c = Counts::default();
        }
    }
}

impl Intercept for DynamoCounter {
    fn name(&self) -> &'static str {
        "DynamoCounter"
    }

    fn read_before_execution(
        &self,
        ctx: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = ctx.input();
        let op = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| op_name(input));
        let mut billing = billing_of(input);
        billing.op = op.clone();
        billing.started = Some(std::time::Instant::now());
        cfg.interceptor_state().store_put(billing);
        let mut pks: Vec<String> = Vec::new();
        let mut kinds: Vec<String> = Vec::new();
        let mut write = true;
        if let Some(i) = input.downcast_ref::<PutItemInput>() {
            pks.extend(pk_of(i.item()));
            kinds.extend(kind_of(i.item()));
        } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
            pks.extend(pk_of(i.key()));
            kinds.extend(kind_of(i.key()));
        } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
            pks.extend(pk_of(i.key()));
            kinds.extend(kind_of(i.key()));
        } else if let Some(i) = input.downcast_ref::<BatchWriteItemInput>() {
            for reqs in i.request_items().map(|m| m.values()).into_iter().flatten() {
                for r in reqs {
                    pks.extend(pk_of(r.put_request().map(|p| p.item())));
                    pks.extend(pk_of(r.delete_request().map(|d| d.key())));
                    kinds.extend(kind_of(r.put_request().map(|p| p.item())));
                    kinds.extend(kind_of(r.delete_request().map(|d| d.key())));
                }
            }
        } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
            for t in i.transact_items() {
                pks.extend(pk_of(t.put().map(|p| p.item())));
                pks.extend(pk_of(t.update().map(|u| u.key())));
                pks.extend(pk_of(t.delete().map(|d| d.key())));
                kinds.extend(kind_of(t.put().map(|p| p.item())));
                kinds.extend(kind_of(t.update().map(|u| u.key())));
                kinds.extend(kind_of(t.delete().map(|d| d.key())));
            }
        } else {
            write = false;
        }
        kinds.sort();
        kinds.dedup();
        let mut read_kinds: Vec<String> = Vec::new();
        if let Some(i) = input.downcast_ref::<aws_sdk_dynamodb::operation::get_item::GetItemInput>()
        {
            read_kinds.extend(kind_of(i.key()));
        } else if let Some(i) =
            input.downcast_ref::<aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput>()
        {
            for ka in i.request_items().map(|m| m.values()).into_iter().flatten() {
                for k in ka.keys() {
                    read_kinds.extend(kind_of(Some(k)));
                }
            }
        }
        read_kinds.sort();
        read_kinds.dedup();
        if let Some(i) =
            input.downcast_ref::<aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput>()
        {
            let poisoned = self.1.lock().map(|p| p.clone()).unwrap_or_default();
            if !poisoned.is_empty() {
                let hit = i
                    .request_items()
                    .map(|m| {
                        m.values()
                            .flat_map(|ka| ka.keys().iter())
                            .filter_map(|k| pk_of(Some(k)))
                            .any(|pk| poisoned.contains(&pk))
                    })
                    .unwrap_or(false);
                if hit {
                    return Err("injected read failure (poison page)".into());
                }
            }
        }
        let queried = input
            .downcast_ref::<aws_sdk_dynamodb::operation::query::QueryInput>()
            .and_then(|q| q.expression_attribute_values())
            .and_then(|v| v.get(":pk"))
            .and_then(|v| v.as_s().ok())
            .map(|pk| pk.split('#').next().unwrap_or_default().to_string());
        if let Ok(mut c) = self.0.lock() {
            *c.by_op.entry(op.clone()).or_default() += 1;
            if let Some(k) = queried {
                *c.queries_by_kind.entry(k).or_default() += 1;
            }
            if pks.iter().any(|p| p.starts_with("R#")) {
                c.record_writes += 1;
            }
            for k in kinds {
                *c.writes_by_kind.entry(k).or_default() += 1;
            }
            for k in read_kinds {
                *c.reads_by_kind.entry(k).or_default() += 1;
            }
            let read = matches!(
                op.as_str(),
                "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems"
            );
            if write {
                c.writes += 1;
            } else if read {
                c.reads += 1;
            }
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Billing {
            started: Some(at),
            op,
            ..
        }) = cfg.load::<Billing>()
        {
            if let Ok(mut c) = self.0.lock() {
                *c.secs_by_op.entry(op.clone()).or_default() += at.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    fn modify_before_serialization(
        &self,
        ctx: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextMut<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use aws_sdk_dynamodb::operation::{
            batch_get_item::BatchGetItemInput, get_item::GetItemInput, query::QueryInput,
        };
        use aws_sdk_dynamodb::types::ReturnConsumedCapacity as R;
        let input = ctx.input_mut();
        let total = Some(R::Total);
        if let Some(i) = input.downcast_mut::<PutItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<UpdateItemInput>() {
            i.return_consumed_capacity = total;
            // The item's size after the update bills it; callers that ask nothing get it.
            if i.return_values.is_none() {
                i.return_values = Some(aws_sdk_dynamodb::types::ReturnValue::AllNew);
            }
        } else if let Some(i) = input.downcast_mut::<DeleteItemInput>() {
            i.return_consumed_capacity = total;
            if i.return_values.is_none() {
                i.return_values = Some(aws_sdk_dynamodb::types::ReturnValue::AllOld);
            }
        } else if let Some(i) = input.downcast_mut::<BatchWriteItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<TransactWriteItemsInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<GetItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<BatchGetItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<QueryInput>() {
            i.return_consumed_capacity = total;
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use crate::capacity::{item_size, read_units, write_units};
        use aws_sdk_dynamodb::operation::{
            batch_get_item::BatchGetItemOutput, batch_write_item::BatchWriteItemOutput,
            delete_item::DeleteItemOutput, get_item::GetItemOutput, put_item::PutItemOutput,
            query::QueryOutput, transact_write_items::TransactWriteItemsOutput,
            update_item::UpdateItemOutput,
        };
        let b = cfg.load::<Billing>().cloned().unwrap_or_default();
        let (r, w) = match ctx.output_or_error() {
            // A failed condition still bills the write (its size unknown here: one unit);
            // throttled and failed requests bill nothing.
            Err(e) => {
                let failed_condition = format!("{e:?}").contains("ConditionalCheckFailed");
                (0.0, if failed_condition { 1.0 } else { 0.0 })
            }
            Ok(out) => {
                let sized = |a: Option<&HashMap<String, AttributeValue>>| {
                    write_units(a.map(item_size).unwrap_or(0))
                };
                if out.downcast_ref::<PutItemOutput>().is_some()
                    || out.downcast_ref::<TransactWriteItemsOutput>().is_some()
                {
                    (0.0, b.write_units)
                } else if let Some(o) = out.downcast_ref::<UpdateItemOutput>() {
                    (0.0, sized(o.attributes()))
                } else if let Some(o) = out.downcast_ref::<DeleteItemOutput>() {
                    (0.0, sized(o.attributes()))
                } else if let Some(o) = out.downcast_ref::<BatchWriteItemOutput>() {
                    let unprocessed: f64 = o
                        .unprocessed_items()
                        .map(|m| m.values().flatten().map(entry_units).sum())
                        .unwrap_or(0.0);
                    (0.0, b.write_units - unprocessed)
                } else if let Some(o) = out.downcast_ref::<GetItemOutput>() {
                    (
                        read_units(o.item().map(item_size).unwrap_or(0), b.consistent),
                        0.0,
                    )
                } else if let Some(o) = out.downcast_ref::<BatchGetItemOutput>() {
                    let found: Vec<usize> = o
                        .responses()
                        .map(|m| m.values().flatten().map(item_size).collect())
                        .unwrap_or_default();
                    let unprocessed: usize = o
                        .unprocessed_keys()
                        .map(|m| m.values().map(|ka| ka.keys().len()).sum())
                        .unwrap_or(0);
                    // Each key is a read of its own; a key not found bills the minimum.
                    let absent = b.keys.saturating_sub(found.len() + unprocessed);
                    let units = found
                        .iter()
                        .map(|n| read_units(*n, b.consistent))
                        .sum::<f64>()
                        + absent as f64 * read_units(0, b.consistent);
                    (units, 0.0)
                } else if let Some(o) = out.downcast_ref::<QueryOutput>() {
                    // One sum over the page (what a projection or filter left out is not seen).
                    let bytes = o.items().iter().map(item_size).sum();
                    (read_units(bytes, b.consistent), 0.0)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        if let Ok(mut c) = self.0.lock() {
            c.read_units += r;
            c.write_units += w;
            if r > 0.0 {
                *c.read_units_by_op.entry(b.op.clone()).or_default() += r;
            }
            // Puts as sized in the input; an update or delete as billed.
            match b.by_kind.as_slice() {
                [(k, _)] => *c.write_units_by_kind.entry(k.clone()).or_default() += w,
                many if w > 0.0 => {
                    for (k, u) in many {
                        *c.write_units_by_kind.entry(k.clone()).or_default() += u;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn op_name(input: &aws_smithy_runtime_api::client::interceptors::context::Input) -> String {
    use aws_sdk_dynamodb::operation::{
        batch_get_item::BatchGetItemInput, get_item::GetItemInput, query::QueryInput,
        scan::ScanInput,
    };
    let name = if input.downcast_ref::<PutItemInput>().is_some() {
        "PutItem"
    } else if input.downcast_ref::<UpdateItemInput>().is_some() {
        "UpdateItem"
    } else if input.downcast_ref::<DeleteItemInput>().is_some() {
        "DeleteItem"
    } else if input.downcast_ref::<BatchWriteItemInput>().is_some() {
        "BatchWriteItem"
    } else if input.downcast_ref::<TransactWriteItemsInput>().is_some() {
        "TransactWriteItems"
    } else if input.downcast_ref::<BatchGetItemInput>().is_some() {
        "BatchGetItem"
    } else if input.downcast_ref::<GetItemInput>().is_some() {
        "GetItem"
    } else if input.downcast_ref::<QueryInput>().is_some() {
        "Query"
    } else if input.downcast_ref::<ScanInput>().is_some() {
        "Scan"
    } else {
        "other"
    };
    name.to_string()
}

/// How to start a [`Harness`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A fault layer between the SDK and moto.
    pub faults: Option<crate::faults::Faults>,
    /// Importer workers draining the records queue at once (default 1).
    pub workers: usize,
}

/// The local stack plus the real handlers, ready to sync.
pub struct Harness {
    pub stack: LocalStack,
    pub sdk: aws_config::SdkConfig,
    pub settings: Settings,
    pub ddb: DynamoCounter,
    pub runner: LocalRunner,
    pub store: Store,
    pub runs: Runs,
}

impl Harness {
    /// Start moto, deploy the template, and build the handlers from the functions' environment.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], letting the test adjust the settings (lease, time reserve...).
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        Self::start_opts(Options::default(), adjust).await
    }

    /// Start with a fault layer and several importer workers.
    pub async fn start_opts(
        opts: Options,
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        std::env::set_var("ASSETSYNC_FAST_RETRY", "1");
        // Simulators are plain http on loopback (the template never allows it).
        assetsync::http::allow_loopback_http();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let stack = LocalStack::start().await?;
        let sdk = stack.sdk_config().await;
        let env: HashMap<String, String> = stack.function_env("importer").into_iter().collect();
        let mut settings = Settings::from_lookup(|k| env.get(k).cloned())
            .context("the importer's environment from the template")?;
        adjust(&mut settings);
        let counter = DynamoCounter::default();
        // The handlers' own client configuration (retries), plus counting and faults.
        let mut ddb_conf = assetsync::store::dynamo_config(&sdk).interceptor(counter.clone());
        if let Some(f) = &opts.faults {
            ddb_conf = ddb_conf.interceptor(f.clone());
        }
        let ddb_conf = ddb_conf.build();
        let ddb = aws_sdk_dynamodb::Client::from_conf(ddb_conf);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let fetcher = Fetcher::with_clients(
            settings.clone(),
            ddb.clone(),
            sqs.clone(),
            aws_sdk_secretsmanager::Client::new(&sdk),
        );
        let importer = Importer::new(settings.clone(), ddb.clone());
        let store = Store::new(ddb, settings.table.clone());
        let runs = Runs {
            store: store.clone(),
            lease_seconds: settings.lease_seconds,
        };
        let runner = LocalRunner {
            fetcher,
            importer,
            sqs,
            fetcher_budget: Duration::from_secs(900),
            max_wait: Duration::from_secs(300),
            workers: opts.workers.max(1),
        };
        Ok(Harness {
            stack,
            sdk,
            settings,
            ddb: counter,
            runner,
            store,
            runs,
        })
    }

    /// Create or replace a secret.
    pub async fn put_secret(&self, name: &str, value: &Value) -> anyhow::Result<()> {
        let sm = aws_sdk_secretsmanager::Client::new(&self.sdk);
        let text = value.to_string();
        if sm
            .create_secret()
            .name(name)
            .secret_string(&text)
            .send()
            .await
            .is_err()
        {
            sm.put_secret_value()
                .secret_id(name)
                .secret_string(&text)
                .send()
                .await
                .context("put secret")?;
        }
        Ok(())
    }

    /// Run a sync of `event` to its end.
    pub async fn sync(&self, event: &Value) -> anyhow::Result<RunSummary> {
        let ev = ConnectionEvent::parse(event.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.runner
            .sync(&ev, |_| {})
            .await
            .map_err(|e| anyhow::anyhow!("{}", assetsync::error::chain(&e)))
    }

    /// Invoke the fetcher with a raw payload (as `aws lambda invoke` would), no draining.
    pub async fn invoke_fetcher(
        &self,
        payload: Value,
    ) -> Result<Value, assetsync::error::SyncError> {
        self.runner
            .fetcher
            .handle(
                payload,
                Some(std::time::Instant::now() + Duration::from_secs(900)),
            )
            .await
    }

    /// One register record.
    pub async fn record(
        &self,
        object_type: &str,
        key: &str,
    ) -> anyhow::Result<Option<StoredRecord>> {
        Ok(self.store.record(object_type, key).await?)
    }

    /// Every register record of a type (scan; tests only).
    pub async fn all_records(&self, object_type: &str) -> anyhow::Result<Vec<StoredRecord>> {
        let prefix = format!("R#{object_type}#");
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .store
                .ddb
                .scan()
                .table_name(&self.settings.table)
                .filter_expression("begins_with(pk, :p) AND sk = :s")
                .expression_attribute_values(":p", AttributeValue::S(prefix.clone()))
                .expression_attribute_values(":s", AttributeValue::S("#".into()))
                .set_exclusive_start_key(start)
                .send()
                .await?;
            for item in page.items.unwrap_or_default() {
                out.push(assetsync::store::from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        Ok(out)
    }
}

/// A connection event as JSON.
pub fn event(connection: &str, source: &str, secret_id: &str, object_type: &str) -> Value {
    serde_json::json!({
        "connection": connection, "source": source, "secret_id": secret_id,
        "object_type": object_type, "mode": "create-update", "action": "sync"
    })
}
