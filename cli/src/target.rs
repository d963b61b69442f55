//! Where the stack is: the local stack file (moto) or a deployed stack named by the environment.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use assetsync::runs::Runs;
use assetsync::settings::Settings;
use assetsync::store::Store;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use serde_json::Value;

use crate::Global;

/// The region of the local stack (infra/local_deploy.py deploys there).
const LOCAL_REGION: &str = "us-east-1";

/// The repository root: the nearest ancestor of the working directory (or of this binary) that
/// holds `infra/local_deploy.py`.
pub fn repo_root() -> Option<PathBuf> {
    let is_root = |p: &Path| p.join("infra").join("local_deploy.py").is_file();
    let from_cwd = std::env::current_dir()
        .ok()
        .and_then(|d| d.ancestors().find(|p| is_root(p)).map(Path::to_path_buf));
    from_cwd.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        exe.ancestors().find(|p| is_root(p)).map(Path::to_path_buf)
    })
}

/// The stack file: `--stack-file`, else `.local/stack.json` at the repository root (or here).
pub fn stack_file(g: &Global) -> PathBuf {
    if let Some(p) = &g.stack_file {
        return p.clone();
    }
    repo_root()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local")
        .join("stack.json")
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Which stack a command talks to.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A moto server described by a stack file.
    Local,
    /// A deployed stack named by environment variables.
    Deployed,
}

/// Everything a command needs to reach the stack.
pub struct Target {
    pub kind: Kind,
    pub settings: Settings,
    pub sdk: SdkConfig,
    /// The fetcher Lambda's name (for invoking it).
    pub fetcher_function: Option<String>,
}

impl Target {
    /// Resolve the stack from the flags and the environment (rules in `assetsync --help`).
    pub async fn resolve(g: &Global) -> anyhow::Result<Target> {
        let file = stack_file(g);
        // The stack file when named, or when there are no deployed-stack names in the environment,
        // or with --local when it exists; otherwise the environment (--local then still runs the
        // handlers in-process, against AWS_ENDPOINT_URL / --endpoint).
        let env_names = env_nonempty("TABLE_NAME").is_some();
        let use_file = g.stack_file.is_some() || !env_names || (g.local && file.is_file());
        let endpoint_override = g
            .endpoint
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        if use_file {
            if !file.is_file() {
                bail!(
                    "no local stack at {}: run `assetsync local up` first; for a deployed stack set TABLE_NAME, \
                     RECORDS_QUEUE_URL, FETCH_QUEUE_URL, DLQ_URL and FETCHER_FUNCTION (see `assetsync --help`)",
                    file.display()
                );
            }
            let info = read_stack_file(&file)?;
            let env = function_env(&info).with_context(|| format!("reading {}", file.display()))?;
            let settings = Settings::from_lookup(|k| env.get(k).cloned())
                .with_context(|| format!("the fetcher's environment in {}", file.display()))?;
            let endpoint = endpoint_override
                .or_else(|| {
                    info.get("endpoint")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .ok_or_else(|| anyhow!("{} names no endpoint; pass --endpoint", file.display()))?;
            check_reachable(&endpoint)?;
            let region = info
                .get("region")
                .and_then(Value::as_str)
                .unwrap_or(LOCAL_REGION)
                .to_string();
            let sdk = aws_config::defaults(BehaviorVersion::latest())
                .endpoint_url(&endpoint)
                .region(Region::new(region))
                .credentials_provider(Credentials::new(
                    "testing",
                    "testing",
                    None,
                    None,
                    "assetsync-local-stack",
                ))
                .load()
                .await;
            let fetcher_function = info
                .pointer("/outputs/FetcherFunctionName")
                .and_then(Value::as_str)
                .map(str::to_string);
            // The local stack's connections point at loopback simulators over plain http.
            assetsync::http::allow_loopback_http();
            return Ok(Target {
                kind: Kind::Local,
                settings,
                sdk,
                fetcher_function,
            });
        }
        let settings =
            Settings::from_env().context("the deployed stack's names (see `assetsync --help`)")?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(e) = &endpoint_override {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        Ok(Target {
            kind: Kind::Deployed,
            settings,
            sdk,
            fetcher_function: env_nonempty("FETCHER_FUNCTION"),
        })
    }

    /// Whether handlers run in this process (always for a local stack: moto cannot run Lambdas).
    pub fn in_process(&self, g: &Global) -> bool {
        g.local || self.kind == Kind::Local
    }

    pub fn ddb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    pub fn store(&self) -> Store {
        Store::new(self.ddb(), self.settings.table.clone())
    }

    pub fn runs(&self) -> Runs {
        Runs {
            store: self.store(),
            lease_seconds: self.settings.lease_seconds,
        }
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }
}

/// Read and parse a stack file.
pub fn read_stack_file(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON (rerun `assetsync local up`)",
            path.display()
        )
    })
}

/// The fetcher's environment (the importer's if the file has no fetcher).
fn function_env(info: &Value) -> anyhow::Result<HashMap<String, String>> {
    let f = info
        .pointer("/functions/fetcher")
        .or_else(|| info.pointer("/functions/importer"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            anyhow!("no functions.fetcher environment (was it written by infra/local_deploy.py?)")
        })?;
    Ok(f.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect())
}

/// Fail fast, with the fix, when the local endpoint does not answer.
pub fn check_reachable(endpoint: &str) -> anyhow::Result<()> {
    let Some(hostport) = host_port(endpoint) else {
        return Ok(());
    };
    let addrs: Vec<_> = match hostport.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return Ok(()),
    };
    if addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
    {
        return Ok(());
    }
    bail!("nothing answers at {endpoint}: is the local stack running? Start it with `assetsync local up`")
}

/// `host:port` of an http(s) URL (port defaulted by scheme).
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() {
        return None;
    }
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
        && !authority.ends_with(']')
    {
        return Some(authority.to_string());
    }
    let port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    Some(format!("{authority}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(
            host_port("http://127.0.0.1:5055").as_deref(),
            Some("127.0.0.1:5055")
        );
        assert_eq!(
            host_port("http://127.0.0.1:5055/x").as_deref(),
            Some("127.0.0.1:5055")
        );
        assert_eq!(
            host_port("https://dynamodb.us-east-1.amazonaws.com").as_deref(),
            Some("dynamodb.us-east-1.amazonaws.com:443")
        );
        assert_eq!(host_port("nonsense"), None);
    }

    #[test]
    fn function_env_reads_the_fetcher() {
        let info = serde_json::json!({"functions": {"fetcher": {"TABLE_NAME": "t", "MAX_RECEIVE_COUNT": 5}}});
        let env = function_env(&info).unwrap();
        assert_eq!(env["TABLE_NAME"], "t");
        assert_eq!(env["MAX_RECEIVE_COUNT"], "5");
        assert!(function_env(&serde_json::json!({})).is_err());
    }
}
