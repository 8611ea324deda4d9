//! Conversions between protobuf messages and domain types, in one place (STYLE.md 10).
//! Domain code never passes generated structs around.

use std::time::{SystemTime, UNIX_EPOCH};

use drover_proto::v1 as pb;

use crate::api::view::{ClusterView, MemberView};
use crate::consensus::state::control::{
    Automation, ServiceState, StepStatus, Workflow, WorkflowState,
};
use crate::consensus::state::HistoryRecord;
use crate::runtime::fence_test::FenceTestResult;

/// The `fence test` reply: spec version and one result per step.
pub fn fence_test_to_pb(spec_version: u64, results: &[FenceTestResult]) -> pb::FenceTestReply {
    let results = results
        .iter()
        .map(|r| pb::FenceTestResult {
            service: r.service.clone(),
            phase: r.phase.as_str().to_string(),
            step: u32::try_from(r.step).unwrap_or(u32::MAX),
            agent: r.agent.clone(),
            target: r.target.clone(),
            node: r.node.clone(),
            ok: r.outcome.is_ok(),
            power: r.outcome.as_ref().map_or("", |p| p).to_string(),
            detail: match &r.outcome {
                Ok(power) => format!("target {power}"),
                Err(why) => why.clone(),
            },
            elapsed_ms: u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    pb::FenceTestReply { spec_version, results }
}

/// The status reply for a cluster view.
pub fn view_to_pb(view: &ClusterView) -> pb::StatusReply {
    pb::StatusReply {
        node_id: view.node_id,
        node_name: view.node_name.clone(),
        leader_id: view.leader_id,
        term: view.term,
        state: view.state_name().to_string(),
        last_log_index: view.last_log_index,
        commit_index: view.commit_index,
        applied_index: view.applied_index,
        members: view.members.iter().map(member_to_pb).collect(),
        history_seq: view.history_seq,
        spec_version: view.spec_version,
        services: view.services.iter().map(|(name, s)| service_to_pb(name, s, view)).collect(),
        quorum: String::new(),
        reachable: Vec::new(),
    }
}

fn service_to_pb(name: &str, s: &ServiceState, view: &ClusterView) -> pb::ServiceStatus {
    let at = |ms: i64| {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let mode = match (&s.paused, &s.mode) {
        (Some(p), _) => {
            let until = p.until_unix_ms.map(|u| format!(" until {}", at(u))).unwrap_or_default();
            format!("paused{until} by {}: {}", p.by, p.reason)
        }
        (None, Automation::Auto) => "auto".to_string(),
        (None, Automation::Cooldown { until_unix_ms }) => {
            format!("cooldown until {}", at(*until_unix_ms))
        }
    };
    let sites = view
        .health
        .get(name)
        .map(|m| {
            m.iter()
                .map(|(site, health)| pb::SiteHealth { site: site.clone(), health: health.clone() })
                .collect()
        })
        .unwrap_or_default();
    pb::ServiceStatus {
        name: name.to_string(),
        active_site: s.active_site.clone(),
        epoch: s.epoch,
        phase: s.phase.as_str().to_string(),
        primary: s.primary.clone().unwrap_or_default(),
        mode,
        lease_site: s.lease.as_ref().map(|l| l.site.clone()).unwrap_or_default(),
        sites,
        workflow: s.workflow.as_ref().map(workflow_to_pb),
        alert: s.nobody_serving(name).unwrap_or_default(),
        own_sites: Vec::new(),
        standbys: view.readiness.get(name).into_iter().flatten().map(standby_to_pb).collect(),
        drift: s.drift_alerts(name, view.repair.get(name).copied().unwrap_or(true)),
    }
}

fn standby_to_pb(v: &crate::decide::StandbyReadiness) -> pb::StandbyStatus {
    use crate::decide::Fingerprint;
    let value = |f: &Fingerprint| match f {
        Fingerprint::Known(v) => (v.clone(), String::new()),
        Fingerprint::Unknown(why) => (String::new(), why.clone()),
    };
    pb::StandbyStatus {
        site: v.site.clone(),
        ready: v.ready,
        reasons: v.reasons.iter().map(|r| r.text.clone()).collect(),
        consistency: v
            .consistency
            .iter()
            .map(|c| {
                let (active_value, active_why) = value(&c.active);
                let (standby_value, standby_why) = value(&c.standby);
                let detail = match (active_why.is_empty(), standby_why.is_empty()) {
                    (true, true) => String::new(),
                    (false, true) => format!("{}: {active_why}", c.active_site),
                    (true, false) => format!("{}: {standby_why}", v.site),
                    (false, false) => {
                        format!("{}: {active_why}; {}: {standby_why}", c.active_site, v.site)
                    }
                };
                pb::ConsistencyStatus {
                    check: c.check.clone(),
                    gate: c.gate,
                    state: c.state().to_string(),
                    active_site: c.active_site.clone(),
                    active_value,
                    standby_value,
                    detail,
                }
            })
            .collect(),
        passive: v
            .passive
            .iter()
            .map(|p| pb::PassiveStatus {
                check: p.check.clone(),
                gate: p.gate,
                state: p.state.to_string(),
                acknowledged: p.acknowledged,
                detail: p.detail.clone(),
            })
            .collect(),
        split_brain: v.split_brain_alert().unwrap_or_default().to_string(),
    }
}

fn workflow_to_pb(w: &Workflow) -> pb::WorkflowStatus {
    let state = match &w.state {
        WorkflowState::Running => "running",
        WorkflowState::Paused { .. } => "paused",
        WorkflowState::Failed { .. } => "failed",
        WorkflowState::AwaitingCommit => "awaiting_commit",
        WorkflowState::Committed => "committed",
        WorkflowState::RolledBack { .. } => "rolled_back",
    };
    let steps = w
        .steps
        .iter()
        .map(|st| {
            let (status, attempt, detail) = match &st.status {
                StepStatus::Pending => ("pending", 0, String::new()),
                StepStatus::Running { attempt, .. } => ("running", *attempt, String::new()),
                StepStatus::RetryWait { attempt, error } => ("retry_wait", *attempt, error.clone()),
                StepStatus::Succeeded { attempt, detail, .. } => {
                    ("succeeded", *attempt, detail.clone())
                }
                StepStatus::Failed { attempt, error } => ("failed", *attempt, error.clone()),
                StepStatus::Skipped { reason } => ("skipped", 0, reason.clone()),
            };
            let finished_at_unix_ms = match &st.status {
                StepStatus::Succeeded { finished_at_unix_ms, .. } => *finished_at_unix_ms,
                _ => 0,
            };
            pb::WorkflowStepStatus {
                stage: st.stage.as_str().to_string(),
                site: st.site.clone(),
                kind: st.kind().to_string(),
                status: status.to_string(),
                attempt,
                detail,
                started_at_unix_ms: st.started_at_unix_ms,
                finished_at_unix_ms,
            }
        })
        .collect();
    pb::WorkflowStatus {
        id: w.id,
        from_site: w.from.clone(),
        to_site: w.to.clone(),
        epoch: w.epoch,
        automatic: w.automatic,
        reason: w.reason.clone(),
        state: state.to_string(),
        steps,
        started_at_unix_ms: w.started_at_unix_ms,
        kind: w.kind.as_str().to_string(),
    }
}

fn member_to_pb(m: &MemberView) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.member.name.clone(),
        site: m.member.site.clone(),
        role: m.member.role.as_str().to_string(),
        address: m.member.address.clone(),
        membership: if m.voter { "voter" } else { "learner" }.to_string(),
        matched_index: m.matched_index,
        lag: m.lag,
        last_contact_ms: m.last_contact.map(|d| d.as_millis() as u64),
    }
}

/// A history record on the wire.
pub fn history_to_pb(r: &HistoryRecord) -> pb::HistoryRecord {
    pb::HistoryRecord {
        seq: r.seq,
        log_index: r.log_index,
        at_unix_ms: r.at_unix_ms,
        author: r.author.clone(),
        kind: r.kind.clone(),
        text: r.text.clone(),
        service: r.service.clone(),
    }
}

/// The wall clock in ms since the Unix epoch, for display fields only.
pub fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
