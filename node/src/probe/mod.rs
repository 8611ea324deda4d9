//! Health checks and lag probes, run from where this node stands (DESIGN.md 3).
//!
//! ```text
//!  watch<Option<Arc<ClusterSpec>>> ──▶ Prober (one supervisor task)
//!                                        │ one task per check / lag probe, each at its own
//!                                        │ interval, a Semaphore bounding runs in flight
//!                                        ▼
//!                 run_check(&Check) ──▶ ProbeResult {verdict, latency, detail}
//!                 run_lag(&LagProbe) ─▶ Result<f64, String>
//!                                        │ latest result per check
//!                                        ▼
//!                 Prober::latest() ───▶ Vec<SiteReport>  (one per service and site)
//! ```
//!
//! A single run ([`run_check`], [`run_lag`]) is a plain async function with its own timeout;
//! the [`Prober`] schedules them and folds the results into one [`SiteReport`] per (service,
//! site), which the runtime sends to the leader's detector ([`crate::decide::Detector`]).
//!
//! Verdicts: a check that ran and failed — wrong status, refused connection, non-zero exit,
//! *timeout* — is `Unhealthy`. `Unknown` is kept for "could not even try": the program is not
//! installed on this node, the URL or address is malformed, or the check has not run yet; and
//! for a timeout while this observer was late itself (its runs queued behind the concurrency
//! bound, its runtime stalled; see [`late`]). The detector counts `Unknown` as "did not
//! answer", so a broken or overloaded observer never votes a site down.

pub mod late;
mod prober;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::decide::Verdict;
use crate::edge::{self, exec, http};
use crate::spec::{
    Check, CheckProbe, ConsistencyCheck, FingerprintSource, LagProbe, LagSource,
    MAX_FINGERPRINT_BYTES,
};

pub use prober::{FingerprintReading, PassiveReading, ProbeLimits, Prober, SiteReport};

/// Where a node's latest probe results come from: its own [`Prober`] on a real node, the
/// simulated sites in `drover-sim`.
pub trait ProbeSource: Send + Sync {
    /// The latest result per (service, site) this node observes.
    fn latest(&self) -> Vec<SiteReport>;
}

impl ProbeSource for Prober {
    fn latest(&self) -> Vec<SiteReport> {
        Prober::latest(self)
    }
}

/// Bytes of an HTTP check's body that are read (and searched for `body_contains`).
pub const HTTP_BODY_CAP: usize = 64 * 1024;
/// Bytes kept from the end of an exec check's stdout and of its stderr, each.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024;
/// Longest `detail` a probe result carries, in characters.
pub const DETAIL_MAX: usize = 200;

/// The outcome of one run of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// Healthy, unhealthy, or unknown (could not even try; see the module doc).
    pub verdict: Verdict,
    /// How long the run took (up to the timeout).
    pub latency: Duration,
    /// One short line: `HTTP 503 (expected 200)`, `connection refused`, `exit 1: <stderr>`.
    pub detail: String,
    /// A lag value, when the result comes with one; health checks leave it `None`.
    pub lag: Option<f64>,
    /// The run got no answer within its timeout (the verdict is then `Unhealthy`, unless the
    /// prober found this observer late: [`late::discount_late`]).
    pub timed_out: bool,
}

impl ProbeResult {
    fn new(verdict: Verdict, started: Instant, detail: impl Into<String>) -> ProbeResult {
        ProbeResult {
            verdict,
            latency: started.elapsed(),
            detail: edge::shorten(&detail.into(), DETAIL_MAX),
            lag: None,
            timed_out: false,
        }
    }
}

/// Runs `check` once, bounded by its `timeout`; never fails (failures are verdicts).
pub async fn run_check(check: &Check) -> ProbeResult {
    let started = Instant::now();
    match &check.probe {
        CheckProbe::Http { url, expect_status, body_contains } => {
            http_check(url, *expect_status, body_contains.as_deref(), check.timeout, started).await
        }
        CheckProbe::Tcp { address } => tcp_check(address, check.timeout, started).await,
        CheckProbe::Exec { command } => exec_check(command, check.timeout, started).await,
    }
}

async fn http_check(
    url: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    timeout: Duration,
    started: Instant,
) -> ProbeResult {
    let sent =
        tokio::time::timeout(timeout, http::client().send(http::Outgoing::get(url), HTTP_BODY_CAP))
            .await;
    let answer = match sent {
        Err(_) => return timed_out(timeout, started),
        Ok(Err(http::HttpError::Invalid(why))) => {
            return ProbeResult::new(Verdict::Unknown, started, why)
        }
        Ok(Err(http::HttpError::Transport(why))) => {
            return ProbeResult::new(Verdict::Unhealthy, started, why)
        }
        Ok(Ok(answer)) => answer,
    };
    if answer.status != expect_status {
        let detail = format!("HTTP {} (expected {expect_status})", answer.status);
        return ProbeResult::new(Verdict::Unhealthy, started, detail);
    }
    if let Some(needle) = body_contains {
        // Searched as bytes so a body that is not UTF-8 can still match an ASCII marker.
        let found =
            needle.is_empty() || answer.body.windows(needle.len()).any(|w| w == needle.as_bytes());
        if !found {
            let detail = format!("HTTP {} but the body lacks {needle:?}", answer.status);
            return ProbeResult::new(Verdict::Unhealthy, started, detail);
        }
    }
    ProbeResult::new(Verdict::Healthy, started, format!("HTTP {}", answer.status))
}

async fn tcp_check(address: &str, timeout: Duration, started: Instant) -> ProbeResult {
    let well_formed = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        let detail = format!("malformed address {address:?}; expected host:port");
        return ProbeResult::new(Verdict::Unknown, started, detail);
    }
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Err(_) => timed_out(timeout, started),
        Ok(Ok(stream)) => {
            let peer = stream.peer_addr().map_or_else(|_| address.to_string(), |a| a.to_string());
            ProbeResult::new(Verdict::Healthy, started, format!("connected to {peer}"))
        }
        Ok(Err(err)) => {
            let detail = match err.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => format!("connect to {address} failed: {err}"),
            };
            ProbeResult::new(Verdict::Unhealthy, started, detail)
        }
    }
}

async fn exec_check(command: &[String], timeout: Duration, started: Instant) -> ProbeResult {
    let spec = exec::ExecSpec { command, env: Vec::new(), timeout, output_cap: EXEC_OUTPUT_CAP };
    match exec::run(spec).await {
        Ok(out) if out.status.success() => ProbeResult::new(Verdict::Healthy, started, "exit 0"),
        Ok(out) => {
            let mut detail = exec::describe_status(out.status);
            let why = edge::last_line(&String::from_utf8_lossy(&out.stderr), DETAIL_MAX);
            if !why.is_empty() {
                detail = format!("{detail}: {why}");
            }
            ProbeResult::new(Verdict::Unhealthy, started, detail)
        }
        Err(exec::ExecError::TimedOut { .. }) => timed_out(timeout, started),
        Err(err @ exec::ExecError::Wait(_)) => {
            ProbeResult::new(Verdict::Unhealthy, started, err.describe())
        }
        Err(err @ (exec::ExecError::Empty | exec::ExecError::Spawn { .. })) => {
            ProbeResult::new(Verdict::Unknown, started, err.describe())
        }
    }
}

fn timed_out(timeout: Duration, started: Instant) -> ProbeResult {
    ProbeResult {
        timed_out: true,
        ..ProbeResult::new(
            Verdict::Unhealthy,
            started,
            format!("timed out after {}", edge::fmt_ms(timeout)),
        )
    }
}

/// Runs the lag probe once, bounded by its `timeout`: the number it reports, or one line
/// saying why there is none.
///
/// - `exec`: the command must exit 0; the last non-empty line of its stdout is the number.
/// - `http`: a GET that must answer 2xx; the whole body (trimmed) is the number.
///
/// The number must be finite and not negative.
pub async fn run_lag(probe: &LagProbe) -> Result<f64, String> {
    let text = match &probe.source {
        LagSource::Exec { command } => {
            let spec = exec::ExecSpec {
                command,
                env: Vec::new(),
                timeout: probe.timeout,
                output_cap: EXEC_OUTPUT_CAP,
            };
            let out =
                exec::run(spec).await.map_err(|e| format!("lag command: {}", e.describe()))?;
            if !out.status.success() {
                let why = edge::last_line(&String::from_utf8_lossy(&out.stderr), DETAIL_MAX);
                let status = exec::describe_status(out.status);
                return Err(if why.is_empty() {
                    format!("lag command: {status}")
                } else {
                    format!("lag command: {status}: {why}")
                });
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = edge::last_line(&stdout, 80);
            if line.is_empty() {
                return Err("lag command printed nothing; it must print a number".to_string());
            }
            line
        }
        LagSource::Http { url } => {
            let sent = tokio::time::timeout(
                probe.timeout,
                http::client().send(http::Outgoing::get(url), HTTP_BODY_CAP),
            )
            .await
            .map_err(|_| format!("lag URL: timed out after {}", edge::fmt_ms(probe.timeout)))?;
            let answer = sent.map_err(|e| format!("lag URL: {e}"))?;
            if !(200..300).contains(&answer.status) {
                return Err(format!("lag URL answered HTTP {} (expected 2xx)", answer.status));
            }
            edge::shorten(String::from_utf8_lossy(&answer.body).trim(), 80)
        }
    };
    parse_lag(&text)
}

/// Runs a consistency check once on this node for `service`, bounded by its `timeout`: the
/// fingerprint of this node's `site`, or one line saying why there is none.
///
/// - `exec`: runs with `DROVER_SERVICE` and `DROVER_SITE` set; it must exit 0 and its stdout
///   is the fingerprint.
/// - `http`: a GET that must answer 2xx; the body is the fingerprint.
///
/// Either way the text is trimmed and must be 1 to [`MAX_FINGERPRINT_BYTES`] bytes long.
pub async fn run_fingerprint(
    check: &ConsistencyCheck,
    service: &str,
    site: &str,
) -> Result<String, String> {
    let name = &check.name;
    let bytes = match &check.source {
        FingerprintSource::Exec { command } => {
            let spec = exec::ExecSpec {
                command,
                env: vec![
                    ("DROVER_SERVICE".to_string(), service.to_string()),
                    ("DROVER_SITE".to_string(), site.to_string()),
                ],
                timeout: check.timeout,
                output_cap: EXEC_OUTPUT_CAP,
            };
            let out = exec::run(spec)
                .await
                .map_err(|e| format!("consistency check {name}: {}", e.describe()))?;
            if !out.status.success() {
                let why = edge::last_line(&String::from_utf8_lossy(&out.stderr), DETAIL_MAX);
                let status = exec::describe_status(out.status);
                return Err(if why.is_empty() {
                    format!("consistency check {name}: {status}")
                } else {
                    format!("consistency check {name}: {status}: {why}")
                });
            }
            out.stdout
        }
        FingerprintSource::Http { url } => {
            let sent = tokio::time::timeout(
                check.timeout,
                http::client().send(http::Outgoing::get(url), HTTP_BODY_CAP),
            )
            .await
            .map_err(|_| {
                format!("consistency check {name}: timed out after {}", edge::fmt_ms(check.timeout))
            })?;
            let answer = sent.map_err(|e| format!("consistency check {name}: {e}"))?;
            if !(200..300).contains(&answer.status) {
                return Err(format!(
                    "consistency check {name}: HTTP {} (expected 2xx)",
                    answer.status
                ));
            }
            answer.body
        }
    };
    parse_fingerprint(name, &bytes)
}

/// A fingerprint from what a consistency check printed: the text trimmed, 1 to
/// [`MAX_FINGERPRINT_BYTES`] bytes long (bytes that are not UTF-8 are replaced).
pub fn parse_fingerprint(name: &str, output: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(output);
    let text = text.trim();
    if text.is_empty() {
        return Err(format!(
            "consistency check {name} printed nothing; it must print a fingerprint (a hash, a \
             version)"
        ));
    }
    if text.len() > MAX_FINGERPRINT_BYTES {
        return Err(format!(
            "consistency check {name} printed {} bytes; a fingerprint is at most \
             {MAX_FINGERPRINT_BYTES}: print a hash of the content instead (e.g. pipe it through \
             sha256sum)",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// Parses a lag value: a finite number >= 0.
fn parse_lag(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err(format!("lag probe reported {text:?}; it must be a finite number >= 0")),
        Err(_) => Err(format!("lag probe reported {text:?}, which is not a number")),
    }
}
