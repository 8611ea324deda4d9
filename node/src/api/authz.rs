//! Who may call what on the gRPC port: the one table from method to the certificate it needs,
//! and the checks handlers make on what a request claims.
//!
//! ```text
//! TLS accept loop ──ConnectInfo{identity}──▶ AuthzLayer ──decide(METHODS, identity, membership)──┐
//!                                              │ refused: PERMISSION_DENIED, logged once per    │
//!                                              │ (identity, method) per minute                  ▼
//!                                              └──────────── Caller in the request extensions ──▶ handler
//!                                                             (same_member, author: the request's
//!                                                              claims must be the certificate's)
//! ```
//!
//! Mutual TLS has already checked that the certificate is signed by the cluster CA; this module
//! checks what its identity ([`PeerIdentity`]) may do:
//! - Raft and Control: node certificates of current members only (by name, against this node's
//!   membership). A node that has no membership yet (a joiner waiting to be added, or an
//!   initial member before the cluster formed) takes Raft messages from any node certificate,
//!   since it has nothing to check them against and nothing to lose; Control needs a member.
//! - Admin: admin certificates whose role is at least the one in [`METHODS`]; node
//!   certificates never.
//!
//! With `--insecure-dev` (and in the simulator) there are no certificates: every call passes as
//! [`Caller::Unchecked`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::codegen::http;
use tonic::{Request, Status};
use tracing::warn;

use crate::consensus::types::{NodeId, Raft};
use crate::tls::{AdminRole, ConnectInfo, PeerIdentity};

/// What a method needs from the caller's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A node certificate of a current member, or of any node while this node has no
    /// membership yet (Raft: a joiner must hear from the leader that adds it).
    Peer,
    /// A node certificate of a current member.
    Member,
    /// Any node certificate of the cluster CA, member or not (a former member asking, before
    /// it rejoins, whether a cluster has formed).
    Node,
    /// An admin certificate with at least this role.
    Role(AdminRole),
}

impl Need {
    fn describe(self) -> String {
        match self {
            Need::Node => "a node certificate (drover://node/<name>)".into(),
            Need::Peer | Need::Member => {
                "a node certificate (drover://node/<name>) of a current member".into()
            }
            Need::Role(role) => {
                format!("an admin certificate with role {role} or above (drover://role/{role})")
            }
        }
    }
}

/// Every gRPC method the node serves and what it needs. A method missing here is refused.
pub const METHODS: &[(&str, Need)] = &[
    // Raft transport between members.
    ("/drover.v1.Raft/AppendEntries", Need::Peer),
    ("/drover.v1.Raft/Vote", Need::Peer),
    ("/drover.v1.Raft/InstallSnapshot", Need::Peer),
    ("/drover.v1.Raft/PreVote", Need::Peer),
    // Members working together on failovers.
    ("/drover.v1.Control/ReportProbes", Need::Member),
    ("/drover.v1.Control/RunStep", Need::Member),
    ("/drover.v1.Control/RunVeto", Need::Member),
    ("/drover.v1.Control/ReconcileStep", Need::Member),
    ("/drover.v1.Control/FenceStatus", Need::Member),
    ("/drover.v1.Control/RenewLeases", Need::Member),
    // Asked by a member starting on an empty data dir, before any membership may exist here.
    ("/drover.v1.Control/ClusterPresence", Need::Node),
    // Reads.
    ("/drover.v1.Admin/Status", Need::Role(AdminRole::Viewer)),
    ("/drover.v1.Admin/History", Need::Role(AdminRole::Viewer)),
    ("/drover.v1.Admin/ConfigShow", Need::Role(AdminRole::Viewer)),
    ("/drover.v1.Admin/ConfigDiff", Need::Role(AdminRole::Viewer)),
    ("/drover.v1.Admin/Plan", Need::Role(AdminRole::Viewer)),
    // Running workflows and deciding on them.
    ("/drover.v1.Admin/AddNote", Need::Role(AdminRole::Operator)),
    ("/drover.v1.Admin/ServiceAction", Need::Role(AdminRole::Operator)),
    ("/drover.v1.Admin/FenceTest", Need::Role(AdminRole::Operator)),
    // Changing the spec and the membership.
    ("/drover.v1.Admin/ConfigApply", Need::Role(AdminRole::Admin)),
    ("/drover.v1.Admin/AddMember", Need::Role(AdminRole::Admin)),
    ("/drover.v1.Admin/PromoteMember", Need::Role(AdminRole::Admin)),
    ("/drover.v1.Admin/RemoveMember", Need::Role(AdminRole::Admin)),
];

/// What method `path` (`/package.Service/Method`) needs, if it is served at all.
pub fn need_of(path: &str) -> Option<Need> {
    METHODS.iter().find(|(m, _)| *m == path).map(|(_, need)| *need)
}

/// Who is calling, as established from the certificate; handlers find it in the request
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A member's node certificate.
    Member {
        /// The member's id in this node's membership; `None` while this node has none.
        id: Option<NodeId>,
        /// The member's name.
        name: String,
    },
    /// An admin certificate.
    Admin {
        /// The person, as the certificate names them.
        user: String,
        /// Their role.
        role: AdminRole,
    },
    /// No certificates (`--insecure-dev`, the simulator): nothing is checked.
    Unchecked,
}

/// A refused call: the method, what it needs and what the caller had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The gRPC method path.
    pub method: String,
    /// What was needed, in words.
    pub needed: String,
    /// What the caller presented, in words.
    pub had: String,
}

impl Denial {
    /// The status sent back: PERMISSION_DENIED naming what is needed and what was presented.
    pub fn status(&self) -> Status {
        Status::permission_denied(format!(
            "{} needs {}; the caller presented {}",
            self.method, self.needed, self.had
        ))
    }
}

/// This node's membership as the authorizer sees it: (id, name) of every voter and learner;
/// empty while the node has none.
pub type Members = Vec<(NodeId, String)>;

/// Decides whether `identity` may call `method` given this node's `members`. Pure.
pub fn decide(
    method: &str,
    identity: Option<&PeerIdentity>,
    members: &[(NodeId, String)],
) -> Result<Caller, Denial> {
    let deny = |needed: String, had: String| Denial { method: method.to_string(), needed, had };
    let Some(need) = need_of(method) else {
        return Err(deny("a method drover serves".into(), "an unknown method".into()));
    };
    let Some(identity) = identity else {
        return Err(deny(need.describe(), "no client certificate".into()));
    };
    match (need, identity) {
        (Need::Peer | Need::Member, PeerIdentity::Node { name }) => {
            match members.iter().find(|(_, n)| n == name) {
                Some((id, _)) => Ok(Caller::Member { id: Some(*id), name: name.clone() }),
                None if need == Need::Peer && members.is_empty() => {
                    Ok(Caller::Member { id: None, name: name.clone() })
                }
                None if members.is_empty() => Err(deny(
                    need.describe(),
                    format!("{identity}, and this node has no membership yet"),
                )),
                None => Err(deny(need.describe(), format!("{identity}, which is not a member"))),
            }
        }
        (Need::Node, PeerIdentity::Node { name }) => {
            let id = members.iter().find(|(_, n)| n == name).map(|(id, _)| *id);
            Ok(Caller::Member { id, name: name.clone() })
        }
        (Need::Role(needed), PeerIdentity::Admin { user, role }) if *role >= needed => {
            Ok(Caller::Admin { user: user.clone(), role: *role })
        }
        (need, identity) => Err(deny(need.describe(), identity.to_string())),
    }
}

/// Refusals logged at most once per (identity, method) per [`REFUSAL_LOG_EVERY`].
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Distinct (identity, method) pairs remembered; beyond it, refusals of new pairs are counted
/// but not logged until old pairs age out.
const REFUSAL_LOG_KEYS: usize = 1024;

/// Rate limiter for refusal log lines. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: HashMap<(String, String), (Instant, u64)>,
}

impl RefusalLog {
    /// Records a refusal of `method` to `who` at `now`. Returns `Some(n)` when it should be
    /// logged now, `n` being how many refusals of the same pair were not logged since the last
    /// line; `None` when it falls within the quiet period.
    pub fn record(&mut self, who: &str, method: &str, now: Instant) -> Option<u64> {
        let key = (who.to_string(), method.to_string());
        if let Some((last, suppressed)) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(*last) < REFUSAL_LOG_EVERY {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if self.seen.len() >= REFUSAL_LOG_KEYS {
            self.seen
                .retain(|_, (last, _)| now.saturating_duration_since(*last) < REFUSAL_LOG_EVERY);
            if self.seen.len() >= REFUSAL_LOG_KEYS {
                return None;
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

/// The node's authorizer: the table applied to live membership, and the refusal log.
pub struct Authorizer {
    enforce: bool,
    raft: Raft,
    log: Mutex<RefusalLog>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("enforce", &self.enforce).finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer checking certificates against `raft`'s membership; with `enforce` false
    /// (`--insecure-dev`, the simulator) every call passes unchecked.
    pub fn new(raft: Raft, enforce: bool) -> Arc<Authorizer> {
        Arc::new(Authorizer { enforce, raft, log: Mutex::new(RefusalLog::default()) })
    }

    fn members(&self) -> Members {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().nodes().map(|(id, n)| (*id, n.name.clone())).collect()
    }

    /// The caller of a request on `method` with connection `info`, or the refusal (logged).
    pub fn check(&self, method: &str, info: Option<&ConnectInfo>) -> Result<Caller, Status> {
        if !self.enforce {
            return Ok(Caller::Unchecked);
        }
        let identity = info.and_then(|i| i.identity.as_ref());
        decide(method, identity, &self.members()).map_err(|d| {
            let peer = info.and_then(|i| i.remote_addr).map(|a| a.to_string()).unwrap_or_default();
            self.refused(&d.had, method, &peer, &d.status())
        })
    }

    /// Logs (rate-limited) and returns a refusal of `method` to `who`.
    pub fn refused(&self, who: &str, method: &str, peer: &str, status: &Status) -> Status {
        let now = Instant::now();
        let logged = self.log.lock().unwrap_or_else(|p| p.into_inner()).record(who, method, now);
        if let Some(suppressed) = logged {
            warn!(
                method,
                caller = %who,
                peer,
                suppressed,
                "refused call: {}; further refusals of this caller and method are logged at most once a minute",
                status.message()
            );
        }
        status.clone()
    }

    /// Refuses unless `claimed` (a member id the request names as its sender) is the
    /// caller's own id. A member this node cannot place yet (no membership) passes.
    pub fn same_member(
        &self,
        caller: &Caller,
        method: &str,
        field: &str,
        claimed: NodeId,
    ) -> Result<(), Status> {
        match caller {
            Caller::Unchecked | Caller::Member { id: None, .. } => Ok(()),
            Caller::Member { id: Some(id), .. } if *id == claimed => Ok(()),
            Caller::Member { id: Some(id), name } => {
                let status = Status::permission_denied(format!(
                    "{method}: {field} is node {claimed} but the certificate is member {name} (node {id}); a member may only speak for itself"
                ));
                Err(self.refused(&format!("node certificate of {name}"), method, "", &status))
            }
            Caller::Admin { user, .. } => Err(Status::permission_denied(format!(
                "{method}: {user} holds an admin certificate, not a member's"
            ))),
        }
    }
}

/// The caller the [`AuthzLayer`] established for this request.
pub fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Status::internal("no caller identity on this request (the authorization layer is missing)")
    })
}

/// The history author of an admin action: the certificate's user. A requested author must be
/// empty or that same user; without certificates (`--insecure-dev`) the requested one, else
/// "operator".
pub fn author(caller: &Caller, requested: &str) -> Result<String, Status> {
    match caller {
        Caller::Admin { user, .. } if requested.is_empty() || requested == user => Ok(user.clone()),
        Caller::Admin { user, .. } => Err(Status::permission_denied(format!(
            "author {requested:?} given, but the certificate is {user:?}; the history records the certificate's user: drop --author"
        ))),
        Caller::Unchecked if requested.is_empty() => Ok("operator".into()),
        Caller::Unchecked => Ok(requested.to_string()),
        Caller::Member { name, .. } => Err(Status::permission_denied(format!(
            "member {name} holds a node certificate; admin actions need an admin certificate"
        ))),
    }
}

/// Tower layer putting an [`Authorizer`] in front of every gRPC service of the router.
#[derive(Clone, Debug)]
pub struct AuthzLayer(pub Arc<Authorizer>);

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;

    fn layer(&self, inner: S) -> AuthzService<S> {
        AuthzService { authz: self.0.clone(), inner }
    }
}

/// The service [`AuthzLayer`] wraps around the router: refuses or passes on with a
/// [`Caller`] in the request extensions.
#[derive(Clone, Debug)]
pub struct AuthzService<S> {
    authz: Arc<Authorizer>,
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthzService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<R>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let info = req.extensions().get::<ConnectInfo>();
        match self.authz.check(req.uri().path(), info) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests;
