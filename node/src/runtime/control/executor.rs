//! The executor side of a step: a controller of the step's site runs it for the leader, only
//! as committed in its own replicated state (same epoch, workflow, step and attempt).

use std::time::Duration;

use drover_proto::v1 as pb;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ControlCtx, StepKey, EPOCH_CATCH_UP};

/// How an executor's refusal to run a step starts (the leader then asks another executor).
pub(super) const REFUSED: &str = "refused:";
use crate::actuate::{StepContext, StepError};
use crate::consensus::state::control::StepStatus;
use crate::spec::Step;

/// Runs `step` on this node: its detail, or the error (with the last line of output) and
/// whether it was a refusal by the world ([`StepError::Refused`]: not to be retried).
pub(super) async fn run_local(
    ctx: &ControlCtx,
    step: &Step,
    sc: &StepContext,
) -> Result<String, (String, bool)> {
    match ctx.actuator.run(step, sc).await {
        Ok(out) => Ok(out.detail),
        Err(e) => {
            let refused = matches!(e, StepError::Refused { .. });
            let tail = e.output_tail().lines().last().unwrap_or("").to_string();
            if tail.is_empty() {
                Err((e.to_string(), refused))
            } else {
                Err((format!("{e} (last output: {tail})"), refused))
            }
        }
    }
}

/// Runs step `r` for the leader if this node's own state shows that very step running (same
/// epoch, workflow and attempt), waiting up to `EPOCH_CATCH_UP` for its state to get there.
/// The step run is the committed one, never what the request carries.
pub(super) async fn run_for_leader(ctx: &ControlCtx, r: pb::RunStepRequest) -> pb::RunStepReply {
    // The executor checks the step against its own replicated state: same epoch (the
    // fencing token), same workflow, and that very step started with that attempt. It
    // runs the step as committed there, never what the request carries. It waits briefly
    // for its state to catch up with the leader's.
    let deadline = Instant::now() + EPOCH_CATCH_UP;
    let step = loop {
        let seen = ctx.node.state.read(|s| {
            let st = s.control.services.get(&r.service)?;
            let wf = st.workflow.as_ref().filter(|w| w.id == r.workflow_id)?;
            let step = wf.steps.get(r.step as usize);
            let (from, to) = wf.step_sites(r.step as usize);
            let sites = (from.to_string(), to.to_string());
            Some((st.epoch, step.map(|x| (x.status.clone(), x.action.clone(), sites))))
        });
        let verdict = match seen {
                Some((epoch, _)) if epoch > r.epoch => Err(format!(
                    "refused: step of epoch {} but {} is at epoch {epoch} here; a newer failover superseded it",
                    r.epoch, r.service
                )),
                Some((epoch, Some((StepStatus::Running { attempt, .. }, Some(_), (from, to)))))
                    if epoch == r.epoch && attempt == r.attempt && (from != r.from_site || to != r.to_site) =>
                {
                    Err(format!(
                        "refused: the request says {} -> {} but workflow {} of {} runs {from} -> {to} in this node's state",
                        r.from_site, r.to_site, r.workflow_id, r.service
                    ))
                }
                Some((epoch, Some((StepStatus::Running { attempt, .. }, Some(action), _))))
                    if epoch == r.epoch && attempt == r.attempt =>
                {
                    Ok(action)
                }
                other => {
                    if Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(match other {
                        None => format!(
                            "refused: no workflow {} of service {} here",
                            r.workflow_id, r.service
                        ),
                        Some((epoch, _)) if epoch < r.epoch => format!(
                            "refused: this node has not caught up to epoch {} of {} (it is at {epoch}); try another node",
                            r.epoch, r.service
                        ),
                        _ => format!(
                            "refused: step {} attempt {} of workflow {} is not running in this node's state",
                            r.step + 1,
                            r.attempt,
                            r.workflow_id
                        ),
                    })
                }
            };
        match verdict {
            Ok(step) => break step,
            Err(detail) => {
                warn!(service = %r.service, "{detail}");
                return pb::RunStepReply {
                    ok: false,
                    detail,
                    output_tail: String::new(),
                    refused: false,
                };
            }
        }
    };
    // One run per (service, workflow, step, attempt) at a time: a repeated request while the
    // first still runs is refused, never run side by side.
    let key = (r.service.clone(), r.workflow_id, r.step, r.attempt);
    let Some(_running) = RunningGuard::claim(ctx, key) else {
        let detail = format!(
            "refused: step {} attempt {} of workflow {} of {} is already running on this node",
            r.step + 1,
            r.attempt,
            r.workflow_id,
            r.service
        );
        warn!(service = %r.service, "{detail}");
        return pb::RunStepReply { ok: false, detail, output_tail: String::new(), refused: false };
    };
    let sc = StepContext {
        service: r.service.clone(),
        epoch: r.epoch,
        from_site: r.from_site,
        to_site: r.to_site,
        recovery_point: None,
        test: false,
    };
    info!(service = %r.service, epoch = r.epoch, step = r.step + 1, attempt = r.attempt, kind = step.action.kind(), "running step for the leader");
    match ctx.actuator.run(&step, &sc).await {
        Ok(out) => pb::RunStepReply {
            ok: true,
            detail: out.detail,
            output_tail: out.output_tail,
            refused: false,
        },
        Err(e) => pb::RunStepReply {
            ok: false,
            detail: e.to_string(),
            output_tail: e.output_tail().to_string(),
            refused: matches!(e, StepError::Refused { .. }),
        },
    }
}

/// Marks a step running on this node for as long as it lives.
pub(super) struct RunningGuard<'a> {
    ctx: &'a ControlCtx,
    key: StepKey,
}

impl<'a> RunningGuard<'a> {
    /// Marks `key` running; `None` if it already is.
    pub(super) fn claim(ctx: &'a ControlCtx, key: StepKey) -> Option<RunningGuard<'a>> {
        let mut running = ctx.steps_running.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(key.clone()) {
            return None;
        }
        Some(RunningGuard { ctx, key })
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.ctx.steps_running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The `attempt` part of the key a drift check or repair holds while it runs (a step attempt
/// never reaches it), so that no two of them run side by side for one step on this node.
const RECONCILE_ATTEMPT: u32 = u32::MAX;

/// Reads back a committed traffic step's effect for the leader and, when it drifted and both
/// the request and this node's own state allow it, runs the step again with the epoch this
/// node's state holds at that moment. Everything is checked against this node's replicated
/// state (`ControlState::reconcilable`), never taken from the request; the state is read
/// again right before a repair runs.
pub(super) async fn reconcile_for_leader(
    ctx: &ControlCtx,
    r: pb::ReconcileStepRequest,
) -> pb::ReconcileStepReply {
    let step = r.step as usize;
    let judge = |ctx: &ControlCtx| {
        ctx.node.state.read(|s| s.control.reconcilable(&r.service, r.workflow_id, step, r.epoch))
    };
    let reply = |outcome: &str, detail: String, repair_detail: String| pb::ReconcileStepReply {
        outcome: outcome.to_string(),
        detail,
        repair_detail,
    };
    let deadline = Instant::now() + EPOCH_CATCH_UP;
    let found = loop {
        match judge(ctx) {
            Ok(found) => break found,
            Err(no) if no.behind && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(no) => {
                let detail = format!("{REFUSED} {}", no.why);
                warn!(service = %r.service, "drift check {detail}");
                return reply("not_checked", detail, String::new());
            }
        }
    };
    let key = (r.service.clone(), r.workflow_id, r.step, RECONCILE_ATTEMPT);
    let Some(_running) = RunningGuard::claim(ctx, key) else {
        let detail = format!(
            "{REFUSED} a drift check of step {} of workflow {} of {} is already running on this \
             node",
            step + 1,
            r.workflow_id,
            r.service
        );
        return reply("not_checked", detail, String::new());
    };
    let context = |found: &crate::consensus::state::control::Reconcilable| StepContext {
        service: r.service.clone(),
        epoch: found.epoch,
        from_site: found.from_site.clone(),
        to_site: found.to_site.clone(),
        recovery_point: None,
        test: false,
    };
    let drift = match ctx.actuator.verify(&found.step, &context(&found)).await {
        Ok(out) => return reply("holds", out.detail, String::new()),
        Err(StepError::Failed { reason, .. }) => reason,
        // A newer epoch than this cluster's owns the records (e.g. written by hand): drift
        // that a repair must not touch (it would be refused anyway).
        Err(StepError::Refused { reason }) => {
            return reply("drifted", reason, "not repaired: a newer epoch owns it".to_string())
        }
        Err(e) => {
            return reply("not_checked", format!("the read-back did not run: {e}"), String::new())
        }
    };
    if !r.repair {
        return reply("drifted", drift, String::new());
    }
    // The repair runs with the epoch this node's state holds now, and only if that state still
    // allows it (a newer epoch, a pause or repair = false since the check stop it).
    #[cfg(feature = "sim-mutations")]
    if crate::decide::reconcile::mutation::no_repair() {
        // The planted defect: drift is reported, never repaired.
        return reply("drifted", drift, "not repaired (planted defect)".to_string());
    }
    #[allow(unused_mut)]
    let mut now = match judge(ctx) {
        Ok(now) if now.repair => now,
        Ok(_) => return reply("drifted", drift, String::new()),
        Err(no) => {
            return reply("drifted", drift, format!("not repaired: {}", no.why));
        }
    };
    #[cfg(feature = "sim-mutations")]
    if crate::decide::reconcile::mutation::repair_old_epoch() {
        // The planted defect: the repair carries the epoch before the current one.
        now.epoch = now.epoch.saturating_sub(1);
    }
    info!(service = %r.service, epoch = now.epoch, step = step + 1, kind = now.step.action.kind(), "drift found, running the step again: {drift}");
    match ctx.actuator.run(&now.step, &context(&now)).await {
        Ok(out) => reply("repaired", drift, out.detail),
        Err(e) => {
            let tail = e.output_tail().lines().last().unwrap_or("").to_string();
            let why =
                if tail.is_empty() { e.to_string() } else { format!("{e} (last output: {tail})") };
            reply("repair_failed", drift, why)
        }
    }
}
