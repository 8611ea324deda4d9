//! Plain HTTP on each node: `/healthz` (the process runs), `/readyz` (member of a cluster with
//! a known leader), `/metrics` (Prometheus text format).
//!
//! Plain HTTP on purpose: load balancers and Prometheus scrape it; it exposes no control.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::view::ClusterView;
use super::NodeHandle;

/// The HTTP routes, ready for `axum::serve`.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn readyz(State(node): State<NodeHandle>) -> impl IntoResponse {
    let view = node.view().await;
    if view.ready() {
        (StatusCode::OK, format!("ready: leader is node {}\n", view.leader_id.unwrap_or(0)))
    } else if view.leader_id.is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no known leader\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not a member of the cluster\n".to_string())
    }
}

async fn metrics(State(node): State<NodeHandle>) -> impl IntoResponse {
    let view = node.view().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render_metrics(&view))
}

/// Renders the view in the Prometheus text exposition format.
pub fn render_metrics(view: &ClusterView) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("drover_raft_term", "Current Raft term.", view.term);
    gauge(
        "drover_raft_leader_id",
        "Id of the known leader (0 = none).",
        view.leader_id.unwrap_or(0),
    );
    gauge(
        "drover_raft_is_leader",
        "1 if this node leads.",
        u64::from(view.state_name() == "leader"),
    );
    gauge(
        "drover_raft_last_log_index",
        "Index of the last entry in the local log.",
        view.last_log_index.unwrap_or(0),
    );
    gauge(
        "drover_raft_commit_index",
        "Highest index known committed.",
        view.commit_index.unwrap_or(0),
    );
    gauge(
        "drover_raft_applied_index",
        "Highest index applied to the state machine.",
        view.applied_index.unwrap_or(0),
    );
    gauge(
        "drover_raft_members",
        "Members in the current membership config.",
        view.members.len() as u64,
    );
    gauge("drover_history_seq", "Seq of the newest history record.", view.history_seq);
    let lagging: Vec<_> = view.members.iter().filter(|m| m.id != view.node_id).collect();
    if lagging.iter().any(|m| m.lag.is_some()) {
        let _ = writeln!(out, "# HELP drover_raft_replication_lag Entries a follower is behind the leader's log (leader only).\n# TYPE drover_raft_replication_lag gauge");
        for m in lagging.iter().filter(|m| m.lag.is_some()) {
            let _ = writeln!(
                out,
                "drover_raft_replication_lag{{follower=\"{}\",name=\"{}\",site=\"{}\"}} {}",
                m.id,
                m.member.name,
                m.member.site,
                m.lag.unwrap_or(0)
            );
        }
        let _ = writeln!(out, "# HELP drover_raft_last_contact_seconds Time since a follower last answered (leader only).\n# TYPE drover_raft_last_contact_seconds gauge");
        for m in lagging.iter() {
            if let Some(d) = m.last_contact {
                let _ = writeln!(
                    out,
                    "drover_raft_last_contact_seconds{{follower=\"{}\",name=\"{}\"}} {:.3}",
                    m.id,
                    m.member.name,
                    d.as_secs_f64()
                );
            }
        }
    }
    out
}
