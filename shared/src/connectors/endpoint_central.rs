//! Placeholder: replaced by the EndpointCentral connector.

use serde_json::Value;

use super::ConnectorContext;
use crate::error::ConnectorError;
use crate::event::ObjectType;

/// The default mapping for an object type and `config:api` listing.
pub fn default_mapping(_object_type: ObjectType, _api: Option<&str>) -> Option<&'static str> {
    None
}

/// The EndpointCentral connector.
pub struct EndpointCentral;

impl EndpointCentral {
    /// Build from the secret.
    pub fn new(_secret: &Value, _ctx: ConnectorContext) -> Result<Box<dyn super::Connector>, ConnectorError> {
        Err(ConnectorError::Config("EndpointCentral is not built yet".into()))
    }
}
