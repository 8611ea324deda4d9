//! The admin client behind droverctl and the demo: connects over mutual TLS, tries each given
//! endpoint until one answers, and follows a follower's leader hint (a bounded number of hops).
//!
//! Errors are turned into one actionable line here, so every caller reports them alike.

pub mod render;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use drover_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::api::admin::{LEADER_ADDR_KEY, NOTHING_WRITTEN_KEY};
use crate::consensus::network::describe_status;

/// Most leader hints followed by one call (a leader change during the call costs one hop).
const MAX_LEADER_HOPS: usize = 3;
/// While every node answers that it knows no leader (and wrote nothing), a call is sent again
/// every `NO_LEADER_RETRY` for at most this long: an election takes a few seconds.
const NO_LEADER_WAIT: Duration = Duration::from_secs(10);
/// See [`NO_LEADER_WAIT`].
const NO_LEADER_RETRY: Duration = Duration::from_millis(500);

/// How to reach and authenticate to the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of one or more members, tried in order.
    pub endpoints: Vec<String>,
    /// The cluster CA (required unless `insecure`).
    pub ca: Option<PathBuf>,
    /// Client certificate; without it, a TLS server refuses the connection.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// Name to verify in the server's certificate instead of the endpoint's host.
    pub server_name: Option<String>,
    /// Deadline of each call (connect included).
    pub timeout: Duration,
    /// Plaintext, for clusters started with `--insecure-dev`.
    pub insecure: bool,
}

/// A failed admin call, as one actionable line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Local setup is wrong (missing file, bad flag).
    #[error("{0}")]
    Setup(String),
    /// No endpoint answered.
    #[error("{0}")]
    Unreachable(String),
    /// The cluster answered with a refusal.
    #[error("{0}")]
    Refused(String),
}

struct Tls {
    ca: Certificate,
    identity: Option<Identity>,
}

/// A connected-on-demand admin client.
pub struct Client {
    cfg: ClientConfig,
    tls: Option<Tls>,
    /// One multiplexed connection per address, reused across calls; dropped when it fails.
    channels: Mutex<HashMap<String, Channel>>,
    /// Deadline of each call once connected, when longer than `cfg.timeout`.
    call_timeout: Option<Duration>,
}

fn read(path: &PathBuf, what: &str, flag: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| {
        ClientError::Setup(format!("cannot read the {what} {}: {e}; fix {flag}", path.display()))
    })
}

impl Client {
    /// Reads the TLS files once; fails with a clear line if one is missing.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.endpoints.is_empty() {
            return Err(ClientError::Setup(
                "no endpoint given; pass --endpoint HOST:PORT (or set DROVER_ENDPOINT)".into(),
            ));
        }
        for address in &cfg.endpoints {
            check_endpoint(address).map_err(ClientError::Setup)?;
        }
        if cfg.timeout.is_zero() {
            return Err(ClientError::Setup(
                "--timeout 0 would give every call no time at all; pass a positive duration, \
                 e.g. --timeout 5s"
                    .into(),
            ));
        }
        let tls = if cfg.insecure {
            None
        } else {
            let ca_path = cfg.ca.as_ref().ok_or_else(|| {
                ClientError::Setup(
                    "no cluster CA given; pass --ca FILE or --tls-dir DIR (or --insecure-dev for a plaintext dev cluster)"
                        .into(),
                )
            })?;
            let ca = Certificate::from_pem(read(ca_path, "CA certificate", "--ca")?);
            let identity = match (&cfg.cert, &cfg.key) {
                (Some(c), Some(k)) => {
                    let (cert_pem, key_pem) =
                        (read(c, "client certificate", "--cert")?, read(k, "client key", "--key")?);
                    check_identity(c, &cert_pem, k, &key_pem, unix_now_s())
                        .map_err(ClientError::Setup)?;
                    Some(Identity::from_pem(cert_pem, key_pem))
                }
                (None, None) => None,
                _ => {
                    return Err(ClientError::Setup(
                        "--cert and --key go together; pass both".into(),
                    ))
                }
            };
            Some(Tls { ca, identity })
        };
        Ok(Client { cfg, tls, channels: Mutex::new(HashMap::new()), call_timeout: None })
    }

    /// This client, giving each call up to `timeout` once connected (connecting keeps the
    /// configured timeout): for calls that wait on something slow, like `fence test`.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Client {
        self.call_timeout = Some(timeout);
        self
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, ClientError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let bad = |e: tonic::transport::Error| {
            ClientError::Setup(format!("bad endpoint {address:?}: {e}; use HOST:PORT"))
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(bad)?
            .connect_timeout(self.cfg.timeout)
            .timeout(self.call_timeout.unwrap_or(self.cfg.timeout).max(self.cfg.timeout));
        if let Some(tls) = &self.tls {
            let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = self.cfg.server_name.as_deref().unwrap_or(host);
            let mut cfg = ClientTlsConfig::new().ca_certificate(tls.ca.clone()).domain_name(name);
            if let Some(id) = &tls.identity {
                cfg = cfg.identity(id.clone());
            }
            ep = ep.tls_config(cfg).map_err(bad)?;
        }
        Ok(ep)
    }

    /// Runs `op` against the first endpoint that answers, following leader hints. When every
    /// node that answered knows no leader and wrote nothing (an election in progress), the
    /// call is sent again for up to [`NO_LEADER_WAIT`].
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            match self.call_each(&op).await {
                Err((_, true)) if started.elapsed() + NO_LEADER_RETRY < NO_LEADER_WAIT => {
                    tokio::time::sleep(NO_LEADER_RETRY).await;
                }
                Err((e, _)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// One pass over the endpoints; the error says whether every answer was "no leader,
    /// nothing written".
    async fn call_each<T, F, Fut>(&self, op: &F) -> Result<T, (ClientError, bool)>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut failures = Vec::new();
        let mut leaderless = 0;
        for address in &self.cfg.endpoints {
            let mut target = address.clone();
            for _hop in 0..=MAX_LEADER_HOPS {
                match self.call_one(&target, op).await {
                    Ok(v) => return Ok(v),
                    Err(Attempt::NoLeader(msg)) => {
                        leaderless += 1;
                        failures.push(msg);
                        break;
                    }
                    Err(Attempt::Redirect(leader)) if leader != target => target = leader,
                    Err(Attempt::Redirect(_)) => {
                        failures.push(format!("{target}: keeps naming itself as leader"));
                        break;
                    }
                    Err(Attempt::Down(msg)) => {
                        failures.push(msg);
                        break;
                    }
                    Err(Attempt::Final(e)) => return Err((e, false)),
                }
            }
        }
        let retry = leaderless > 0 && leaderless == failures.len();
        let e =
            ClientError::Unreachable(format!("no drover node answered: {}", failures.join("; ")));
        Err((e, retry))
    }

    async fn call_one<T, F, Fut>(&self, address: &str, op: &F) -> Result<T, Attempt>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let cached = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(address).cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let ep = self.endpoint(address).map_err(Attempt::Final)?;
                // tonic's connect_timeout covers TCP only; a node that accepts and never
                // finishes the TLS handshake would hold the call forever without this.
                let c = match tokio::time::timeout(self.cfg.timeout, ep.connect()).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(Attempt::Down(self.explain_connect(address, &e))),
                    Err(_) => {
                        return Err(Attempt::Down(format!(
                            "{address}: no connection within --timeout {} (TCP connect and TLS \
                             handshake); the node is overloaded, or something else listens \
                             there",
                            humantime::format_duration(self.cfg.timeout)
                        )))
                    }
                };
                self.channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(address.to_string(), c.clone());
                c
            }
        };
        let limit = self.call_timeout.unwrap_or(self.cfg.timeout).max(self.cfg.timeout);
        let answer = match tokio::time::timeout(limit, op(AdminClient::new(channel))).await {
            Ok(answer) => answer,
            Err(_) => {
                self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(address);
                return Err(Attempt::Down(format!(
                    "{address}: no answer within {}; check the node's log, or raise --timeout",
                    humantime::format_duration(limit)
                )));
            }
        };
        match answer {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => {
                let attempt = self.classify(address, status);
                if matches!(attempt, Attempt::Down(_)) {
                    self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(address);
                }
                Err(attempt)
            }
        }
    }

    fn classify(&self, address: &str, status: Status) -> Attempt {
        if status.code() == Code::FailedPrecondition {
            if let Some(addr) = status.metadata().get(LEADER_ADDR_KEY).and_then(|v| v.to_str().ok())
            {
                if !addr.is_empty() {
                    return Attempt::Redirect(addr.to_string());
                }
            }
        }
        let detail = describe_status(&status);
        if status.code() == Code::Unavailable
            && status.metadata().get(NOTHING_WRITTEN_KEY).is_some()
        {
            return Attempt::NoLeader(format!("{address}: {}", status.message()));
        }
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                Attempt::Down(format!("{address}: {}", self.explain_text(&detail)))
            }
            _ => Attempt::Final(ClientError::Refused(format!("{address}: {}", status.message()))),
        }
    }

    fn explain_connect(&self, address: &str, err: &tonic::transport::Error) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        format!("{address}: {}", self.explain_text(&text))
    }

    /// Turns transport jargon into what the user should do.
    fn explain_text(&self, text: &str) -> String {
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            Some("the node's certificate does not carry the name this client checked (the endpoint's host, or --server-name): pass --server-name NODE-NAME, the node's name in its node.toml")
        } else if certificate_expired(&lower) {
            Some("a certificate has expired: if the client's, renew --cert; if the node's, renew the node's certificate (check-config on the node names it)")
        } else if lower.contains("notvalidyet") || lower.contains("not valid yet") {
            Some("a certificate is not valid yet: check the clocks of this machine and the node, or the certificate's start date")
        } else if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") {
            Some("the node's certificate is not signed by the CA given with --ca: use the cluster's CA")
        } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
            Some("the node requires a client certificate: pass --cert and --key (signed by the cluster CA)")
        } else if lower.contains("unknownca")
            || lower.contains("unknown ca")
            || lower.contains("badcertificate")
            || lower.contains("bad certificate")
            || lower.contains("decrypterror")
        {
            Some("the node refused this client's certificate: use one signed by the cluster CA")
        } else if self.tls.is_some()
            && (lower.contains("connection closed")
                || lower.contains("connection reset")
                || lower.contains("broken pipe"))
        {
            Some("the node closed the connection after the TLS handshake: it most likely refused this client's certificate (it must be signed by the cluster CA; check --cert/--key); the node's log names the reason")
        } else if lower.contains("connection refused") {
            Some("nothing listens there: is the node running, and is the port its listen.grpc?")
        } else if lower.contains("timed out") || lower.contains("deadline") {
            Some("no answer in time: check the address, firewalls, or raise --timeout")
        } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            Some("TLS mismatch: the node may be plaintext (--insecure-dev) or this client is")
        } else {
            None
        };
        match hint {
            Some(h) => format!("{h} ({text})"),
            None => text.to_string(),
        }
    }
}

/// `HOST:PORT` with a port in 1..=65535; IPv6 hosts in brackets.
fn check_endpoint(address: &str) -> Result<(), String> {
    let usage = "use HOST:PORT, e.g. 10.0.0.1:7400 or [fd00::1]:7400";
    // A bracketed IPv6 address alone: its colons are not a port separator.
    if address.starts_with('[') && address.ends_with(']') {
        return Err(format!("endpoint {address:?} has no port; {usage}"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("endpoint {address:?} has no port; {usage}"));
    };
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return Err(format!(
            "endpoint {address:?} has no host or an unbracketed IPv6 address; {usage}"
        ));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        Ok(p) => Err(format!("endpoint {address:?}: port {p} is out of range 1-65535; {usage}")),
        Err(_) => Err(format!("endpoint {address:?}: {port:?} is not a port number; {usage}")),
    }
}

fn unix_now_s() -> i64 {
    crate::pb::unix_now_ms() / 1000
}

/// Local checks of the client certificate and key, so a local file problem is not reported as
/// the endpoint's: both parse, the key belongs to the certificate, and the certificate is
/// inside its validity period at `now_unix_s`.
fn check_identity(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    now_unix_s: i64,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_file, key_file) = (cert_path.display(), key_path.display());
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("no PEM certificate in {cert_file}; fix --cert (or --tls-dir)"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("no usable private key in {key_file} ({e}); fix --key (or --tls-dir)")
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
        format!(
            "the client key {key_file} does not belong to the certificate {cert_file} ({e}); \
             this is a local file problem, not the node's: pass the key written with that \
             certificate (--key), or the certificate issued for this key (--cert)"
        )
    })?;
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(chain[0].as_ref()) {
        let v = cert.validity();
        if now_unix_s > v.not_after.timestamp() {
            return Err(format!(
                "the client certificate {cert_file} expired on {}; the nodes will refuse it: \
                 issue a new one from the cluster CA and pass it with --cert/--key",
                v.not_after
            ));
        }
        if now_unix_s < v.not_before.timestamp() {
            return Err(format!(
                "the client certificate {cert_file} is not valid before {}; check this \
                 machine's clock or the certificate",
                v.not_before
            ));
        }
    }
    Ok(())
}

enum Attempt {
    Redirect(String),
    Down(String),
    /// The node knows no leader and wrote nothing: the call may be sent again.
    NoLeader(String),
    Final(ClientError),
}

/// Whether a lower-cased transport error says a certificate expired: rustls's own check
/// (`invalid peer certificate: Expired`, `certificate expired: ...`) or the peer's TLS alert
/// (`CertificateExpired`). Not tonic's "Timeout expired", which is a missing answer.
fn certificate_expired(lower: &str) -> bool {
    lower.contains("certificateexpired")
        || lower.contains("certificate expired")
        || lower.contains("certificate: expired")
}

#[cfg(test)]
mod tests {
    use super::{certificate_expired, check_endpoint};

    #[test]
    fn endpoints_need_a_port_and_brackets_around_ipv6() {
        for (address, needle) in [
            ("10.0.0.1", "has no port"),
            ("[fd00::1]", "has no port"),
            ("fd00::1:7400", "unbracketed IPv6"),
            ("10.0.0.1:70000", "out of range"),
            ("10.0.0.1:x", "not a port number"),
        ] {
            let err = check_endpoint(address).expect_err(address);
            assert!(err.contains(needle), "{address}: {err}");
        }
        assert!(check_endpoint("[fd00::1]:7400").is_ok());
        assert!(check_endpoint("node-1.example:7400").is_ok());
    }

    #[test]
    fn a_timeout_is_not_an_expired_certificate() {
        let timeout = "the operation was cancelled: timeout expired: transport error";
        assert!(!certificate_expired(timeout));
        assert!(certificate_expired("invalid peer certificate: expired"));
        assert!(certificate_expired("received fatal alert: certificateexpired"));
        assert!(certificate_expired(
            "invalid peer certificate: certificate expired: verification time 1, but not after 0"
        ));
    }
}
