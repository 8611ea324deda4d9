//! `haproxy` steps: server state and weight changes through HAProxy's runtime API, then a
//! read-back that proves HAProxy holds them.
//!
//! ```text
//!  HaproxyStep{socket, set[]} ──for each change──▶ "set server be/srv state ready|drain|maint"
//!                                                  "set server be/srv weight N"   (if set)
//!                               ──per backend────▶ "show servers state be" ──▶ admin bits and
//!                                                                               weight compared
//! ```
//!
//! [`verify`] runs the read-back alone (a drift check after the failover committed): it sends
//! no `set`, and says which server differs from what the step sets.
//!
//! One command per connection (the runtime API's non-interactive mode: HAProxy answers and
//! closes), over a UNIX socket (an absolute path) or TCP (`host:port`). HAProxy answers a
//! successful `set` with an empty line and anything else with a line of text, which becomes a
//! [`StepError::Failed`] naming the server and what to check. The whole step, connections
//! included, is bounded by the step's timeout.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{StepError, StepOutput, OUTPUT_TAIL_MAX};
use crate::edge;
use crate::spec::{HaproxySet, HaproxyState, HaproxyStep};

/// Bytes of one runtime API answer that are read (`show servers state` of a large backend).
const ANSWER_CAP: usize = 1024 * 1024;

/// `srv_admin_state` bit: maintenance forced through the runtime API (`state maint`).
const ADMF_FMAINT: u32 = 0x01;
/// Maintenance inherited from a tracked server.
const ADMF_IMAINT: u32 = 0x02;
/// Drain forced through the runtime API (`state drain`).
const ADMF_FDRAIN: u32 = 0x08;
/// Drain inherited from a tracked server.
const ADMF_IDRAIN: u32 = 0x10;
/// Down because its address could not be resolved.
const ADMF_RMAINT: u32 = 0x20;
// 0x04 (CMAINT, `disabled` in haproxy.cfg) stays set after `state ready` although the server
// then takes traffic, so it is not looked at.

/// Runs `step`: every change in order, then the read-back; bounded by `timeout`.
pub(super) async fn run(step: &HaproxyStep, timeout: Duration) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let mut transcript = Vec::new();
    let result = tokio::time::timeout(timeout, apply(step, &mut transcript)).await;
    let output_tail = edge::text_tail(transcript.join("\n").as_bytes(), OUTPUT_TAIL_MAX);
    match result {
        Err(_) => Err(StepError::Timeout { after: timeout, output_tail }),
        Ok(Err(reason)) => Err(StepError::Failed { reason, output_tail }),
        Ok(Ok(())) => Ok(StepOutput {
            detail: format!(
                "haproxy {}: {} set and read back after {}",
                step.socket,
                describe_changes(&step.set),
                edge::fmt_ms(started.elapsed())
            ),
            output_tail,
        }),
    }
}

/// `st/prod-edge maint, st/dr-edge ready weight 10`.
fn describe_changes(set: &[HaproxySet]) -> String {
    let parts: Vec<String> = set
        .iter()
        .map(|s| match s.weight {
            Some(w) => format!("{} {} weight {w}", s.server, state_name(s.state)),
            None => format!("{} {}", s.server, state_name(s.state)),
        })
        .collect();
    parts.join(", ")
}

fn state_name(state: HaproxyState) -> &'static str {
    match state {
        HaproxyState::Ready => "ready",
        HaproxyState::Drain => "drain",
        HaproxyState::Maint => "maint",
    }
}

/// Sends every change, then checks them; each command and answer goes to `transcript`.
async fn apply(step: &HaproxyStep, transcript: &mut Vec<String>) -> Result<(), String> {
    for change in &step.set {
        let (backend, server) = split_server(&change.server)?;
        let mut commands =
            vec![format!("set server {backend}/{server} state {}", state_name(change.state))];
        if let Some(w) = change.weight {
            commands.push(format!("set server {backend}/{server} weight {w}"));
        }
        for cmd in commands {
            let answer = command(&step.socket, &cmd).await?;
            transcript.push(format!("> {cmd}\n{}", answer.trim_end()));
            set_answer(&step.socket, &cmd, backend, server, &answer)?;
        }
    }
    read_back(step, transcript).await
}

/// Reads every backend the step names once (`show servers state`), changing nothing, and
/// compares each server with what the step sets; each command and answer goes to
/// `transcript`. `Err` names the first server that differs.
async fn read_back(step: &HaproxyStep, transcript: &mut Vec<String>) -> Result<(), String> {
    let mut targets = Vec::with_capacity(step.set.len());
    for change in &step.set {
        let (backend, server) = split_server(&change.server)?;
        targets.push((backend, server, change));
    }
    let mut backends: Vec<&str> = targets.iter().map(|(b, _, _)| *b).collect();
    backends.sort_unstable();
    backends.dedup();
    for backend in backends {
        let cmd = format!("show servers state {backend}");
        let answer = command(&step.socket, &cmd).await?;
        transcript.push(format!("> {cmd}\n{}", answer.trim_end()));
        let rows = parse_servers_state(&answer).map_err(|why| {
            format!("haproxy {}: cannot read back backend {backend}: {why}", step.socket)
        })?;
        for (_, server, change) in targets.iter().filter(|(b, _, _)| *b == backend) {
            let row = rows.iter().find(|r| r.name == *server).ok_or_else(|| {
                format!(
                    "haproxy {}: server {backend}/{server} is missing from 'show servers state \
                     {backend}'; check the step's server names against haproxy.cfg",
                    step.socket
                )
            })?;
            check_row(&step.socket, backend, change, row)?;
        }
    }
    Ok(())
}

/// Reads back whether HAProxy still holds what `step` sets, changing nothing (a drift check);
/// bounded by `timeout`. A server in another state or with another weight is
/// [`StepError::Failed`] naming it. A socket that does not answer the first command (HAProxy
/// down or in the middle of a reload) is [`StepError::Unreachable`]: nothing was read, so it
/// is not drift; the next check tries again.
pub(super) async fn verify(step: &HaproxyStep, timeout: Duration) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let mut transcript = Vec::new();
    let result = tokio::time::timeout(timeout, read_back(step, &mut transcript)).await;
    let output_tail = edge::text_tail(transcript.join("\n").as_bytes(), OUTPUT_TAIL_MAX);
    match result {
        Err(_) => Err(StepError::Timeout { after: timeout, output_tail }),
        // Nothing answered yet: the socket could not be reached.
        Ok(Err(reason)) if transcript.is_empty() => Err(StepError::Unreachable { reason }),
        Ok(Err(reason)) => Err(StepError::Failed { reason, output_tail }),
        Ok(Ok(())) => Ok(StepOutput {
            detail: format!(
                "haproxy {}: {} still held after {}",
                step.socket,
                describe_changes(&step.set),
                edge::fmt_ms(started.elapsed())
            ),
            output_tail,
        }),
    }
}

/// `backend/server` split in two (validation guarantees the shape).
fn split_server(spec: &str) -> Result<(&str, &str), String> {
    spec.split_once('/')
        .filter(|(b, s)| !b.is_empty() && !s.is_empty())
        .ok_or_else(|| format!("haproxy: {spec:?} is not \"backend/server\""))
}

/// What a `set server` answer means: empty is success, anything else says why not.
fn set_answer(
    socket: &str,
    cmd: &str,
    backend: &str,
    server: &str,
    answer: &str,
) -> Result<(), String> {
    let text = answer.trim();
    if text.is_empty() {
        return Ok(());
    }
    let first = edge::shorten(text.lines().next().unwrap_or(""), 200);
    Err(if first.starts_with("No such backend") {
        format!(
            "haproxy {socket}: HAProxy has no backend {backend:?} (it answered '{first}'); \
             check the step's server names against haproxy.cfg"
        )
    } else if first.starts_with("No such server") {
        format!(
            "haproxy {socket}: backend {backend:?} has no server {server:?} (it answered \
             '{first}'); check the step's server names against haproxy.cfg"
        )
    } else if first.starts_with("Permission denied") {
        format!(
            "haproxy {socket}: HAProxy refused '{cmd}': permission denied; the stats socket \
             needs 'level admin' (e.g. 'stats socket /run/haproxy/admin.sock mode 660 level \
             admin' in the global section)"
        )
    } else {
        format!("haproxy {socket}: '{cmd}' failed: {first}")
    })
}

/// One server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerState {
    name: String,
    admin: u32,
    weight: u32,
}

/// The server lines of a `show servers state <backend>` answer, read by column name.
fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut header = None;
    for line in lines.by_ref() {
        if let Some(cols) = line.strip_prefix('#') {
            header = Some(cols.split_whitespace().collect::<Vec<_>>());
            break;
        }
        // The first line is the format version ("1"); anything else is an error text.
        if line.parse::<u32>().is_err() {
            return Err(format!("HAProxy answered '{}'", edge::shorten(line, 200)));
        }
    }
    let header = header.ok_or("the answer has no '# be_id be_name ...' header")?;
    let col = |name: &str| {
        header.iter().position(|c| *c == name).ok_or(format!("the header has no {name} column"))
    };
    let (name_col, admin_col, weight_col) =
        (col("srv_name")?, col("srv_admin_state")?, col("srv_uweight")?);
    lines
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let field = |i: usize, what: &str| {
                fields.get(i).copied().ok_or(format!("a server line has no {what}: {line:?}"))
            };
            let number = |i: usize, what: &str| {
                field(i, what)?.parse::<u32>().map_err(|_| format!("bad {what} in {line:?}"))
            };
            Ok(ServerState {
                name: field(name_col, "srv_name")?.to_string(),
                admin: number(admin_col, "srv_admin_state")?,
                weight: number(weight_col, "srv_uweight")?,
            })
        })
        .collect()
}

/// Whether the state HAProxy reports is what `change` asked for.
fn check_row(
    socket: &str,
    backend: &str,
    change: &HaproxySet,
    row: &ServerState,
) -> Result<(), String> {
    let maint = row.admin & (ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT) != 0;
    let drain = row.admin & (ADMF_FDRAIN | ADMF_IDRAIN) != 0;
    let state_ok = match change.state {
        HaproxyState::Maint => row.admin & ADMF_FMAINT != 0,
        HaproxyState::Drain => drain && !maint,
        HaproxyState::Ready => !drain && !maint,
    };
    let weight_ok = change.weight.is_none_or(|w| u32::from(w) == row.weight);
    if state_ok && weight_ok {
        return Ok(());
    }
    let seen = if maint {
        "maint"
    } else if drain {
        "drain"
    } else {
        "ready"
    };
    let mut why =
        format!("haproxy {socket}: {backend}/{} was set to {}", row.name, state_name(change.state));
    if let Some(w) = change.weight {
        let _ = write!(why, " weight {w}");
    }
    let _ = write!(
        why,
        " but HAProxy reports it {seen} (srv_admin_state {}) with weight {}; something else \
         (a tracked server, a DNS resolution failure, another tool) is changing it: check \
         'show servers state {backend}'",
        row.admin, row.weight
    );
    Err(why)
}

/// Sends one command and reads the whole answer (HAProxy closes after it).
async fn command(socket: &str, cmd: &str) -> Result<String, String> {
    if socket.starts_with('/') {
        let stream = UnixStream::connect(socket).await.map_err(|e| connect_error(socket, &e))?;
        exchange(stream, socket, cmd).await
    } else {
        let stream = TcpStream::connect(socket).await.map_err(|e| connect_error(socket, &e))?;
        exchange(stream, socket, cmd).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    socket: &str,
    cmd: &str,
) -> Result<String, String> {
    let io = |e: std::io::Error| format!("haproxy {socket}: '{cmd}' interrupted: {e}");
    stream.write_all(format!("{cmd}\n").as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream).take(ANSWER_CAP as u64).read_to_end(&mut answer).await.map_err(io)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn connect_error(socket: &str, err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let unix = socket.starts_with('/');
    match err.kind() {
        ErrorKind::NotFound if unix => format!(
            "haproxy: no socket at {socket}; is HAProxy running, with 'stats socket {socket} \
             level admin' in its global section?"
        ),
        ErrorKind::ConnectionRefused if unix => format!(
            "haproxy: connection refused by {socket}: the socket file exists but HAProxy does \
             not listen on it (stopped or restarted elsewhere?)"
        ),
        ErrorKind::ConnectionRefused => format!(
            "haproxy: connection refused by {socket}; is HAProxy running, with 'stats socket \
             ipv4@{socket} level admin' in its global section?"
        ),
        ErrorKind::PermissionDenied => format!(
            "haproxy: cannot open {socket}: permission denied; let drover's user write to the \
             socket (the 'mode', 'user' and 'group' options of 'stats socket')"
        ),
        _ => format!("haproxy: cannot connect to {socket}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOWN: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state \
        srv_admin_state srv_uweight srv_iweight srv_time_since_last_change\n\
        3 app 1 prod 127.0.0.1 2 1 7 1 0\n3 app 2 dr 127.0.0.1 2 4 1 1 0\n\n";

    fn set(server: &str, state: HaproxyState, weight: Option<u16>) -> HaproxySet {
        HaproxySet { server: server.into(), state, weight }
    }

    #[test]
    fn servers_state_is_read_by_column_name() {
        let rows = parse_servers_state(SHOWN).unwrap();
        assert_eq!(
            rows,
            vec![
                ServerState { name: "prod".into(), admin: 1, weight: 7 },
                ServerState { name: "dr".into(), admin: 4, weight: 1 },
            ]
        );
        // Columns in another order (a later HAProxy) are still found.
        let moved = "1\n# srv_uweight srv_name srv_admin_state\n9 web 8\n";
        assert_eq!(
            parse_servers_state(moved).unwrap(),
            vec![ServerState { name: "web".into(), admin: 8, weight: 9 }]
        );
        assert_eq!(
            parse_servers_state("Can't find backend.\n\n").unwrap_err(),
            "HAProxy answered 'Can't find backend.'"
        );
        assert!(parse_servers_state("1\n# be_id srv_name\n3 a\n")
            .unwrap_err()
            .contains("srv_admin_state"));
    }

    #[test]
    fn read_back_compares_admin_bits_and_weight() {
        let row = |admin, weight| ServerState { name: "dr".into(), admin, weight };
        let ok = |s, w, r: &ServerState| check_row("/s", "app", &set("app/dr", s, w), r).is_ok();
        // `disabled` in haproxy.cfg leaves bit 0x04 set once the server is ready.
        assert!(ok(HaproxyState::Ready, None, &row(4, 1)));
        assert!(ok(HaproxyState::Ready, Some(5), &row(0, 5)));
        assert!(!ok(HaproxyState::Ready, Some(5), &row(0, 1)));
        assert!(!ok(HaproxyState::Ready, None, &row(1, 1)));
        assert!(!ok(HaproxyState::Ready, None, &row(0x20, 1)));
        assert!(ok(HaproxyState::Maint, None, &row(5, 1)));
        assert!(ok(HaproxyState::Drain, None, &row(12, 1)));
        assert!(!ok(HaproxyState::Drain, None, &row(9, 1)));
        let err = check_row("/s", "app", &set("app/dr", HaproxyState::Ready, None), &row(1, 1))
            .unwrap_err();
        assert!(
            err.contains("set to ready but HAProxy reports it maint (srv_admin_state 1)"),
            "{err}"
        );
    }

    fn step(socket: &str) -> HaproxyStep {
        HaproxyStep { socket: socket.into(), set: vec![set("app/dr", HaproxyState::Ready, None)] }
    }

    #[tokio::test]
    async fn a_missing_or_refusing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock").display().to_string();
        let timeout = Duration::from_secs(5);
        let Err(StepError::Failed { reason, .. }) = run(&step(&path), timeout).await else {
            panic!("expected a failure")
        };
        assert_eq!(
            reason,
            format!(
                "haproxy: no socket at {path}; is HAProxy running, with 'stats socket {path} \
                 level admin' in its global section?"
            )
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let addr = port.to_string();
        let Err(StepError::Failed { reason, .. }) = run(&step(&addr), timeout).await else {
            panic!("expected a failure")
        };
        assert!(reason.starts_with(&format!("haproxy: connection refused by {addr}")), "{reason}");
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        });
        let started = Instant::now();
        let result = run(&step(&path.display().to_string()), Duration::from_millis(300)).await;
        assert!(
            matches!(result, Err(StepError::Timeout { after, .. }) if after == Duration::from_millis(300)),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        held.abort();
    }

    #[test]
    fn set_answers_name_the_problem() {
        let answer = |a| set_answer("/run/h.sock", "set server app/x state ready", "app", "x", a);
        assert_eq!(answer("\n"), Ok(()));
        let e = answer("No such server.\n\n").unwrap_err();
        assert!(e.contains("backend \"app\" has no server \"x\""), "{e}");
        assert!(e.contains("against haproxy.cfg"), "{e}");
        let e = answer("No such backend.\n\n").unwrap_err();
        assert!(e.contains("no backend \"app\""), "{e}");
        let e = answer("Permission denied\n\n").unwrap_err();
        assert!(e.contains("needs 'level admin'"), "{e}");
        let e = answer("Absolute weight can only be between 0 and 256 inclusive.\n").unwrap_err();
        assert!(
            e.ends_with("failed: Absolute weight can only be between 0 and 256 inclusive."),
            "{e}"
        );
    }
}
