//! Placeholder: replaced by the Kandji connector.

use serde_json::Value;

use super::ConnectorContext;
use crate::error::ConnectorError;
use crate::event::ObjectType;

/// The default mapping for an object type and `config:api` listing.
pub fn default_mapping(_object_type: ObjectType, _api: Option<&str>) -> Option<&'static str> {
    None
}

/// The Kandji connector.
pub struct Kandji;

impl Kandji {
    /// Build from the secret.
    pub fn new(_secret: &Value, _ctx: ConnectorContext) -> Result<Box<dyn super::Connector>, ConnectorError> {
        Err(ConnectorError::Config("Kandji is not built yet".into()))
    }
}
