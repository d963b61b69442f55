//! assetsync: keeps an asset register in DynamoDB in sync with device and identity sources.
//!
//! Handlers in `functions/` are thin; everything they do lives here.

pub mod connectors;
pub mod console;
pub mod error;
pub mod event;
pub mod failpoint;
pub mod fetcher;
pub mod guard;
pub mod http;
pub mod importer;
pub mod infer;
pub mod local;
pub mod mapping;
pub mod normalize;
pub mod pages;
pub mod plan;
pub mod register;
pub mod revert;
pub mod runs;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod store;
pub mod summary;
pub mod telemetry;
