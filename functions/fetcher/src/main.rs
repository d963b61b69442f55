//! The fetcher Lambda: connection events (schedule or manual) and fetch-queue continuations.

use assetsync::error::{chain, SyncError};
use assetsync::fetcher::Fetcher;
use assetsync::settings::Settings;
use assetsync::telemetry::{deadline_instant, init_json_logs};
use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::Value;

#[derive(Debug)]
struct HandlerError(SyncError);

impl From<HandlerError> for Diagnostic {
    fn from(e: HandlerError) -> Self {
        let error_type = match &e.0 {
            SyncError::Event(_) | SyncError::Mapping(_) | SyncError::Secret { .. } => {
                "NonRetryable"
            }
            _ => "Retryable",
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message: chain(&e.0),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_json_logs();
    let settings = Settings::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let fetcher = Fetcher::new(settings, &sdk);
    let fetcher = &fetcher;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| async move {
        let deadline = deadline_instant(ev.context.deadline);
        // A sync's or continuation's error is logged inside its run's span (run_id, connection).
        fetcher
            .handle(ev.payload, deadline)
            .await
            .map_err(HandlerError)
    }))
    .await
}
