//! The Control gRPC service members use to work together; each call is handed to the part
//! of the driver that owns it.
//!
//! Only members reach it (`api::authz`); here each call is also checked to come from whom it
//! claims: a report from its observer, a renewal from its holder (or marked as relayed), a
//! step only from the leader this node itself knows.

use drover_proto::v1 as pb;
use drover_proto::v1::control_server::Control;
use openraft::ServerState;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::executor::{reconcile_for_leader, run_for_leader};
use super::leader::veto_verdict;
use super::lease::{ask_renewals, confirm_leases, Batch, MAX_RENEWALS_PER_REQUEST};
use super::{leader_of, ControlCtx, Event, EPOCH_CATCH_UP, RPC_TIMEOUT};
use crate::actuate::StepContext;
use crate::api::authz::{caller_of, Caller};
use crate::consensus::types::Role;

/// The internal gRPC service members use to work together.
pub struct ControlService {
    pub(super) ctx: ControlCtx,
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn report_probes(
        &self,
        req: Request<pb::ProbeReports>,
    ) -> Result<Response<pb::ProbeAck>, Status> {
        let caller = caller_of(&req)?;
        let method = "/drover.v1.Control/ReportProbes";
        // A relayed report comes from the member passing it on, for another observer.
        if !req.get_ref().relayed {
            self.ctx.node.authz.same_member(&caller, method, "observer", req.get_ref().observer)?;
        }
        let r = req.into_inner();
        let is_leader = self.ctx.node.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            // An observer that cannot reach the leader asks members to pass its reports on,
            // once.
            let leader = leader_of(&self.ctx.node).filter(|(id, _)| *id != self.ctx.node.id);
            let accepted = match leader {
                Some((id, Some(member))) if !r.relayed => {
                    let Ok(mut client) = self.ctx.peers.control(id, &member) else {
                        return Ok(Response::new(pb::ProbeAck { accepted: false }));
                    };
                    let relayed = pb::ProbeReports { relayed: true, ..r };
                    matches!(
                        tokio::time::timeout(RPC_TIMEOUT, client.report_probes(relayed)).await,
                        Ok(Ok(ack)) if ack.get_ref().accepted
                    )
                }
                _ => false,
            };
            return Ok(Response::new(pb::ProbeAck { accepted }));
        }
        let accepted = self
            .ctx
            .events
            .try_send(Event::Reports {
                observer: r.observer,
                reports: r.reports,
                fenced: r.fenced,
                received: Instant::now(),
                relayed: r.relayed,
            })
            .is_ok();
        Ok(Response::new(pb::ProbeAck { accepted }))
    }

    async fn renew_leases(
        &self,
        req: Request<pb::RenewLeasesRequest>,
    ) -> Result<Response<pb::RenewLeasesReply>, Status> {
        let caller = caller_of(&req)?;
        let r = req.into_inner();
        let method = "/drover.v1.Control/RenewLeases";
        // A holder renews for itself; a relay (any member) passes on another's renewals, marked.
        if !r.relayed {
            self.ctx.node.authz.same_member(&caller, method, "node_id", r.node_id)?;
        }
        if r.leases.len() > MAX_RENEWALS_PER_REQUEST {
            return Err(Status::invalid_argument(format!(
                "{method}: {} leases in one request; at most {MAX_RENEWALS_PER_REQUEST} (one per \
                 service of the largest spec)",
                r.leases.len()
            )));
        }
        let leader = leader_of(&self.ctx.node);
        if let Some((id, Some(member))) = leader.filter(|(id, _)| *id != self.ctx.node.id) {
            if r.relayed {
                return Ok(Response::new(pb::RenewLeasesReply {
                    confirmed: false,
                    reason: "not the leader; relayed renewals are not passed on again".into(),
                    results: Vec::new(),
                }));
            }
            // The holder could not reach the leader: pass its renewals on, once.
            let relayed = pb::RenewLeasesRequest { relayed: true, ..r };
            let answer = ask_renewals(&self.ctx, id, &member, relayed).await;
            let reply = answer.into_reply(|| {
                format!("the leader {} did not answer the relayed renewals", member.name)
            });
            return Ok(Response::new(reply));
        }
        let answer = confirm_leases(&self.ctx, r.node_id, &r.site, &r.leases).await;
        let reply = match answer {
            Ok(results) => Batch::Confirmed(results).into_reply(String::new),
            Err(reason) => Batch::Unknown.into_reply(|| reason),
        };
        Ok(Response::new(reply))
    }

    async fn run_veto(
        &self,
        req: Request<pb::RunVetoRequest>,
    ) -> Result<Response<pb::RunVetoReply>, Status> {
        let r = req.into_inner();
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never runs veto hooks"));
        }
        // The hooks come from this node's own copy of the spec, never from the request.
        let (hooks, epoch) = self.ctx.node.state.read(|s| {
            let hooks = s
                .control
                .spec
                .as_ref()
                .and_then(|v| v.spec.service(&r.service))
                .map(|svc| svc.veto.clone());
            (hooks, s.control.services.get(&r.service).map_or(0, |st| st.epoch))
        });
        let Some(hooks) = hooks else {
            return Err(Status::not_found(format!("no service {} in this node's spec", r.service)));
        };
        let sc = StepContext {
            service: r.service.clone(),
            epoch,
            from_site: r.from_site,
            to_site: r.to_site,
            recovery_point: None,
            test: false,
        };
        let reply = match veto_verdict(self.ctx.actuator.as_ref(), &hooks, &sc).await {
            Ok(()) => pb::RunVetoReply { allowed: true, reason: String::new() },
            Err(reason) => pb::RunVetoReply { allowed: false, reason },
        };
        Ok(Response::new(reply))
    }

    async fn fence_status(
        &self,
        req: Request<pb::FenceStatusRequest>,
    ) -> Result<Response<pb::FenceStatusReply>, Status> {
        let r = req.into_inner();
        let ctx = &self.ctx;
        let tester = crate::runtime::fence_test::FenceTester::new(
            ctx.node.clone(),
            ctx.role,
            ctx.actuator.clone(),
            ctx.peers.clone(),
        );
        // The step comes from this node's own copy of the spec, never from the request.
        let result = tester
            .status_here(r.spec_version, &r.service, &r.site, &r.phase, r.step as usize)
            .await;
        let reply = match result {
            Ok(power) => pb::FenceStatusReply {
                ok: true,
                power: power.to_string(),
                detail: format!("target {power}"),
            },
            Err(detail) => pb::FenceStatusReply { ok: false, power: String::new(), detail },
        };
        Ok(Response::new(reply))
    }

    async fn cluster_presence(
        &self,
        req: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceReply>, Status> {
        let caller = caller_of(&req)?;
        let asker = req.into_inner().node_id;
        let method = "/drover.v1.Control/ClusterPresence";
        self.ctx.node.authz.same_member(&caller, method, "node_id", asker)?;
        let metrics = self.ctx.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let asker_is_voter = membership.voter_ids().any(|id| id == asker);
        let asker_is_learner = membership.learner_ids().any(|id| id == asker);
        let reply = pb::PresenceReply {
            has_state: metrics.last_log_index.is_some() || metrics.vote.leader_id().term > 0,
            formed: metrics.last_applied.is_some_and(|id| id.index >= 1),
            term: metrics.current_term,
            asker_is_voter,
            asker_is_learner,
            name: self.ctx.node.name.clone(),
        };
        Ok(Response::new(reply))
    }

    async fn run_step(
        &self,
        req: Request<pb::RunStepRequest>,
    ) -> Result<Response<pb::RunStepReply>, Status> {
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never runs workflow steps"));
        }
        let caller = caller_of(&req)?;
        known_leader_is(&self.ctx, &caller, "/drover.v1.Control/RunStep").await?;
        Ok(Response::new(run_for_leader(&self.ctx, req.into_inner()).await))
    }

    async fn reconcile_step(
        &self,
        req: Request<pb::ReconcileStepRequest>,
    ) -> Result<Response<pb::ReconcileStepReply>, Status> {
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never reads back or runs steps"));
        }
        let caller = caller_of(&req)?;
        known_leader_is(&self.ctx, &caller, "/drover.v1.Control/ReconcileStep").await?;
        Ok(Response::new(reconcile_for_leader(&self.ctx, req.into_inner()).await))
    }
}

/// Refuses unless `caller` is the leader this node itself knows, waiting up to
/// `EPOCH_CATCH_UP` for a new leader's first heartbeat to get here.
async fn known_leader_is(ctx: &ControlCtx, caller: &Caller, method: &str) -> Result<(), Status> {
    let (id, name) = match caller {
        Caller::Unchecked => return Ok(()),
        Caller::Member { id: Some(id), name } => (*id, name),
        other => {
            return Err(Status::permission_denied(format!(
                "{method} only from the leader; the caller is {other:?}"
            )))
        }
    };
    let deadline = Instant::now() + EPOCH_CATCH_UP;
    loop {
        let leader = leader_of(&ctx.node).map(|(l, _)| l);
        if leader == Some(id) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let known = leader.map_or("no leader".to_string(), |l| format!("node {l}"));
            let status = Status::permission_denied(format!(
                "{method}: {name} (node {id}) is not the leader this node knows ({known}); steps run only at the leader's request"
            ));
            let who = format!("node certificate of {name}");
            return Err(ctx.node.authz.refused(&who, method, "", &status));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
