//! `runs list|show|redrive|revert`.

use anyhow::{anyhow, Context};
use assetsync::console;
use assetsync::error::chain;
use assetsync::summary::RunSummary;
use serde_json::json;

use crate::output;
use crate::target::Target;
use crate::{Global, RunsCmd};

pub async fn run(g: &Global, cmd: RunsCmd) -> anyhow::Result<()> {
    let target = Target::resolve(g).await?;
    let runs = target.runs();
    match cmd {
        RunsCmd::List {
            limit,
            since,
            oldest_first,
        } => {
            let mut items = runs.list(limit).await.context("listing runs")?;
            if let Some(since) = &since {
                items.retain(|r| r.started_at.as_str() >= since.as_str());
            }
            if oldest_first {
                items.reverse();
            }
            let mut summaries: Vec<RunSummary> = Vec::with_capacity(items.len());
            for r in &items {
                summaries.push(
                    runs.summary(r)
                        .await
                        .with_context(|| format!("reading run {}", r.run_id))?,
                );
            }
            let now_s = chrono::Utc::now().timestamp();
            let health: Vec<Option<&str>> = items
                .iter()
                .map(|r| assetsync::runs::health(r, now_s))
                .collect();
            if g.json {
                // The summaries, each with `health` (`stuck`, `abandoned`) when it has one.
                let docs: Vec<serde_json::Value> = summaries
                    .iter()
                    .zip(&health)
                    .map(|(s, h)| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        if let (Some(h), Some(o)) = (h, v.as_object_mut()) {
                            o.insert("health".into(), json!(h));
                        }
                        v
                    })
                    .collect();
                output::json(&docs)
            } else {
                if summaries.is_empty() {
                    eprintln!("no runs yet");
                } else {
                    print!("{}", output::runs_table_marked(&summaries, &health));
                }
                Ok(())
            }
        }
        RunsCmd::Show { run_id } => {
            let run = runs.get(&run_id).await?.ok_or_else(|| {
                anyhow!(
                    "no run {run_id} in the register (`assetsync runs list` shows the recent ones)"
                )
            })?;
            let summary = runs.summary(&run).await?;
            if g.json {
                output::json(&summary)
            } else {
                print!("{}", output::summary_text(&summary, None));
                Ok(())
            }
        }
        RunsCmd::Revert { run_id, plan } => {
            let report = if plan {
                assetsync::revert::plan(&runs, &run_id).await
            } else {
                assetsync::revert::revert(&runs, &run_id).await
            }
            .map_err(|e| match &e {
                // As `sync`: a connection busy with a run starts nothing (exit 3).
                assetsync::revert::RevertError::Sync(
                    assetsync::error::SyncError::AlreadyRunning { .. },
                ) => crate::exit::Exit::with_message(crate::exit::ALREADY_RUNNING, chain(&e)),
                _ => anyhow!("{}", chain(&e)),
            })?;
            let summary = match &report.run_id {
                Some(id) => match runs.get(id).await? {
                    Some(r) => Some(runs.summary(&r).await?),
                    None => None,
                },
                None => None,
            };
            if g.json {
                return output::json(&json!({"revert": report, "summary": summary}));
            }
            print!("{}", output::revert_plan_text(&report));
            match summary {
                Some(s) => print!("{}", output::summary_text(&s, Some(20))),
                None => {
                    println!("planned only: nothing was written (run without --plan to revert)")
                }
            }
            Ok(())
        }
        RunsCmd::Redrive { run_id } => {
            let sqs = target.sqs();
            let report = console::redrive(&runs, &sqs, &target.settings, &run_id)
                .await
                .map_err(|e| anyhow!("{}", chain(&e)))?;
            // Locally nothing consumes the queues: import the requeued pages (and run the finish
            // check) now.
            let summary = if report.requeued > 0 && target.in_process(g) {
                let runner = crate::sync::local_runner_for(&target);
                let mut progress = crate::sync::Progress::new(&format!("redrive {run_id}"));
                let res = runner
                    .drain_until_done(&run_id, &mut |r: &assetsync::runs::RunItem| {
                        progress.update(r)
                    })
                    .await;
                progress.finish();
                Some(res.map_err(|e| anyhow!("importing the redriven pages: {}", chain(&e)))?)
            } else {
                None
            };
            if g.json {
                return output::json(&json!({"redrive": report, "summary": summary}));
            }
            if report.superseded_by.is_none() {
                println!(
                    "run {run_id}: {} page(s) put back on the records queue ({} reopened), {} already imported; left in the dead-letter queue: {} of other runs, {} unreadable",
                    report.requeued, report.reopened, report.already_imported, report.other_runs, report.unreadable
                );
            }
            if let Some(m) = &report.message {
                println!("{m}");
            }
            match summary {
                Some(s) => print!("{}", output::summary_text(&s, Some(20))),
                None if report.requeued > 0 => println!("the importer will take them from the queue; follow with `assetsync runs show {run_id}`"),
                None => println!("run status: {}", report.status),
            }
            Ok(())
        }
    }
}
