//! The node-local configuration, `node.toml`: what one node needs to know about itself.
//!
//! Everything shared by the cluster lives in the replicated cluster spec; this file only says
//! who this node is, where it listens, where its TLS material and data live, and (on first
//! start only) which members to bootstrap with.
//!
//! ```text
//! node.toml --read--> text --toml/serde--> raw::File --validate()--> NodeConfig
//!                                (deny_unknown_fields)      (every rule, paths resolved)
//! ```
//!
//! Loading never creates or modifies anything: it reads the config file and checks that the TLS
//! files exist and can be opened. The data directory is not touched. Every error is one line
//! naming the file, the key path and the reason.

mod usable;
pub use usable::check_usable;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::consensus::types::{Member, NodeId, Role};

/// Default interval between leader heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// Default lower bound of the randomized election timeout.
pub const DEFAULT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(1250);
/// Default upper bound of the randomized election timeout.
pub const DEFAULT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(2500);
/// Default number of log entries after which a snapshot is built and the log purged.
pub const DEFAULT_SNAPSHOT_AFTER_ENTRIES: u64 = 5000;
/// Default number of entries kept behind a snapshot for slow followers.
pub const DEFAULT_KEEP_ENTRIES_AFTER_SNAPSHOT: u64 = 1000;

const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
const MAX_HEARTBEAT: Duration = Duration::from_secs(10);
const MIN_ELECTION_HEARTBEATS: u32 = 5;
const MIN_SNAPSHOT_AFTER_ENTRIES: u64 = 10;
const MAX_NAME_LEN: usize = 63;

/// A `node.toml` that could not be read, parsed or validated. The message is one line that
/// names the file, the key path (or line and column) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}; pass the node's config with --config", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected shape (unknown or missing
    /// keys, wrong types).
    #[error("{}: {}{message}", path.display(), location(*line_col))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line and column of the offending text, when known.
        line_col: Option<(usize, usize)>,
        /// The parser's message, flattened to one line.
        message: String,
    },
    /// A value is well-formed but breaks a rule.
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Key path of the offending value, e.g. `raft.election_timeout` or
        /// `initial_member[2].address`.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

fn location(line_col: Option<(usize, usize)>) -> String {
    match line_col {
        Some((line, col)) => format!("line {line}, column {col}: "),
        None => String::new(),
    }
}

/// A validated node configuration; the only form the rest of the program sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// This node's Raft id (> 0).
    pub id: NodeId,
    /// This node's name, unique in the cluster; also the name in its TLS certificate.
    pub name: String,
    /// The site this node stands in.
    pub site: String,
    /// Controller or witness.
    pub role: Role,
    /// Where the node keeps its Raft log and state (resolved against the config file's
    /// directory; not checked or created by loading).
    pub data_dir: PathBuf,
    /// gRPC listener: Raft and the admin API.
    pub listen_grpc: SocketAddr,
    /// HTTP listener: health, metrics, status.
    pub listen_http: SocketAddr,
    /// TLS files; `None` only when loaded with `insecure_dev` and the file has no `[tls]`.
    pub tls: Option<TlsFiles>,
    /// Raft timing and log compaction.
    pub raft: RaftTimings,
    /// Members to bootstrap the cluster with on first start (empty data dir); may be empty.
    pub initial_members: Vec<(NodeId, Member)>,
}

/// Paths of this node's TLS material, resolved against the config file's directory. Each
/// existed and could be opened when the config was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the cluster CA certificate(s).
    pub ca: PathBuf,
    /// PEM file with this node's certificate chain.
    pub cert: PathBuf,
    /// PEM file with this node's private key.
    pub key: PathBuf,
}

/// Validated Raft timings and log compaction settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTimings {
    /// Interval between leader heartbeats (10 ms ..= 10 s).
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout (at least 5 heartbeats).
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout (above the lower bound).
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log) after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept behind a snapshot so slow followers can catch up without one.
    pub keep_entries_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            election_timeout_min: DEFAULT_ELECTION_TIMEOUT_MIN,
            election_timeout_max: DEFAULT_ELECTION_TIMEOUT_MAX,
            snapshot_after_entries: DEFAULT_SNAPSHOT_AFTER_ENTRIES,
            keep_entries_after_snapshot: DEFAULT_KEEP_ENTRIES_AFTER_SNAPSHOT,
        }
    }
}

impl RaftTimings {
    /// The timings the election guard works with, and the bounds derived from them
    /// ([`crate::decide::ElectionTimings::min_lease_ttl`]).
    pub fn election(&self) -> crate::decide::ElectionTimings {
        crate::decide::ElectionTimings {
            heartbeat: self.heartbeat_interval,
            election_min: self.election_timeout_min,
            election_max: self.election_timeout_max,
        }
    }

    /// The openraft configuration for these timings, validated by
    /// [`openraft::Config::validate`].
    ///
    /// # Panics
    /// If openraft rejects the values. Timings produced by [`load`]/[`parse`] are checked
    /// against openraft's rules during validation, so this only fires for hand-built values
    /// that break them (e.g. `election_timeout_min >= election_timeout_max`).
    pub fn to_openraft(&self, cluster_name: &str) -> openraft::Config {
        self.try_to_openraft(cluster_name)
            .unwrap_or_else(|err| panic!("invalid Raft timings {self:?}: {err}"))
    }

    fn try_to_openraft(&self, cluster_name: &str) -> Result<openraft::Config, String> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            // drover starts elections itself, after a pre-vote (runtime::election).
            enable_elect: false,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|err| err.to_string())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads and validates the config file at `path`.
///
/// `insecure_dev` allows a file without `[tls]` (plaintext gRPC, for development only).
/// Nothing is created or modified; the data directory is not touched.
pub fn load(path: &Path, insecure_dev: bool) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path, insecure_dev)
}

/// Parses and validates config `text` as if read from `path` (used for error messages and to
/// resolve relative paths). TLS files are checked on disk.
pub fn parse(text: &str, path: &Path, insecure_dev: bool) -> Result<NodeConfig, ConfigError> {
    let file: raw::File = toml::from_str(text).map_err(|err| ConfigError::Parse {
        path: path.to_path_buf(),
        line_col: err.span().map(|span| line_col(text, span.start)),
        message: with_table(text, err.span().map(|s| s.start), &one_line(err.message())),
    })?;
    Validator { path }.validate(file, insecure_dev)
}

/// toml reports a missing key as "missing field `cert`" at the end of its table; name the
/// table too (`tls.cert`), so the user knows where to add it.
fn with_table(text: &str, pos: Option<usize>, message: &str) -> String {
    let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
    else {
        return message.to_string();
    };
    // The span starts at the table's header line, or at the end of the file: look from the end
    // of that line backwards for the nearest header.
    let pos = pos.unwrap_or(0).min(text.len());
    let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let before = &text[..end];
    let table = before.lines().rev().map(str::trim).find_map(|l| {
        let inner = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
        inner.or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']'))).map(str::trim)
    });
    match table {
        Some(t) => format!("{t}.{field}: missing key; add `{field} = ...` to the [{t}] table"),
        None => format!("{field}: missing key; add `{field} = ...` at the top of the file"),
    }
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`; shared with the
/// cluster spec's errors.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// A multi-line parser message as one line.
pub(crate) fn one_line(msg: &str) -> String {
    msg.split('\n').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Checks a member or site name: 1..=63 characters of `[a-z0-9-]`, not starting or ending with
/// `-` (names appear as DNS names in certificates and as file names).
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "{s:?} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            s.len()
        ));
    }
    if let Some(c) =
        s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("{s:?} contains {c:?}; use only lowercase letters, digits and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} must not start or end with '-'"));
    }
    Ok(())
}

/// Checks a `host:port` address (`[v6]:port` for IPv6 literals); returns the reason if invalid.
fn check_address(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port (e.g. \"ctl-1.prod.example:7400\")"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(format!(
                "{s:?} has port {port:?}; the port must be a number from 1 to 65535"
            ))
        }
        Ok(_) => {}
    }
    if host.is_empty() {
        return Err(format!("{s:?} has no host before the port"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return Err(format!("{s:?} has an invalid bracketed IPv6 host {host:?}"));
        }
        return Ok(());
    }
    if host.contains(':') {
        return Err(format!(
            "{s:?} looks like an IPv6 address without brackets; write it as [addr]:port"
        ));
    }
    if let Some(c) =
        host.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_'))
    {
        return Err(format!("{s:?} has {c:?} in its host name"));
    }
    Ok(())
}

/// The file's shape, exactly as users write it.
mod raw {
    use serde::Deserialize;

    use crate::consensus::types::Role;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        pub id: u64,
        pub name: String,
        pub site: String,
        pub role: Role,
        pub data_dir: String,
        pub listen: Listen,
        pub tls: Option<Tls>,
        #[serde(default)]
        pub raft: Raft,
        #[serde(default)]
        pub initial_member: Vec<InitialMember>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Listen {
        pub grpc: String,
        pub http: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Tls {
        pub ca: String,
        pub cert: String,
        pub key: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Raft {
        pub heartbeat_interval: Option<String>,
        pub election_timeout: Option<Vec<String>>,
        pub snapshot_after_entries: Option<u64>,
        pub keep_entries_after_snapshot: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct InitialMember {
        pub id: u64,
        pub name: String,
        pub site: String,
        #[serde(default)]
        pub role: Role,
        pub address: String,
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn validate(&self, f: raw::File, insecure_dev: bool) -> Result<NodeConfig, ConfigError> {
        if f.id == 0 {
            return Err(self.err("id", "must be greater than 0"));
        }
        check_name(&f.name).map_err(|r| self.err("name", r))?;
        check_name(&f.site).map_err(|r| self.err("site", r))?;
        if f.data_dir.trim().is_empty() {
            return Err(self.err("data_dir", "must not be empty"));
        }
        let data_dir = self.resolve(&f.data_dir);
        let listen_grpc = self.socket_addr("listen.grpc", &f.listen.grpc)?;
        let listen_http = self.socket_addr("listen.http", &f.listen.http)?;
        if listen_grpc == listen_http {
            return Err(self.err(
                "listen.http",
                format!("{listen_http} is also listen.grpc; give each listener its own port"),
            ));
        }
        let tls =
            match &f.tls {
                Some(t) => Some(TlsFiles {
                    ca: self.tls_file("tls.ca", &t.ca)?,
                    cert: self.tls_file("tls.cert", &t.cert)?,
                    key: self.tls_file("tls.key", &t.key)?,
                }),
                None if insecure_dev => None,
                None => return Err(self.err(
                    "tls",
                    "section is missing; add [tls] with ca, cert and key (see 'droverctl certs \
                     init'), or pass --insecure-dev to run without TLS (development only)",
                )),
            };
        let raft = self.raft(&f.raft)?;
        let initial_members = self.initial_members(&f)?;
        Ok(NodeConfig {
            path: self.path.to_path_buf(),
            id: f.id,
            name: f.name,
            site: f.site,
            role: f.role,
            data_dir,
            listen_grpc,
            listen_http,
            tls,
            raft,
            initial_members,
        })
    }

    /// Resolves `p` against the config file's directory when relative.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn socket_addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(key, format!("{s:?} is not an IP address and port (e.g. \"0.0.0.0:7400\")"))
        })
    }

    fn tls_file(&self, key: &str, p: &str) -> Result<PathBuf, ConfigError> {
        if p.trim().is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        let path = self.resolve(p);
        let shown = path.display();
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.err(
                    key,
                    format!(
                        "file {shown} does not exist; run 'droverctl certs init' or fix the path"
                    ),
                ))
            }
            Err(e) => return Err(self.err(key, format!("cannot access {shown}: {e}"))),
            Ok(m) if !m.is_file() => {
                return Err(self.err(key, format!("{shown} is not a regular file; fix the path")))
            }
            Ok(_) => {}
        }
        File::open(&path).map_err(|e| {
            self.err(key, format!("cannot open {shown}: {e}; check its permissions"))
        })?;
        Ok(path)
    }

    fn duration(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s).map_err(|e| {
            self.err(key, format!("{s:?} is not a duration ({e}); write e.g. \"150ms\" or \"2s\""))
        })
    }

    fn raft(&self, r: &raw::Raft) -> Result<RaftTimings, ConfigError> {
        let heartbeat = match &r.heartbeat_interval {
            Some(s) => self.duration("raft.heartbeat_interval", s)?,
            None => DEFAULT_HEARTBEAT_INTERVAL,
        };
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&heartbeat) {
            return Err(self.err(
                "raft.heartbeat_interval",
                format!(
                    "{} is outside {}..={}; pick a value in that range",
                    fmt_d(heartbeat),
                    fmt_d(MIN_HEARTBEAT),
                    fmt_d(MAX_HEARTBEAT)
                ),
            ));
        }
        let (min, max) = match &r.election_timeout {
            None => (DEFAULT_ELECTION_TIMEOUT_MIN, DEFAULT_ELECTION_TIMEOUT_MAX),
            Some(v) if v.len() == 2 => (
                self.duration("raft.election_timeout", &v[0])?,
                self.duration("raft.election_timeout", &v[1])?,
            ),
            Some(v) => {
                return Err(self.err(
                    "raft.election_timeout",
                    format!(
                        "has {} values; write [min, max], e.g. [\"1500ms\", \"3000ms\"]",
                        v.len()
                    ),
                ))
            }
        };
        let floor = heartbeat * MIN_ELECTION_HEARTBEATS;
        if min < floor {
            return Err(self.err(
                "raft.election_timeout",
                format!(
                    "min {} is shorter than {MIN_ELECTION_HEARTBEATS} heartbeats \
                     ({MIN_ELECTION_HEARTBEATS} × {}); raise it (election timeout must be at \
                     least {MIN_ELECTION_HEARTBEATS} heartbeats so a WAN round trip of 100 ms \
                     cannot trigger elections)",
                    fmt_d(min),
                    fmt_d(heartbeat)
                ),
            ));
        }
        if max <= min {
            return Err(self.err(
                "raft.election_timeout",
                format!("max {} must be greater than min {}; raise max", fmt_d(max), fmt_d(min)),
            ));
        }
        let snapshot_after_entries =
            r.snapshot_after_entries.unwrap_or(DEFAULT_SNAPSHOT_AFTER_ENTRIES);
        if snapshot_after_entries < MIN_SNAPSHOT_AFTER_ENTRIES {
            return Err(self.err(
                "raft.snapshot_after_entries",
                format!(
                    "{snapshot_after_entries} is below {MIN_SNAPSHOT_AFTER_ENTRIES}; snapshots \
                     that often would dominate the work, raise it"
                ),
            ));
        }
        let timings = RaftTimings {
            heartbeat_interval: heartbeat,
            election_timeout_min: min,
            election_timeout_max: max,
            snapshot_after_entries,
            keep_entries_after_snapshot: r
                .keep_entries_after_snapshot
                .unwrap_or(DEFAULT_KEEP_ENTRIES_AFTER_SNAPSHOT),
        };
        // Sub-millisecond parts are dropped when handing the values to openraft; make sure the
        // result is still acceptable to it.
        timings
            .try_to_openraft("drover")
            .map_err(|e| self.err("raft", format!("rejected by openraft: {e}")))?;
        Ok(timings)
    }

    fn initial_members(&self, f: &raw::File) -> Result<Vec<(NodeId, Member)>, ConfigError> {
        let mut ids: HashMap<u64, usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::with_capacity(f.initial_member.len());
        for (i, m) in f.initial_member.iter().enumerate() {
            let key = |field: &str| format!("initial_member[{i}].{field}");
            if m.id == 0 {
                return Err(self.err(key("id"), "must be greater than 0"));
            }
            if let Some(j) = ids.insert(m.id, i) {
                return Err(self.err(
                    key("id"),
                    format!("id {} is also used by initial_member[{j}]; ids must be unique", m.id),
                ));
            }
            check_name(&m.name).map_err(|r| self.err(key("name"), r))?;
            if let Some(j) = names.insert(&m.name, i) {
                return Err(self.err(
                    key("name"),
                    format!(
                        "name {:?} is also used by initial_member[{j}]; names must be unique",
                        m.name
                    ),
                ));
            }
            check_name(&m.site).map_err(|r| self.err(key("site"), r))?;
            check_address(&m.address).map_err(|r| self.err(key("address"), r))?;
            out.push((
                m.id,
                Member {
                    name: m.name.clone(),
                    site: m.site.clone(),
                    role: m.role,
                    address: m.address.clone(),
                },
            ));
        }
        if out.is_empty() {
            return Ok(out);
        }
        let Some(&i) = ids.get(&f.id) else {
            return Err(self.err(
                "initial_member",
                format!(
                    "does not list this node (id {}); add an [[initial_member]] with id = {}, \
                     name = {:?}, site = {:?}",
                    f.id, f.id, f.name, f.site
                ),
            ));
        };
        let me = &out[i].1;
        for (field, theirs, ours) in [
            ("name", me.name.as_str(), f.name.as_str()),
            ("site", me.site.as_str(), f.site.as_str()),
            ("role", me.role.as_str(), f.role.as_str()),
        ] {
            if theirs != ours {
                return Err(self.err(
                    format!("initial_member[{i}].{field}"),
                    format!(
                        "{theirs:?} differs from this node's {field} {ours:?} (id {}); make them \
                         match",
                        f.id
                    ),
                ));
            }
        }
        Ok(out)
    }
}

fn fmt_d(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir holding ca.pem, prod-1.pem and prod-1-key.pem (contents irrelevant here).
    fn tls_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "prod-1.pem", "prod-1-key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        dir
    }

    /// The documented example (shared/examples/node.toml), with TLS paths relative to the
    /// config file's directory.
    const EXAMPLE: &str = r#"
id = 1
name = "prod-1"
site = "prod"
role = "controller"            # "controller" | "witness"
data_dir = "/var/lib/drover"

[listen]
grpc = "0.0.0.0:7400"
http = "0.0.0.0:7480"

[tls]
ca = "ca.pem"
cert = "prod-1.pem"
key = "prod-1-key.pem"

[raft]
heartbeat_interval = "150ms"
election_timeout = ["1500ms", "3000ms"]

[[initial_member]]
id = 1
name = "prod-1"
site = "prod"
address = "st-ctl-1.prod.example:7400"
[[initial_member]]
id = 2
name = "prod-2"
site = "prod"
address = "st-ctl-2.prod.example:7400"
[[initial_member]]
id = 3
name = "dr-1"
site = "dr"
address = "st-ctl-1.dr.example:7400"
[[initial_member]]
id = 4
name = "dr-2"
site = "dr"
address = "st-ctl-2.dr.example:7400"
[[initial_member]]
id = 5
name = "witness"
site = "witness"
role = "witness"
address = "witness.third.example:7400"
"#;

    fn parse_in(dir: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        parse(text, &dir.join("node.toml"), false)
    }

    /// Parses EXAMPLE with `from` replaced by `to` (which must occur).
    fn parse_edit(from: &str, to: &str) -> Result<NodeConfig, ConfigError> {
        assert!(EXAMPLE.contains(from), "{from:?} not in EXAMPLE");
        let dir = tls_dir();
        parse_in(dir.path(), &EXAMPLE.replacen(from, to, 1))
    }

    /// Asserts `r` is an Invalid error for `key` whose one-line message contains `needle`.
    fn assert_invalid(r: Result<NodeConfig, ConfigError>, key: &str, needle: &str) {
        let err = r.expect_err("config should be rejected");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
        match &err {
            ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{msg}"),
            other => panic!("expected Invalid for {key}, got {other:?}"),
        }
        assert!(msg.contains(&format!("node.toml: {key}: ")), "{msg}");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }

    #[test]
    fn example_parses() {
        let dir = tls_dir();
        let c = parse_in(dir.path(), EXAMPLE).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(c.name, "prod-1");
        assert_eq!(c.site, "prod");
        assert_eq!(c.role, Role::Controller);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/drover"));
        assert_eq!(c.listen_grpc, "0.0.0.0:7400".parse().unwrap());
        assert_eq!(c.listen_http, "0.0.0.0:7480".parse().unwrap());
        assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(150));
        assert_eq!(c.raft.election_timeout_min, Duration::from_millis(1500));
        assert_eq!(c.raft.election_timeout_max, Duration::from_millis(3000));
        assert_eq!(c.initial_members.len(), 5);
        assert_eq!(
            c.initial_members[4],
            (
                5,
                Member {
                    name: "witness".into(),
                    site: "witness".into(),
                    role: Role::Witness,
                    address: "witness.third.example:7400".into()
                }
            )
        );
        assert_eq!(c.initial_members[1].1.role, Role::Controller);
    }

    #[test]
    fn defaults_apply_when_raft_is_absent() {
        let dir = tls_dir();
        let text = EXAMPLE
            .replace("heartbeat_interval = \"150ms\"\n", "")
            .replace("election_timeout = [\"1500ms\", \"3000ms\"]\n", "");
        let c = parse_in(dir.path(), &text).unwrap();
        assert_eq!(c.raft, RaftTimings::default());
        assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.raft.election_timeout_min, Duration::from_millis(1250));
        assert_eq!(c.raft.election_timeout_max, Duration::from_millis(2500));
        assert_eq!(c.raft.snapshot_after_entries, 5000);
        assert_eq!(c.raft.keep_entries_after_snapshot, 1000);
    }

    #[test]
    fn raft_values_reach_openraft() {
        let c = parse_edit(
            "election_timeout = [\"1500ms\", \"3000ms\"]",
            "election_timeout = [\"1s\", \"2s\"]\nsnapshot_after_entries = 20\n\
             keep_entries_after_snapshot = 7",
        )
        .unwrap();
        let o = c.raft.to_openraft("drover-test");
        assert_eq!(o.cluster_name, "drover-test");
        assert_eq!(o.heartbeat_interval, 150);
        assert_eq!(o.election_timeout_min, 1000);
        assert_eq!(o.election_timeout_max, 2000);
        assert_eq!(o.snapshot_policy, openraft::SnapshotPolicy::LogsSinceLast(20));
        assert_eq!(o.max_in_snapshot_log_to_keep, 7);
    }

    #[test]
    #[should_panic(expected = "invalid Raft timings")]
    fn to_openraft_refuses_hand_built_nonsense() {
        let t = RaftTimings {
            election_timeout_max: Duration::from_millis(1000),
            ..RaftTimings::default()
        };
        t.to_openraft("x");
    }

    #[test]
    fn id_must_be_positive() {
        assert_invalid(parse_edit("id = 1\nname", "id = 0\nname"), "id", "greater than 0");
    }

    #[test]
    fn names_and_sites_use_the_charset() {
        assert_invalid(
            parse_edit("name = \"prod-1\"\nsite", "name = \"Prod_1\"\nsite"),
            "name",
            "lowercase",
        );
        assert_invalid(parse_edit("site = \"prod\"\nrole", "site = \"\"\nrole"), "site", "empty");
        let long = "a".repeat(64);
        assert_invalid(
            parse_edit("name = \"prod-1\"\nsite", &format!("name = \"{long}\"\nsite")),
            "name",
            "at most 63",
        );
        assert_invalid(
            parse_edit("name = \"dr-1\"", "name = \"dr 1\""),
            "initial_member[2].name",
            "lowercase",
        );
    }

    #[test]
    fn listen_addresses_must_be_socket_addrs() {
        assert_invalid(
            parse_edit("grpc = \"0.0.0.0:7400\"", "grpc = \"localhost:7400\""),
            "listen.grpc",
            "not an IP address and port",
        );
        assert_invalid(
            parse_edit("http = \"0.0.0.0:7480\"", "http = \"0.0.0.0:7400\""),
            "listen.http",
            "also listen.grpc",
        );
    }

    #[test]
    fn heartbeat_range() {
        assert_invalid(
            parse_edit("heartbeat_interval = \"150ms\"", "heartbeat_interval = \"5ms\""),
            "raft.heartbeat_interval",
            "outside 10ms..=10s",
        );
        assert_invalid(
            parse_edit("heartbeat_interval = \"150ms\"", "heartbeat_interval = \"11s\""),
            "raft.heartbeat_interval",
            "outside",
        );
        assert_invalid(
            parse_edit("heartbeat_interval = \"150ms\"", "heartbeat_interval = \"fast\""),
            "raft.heartbeat_interval",
            "not a duration",
        );
    }

    #[test]
    fn election_timeout_rules() {
        let err = parse_edit("\"1500ms\", \"3000ms\"", "\"500ms\", \"3000ms\"").unwrap_err();
        let dir_msg = err.to_string();
        assert!(
            dir_msg.ends_with(
                "node.toml: raft.election_timeout: min 500ms is shorter than 5 heartbeats \
                 (5 × 150ms); raise it (election timeout must be at least 5 heartbeats so a WAN \
                 round trip of 100 ms cannot trigger elections)"
            ),
            "{dir_msg}"
        );
        // exactly 5 heartbeats is allowed
        parse_edit("\"1500ms\", \"3000ms\"", "\"750ms\", \"3000ms\"").unwrap();
        assert_invalid(
            parse_edit("\"1500ms\", \"3000ms\"", "\"1500ms\", \"1500ms\""),
            "raft.election_timeout",
            "max 1s 500ms must be greater than min 1s 500ms",
        );
        assert_invalid(
            parse_edit("\"1500ms\", \"3000ms\"", "\"1500ms\""),
            "raft.election_timeout",
            "has 1 values",
        );
    }

    #[test]
    fn snapshot_after_entries_minimum() {
        assert_invalid(
            parse_edit("election_timeout = [\"1500ms\", \"3000ms\"]", "snapshot_after_entries = 9"),
            "raft.snapshot_after_entries",
            "below 10",
        );
        parse_edit("election_timeout = [\"1500ms\", \"3000ms\"]", "snapshot_after_entries = 10")
            .unwrap();
    }

    #[test]
    fn member_ids_and_names_unique() {
        assert_invalid(
            parse_edit("id = 4\nname = \"dr-2\"", "id = 3\nname = \"dr-2\""),
            "initial_member[3].id",
            "also used by initial_member[2]",
        );
        assert_invalid(
            parse_edit("name = \"dr-2\"", "name = \"dr-1\""),
            "initial_member[3].name",
            "also used by initial_member[2]",
        );
        assert_invalid(
            parse_edit("id = 2\nname = \"prod-2\"", "id = 0\nname = \"prod-2\""),
            "initial_member[1].id",
            "greater than 0",
        );
    }

    #[test]
    fn member_list_must_contain_this_node_consistently() {
        assert_invalid(
            parse_edit(
                "id = 1\nname = \"prod-1\"\nsite = \"prod\"\naddress",
                "id = 9\nname = \"prod-1\"\nsite = \"prod\"\naddress",
            ),
            "initial_member",
            "does not list this node (id 1)",
        );
        assert_invalid(
            parse_edit(
                "id = 1\nname = \"prod-1\"\nsite = \"prod\"\naddress",
                "id = 1\nname = \"prod-9\"\nsite = \"prod\"\naddress",
            ),
            "initial_member[0].name",
            "\"prod-9\" differs from this node's name \"prod-1\"",
        );
        assert_invalid(
            parse_edit(
                "[[initial_member]]\nid = 1\nname = \"prod-1\"\nsite = \"prod\"\naddress = \"st-ctl-1.prod.example:7400\"\n",
                "",
            ),
            "initial_member",
            "does not list this node (id 1)",
        );
        assert_invalid(
            parse_edit(
                "id = 1\nname = \"prod-1\"\nsite = \"prod\"\naddress",
                "id = 1\nname = \"prod-1\"\nsite = \"dr\"\naddress",
            ),
            "initial_member[0].site",
            "differs from this node's site \"prod\"",
        );
        assert_invalid(
            parse_edit(
                "id = 1\nname = \"prod-1\"\nsite = \"prod\"\naddress",
                "id = 1\nname = \"prod-1\"\nsite = \"prod\"\nrole = \"witness\"\naddress",
            ),
            "initial_member[0].role",
            "differs from this node's role \"controller\"",
        );
        // Without any initial members the config is fine (restart of an existing node).
        let dir = tls_dir();
        let text = EXAMPLE.split("[[initial_member]]").next().unwrap();
        assert!(parse_in(dir.path(), text).unwrap().initial_members.is_empty());
    }

    #[test]
    fn member_addresses_are_host_port() {
        for (addr, needle) in [
            ("st-ctl-2.prod.example", "not host:port"),
            ("st-ctl-2.prod.example:0", "port must be a number from 1 to 65535"),
            ("st-ctl-2.prod.example:70000", "port must be"),
            (":7400", "no host"),
            ("::1:7400", "without brackets"),
            ("st ctl:7400", "in its host name"),
        ] {
            assert_invalid(
                parse_edit("st-ctl-2.prod.example:7400", addr),
                "initial_member[1].address",
                needle,
            );
        }
        for ok in ["[::1]:7400", "10.0.0.2:1", "ctl_2:65535"] {
            parse_edit("st-ctl-2.prod.example:7400", ok).unwrap();
        }
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err =
            parse_edit("site = \"prod\"\n", "site = \"prod\"\ncolour = \"red\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("node.toml: line 5, column 1: unknown field `colour`, expected one of"),
            "{msg}"
        );
        let err = parse_edit("[listen]\n", "[listen]\nhttps = \"x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 9, column 1: unknown field `https`"), "{msg}");
        let err = parse_edit("address = \"st-ctl-1.dr", "weight = 3\naddress = \"st-ctl-1.dr")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `weight`"), "{err}");
    }

    #[test]
    fn truncated_file_is_a_parse_error() {
        let dir = tls_dir();
        for cut in [
            EXAMPLE.find("[listen]").unwrap() + 4, // inside a table header
            EXAMPLE.find("grpc = \"0.0").unwrap() + 10, // inside a string
            EXAMPLE.find("election_timeout = [").unwrap() + 28, // inside an array
            EXAMPLE.find("[listen]").unwrap(),     // before a required table
        ] {
            let err = parse_in(dir.path(), &EXAMPLE[..cut]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.contains("node.toml: "), "{msg}");
        }
    }

    #[test]
    fn wrong_type_is_a_parse_error_with_location() {
        let err = parse_edit("id = 1\nname", "id = \"one\"\nname").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2, column 6: invalid type: string"), "{msg}");
        let err = parse_edit("role = \"controller\"  ", "role = \"boss\"  ").unwrap_err();
        assert!(err.to_string().contains("unknown variant `boss`"), "{err}");
    }

    #[test]
    fn missing_tls_file_is_named() {
        let dir = tls_dir();
        std::fs::remove_file(dir.path().join("prod-1.pem")).unwrap();
        let err = parse_in(dir.path(), EXAMPLE).unwrap_err();
        let expected = format!(
            "{}: tls.cert: file {} does not exist; run 'droverctl certs init' or fix the path",
            dir.path().join("node.toml").display(),
            dir.path().join("prod-1.pem").display()
        );
        assert_eq!(err.to_string(), expected);
        // A directory is not a certificate.
        std::fs::create_dir(dir.path().join("prod-1.pem")).unwrap();
        assert_invalid(parse_in(dir.path(), EXAMPLE), "tls.cert", "not a regular file");
    }

    #[test]
    fn missing_tls_section_needs_insecure_dev() {
        let dir = tls_dir();
        let text = EXAMPLE.replace(
            "[tls]\nca = \"ca.pem\"\ncert = \"prod-1.pem\"\nkey = \"prod-1-key.pem\"\n",
            "",
        );
        assert_ne!(text, EXAMPLE);
        let path = dir.path().join("node.toml");
        assert_invalid(parse(&text, &path, false), "tls", "--insecure-dev");
        let c = parse(&text, &path, true).unwrap();
        assert_eq!(c.tls, None);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let dir = tls_dir();
        let text = EXAMPLE.replace("\"/var/lib/drover\"", "\"data\"");
        let c = parse_in(dir.path(), &text).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, dir.path().join("ca.pem"));
        assert_eq!(tls.cert, dir.path().join("prod-1.pem"));
        assert_eq!(tls.key, dir.path().join("prod-1-key.pem"));
        // Loading never creates the data dir.
        assert!(!dir.path().join("data").exists());
        // Absolute paths stay as they are.
        let abs = dir.path().join("ca.pem");
        let text = EXAMPLE.replace("\"ca.pem\"", &format!("{:?}", abs.display().to_string()));
        let c = parse(&text, Path::new("/nonexistent/node.toml"), false);
        // cert and key are relative to /nonexistent, so they are missing; ca is found.
        assert_invalid(c, "tls.cert", "/nonexistent/prod-1.pem does not exist");
    }

    #[test]
    fn load_reads_the_file_and_reports_unreadable_ones() {
        let dir = tls_dir();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path, false).unwrap().path, path);
        let missing = dir.path().join("nope.toml");
        let msg = load(&missing, false).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("cannot read {}: ", missing.display())), "{msg}");
        assert!(msg.ends_with("; pass the node's config with --config"), "{msg}");
    }

    #[test]
    fn witness_role_is_accepted() {
        let dir = tls_dir();
        let text = EXAMPLE.replacen("role = \"controller\"", "role = \"witness\"", 1).replacen(
            "site = \"prod\"\naddress = \"st-ctl-1",
            "site = \"prod\"\nrole = \"witness\"\naddress = \"st-ctl-1",
            1,
        );
        let c = parse_in(dir.path(), &text).unwrap();
        assert_eq!(c.role, Role::Witness);
    }
}
