//! The `assetsync` command line against the local stack: a hand edit on a record a sync created
//! survives the next sync, history lists it, `runs show --json` keeps the contract's field names,
//! and editing a record that does not exist fails clearly.
//!
//! The binary is built here (`cargo build -p assetsync-cli`, a no-op when it is fresh) and run with
//! `--stack-file` pointing at this test's own stack (moto started by the harness).

use std::path::Path;

use assetsync::console::{self, ConsoleError};
use assetsync::event::ObjectType;
use assetsync_tests::cli::{assetsync_bin, run as cli, temp_dir, write_stack_file};
use assetsync_tests::harness::{event, Harness};
use assetsync_tests::sim::jamf::{JamfConfig, JamfSim};
use serde_json::{json, Value};

fn ok_json(stack_file: &Path, args: &[&str]) -> Value {
    let out = cli(stack_file, args);
    assert!(
        out.status.success(),
        "assetsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("assetsync {args:?}: stdout is not one JSON document ({e})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_edit_survives_the_next_sync_and_is_in_history() -> anyhow::Result<()> {
    let bin = tokio::task::spawn_blocking(assetsync_bin).await?;
    eprintln!("CLI: {}", bin.display());
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 60,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-cli", &sim.secret()).await?;
    let ev = event("jamf-cli", "jamf", "assetsync/jamf-cli", "Hardware");
    let dir = temp_dir("hand");
    let stack = write_stack_file(&h, &dir);
    let event_file = dir.join("jamf-cli.json");
    std::fs::write(&event_file, serde_json::to_string(&ev)?)?;
    let event_path = event_file.to_str().unwrap();

    // First sync through the CLI: the run summary contract on stdout.
    let first =
        tokio::task::block_in_place(|| ok_json(&stack, &["--json", "sync", "--event", event_path]));
    assert_eq!(first["status"], "succeeded", "{first}");
    assert!(first["counts"]["created"].as_u64().unwrap() > 0, "{first}");

    let i = (0..sim.computer_count())
        .find(|i| sim.serial(*i).is_some())
        .expect("a computer with a serial");
    let serial = sim.serial(i).unwrap();

    // A hand edit (the key typed in lower case, the type in any case).
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &[
                "assets",
                "set",
                "HARDWARE",
                &serial.to_lowercase(),
                "Name=Front desk Mac",
                "Location=Room 4",
            ],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Front desk Mac") && text.contains("Room 4"),
        "{text}"
    );

    // The source changes the same computer: its name (hand-owned now) and its OS version (not).
    sim.set_field(i, "general.name", json!("Renamed in Jamf"));
    sim.set_os_version(i, "15.9.1");
    let second =
        tokio::task::block_in_place(|| ok_json(&stack, &["--json", "sync", "--event", event_path]));
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["counts"]["updated"], 1, "{second}");

    let rec = h.record("Hardware", &serial).await?.expect("the record");
    assert_eq!(
        rec.a.get("Name").map(String::as_str),
        Some("Front desk Mac"),
        "the hand edit survives the run"
    );
    assert_eq!(rec.p.get("Name").map(|p| p.c.as_str()), Some("hand"));
    assert_eq!(rec.a.get("Location").map(String::as_str), Some("Room 4"));
    assert_eq!(
        rec.a.get("OS Version").map(String::as_str),
        Some("15.9.1"),
        "what the source owns still updates"
    );

    // `assets get --json`: who set each attribute.
    let got = tokio::task::block_in_place(|| {
        ok_json(&stack, &["--json", "assets", "get", "hardware", &serial])
    });
    assert_eq!(got["attributes"]["Name"]["set_by"], "hand", "{got}");
    assert_eq!(
        got["attributes"]["OS Version"]["set_by"], "jamf-cli",
        "{got}"
    );

    // History: the create, the hand edit, the run's update.
    let hist = tokio::task::block_in_place(|| {
        ok_json(
            &stack,
            &["--json", "assets", "history", "hardware", &serial],
        )
    });
    let entries = hist.as_array().expect("history is an array");
    let hand = entries
        .iter()
        .find(|e| e["connection"] == "hand")
        .unwrap_or_else(|| panic!("no hand entry in {hist}"));
    let name_change = hand["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["attr"] == "Name")
        .expect("Name change");
    assert_eq!(name_change["new"], "Front desk Mac");
    assert!(
        name_change["old"].as_str().is_some_and(|o| !o.is_empty()),
        "{name_change}"
    );
    assert!(
        entries.iter().any(|e| e["run_id"] == second["run_id"]
            && e["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["attr"] == "OS Version" && c["new"] == "15.9.1")),
        "{hist}"
    );
    let times: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    let out =
        tokio::task::block_in_place(|| cli(&stack, &["assets", "history", "hardware", &serial]));
    let text = String::from_utf8_lossy(&out.stdout);
    for col in ["attribute", "old", "new", "connection", "run", "time"] {
        assert!(
            text.lines().next().unwrap_or_default().contains(col),
            "{text}"
        );
    }
    assert!(
        text.contains("Front desk Mac") && text.contains("15.9.1"),
        "{text}"
    );

    // The library agrees.
    let lib_hist = console::history(&h.store, ObjectType::Hardware, &serial).await?;
    assert_eq!(lib_hist.len(), entries.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_show_json_has_the_contract_fields_and_errors_are_clear() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(assetsync_bin).await?;
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 40,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-runs", &sim.secret()).await?;
    let summary = h
        .sync(&event(
            "jamf-runs",
            "jamf",
            "assetsync/jamf-runs",
            "Hardware",
        ))
        .await?;
    let dir = temp_dir("runs");
    let stack = write_stack_file(&h, &dir);

    // `runs show --json`: exactly the DESIGN.md contract names (more fields are allowed).
    let shown = tokio::task::block_in_place(|| {
        ok_json(&stack, &["--json", "runs", "show", &summary.run_id])
    });
    for field in [
        "run_id",
        "connection",
        "source",
        "status",
        "started_at",
        "finished_at",
        "pages",
        "counts",
        "errors",
    ] {
        assert!(
            shown.get(field).is_some(),
            "runs show --json lacks {field}: {shown}"
        );
    }
    for field in ["fetched", "imported"] {
        assert!(shown["pages"][field].is_u64(), "pages.{field}: {shown}");
    }
    for field in [
        "created",
        "updated",
        "unchanged",
        "skipped",
        "not_found",
        "missing",
        "duplicate",
        "errors",
    ] {
        assert!(shown["counts"][field].is_u64(), "counts.{field}: {shown}");
    }
    assert!(
        ["running", "succeeded", "succeeded_with_errors", "failed"]
            .contains(&shown["status"].as_str().unwrap_or_default()),
        "{shown}"
    );
    assert_eq!(shown["run_id"], summary.run_id.as_str());
    assert_eq!(shown["connection"], "jamf-runs");
    assert_eq!(shown["source"], "jamf");
    // Skipped records (no serial) are listed with their reason.
    let errors = shown["errors"].as_array().unwrap();
    assert_eq!(
        errors.len() as u64,
        summary.counts.skipped + summary.counts.errors,
        "{shown}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["key"].is_string() && e["reason"].is_string()),
        "{shown}"
    );

    // `runs list --json`: the same summaries, newest first.
    let listed = tokio::task::block_in_place(|| ok_json(&stack, &["--json", "runs", "list"]));
    assert_eq!(listed[0]["run_id"], summary.run_id.as_str(), "{listed}");

    // Editing a record that does not exist: a clear error naming type and key, nothing on stdout.
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &[
                "assets",
                "set",
                "hardware",
                "NOSUCHSERIAL1",
                "Location=Room 4",
            ],
        )
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Hardware") && err.contains("NOSUCHSERIAL1"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let lib = console::hand_edit(
        &h.store,
        ObjectType::Hardware,
        "NOSUCHSERIAL1",
        &[("Location".into(), "x".into())],
    )
    .await;
    assert!(matches!(lib, Err(ConsoleError::NotFound { .. })), "{lib:?}");

    // Bad arguments fail before touching the stack.
    let out = tokio::task::block_in_place(|| {
        cli(&stack, &["assets", "set", "hardware", "X", "Location"])
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ATTR=VALUE"));
    let out = tokio::task::block_in_place(|| cli(&stack, &["assets", "list", "laptops"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("laptops"));

    // An unknown run.
    let out = tokio::task::block_in_place(|| cli(&stack, &["runs", "show", "no-such-run"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-run"));

    // Redrive leaves other runs' dead letters where they are.
    let dlq = h.settings.dlq_url.clone().expect("the stack has a DLQ");
    let other = json!({"run_id": "someone-else", "connection": "x", "source": "jamf", "object_type": "Hardware",
                       "mode": "create-update", "page": 0, "chunk": 0, "records": []});
    h.runner
        .sqs
        .send_message()
        .queue_url(&dlq)
        .message_body(other.to_string())
        .send()
        .await?;
    let report = tokio::task::block_in_place(|| {
        ok_json(&stack, &["--json", "runs", "redrive", &summary.run_id])
    });
    assert_eq!(report["redrive"]["requeued"], 0, "{report}");
    assert_eq!(report["redrive"]["other_runs"], 1, "{report}");
    let left = h
        .runner
        .sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .send()
        .await?;
    assert_eq!(
        left.messages.unwrap_or_default().len(),
        1,
        "the other run's message is still in the DLQ"
    );
    Ok(())
}

/// `assetsync plan` (in-process against the local stack) writes nothing and says what the sync
/// that follows does; `assetsync sync --allow-drop` releases the circuit breaker once; `assets get
/// --json` shows which connections still report a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_and_allow_drop_through_the_cli() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(assetsync_bin).await?;
    let h = Harness::start().await?;
    let sim = JamfSim::start(JamfConfig {
        computers: 40,
        ..JamfConfig::default()
    })
    .await?;
    h.put_secret("assetsync/jamf-cli-plan", &sim.secret())
        .await?;
    let mut ev = event(
        "jamf-cli-plan",
        "jamf",
        "assetsync/jamf-cli-plan",
        "Hardware",
    );
    ev["mapping"] = json!("config:missing_after=1");
    let dir = temp_dir("plan");
    let stack = write_stack_file(&h, &dir);
    let event_file = dir.join("jamf-cli-plan.json");
    std::fs::write(&event_file, serde_json::to_string(&ev)?)?;
    let event_path = event_file.to_str().unwrap();

    let plan =
        tokio::task::block_in_place(|| ok_json(&stack, &["--json", "plan", "--event", event_path]));
    assert!(
        h.all_records("Hardware").await?.is_empty(),
        "the plan wrote no record"
    );
    let text = tokio::task::block_in_place(|| cli(&stack, &["plan", "--event", event_path]));
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("nothing was written") && text.contains("create ("),
        "{text}"
    );
    let first =
        tokio::task::block_in_place(|| ok_json(&stack, &["--json", "sync", "--event", event_path]));
    assert_eq!(
        plan["counts"], first["counts"],
        "plan {plan} vs sync {first}"
    );

    // 30% of the fleet gone: held by the breaker; released once with --allow-drop.
    let mut gone = Vec::new();
    for i in (0..12).rev() {
        if let Some(s) = sim.serial(i) {
            gone.push(s);
        }
        sim.remove_computer(i);
    }
    let held =
        tokio::task::block_in_place(|| ok_json(&stack, &["--json", "sync", "--event", event_path]));
    assert_eq!(held["status"], "succeeded_with_errors", "{held}");
    assert_eq!(held["counts"]["missing"], 0, "{held}");
    assert!(
        held["message"]
            .as_str()
            .unwrap_or_default()
            .contains("circuit breaker"),
        "{held}"
    );
    let released = tokio::task::block_in_place(|| {
        ok_json(
            &stack,
            &["--json", "sync", "--event", event_path, "--allow-drop"],
        )
    });
    assert_eq!(released["status"], "succeeded", "{released}");
    assert_eq!(
        released["counts"]["missing"],
        gone.len() as u64,
        "{released}"
    );
    let rec = tokio::task::block_in_place(|| {
        ok_json(&stack, &["--json", "assets", "get", "hardware", &gone[0]])
    });
    assert_eq!(rec["missing"], true, "{rec}");
    assert_eq!(rec["missing_from"], json!(["jamf-cli-plan"]), "{rec}");
    Ok(())
}
