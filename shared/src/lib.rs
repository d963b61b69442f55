//! assetsync: keeps an asset register in DynamoDB in sync with device and identity sources.
//!
//! Handlers in `functions/` are thin; everything they do lives here.

pub mod connectors;
pub mod error;
pub mod event;
pub mod http;
pub mod mapping;
pub mod normalize;
pub mod summary;
pub mod infer;
pub mod register;
pub mod settings;
pub mod store;
pub mod runs;
pub mod secrets;
pub mod state;
pub mod importer;
pub mod fetcher;
pub mod telemetry;
pub mod local;
pub mod console;
pub mod failpoint;
