//! What a simulated node acts and observes through: an [`Actuator`] that changes the
//! simulated world (and records every change with its epoch), and a [`ProbeSource`] that
//! reports the sites' health as this node would see it across the simulated network.
//!
//! Step conventions of the simulator's spec:
//! - `exec` `["sim-app", "start" | "stop"]` starts or stops the application of the executor's
//!   own site; a stop in a self-fence (`on_lease_lost`: no target site) takes it down, a stop
//!   in a workflow (a switchover's deactivate or undo step) leaves it a healthy standby, as a
//!   graceful stop would; [`World::app_refuses`](crate::world::World) makes a workflow's start
//!   or stop fail on a site;
//! - `fence_agent` with `params.target = <site>` powers that site's application off, if the
//!   executor's site can reach it (out-of-band fencing needs a path) and it has power;
//! - `dns` points the zone at the workflow's target site, refusing an epoch older than the
//!   zone's (the fencing-token prerequisite of the real DNS step); while
//!   [`World::dns_ignores`](crate::world::World) holds, the server answers success and drops
//!   the update; every accepted update is recorded in `World::dns_writes`;
//! - `wait` sleeps; everything else is not simulated and fails.
//!
//! `verify` (the drift read-back) is simulated for `dns`: the zone must point at the step's
//! target site with the step's epoch (drift, `StepError::Failed`, otherwise), and a newer
//! epoch owning it is `StepError::Refused` (drift never repaired over).

use std::time::Duration;

use drover::actuate::{Actuator, StepContext, StepError, StepFuture, StepOutput};
use drover::decide::Verdict;
use drover::probe::{ProbeSource, SiteReport};
use drover::spec::{FenceAction, Step, StepAction};
use tokio::time::Instant;

use crate::world::{
    lock, Action, DnsWrite, FenceMode, Mutation, Shared, SimNode, DR, PROD, SERVICE,
};

/// A node's simulated actuator.
pub struct SimActuator {
    /// The world it acts on.
    pub world: Shared,
    /// The node it runs on.
    pub node: SimNode,
}

fn failed(reason: impl Into<String>) -> StepError {
    StepError::Failed { reason: reason.into(), output_tail: String::new() }
}

impl SimActuator {
    /// How long an action of `lo..=hi` ms takes this time.
    fn duration(&self, lo: u64, hi: u64) -> Duration {
        let mut w = lock(&self.world);
        let slow = w.actuator_slowdown;
        Duration::from_millis(w.rng.range(lo, hi) * slow)
    }

    /// A paused process does nothing: while the host is stalled, its actions wait.
    async fn unstalled(&self) {
        while lock(&self.world).stalled.contains(&self.node.host) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn act(&self, step: &Step, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.unstalled().await;
        let self_fence = ctx.to_site.is_empty();
        let done = |what: String| StepOutput { detail: what, output_tail: String::new() };
        match &step.action {
            StepAction::Exec(e) => {
                let verb = e.command.get(1).map(String::as_str).unwrap_or("");
                if e.command.first().map(String::as_str) != Some("sim-app")
                    || !matches!(verb, "start" | "stop")
                {
                    return Err(failed(format!("not simulated: exec {:?}", e.command)));
                }
                tokio::time::sleep(self.duration(50, 400)).await;
                self.unstalled().await;
                let site = self.node.site.clone();
                let mut w = lock(&self.world);
                if !w.powered.get(&site).copied().unwrap_or(false) {
                    return Err(failed(format!("site {site} has no power")));
                }
                let start = verb == "start";
                if !self_fence && w.app_refuses.contains(&(site.clone(), verb.to_string())) {
                    return Err(failed(format!("sim-app {verb}: {site}'s application exited 1")));
                }
                if let Some(app) = w.apps.get_mut(&site) {
                    app.running = start;
                    // A graceful stop (deactivate) leaves a standby that can start again; only
                    // a self-fence takes the site down.
                    app.stopped = !start && self_fence;
                }
                let activates = (start && !self_fence).then(|| site.clone());
                w.record(Action {
                    at: Duration::ZERO,
                    host: self.node.host.clone(),
                    what: format!("{verb} {site}"),
                    epoch: ctx.epoch,
                    self_fence,
                    activates,
                });
                Ok(done(format!("{verb} {site}")))
            }
            StepAction::FenceAgent(f) => {
                let target = f.params.get("target").cloned().unwrap_or_default();
                let (mode, reachable) = {
                    let w = lock(&self.world);
                    // The power controller sits with the target's application.
                    let reachable = w.reaches_app(&self.node, &target)
                        && w.powered.get(&target).copied().unwrap_or(false);
                    (w.fence, reachable)
                };
                let lying = lock(&self.world).mutation == Some(Mutation::LyingFence);
                if !lying && (mode == FenceMode::Hangs || !reachable) {
                    // No answer from the power controller: the step's timeout ends it.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.duration(200, 1500)).await;
                self.unstalled().await;
                if mode == FenceMode::Fails && !lying {
                    return Err(failed(format!("{}: Failed: Unable to connect", f.agent)));
                }
                let mut w = lock(&self.world);
                if f.action == FenceAction::Status {
                    let on = w.apps.get(&target).is_some_and(|a| a.running);
                    return Ok(done(format!("{target} is {}", if on { "on" } else { "off" })));
                }
                if w.mutation != Some(Mutation::LyingFence) {
                    if let Some(app) = w.apps.get_mut(&target) {
                        app.running = false;
                        app.stopped = true;
                    }
                }
                w.record(Action {
                    at: Duration::ZERO,
                    host: self.node.host.clone(),
                    what: format!("fence {target}"),
                    epoch: ctx.epoch,
                    self_fence,
                    activates: None,
                });
                Ok(done(format!("fenced {target}")))
            }
            StepAction::Dns(_) => {
                tokio::time::sleep(self.duration(20, 150)).await;
                self.unstalled().await;
                let mut w = lock(&self.world);
                if w.dns_refuses {
                    return Err(failed("dns: the server answered REFUSED"));
                }
                if ctx.epoch < w.dns.0 {
                    return Err(StepError::Refused {
                        reason: format!(
                            "dns: epoch {} already owns the name (this update is epoch {})",
                            w.dns.0, ctx.epoch
                        ),
                    });
                }
                let applied = !w.dns_ignores;
                let write = DnsWrite {
                    at: w.now,
                    host: self.node.host.clone(),
                    epoch: ctx.epoch,
                    site: ctx.to_site.clone(),
                    applied,
                };
                w.dns_writes.push(write);
                if applied {
                    w.dns = (ctx.epoch, ctx.to_site.clone());
                    let state = w.dns.clone();
                    if w.dns_states.last() != Some(&state) {
                        w.dns_states.push(state);
                    }
                }
                w.record(Action {
                    at: Duration::ZERO,
                    host: self.node.host.clone(),
                    what: format!(
                        "dns -> {}{}",
                        ctx.to_site,
                        if applied { "" } else { " (accepted, ignored)" }
                    ),
                    epoch: ctx.epoch,
                    self_fence,
                    activates: None,
                });
                Ok(done(format!("dns points at {}", ctx.to_site)))
            }
            StepAction::Wait(wait) => {
                tokio::time::sleep(wait.duration).await;
                Ok(done("waited".into()))
            }
            other => Err(failed(format!("not simulated: {}", other.kind()))),
        }
    }
}

impl SimActuator {
    /// Reads back what a `dns` step set: the zone points at the step's target site, and no
    /// newer epoch owns it. Other kinds cannot be read back here.
    async fn read_back(&self, step: &Step, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.unstalled().await;
        match &step.action {
            StepAction::Dns(_) => {
                tokio::time::sleep(self.duration(5, 50)).await;
                self.unstalled().await;
                let w = lock(&self.world);
                let (epoch, site) = &w.dns;
                if *epoch > ctx.epoch {
                    return Err(StepError::Refused {
                        reason: format!(
                            "dns: epoch {epoch} owns the name (this check is epoch {})",
                            ctx.epoch
                        ),
                    });
                }
                if (*epoch, site) != (ctx.epoch, &ctx.to_site) {
                    return Err(failed(format!(
                        "dns: the name points at {site} with epoch {epoch}, not at {} with \
                         epoch {}",
                        ctx.to_site, ctx.epoch
                    )));
                }
                Ok(StepOutput {
                    detail: format!("dns points at {site} (epoch {epoch})"),
                    output_tail: String::new(),
                })
            }
            other => Err(StepError::Unsupported { kind: other.kind() }),
        }
    }
}

impl Actuator for SimActuator {
    fn run<'a>(&'a self, step: &'a Step, ctx: &'a StepContext) -> StepFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(step.timeout, self.act(step, ctx)).await {
                Ok(result) => result,
                Err(_) => {
                    Err(StepError::Timeout { after: step.timeout, output_tail: String::new() })
                }
            }
        })
    }

    fn verify<'a>(&'a self, step: &'a Step, ctx: &'a StepContext) -> StepFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(step.timeout, self.read_back(step, ctx)).await {
                Ok(result) => result,
                Err(_) => {
                    Err(StepError::Timeout { after: step.timeout, output_tail: String::new() })
                }
            }
        })
    }
}

/// A node's simulated probes of the sites' applications.
pub struct SimProbes {
    /// The world it looks at.
    pub world: Shared,
    /// The node it runs on.
    pub node: SimNode,
}

impl ProbeSource for SimProbes {
    fn latest(&self) -> Vec<SiteReport> {
        let w = lock(&self.world);
        [PROD, DR]
            .iter()
            .map(|site| {
                let healthy = w.app_healthy_from(&self.node, site);
                SiteReport {
                    service: SERVICE.to_string(),
                    site: site.to_string(),
                    verdict: if healthy { Verdict::Healthy } else { Verdict::Unhealthy },
                    detail: if healthy { "ok" } else { "no answer" }.to_string(),
                    observed_at: Instant::now(),
                    lag: None,
                    ready: None,
                    fingerprints: Vec::new(),
                    passive: Vec::new(),
                }
            })
            .collect()
    }
}
