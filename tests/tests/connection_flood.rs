//! Connection floods (issue 10): 500 idle TCP connections and half-done TLS handshakes to one
//! node's gRPC port, and 300 idle connections to its HTTP port. What a user relies on: the
//! admin CLI still gets its answer from that node, `/healthz` still answers, idle HTTP
//! connections are closed, and the node's log stays short (one line per cause per interval).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use drover_tests::{Cluster, LEADER_TIMEOUT};

/// Connections opened to the gRPC port: half stay silent, half send the start of a TLS
/// ClientHello and stop.
const GRPC_FLOOD: usize = 500;
/// Idle connections opened to the HTTP port (more than its cap of 256).
const HTTP_FLOOD: usize = 300;
/// Source address of the flood: the same loopback address for all of it, not the one
/// droverctl connects from (127.0.0.1).
const FLOOD_SOURCE: [u8; 4] = [127, 66, 0, 1];
/// How long the flood is held while the admin keeps checking.
const HOLD: Duration = Duration::from_secs(15);
/// Listener warning lines allowed in the node's log over the whole test: a handful per cause
/// per 10 s interval, not one per connection.
const MAX_WARN_LINES: usize = 16;

/// A TCP connection to `to` from `FLOOD_SOURCE` (port chosen by the kernel); `None` if the
/// connect failed (refused or reset: the node closed it, which is fine).
fn connect_from_flood_source(to: SocketAddr) -> Option<TcpStream> {
    // SAFETY: plain socket syscalls on a descriptor this function owns; it is closed on error
    // or handed to TcpStream, which owns it from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sockaddr(FLOOD_SOURCE, 0);
        if libc::bind(fd, std::ptr::from_ref(&local).cast(), len) != 0 {
            libc::close(fd);
            panic!("bind {FLOOD_SOURCE:?}: {}", std::io::Error::last_os_error());
        }
        let SocketAddr::V4(v4) = to else { panic!("IPv4 only: {to}") };
        let remote = sockaddr(v4.ip().octets(), v4.port());
        if libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) != 0 {
            libc::close(fd);
            return None;
        }
        use std::os::fd::FromRawFd;
        Some(TcpStream::from_raw_fd(fd))
    }
}

/// Lines of `log` that the listeners write about refused or closed connections.
fn listener_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("refused connection") || l.contains("closed connection"))
        .filter(|l| l.contains("WARN"))
        .collect()
}

#[test]
fn a_connection_flood_keeps_admin_access_and_a_short_log() {
    let mut c = Cluster::builder("connection_flood").two_sites_and_witness().build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let target = c.id_of("dr-1");
    let grpc = c.grpc_addr(target);
    let http = c.http_addr(target);

    // The start of a TLS record carrying a ClientHello of 512 bytes, never completed.
    let partial_hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
    let mut flood = Vec::new();
    for i in 0..GRPC_FLOOD {
        if let Some(mut s) = connect_from_flood_source(grpc) {
            if i % 2 == 1 {
                let _ = s.write_all(&partial_hello);
            }
            flood.push(s);
        }
    }
    let mut idle_http = Vec::new();
    for _ in 0..HTTP_FLOOD {
        if let Some(s) = connect_from_flood_source(http) {
            idle_http.push(s);
        }
    }
    eprintln!(
        "{} of {GRPC_FLOOD} gRPC and {} of {HTTP_FLOOD} HTTP connections opened",
        flood.len(),
        idle_http.len()
    );

    // The admin keeps getting answers from that very node while the flood is held.
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < HOLD {
        let out = c.ctl_at(target, &["--json", "status"]);
        if out.code != Some(0) {
            c.fail(format!(
                "droverctl status against dr-1 failed {:.1}s into the flood: {}",
                start.elapsed().as_secs_f64(),
                out.stderr.trim()
            ));
        }
        answered += 1;
        match c.http_get(target, "/healthz") {
            Ok((200, _)) => {}
            // The HTTP cap may be full of idle connections until the header timeout (5 s)
            // closes them; after that it must answer.
            other if start.elapsed() > Duration::from_secs(8) => {
                c.fail(format!("GET /healthz on dr-1 during the flood: {other:?}"))
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The idle HTTP connections were closed by the node (EOF or reset, not still open).
    let mut still_open = 0;
    for s in &mut idle_http {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) | Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open += 1,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => still_open += 1,
            Err(_) => {}
        }
    }
    if still_open > 0 {
        c.fail(format!("{still_open} idle HTTP connections still open after {HOLD:?}"));
    }

    let log = std::fs::read_to_string(c.log_path(target)).unwrap_or_default();
    let warnings = listener_warnings(&log);
    eprintln!(
        "admin answered {answered} times; {} listener warning lines in dr-1's log",
        warnings.len()
    );
    if warnings.len() > MAX_WARN_LINES {
        c.fail(format!(
            "{} listener warning lines for one flood (at most {MAX_WARN_LINES}): {:?}",
            warnings.len(),
            &warnings[..5]
        ));
    }
    drop(flood);
}
