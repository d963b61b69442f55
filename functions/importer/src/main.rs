//! The importer Lambda: records-queue batches into the register, with partial batch failures.

use assetsync::importer::Importer;
use assetsync::settings::Settings;
use assetsync::telemetry::init_json_logs;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_json_logs();
    let settings = Settings::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let importer = Importer::new(settings, aws_sdk_dynamodb::Client::new(&sdk));
    let importer = &importer;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(importer.handle_batch(ev.payload).await)
    }))
    .await
}
