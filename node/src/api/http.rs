//! Plain HTTP on each node: `/healthz` (the process runs), `/readyz` (member of a cluster with
//! a known leader, Raft running and the store taking writes), `/metrics` (Prometheus text format).
//!
//! Plain HTTP on purpose: load balancers and Prometheus scrape it; it exposes no control.
//!
//! [`serve`] runs the routes with limits on the connections themselves: at most
//! [`MAX_HTTP_CONNECTIONS`] open (a connection beyond it is closed at once), request headers
//! within [`HEADER_READ_TIMEOUT`] (which also closes a kept-alive connection idle that long),
//! and no connection older than [`MAX_CONNECTION_AGE`]. Refusals are logged at most once per
//! cause every 10 s, with a count.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::view::ClusterView;
use super::NodeHandle;

/// Open HTTP connections at most; a connection beyond this is closed at once.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this (and a kept-alive connection idle this long
/// is closed).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed (after its request in progress) once this old.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// One warning line per cause per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` with the connection limits of the module doc until `stop`
/// resolves; connections in progress then finish their request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    let log = Arc::new(crate::edge::ratelog::LogLimiter::new(LOG_INTERVAL));
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    if log.allow("accept", tokio::time::Instant::now()).is_some() {
                        tracing::warn!(cause = %err, "HTTP accept failed; retrying in 100ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(left_out) = log.allow("cap", tokio::time::Instant::now()) {
                tracing::warn!(
                    %peer,
                    left_out,
                    "closed HTTP connection: {MAX_HTTP_CONNECTIONS} connections open \
                     (one line per {}s; left_out: how many more since the last)",
                    LOG_INTERVAL.as_secs()
                );
            }
            continue;
        };
        let app = app.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let age = tokio::time::sleep(MAX_CONNECTION_AGE);
            tokio::pin!(age);
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = &mut age, if !shutting_down => {
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                    _ = closing.wait_for(|c| *c), if !shutting_down => {
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
        });
    }
    let _ = closing_tx.send(true);
}

/// The HTTP routes, ready for [`serve`].
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
    if let Some(why) = node.storage_fault.borrow().clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: this node cannot persist ({why}); free space or check the disk of \
                 its data store; the node exits to be restarted\n"
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
        Some((site, epoch))
            if site == node.site
                && state.phase == crate::consensus::state::control::ServicePhase::Reactivating =>
        {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                "reactivating: site {site} self-fenced {name} and runs its activate runbook again \
                 (epoch {epoch})\n"
            ),
            )
        }
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

/// The drift series of every service, from the replicated state (every node shows the same):
/// `drover_drift{service,step}` 1 per drifted traffic step (step is 1-based),
/// `drover_drift_detected_total{service}` and `drover_drift_repairs_total{service,result}`.
fn render_drift(out: &mut String, view: &ClusterView) {
    let _ = writeln!(
        out,
        "# HELP drover_drift 1 while a traffic step of the committed workflow is found drifted.\n\
         # TYPE drover_drift gauge"
    );
    for (name, s) in &view.services {
        for d in &s.drift {
            let _ = writeln!(out, "drover_drift{{service=\"{name}\",step=\"{}\"}} 1", d.step + 1);
        }
    }
    let _ = writeln!(
        out,
        "# HELP drover_drift_detected_total Drifts of traffic steps found.\n\
         # TYPE drover_drift_detected_total counter"
    );
    for (name, s) in &view.services {
        let _ = writeln!(
            out,
            "drover_drift_detected_total{{service=\"{name}\"}} {}",
            s.drift_counts.detected
        );
    }
    let _ = writeln!(
        out,
        "# HELP drover_drift_repairs_total Drifted traffic steps run again, by result.\n\
         # TYPE drover_drift_repairs_total counter"
    );
    for (name, s) in &view.services {
        for (result, n) in
            [("ok", s.drift_counts.repaired), ("failed", s.drift_counts.repair_failed)]
        {
            let _ = writeln!(
                out,
                "drover_drift_repairs_total{{service=\"{name}\",result=\"{result}\"}} {n}"
            );
        }
    }
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
    readiness_metrics(&mut out, view);
    render_drift(&mut out, view);
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

/// The leader's readiness verdicts: per standby whether it is ready, per consistency check
/// whether its fingerprints differ (no sample while one is unknown), per passive check whether
/// it passes (the standby serves). Nothing on followers.
fn readiness_metrics(out: &mut String, view: &ClusterView) {
    let standbys: Vec<(&String, &crate::decide::StandbyReadiness)> =
        view.readiness.iter().flat_map(|(svc, vs)| vs.iter().map(move |v| (svc, v))).collect();
    if standbys.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP drover_standby_ready 1 if an unforced failover of the service to the standby site passes every readiness gate (leader only).\n# TYPE drover_standby_ready gauge");
    for (svc, v) in &standbys {
        let _ = writeln!(
            out,
            "drover_standby_ready{{service=\"{svc}\",site=\"{}\"}} {}",
            v.site,
            u8::from(v.ready)
        );
    }
    if standbys.iter().any(|(_, v)| !v.consistency.is_empty()) {
        let _ = writeln!(out, "# HELP drover_consistency_mismatch 1 if the standby's fingerprint differs from the active site's, 0 if equal; absent while either is unknown (leader only).\n# TYPE drover_consistency_mismatch gauge");
        for (svc, v) in &standbys {
            for c in &v.consistency {
                let value = match c.state() {
                    "match" => 0,
                    "mismatch" => 1,
                    _ => continue,
                };
                let _ = writeln!(
                    out,
                    "drover_consistency_mismatch{{service=\"{svc}\",site=\"{}\",check=\"{}\"}} {value}",
                    v.site, c.check
                );
            }
        }
    }
    if standbys.iter().any(|(_, v)| !v.passive.is_empty()) {
        let _ = writeln!(out, "# HELP drover_standby_serving 1 if a passive check of the standby passes (it serves: possible split brain), else 0 (leader only).\n# TYPE drover_standby_serving gauge");
        for (svc, v) in &standbys {
            for p in &v.passive {
                let _ = writeln!(
                    out,
                    "drover_standby_serving{{service=\"{svc}\",site=\"{}\",check=\"{}\"}} {}",
                    v.site,
                    p.check,
                    u8::from(p.state == "serving")
                );
            }
        }
    }
}
