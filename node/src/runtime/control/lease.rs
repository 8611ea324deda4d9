//! Leases, holder side: each controller of the site holding a service's lease renews it
//! (measured from the send), through relays when the leader does not answer, and runs the
//! site's on_lease_lost runbook when it cannot. Leader side: `confirm_leases`, a linearizable
//! read and the holder check.
//!
//! ```text
//!  lease loop (every LEASE_TICK) ── any lease due? ──▶ one RenewLeases per round, carrying
//!        ▲                                              every lease this node holds
//!        │                                                   │ leader (or relays)
//!        └──── per-service results (granted / refused) ◀── one read barrier for the batch
//! ```
//!
//! One request per node and round, whatever the number of services: with one per service,
//! a few hundred services made the leader's queue of renewals longer than a lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::executor::run_local;
use super::{leader_of, ControlCtx, LEASE_TICK, RPC_TIMEOUT};
use crate::actuate::StepContext;
use crate::api::NodeHandle;
use crate::consensus::state::control::{LeaseTerms, WorkflowKind};
use crate::consensus::types::{Member, NodeId};
use crate::decide::{HolderLease, LeaseParams, MonoTime};
use crate::spec::{ClusterSpec, Phase, MAX_SERVICES};

/// After a renewal that was not confirmed, the next one goes out this soon.
const RENEW_RETRY: Duration = Duration::from_millis(250);
/// Renewals of one service waiting for an answer at most.
const MAX_RENEWALS_IN_FLIGHT: usize = 4;
/// After a refused renewal, how long this node's applied state may take to show the lease
/// still with its site at a newer epoch before it self-fences: the refusal was a linearizable
/// read at the leader, which this node applies within a round trip or so.
const REFUSAL_SETTLE: Duration = Duration::from_millis(500);
/// A leader heard from (AppendEntries) within this is asked alone first.
const LEADER_HEARD_LATELY: Duration = Duration::from_secs(1);
/// Leases one `RenewLeases` request carries at most: one per service of the largest spec.
pub(super) const MAX_RENEWALS_PER_REQUEST: usize = MAX_SERVICES;

/// A renewal round's answer, for the lease loop: the leases asked for (service, epoch), when
/// the round was sent, and what the cluster said.
struct Round {
    leases: Vec<(String, u64)>,
    sent_at: MonoTime,
    answer: Batch,
}

/// Per service: this node's view of its site's lease.
struct Holding {
    epoch: u64,
    lease: HolderLease,
    params: LeaseParams,
    started: MonoTime,
    last_sent: Option<MonoTime>,
    /// Renewals sent and not answered yet.
    in_flight: usize,
    /// The newest answered renewal was not confirmed (no answer, no leader, not confirmed):
    /// the next one goes out after `RENEW_RETRY` instead of `lease_ttl / 3`.
    unconfirmed: bool,
    /// The leader refused a renewal at this epoch (when, and why): the site no longer serves
    /// on it, and it self-fences unless this node's own state shows the lease still with its
    /// site at a newer epoch within `REFUSAL_SETTLE` (a switchover or reactivation moved the
    /// epoch on while this node was cut off).
    refused: Option<(MonoTime, String)>,
}

impl Holding {
    fn new(epoch: u64, params: LeaseParams, now: MonoTime) -> Holding {
        Holding {
            epoch,
            lease: HolderLease::new(&params),
            params,
            started: now,
            last_sent: None,
            in_flight: 0,
            unconfirmed: false,
            refused: None,
        }
    }

    /// Whether a renewal is due at `now`: every `lease_ttl / 3` while renewals are confirmed;
    /// after an unconfirmed one, every `RENEW_RETRY`, with at most `MAX_RENEWALS_IN_FLIGHT`
    /// waiting for an answer (a leader change must not eat the lease: DESIGN.md 6).
    fn renewal_due(&self, now: MonoTime) -> bool {
        let Some(last) = self.last_sent else { return true };
        let since = now.saturating_duration_since(last);
        if self.unconfirmed || self.in_flight > 0 {
            since >= RENEW_RETRY && self.in_flight < MAX_RENEWALS_IN_FLIGHT
        } else {
            since >= self.params.lease_ttl / 3
        }
    }
}

/// Keeps the lease of this node's site while it is active, and self-fences when it cannot.
pub(super) async fn lease_loop(ctx: ControlCtx, mut stop: watch::Receiver<bool>) {
    let mut holdings: BTreeMap<String, Holding> = BTreeMap::new();
    // The leader this node last knew: when another one is known, the rounds still waiting on
    // the old one (up to MAX_RENEWALS_IN_FLIGHT, each up to two RPC deadlines) no longer count,
    // and a round goes to the new leader at once. Without this, a leader that died or froze
    // held every renewal slot for 4 s past the election, and a holder could lose its lease
    // to a second leader change it would otherwise have outlived.
    let mut known_leader: Option<NodeId> = None;
    let (tx, mut rx) = mpsc::channel::<Round>(64);
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(round) = rx.recv() => {
                let answers: Vec<Option<Result<(), String>>> = match round.answer {
                    Batch::Confirmed(results) => results.into_iter().map(Some).collect(),
                    Batch::Unknown => vec![None; round.leases.len()],
                };
                for ((service, epoch), answer) in round.leases.into_iter().zip(answers) {
                    let Some(h) = holdings.get_mut(&service).filter(|h| h.epoch == epoch) else {
                        continue;
                    };
                    h.in_flight = h.in_flight.saturating_sub(1);
                    h.unconfirmed = !matches!(answer, Some(Ok(())));
                    match answer {
                        Some(Ok(())) => {
                            h.lease.on_renew_confirmed(round.sent_at);
                        }
                        // The leader read the committed state and says this site does not
                        // hold the lease: stop serving now (DESIGN.md 6).
                        Some(Err(why)) => {
                            // Stop serving now; the tick decides the rest from this node's own
                            // state: the lease kept at a newer epoch (no self-fence), released by
                            // a switchover after this site's deactivation (none either), or else
                            // a self-fence once REFUSAL_SETTLE passed.
                            let why = format!("the cluster refused the lease renewal: {why}");
                            h.refused.get_or_insert((ctx.clock.now(), why));
                            if let Ok(mut leases) = ctx.node.leases.lock() {
                                leases.remove(&service);
                            }
                        }
                        None => {}
                    }
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = ctx.clock.now();
        // Per service: the lease terms in force and the epoch of this site's lease, if it
        // holds one (read in place: this runs every LEASE_TICK on every node).
        let leases = ctx.node.state.read(|s| {
            let spec = &s.control.spec.as_ref()?.spec;
            let leases: Vec<(String, LeaseTerms, Option<u64>)> = s
                .control
                .services
                .iter()
                .filter_map(|(service, state)| {
                    let policy = spec.policy_for(service)?;
                    // A holder keeps to the terms its lease was granted under (the leader
                    // waits by at least those), whatever the spec says now.
                    let terms =
                        state.lease.as_ref().map(|l| l.terms).filter(|t| t.lease_ttl_ms > 0);
                    let terms = terms.unwrap_or_else(|| LeaseTerms::of(&policy));
                    let ours = state.lease.as_ref().filter(|l| l.site == ctx.site).map(|l| l.epoch);
                    Some((service.clone(), terms, ours))
                })
                .collect();
            Some(leases)
        });
        let Some(leases) = leases else { continue };
        if let Some((leader, _)) = leader_of(&ctx.node) {
            if known_leader.replace(leader).is_some_and(|old| old != leader) {
                for h in holdings.values_mut() {
                    h.in_flight = 0;
                    h.last_sent = None;
                }
            }
        }
        let mut believed = BTreeMap::new();
        // This round's renewals: every lease held (with room in flight), sent together as soon
        // as any one of them is due, so all of a node's leases keep one schedule.
        let mut round: Vec<(String, u64)> = Vec::new();
        let mut round_due = false;
        for (service, terms, ours) in &leases {
            let (params, ours) = (LeaseParams::from(*terms), *ours);
            let already_fenced =
                ctx.node.fenced.lock().map(|f| f.get(service).copied()).unwrap_or(None);
            match ours {
                Some(epoch) => {
                    let h = holdings
                        .entry(service.clone())
                        .or_insert_with(|| Holding::new(epoch, params, now));
                    if h.epoch != epoch {
                        *h = Holding::new(epoch, params, now);
                    }
                    if already_fenced == Some(epoch) {
                        continue;
                    }
                    // A refused renewal at this epoch (a newer epoch of this site's lease
                    // replaced the holding above): no serving, no renewal; self-fence once the
                    // state had time to show the newer epoch and did not.
                    if let Some((at, why)) = &h.refused {
                        if now.saturating_duration_since(*at) >= REFUSAL_SETTLE {
                            spawn_self_fence(&ctx, service, epoch, why.clone());
                        }
                        continue;
                    }
                    round_due |= h.renewal_due(now);
                    if h.in_flight < MAX_RENEWALS_IN_FLIGHT {
                        round.push((service.clone(), epoch));
                    }
                    // Checked one tick early, so the loop's period never makes a node fence late.
                    let soon = now.saturating_add(LEASE_TICK);
                    let expired = match h.lease.expiry() {
                        Some(_) => h.lease.expired(soon),
                        None => soon.saturating_duration_since(h.started) >= h.params.lease_ttl,
                    };
                    if expired {
                        let why = "the lease could not be renewed for lease_ttl".to_string();
                        spawn_self_fence(&ctx, service, epoch, why);
                    } else if h.lease.expiry().is_some() {
                        // Only a renewal the cluster confirmed makes the site believe it holds
                        // the lease: a node restarted on stale state must not serve on it.
                        believed.insert(service.clone(), epoch);
                    }
                }
                None => {
                    // This site held it (renewed or not) and the cluster took it away: stop
                    // serving at once. A planned switchover's release after this site's
                    // deactivate runbook succeeded stopped it already: no self-fence.
                    if let Some(h) = holdings.remove(service) {
                        if released_by_switchover(&ctx, service) {
                            info!(service, epoch = h.epoch, "lease released by a switchover after this site was deactivated; not serving");
                        } else if already_fenced != Some(h.epoch) {
                            let why = "the cluster revoked this site's lease".to_string();
                            spawn_self_fence(&ctx, service, h.epoch, why);
                        }
                    }
                }
            }
        }
        if round_due && !round.is_empty() {
            for (service, _) in &round {
                if let Some(h) = holdings.get_mut(service) {
                    h.last_sent = Some(now);
                    h.in_flight += 1;
                    h.lease.on_renew_sent(now);
                }
            }
            tokio::spawn(renew(ctx.clone(), round, now, tx.clone()));
        }
        if let Ok(mut leases) = ctx.node.leases.lock() {
            *leases = believed;
        }
    }
}

/// Asks the leader (or this node, when leading) to confirm the leases of `round`, in one
/// request. When the leader has not been heard from lately (this node may be cut from it while
/// others still reach it: a witness or a leader in the other site), other members are asked at
/// the same time to relay it; otherwise they are asked only after the leader did not answer.
/// The first conclusive answer counts. The leases count from `sent_at` whatever the path, so a
/// relay only ever makes them shorter.
async fn renew(
    ctx: ControlCtx,
    round: Vec<(String, u64)>,
    sent_at: MonoTime,
    tx: mpsc::Sender<Round>,
) {
    let req = pb::RenewLeasesRequest {
        node_id: ctx.node.id,
        site: ctx.site.clone(),
        leases: round
            .iter()
            .map(|(service, epoch)| pb::LeaseRenewal { service: service.clone(), epoch: *epoch })
            .collect(),
        relayed: false,
    };
    let leader = leader_of(&ctx.node);
    let answer = match leader {
        Some((leader, _)) if leader == ctx.node.id => {
            match confirm_leases(&ctx, ctx.node.id, &ctx.site, &req.leases).await {
                Ok(results) => Batch::Confirmed(results),
                // A leader without a quorum (it stands back): a new leader may already have
                // been elected by a majority it cannot reach; members it does reach relay.
                Err(_) => relay_renewals(&ctx, Some(leader), &req).await,
            }
        }
        _ => {
            let leader = leader.and_then(|(id, m)| Some((id, m?)));
            let leader_id = leader.as_ref().map(|l| l.0);
            let heard_lately =
                ctx.node.leader_contact.since().is_some_and(|d| d < LEADER_HEARD_LATELY);
            let direct = async {
                match &leader {
                    Some((id, member)) => ask_renewals(&ctx, *id, member, req.clone()).await,
                    None => Batch::Unknown,
                }
            };
            if heard_lately && leader_id.is_some() {
                match direct.await {
                    Batch::Unknown => relay_renewals(&ctx, leader_id, &req).await,
                    conclusive => conclusive,
                }
            } else {
                first_conclusive(vec![
                    Box::pin(direct),
                    Box::pin(relay_renewals(&ctx, leader_id, &req)),
                ])
                .await
            }
        }
    };
    let _ = tx.send(Round { leases: round, sent_at, answer }).await;
}

/// Asks every other member (but the leader) at once to pass the renewals on to the leader;
/// the first conclusive answer wins.
async fn relay_renewals(
    ctx: &ControlCtx,
    leader: Option<NodeId>,
    req: &pb::RenewLeasesRequest,
) -> Batch {
    let members: Vec<(NodeId, Member)> = {
        let metrics = ctx.node.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
    };
    let asks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Batch> + Send + '_>>> =
        members
            .into_iter()
            .filter(|(id, _)| *id != ctx.node.id && Some(*id) != leader)
            .map(|(id, member)| {
                let req = req.clone();
                Box::pin(async move { ask_renewals(ctx, id, &member, req).await }) as _
            })
            .collect();
    first_conclusive(asks).await
}

/// The first answer of `asks` that is not `Unknown`, or `Unknown` when all are.
async fn first_conclusive(
    asks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Batch> + Send + '_>>>,
) -> Batch {
    use futures::stream::StreamExt;
    let mut pending: futures::stream::FuturesUnordered<_> = asks.into_iter().collect();
    while let Some(answer) = pending.next().await {
        if !matches!(answer, Batch::Unknown) {
            return answer;
        }
    }
    Batch::Unknown
}

/// Sends a batch of renewals to `member` (the leader, or a member relaying to it).
pub(super) async fn ask_renewals(
    ctx: &ControlCtx,
    id: NodeId,
    member: &Member,
    req: pb::RenewLeasesRequest,
) -> Batch {
    let Ok(mut client) = ctx.peers.control(id, member) else { return Batch::Unknown };
    // A relay needs time for its own hop to the leader.
    let limit = if req.relayed { RPC_TIMEOUT } else { RPC_TIMEOUT * 2 };
    let asked = req.leases.len();
    match tokio::time::timeout(limit, client.renew_leases(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if !r.confirmed {
                debug!(to = %member.name, reason = %r.reason, "lease renewal not confirmed");
            }
            Batch::from_reply(r, asked)
        }
        Ok(Err(status)) => {
            debug!(to = %member.name, %status, "lease renewal refused");
            Batch::Unknown
        }
        Err(_) => {
            debug!(to = %member.name, "lease renewal: no answer within {limit:?}");
            Batch::Unknown
        }
    }
}

/// What the cluster answered to a batch of lease renewals.
pub(super) enum Batch {
    /// The leader confirmed its leadership after the request arrived: one result per renewal,
    /// in the request's order; `Err` says why that lease is not the holder's.
    Confirmed(Vec<Result<(), String>>),
    /// No answer, no leader, or the leader could not confirm its leadership.
    Unknown,
}

impl Batch {
    /// Reads a reply to a request of `asked` renewals; a confirmed reply with another number
    /// of results is not an answer.
    pub(super) fn from_reply(reply: pb::RenewLeasesReply, asked: usize) -> Batch {
        if !reply.confirmed || reply.results.len() != asked {
            return Batch::Unknown;
        }
        let results = reply
            .results
            .into_iter()
            .map(|r| if r.granted { Ok(()) } else { Err(r.reason) })
            .collect();
        Batch::Confirmed(results)
    }

    /// The reply that carries this answer on (a relay's); `unknown` says why when there is none.
    pub(super) fn into_reply(self, unknown: impl FnOnce() -> String) -> pb::RenewLeasesReply {
        match self {
            Batch::Confirmed(results) => pb::RenewLeasesReply {
                confirmed: true,
                reason: String::new(),
                results: results
                    .into_iter()
                    .map(|r| match r {
                        Ok(()) => pb::LeaseRenewalResult { granted: true, reason: String::new() },
                        Err(reason) => pb::LeaseRenewalResult { granted: false, reason },
                    })
                    .collect(),
            },
            Batch::Unknown => {
                pb::RenewLeasesReply { confirmed: false, reason: unknown(), results: Vec::new() }
            }
        }
    }
}

/// Shares one linearizable read among the lease confirmations waiting for it.
///
/// Every holder of every service renews on its own, so a cluster of many services would ask
/// the leader for as many reads (each a heartbeat round to a quorum) per renewal period, and
/// an overloaded leader would confirm none in time. A confirmation instead waits for the first
/// read that *starts after it arrived* (that read proves leadership at a point after the
/// renewal was sent, which is all the lease needs, DESIGN.md 6) and takes its result: at most
/// one read is in flight, and a burst of renewals costs one or two reads.
#[derive(Default)]
pub(super) struct ReadBarrier {
    /// Reads started so far.
    started: AtomicU64,
    /// Held while a read runs; the newest read's number and result.
    last: tokio::sync::Mutex<Option<(u64, Result<(), String>)>>,
}

impl ReadBarrier {
    /// A linearizable read on `node` that started after this call, each read bounded by
    /// `RPC_TIMEOUT`: `Err` says why leadership was not confirmed.
    async fn confirm(&self, node: &NodeHandle) -> Result<(), String> {
        let arrived = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if let Some((n, result)) = last.as_ref() {
            if *n > arrived {
                return result.clone();
            }
        }
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match tokio::time::timeout(RPC_TIMEOUT, node.raft.ensure_linearizable()).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("not confirmed: {e}")),
            Err(_) => Err("not confirmed in time".to_string()),
        };
        *last = Some((n, result.clone()));
        result
    }
}

/// On the leader: one linearizable read for the whole batch (shared with concurrent
/// confirmations, see [`ReadBarrier`]), then the holder check of each lease.
///
/// `Err` when leadership was not confirmed (no lease is answered); otherwise one result per
/// lease of `leases`, in order, `Err` saying why that lease is not `requester`'s.
pub(super) async fn confirm_leases(
    ctx: &ControlCtx,
    requester: NodeId,
    site: &str,
    leases: &[pb::LeaseRenewal],
) -> Result<Vec<Result<(), String>>, String> {
    let node = &ctx.node;
    if node.standing_back.load(Ordering::Relaxed) {
        return Err("this leader has no quorum and stands back".into());
    }
    ctx.reads.confirm(node).await?;
    let member_site = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&requester)
        .map(|m| m.site.clone());
    if member_site.as_deref() != Some(site) {
        let why = format!("node {requester} is not a member of site {site}");
        return Ok(vec![Err(why); leases.len()]);
    }
    Ok(node.state.read(|s| {
        leases
            .iter()
            .map(|r| {
                let holds = s
                    .control
                    .services
                    .get(&r.service)
                    .and_then(|st| st.lease.as_ref())
                    .is_some_and(|l| l.site == site && l.epoch == r.epoch);
                if holds {
                    Ok(())
                } else {
                    Err(format!(
                        "site {site} does not hold the lease of {} at epoch {}",
                        r.service, r.epoch
                    ))
                }
            })
            .collect()
    }))
}

/// Whether this node's applied state shows `service`'s lease released by a planned
/// switchover away from this site after its deactivate (or, on the way back, undo) runbook
/// succeeded: the site stopped serving through that runbook, and on_lease_lost has nothing
/// left to do. A node that has not applied that yet self-fences as usual, which only stops
/// what is already stopped.
fn released_by_switchover(ctx: &ControlCtx, service: &str) -> bool {
    ctx.node.state.read(|s| {
        s.control.services.get(service).and_then(|st| st.workflow.as_ref()).is_some_and(|wf| {
            wf.kind == WorkflowKind::Switchover
                && ((wf.from == ctx.site && wf.fence_confirmed())
                    || (wf.to == ctx.site && wf.undo_confirmed()))
        })
    })
}

/// Starts this site's on_lease_lost runbook in its own task (once per service and epoch), so
/// one service's self-fencing never delays another's.
fn spawn_self_fence(ctx: &ControlCtx, service: &str, epoch: u64, why: String) {
    if let Ok(mut f) = ctx.node.fenced.lock() {
        if f.get(service) == Some(&epoch) {
            return;
        }
        f.insert(service.to_string(), epoch);
    }
    if let Ok(mut leases) = ctx.node.leases.lock() {
        leases.remove(service);
    }
    // Kept in the store, so a restart does not forget it; written beside the runbook, never
    // before it: a disk that does not take the write must not delay stopping the site.
    let (marks, name) = (ctx.fence_marks.clone(), service.to_string());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = marks.record(&name, epoch) {
            warn!(service = %name, epoch, "cannot record the self-fence: {e}; a restart of this node would forget it");
        }
    });
    let spec = ctx.node.state.read(|s| s.control.spec.as_ref().map(|v| v.spec.clone()));
    let Some(spec) = spec else { return };
    let (ctx, service) = (ctx.clone(), service.to_string());
    tokio::spawn(async move { self_fence(&ctx, &spec, &service, epoch, &why).await });
}

/// Runs this site's on_lease_lost runbook locally: every step in order, each with its
/// retries and backoff (the spec makes sure all of it fits in self_fence_grace).
async fn self_fence(ctx: &ControlCtx, spec: &ClusterSpec, service: &str, epoch: u64, why: &str) {
    error!(service, epoch, site = %ctx.site, "SELF-FENCING: {why}; running on_lease_lost");
    let steps = spec
        .service(service)
        .map(|s| s.runbook(&ctx.site, Phase::OnLeaseLost).to_vec())
        .unwrap_or_default();
    let sc = StepContext {
        service: service.to_string(),
        epoch,
        from_site: ctx.site.clone(),
        to_site: String::new(),
        recovery_point: None,
        test: false,
    };
    for (i, step) in steps.iter().enumerate() {
        for attempt in 1..=step.retries + 1 {
            match run_local(ctx, step, &sc).await {
                Ok(d) => {
                    info!(service, step = i + 1, attempt, "on_lease_lost step done: {d}");
                    break;
                }
                Err((e, _)) if attempt <= step.retries => {
                    warn!(service, step = i + 1, attempt, "on_lease_lost step failed, retrying: {e}");
                    tokio::time::sleep(step.backoff).await;
                }
                Err((e, _)) => error!(
                    service,
                    step = i + 1,
                    attempt,
                    "on_lease_lost step failed for good: {e}; this site may still be serving: stop it by hand"
                ),
            }
        }
    }
    // Done (whatever its steps' outcome: the grace is over): the reporter tells the leader,
    // which reactivates the site if it is still the active one at this epoch.
    if let Ok(mut done) = ctx.fence_done.lock() {
        done.insert(service.to_string(), epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(granted: bool, reason: &str) -> pb::LeaseRenewalResult {
        pb::LeaseRenewalResult { granted, reason: reason.into() }
    }

    #[test]
    fn a_confirmed_reply_answers_each_lease_in_order() {
        let reply = pb::RenewLeasesReply {
            confirmed: true,
            reason: String::new(),
            results: vec![result(true, ""), result(false, "site prod does not hold svc-b")],
        };
        match Batch::from_reply(reply, 2) {
            Batch::Confirmed(r) => {
                assert_eq!(r, vec![Ok(()), Err("site prod does not hold svc-b".to_string())])
            }
            Batch::Unknown => panic!("a confirmed reply of 2 results for 2 leases is an answer"),
        }
    }

    #[test]
    fn an_unconfirmed_or_mismatched_reply_is_no_answer() {
        let unconfirmed = pb::RenewLeasesReply {
            confirmed: false,
            reason: "no quorum".into(),
            results: vec![result(true, "")],
        };
        assert!(matches!(Batch::from_reply(unconfirmed, 1), Batch::Unknown));
        // A refusal must never be applied to the wrong service: a short (or long) list of
        // results is not read at all.
        let short = pb::RenewLeasesReply {
            confirmed: true,
            reason: String::new(),
            results: vec![result(false, "not held")],
        };
        assert!(matches!(Batch::from_reply(short.clone(), 2), Batch::Unknown));
        assert!(matches!(Batch::from_reply(short, 0), Batch::Unknown));
    }

    #[test]
    fn a_relay_passes_the_leaders_answer_on_unchanged() {
        let answer = Batch::Confirmed(vec![Ok(()), Err("revoked".into())]);
        let reply = answer.into_reply(|| unreachable!("confirmed"));
        assert!(reply.confirmed);
        match Batch::from_reply(reply, 2) {
            Batch::Confirmed(r) => assert_eq!(r, vec![Ok(()), Err("revoked".to_string())]),
            Batch::Unknown => panic!("lost in the relay"),
        }
        let reply = Batch::Unknown.into_reply(|| "the leader did not answer".into());
        assert!(!reply.confirmed && reply.results.is_empty());
        assert_eq!(reply.reason, "the leader did not answer");
    }
}
