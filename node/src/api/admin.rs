//! The admin API served to droverctl: status, membership changes, notes and history, spec
//! changes, operator decisions, and `fence test`.
//!
//! Who may call what is decided before a handler runs ([`super::authz`]); the history author
//! of every action is the caller's certificate user, never what the request says.
//!
//! Calls that change the cluster must run on the leader. A follower answers them with
//! `FAILED_PRECONDITION` plus the leader's id and address in the metadata keys
//! [`LEADER_ID_KEY`] and [`LEADER_ADDR_KEY`]; droverctl follows that hint by itself.

use std::collections::BTreeSet;

use drover_proto::v1 as pb;
use drover_proto::v1::admin_server::{Admin, AdminServer};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};
use tracing::info;

use super::authz::{author, caller_of};
use super::NodeHandle;
use crate::consensus::state::control::ControlRequest;
use crate::consensus::types::{Member, NodeId, Role};
use crate::pb::{fence_test_to_pb, history_to_pb, view_to_pb};
use crate::runtime::fence_test::{FenceTestError, FenceTester};

/// Metadata key carrying the leader's id on a not-leader refusal.
pub const LEADER_ID_KEY: &str = "drover-leader-id";
/// Metadata key carrying the leader's gRPC address on a not-leader refusal.
pub const LEADER_ADDR_KEY: &str = "drover-leader-addr";
/// Metadata key set (to "1") on a refusal given before anything was proposed: the client may
/// send the same request again (an election in progress), nothing can be applied twice.
pub const NOTHING_WRITTEN_KEY: &str = "drover-nothing-written";
/// Most history records returned by one call.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// Longest an admin write waits for its entry to commit.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest cluster spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Largest admin request decoded, in bytes: a spec at its limit plus room for the rest.
pub const MAX_ADMIN_REQUEST_BYTES: usize = MAX_SPEC_BYTES + 64 * 1024;
/// Longest name or site accepted.
const MAX_NAME_LEN: usize = 63;

/// gRPC admin service.
pub struct AdminService {
    node: NodeHandle,
    fence: FenceTester,
}

impl AdminService {
    /// Wraps the node in a tonic server that decodes requests up to
    /// [`MAX_ADMIN_REQUEST_BYTES`]; `fence` runs `droverctl fence test`.
    pub fn server(node: NodeHandle, fence: FenceTester) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { node, fence })
            .max_decoding_message_size(MAX_ADMIN_REQUEST_BYTES)
    }

    /// A refusal pointing at the leader (or saying none is known).
    fn not_leader(&self, leader: Option<(NodeId, Option<Member>)>) -> Status {
        match leader {
            Some((id, member)) => {
                let addr = member.as_ref().map(|m| m.address.clone()).unwrap_or_default();
                let mut status = Status::failed_precondition(format!(
                    "node {} is not the leader; the leader is node {id} at {addr}",
                    self.node.name
                ));
                let md = status.metadata_mut();
                if let Ok(v) = id.to_string().parse() {
                    md.insert(LEADER_ID_KEY, v);
                }
                if let Ok(v) = addr.parse() {
                    md.insert(LEADER_ADDR_KEY, v);
                }
                status
            }
            None => Status::unavailable(format!(
                "node {} knows no leader right now (election in progress or no quorum); retry in a few seconds",
                self.node.name
            )),
        }
    }

    fn write_error(&self, err: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Status {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.not_leader(f.leader_id.map(|id| (id, f.leader_node)))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Status::failed_precondition(membership_error_text(&e))
            }
            RaftError::Fatal(e) => Status::internal(format!(
                "node {} has stopped its Raft instance: {e}; check its log and restart it",
                self.node.name
            )),
        }
    }

    /// Whether this node, in `state` with `leader` known, follows a leader it has heard from
    /// within an election's silence (election_timeout_max + heartbeat): then reads that must
    /// show the leader's state go there; otherwise this node answers from its own.
    fn follows_a_leader(&self, state: ServerState, leader: Option<NodeId>) -> bool {
        let silence = self.node.election.election_max + self.node.election.heartbeat;
        state != ServerState::Leader
            && leader.is_some()
            && self.node.leader_contact.since().is_some_and(|d| d < silence)
    }

    /// Refuses unless this node leads; used by calls that read the leader's view.
    async fn require_leader(&self) -> Result<(), Status> {
        let m = self.node.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        let leader = m.current_leader.map(|id| {
            let member = m.membership_config.membership().get_node(&id).cloned();
            (id, member)
        });
        let mut refusal = self.not_leader(leader);
        if let Ok(v) = "1".parse() {
            refusal.metadata_mut().insert(NOTHING_WRITTEN_KEY, v);
        }
        Err(refusal)
    }
}

/// How recently a member must have answered to count as reachable in `status`.
const REACHED_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// For a node that answers `status` alone: the members it reached lately (itself included:
/// presence checks, Raft answers, the leader's AppendEntries) and the line that says why it
/// answers alone.
fn alone(
    node: &NodeHandle,
    view: &super::view::ClusterView,
    standing_back: bool,
) -> (Vec<NodeId>, String) {
    let presence = node.presence.lock().map(|p| p.clone()).unwrap_or_default();
    let leader_heard = node.leader_contact.since().is_some_and(|d| d < REACHED_WITHIN);
    let reached = |id: NodeId| {
        id == node.id
            || presence.get(&id).is_some_and(|t| t.elapsed() < REACHED_WITHIN)
            || node.contacts.since(id).is_some_and(|d| d < REACHED_WITHIN)
            || (leader_heard && view.leader_id == Some(id))
    };
    let reachable: Vec<NodeId> =
        view.members.iter().map(|m| m.id).filter(|&id| reached(id)).collect();
    let voters: Vec<NodeId> = view.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let up = voters.iter().filter(|id| reachable.contains(id)).count();
    let total = voters.len();
    let mut line = if up > total / 2 {
        format!(
            "no leader: {up} of {total} members reachable, a majority: an election should end \
             within seconds"
        )
    } else {
        format!("no quorum: {up} of {total} members reachable")
    };
    if standing_back {
        line += &format!(
            "; this node led term {} but has no quorum and stands back: its state may be stale",
            view.term
        );
    } else {
        line += "; this is this node's own view, possibly stale";
    }
    (reachable, line)
}

fn membership_error_text(e: &ChangeMembershipError<NodeId>) -> String {
    match e {
        ChangeMembershipError::InProgress(_) => {
            "another membership change is still in progress; retry when it has committed".into()
        }
        ChangeMembershipError::EmptyMembership(_) => {
            "the change would leave the cluster without voters; refused".into()
        }
        ChangeMembershipError::LearnerNotFound(l) => format!(
            "node {} is not a learner of this cluster; add it first with 'droverctl member add'",
            l.node_id
        ),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks an add-member request against the current membership; lists every problem.
fn validate_new_member(
    req: &pb::AddMemberRequest,
    existing: &[(NodeId, Member)],
) -> Result<(NodeId, Member), Status> {
    let mut problems = Vec::new();
    if req.id == 0 {
        problems.push("id: must be greater than 0".to_string());
    }
    if let Some((_, m)) = existing.iter().find(|(id, _)| *id == req.id) {
        problems.push(format!("id: {} is already used by member {}", req.id, m.name));
    }
    if !valid_name(&req.name) {
        problems.push(format!(
            "name: {:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9 and '-'",
            req.name
        ));
    } else if existing.iter().any(|(_, m)| m.name == req.name) {
        problems.push(format!("name: {:?} is already a member", req.name));
    }
    if !valid_name(&req.site) {
        problems.push(format!(
            "site: {:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9 and '-'",
            req.site
        ));
    }
    let role = Role::parse(&req.role);
    if role.is_none() {
        problems.push(format!("role: {:?} must be \"controller\" or \"witness\"", req.role));
    }
    if !valid_address(&req.address) {
        problems.push(format!("address: {:?} must be host:port", req.address));
    }
    if !problems.is_empty() {
        return Err(Status::invalid_argument(format!(
            "member add refused: {}",
            problems.join("; ")
        )));
    }
    let member = Member {
        name: req.name.clone(),
        site: req.site.clone(),
        role: role.unwrap_or_default(),
        address: req.address.clone(),
    };
    Ok((req.id, member))
}

/// `host:port` with a non-empty host and a valid non-zero port.
pub fn valid_address(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn membership_reply(
    resp: &openraft::raft::ClientWriteResponse<crate::consensus::types::TypeConfig>,
) -> pb::MembershipReply {
    let (voters, learners) = match &resp.membership {
        Some(m) => {
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            let learners = m.learner_ids().collect();
            (voters.into_iter().collect(), learners)
        }
        None => (Vec::new(), Vec::new()),
    };
    pb::MembershipReply { log_index: resp.log_id.index, voters, learners }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let view = self.node.view().await;
        let standing_back = self.node.standing_back.load(std::sync::atomic::Ordering::Relaxed);
        let leads = view.state == ServerState::Leader && !standing_back;
        let follows = self.follows_a_leader(view.state, view.leader_id);
        // Only the leader knows replication progress; send the caller there unless it asked
        // for this node's own view. A node that neither leads with a quorum nor follows a
        // leader it hears answers alone, and says so.
        if !req.get_ref().local && follows {
            self.require_leader().await?;
        }
        let mut reply = view_to_pb(&view);
        let own = self.node.own_health.read().map(|h| h.clone()).unwrap_or_default();
        for svc in &mut reply.services {
            if let Some(sites) = own.get(&svc.name) {
                svc.own_sites = sites
                    .iter()
                    .map(|(site, health)| pb::SiteHealth {
                        site: site.clone(),
                        health: health.clone(),
                    })
                    .collect();
            }
        }
        if !leads && !follows {
            let (reachable, quorum) = alone(&self.node, &view, standing_back);
            reply.reachable = reachable;
            reply.quorum = quorum;
            // Neither a leader it reaches nor its own stale leadership is presented as one.
            reply.leader_id = None;
            for svc in &mut reply.services {
                svc.sites.clear();
            }
        }
        Ok(Response::new(reply))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.require_leader().await?;
        let existing: Vec<(NodeId, Member)> = {
            let m = self.node.raft.metrics().borrow().clone();
            m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
        };
        let (id, member) = validate_new_member(req.get_ref(), &existing)?;
        info!(member_id = id, member = %member, "adding learner");
        let write = self.node.raft.add_learner(id, member, false);
        let resp = tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| not_committed_in_time())?
            .map_err(|e| self.write_error(e))?;
        Ok(Response::new(membership_reply(&resp)))
    }

    async fn promote_member(
        &self,
        req: Request<pb::MemberRef>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.require_leader().await?;
        let id = req.get_ref().id;
        info!(member_id = id, "promoting learner to voter");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    async fn remove_member(
        &self,
        req: Request<pb::MemberRef>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.require_leader().await?;
        let id = req.get_ref().id;
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() <= 1 {
                return Err(Status::failed_precondition(format!(
                    "node {id} is the last voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.learner_ids().any(|l| l == id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(Status::not_found(format!(
                "node {id} is not a member; 'droverctl status' lists the members"
            )));
        };
        info!(member_id = id, "removing member");
        self.change_membership(change).await
    }

    async fn add_note(
        &self,
        req: Request<pb::AddNoteRequest>,
    ) -> Result<Response<pb::AddNoteReply>, Status> {
        let caller = caller_of(&req)?;
        let req = req.into_inner();
        let author = author(&caller, &req.author)?;
        if req.text.trim().is_empty() {
            return Err(Status::invalid_argument("note text is empty; write what happened"));
        }
        if req.text.len() > crate::consensus::state::MAX_NOTE_BYTES {
            return Err(Status::invalid_argument(format!(
                "note text is {} bytes; the limit is {}",
                req.text.len(),
                crate::consensus::state::MAX_NOTE_BYTES
            )));
        }
        let request = crate::consensus::types::Request::Note {
            author,
            text: req.text,
            at_unix_ms: crate::pb::unix_now_ms(),
        };
        let resp = self.write(request).await?;
        Ok(Response::new(pb::AddNoteReply {
            seq: resp.data.history_seq.unwrap_or(0),
            log_index: resp.log_id.index,
        }))
    }

    async fn config_apply(
        &self,
        req: Request<pb::ConfigApplyRequest>,
    ) -> Result<Response<pb::ConfigApplyReply>, Status> {
        self.require_leader().await?;
        let caller = caller_of(&req)?;
        let req = req.into_inner();
        let author = author(&caller, &req.author)?;
        let spec = parse_spec(&req.text)?;
        let timing_errors = crate::spec::check_against_raft_timings(&spec, &self.node.election);
        if !timing_errors.is_empty() {
            let errors =
                crate::spec::SpecErrors { source: "cluster.toml".into(), errors: timing_errors };
            return Err(Status::invalid_argument(errors.to_string()));
        }
        let old = self.node.state.read(|s| s.control.spec.as_ref().map(|v| v.spec.clone()));
        let changes = crate::spec::diff(old.as_ref(), &spec);
        let (_, applied) = self
            .propose_control(ControlRequest::ApplySpec {
                expected_version: req.expected_version,
                spec: Box::new(spec),
                text: req.text,
                author,
                at_unix_ms: crate::pb::unix_now_ms(),
            })
            .await?;
        let version = applied.spec_version;
        info!(version = ?version, changes = changes.len(), "cluster spec applied");
        Ok(Response::new(pb::ConfigApplyReply { version: version.unwrap_or(0), changes }))
    }

    async fn config_show(
        &self,
        _req: Request<pb::ConfigShowRequest>,
    ) -> Result<Response<pb::ConfigShowReply>, Status> {
        let shown = self.node.state.read(|s| {
            s.control.spec.as_ref().map(|v| pb::ConfigShowReply {
                version: v.version,
                text: v.text.clone(),
                applied_by: v.applied_by.clone(),
                applied_at_unix_ms: v.applied_at_unix_ms,
            })
        });
        shown.map(Response::new).ok_or_else(|| {
            Status::not_found(
                "no cluster spec applied yet; run 'droverctl config apply -f cluster.toml'",
            )
        })
    }

    async fn config_diff(
        &self,
        req: Request<pb::ConfigDiffRequest>,
    ) -> Result<Response<pb::ConfigDiffReply>, Status> {
        let spec = parse_spec(&req.get_ref().text)?;
        let (version, old) = self.node.state.read(|s| {
            (
                s.control.spec.as_ref().map_or(0, |v| v.version),
                s.control.spec.as_ref().map(|v| v.spec.clone()),
            )
        });
        let changes = crate::spec::diff(old.as_ref(), &spec);
        Ok(Response::new(pb::ConfigDiffReply { current_version: version, changes }))
    }

    async fn service_action(
        &self,
        req: Request<pb::ServiceActionRequest>,
    ) -> Result<Response<pb::ServiceActionReply>, Status> {
        self.require_leader().await?;
        let caller = caller_of(&req)?;
        let req = req.into_inner();
        let author = author(&caller, &req.author)?;
        let at_unix_ms = crate::pb::unix_now_ms();
        let services: Vec<String> = if req.all {
            if !matches!(req.action.as_str(), "pause" | "resume") {
                return Err(Status::invalid_argument(format!(
                    "--all applies to pause and resume only, not {}",
                    req.action
                )));
            }
            self.node.state.read(|s| s.control.services.keys().cloned().collect())
        } else if req.service.is_empty() {
            return Err(Status::invalid_argument("name a service (or --all for pause/resume)"));
        } else {
            vec![req.service.clone()]
        };
        let mut reply = pb::ServiceActionReply::default();
        for service in services {
            let control =
                self.service_request(&req, service.clone(), author.clone(), at_unix_ms)?;
            let starts = matches!(req.action.as_str(), "failover" | "switchover" | "reprotect");
            let (log_index, applied) = match self.propose_control(control).await {
                Ok(done) => done,
                // With --all, a service with nothing to resume is not an error.
                Err(e) if req.all && e.message().starts_with("nothing to resume") => continue,
                Err(e) => return Err(e),
            };
            reply.log_index = log_index;
            if starts {
                reply.workflow_id = log_index;
            }
            if let Some(seq) = applied.history_seq {
                let text = self
                    .node
                    .state
                    .read(|s| s.history_after(seq - 1, 1).into_iter().next().map(|r| r.text));
                reply.done.extend(text);
            }
        }
        Ok(Response::new(reply))
    }

    async fn plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::PlanReply>, Status> {
        // The gates are the leader's (its detector and readiness reports).
        self.require_leader().await?;
        let req = req.into_inner();
        let members: std::collections::BTreeMap<NodeId, Member> = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
        };
        let gates = self
            .node
            .gates
            .read()
            .ok()
            .and_then(|g| g.get(&req.service).and_then(|by| by.get(&req.to)).cloned());
        let split_brain = self.split_brain_block(&req.service, &req.to);
        let run = self.node.state.read(|s| {
            let spec = &s.control.spec.as_ref()?.spec;
            let state = s.control.services.get(&req.service)?;
            Some(crate::decide::dry_run::dry_run(
                spec,
                state,
                &req.service,
                &req.to,
                req.switchover,
                crate::decide::dry_run::LeaderVerdict { gates, split_brain },
                &members,
            ))
        });
        let d = match run {
            None => {
                return Err(Status::not_found(format!(
                    "no service named {:?}; see 'droverctl status'",
                    req.service
                )))
            }
            Some(Err(e)) => return Err(Status::invalid_argument(e)),
            Some(Ok(d)) => d,
        };
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Ok(Response::new(pb::PlanReply {
            kind: d.kind.to_string(),
            from_site: d.from.clone(),
            to_site: d.to.clone(),
            epoch: d.epoch,
            would_start: d.would_start(),
            gates: d
                .gates
                .iter()
                .map(|g| pb::PlanGate {
                    name: g.name.clone(),
                    passed: g.passed,
                    detail: g.detail.clone(),
                })
                .collect(),
            steps: d
                .steps
                .iter()
                .map(|s| pb::PlanStep {
                    stage: s.stage.clone(),
                    site: s.site.clone(),
                    kind: s.kind.clone(),
                    runs_on: s.runs_on.clone(),
                    timeout_ms: ms(s.timeout),
                    retries: s.retries,
                    on_failure: s.on_failure.clone(),
                    worst_case_ms: ms(s.worst_case),
                })
                .collect(),
            safe_wait_ms: ms(d.safe_wait),
            worst_case_ms: ms(d.worst_case),
            best_case_ms: ms(d.best_case),
            detection_ms: ms(d.detection),
        }))
    }

    async fn fence_test(
        &self,
        req: Request<pb::FenceTestRequest>,
    ) -> Result<Response<pb::FenceTestReply>, Status> {
        let site = req.into_inner().site;
        if !valid_name(&site) {
            return Err(Status::invalid_argument(format!(
                "site {site:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9 and '-'"
            )));
        }
        info!(site = %site, "fence test");
        match self.fence.test_site(&site).await {
            Ok((version, results)) => Ok(Response::new(fence_test_to_pb(version, &results))),
            Err(e @ FenceTestError::NoSpec) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ FenceTestError::BadSite(_)) => Err(Status::invalid_argument(e.to_string())),
        }
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        // Served by the leader, whose state holds every write acknowledged to a client (a
        // follower may not have applied the note just added); a node that hears no leader
        // answers from its own state, the best there is.
        let (state, leader) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader)
        };
        if self.follows_a_leader(state, leader) {
            self.require_leader().await?;
        }
        let req = req.into_inner();
        let limit = match req.limit {
            0 => MAX_HISTORY_PAGE,
            n => (n as usize).min(MAX_HISTORY_PAGE),
        };
        let keep = |r: &crate::consensus::state::HistoryRecord| {
            (req.service.is_empty() || r.service == req.service)
                && r.at_unix_ms >= req.since_unix_ms
                && (req.kinds.is_empty() || req.kinds.contains(&r.kind))
        };
        let (first_seq, records) = self
            .node
            .state
            .read(|s| (s.first_seq(), s.history_matching(req.after_seq, limit, keep)));
        Ok(Response::new(pb::HistoryReply {
            records: records.iter().map(history_to_pb).collect(),
            first_seq,
        }))
    }
}

impl AdminService {
    /// Commits `req` through Raft, waiting at most [`WRITE_TIMEOUT`].
    async fn write(
        &self,
        req: crate::consensus::types::Request,
    ) -> Result<openraft::raft::ClientWriteResponse<crate::consensus::types::TypeConfig>, Status>
    {
        let write = self.node.raft.client_write(req);
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| not_committed_in_time())?
            .map_err(|e| self.write_error(e))
    }

    /// Commits a membership change, waiting at most [`WRITE_TIMEOUT`].
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let write = self.node.raft.change_membership(change, false);
        let resp = tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| not_committed_in_time())?
            .map_err(|e| self.write_error(e))?;
        Ok(Response::new(membership_reply(&resp)))
    }

    /// Commits a control request; a rejection is FAILED_PRECONDITION with its reason.
    async fn propose_control(
        &self,
        req: ControlRequest,
    ) -> Result<(u64, crate::consensus::types::Response), Status> {
        let resp = self.write(crate::consensus::types::Request::Control(req)).await?;
        if let Some(why) = resp.data.rejected {
            return Err(Status::failed_precondition(why));
        }
        Ok((resp.log_id.index, resp.data))
    }

    /// The leader's readiness verdict of standby `site` of `service` (None on a follower,
    /// before the leader evaluated it, or when `site` is not a standby).
    fn standby(&self, service: &str, site: &str) -> Option<crate::decide::StandbyReadiness> {
        let view = self.node.readiness.read().ok()?;
        view.get(service)?.iter().find(|v| v.site == site).cloned()
    }

    /// Why a switchover of `service` to `site` is blocked: a gating passive check of the site
    /// passes and no operator acknowledged it.
    fn split_brain_block(&self, service: &str, site: &str) -> Option<String> {
        self.standby(service, site)?.split_brain_block().map(|r| r.text.clone())
    }

    /// The control request for one service of an operator's `ServiceAction`: for an
    /// unforced failover, the leader's readiness and lag gates first.
    fn service_request(
        &self,
        req: &pb::ServiceActionRequest,
        service: String,
        author: String,
        at_unix_ms: i64,
    ) -> Result<ControlRequest, Status> {
        let (epoch, active) = self
            .node
            .state
            .read(|s| s.control.services.get(&service).map(|st| (st.epoch, st.active_site.clone())))
            .ok_or_else(|| {
                Status::not_found(format!("no service named {service:?}; see 'droverctl status'"))
            })?;
        let reason = req.reason.trim().to_string();
        let to = req.to.clone();
        let need_to = || {
            if to.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "{} needs the site to activate: --to SITE",
                    req.action
                )));
            }
            Ok(())
        };
        Ok(match req.action.as_str() {
            "ack" if !to.is_empty() => {
                // The leader's view: there must be a split brain to acknowledge.
                let serving = self
                    .standby(&service, &to)
                    .and_then(|v| v.split_brain_alert().map(str::to_string));
                if serving.is_none() {
                    return Err(Status::failed_precondition(format!(
                        "no split-brain alert for {service} on {to}: the leader sees none of its \
                         passive checks pass (is {to} a standby of {service} with passive \
                         checks? see 'droverctl status'); nothing to acknowledge"
                    )));
                }
                ControlRequest::AckSplitBrain { service, site: to, author, at_unix_ms }
            }
            "ack" => ControlRequest::Ack { service, author, at_unix_ms },
            "commit" => ControlRequest::Commit { service, author, at_unix_ms },
            "resume" => ControlRequest::Resume { service, author, at_unix_ms },
            "failover" => {
                need_to()?;
                if to == active {
                    return Err(Status::failed_precondition(format!(
                        "{to} is already the active site of {service}"
                    )));
                }
                if reason.is_empty() {
                    return Err(Status::invalid_argument(
                        "an operator's failover needs a reason: --reason TEXT (it goes in the history)",
                    ));
                }
                if !req.force {
                    let verdict = self
                        .node
                        .gates
                        .read()
                        .ok()
                        .and_then(|g| g.get(&service).and_then(|by| by.get(&to)).cloned());
                    match verdict {
                        Some(Ok(())) => {}
                        Some(Err(why)) => {
                            return Err(Status::failed_precondition(format!(
                                "failover of {service} to {to} blocked: {why}; fix it, or add \
                                 --force to fail over anyway (fencing and the lease wait still run)"
                            )))
                        }
                        None => {
                            return Err(Status::failed_precondition(format!(
                                "the leader has not evaluated the gates of a failover of {service} \
                                 to {to} yet (is {to} another active-capable site? the leader may \
                                 have just started); try again in a second, or add --force"
                            )))
                        }
                    }
                }
                ControlRequest::StartFailover {
                    service,
                    from: active,
                    to,
                    expected_epoch: epoch,
                    automatic: false,
                    reason,
                    author,
                    at_unix_ms,
                    force: req.force,
                }
            }
            "switchover" => {
                need_to()?;
                let blocked = self.split_brain_block(&service, &to);
                if let (Some(why), false) = (&blocked, req.force) {
                    return Err(Status::failed_precondition(format!(
                        "switchover of {service} to {to} blocked: {why}; or add --force to \
                         switch over anyway"
                    )));
                }
                let reason =
                    if reason.is_empty() { "planned switchover".to_string() } else { reason };
                // Recorded: the history says the operator went past the alert.
                let reason = if blocked.is_some() {
                    format!("{reason} (forced while {to} serves: possible split brain)")
                } else {
                    reason
                };
                ControlRequest::StartSwitchover {
                    service,
                    from: active,
                    to,
                    expected_epoch: epoch,
                    reason,
                    author,
                    at_unix_ms,
                }
            }
            "reprotect" => {
                let reason = if reason.is_empty() { "reprotect".to_string() } else { reason };
                ControlRequest::StartReprotect {
                    service,
                    expected_epoch: epoch,
                    reason,
                    author,
                    at_unix_ms,
                }
            }
            "pause" => {
                if reason.is_empty() {
                    return Err(Status::invalid_argument("a pause needs a reason: --reason TEXT"));
                }
                let until_unix_ms = (req.for_ms > 0)
                    .then(|| at_unix_ms.saturating_add(req.for_ms.min(i64::MAX as u64) as i64));
                ControlRequest::Pause { service, reason, until_unix_ms, author, at_unix_ms }
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}; use ack, commit, resume, failover, switchover, \
                     reprotect or pause"
                )))
            }
        })
    }
}

fn not_committed_in_time() -> Status {
    Status::deadline_exceeded(format!(
        "not committed within {}s (no quorum?); it may still commit: check with 'droverctl status' or 'droverctl config show' before retrying",
        WRITE_TIMEOUT.as_secs()
    ))
}

fn parse_spec(text: &str) -> Result<crate::spec::ClusterSpec, Status> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(Status::invalid_argument(format!(
            "the spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
            text.len()
        )));
    }
    crate::spec::parse(text, "cluster.toml")
        .map_err(|e| Status::invalid_argument(first_lines(&e.to_string(), MAX_ERROR_LINES)))
}

/// Lines of a refusal sent back at most: a gRPC status travels in an HTTP/2 header, and a
/// spec with hundreds of errors would exceed the client's header size limit (an opaque
/// "h2 protocol error" instead of the errors).
const MAX_ERROR_LINES: usize = 40;

/// The first `max` lines of `text`, then how many were left out.
fn first_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max {
        return text.to_string();
    }
    let mut out = lines[..max].join("\n");
    out.push_str(&format!(
        "\n  ... and {} more lines; fix these and apply again to see the rest",
        lines.len() - max
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_refusal_is_cut_to_fit_in_a_header() {
        let text: String = (0..500).map(|i| format!("error {i}\n")).collect();
        let cut = first_lines(&text, MAX_ERROR_LINES);
        assert_eq!(cut.lines().count(), MAX_ERROR_LINES + 1);
        assert!(cut.ends_with("... and 460 more lines; fix these and apply again to see the rest"));
        assert_eq!(first_lines("a\nb", MAX_ERROR_LINES), "a\nb");
    }

    fn req(id: u64, name: &str, site: &str, role: &str, address: &str) -> pb::AddMemberRequest {
        pb::AddMemberRequest {
            id,
            name: name.into(),
            site: site.into(),
            role: role.into(),
            address: address.into(),
        }
    }

    #[test]
    fn add_member_lists_every_problem() {
        let existing = vec![(
            1,
            Member {
                name: "prod-1".into(),
                site: "prod".into(),
                role: Role::Controller,
                address: "a:1".into(),
            },
        )];
        let err = validate_new_member(&req(1, "prod-1", "Prod", "boss", "nohost"), &existing)
            .unwrap_err();
        let msg = err.message();
        for key in ["id: 1 is already used", "name:", "site:", "role:", "address:"] {
            assert!(msg.contains(key), "{key} missing from {msg}");
        }
        assert!(
            validate_new_member(&req(2, "dr-1", "dr", "controller", "h:7400"), &existing).is_ok()
        );
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert!(valid_address("127.0.0.1:7400"));
        assert!(valid_address("st.example:7400"));
        assert!(!valid_address("127.0.0.1"));
        assert!(!valid_address(":7400"));
        assert!(!valid_address("h:0"));
        assert!(!valid_address("h:99999"));
    }
}
