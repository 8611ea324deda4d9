//! `droverctl plan`: what a failover or switchover of a service would do now, without doing
//! it. Pure: the spec, the service's replicated state, the leader's gate verdict and the
//! members in, a [`DryRun`] out.
//!
//! The gates are those the workflow's start would check (the service at rest, the target
//! site able to take over, for a failover the readiness and lag gates the leader evaluates),
//! plus what only informs (how the old site's stop is confirmed, automatic action paused or in
//! cooldown). The steps are the plan the state machine would build, each with where it runs,
//! its timeout, retries and worst case. The time to recovery is the sum of the steps' worst
//! cases and, when nothing confirms the old site's stop, the safe lease wait.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lease::LeaseParams;
use crate::consensus::state::control::{
    plan_failover, plan_switchover, Automation, LeaseTerms, ServiceState, Stage, WorkflowStep,
};
use crate::consensus::types::{Member, NodeId, Role};
use crate::spec::{ClusterSpec, Phase, RunOn, StepAction};

/// One gate and its verdict now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateLine {
    /// Short name (`at rest`, `target`, `readiness and lag`, ...).
    pub name: String,
    /// Whether it lets the workflow start (informational lines always pass).
    pub passed: bool,
    /// The verdict in words.
    pub detail: String,
}

/// One step that would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLine {
    /// `fence`, `lease_wait`, `deactivate`, `catch_up`, `activate`, `verify`.
    pub stage: String,
    /// The site whose runbook it comes from.
    pub site: String,
    /// The step kind (`exec`, `dns`, `lease_wait`, ...).
    pub kind: String,
    /// Where it would run: the leader, or the controllers of a site.
    pub runs_on: String,
    /// One attempt's limit (zero for what the leader evaluates, see `worst_case`).
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// `abort`, `continue` or `pause`.
    pub on_failure: String,
    /// Longest the step can take: every attempt times out, with backoff in between; for the
    /// lease wait, the safe wait when nothing confirms the stop.
    pub worst_case: Duration,
}

/// What a failover or switchover would do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// `failover` or `switchover`.
    pub kind: &'static str,
    /// The active site.
    pub from: String,
    /// The site it would activate.
    pub to: String,
    /// The epoch it would establish.
    pub epoch: u64,
    /// Every gate, in the order they are checked.
    pub gates: Vec<GateLine>,
    /// The plan, in order.
    pub steps: Vec<PlanLine>,
    /// The lease wait when nothing confirms the old site's stop.
    pub safe_wait: Duration,
    /// Upper bound of the workflow's duration: the steps' worst cases, the lease wait at its
    /// full length (a stop that is not confirmed).
    pub worst_case: Duration,
    /// Lower bound of the workflow's duration when every step succeeds: the lease wait when
    /// nothing can confirm the old site's stop, and one check interval of the new site per
    /// `probe` step (verification needs fresh reports); runbook steps' own time comes on top.
    pub best_case: Duration,
    /// For an automatic failover, detection before the workflow starts: `down_after` plus the
    /// slowest check interval of the active site and a 500 ms report period.
    pub detection: Duration,
}

impl DryRun {
    /// True when every gate passes: the workflow would start now.
    pub fn would_start(&self) -> bool {
        self.gates.iter().all(|g| g.passed)
    }
}

/// What the leader evaluated of a move to the target site, for [`dry_run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderVerdict {
    /// The readiness gates of a failover (None: not evaluated yet).
    pub gates: Option<Result<(), String>>,
    /// Why a switchover is blocked: a gating passive check of the target passes,
    /// unacknowledged (a possible split brain).
    pub split_brain: Option<String>,
}

/// The dry run of a failover (`switchover = false`) or switchover of `service` to `to`, with
/// the leader's `verdict` on the target. Errors: no such service or site.
pub fn dry_run(
    spec: &ClusterSpec,
    state: &ServiceState,
    service: &str,
    to: &str,
    switchover: bool,
    verdict: LeaderVerdict,
    members: &BTreeMap<NodeId, Member>,
) -> Result<DryRun, String> {
    let LeaderVerdict { gates, split_brain } = verdict;
    let svc = spec.service(service).ok_or_else(|| format!("no service named {service}"))?;
    let policy = spec.policy_for(service).ok_or_else(|| format!("no policy for {service}"))?;
    if spec.site(to).is_none() {
        return Err(format!("no site named {to}; the spec's sites: {}", site_names(spec)));
    }
    let from = state.active_site.clone();
    if to == from {
        return Err(format!("{to} is already the active site of {service}"));
    }
    if spec.site(to).is_some_and(|s| s.witness) {
        return Err(format!("{to} is the witness site: it never runs a service"));
    }
    let kind = if switchover { "switchover" } else { "failover" };
    let mut lines = Vec::new();
    let mut gate = |name: &str, passed: bool, detail: String| {
        lines.push(GateLine { name: name.to_string(), passed, detail })
    };
    match state.active_workflow() {
        None => {
            gate("at rest", true, format!("no workflow in progress ({})", state.phase.as_str()))
        }
        Some(wf) => gate("at rest", false, wf.summary(service)),
    }
    let target = match svc.runbook(to, Phase::Activate).len() {
        0 if switchover => (false, format!("{to} has no activate runbook")),
        0 => (true, format!("{to} has no activate runbook: nothing will start there")),
        n => (true, format!("{to} has an activate runbook of {n} step(s)")),
    };
    gate("target", target.0, target.1);
    let stop = if switchover { Phase::Deactivate } else { Phase::Fence };
    let stoppers = svc.runbook(&from, stop).len();
    let terms =
        state.lease.as_ref().map(|l| l.terms).unwrap_or_default().max(LeaseTerms::of(&policy));
    let safe_wait = LeaseParams::from(terms).safe_wait();
    gate(
        "stop of the old site",
        true,
        match stoppers {
            0 => format!(
                "{from} has no {} runbook: the lease wait runs its full {}",
                stop.as_str(),
                secs(safe_wait)
            ),
            n => format!(
                "{n} {} step(s) on {from}; when all succeed the lease wait ends at once, else it \
                 lasts {}",
                stop.as_str(),
                secs(safe_wait)
            ),
        },
    );
    if switchover {
        gate(
            "catch-up",
            true,
            match &svc.lag {
                Some(_) => format!(
                    "waits for the lag probe to report 0 within catch_up_timeout {}; else the \
                     service returns to {from}",
                    secs(policy.catch_up_timeout)
                ),
                None => "no lag probe: no wait for replication".to_string(),
            },
        );
        if let Some(why) = split_brain {
            gate("split brain", false, format!("{why} (--force skips this gate)"));
        }
    } else {
        match gates {
            Some(Ok(())) => gate("readiness and lag", true, "pass".to_string()),
            Some(Err(why)) => {
                gate("readiness and lag", false, format!("{why} (--force skips this gate)"))
            }
            None => gate(
                "readiness and lag",
                false,
                "not evaluated by the leader yet (it may have just started)".to_string(),
            ),
        }
    }
    let mode = match (&state.paused, &state.mode) {
        (Some(p), _) => {
            format!("paused by {} ({}); an operator's {kind} is not held by it", p.by, p.reason)
        }
        (None, Automation::Cooldown { .. }) => {
            format!("in cooldown; an operator's {kind} is not held by it")
        }
        (None, Automation::Auto) => "automatic".to_string(),
    };
    gate("automatic action", true, mode);

    let plan = if switchover {
        plan_switchover(spec, service, &from, to)
    } else {
        plan_failover(spec, service, &from, to)
    };
    let steps: Vec<PlanLine> = plan.iter().map(|st| plan_line(st, members, safe_wait)).collect();
    let worst_case = steps.iter().map(|s| s.worst_case).sum();
    let interval = |site: &str| svc.checks_for(site).map(|c| c.interval).max().unwrap_or_default();
    let probes = plan
        .iter()
        .filter(|st| st.action.as_ref().is_some_and(|a| matches!(a.action, StepAction::Probe(_))))
        .count() as u32;
    let best_case = if stoppers == 0 { safe_wait } else { Duration::ZERO } + interval(to) * probes;
    let detection = policy.down_after + interval(&from) + Duration::from_millis(500);
    Ok(DryRun {
        kind,
        from,
        to: to.to_string(),
        epoch: state.epoch + 1,
        gates: lines,
        steps,
        safe_wait,
        worst_case,
        best_case,
        detection,
    })
}

fn plan_line(
    st: &WorkflowStep,
    members: &BTreeMap<NodeId, Member>,
    safe_wait: Duration,
) -> PlanLine {
    let (runs_on, timeout, retries, on_failure, worst) = match &st.action {
        None if st.stage == Stage::CatchUp => (
            "the leader (evaluated)".to_string(),
            Duration::ZERO,
            0,
            "abort".into(),
            Duration::ZERO,
        ),
        // The full wait counts in the bound: the stop's confirmation may fail.
        None => {
            ("the leader (evaluated)".to_string(), Duration::ZERO, 0, "abort".into(), safe_wait)
        }
        Some(a) => {
            let runs_on = match (&a.action, &a.run_on) {
                (StepAction::Probe(_), _) => "the leader (evaluated)".to_string(),
                (_, RunOn::Any) => "the leader".to_string(),
                (_, RunOn::Site(site)) => {
                    let names: Vec<&str> = members
                        .values()
                        .filter(|m| m.site == *site && m.role == Role::Controller)
                        .map(|m| m.name.as_str())
                        .collect();
                    match names.as_slice() {
                        [] => format!("a controller of {site} (none is a member!)"),
                        _ => format!("a controller of {site}: {}", names.join(", ")),
                    }
                }
            };
            let on_failure = format!("{:?}", a.on_failure).to_lowercase();
            (runs_on, a.timeout, a.retries, on_failure, a.worst_case())
        }
    };
    PlanLine {
        stage: st.stage.as_str().to_string(),
        site: st.site.clone(),
        kind: st.kind().to_string(),
        runs_on,
        timeout,
        retries,
        on_failure,
        worst_case: worst,
    }
}

fn site_names(spec: &ClusterSpec) -> String {
    spec.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::state::control::{ControlRequest, ControlState};

    const SPEC: &str = include_str!("../spec/testdata/cluster.toml");

    fn state() -> (ClusterSpec, ControlState) {
        let spec = crate::spec::parse(SPEC, "test").expect("valid");
        let mut c = ControlState::default();
        c.apply(
            1,
            &ControlRequest::ApplySpec {
                expected_version: None,
                spec: Box::new(spec.clone()),
                text: String::new(),
                author: "op".into(),
                at_unix_ms: 0,
            },
        );
        (spec, c)
    }

    #[test]
    fn a_failover_lists_its_gates_and_steps_and_bounds_its_time() {
        let (spec, c) = state();
        let s = &c.services["file-transfer"];
        let blocked = Some(Err("dr is not ready".to_string()));
        let d = dry_run(
            &spec,
            s,
            "file-transfer",
            "dr",
            false,
            LeaderVerdict { gates: blocked, split_brain: None },
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(!d.would_start());
        let gate = d.gates.iter().find(|g| g.name == "readiness and lag").unwrap();
        assert!(gate.detail.contains("--force"), "{gate:?}");
        let stages: Vec<&str> = d.steps.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["fence", "lease_wait", "activate", "activate", "activate", "verify"]);
        // fence 60s + lease wait + activate 300s x 3 attempts + 2 x 30s... + verify 60s.
        let sum: Duration = d.steps.iter().map(|s| s.worst_case).sum();
        assert_eq!(d.worst_case, sum);
        assert!(d.worst_case > d.safe_wait);
        // prod has a fence step: no lease wait when it succeeds; one probe step on dr.
        assert!(d.best_case < d.safe_wait, "{:?}", d.best_case);
        assert!(d.detection > spec.policy_for("file-transfer").unwrap().down_after);
        let ok = dry_run(
            &spec,
            s,
            "file-transfer",
            "dr",
            false,
            LeaderVerdict { gates: Some(Ok(())), split_brain: None },
            &BTreeMap::new(),
        );
        assert!(ok.unwrap().would_start());
    }

    #[test]
    fn a_switchover_plans_deactivate_catch_up_and_needs_an_activate_runbook() {
        let (spec, c) = state();
        let s = &c.services["file-transfer"];
        let d = dry_run(
            &spec,
            s,
            "file-transfer",
            "dr",
            true,
            LeaderVerdict { gates: None, split_brain: None },
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(d.would_start(), "{:?}", d.gates);
        assert_eq!(d.steps[0].stage, "deactivate");
        assert_eq!(d.steps[1].stage, "catch_up");
        assert!(dry_run(
            &spec,
            s,
            "file-transfer",
            "nowhere",
            true,
            LeaderVerdict { gates: None, split_brain: None },
            &BTreeMap::new()
        )
        .is_err());
        let to_self = dry_run(
            &spec,
            s,
            "file-transfer",
            "prod",
            true,
            LeaderVerdict { gates: None, split_brain: None },
            &BTreeMap::new(),
        );
        assert!(to_self.unwrap_err().contains("already the active site"));
        // A serving dr (a passing passive check, unacknowledged) holds a switchover too.
        let serving = LeaderVerdict {
            gates: Some(Ok(())),
            split_brain: Some("webshop: standby dr is serving: possible split brain".into()),
        };
        let d = dry_run(&spec, s, "file-transfer", "dr", true, serving, &BTreeMap::new()).unwrap();
        assert!(!d.would_start());
        let gate = d.gates.iter().find(|g| g.name == "split brain").unwrap();
        assert!(gate.detail.ends_with("(--force skips this gate)"), "{gate:?}");
    }
}
