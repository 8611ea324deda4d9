//! `droverctl watch` and `--wait`: follows a service's workflow through `Status` polls (two a
//! second) and prints each step's progress until the workflow ends.
//!
//! On a terminal a progress bar shows step i of n, the elapsed time and a spinner; otherwise
//! (a pipe, a log) one plain line per change. The outcome decides the exit code: committed, or
//! verified and waiting for a manual commit, is success; failed, paused or rolled back (a
//! switchover that returned to its old site) is failure.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use drover_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Client, ClientError};

/// Time between two `Status` polls.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Longest a watch waits for the workflow it was asked to follow to show up.
const APPEAR_WITHIN: Duration = Duration::from_secs(30);

/// How a watched workflow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, or verified and waiting for `droverctl commit`.
    Succeeded(String),
    /// Failed, paused or rolled back: the reason.
    Failed(String),
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct Target {
    /// The service; None: the first service with a workflow in progress.
    pub service: Option<String>,
    /// Follow this workflow (id = the log index that started it); None: whatever runs.
    pub workflow_id: Option<u64>,
}

fn ended(state: &str) -> Option<bool> {
    match state {
        "committed" | "awaiting_commit" => Some(true),
        "failed" | "paused" | "rolled_back" => Some(false),
        _ => None,
    }
}

fn step_line(i: usize, n: usize, st: &pb::WorkflowStepStatus) -> String {
    let what = format!("step {}/{n} {} {} on {}", i + 1, st.stage, st.kind, st.site);
    match st.status.as_str() {
        "running" => format!("{what}: running (attempt {})", st.attempt),
        "retry_wait" => format!("{what}: attempt {} failed, retrying: {}", st.attempt, st.detail),
        "succeeded" => format!("{what}: done: {}", st.detail),
        "failed" => format!("{what}: FAILED: {}", st.detail),
        "skipped" => format!("{what}: skipped ({})", st.detail),
        other => format!("{what}: {other}"),
    }
}

/// Follows `target` until its workflow ends; prints as it goes.
pub async fn watch(client: &Client, target: &Target) -> Result<Outcome, ClientError> {
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => println!("{line}"),
    };
    let mut last: Vec<String> = Vec::new();
    let mut followed: Option<(String, u64)> = None;
    let mut last_phase = String::new();
    loop {
        let s = client
            .call(|mut c| async move { c.status(pb::StatusRequest { local: false }).await })
            .await?;
        let found = s.services.iter().find(|svc| match (&followed, &target.service) {
            (Some((name, _)), _) => svc.name == *name,
            (None, Some(name)) => svc.name == *name,
            (None, None) => svc.workflow.as_ref().is_some_and(|w| ended(&w.state).is_none()),
        });
        let Some(svc) = found else {
            if let Some(name) = &target.service {
                return Err(ClientError::Refused(format!(
                    "no service named {name}; see 'droverctl status'"
                )));
            }
            return Ok(Outcome::Succeeded("no workflow in progress".to_string()));
        };
        let wf = svc.workflow.as_ref().filter(|w| {
            target.workflow_id.is_none_or(|id| w.id >= id)
                && followed.as_ref().is_none_or(|(_, id)| w.id == *id)
        });
        let Some(wf) = wf else {
            if target.workflow_id.is_none() && followed.is_none() {
                return Ok(Outcome::Succeeded(format!(
                    "{}: no workflow in progress ({}, active on {})",
                    svc.name, svc.phase, svc.active_site
                )));
            }
            if started.elapsed() > APPEAR_WITHIN {
                return Err(ClientError::Refused(format!(
                    "the workflow of {} did not show up within {}s",
                    svc.name,
                    APPEAR_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        if followed.is_none() {
            followed = Some((svc.name.clone(), wf.id));
            say(format!(
                "{} of {} from {} to {} (workflow {}, epoch {}): {}",
                wf.kind, svc.name, wf.from_site, wf.to_site, wf.id, wf.epoch, wf.reason
            ));
        }
        if svc.phase != last_phase {
            say(format!("phase: {}", svc.phase));
            last_phase = svc.phase.clone();
        }
        let n = wf.steps.len();
        for (i, st) in wf.steps.iter().enumerate() {
            let line = step_line(i, n, st);
            if last.get(i) != Some(&line) && st.status != "pending" {
                say(line.clone());
            }
            if i < last.len() {
                last[i] = line;
            } else {
                last.push(line);
            }
        }
        if let Some(b) = &bar {
            let done = wf
                .steps
                .iter()
                .filter(|s| matches!(s.status.as_str(), "succeeded" | "failed" | "skipped"))
                .count();
            b.set_length(n as u64);
            b.set_position(done as u64);
            let current = wf
                .steps
                .iter()
                .find(|s| !matches!(s.status.as_str(), "succeeded" | "failed" | "skipped"));
            b.set_message(match current {
                Some(st) => format!("{} {} on {}: {}", st.stage, st.kind, st.site, st.status),
                None => wf.state.clone(),
            });
        }
        if let Some(ok) = ended(&wf.state) {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let secs = started.elapsed().as_secs_f64();
            let text = match wf.state.as_str() {
                "awaiting_commit" => format!(
                    "{} of {} verified after {secs:.1}s; waiting for 'droverctl commit {}'",
                    wf.kind, svc.name, svc.name
                ),
                state => {
                    let why = if svc.alert.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", svc.alert)
                    };
                    format!(
                        "{} of {} {} after {secs:.1}s ({} active, epoch {}){why}",
                        wf.kind,
                        svc.name,
                        state.replace('_', " "),
                        svc.active_site,
                        svc.epoch
                    )
                }
            };
            return Ok(if ok { Outcome::Succeeded(text) } else { Outcome::Failed(text) });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
