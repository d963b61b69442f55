//! `secrets put`: store a connection's credentials (values are never printed).

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::output;
use crate::target::Target;
use crate::{Global, SecretsCmd};

/// The secret object at `pointer` (or the whole document) of a JSON file.
pub fn secret_from_file(file: &Path, pointer: Option<&str>) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let v = match pointer {
        None => doc,
        Some(p) => doc
            .pointer(p)
            .cloned()
            .ok_or_else(|| anyhow!("{} has nothing at {p}", file.display()))?,
    };
    if !v.is_object() {
        bail!("a connection secret must be a JSON object (fields per source in shared/DESIGN.md)");
    }
    Ok(v)
}

pub async fn run(g: &Global, cmd: SecretsCmd) -> anyhow::Result<()> {
    let SecretsCmd::Put {
        name,
        file,
        pointer,
    } = cmd;
    let value = secret_from_file(&file, pointer.as_deref())?;
    let fields: Vec<String> = value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let target = Target::resolve(g).await?;
    let sm = aws_sdk_secretsmanager::Client::new(&target.sdk);
    let text = value.to_string();
    let created = match sm
        .create_secret()
        .name(&name)
        .secret_string(&text)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_exists_exception()) =>
        {
            sm.put_secret_value()
                .secret_id(&name)
                .secret_string(&text)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "updating secret {name}: {}",
                        aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                    )
                })?;
            false
        }
        Err(e) => {
            return Err(anyhow!(
                "creating secret {name}: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(e)
            ))
        }
    };
    if g.json {
        return output::json(&json!({"name": name, "created": created, "fields": fields}));
    }
    println!(
        "secret {name} {} (fields: {})",
        if created { "created" } else { "updated" },
        fields.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_selects_an_object() {
        let dir =
            std::env::temp_dir().join(format!("assetsync-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        std::fs::write(&p, r#"{"jamf": {"base_url": "http://127.0.0.1:1", "secret": {"tenant_url": "x", "client_id": "a", "client_secret": "b"}}}"#).unwrap();
        let v = secret_from_file(&p, Some("/jamf/secret")).unwrap();
        assert_eq!(v["client_id"], "a");
        assert!(secret_from_file(&p, Some("/jamf/base_url"))
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!(secret_from_file(&p, Some("/kandji/secret"))
            .unwrap_err()
            .to_string()
            .contains("/kandji/secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
