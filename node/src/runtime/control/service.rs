//! The Control gRPC service members use to work together; each call is handed to the part
//! of the driver that owns it.

use drover_proto::v1 as pb;
use drover_proto::v1::control_server::Control;
use openraft::ServerState;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::executor::run_for_leader;
use super::leader::veto_verdict;
use super::lease::{ask_renewal, confirm_lease, Refusal, Renewal};
use super::{leader_of, ControlCtx, Event};
use crate::actuate::StepContext;
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
        let is_leader = self.ctx.node.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            return Ok(Response::new(pb::ProbeAck { accepted: false }));
        }
        let r = req.into_inner();
        let accepted = self
            .ctx
            .events
            .try_send(Event::Reports {
                observer: r.observer,
                reports: r.reports,
                received: Instant::now(),
            })
            .is_ok();
        Ok(Response::new(pb::ProbeAck { accepted }))
    }

    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseReply>, Status> {
        let r = req.into_inner();
        let leader = leader_of(&self.ctx.node);
        if let Some((id, Some(member))) = leader.filter(|(id, _)| *id != self.ctx.node.id) {
            if r.relayed {
                let reason = "not the leader; a relayed renewal is not passed on again".into();
                return Ok(Response::new(pb::RenewLeaseReply {
                    granted: false,
                    reason,
                    held_elsewhere: false,
                }));
            }
            // The holder could not reach the leader: pass its renewal on, once.
            let relayed = pb::RenewLeaseRequest { relayed: true, ..r };
            let reply = match ask_renewal(&self.ctx, id, &member, relayed).await {
                Renewal::Granted => pb::RenewLeaseReply {
                    granted: true,
                    reason: String::new(),
                    held_elsewhere: false,
                },
                Renewal::Refused(reason) => {
                    pb::RenewLeaseReply { granted: false, reason, held_elsewhere: true }
                }
                Renewal::Unknown => pb::RenewLeaseReply {
                    granted: false,
                    reason: format!(
                        "the leader {} did not answer the relayed renewal",
                        member.name
                    ),
                    held_elsewhere: false,
                },
            };
            return Ok(Response::new(reply));
        }
        let reply = match confirm_lease(&self.ctx, r.node_id, &r.service, &r.site, r.epoch).await {
            Ok(()) => {
                pb::RenewLeaseReply { granted: true, reason: String::new(), held_elsewhere: false }
            }
            Err(Refusal::NotHeld(reason)) => {
                pb::RenewLeaseReply { granted: false, reason, held_elsewhere: true }
            }
            Err(Refusal::NotConfirmed(reason)) => {
                pb::RenewLeaseReply { granted: false, reason, held_elsewhere: false }
            }
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

    async fn run_step(
        &self,
        req: Request<pb::RunStepRequest>,
    ) -> Result<Response<pb::RunStepReply>, Status> {
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never runs workflow steps"));
        }
        Ok(Response::new(run_for_leader(&self.ctx, req.into_inner()).await))
    }
}
