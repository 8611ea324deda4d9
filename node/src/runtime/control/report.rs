//! Probe reports: every node sends its Prober's latest results to the leader every
//! `REPORT_EVERY` (straight into the controller loop when it leads).

use std::sync::Arc;

use drover_proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::{leader_of, ControlCtx, Event, REPORT_EVERY, RPC_TIMEOUT};
use crate::decide::Verdict;
use crate::probe::ProbeSource;

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "healthy",
        Verdict::Unhealthy => "unhealthy",
        Verdict::Unknown => "unknown",
    }
}

pub(crate) fn parse_verdict(s: &str) -> Verdict {
    match s {
        "healthy" => Verdict::Healthy,
        "unhealthy" => Verdict::Unhealthy,
        _ => Verdict::Unknown,
    }
}

/// Sends this node's probe results to the leader (or straight into the loop when leading).
pub(super) async fn reporter_loop(
    ctx: ControlCtx,
    prober: Arc<dyn ProbeSource>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let reports: Vec<pb::ProbeReport> = prober
            .latest()
            .into_iter()
            .map(|r| pb::ProbeReport {
                service: r.service,
                site: r.site,
                verdict: verdict_name(r.verdict).to_string(),
                detail: r.detail,
                age_ms: now.saturating_duration_since(r.observed_at).as_millis() as u64,
                lag: r.lag,
                ready: r.ready.map(|v| verdict_name(v).to_string()),
            })
            .collect();
        if reports.is_empty() {
            continue;
        }
        let Some((leader, member)) = leader_of(&ctx.node) else { continue };
        if leader == ctx.node.id {
            let _ =
                ctx.events.try_send(Event::Reports { observer: leader, reports, received: now });
            continue;
        }
        let Some(member) = member else { continue };
        let Ok(mut client) = ctx.peers.control(leader, &member) else { continue };
        let req = pb::ProbeReports { observer: ctx.node.id, reports };
        match tokio::time::timeout(RPC_TIMEOUT, client.report_probes(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(leader, cause = %e.message(), "probe report not delivered"),
            Err(_) => debug!(leader, "probe report timed out"),
        }
    }
}
