//! A rogue gRPC client: the generated stubs (`drover-proto`) over mutual TLS with whatever
//! certificate a test hands it, to send what droverctl and the nodes never would (forged Raft
//! and Control messages, any admin call under any role).
//!
//! ```text
//! Rogue::new(addr, server_name, Creds) ──tonic Channel (lazy, mTLS)──▶ node's gRPC port
//!    .call(|ch| async { RaftClient::new(ch).vote(req).await })  ──▶ Result<T, Status>
//! ```
//!
//! Synchronous like the rest of the harness: each Rogue owns a small tokio runtime, and every
//! call has a deadline ([`CALL_DEADLINE`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

pub use drover_proto::v1 as pb;

/// Deadline of one call (a RunStep may legitimately wait a few seconds on the node).
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS material a rogue client presents: the CA it trusts, and a certificate and key (or
/// none).
#[derive(Debug, Clone)]
pub struct Creds {
    pub ca: PathBuf,
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

impl Creds {
    /// `<dir>/ca.pem` and `<dir>/<name>.pem`, `<dir>/<name>-key.pem` (as `droverctl certs init`
    /// writes them).
    pub fn named(dir: &Path, name: &str) -> Creds {
        Creds {
            ca: dir.join("ca.pem"),
            cert_key: Some((dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")))),
        }
    }

    /// Trusting `<dir>/ca.pem` and presenting no certificate.
    pub fn none(dir: &Path) -> Creds {
        Creds { ca: dir.join("ca.pem"), cert_key: None }
    }

    /// The same certificate, trusting another CA file (e.g. the cluster's, for a certificate
    /// from another CA).
    pub fn trusting(mut self, ca: &Path) -> Creds {
        self.ca = ca.to_path_buf();
        self
    }
}

/// A gRPC client to one node, with chosen credentials.
pub struct Rogue {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl Rogue {
    /// A client for the node at `addr` whose certificate names `server_name`.
    pub fn new(addr: SocketAddr, server_name: &str, creds: &Creds) -> Rogue {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the rogue client");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&creds.ca)))
            .domain_name(server_name);
        if let Some((cert, key)) = &creds.cert_key {
            tls = tls.identity(Identity::from_pem(read(cert), read(key)));
        }
        let channel = {
            let _guard = rt.enter();
            Endpoint::from_shared(format!("https://{addr}"))
                .expect("endpoint URI")
                .connect_timeout(CONNECT_TIMEOUT)
                .tls_config(tls)
                .expect("client TLS config")
                .connect_lazy()
        };
        Rogue { rt, channel }
    }

    /// Runs one call on this client's channel, bounded by [`CALL_DEADLINE`].
    pub fn call<T, Fut>(&self, f: impl FnOnce(Channel) -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let fut = f(self.channel.clone());
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_DEADLINE, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {}s (rogue client deadline)",
                    CALL_DEADLINE.as_secs()
                ))),
            }
        })
    }

    /// `Raft.Vote` with this JSON payload (an openraft `VoteRequest`).
    pub fn vote(&self, payload: Vec<u8>) -> Result<pb::RaftReply, Status> {
        self.call(|ch| async move {
            pb::raft_client::RaftClient::new(ch).vote(pb::RaftRequest { payload }).await
        })
    }

    /// `Raft.AppendEntries` with this JSON payload (an openraft `AppendEntriesRequest`).
    pub fn append_entries(&self, payload: Vec<u8>) -> Result<pb::RaftReply, Status> {
        self.call(|ch| async move {
            pb::raft_client::RaftClient::new(ch).append_entries(pb::RaftRequest { payload }).await
        })
    }

    /// `Control.ReportProbes`.
    pub fn report_probes(&self, req: pb::ProbeReports) -> Result<pb::ProbeAck, Status> {
        self.call(|ch| async move {
            pb::control_client::ControlClient::new(ch).report_probes(req).await
        })
    }

    /// `Control.RunStep`.
    pub fn run_step(&self, req: pb::RunStepRequest) -> Result<pb::RunStepReply, Status> {
        self.call(
            |ch| async move { pb::control_client::ControlClient::new(ch).run_step(req).await },
        )
    }
}

/// The JSON of an openraft `VoteRequest` from `candidate` at `term` with no log.
pub fn vote_payload(candidate: u64, term: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "vote": { "leader_id": { "term": term, "node_id": candidate }, "committed": false },
        "last_log_id": null,
    }))
    .expect("encode a vote")
}

/// The JSON of an openraft `AppendEntriesRequest` from a (fake) leader `leader` at `term`:
/// after the log entry `prev` = (term, leader, index), one note entry by `author` saying
/// `text`, committed at once (`leader_commit` at it).
pub fn append_note_payload(
    leader: u64,
    term: u64,
    prev: (u64, u64, u64),
    author: &str,
    text: &str,
) -> Vec<u8> {
    use drover::consensus::types::{Entry, Request, TypeConfig};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    let (prev_term, prev_leader, prev_index) = prev;
    let prev = LogId::new(CommittedLeaderId::new(prev_term, prev_leader), prev_index);
    let log_id = LogId::new(CommittedLeaderId::new(term, leader), prev_index + 1);
    let entry = Entry {
        log_id,
        payload: EntryPayload::Normal(Request::Note {
            author: author.into(),
            text: text.into(),
            at_unix_ms: 0,
        }),
    };
    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: Some(prev),
        entries: vec![entry],
        leader_commit: Some(log_id),
    };
    serde_json::to_vec(&req).expect("encode append-entries")
}
