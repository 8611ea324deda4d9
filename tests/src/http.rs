//! A minimal HTTP/1.0 GET client for the nodes' health and metrics endpoints, and a parser for
//! the Prometheus text format. No TLS: the HTTP listener is plain by contract.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response body larger than this is an error, not something to buffer.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// `GET path` on `addr`; returns the status code and the body. Every step has `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect to http://{addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send GET http://{addr}{path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("read response of GET http://{addr}{path}: {e}"))?;
    if raw.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(format!(
            "GET http://{addr}{path}: response larger than {MAX_RESPONSE_BYTES} bytes"
        ));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: malformed response {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// One scraped sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// The value of the sample named `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// The value of an unlabelled gauge as an integer (Raft indexes, terms, ids).
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        self.get(name, &[]).filter(|v| *v >= 0.0).map(|v| v as u64)
    }
}

/// Parses the Prometheus text exposition format (enough of it for gauges and counters).
pub fn parse_metrics(text: &str) -> Result<Metrics, String> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line[open..]
                    .rfind('}')
                    .ok_or_else(|| format!("unclosed labels in {line:?}"))?
                    + open;
                (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
            }
            None => {
                let (name, rest) = line
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| format!("no value in {line:?}"))?;
                (name, Vec::new(), rest)
            }
        };
        let value =
            rest.split_whitespace().next().ok_or_else(|| format!("no value in {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|e| format!("bad value in {line:?}: {e}"))?,
        };
        samples.push(Sample { name: name.trim().to_owned(), labels, value });
    }
    Ok(Metrics { samples })
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').ok_or_else(|| format!("bad labels {s:?}"))?;
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("unquoted label value in {s:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("bad escape in labels {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gauges_with_and_without_labels() {
        let m = parse_metrics(
            "# HELP drover_raft_term t\n# TYPE drover_raft_term gauge\ndrover_raft_term 3\n\
             drover_raft_replication_lag{follower=\"2\",x=\"a\\\"b\"} 7 1700000000\n",
        )
        .unwrap();
        assert_eq!(m.get_u64("drover_raft_term"), Some(3));
        assert_eq!(m.get("drover_raft_replication_lag", &[("follower", "2")]), Some(7.0));
        assert_eq!(m.get("drover_raft_replication_lag", &[("x", "a\"b")]), Some(7.0));
        assert_eq!(m.get("drover_raft_replication_lag", &[("follower", "3")]), None);
    }
}
