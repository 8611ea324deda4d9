//! `droverctl watch` and `--wait`: follows a service's workflow through `Status` polls (two a
//! second) and prints each step's progress until the workflow ends. With none in progress,
//! `watch` waits for the next one to start (an outage the operator is watching for).
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
    /// The service; None: the first service with a workflow in progress (or starting).
    pub service: Option<String>,
    /// Follow this workflow (id = the log index that started it) or a later one; None: the
    /// one in progress, else the next to start.
    pub workflow_id: Option<u64>,
    /// Print nothing as it goes (`--json`: only the outcome is printed, by the caller).
    pub quiet: bool,
}

fn ended(state: &str) -> Option<bool> {
    match state {
        "committed" | "awaiting_commit" => Some(true),
        "failed" | "paused" | "rolled_back" => Some(false),
        _ => None,
    }
}

fn step_line(i: usize, n: usize, st: &pb::WorkflowStepStatus, stopped: bool) -> String {
    let what = format!("step {}/{n} {} {} on {}", i + 1, st.stage, st.kind, st.site);
    match st.status.as_str() {
        "running" => format!("{what}: running (attempt {})", st.attempt),
        // A stopped workflow keeps its step waiting for `resume`, not for a retry.
        "retry_wait" if stopped => format!("{what}: attempt {} FAILED: {}", st.attempt, st.detail),
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
    let bar = (tty && !target.quiet).then(|| {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let say = |line: String| match &bar {
        _ if target.quiet => {}
        Some(b) => b.println(line),
        None => println!("{line}"),
    };
    let mut last: Vec<String> = Vec::new();
    let mut followed: Option<(String, u64)> = None;
    let mut last_phase = String::new();
    // With no workflow asked for: the newest workflow id of each service at the first look;
    // one in progress then is followed, else the next one to start.
    let mut baseline: Option<std::collections::BTreeMap<String, u64>> = None;
    loop {
        let s = client
            .call(|mut c| async move { c.status(pb::StatusRequest { local: false }).await })
            .await?;
        if let Some(name) = &target.service {
            if !s.services.iter().any(|svc| svc.name == *name) {
                return Err(ClientError::Refused(format!(
                    "no service named {name}; see 'droverctl status'"
                )));
            }
        }
        let first = baseline.is_none();
        let base = baseline.get_or_insert_with(|| {
            s.services
                .iter()
                .map(|svc| (svc.name.clone(), svc.workflow.as_ref().map_or(0, |w| w.id)))
                .collect()
        });
        let wanted =
            |svc: &pb::ServiceStatus, w: &pb::WorkflowStatus| match (&followed, target.workflow_id)
            {
                (Some((name, id)), _) => svc.name == *name && w.id == *id,
                (None, Some(id)) => w.id >= id,
                // In progress at the first look, or started since.
                (None, None) => {
                    let since = base.get(&svc.name).copied().unwrap_or(0);
                    w.id > since || (w.id == since && ended(&w.state).is_none())
                }
            };
        let found = s.services.iter().find_map(|svc| {
            let named = target.service.as_ref().is_none_or(|n| svc.name == *n);
            let wf = svc.workflow.as_ref().filter(|w| named && wanted(svc, w))?;
            Some((svc, wf))
        });
        let Some((svc, wf)) = found else {
            if first && target.workflow_id.is_none() {
                let what = target.service.as_deref().unwrap_or("any service");
                say(format!("no workflow in progress; waiting for one of {what} to start"));
            }
            if target.workflow_id.is_some() && started.elapsed() > APPEAR_WITHIN {
                return Err(ClientError::Refused(format!(
                    "the workflow did not show up within {}s",
                    APPEAR_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        if followed.is_none() {
            followed = Some((svc.name.clone(), wf.id));
            let sites = if wf.from_site == wf.to_site {
                format!("on {}", wf.to_site)
            } else {
                format!("from {} to {}", wf.from_site, wf.to_site)
            };
            say(format!(
                "{} of {} {sites} (workflow {}, epoch {}): {}",
                wf.kind, svc.name, wf.id, wf.epoch, wf.reason
            ));
        }
        // The phase the workflow started in comes before its first steps; later phases follow
        // the steps that changed them.
        if last_phase.is_empty() {
            say(format!("phase: {}", svc.phase));
            last_phase = svc.phase.clone();
        }
        let n = wf.steps.len();
        for (i, st) in wf.steps.iter().enumerate() {
            let line = step_line(i, n, st, ended(&wf.state) == Some(false));
            if last.get(i) != Some(&line) && st.status != "pending" {
                say(line.clone());
            }
            if i < last.len() {
                last[i] = line;
            } else {
                last.push(line);
            }
        }
        if svc.phase != last_phase {
            say(format!("phase: {}", svc.phase));
            last_phase = svc.phase.clone();
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
                    // Why it stopped: the alert when nobody serves, else the step that failed.
                    let failed = wf.steps.iter().find(|st| st.status == "failed");
                    let why = match (svc.alert.is_empty(), failed) {
                        (false, _) => format!(": {}", svc.alert),
                        (true, Some(st)) => format!(
                            ": {} {} on {} failed: {}; {} serves (fix the cause, then try again)",
                            st.stage, st.kind, st.site, st.detail, svc.active_site
                        ),
                        (true, None) => String::new(),
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
