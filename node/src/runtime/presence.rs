//! Whether a node whose data dir is empty may bootstrap, must rejoin, or must refuse to start.
//!
//! A node that has been a member holds a vote and log entries; if its data dir is lost it has
//! forgotten them, and bootstrapping again from `initial_member` would let it vote twice in a
//! term and propose a second, different history. So before touching Raft, a node with a
//! pristine store asks every other initial member (bounded by [`PRESENCE_TIMEOUT`], in
//! parallel, before its own listeners serve) whether a cluster has already formed:
//!
//! ```text
//!   pristine store ──▶ ask peers (Control.ClusterPresence) ──▶ plan(rejoin, answers)
//!                                                                 │
//!      no peer has formed a cluster ────────────────────────────▶ Bootstrap (as on day one)
//!      a peer has formed one, no --rejoin ──────────────────────▶ refuse: FormerMember
//!      --rejoin, this node still a voter there ─────────────────▶ refuse: StillVoter
//!      --rejoin, this node not a voter ─────────────────────────▶ Join (wait for member add)
//!      --rejoin, no peer answered with a formed cluster ────────▶ refuse: NoCluster
//! ```
//!
//! "Formed" means the peer applied an entry after the bootstrap membership: a leader was
//! elected and committed. Initial members started together all see "not formed" (or no
//! answer, since every one of them asks before serving) and bootstrap as before. The rule
//! cannot tell a lost data dir from a first start that comes after the others formed the
//! cluster; both are refused, and both are safe to bring in through `--rejoin` after
//! `droverctl member remove`.
//!
//! A node with no `initial_member` list (one brought in with `droverctl member add`) never
//! bootstraps, but knows no peer to ask either, and a member that joined that way and lost its
//! data would otherwise be caught up by the leader under its old entry, vote forgotten. So
//! its empty data dir is refused too unless `--rejoin` says it joins as a fresh member (a new
//! member's first start, or a lost one after `droverctl member remove`): [`plan_without_peers`].

use std::time::Duration;

use drover_proto::v1 as pb;
use drover_proto::v1::control_client::ControlClient;
use futures::future::join_all;

use crate::consensus::channel::endpoint;
use crate::consensus::types::{Member, NodeId};
use crate::tls::TlsMaterial;

/// Longest wait for one peer's answer, connection and TLS handshake included.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a peer said about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The peer applied an entry after the bootstrap membership.
    pub formed: bool,
    /// The peer's current term.
    pub term: u64,
    /// The asking node is a voter in the peer's membership.
    pub asker_is_voter: bool,
}

/// One peer's answer, or why there was none.
#[derive(Debug, Clone)]
pub struct PeerAnswer {
    /// The peer's member name.
    pub name: String,
    /// Its answer, or the error (unreachable, timed out, refused).
    pub reply: Result<Presence, String>,
}

/// How a node with a pristine store starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    /// Propose the initial membership (first start of a new cluster).
    Bootstrap,
    /// Start as a node with no membership and wait to be added with `droverctl member add`.
    Join,
}

/// Why a node with a pristine store must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A cluster exists and this node would bootstrap a second one.
    #[error(
        "the data dir is empty, but member {peer} reports a formed cluster (term {term}): this \
         node was a member and lost its data, or starts after the cluster formed; it will not \
         bootstrap again. To bring it in: 'droverctl member remove {id}' (if listed), then \
         start it with 'drover-node run --rejoin', then 'droverctl member add' and \
         'droverctl member promote' (see docs/operations.md, \"Recovering a node's data\")"
    )]
    FormerMember {
        /// This node's id.
        id: NodeId,
        /// The peer that reported the cluster.
        peer: String,
        /// That peer's term.
        term: u64,
    },
    /// `--rejoin`, but the cluster still counts this node as a voter with its lost vote.
    #[error(
        "--rejoin: member {peer} still lists node {id} as a voter; a voter that lost its vote \
         could vote twice in a term. Remove it first with 'droverctl member remove {id}', then \
         start it again with --rejoin"
    )]
    StillVoter {
        /// This node's id.
        id: NodeId,
        /// The peer that lists it.
        peer: String,
    },
    /// No `initial_member` list (a member added with `droverctl member add`), an empty data
    /// dir, and no `--rejoin`: a new member, or one that lost its data; the node cannot tell.
    #[error(
        "the data dir {data_dir} is empty and node.toml lists no initial_member, so this node \
         joins through 'droverctl member add'; without --rejoin it will not start on an empty \
         data dir, since a member that lost its data would be caught up under its old entry with \
         its vote forgotten. If it was a member: 'droverctl member remove {id}' (if listed), then \
         start it with 'drover-node run --rejoin', then 'droverctl member add' and 'droverctl \
         member promote {id}' (see docs/operations.md, \"Recovering a node's data\"). If it is a \
         new member: start it with --join (the same as --rejoin), then 'droverctl member add'"
    )]
    JoinWithoutRejoin {
        /// This node's id.
        id: NodeId,
        /// The empty data dir.
        data_dir: String,
    },
    /// `--rejoin`, but no peer answered with a formed cluster.
    #[error(
        "--rejoin: no initial member answered with a formed cluster within {}s ({answers}); \
         start at least one running member, check the addresses in initial_member, then retry",
        PRESENCE_TIMEOUT.as_secs()
    )]
    NoCluster {
        /// Each peer's answer or error, for the operator.
        answers: String,
    },
}

/// Decides how a node with a pristine store starts, from its peers' answers.
pub fn plan(id: NodeId, rejoin: bool, answers: &[PeerAnswer]) -> Result<StartPlan, Refusal> {
    let formed: Vec<(&str, &Presence)> = answers
        .iter()
        .filter_map(|a| a.reply.as_ref().ok().filter(|p| p.formed).map(|p| (a.name.as_str(), p)))
        .collect();
    if !rejoin {
        return match formed.iter().max_by_key(|(_, p)| p.term) {
            Some((peer, p)) => {
                Err(Refusal::FormerMember { id, peer: (*peer).to_owned(), term: p.term })
            }
            None => Ok(StartPlan::Bootstrap),
        };
    }
    if let Some((peer, _)) = formed.iter().find(|(_, p)| p.asker_is_voter) {
        return Err(Refusal::StillVoter { id, peer: (*peer).to_owned() });
    }
    if formed.is_empty() {
        let answers = answers
            .iter()
            .map(|a| match &a.reply {
                Ok(_) => format!("{}: no cluster yet", a.name),
                Err(e) => format!("{}: {e}", a.name),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Refusal::NoCluster { answers });
    }
    Ok(StartPlan::Join)
}

/// Decides how a node with a pristine store and no `initial_member` list starts: it joins
/// only when told `--rejoin` ([`Refusal::JoinWithoutRejoin`] otherwise, naming `data_dir`).
pub fn plan_without_peers(id: NodeId, rejoin: bool, data_dir: &str) -> Result<StartPlan, Refusal> {
    if rejoin {
        Ok(StartPlan::Join)
    } else {
        Err(Refusal::JoinWithoutRejoin { id, data_dir: data_dir.to_owned() })
    }
}

/// Asks every initial member other than `id` whether a cluster has formed, in parallel, each
/// bounded by [`PRESENCE_TIMEOUT`].
pub async fn ask_peers(
    id: NodeId,
    initial: &[(NodeId, Member)],
    tls: Option<&TlsMaterial>,
) -> Vec<PeerAnswer> {
    let asks = initial.iter().filter(|(peer, _)| *peer != id).map(|(_, member)| async move {
        let reply = match tokio::time::timeout(PRESENCE_TIMEOUT, ask(id, member, tls)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", PRESENCE_TIMEOUT.as_secs())),
        };
        PeerAnswer { name: member.name.clone(), reply }
    });
    join_all(asks).await
}

async fn ask(id: NodeId, member: &Member, tls: Option<&TlsMaterial>) -> Result<Presence, String> {
    let ep = endpoint(&member.address, &member.name, tls).map_err(|e| e.to_string())?;
    let channel = ep.connect().await.map_err(|e| format!("cannot connect: {e}"))?;
    let reply = ControlClient::new(channel)
        .cluster_presence(pb::PresenceRequest { node_id: id })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(Presence { formed: reply.formed, term: reply.term, asker_is_voter: reply.asker_is_voter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, formed: bool, voter: bool) -> PeerAnswer {
        PeerAnswer {
            name: name.into(),
            reply: Ok(Presence { formed, term: 4, asker_is_voter: voter }),
        }
    }

    fn silent(name: &str) -> PeerAnswer {
        PeerAnswer { name: name.into(), reply: Err("no answer within 3s".into()) }
    }

    #[test]
    fn first_start_bootstraps_when_no_peer_has_formed_a_cluster() {
        let answers = [answer("a", false, true), silent("b")];
        assert_eq!(plan(3, false, &answers), Ok(StartPlan::Bootstrap));
        assert_eq!(plan(3, false, &[]), Ok(StartPlan::Bootstrap));
        assert_eq!(plan(3, false, &[silent("a"), silent("b")]), Ok(StartPlan::Bootstrap));
    }

    #[test]
    fn an_empty_store_in_a_formed_cluster_refuses_to_bootstrap() {
        let answers = [silent("a"), answer("b", true, true)];
        match plan(3, false, &answers) {
            Err(e @ Refusal::FormerMember { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("member b reports a formed cluster (term 4)"), "{msg}");
                assert!(msg.contains("--rejoin"), "{msg}");
                assert!(msg.contains("droverctl member remove 3"), "{msg}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn rejoin_needs_the_node_removed_as_voter_first() {
        let answers = [answer("a", true, false), answer("b", true, true)];
        assert_eq!(plan(3, true, &answers), Err(Refusal::StillVoter { id: 3, peer: "b".into() }));
    }

    #[test]
    fn rejoin_joins_a_formed_cluster_that_no_longer_lists_the_node() {
        let answers = [answer("a", true, false), silent("b")];
        assert_eq!(plan(3, true, &answers), Ok(StartPlan::Join));
    }

    #[test]
    fn a_member_added_later_joins_on_an_empty_data_dir_only_with_rejoin() {
        assert_eq!(plan_without_peers(7, true, "/var/lib/drover"), Ok(StartPlan::Join));
        match plan_without_peers(7, false, "/var/lib/drover") {
            Err(e @ Refusal::JoinWithoutRejoin { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("/var/lib/drover is empty"), "{msg}");
                assert!(msg.contains("droverctl member remove 7"), "{msg}");
                assert!(msg.contains("drover-node run --rejoin"), "{msg}");
            }
            other => panic!("expected JoinWithoutRejoin, got {other:?}"),
        }
    }

    #[test]
    fn rejoin_without_a_reachable_cluster_refuses_and_lists_each_answer() {
        match plan(3, true, &[answer("a", false, false), silent("b")]) {
            Err(e @ Refusal::NoCluster { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("a: no cluster yet; b: no answer within 3s"), "{msg}");
            }
            other => panic!("expected NoCluster, got {other:?}"),
        }
    }
}
