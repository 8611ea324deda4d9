//! The election loop: ticks the pure [`ElectionGuard`] every `TICK` and carries out its
//! commands on openraft (whose own election timer is off, see `config::RaftTimings`):
//! pre-vote rounds to every other voter in parallel, `trigger().elect()` after a majority
//! granted, and, while a leader stands back without a quorum, its heartbeats off and its
//! stand-back notice to every other voter.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_proto::v1 as pb;
use drover_proto::v1::raft_client::RaftClient;
use openraft::{AsyncRuntime, ServerState};
use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::api::NodeHandle;
use crate::consensus::channel::{endpoint, Dialer, PeerChannel};
use crate::consensus::runtime::DroverRuntime;
use crate::consensus::types::{Member, NodeId};
use crate::decide::election::TICK;
use crate::decide::{ElectionGuard, GuardCommand, GuardInput, MonoTime, RaftRole};
use crate::tls::TlsMaterial;

/// Starts the election loop of a voter; it stops when `stop` turns true.
pub fn start(
    node: NodeHandle,
    tls: Option<Arc<TlsMaterial>>,
    dialer: Dialer,
    stop: watch::Receiver<bool>,
) {
    tokio::spawn(election_loop(node, PreVoteClients { tls, dialer, cache: BTreeMap::new() }, stop));
}

/// Raft gRPC clients to the other voters, for pre-votes.
struct PreVoteClients {
    tls: Option<Arc<TlsMaterial>>,
    dialer: Dialer,
    cache: BTreeMap<NodeId, (String, RaftClient<PeerChannel>)>,
}

impl PreVoteClients {
    fn client(&mut self, id: NodeId, member: &Member) -> Option<RaftClient<PeerChannel>> {
        if let Some((addr, c)) = self.cache.get(&id) {
            if *addr == member.address {
                return Some(c.clone());
            }
        }
        let ep = endpoint(&member.address, &member.name, self.tls.as_deref()).ok()?;
        let client = RaftClient::new(PeerChannel::new(ep, self.dialer.clone()));
        self.cache.insert(id, (member.address.clone(), client.clone()));
        Some(client)
    }
}

fn random() -> u64 {
    DroverRuntime::thread_rng().next_u64()
}

async fn election_loop(
    node: NodeHandle,
    mut clients: PreVoteClients,
    mut stop: watch::Receiver<bool>,
) {
    let timings = node.election;
    let mut guard = ElectionGuard::new(timings, random());
    let (result_tx, mut result_rx) = mpsc::channel::<(usize, usize, u64)>(4);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = node.started;
    loop {
        let mut commands = Vec::new();
        tokio::select! {
            _ = tick.tick() => {}
            Some((granted, voters, asked_in)) = result_rx.recv() => {
                let elect = guard.pre_vote_result(granted, voters);
                // Still leaderless and in the term the pre-vote was asked in: a leader elected
                // meanwhile (its AppendEntries reached us) must not be deposed.
                let current = node.raft.metrics().borrow().current_term;
                let quiet = timings.leaderless(
                    node.leader_contact.since(),
                    node.started.elapsed(),
                    node.stood_back_notice.since(),
                );
                match elect {
                    Some(cmd) if current == asked_in && quiet => commands.push(cmd),
                    Some(_) => debug!("pre-vote granted, but a leader appeared meanwhile"),
                    None => debug!(granted, voters, "pre-vote: no majority; not starting an election"),
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let (state, voters, members, term) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            let members: BTreeMap<NodeId, Member> =
                membership.nodes().map(|(i, n)| (*i, n.clone())).collect();
            (m.state, voters, members, m.current_term)
        };
        let is_voter = voters.contains(&node.id);
        // Leading is hearing a leader: a leader deposed by a newer one waits the same silence
        // as any follower before it asks for pre-votes (asked at once, it was granted by
        // members still holding its own stand-back notice, and deposed the new leader).
        if state == ServerState::Leader {
            node.leader_contact.touch();
        }
        let role = match state {
            ServerState::Leader => RaftRole::Leader {
                quorum_ack_age: node.contacts.quorum_age(node.id, voters.iter().copied()),
            },
            ServerState::Follower | ServerState::Candidate if is_voter => RaftRole::Voter,
            _ => RaftRole::Passive,
        };
        let now = tokio::time::Instant::now();
        let input = GuardInput {
            now: MonoTime::from_ms(now.saturating_duration_since(origin).as_millis() as u64),
            role,
            since_leader: node.leader_contact.since(),
            uptime: now.saturating_duration_since(origin),
            voters: voters.len(),
            stood_back_notice: node.stood_back_notice.since(),
        };
        commands.extend(guard.tick(&input, random()));
        node.standing_back.store(guard.standing_back(), std::sync::atomic::Ordering::Relaxed);
        for cmd in commands {
            match cmd {
                GuardCommand::Heartbeats(on) => {
                    if on {
                        info!("heartbeats on");
                    } else {
                        warn!(
                            "leader without a quorum for {}: standing back (heartbeats off, \
                             notice to every voter) so a connected majority can elect; probing \
                             for a quorum every {}",
                            humantime::format_duration(timings.leader_lease()),
                            humantime::format_duration(timings.probe_every())
                        );
                    }
                    node.raft.runtime_config().heartbeat(on);
                }
                GuardCommand::AnnounceStandBack => {
                    let last_log = crate::api::raft::last_log_of(&node);
                    let notice = pb::PreVoteRequest {
                        candidate: node.id,
                        term,
                        last_log_term: last_log.0,
                        last_log_index: last_log.1,
                        stood_back: true,
                    };
                    let deadline = timings.election_min / 2;
                    for (id, mut client) in voters
                        .iter()
                        .filter(|v| **v != node.id)
                        .filter_map(|v| Some((*v, clients.client(*v, members.get(v)?)?)))
                    {
                        tokio::spawn(async move {
                            match tokio::time::timeout(deadline, client.pre_vote(notice)).await {
                                Ok(Ok(r)) => {
                                    debug!(voter = id, "stand-back notice: {}", r.get_ref().reason)
                                }
                                Ok(Err(e)) => {
                                    debug!(voter = id, cause = %e, "stand-back notice not delivered")
                                }
                                Err(_) => {
                                    debug!(voter = id, "stand-back notice: no answer in time")
                                }
                            }
                        });
                    }
                }
                GuardCommand::Elect => {
                    info!(term, "pre-vote granted by a majority: starting an election");
                    if let Err(e) = node.raft.trigger().elect().await {
                        warn!(cause = %e, "cannot start an election");
                    }
                }
                GuardCommand::PreVote => {
                    let last_log = crate::api::raft::last_log_of(&node);
                    let req = pb::PreVoteRequest {
                        candidate: node.id,
                        term: term + 1,
                        last_log_term: last_log.0,
                        last_log_index: last_log.1,
                        stood_back: false,
                    };
                    let peers: Vec<(NodeId, RaftClient<PeerChannel>)> = voters
                        .iter()
                        .filter(|v| **v != node.id)
                        .filter_map(|v| Some((*v, clients.client(*v, members.get(v)?)?)))
                        .collect();
                    let deadline = timings.election_min / 2;
                    let tx = result_tx.clone();
                    let total = voters.len();
                    tokio::spawn(async move {
                        use futures::stream::StreamExt;
                        let mut asks: futures::stream::FuturesUnordered<_> = peers
                            .into_iter()
                            .map(|(id, mut c)| async move {
                                match tokio::time::timeout(deadline, c.pre_vote(req)).await {
                                    Ok(Ok(r)) if r.get_ref().granted => true,
                                    Ok(Ok(r)) => {
                                        debug!(
                                            voter = id,
                                            "pre-vote refused: {}",
                                            r.get_ref().reason
                                        );
                                        false
                                    }
                                    _ => false,
                                }
                            })
                            .collect();
                        // This member grants itself: its guard only asks after the silence.
                        // Stop at a majority: waiting for a dead voter's deadline would let
                        // another candidate win meanwhile, and this one then depose it.
                        let mut granted = 1;
                        while let Some(yes) = asks.next().await {
                            granted += usize::from(yes);
                            if granted > total / 2 {
                                break;
                            }
                        }
                        let _ = tx.send((granted, total, term)).await;
                    });
                }
            }
        }
    }
}
