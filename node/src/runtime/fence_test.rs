//! `droverctl fence test --site X`: ask every fence agent that would fence site X whether it can
//! see its target, from a node where the step would really run. Changes nothing.
//!
//! ```text
//!  droverctl ──Admin.FenceTest{site}──▶ any node: spec.fence_agent_steps(site)
//!                                        per step, concurrently (at most PARALLEL):
//!                                          executor = this node ──▶ actuator, action = status
//!                                          executor elsewhere ──Control.FenceStatus{spec version,
//!                                              service, site, phase, index}──▶ that node takes the
//!                                              step from its OWN spec, action = status
//! ```
//!
//! The executor is chosen like a workflow's: a step with `run_on = "any"` runs on the node
//! that received the call (a controller; a witness hands it to one), a site-bound step on a
//! controller of that site. Nothing about a step but its position crosses the wire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::v1 as pb;
use futures::StreamExt;
use tracing::info;

use super::control::PeerChannels;
use crate::actuate::{fence_status_power, Actuator, StepContext, StepError};
use crate::api::NodeHandle;
use crate::consensus::types::{Member, NodeId, Role};
use crate::spec::{ClusterSpec, FenceAction, FenceStepRef, Phase, RunOn, Step, StepAction};

/// Steps tested at once.
const PARALLEL: usize = 8;
/// Most nodes tried for one step (the next is tried when one cannot be reached).
const MAX_EXECUTORS: usize = 3;
/// Added to a step's timeout for the round trip to a remote executor.
const REMOTE_MARGIN: Duration = Duration::from_secs(5);
/// Longest an executor waits for its own spec to reach the asking node's version.
const SPEC_CATCH_UP: Duration = Duration::from_secs(3);
/// A peer heard from within this long is tried before others.
const RECENT: Duration = Duration::from_secs(3);

/// Why a site's fencing could not be tested at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceTestError {
    /// No spec yet.
    #[error("no cluster spec applied yet; run 'droverctl config apply -f cluster.toml'")]
    NoSpec,
    /// The site is not in the spec, or is the witness.
    #[error("{0}")]
    BadSite(String),
}

/// What testing one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceTestResult {
    /// The service whose runbook holds the step.
    pub service: String,
    /// `fence` or `on_lease_lost`.
    pub phase: Phase,
    /// 0-based position in that runbook.
    pub step: usize,
    /// The agent program.
    pub agent: String,
    /// Its plug, port or ip parameter (`key=value`), or empty.
    pub target: String,
    /// The node that ran it; empty when none could.
    pub node: String,
    /// `"on"` or `"off"`, or why the test failed.
    pub outcome: Result<&'static str, String>,
    /// From the start of this step's test to its result.
    pub elapsed: Duration,
}

/// Runs fence agents' `status` for `droverctl fence test`, here or on a peer.
#[derive(Clone)]
pub struct FenceTester {
    node: NodeHandle,
    role: Role,
    actuator: Arc<dyn Actuator>,
    peers: PeerChannels,
}

impl FenceTester {
    /// A tester running agents with `actuator` and reaching peers through `peers`.
    pub fn new(
        node: NodeHandle,
        role: Role,
        actuator: Arc<dyn Actuator>,
        peers: PeerChannels,
    ) -> FenceTester {
        FenceTester { node, role, actuator, peers }
    }

    /// Tests every `fence_agent` step that fences `site`; the spec version they came from and
    /// one result per step, in spec order.
    pub async fn test_site(
        &self,
        site: &str,
    ) -> Result<(u64, Vec<FenceTestResult>), FenceTestError> {
        let Some((version, spec)) =
            self.node.state.read(|s| s.control.spec.as_ref().map(|v| (v.version, v.spec.clone())))
        else {
            return Err(FenceTestError::NoSpec);
        };
        check_site(&spec, site)?;
        let members: Vec<(NodeId, Member)> = {
            let m = self.node.raft.metrics().borrow().clone();
            m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
        };
        let steps = spec.fence_agent_steps(site);
        // Boxed, so the futures' type names no borrowed step (tonic's handlers must be Send).
        let tests: Vec<BoxedTest<'_>> = steps
            .into_iter()
            .map(|r| Box::pin(self.test_one(version, site, r, &members)) as BoxedTest<'_>)
            .collect();
        let results = futures::stream::iter(tests).buffered(PARALLEL).collect().await;
        Ok((version, results))
    }

    async fn test_one<'a>(
        &'a self,
        version: u64,
        site: &str,
        r: FenceStepRef<'a>,
        members: &'a [(NodeId, Member)],
    ) -> FenceTestResult {
        let started = Instant::now();
        let recent = |id: NodeId| self.node.contacts.since(id).is_some_and(|d| d < RECENT);
        let executors = executors(&r.step.run_on, self.node.id, members, recent);
        let mut node = String::new();
        let mut outcome = Err(no_executor(&r.step.run_on));
        for (id, member) in executors {
            node = member.name.clone();
            if id == self.node.id && self.role == Role::Controller {
                outcome = self.run_status(r.service, site, r.step).await;
                break;
            }
            match self.remote(id, &member, version, site, &r).await {
                Remote::Answered(o) => {
                    outcome = o;
                    break;
                }
                Remote::Unreachable(why) => outcome = Err(why),
            }
        }
        FenceTestResult {
            service: r.service.to_string(),
            phase: r.phase,
            step: r.index,
            agent: r.agent.agent.clone(),
            target: r.agent.target(),
            node,
            outcome,
            elapsed: started.elapsed(),
        }
    }

    async fn remote(
        &self,
        id: NodeId,
        member: &Member,
        version: u64,
        site: &str,
        r: &FenceStepRef<'_>,
    ) -> Remote {
        let mut client = match self.peers.control(id, member) {
            Ok(c) => c,
            Err(why) => return Remote::Unreachable(why),
        };
        let req = pb::FenceStatusRequest {
            spec_version: version,
            service: r.service.to_string(),
            site: site.to_string(),
            phase: r.phase.as_str().to_string(),
            step: r.index as u32,
        };
        let limit = r.step.timeout + SPEC_CATCH_UP + REMOTE_MARGIN;
        match tokio::time::timeout(limit, client.fence_status(req)).await {
            Err(_) => Remote::Answered(Err(format!(
                "no answer from {} within {}s",
                member.name,
                limit.as_secs()
            ))),
            Ok(Err(status)) => Remote::Unreachable(format!(
                "{} could not be asked: {}",
                member.name,
                status.message()
            )),
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                Remote::Answered(match (reply.ok, reply.power.as_str()) {
                    (true, "on") => Ok("on"),
                    (true, "off") => Ok("off"),
                    (true, other) => {
                        Err(format!("{} answered an unknown power state {other:?}", member.name))
                    }
                    (false, _) => Err(reply.detail),
                })
            }
        }
    }

    /// On the executor: `status` of the step at that position in this node's own spec, which
    /// must be at `spec_version` (waiting briefly for it to catch up).
    pub async fn status_here(
        &self,
        spec_version: u64,
        service: &str,
        site: &str,
        phase: &str,
        index: usize,
    ) -> Result<&'static str, String> {
        if self.role != Role::Controller {
            return Err(format!(
                "{} is a witness; a witness never runs fence agents",
                self.node.name
            ));
        }
        let phase = Phase::parse(phase).ok_or_else(|| format!("unknown phase {phase:?}"))?;
        let deadline = Instant::now() + SPEC_CATCH_UP;
        let spec = loop {
            let current = self
                .node
                .state
                .read(|s| s.control.spec.as_ref().map(|v| (v.version, v.spec.clone())));
            match current {
                Some((v, spec)) if v == spec_version => break spec,
                Some((v, _)) if v > spec_version => {
                    return Err(format!(
                        "{} has spec version {v}, newer than {spec_version}; run the test again",
                        self.node.name
                    ))
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => {
                    return Err(format!(
                        "{} has not caught up to spec version {spec_version} (it has {})",
                        self.node.name,
                        other.map_or(0, |(v, _)| v)
                    ))
                }
            }
        };
        let step = spec
            .service(service)
            .and_then(|svc| svc.runbook(site, phase).get(index))
            .filter(|s| matches!(s.action, StepAction::FenceAgent(_)))
            .ok_or_else(|| {
                format!(
                    "{} has no fence_agent step {} in {service}'s {phase} runbook of {site}",
                    self.node.name,
                    index + 1
                )
            })?;
        if matches!(&step.run_on, RunOn::Site(s) if *s != self.node.site) {
            return Err(format!(
                "the step runs on site {}, not on {} (site {})",
                step.run_on, self.node.name, self.node.site
            ));
        }
        self.run_status(service, site, step).await
    }

    /// Runs `step` here with its action forced to `status`.
    async fn run_status(
        &self,
        service: &str,
        site: &str,
        step: &Step,
    ) -> Result<&'static str, String> {
        let StepAction::FenceAgent(agent) = &step.action else {
            return Err("not a fence_agent step".to_string());
        };
        let mut agent = agent.clone();
        agent.action = FenceAction::Status;
        let status_step = Step { action: StepAction::FenceAgent(agent.clone()), ..step.clone() };
        let epoch =
            self.node.state.read(|s| s.control.services.get(service).map_or(0, |st| st.epoch));
        let ctx = StepContext {
            service: service.to_string(),
            epoch,
            from_site: site.to_string(),
            to_site: String::new(),
            recovery_point: None,
            test: false,
        };
        info!(service, site, agent = %agent.agent, "fence test: running the agent's status");
        // The actuator bounds the run by the step's timeout; the margin guards against one that
        // does not.
        let limit = step.timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, self.actuator.run(&status_step, &ctx)).await {
            Err(_) => Err(timed_out(step.timeout)),
            Ok(Err(StepError::Timeout { after, .. })) => Err(timed_out(after)),
            Ok(Err(StepError::Failed { reason, .. })) => Err(reason),
            Ok(Err(other)) => Err(other.to_string()),
            Ok(Ok(out)) => fence_status_power(&out.detail).ok_or_else(|| {
                format!("the agent's status said neither on nor off: {}", out.detail)
            }),
        }
    }
}

/// One step's test, as [`FenceTester::test_site`] runs them.
type BoxedTest<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = FenceTestResult> + Send + 'a>>;

/// How asking a peer went.
enum Remote {
    /// It answered (or took too long to): this is the result.
    Answered(Result<&'static str, String>),
    /// It could not be asked: try the next node.
    Unreachable(String),
}

fn timed_out(after: Duration) -> String {
    format!(
        "the agent's status did not finish within {}; check that this node reaches the fence \
         device, or raise the step's timeout",
        humantime::format_duration(after)
    )
}

fn no_executor(run_on: &RunOn) -> String {
    match run_on {
        RunOn::Any => "no controller node to run it".to_string(),
        RunOn::Site(s) => format!("no controller node of site {s} to run it"),
    }
}

/// Refuses a site that is not in `spec` or is the witness.
fn check_site(spec: &ClusterSpec, site: &str) -> Result<(), FenceTestError> {
    match spec.site(site) {
        Some(s) if s.witness => {
            Err(FenceTestError::BadSite(format!("site {site} is the witness; it is never fenced")))
        }
        Some(_) => Ok(()),
        None => Err(FenceTestError::BadSite(format!(
            "no site {site:?} in the cluster spec; its sites are {}",
            spec.active_capable_sites().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The nodes that may run a step with `run_on`, best first (this node, then those heard from
/// recently, then by id), at most [`MAX_EXECUTORS`]: controllers only, of the step's site
/// unless it runs on `any`.
fn executors(
    run_on: &RunOn,
    me: NodeId,
    members: &[(NodeId, Member)],
    recent: impl Fn(NodeId) -> bool,
) -> Vec<(NodeId, Member)> {
    let mut found: Vec<(NodeId, Member)> = members
        .iter()
        .filter(|(_, m)| m.role == Role::Controller)
        .filter(|(_, m)| match run_on {
            RunOn::Any => true,
            RunOn::Site(s) => m.site == *s,
        })
        .cloned()
        .collect();
    found.sort_by_key(|(id, _)| (*id != me, !recent(*id), *id));
    found.truncate(MAX_EXECUTORS);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, site: &str, role: Role) -> Member {
        Member { name: name.into(), site: site.into(), role, address: format!("{name}:7400") }
    }

    fn names(found: &[(NodeId, Member)]) -> Vec<&str> {
        found.iter().map(|(_, m)| m.name.as_str()).collect()
    }

    #[test]
    fn executors_are_controllers_of_the_steps_site_this_node_first() {
        let members = vec![
            (1, member("prod-1", "prod", Role::Controller)),
            (2, member("prod-2", "prod", Role::Controller)),
            (3, member("dr-1", "dr", Role::Controller)),
            (4, member("dr-2", "dr", Role::Controller)),
            (5, member("w", "witness", Role::Witness)),
        ];
        let none = |_| false;
        let dr = RunOn::Site("dr".into());
        assert_eq!(names(&executors(&dr, 1, &members, none)), ["dr-1", "dr-2"]);
        assert_eq!(names(&executors(&dr, 4, &members, none)), ["dr-2", "dr-1"]);
        assert_eq!(names(&executors(&dr, 1, &members, |id| id == 4)), ["dr-2", "dr-1"]);
        // `any`: the receiving node, unless it is the witness.
        assert_eq!(names(&executors(&RunOn::Any, 3, &members, none))[0], "dr-1");
        let from_witness = executors(&RunOn::Any, 5, &members, |id| id == 2);
        assert_eq!(names(&from_witness), ["prod-2", "prod-1", "dr-1"]);
        assert!(executors(&RunOn::Site("qa".into()), 1, &members, none).is_empty());
    }
}
