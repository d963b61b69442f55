//! The `assetsync` binary for end-to-end tests of the command line: built once per test process
//! (`cargo build -p assetsync-cli`, a no-op when fresh), run against a test's own stack file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::json;

use crate::harness::Harness;
use crate::stack::repo_root;

/// Build the CLI once per test process; its path.
pub fn assetsync_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .args(["build", "-p", "assetsync-cli", "--bin", "assetsync"])
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("running `{cargo} build -p assetsync-cli`: {e}"));
        assert!(
            status.success(),
            "`cargo build -p assetsync-cli` failed ({status}); build the CLI and rerun"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join("assetsync");
        assert!(
            bin.is_file(),
            "{} not found after `cargo build -p assetsync-cli`: is the target directory elsewhere? (set CARGO_TARGET_DIR)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// The CLI with `--stack-file`, never inheriting AWS settings from this process.
pub fn command(stack_file: &Path) -> Command {
    let mut cmd = Command::new(assetsync_bin());
    cmd.arg("--stack-file")
        .arg(stack_file)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("TABLE_NAME")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Run the CLI against `stack_file`, and log what it printed (the start of it).
pub fn run(stack_file: &Path, args: &[&str]) -> Output {
    let out = command(stack_file)
        .args(args)
        .output()
        .expect("running assetsync");
    eprintln!(
        "$ assetsync {}\n  exit {:?}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(1500)
            .collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(1500)
            .collect::<String>()
    );
    out
}

/// A fresh directory of this test process under the system's temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("assetsync-cli-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("creating a temp dir");
    d
}

/// Write the harness's stack (as `assetsync local up` would) into `dir`; its path.
pub fn write_stack_file(h: &Harness, dir: &Path) -> PathBuf {
    let mut info = h.stack.info.clone();
    info["endpoint"] = json!(h.stack.endpoint);
    let path = dir.join("stack.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&info).expect("stack info as JSON"),
    )
    .expect("writing the stack file");
    path
}
