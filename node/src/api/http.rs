//! Plain HTTP on each node: `/healthz` (the process runs), `/readyz` (member of a cluster with
//! a known leader), `/metrics` (Prometheus text format).
//!
//! Plain HTTP on purpose: load balancers and Prometheus scrape it; it exposes no control.

use std::fmt::Write;

use axum::extract::{Path, State};
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
        .route("/v1/services/{name}/active", get(service_active))
        .with_state(node)
}

async fn readyz(State(node): State<NodeHandle>) -> impl IntoResponse {
    if let Err(fatal) = &node.raft.metrics().borrow().running_state {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: Raft stopped on this node ({fatal}); the node exits to be restarted\n"
            ),
        );
    }
    let view = node.view().await;
    if view.ready() {
        (StatusCode::OK, format!("ready: leader is node {}\n", view.leader_id.unwrap_or(0)))
    } else if view.leader_id.is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no known leader\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not a member of the cluster\n".to_string())
    }
}

/// 200 only on a node of the site that holds the service's lease, that has confirmed that
/// lease with the cluster within its lease time and has not self-fenced; 503 elsewhere. A load
/// balancer's health check (HAProxy `option httpchk`) can so follow the active site without any
/// push from drover, and a node restarted on an old copy of the state, or cut off from the
/// cluster, does not send traffic to its site on the strength of what it last knew.
async fn service_active(
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> impl IntoResponse {
    let fenced = node.fenced.lock().map(|f| f.get(&name).copied()).unwrap_or(None);
    let state = node.state.read(|s| s.control.services.get(&name).cloned());
    let Some(state) = state else {
        return (StatusCode::NOT_FOUND, format!("no service named {name:?}\n"));
    };
    let holder = state.lease.as_ref().map(|l| (l.site.clone(), l.epoch));
    let believed = node.leases.lock().map(|l| l.get(&name).copied()).unwrap_or(None);
    match holder {
        Some((site, epoch)) if site == node.site && fenced == Some(epoch) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("fenced: this node self-fenced {name} at epoch {epoch}\n"),
        ),
        Some((site, epoch)) if site == node.site && believed == Some(epoch) => {
            (StatusCode::OK, format!("active: {name} is served by site {site} (epoch {epoch})\n"))
        }
        Some((site, epoch)) if site == node.site => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unconfirmed: site {site} holds {name}'s lease (epoch {epoch}) as far as this \
                 node knows, but it has not confirmed the lease with the cluster lately (just \
                 started, or cut off)\n"
            ),
        ),
        Some((site, epoch)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "standby: {name} is active on site {site} (epoch {epoch}), this node is in {}\n",
                node.site
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failing over: {name}'s lease is revoked while it moves to another site\n"),
        ),
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
