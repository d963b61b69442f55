//! `assetsync`: the register's console (shared/DESIGN.md, "The command line").
//!
//! Thin: argument parsing, where the stack is, output. The logic lives in the library
//! (`assetsync::console`, `assetsync::local`, `assetsync::runs`).

mod assets;
mod exit;
mod local_stack;
mod output;
mod runs_cmd;
mod secrets;
mod sync;
mod target;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::Exit;

const AFTER_HELP: &str = "\
WHERE THE STACK IS
  Local (moto): `assetsync local up` writes .local/stack.json (outputs and the functions'
  environment); every command then uses it and its endpoint, with test credentials. Commands that
  run handlers (sync, sample, test, runs redrive) run them in-process: moto cannot run Lambdas.

  Deployed (AWS): with TABLE_NAME set (no --stack-file; with --local only when no stack file
  exists), names come from the environment and credentials from the usual AWS chain:
    TABLE_NAME  RECORDS_QUEUE_URL  FETCH_QUEUE_URL  DLQ_URL  FETCHER_FUNCTION
  One way to set them from the stack's outputs (AWS CLI):
    q() { aws cloudformation describe-stacks --stack-name assetsync --output text \\
            --query \"Stacks[0].Outputs[?OutputKey=='$1'].OutputValue\"; }
    export TABLE_NAME=$(q TableName) RECORDS_QUEUE_URL=$(q RecordsQueueUrl) \\
      FETCH_QUEUE_URL=$(q FetchQueueUrl) DLQ_URL=$(q DeadLetterQueueUrl) \\
      FETCHER_FUNCTION=$(q FetcherFunctionName)
  `sync` then invokes the deployed fetcher; `sync --local` runs the handlers in-process against
  AWS_ENDPOINT_URL (or --endpoint) instead.

EXIT CODES
  0 ok (a run that succeeded with record errors included)   1 error   2 the run failed
  3 the connection already has a run in progress (nothing was started)";

/// assetsync: keep an asset register in DynamoDB in sync with device and identity sources.
#[derive(Parser, Debug)]
#[command(name = "assetsync", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print one JSON document on stdout (and nothing else there).
    #[arg(long, global = true)]
    pub json: bool,
    /// AWS endpoint (default: AWS_ENDPOINT_URL, else the local stack's endpoint).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The local stack description written by `assetsync local up`.
    #[arg(long, global = true, value_name = "FILE")]
    pub stack_file: Option<PathBuf>,
    /// Run the handlers in this process (sync, sample, test, runs redrive) instead of invoking the
    /// deployed fetcher; prefer the local stack file, when there is one, over TABLE_NAME & co.
    #[arg(long, global = true)]
    pub local: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The local stack: moto on loopback with the template deployed into it.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Run a sync of a connection event and wait for its end; prints the run summary.
    Sync {
        /// The connection event (JSON, as in events/); its `action` is taken as `sync`.
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// Release the circuit breaker for this one run (event field `allow_drop`): mark missing
        /// even though the record count fell beyond the connection's `config:max_drop`.
        #[arg(long)]
        allow_drop: bool,
    },
    /// Fetch the connection and show what a sync would do now (create, update with old and new
    /// values, mark missing or unmark, skip, and the counts); writes nothing.
    Plan {
        /// The connection event (JSON, as in events/); its `action` is taken as `plan`.
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// Plan as `sync --allow-drop` would run: with the circuit breaker released.
        #[arg(long)]
        allow_drop: bool,
    },
    /// Fetch the first page and show raw and mapped records; writes nothing.
    Sample {
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
    },
    /// Authenticate and fetch one record: ok, or the vendor's error explained (exit 1).
    Test {
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
    },
    /// The audit log of runs.
    Runs {
        #[command(subcommand)]
        cmd: RunsCmd,
    },
    /// Read and edit the register.
    Assets {
        #[command(subcommand)]
        cmd: AssetsCmd,
    },
    /// Connection secrets in Secrets Manager (values are never printed).
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// Start moto on a free loopback port (or use --endpoint), deploy infra/template.yaml into it,
    /// write the stack file and print endpoint and resource names.
    Up {
        /// Delete and recreate the stack if it exists with another template.
        #[arg(long)]
        recreate: bool,
    },
    /// Stop the moto server `local up` started.
    Down,
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// Recent runs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only runs started at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
    },
    /// One run: the run summary (counts, pages, each error).
    Show { run_id: String },
    /// Put a run's dead-lettered pages back on the records queue (locally: and import them).
    Redrive { run_id: String },
    /// Undo what one run wrote: attributes back to their old values (where nobody changed them
    /// since; otherwise a conflict, left alone), its missing marks lifted, the records it created
    /// marked reverted. The revert is a run of its own (`runs revert` of it redoes the run).
    Revert {
        run_id: String,
        /// Show what the revert would do; write nothing.
        #[arg(long)]
        plan: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AssetsCmd {
    /// Records of a type (Hardware, Person, Software; any case).
    List {
        /// Hardware, Person or Software (any case).
        #[arg(value_name = "TYPE")]
        object_type: String,
        /// At most N records (default: every record with --json or --csv, 50 for the table).
        /// When records remain, where it stopped goes to stderr: `{"next": KEY}` with --json
        /// (stdout stays the bare JSON list), a `next:` line otherwise.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Start after the record with this key (a `next` printed by an earlier, limited list).
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// CSV: one row per record, one column per attribute (the type's usual columns first,
        /// then the rest by name), then `sources` and `missing_from`.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// One record: attributes with who set each and when, its sources, missing-from connections.
    Get {
        /// Hardware, Person or Software (any case).
        #[arg(value_name = "TYPE")]
        object_type: String,
        /// The record's key: a serial number, a person's id or email (normalised as runs do).
        key: String,
    },
    /// A hand edit: set attributes that runs will preserve. `ATTR=` (empty) releases an attribute
    /// back to the sources (its value stays until a source writes it).
    Set {
        /// Hardware, Person or Software (any case).
        #[arg(value_name = "TYPE")]
        object_type: String,
        /// The record's key: a serial number, a person's id or email (normalised as runs do).
        key: String,
        /// Attributes to set, e.g. "Location=Room 4"; `ATTR=` releases one.
        #[arg(value_name = "ATTR=VALUE", required = true, num_args = 1..)]
        assignments: Vec<String>,
    },
    /// Every change made to a record: attribute, old, new, connection, run, time.
    History {
        /// Hardware, Person or Software (any case).
        #[arg(value_name = "TYPE")]
        object_type: String,
        /// The record's key: a serial number, a person's id or email (normalised as runs do).
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCmd {
    /// Create or replace a secret from a JSON file (or a part of it: --pointer /jamf/secret).
    Put {
        /// Secret name, e.g. assetsync/jamf-prod.
        name: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// JSON pointer into the file (RFC 6901) selecting the secret object.
        #[arg(long, value_name = "POINTER")]
        pointer: Option<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASSETSYNC_LOG")
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.cmd {
        Cmd::Local { cmd } => local_stack::run(&g, cmd).await,
        Cmd::Sync { event, allow_drop } => sync::sync(&g, &event, allow_drop).await,
        Cmd::Plan { event, allow_drop } => sync::plan(&g, &event, allow_drop).await,
        Cmd::Sample { event } => {
            sync::sample_or_test(&g, &event, assetsync::event::Action::Sample).await
        }
        Cmd::Test { event } => {
            sync::sample_or_test(&g, &event, assetsync::event::Action::Test).await
        }
        Cmd::Runs { cmd } => runs_cmd::run(&g, cmd).await,
        Cmd::Assets { cmd } => assets::run(&g, cmd).await,
        Cmd::Secrets { cmd } => secrets::run(&g, cmd).await,
    }
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("assetsync: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(cli));
    // Don't wait for stray blocking tasks (a stdin reader, a slow SDK retry) on the way out.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => {}
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<Exit>() {
                if let Some(msg) = &exit.message {
                    eprintln!("assetsync: {msg}");
                }
                std::process::exit(exit.code);
            }
            eprintln!("assetsync: error: {}", exit::one_line(&e));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_commands() {
        let c = Cli::try_parse_from([
            "assetsync",
            "sync",
            "--event",
            "e.json",
            "--local",
            "--json",
        ])
        .unwrap();
        assert!(c.global.json && c.global.local);
        let c = Cli::try_parse_from([
            "assetsync",
            "assets",
            "set",
            "hardware",
            "C02",
            "Location=Room 4",
            "Owner=",
        ])
        .unwrap();
        match c.cmd {
            Cmd::Assets {
                cmd:
                    AssetsCmd::Set {
                        object_type,
                        key,
                        assignments,
                    },
            } => {
                assert_eq!((object_type.as_str(), key.as_str()), ("hardware", "C02"));
                assert_eq!(
                    assignments,
                    vec!["Location=Room 4".to_string(), "Owner=".to_string()]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["assetsync", "assets", "set", "hardware", "C02"]).is_err());
        let c =
            Cli::try_parse_from(["assetsync", "--json", "runs", "list", "--limit", "5"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Runs {
                cmd: RunsCmd::List { limit: 5, .. }
            }
        ));
        let c = Cli::try_parse_from([
            "assetsync",
            "plan",
            "--event",
            "e.json",
            "--allow-drop",
            "--json",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Plan {
                allow_drop: true,
                ..
            }
        ));
        let c = Cli::try_parse_from(["assetsync", "sync", "--event", "e.json", "--allow-drop"])
            .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Sync {
                allow_drop: true,
                ..
            }
        ));
        let c = Cli::try_parse_from([
            "assetsync",
            "local",
            "up",
            "--endpoint",
            "http://127.0.0.1:5000",
        ])
        .unwrap();
        assert_eq!(c.global.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    }
}
