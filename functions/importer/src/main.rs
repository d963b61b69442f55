//! The importer Lambda: records-queue batches into the register, with partial batch failures.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assetsync::importer::Importer;
use assetsync::settings::Settings;
use assetsync::store::dynamo_config;
use assetsync::telemetry::init_json_logs;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_json_logs();
    let settings = Settings::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let ddb = aws_sdk_dynamodb::Client::from_conf(dynamo_config(&sdk).build());
    let importer = Importer::new(settings, ddb);
    let importer = &importer;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| async move {
        // The context's deadline is Unix milliseconds; turn it into an Instant.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // A deadline already past is not a real one (emulators may send none): no hand-back then.
        let deadline = (ev.context.deadline > now_ms)
            .then(|| Instant::now() + Duration::from_millis(ev.context.deadline - now_ms));
        Ok::<SqsBatchResponse, Error>(importer.handle_batch_until(ev.payload, deadline).await)
    }))
    .await
}
