//! Who a verified peer certificate says its holder is.
//!
//! ```text
//! verified client certificate ──identity_of──▶ PeerIdentity::Node  { name }          drover://node/<member>
//!                                          ├─▶ PeerIdentity::Admin { user, role }    drover://role/<role>
//!                                          │                                         (+ drover://user/<user>, else the CN)
//!                                          └─▶ PeerIdentity::Unrecognized { .. }      neither, both, or malformed
//! ```
//!
//! The identity lives in URI subject alternative names, which any standard CA (openssl, cfssl,
//! Vault) can issue. The accept loop extracts it once per connection and hands it to the gRPC
//! layer in [`super::ConnectInfo`]; [`crate::api::authz`] decides what it may call.

use std::fmt;

use rustls::pki_types::CertificateDer;

use super::accept::der;

/// URI prefix naming a cluster member: `drover://node/prod-1`.
pub const NODE_URI_PREFIX: &str = "drover://node/";
/// URI prefix naming an admin role: `drover://role/operator`.
pub const ROLE_URI_PREFIX: &str = "drover://role/";
/// URI prefix naming the person holding an admin certificate: `drover://user/alice`.
pub const USER_URI_PREFIX: &str = "drover://user/";
/// Longest user name taken from a certificate, in bytes.
pub const MAX_USER_LEN: usize = 128;

/// What an admin certificate lets its holder do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminRole {
    /// Reads: status, history, config show and diff.
    Viewer,
    /// Also runs workflows and decides on them: ack, commit, resume, notes, fence test.
    Operator,
    /// Also changes the cluster spec and the membership.
    Admin,
}

impl AdminRole {
    /// Every role, weakest first.
    pub const ALL: [AdminRole; 3] = [AdminRole::Viewer, AdminRole::Operator, AdminRole::Admin];

    /// The role's name as written in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
        }
    }

    /// Parses `viewer`, `operator` or `admin`.
    pub fn parse(s: &str) -> Option<AdminRole> {
        AdminRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for AdminRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a verified certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A node certificate of the member with this name.
    Node {
        /// Member name, `[a-z0-9-]`.
        name: String,
    },
    /// An admin (droverctl) certificate.
    Admin {
        /// The person: the `drover://user/` URI, else the certificate's common name.
        user: String,
        /// What the certificate lets its holder do.
        role: AdminRole,
    },
    /// Signed by the cluster CA but carrying no usable drover identity; may call nothing.
    Unrecognized {
        /// The certificate's first DNS name or common name, for messages ("" if none).
        name: String,
        /// Why no identity could be taken from it.
        reason: String,
    },
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Node { name } => write!(f, "node certificate of {name}"),
            PeerIdentity::Admin { user, role } => {
                write!(f, "admin certificate of {user} with role {role}")
            }
            PeerIdentity::Unrecognized { name, reason } => {
                write!(f, "certificate {name:?} without a drover identity ({reason})")
            }
        }
    }
}

fn valid_member_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_user(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_USER_LEN
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(c))
}

/// The identity carried by a (verified) certificate. Never fails: a certificate without a
/// usable identity yields [`PeerIdentity::Unrecognized`] saying why.
pub fn identity_of(cert: &CertificateDer<'_>) -> PeerIdentity {
    let shown = super::accept::certificate_name(cert).unwrap_or_default();
    let unrecognized = |reason: String| PeerIdentity::Unrecognized { name: shown.clone(), reason };
    let Some(uris) = der::uri_sans(cert) else {
        return unrecognized("its subject alternative names cannot be read".into());
    };
    let take = |prefix: &str| -> Vec<&str> {
        uris.iter().filter_map(|u| u.strip_prefix(prefix)).collect()
    };
    let (nodes, roles, users) =
        (take(NODE_URI_PREFIX), take(ROLE_URI_PREFIX), take(USER_URI_PREFIX));
    match (nodes.as_slice(), roles.as_slice()) {
        ([], []) => unrecognized(format!(
            "no {NODE_URI_PREFIX}<member> or {ROLE_URI_PREFIX}<role> URI subject alternative name"
        )),
        ([_, _, ..], _) => unrecognized("more than one drover://node/ URI".into()),
        (_, [_, _, ..]) => unrecognized("more than one drover://role/ URI".into()),
        ([_], [_]) => unrecognized("both a drover://node/ and a drover://role/ URI".into()),
        ([name], []) if !users.is_empty() => {
            unrecognized(format!("node certificate of {name} also names a drover://user/"))
        }
        ([name], []) if valid_member_name(name) => PeerIdentity::Node { name: name.to_string() },
        ([name], []) => unrecognized(format!(
            "drover://node/{name} is not a member name (1-63 characters of a-z, 0-9 and '-')"
        )),
        ([], [role]) => {
            let Some(role) = AdminRole::parse(role) else {
                return unrecognized(format!(
                    "drover://role/{role} is not a role; use viewer, operator or admin"
                ));
            };
            let user = match users.as_slice() {
                [user] => user.to_string(),
                [] => der::common_name(cert).unwrap_or_default(),
                _ => return unrecognized("more than one drover://user/ URI".into()),
            };
            if !valid_user(&user) {
                return unrecognized(format!(
                    "user {user:?} must be 1-{MAX_USER_LEN} characters of A-Z, a-z, 0-9 and -_.@+"
                ));
            }
            PeerIdentity::Admin { user, role }
        }
    }
}
